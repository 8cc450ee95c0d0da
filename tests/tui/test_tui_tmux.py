"""
The terminal app end to end: the real C{chatd-chat} in a private tmux server,
against a real C{twistd chatd}, chatting with a C{chatd-chat --line} process.

Keys go in with C{tmux send-keys}, the screen comes out with C{tmux
capture-pane}; every wait is bounded. Skipped only where tmux is not
installed (CI installs it: .ci/setup dev).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from chatd.client.line_mode import EXIT_ENDED
from tests.daemon.test_twistd import REPO_ROOT, Daemon, environment
from tests.loopback_clients import free_ports

STEP = 10.0
"""Seconds any one step may take before the test fails."""
POLL = 0.05
SESSION = "chat"
WIDTH, HEIGHT = 100, 30
ROOM = "teahouse"
BOB_SAYS = "こんにちは、アリス 🍵 お茶ある?"
ALICE_SAYS = "あるよ! 🍰 tea's ready"


def utf8_environment() -> dict[str, str]:
    """The tests' environment for the processes, in a UTF-8 locale and outside any tmux."""
    env = environment()
    env["LC_ALL"] = "C.UTF-8"
    env["TERM"] = "xterm-256color"
    env.pop("TMUX", None)
    return env


def writing_exit_status(path: Path, command: list[str]) -> list[str]:
    """
    C{command} run by a shell that then writes its exit status to C{path}.

    Not tmux's C{#{pane_dead_status}}: with C{remain-on-exit}, tmux 3.3
    sometimes leaves the exited process unreaped, and the status empty.
    """
    return ["sh", "-c", 'status="$1"; shift; "$@"; echo "$?" > "$status"', "sh", str(path), *command]


