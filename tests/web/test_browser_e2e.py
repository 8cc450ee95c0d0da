"""
The page in real headless Chromium against a real daemon (C{twistd -n
chatd --web-port}, a process of its own): two pages, a chatd-chat line-mode
process and a raw model-dialect member in one room; every message reaches
everyone, both ways, in one room order, with the member list.

Everything here blocks, with a timeout on every wait: the daemon and the
line-mode client are processes, the model member is bare sockets, the
browser is Selenium's; the test's reactor is not used at all.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
import time
from typing import IO

from twisted.trial.unittest import SynchronousTestCase

from tests.daemon.test_twistd import REPO_ROOT, Daemon, RawModelMember, environment
from tests.loopback_clients import free_ports
from tests.web.browser import WAIT, ChatPage, start_chromium, wait_for

JOIN = 2


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LineClient:
    """C{chatd-chat --line}, a process: lines in on its standard input, its output lines collected by a thread."""

    def __init__(self, case: SynchronousTestCase, tcp_port: int, udp_port: int, *arguments: str) -> None:
        command = [sys.executable, "-m", "chatd.tui.main", "--line", "--tcp-port", str(tcp_port)]
        command += ["--udp-port", str(udp_port), *arguments]
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        case.addCleanup(self.stop)
        self.output: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._lines.put(line.decode("utf-8", "replace").rstrip("\n"))

    def wait_line(self, line: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"not within {timeout:g} s: {line!r} from chatd-chat; it wrote {self.output}")
            try:
                self.output.append(self._lines.get(timeout=remaining))
            except queue.Empty:
                continue

    def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode("utf-8"))
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WAIT)


class ModelListener:
    """Everything a raw model member receives, kept, with a wait for one datagram among them."""

    def __init__(self, member: RawModelMember) -> None:
        self.member = member
        self.received: list[bytes] = []
        member.udp.settimeout(0.2)

    def wait(self, datagram: bytes, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while datagram not in self.received:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not within {timeout:g} s: {datagram!r} for the model member; got {self.received}"
                )
            try:
                self.received.append(self.member.receive())
            except TimeoutError:
                continue


class BrowserEndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tcp_port, self.udp_port = free_ports()
        self.web_port = free_tcp_port()
        self.daemon = Daemon(self, self.tcp_port, self.udp_port, "--web-port", str(self.web_port))
        self.daemon.wait_listening()
        self.url = f"http://127.0.0.1:{self.web_port}/"

    def page(self) -> ChatPage:
        driver, stop = start_chromium()
        self.addCleanup(stop)
        page = ChatPage(driver, self.url)
        page.open()
        return page

    def test_two_pages_a_line_client_and_a_model_member_chat_in_one_room(self) -> None:
        started = time.monotonic()
        alice = self.page()
        alice.enter_name("alice")
        # By keyboard alone: the page is usable without a mouse.
        alice.create_by_keyboard("lobby")
        alice.wait_connected()
        alice.wait_members(["alice"])

        bob = self.page()
        bob.enter_name("bob")
        bob.join("lobby")
        bob.wait_connected()

        carol = LineClient(self, self.tcp_port, self.udp_port, "--room", "lobby", "--name", "carol")
        carol.wait_line("* you joined lobby as carol; members: alice, bob, carol")
        dave = ModelListener(RawModelMember(self, self.tcp_port, self.udp_port, JOIN, "dave"))

        everyone = ["alice", "bob", "carol", "dave"]
        alice.wait_members(everyone)
        bob.wait_members(everyone)
        carol.wait_line("* dave joined lobby")

        # A browser to everyone; its own line goes from sending to sent, with its number.
        alice.say("hello from alice")
        bob.wait_message("alice", "hello from alice")
        carol.wait_line("alice: hello from alice")
        dave.wait(b"alice: hello from alice")
        own = wait_for(
            lambda: next((m for m in alice.messages() if m["mine"] and m["state"] == "sent"), None),
            f"alice's message marked sent; the page shows {alice.lines()}",
        )
        self.assertEqual((own["text"], own["from"]), ("hello from alice", "alice"))

        # An action from the other browser: each dialect shows it its own way.
        bob.say("/me waves")
        action = alice.wait_message("bob", "waves")
        self.assertTrue(action["action"])
        carol.wait_line("* bob waves")
        dave.wait(b"* bob waves")

        # The terminal's line client to both browsers (and the model member).
        carol.write("hi from the terminal\n")
        alice.wait_message("carol", "hi from the terminal")
        bob.wait_message("carol", "hi from the terminal")
        dave.wait(b"carol: hi from the terminal")

        # The model member to both browsers and the line client.
        dave.member.say("hi from the model client")
        alice.wait_message("dave", "hi from the model client")
        bob.wait_message("dave", "hi from the model client")
        carol.wait_line("dave: hi from the model client")

        # One room order: both pages show the same numbered sequence.
        def numbered(page: ChatPage) -> list[tuple[int, str, str]]:
            return [(m["seq"], m["from"], m["text"]) for m in page.messages() if m["seq"] is not None]

        expected = [
            (1, "alice", "hello from alice"),
            (2, "bob", "waves"),
            (3, "carol", "hi from the terminal"),
            (4, "dave", "hi from the model client"),
        ]
        wait_for(lambda: numbered(alice) == expected, f"alice's numbered messages {numbered(alice)}")
        wait_for(lambda: numbered(bob) == expected, f"bob's numbered messages {numbered(bob)}")

        # The member list follows a departure.
        carol.stop()
        alice.wait_members(["alice", "bob", "dave"])
        bob.wait_members(["alice", "bob", "dave"])
        dave.wait(b"* carol left lobby")

        # "//exit" sends "/exit", which leaves on every dialect: the page says
        # so and does not come back by itself (its first retry would be in 1 s).
        bob.say("//exit")
        alice.wait_members(["alice", "dave"])
        wait_for(lambda: "You left lobby." in " ".join(bob.lines()), f"bob told he left; he sees {bob.lines()}")
        time.sleep(1.5)
        self.assertEqual((bob.state(), alice.members()), ("idle", ["alice", "dave"]))

        # Nothing the page did was refused by its policy or failed in its script.
        for page in (alice, bob):
            self.assertEqual(page.console_errors(), [])
        # Bounded: the whole scene takes seconds.
        self.assertLess(time.monotonic() - started, 30)

    def test_a_refused_join_an_invitation_and_a_server_restart(self) -> None:
        alice = self.page()
        alice.enter_name("alice")
        alice.create("vault", password="sesame")
        alice.wait_connected()

        # Refused: one sentence, and the page stays on the room step.
        bob = self.page()
        bob.enter_name("bob")
        bob.join("vault")
        self.assertEqual(wait_for(bob.error, "bob's error"), "Room 'vault' needs a password.")
        self.assertEqual(bob.state(), "idle")

        # The host's /invite shows a single-use token; bob joins with it.
        alice.say("/invite")
        invite = wait_for(
            lambda: alice.driver.execute_script(
                'const c = document.querySelector("code.invite"); return c && c.textContent'
            ),
            f"the invitation; the page shows {alice.lines()}",
        )
        bob.join("vault", invite=str(invite))
        bob.wait_connected()
        carol = self.page()
        carol.enter_name("carol")
        carol.join("vault", password="sesame")
        carol.wait_connected()
        alice.wait_members(["alice", "bob", "carol"])

        # The server restarts: the pages say so and reconnect by themselves;
        # the host makes the room again (with its password), carol rejoins
        # with hers, and bob, whose invitation was single-use, is told why he
        # cannot (as chatd-chat does).
        self.daemon.process.terminate()
        self.daemon.process.wait(timeout=WAIT)
        for page in (alice, bob, carol):
            wait_for(lambda page=page: page.state() == "reconnecting", f"{page.url} reconnecting")  # type: ignore[misc]
            wait_for(
                lambda page=page: "Connection lost; reconnecting…" in " ".join(page.lines()),  # type: ignore[misc]
                "the lost connection said",
            )
        self.assertIn("the server is shutting down; room vault is closed", " ".join(alice.lines()))
        restarted = Daemon(self, self.tcp_port, self.udp_port, "--web-port", str(self.web_port))
        restarted.wait_listening()
        wait_for(lambda: alice.state() == "connected", "alice reconnected", timeout=20)
        wait_for(lambda: carol.state() == "connected", "carol reconnected", timeout=20)
        alice.wait_members(["alice", "carol"])
        alice.say("back again")
        carol.wait_message("alice", "back again")
        self.assertIn("Reconnected to vault.", " ".join(carol.lines()))
        wait_for(
            lambda: "Could not get back into the room: Room 'vault' needs a password." in bob.lines()[-2],
            f"bob told why he is out; his page shows {bob.lines()}",
            timeout=20,
        )
        self.assertEqual(bob.state(), "idle")
