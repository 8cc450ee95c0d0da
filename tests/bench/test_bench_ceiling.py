"""
chatd.bench.ceiling: the minimal relay as a subprocess, driven over relay_c's
control protocol with plain sockets; chatd.bench.ceiling_compare: the
comparison's pure helpers and options. Loopback only; every wait is bounded;
no C toolchain needed.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.bench import ceiling, ceiling_compare
from chatd.bench.ceiling import Registration, datagram_head
from chatd.bench.ceiling_compare import C_RELAY, PYTHON_RELAY
from tests.loopback_clients import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0
"""Seconds any single network wait may take."""
START_TIMEOUT = 15.0


class RelayProcess:
    """C{python -m chatd.bench.ceiling relay} on free ports, listening once built; killed in the test's cleanup."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.case = case
        self.ctl_port, self.udp_port = free_ports()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in cleanup)
        case.addCleanup(self.log.close)
        ports = ["--udp-port", str(self.udp_port), "--ctl-port", str(self.ctl_port)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatd.bench.ceiling", "relay", *ports, "--register-timeout", "20"],
            cwd=REPO_ROOT,
            env=ceiling_compare.python_environment(),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        case.addCleanup(self.kill)
        # Connect before the test binds its members' sockets: the relay binds its UDP port before
        # it listens, so none of those sockets can take that port in the meantime.
        self.control = self.connect()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-3000:]

    def connect(self) -> socket.socket:
        """The control connection, once the relay listens (it starts in well under START_TIMEOUT)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                self.case.fail(f"the relay exited with status {self.process.returncode}:\n{self.output()}")
            try:
                connection = socket.create_connection(("127.0.0.1", self.ctl_port), timeout=WAIT)
            except OSError:
                if time.monotonic() > deadline:
                    self.case.fail(f"the relay did not listen within {START_TIMEOUT:g} s:\n{self.output()}")
                time.sleep(0.05)
                continue
            self.case.addCleanup(connection.close)
            return connection

    def register(self, registrations: list[Registration], extra: bytes = b"") -> bytes:
        """Send the lines and GO on the control connection; the relay's answer."""
        connection = self.control
        lines = b"".join(b"%s %s %d\n" % registration for registration in registrations)
        connection.sendall(extra + lines + b"GO\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = connection.recv(100)
            if not chunk:
                break
            answer += chunk
        return answer

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.case.fail(f"the relay did not exit within {WAIT:g} s of SIGTERM:\n{self.output()}")


class Member:
    """A member's UDP socket on a free port, with its room and token, and the relay it talks to."""

    def __init__(self, case: SynchronousTestCase, relay: RelayProcess, room: bytes, token: bytes) -> None:
        self.relay = relay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        case.addCleanup(self.sock.close)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(WAIT)
        self.room = room
        self.token = token
        self.port = int(self.sock.getsockname()[1])

    @property
    def registration(self) -> Registration:
        return Registration(self.room, self.token, self.port)

    def send(self, message: bytes, room: bytes | None = None, token: bytes | None = None) -> None:
        head = datagram_head(self.room if room is None else room, self.token if token is None else token)
        self.send_raw(head + message)

    def send_raw(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, ("127.0.0.1", self.relay.udp_port))

    def receive(self) -> bytes:
        """The next datagram, within WAIT seconds; it must come from the relay's port."""
        data, source = self.sock.recvfrom(65536)
        assert source == ("127.0.0.1", self.relay.udp_port), source
        return data


class RelayTests(SynchronousTestCase):
    def start(self, rooms: dict[bytes, int]) -> tuple[RelayProcess, dict[bytes, list[Member]]]:
        relay = RelayProcess(self)
        members = {
            room: [Member(self, relay, room, b"tok-%s-%d" % (room, index)) for index in range(count)]
            for room, count in rooms.items()
        }
        everyone = [member.registration for room in members.values() for member in room]
        self.assertEqual(relay.register(everyone), b"OK %d\n" % len(everyone))
        return relay, members

    def test_relays_to_the_others_of_the_room(self) -> None:
        relay, members = self.start({b"r": 3, b"s": 2})
        r, s = members[b"r"], members[b"s"]
        r[1].send(b"hello there")
        self.assertEqual(r[0].receive(), b"m1: hello there")
        self.assertEqual(r[2].receive(), b"m1: hello there")
        # Room s heard nothing: the first thing each of them hears is the other's message.
        s[0].send(b"from s0")
        self.assertEqual(s[1].receive(), b"m0: from s0")
        s[1].send(b"")
        self.assertEqual(s[0].receive(), b"m1: ")
        # Nor did the sender hear itself.
        r[0].send(b"x" * 1000)
        self.assertEqual(r[1].receive(), b"m0: " + b"x" * 1000)
        self.assertEqual(r[2].receive(), b"m0: " + b"x" * 1000)
        self.assertEqual(relay.terminate(), 0, relay.output())

    def test_drops_what_relay_c_drops(self) -> None:
        relay, members = self.start({b"r": 3, b"s": 2})
        r, s = members[b"r"], members[b"s"]
        stranger = Member(self, relay, b"r", r[0].token)
        stranger.send(b"from an unregistered source")
        r[0].send(b"wrong token", token=b"tok-r-9")
        r[0].send(b"wrong room", room=b"s")
        r[0].send(b"another member's token", token=r[1].token)
        s[0].send(b"a token of room s in room r", room=b"r")
        r[0].send(b"x" * (ceiling.MAX_DATAGRAM + 1))
        r[0].send_raw(bytes((1, 200)) + b"r" + r[0].token)  # the head is longer than the datagram
        r[0].send_raw(b"\x01")
        # What comes after arrives, and first: nothing was relayed before it.
        r[0].send(b"after")
        s[0].send(b"after in s")
        self.assertEqual(r[1].receive(), b"m0: after")
        self.assertEqual(r[2].receive(), b"m0: after")
        self.assertEqual(s[1].receive(), b"m0: after in s")
        r[1].send(b"to r0")
        self.assertEqual(r[0].receive(), b"m1: to r0")
        s[1].send(b"to s0")
        self.assertEqual(s[0].receive(), b"m1: to s0")
        stranger.sock.settimeout(0.2)
        self.assertRaises(TimeoutError, stranger.sock.recv, 65536)
        self.assertEqual(relay.terminate(), 0, relay.output())

    def test_a_batch_of_more_than_one_sendmmsg(self) -> None:
        # 60 messages read in one batch make 60 x 59 copies: four sendmmsg calls of at most 1024.
        relay, members = self.start({b"big": 60})
        room = members[b"big"]
        relay.process.send_signal(signal.SIGSTOP)
        try:
            for member in room:
                member.send(b"from %d" % room.index(member))
        finally:
            relay.process.send_signal(signal.SIGCONT)
        for index, member in enumerate(room):
            heard = sorted(member.receive() for _ in range(59))
            self.assertEqual(heard, sorted(b"m%d: from %d" % (k, k) for k in range(60) if k != index))
        self.assertEqual(relay.terminate(), 0, relay.output())

    def test_control_protocol(self) -> None:
        relay = RelayProcess(self)
        a, b = Member(self, relay, b"room", b"ta"), Member(self, relay, b"room", b"tb")
        # Lines that relay_c's sscanf would not read are skipped, as it skips them.
        extra = b"garbage\nroom tc notaport\n\n"
        self.assertEqual(relay.register([a.registration, b.registration], extra), b"OK 2\n")
        b.send(b"hi")
        self.assertEqual(a.receive(), b"m1: hi")
        self.assertEqual(relay.terminate(), 0, relay.output())

    def test_sigterm_while_registering(self) -> None:
        relay = RelayProcess(self)
        relay.control.sendall(b"room token 1234\n")
        self.assertEqual(relay.terminate(), 0, relay.output())

    def test_sigint(self) -> None:
        relay, _members = self.start({b"r": 2})
        relay.process.send_signal(signal.SIGINT)
        self.assertEqual(relay.process.wait(timeout=WAIT), 0, relay.output())


class RelayPureTests(SynchronousTestCase):
    def test_parse_registration(self) -> None:
        self.assertEqual(ceiling.parse_registration(b"room0 t1 20001\n"), Registration(b"room0", b"t1", 20001))
        self.assertEqual(ceiling.parse_registration(b"a b 7 extra\n"), Registration(b"a", b"b", 7))
        for line in (b"\n", b"a b\n", b"a b c\n", b"a b 0\n", b"a b 65536\n", b"a b -1\n", b"a " + b"t" * 256 + b" 5"):
            self.assertIsNone(ceiling.parse_registration(line), line)

    def test_members(self) -> None:
        registrations = [Registration(b"r", b"a", 1000), Registration(b"s", b"b", 1001), Registration(b"r", b"c", 1002)]
        members, _buffers = ceiling.build_members(registrations)
        self.assertEqual(set(members), {b"\x01\x01ra", b"\x01\x01sb", b"\x01\x01rc"})
        a, b, c = members[b"\x01\x01ra"], members[b"\x01\x01sb"], members[b"\x01\x01rc"]
        self.assertEqual((a.prefix, b.prefix, c.prefix), (b"m0: ", b"m0: ", b"m1: "))
        self.assertEqual((a.first, a.copies, c.first, c.copies, b.copies), (1, 1, 2, 1, 0))
        # The ring holds the room twice: the others of member i start at i + 1.
        self.assertIs(a.ring, c.ring)
        self.assertEqual(len(a.ring), 4)
        self.assertEqual(a.ring[0], a.ring[2])
        self.assertNotEqual(a.ring[0], a.ring[1])


def load(delivered: float, relay_cpu: float = 99.0, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "delivered_per_s": delivered,
        "loss_pct": 0.0,
        "relay_cpu_pct": relay_cpu,
        "gen_cpu_pct": 80.0,
        "cpu_busy_pct": [80.0, relay_cpu],
        "window": 16,
        "unparsed": 0,
        "bad": 0,
        "wrong_len": 0,
    }
    values.update(changes)
    return values


def record(relay: str, rep: int, delivered: float, user: float | None = 30.0, **changes: Any) -> dict[str, Any]:
    return {
        "relay": relay,
        "scenario": "room10",
        "rep": rep,
        "error": None,
        "relay_user_pct": user,
        "relay_system_pct": 60.0,
        "load": load(delivered, **changes),
    }


class ComparePureTests(SynchronousTestCase):
    def test_proc_stat(self) -> None:
        # The command name may hold spaces and parentheses.
        text = "1234 (python (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 0 0\n"
        self.assertEqual(ceiling_compare.proc_cpu_ticks(text), (250, 50))
        with open(f"/proc/{os.getpid()}/stat") as stat:
            user, system = ceiling_compare.proc_cpu_ticks(stat.read())
        self.assertGreaterEqual(min(user, system), 0)

    def test_tcp_listening(self) -> None:
        text = (
            "  sl  local_address rem_address   st tx_queue rx_queue\n"
            "   0: 0100007F:4E21 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n"
            "   1: 0100007F:4E22 0100007F:9C40 01 00000000:00000000 00:00000000 00000000\n"
            "   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n"
        )
        self.assertTrue(ceiling_compare.tcp_listening(text, 20001))
        self.assertFalse(ceiling_compare.tcp_listening(text, 20002))  # established, not listening
        self.assertTrue(ceiling_compare.tcp_listening(text, 22))
        self.assertFalse(ceiling_compare.tcp_listening(text, 80))
        self.assertFalse(ceiling_compare.tcp_listening("", 20001))
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            with open("/proc/net/tcp") as table:
                self.assertTrue(ceiling_compare.tcp_listening(table.read(), listener.getsockname()[1]))

    def test_median(self) -> None:
        self.assertEqual(ceiling_compare.median([3.0, 1.0, 2.0]), 2.0)
        self.assertEqual(ceiling_compare.median([4.0, None, 1.0]), 2.5)
        self.assertIsNone(ceiling_compare.median([None]))
        self.assertIsNone(ceiling_compare.median([]))

    def test_table(self) -> None:
        records = [
            record(C_RELAY, 0, 700_000.0),
            record(PYTHON_RELAY, 0, 350_000.0),
            record(PYTHON_RELAY, 1, 400_000.0, user=None),
            record(C_RELAY, 1, 800_000.0, loss_pct=0.5),
            record(C_RELAY, 2, 600_000.0),
            {"relay": PYTHON_RELAY, "scenario": "room10", "rep": 2, "error": "relayload timed out"},
        ]
        table = ceiling_compare.render_table("room10", records, 3.0)
        lines = table.splitlines()
        self.assertIn("### room10: 1 room x 10 members (window 16;", lines[0])
        self.assertIn("| C reference | 3 | 700,000 | 600,000\N{EN DASH}800,000 | 99 | 30 | 60 | 80 |", lines)
        self.assertIn("| Python ceiling | 2 | 375,000 | 350,000\N{EN DASH}400,000 | 99 | 30 | 60 | 80 |", lines)
        self.assertIn("| **Python ÷ C** | | **0.54** | | | | | |", lines)
        self.assertIn("- C reference rep 1: 0.500 % of copies lost", lines)
        self.assertIn("- Python ceiling rep 2: ERROR relayload timed out", lines)

    def test_table_without_runs(self) -> None:
        table = ceiling_compare.render_table("room200", [record(C_RELAY, 0, 700_000.0, relay_cpu=50.0)], 3.0)
        self.assertIn("| Python ceiling | 0 |" + " \N{EN DASH} |" * 6, table)
        self.assertNotIn("÷", table)
        self.assertIn("relay CPU only 50 %", table)

    def test_run_line(self) -> None:
        line = ceiling_compare.run_line(record(PYTHON_RELAY, 0, 123_456.0))
        self.assertIn("delivered/s   123,456", line)
        self.assertIn("(user 30%, system 60%)", line)
        self.assertIn("ERROR boom", ceiling_compare.run_line({"relay": C_RELAY, "scenario": "room10", "error": "boom"}))

    def test_commands(self) -> None:
        bench = Path("/kit")
        self.assertEqual(ceiling_compare.relay_command(C_RELAY, bench, 1, 2)[0], "/kit/build/relay_c")
        python = ceiling_compare.relay_command(PYTHON_RELAY, bench, 1, 2)
        self.assertEqual(python[1:], ["-m", "chatd.bench.ceiling", "relay", "--udp-port", "1", "--ctl-port", "2"])

    def test_does_not_import_the_relay(self) -> None:
        # It runs the relay as a command; the relay's module imports it, so importing back would be a cycle.
        code = "import sys, chatd.bench.ceiling_compare; print('chatd.bench.ceiling' in sys.modules)"
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env=ceiling_compare.python_environment(),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "False"), result.stderr)

    def test_compare_options(self) -> None:
        with tempfile.TemporaryDirectory() as kit:
            (Path(kit) / "build").mkdir()
            for program in ("relay_c", "relayload"):
                path = Path(kit) / "build" / program
                path.write_text("#!/bin/sh\n")
                path.chmod(0o755)
            parser = ceiling.make_parser()
            arguments = parser.parse_args(["compare", "--bench-dir", kit, "--cpus", "1,0", "--reps", "2"])
            config = ceiling_compare.make_compare_config(parser, arguments)
            self.assertEqual(config.scenarios, ("room10", "rooms100x5", "room200"))
            self.assertEqual((config.reps, config.duration, config.warmup), (2, 3.0, 1.0))
            if (os.cpu_count() or 1) >= 2:
                self.assertEqual(config.cpus, (1, 0))
            for wrong in (["--scenario", "room10,nope"], ["--duration", "30"], ["--reps", "0"]):
                self.assertRaises(SystemExit, self.parse_quietly, ["compare", "--bench-dir", kit, *wrong])
        self.assertRaises(SystemExit, self.parse_quietly, ["compare", "--bench-dir", "/nowhere"])

    def parse_quietly(self, argv: list[str]) -> None:
        parser = ceiling.make_parser()
        with contextlib.redirect_stderr(io.StringIO()):
            ceiling_compare.make_compare_config(parser, parser.parse_args(argv))