class Tmux:
    """A tmux server of our own (C{-L}, no configuration), killed and its socket removed in cleanup."""

    def __init__(self, case: SynchronousTestCase, executable: str) -> None:
        self._case = case
        self._command = [executable, "-u", "-L", f"chatd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]
        self._socket_path: str | None = None

    def run(self, *arguments: str) -> str:
        result = subprocess.run(
            [*self._command, *arguments],
            env=utf8_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=STEP,
            check=False,
        )
        if result.returncode != 0:
            self._case.fail(f"tmux {' '.join(arguments)}: status {result.returncode}: {result.stderr!r}")
        return result.stdout.decode("utf-8", "replace")

    def start(self, command: list[str]) -> None:
        """Run C{command} in a detached WIDTH x HEIGHT session; its pane stays after it exits."""
        self._case.addCleanup(self.kill)
        self.run(
            "start-server",
            ";",
            "set-option",
            "-g",
            "remain-on-exit",
            "on",
            ";",
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            str(WIDTH),
            "-y",
            str(HEIGHT),
            "--",
            *command,
        )
        self._socket_path = self.pane_format("#{socket_path}")

    def kill(self) -> None:
        subprocess.run(
            [*self._command, "kill-server"],
            env=utf8_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=STEP,
            check=False,
        )
        if self._socket_path:
            # tmux leaves its socket file behind.
            with contextlib.suppress(OSError):
                os.unlink(self._socket_path)

    def type(self, text: str) -> None:
        """C{text} as typed, character by character (no key names)."""
        self.run("send-keys", "-t", SESSION, "-l", text)

    def keys(self, *names: str) -> None:
        """Keys by tmux's names: Enter, Tab, BTab, Space."""
        self.run("send-keys", "-t", SESSION, *names)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", SESSION)

    def pane_format(self, text: str) -> str:
        return self.run("display-message", "-p", "-t", SESSION, text).strip()


class LineClient:
    """One C{chatd-chat --line} process: its stdout read as it comes, its stderr in a file."""

    def __init__(self, case: SynchronousTestCase, *arguments: str) -> None:
        self._errors: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in cleanup)
        case.addCleanup(self._errors.close)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatd.tui.main", "--line", *arguments],
            cwd=REPO_ROOT,
            env=utf8_environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
        )
        case.addCleanup(self.kill)
        assert self.process.stdout is not None
        self._stdout = self.process.stdout.fileno()
        os.set_blocking(self._stdout, False)
        self._output = b""

    def output(self) -> bytes:
        """Everything written to standard output so far."""
        try:
            while chunk := os.read(self._stdout, 65536):
                self._output += chunk
        except BlockingIOError:
            pass
        return self._output

    def errors(self) -> bytes:
        self._errors.seek(0)
        return self._errors.read()

    def write_line(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{text}\n".encode())
        self.process.stdin.flush()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STEP)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class TerminalAppInTmuxTests(SynchronousTestCase):
    def setUp(self) -> None:
        tmux = shutil.which("tmux")
        if tmux is None:
            raise SkipTest("tmux is not installed (.ci/setup dev installs it)")
        self.tmux = Tmux(self, tmux)

    def wait_for(self, predicate: Callable[[], bool], what: Callable[[], str]) -> None:
        """Poll C{predicate} until it holds; fail after STEP seconds, saying C{what()}."""
        deadline = time.monotonic() + STEP
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"not within {STEP:g} s: {what()}")
            time.sleep(POLL)

    def start_daemon(self) -> tuple[int, int]:
        """A C{twistd -n chatd} on free ports, once it accepts TCP connections; its ports."""
        tcp_port, udp_port = free_ports()
        daemon = Daemon(self, tcp_port, udp_port)

        def accepts() -> bool:
            if daemon.process.poll() is not None:
                self.fail(f"twistd exited with status {daemon.process.returncode}:\n{daemon.log()}")
            try:
                socket.create_connection(("127.0.0.1", tcp_port), timeout=1.0).close()
            except OSError:
                return False
            return True

        self.wait_for(accepts, lambda: f"twistd accepting on TCP {tcp_port}:\n{daemon.log()}")
        return tcp_port, udp_port

    def on_screen(self, text: str) -> None:
        """Wait until C{text} shows in the app's pane."""
        self.wait_for(lambda: text in self.tmux.screen(), lambda: f"{text!r} on the screen:\n{self.tmux.screen()}")

    def test_chat_with_a_line_mode_client(self) -> None:
        tcp_port, udp_port = self.start_daemon()
        ports = ["--tcp-port", str(tcp_port), "--udp-port", str(udp_port)]
        app = [sys.executable, "-m", "chatd.tui.main", *ports]
        directory = tempfile.mkdtemp(prefix="chatd-tmux-")
        self.addCleanup(shutil.rmtree, directory, True)
        status_file = Path(directory) / "status"
        self.tmux.start(
            writing_exit_status(status_file, ["env", f"PYTHONPATH={REPO_ROOT}", "TERM=xterm-256color", *app])
        )

        # The name screen, then the room screen: create the room.
        self.on_screen("Pick the name the room will know you by.")
        self.tmux.type("alice")
        self.tmux.keys("Enter")
        self.on_screen("You are alice.")
        self.tmux.type(ROOM)
        # The cursor is in the room field: Shift-Tab to the choice, Space picks "create".
        self.tmux.keys("BTab", "Space", "Tab")
        self.on_screen("(X) create a room")
        self.tmux.keys("Enter")
        self.on_screen(f"You created room {ROOM} and host it.")

        bob = LineClient(self, *ports, "--room", ROOM, "--name", "bob")
        joined = f"* you joined {ROOM} as bob; members: alice, bob\n".encode()

        def bob_wrote(expected: bytes) -> None:
            self.wait_for(
                lambda: len(bob.output()) >= len(expected) or bob.process.poll() is not None,
                lambda: f"bob's output {expected!r}; so far {bob.output()!r}, stderr {bob.errors()!r}",
            )
            self.assertEqual(bob.output(), expected, bob.errors())

        bob_wrote(joined)
        self.on_screen("--> bob joined")
        self.on_screen("2 members")

        # Bob speaks first: his keepalive, sent before, has told the server his address.
        bob.write_line(BOB_SAYS)
        self.on_screen(f"<bob> {BOB_SAYS}")

        self.tmux.type(ALICE_SAYS)
        self.tmux.keys("Enter")
        self.on_screen(f"<alice> {ALICE_SAYS}")
        said = f"alice: {ALICE_SAYS}\n".encode()
        bob_wrote(joined + said)

        # The host quits: the room closes under bob, who ends with status 3.
        self.tmux.type("/quit")
        self.tmux.keys("Enter")
        closed = f"* room {ROOM} was closed: the host left\n".encode()
        bob_wrote(joined + said + closed)
        self.wait_for(lambda: bob.process.poll() is not None, lambda: f"bob's exit; stderr {bob.errors()!r}")
        self.assertEqual(bob.process.returncode, EXIT_ENDED)
        self.assertEqual(bob.errors(), f"chatd-chat: room {ROOM} was closed: the host left\n".encode())

        self.wait_for(status_file.exists, lambda: f"the app's exit:\n{self.tmux.screen()}")
        self.wait_for(lambda: status_file.read_text().endswith("\n"), lambda: "the app's exit status written")
        self.assertEqual(status_file.read_text(), "0\n", self.tmux.screen())
