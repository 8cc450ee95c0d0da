"""
C{twistd -n chatd} as a subprocess: it serves, stops cleanly on SIGTERM (telling
its members), frees its ports at once, and refuses bad options with a usage
line. Blocking sockets with timeouts talk to it; every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from twisted.trial.unittest import SynchronousTestCase

from chatd.protocol.datagrams import FrameType, encode_legacy
from chatd.protocol.seal import Channel, Direction
from chatd.protocol.wire import Frame, Operation, SizeEncoding, State
from tests.loopback_clients import WAIT, BlockingClient, free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile="]
START_TIMEOUT = 15.0
STOP_LIMIT = 2.0
"""Seconds from SIGTERM to exit that the daemon is allowed."""
EMPTY_STOP_LIMIT = 1.0
"""Seconds from SIGTERM to exit with nothing to flush: no grace period is waited for."""
STOPPING = b"* the server is shutting down; room lobby is closed"
ROOM_CLOSED_SENTENCE = "チャットルームが閉じられました".encode()
"""What the course's model client ends its program on when its room closes."""
SILENCE_SENTENCE = "しばらく発言しなかったので、チャットルームから退出させました".encode()
"""What it ends its program on when it was removed for silence."""


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # The capture is for the loopback scenarios; keep the daemon out of it.
    env.pop("CHATD_CAPTURE", None)
    return env


def run_twistd(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TWISTD, "chatd", *arguments],
        cwd=REPO_ROOT,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class Daemon:
    """One C{twistd -n chatd}, its output in a file; killed in cleanup if still running."""

    def __init__(self, case: SynchronousTestCase, tcp_port: int, udp_port: int, *options: str) -> None:
        self.case = case
        directory = tempfile.mkdtemp(prefix="chatd-twistd-")
        case.addCleanup(shutil.rmtree, directory, True)
        self.log_path = Path(directory) / "twistd.log"
        self._output: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 (closed in cleanup)
        case.addCleanup(self._output.close)
        arguments = ["chatd", "--tcp-port", str(tcp_port), "--udp-port", str(udp_port), *options]
        self.process = subprocess.Popen(
            [*TWISTD, *arguments],
            cwd=REPO_ROOT,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        case.addCleanup(self.kill)

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while "chatd listening on" not in self.log():
            if self.process.poll() is not None:
                self.case.fail(f"twistd exited with status {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.case.fail(f"twistd did not start within {START_TIMEOUT:g} s:\n{self.log()}")
            time.sleep(0.05)

    def terminate(self) -> float:
        """SIGTERM; the time it was sent."""
        self.process.send_signal(signal.SIGTERM)
        return time.monotonic()

    def assert_clean_exit(self, since: float) -> None:
        """Exited cleanly within STOP_LIMIT seconds of C{since}."""
        status = self.process.wait(timeout=STOP_LIMIT + 5)
        elapsed = time.monotonic() - since
        log = self.log()
        # Status 0: chatd's own signal handlers (chatd.daemon.service.exit_cleanly_on_signals).
        self.case.assertEqual(status, 0, log)
        self.case.assertLess(elapsed, STOP_LIMIT, log)
        self.case.assertIn("Server Shut Down.", log)
        self.case.assertNotIn("Traceback", log)
        self.case.assertNotIn("Unhandled", log)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


class TwistdTests(SynchronousTestCase):
    def client(self, tcp_port: int, udp_port: int) -> BlockingClient:
        client = BlockingClient("127.0.0.1", tcp_port, udp_port)
        self.addCleanup(client.close)
        return client

    def enter(
        self, client: BlockingClient, operation: Operation, payload: bytes, encoding: SizeEncoding = SizeEncoding.BINARY
    ) -> Frame:
        """Create or join "lobby"; checks the acknowledge, returns the complete frame."""
        client.send_frame(Frame(operation, State.REQUEST, "lobby", payload, encoding))
        self.assertEqual(client.read_frame(), Frame(operation, State.ACKNOWLEDGE, "lobby", b"\x00", encoding))
        complete = client.read_frame()
        self.assertEqual((complete.operation, complete.state, complete.room), (operation, State.COMPLETE, "lobby"))
        return complete

    def model_member(self, tcp_port: int, udp_port: int, operation: Operation, name: str) -> tuple[BlockingClient, str]:
        """A model-dialect member: JSON request, token, 2-byte UDP port, then the server hangs up."""
        client = self.client(tcp_port, udp_port)
        token = self.enter(client, operation, json.dumps({"username": name}).encode()).payload.decode("ascii")
        client.tcp.sendall(client.udp_port.to_bytes(2, "big"))
        self.assertTrue(client.at_eof(), "the server keeps a model connection open after the UDP port")
        return client, token

    def model_chat(self, tcp_port: int, udp_port: int) -> tuple[BlockingClient, BlockingClient]:
        """Create, join and relay both ways in the model dialect."""
        alice, alice_token = self.model_member(tcp_port, udp_port, Operation.CREATE, "alice")
        bob, bob_token = self.model_member(tcp_port, udp_port, Operation.JOIN, "bob")
        self.assertEqual(alice.recv_datagram(), b"* bob joined lobby")
        alice.send_datagram(encode_legacy("lobby", alice_token, "hello"))
        self.assertEqual(bob.recv_datagram(), b"alice: hello")
        bob.send_datagram(encode_legacy("lobby", bob_token, "hi"))
        self.assertEqual(alice.recv_datagram(), b"bob: hi")
        return alice, bob

    def test_serves_and_stops_on_sigterm(self) -> None:
        tcp_port, udp_port = free_ports()
        daemon = Daemon(self, tcp_port, udp_port)
        daemon.wait_listening()
        alice, bob = self.model_chat(tcp_port, udp_port)

        carol = self.client(tcp_port, udp_port)
        self.enter(carol, Operation.JOIN, b"carol", SizeEncoding.ASCII)
        dave = self.client(tcp_port, udp_port)
        dave_complete = self.enter(dave, Operation.JOIN, json.dumps({"chatd": 1, "username": "dave"}).encode())
        for model in (alice, bob):
            self.assertEqual(model.recv_datagram(), b"* carol joined lobby")
            self.assertEqual(model.recv_datagram(), b"* dave joined lobby")
        # The native member seals with the key of its complete frame; the model members get plain text.
        details = json.loads(dave_complete.payload)
        dave_udp = Channel(base64.b64decode(details["key"]), details["key_id"], Direction.TO_SERVER)
        sealed = dave_udp.seal(FrameType.MESSAGE, "sealed ✓".encode())
        self.assertNotIn("sealed ✓".encode(), sealed)
        self.assertNotIn(details["token"].encode(), sealed)
        dave.send_datagram(sealed)
        for model in (alice, bob):
            self.assertEqual(model.recv_datagram(), "dave: sealed ✓".encode())
        joined = carol.read_frame()
        self.assertEqual(
            joined, Frame(Operation.NOTICE, State.COMPLETE, "lobby", b"* dave joined lobby", SizeEncoding.ASCII)
        )

        since = daemon.terminate()
        # Members with open TCP are told there, in their own form, then hung up on.
        self.assertEqual(
            carol.read_frame(), Frame(Operation.NOTICE, State.COMPLETE, "lobby", STOPPING, SizeEncoding.ASCII)
        )
        self.assertTrue(carol.at_eof())
        notice = dave.read_frame()
        self.assertEqual((notice.operation, notice.state, notice.room), (Operation.NOTICE, State.COMPLETE, "lobby"))
        details = json.loads(notice.payload)
        self.assertEqual(
            (details["chatd"], details["event"], details["room"], details["text"]),
            (1, "server_stopping", "lobby", STOPPING.decode()),
        )
        self.assertTrue(dave.at_eof())
        # Model members have only UDP, and get their client's own sentence.
        self.assertEqual(alice.recv_datagram(), ROOM_CLOSED_SENTENCE)
        self.assertEqual(bob.recv_datagram(), ROOM_CLOSED_SENTENCE)
        daemon.assert_clean_exit(since)

        # The ports are free at once: a new daemon binds both and serves.
        again = Daemon(self, tcp_port, udp_port)
        again.wait_listening()
        self.model_chat(tcp_port, udp_port)
        again.assert_clean_exit(again.terminate())

    def test_stops_at_once_with_no_rooms(self) -> None:
        tcp_port, udp_port = free_ports()
        daemon = Daemon(self, tcp_port, udp_port)
        daemon.wait_listening()
        since = daemon.terminate()
        daemon.process.wait(timeout=STOP_LIMIT + 5)
        elapsed = time.monotonic() - since
        # Measured at 0.06 s here (docs/architecture.md, "Stopping"); the
        # bound is looser, for a loaded machine.
        self.assertLess(elapsed, EMPTY_STOP_LIMIT, daemon.log())
        daemon.assert_clean_exit(since)

    def test_help(self) -> None:
        result = run_twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--tcp-port", "--udp-port", "--interface", "--frame-timeout"):
            self.assertIn(option, result.stdout)

    def test_bad_options(self) -> None:
        cases = [
            (["--tcp-port", "70000"], "70000 is not a port number"),
            (["--udp-port", "many"], "many"),
            (["--interface", "nowhere"], "'nowhere' is not an IP address"),
            (["--password-cost", "3"], "--password-cost must be a power of 2"),
        ]
        for arguments, reason in cases:
            result = run_twistd(*arguments)
            output = result.stdout + result.stderr
            self.assertNotEqual(result.returncode, 0, output)
            self.assertNotIn("Traceback", output)
            errors = [line for line in output.splitlines() if reason in line]
            self.assertEqual(len(errors), 1, output)


def raw_frame(operation: int, room: str, payload: bytes) -> bytes:
    """A model-dialect request frame, byte by byte as the course's client builds it (docs/protocol.md 2.1)."""
    name = room.encode("utf-8")
    return bytes((len(name), operation, 0)) + len(payload).to_bytes(29, "big") + name + payload


class RawModelMember:
    """
    The course's model client, as bare sockets: a create or join frame, the
    acknowledge and the token, its UDP port as 2 bytes, then datagrams of
    plain text. None of chatd's codecs, so the test sees the wire as it is.
    """

    def __init__(self, case: SynchronousTestCase, tcp_port: int, udp_port: int, operation: int, name: str) -> None:
        self.server = ("127.0.0.1", udp_port)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        case.addCleanup(self.udp.close)
        self.udp.settimeout(WAIT)
        self.udp.bind(("127.0.0.1", 0))
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=WAIT) as tcp:
            tcp.sendall(raw_frame(operation, "lobby", json.dumps({"username": name}).encode()))
            stream = tcp.makefile("rb")
            acknowledge = stream.read(32 + 5 + 1)
            case.assertEqual(acknowledge[1:3] + acknowledge[-1:], bytes((operation, 1, 0)), acknowledge)
            header = stream.read(32)
            case.assertEqual(header[1:3], bytes((operation, 2)), header)
            complete = stream.read(header[0] + int.from_bytes(header[3:], "big"))
            self.token = complete[header[0] :]
            tcp.sendall(self.udp.getsockname()[1].to_bytes(2, "big"))
            case.assertEqual(stream.read(1), b"", "the server keeps a model connection open after the UDP port")
            stream.close()

    def say(self, text: str) -> None:
        room = b"lobby"
        self.udp.sendto(bytes((len(room), len(self.token))) + room + self.token + text.encode(), self.server)

    def receive(self) -> bytes:
        data, _ = self.udp.recvfrom(4094)
        return data


class ModelClientEndsTests(SynchronousTestCase):
    """
    A real daemon and raw model-dialect members: each membership ends on one
    of the two exact sentences the course's model client ends its program on.
    """

    def test_host_exit_and_removal_for_silence(self) -> None:
        tcp_port, udp_port = free_ports()
        options = ("--idle-timeout", "1", "--sweep-interval", "0.1", "--keepalive-interval", "0.5")
        daemon = Daemon(self, tcp_port, udp_port, *options)
        daemon.wait_listening()

        host = RawModelMember(self, tcp_port, udp_port, 1, "alice")
        member = RawModelMember(self, tcp_port, udp_port, 2, "bob")
        self.assertEqual(host.receive(), b"* bob joined lobby")
        host.say("/exit")
        self.assertEqual(member.receive(), ROOM_CLOSED_SENTENCE)
        self.assertEqual(host.receive(), ROOM_CLOSED_SENTENCE)

        # A new room; the host talks, the member does not, and is removed.
        host = RawModelMember(self, tcp_port, udp_port, 1, "alice")
        member = RawModelMember(self, tcp_port, udp_port, 2, "bob")
        deadline = time.monotonic() + 5
        member.udp.settimeout(0.2)
        received: list[bytes] = []
        while SILENCE_SENTENCE not in received:
            self.assertLess(time.monotonic(), deadline, received)
            # Ten a second: well within the host's rate limit.
            host.say("still here")
            time.sleep(0.1)
            try:
                received.append(member.receive())
            except TimeoutError:
                continue
        # Only the host's chatter came before it, and nothing after it.
        self.assertEqual(received[-1], SILENCE_SENTENCE)
        self.assertEqual({data for data in received[:-1]}, {b"alice: still here"})
        self.assertEqual(host.receive(), b"* bob joined lobby")
        self.assertEqual(host.receive(), b"* bob was removed from lobby after 1 s without activity")
        since = daemon.terminate()
        self.assertEqual(host.receive(), ROOM_CLOSED_SENTENCE)
        daemon.assert_clean_exit(since)
