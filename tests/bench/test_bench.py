"""
chatd-bench: its arithmetic and scenario table, its room setup against a
scripted TCP server, its refusals on the command line, and one real run
against a chatd subprocess. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.bench import main as bench_main
from chatd.bench import scenarios, stats
from chatd.bench.setup_rooms import (
    OP_CREATE,
    OP_JOIN,
    MemberRequest,
    RoomSetup,
    SetupError,
    payload_size,
    request_frame,
    split_frame,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
RUN_TIMEOUT = 60.0
DOCUMENTED_FIELDS = (
    "scenario",
    "rooms",
    "members",
    "duration_s",
    "sent",
    "delivered",
    "expected",
    "lost",
    "loss_pct",
    "delivered_per_s",
    "sent_per_s",
    "latency_us",
    "setup_s",
    "joins_per_s",
    "server_cpu_pct",
    "generator_cpu_pct",
    "workers",
    "generator_saturated",
)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("CHATD_CAPTURE", None)
    return env


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def reply(room: bytes, operation: int, state: int, payload: bytes) -> bytes:
    return bytes([len(room), operation, state]) + len(payload).to_bytes(29, "big") + room + payload


def read_request(conn: socket.socket) -> tuple[int, bytes, bytes]:
    """(operation, room, payload) of one request frame, read with the socket's timeout."""
    buffer = b""
    while True:
        frame = split_frame(buffer)
        if frame is not None:
            room_size = buffer[0]
            return frame[0], buffer[32 : 32 + room_size], frame[2]
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("client closed")
        buffer += chunk


class ScriptedServer:
    """A TCP server on a thread that hands each accepted connection to C{handle}; stopped in cleanup."""

    def __init__(self, case: SynchronousTestCase, handle: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.handle = handle
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        case.addCleanup(self.stop)

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5.0)
                try:
                    self.handle(conn)
                except (OSError, ConnectionError) as error:
                    self.errors.append(error)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5.0)
        self.listener.close()


class StatsTests(SynchronousTestCase):
    def test_latency_buckets(self) -> None:
        self.assertEqual(stats.latency_bucket_us(0), 0)
        self.assertEqual(stats.latency_bucket_us(-5), 0)
        self.assertEqual(stats.latency_bucket_us(1999), 1)
        self.assertEqual(stats.latency_bucket_us(2_047_999), 2047)
        # Above 2 ms a bucket is at most 0.1 % wide, and never above the latency.
        for micros in (2048, 3001, 123_457, 499_999, 4_999_999):
            bucket = stats.latency_bucket_us(micros * 1000)
            self.assertLessEqual(bucket, micros)
            self.assertLess(micros - bucket, micros * 0.001 + 1)

    def test_percentiles(self) -> None:
        histogram = {10: 50, 20: 40, 30: 9, 400: 1}
        self.assertEqual(stats.percentile(histogram, 0.5), 10.0)
        self.assertEqual(stats.percentile(histogram, 0.51), 20.0)
        self.assertEqual(stats.percentile(histogram, 0.99), 30.0)
        self.assertEqual(stats.percentile(histogram, 0.999), 400.0)
        self.assertEqual(stats.percentile(histogram, 1.0), 400.0)
        self.assertEqual(stats.percentile(histogram, 0.0), 10.0)
        self.assertIsNone(stats.percentile({}, 0.5))
        self.assertRaises(ValueError, stats.percentile, histogram, 1.5)

    def test_merge_and_combine(self) -> None:
        self.assertEqual(stats.merge_histograms([{1: 2, 3: 4}, {3: 1, 5: 1}]), {1: 2, 3: 5, 5: 1})
        first = stats.WorkerResult(0, sent=3, expected=27, delivered=20, latency_hist={5: 20}, latency_max_ns=9000)
        second = stats.WorkerResult(1, sent=1, expected=9, delivered=9, latency_hist={5: 1, 7: 8}, latency_max_ns=7000)
        total = stats.combine([first, second])
        self.assertEqual((total.sent, total.expected, total.delivered), (4, 36, 29))
        self.assertEqual(total.latency_hist, {5: 21, 7: 8})
        self.assertEqual(total.latency_max_ns, 9000)

    def test_rates_and_loss(self) -> None:
        self.assertEqual(stats.per_second(300, 3.0), 100.0)
        self.assertEqual(stats.per_second(5, 0.0), 0.0)
        self.assertEqual(stats.loss_percent(200, 150), 25.0)
        self.assertEqual(stats.loss_percent(0, 0), 0.0)
        # More copies than expected (not possible, but never a negative loss).
        self.assertEqual(stats.loss_percent(10, 12), 0.0)

    def test_proc_stat(self) -> None:
        # The command name may hold spaces and parentheses.
        text = "1234 (twistd (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 0 0\n"
        self.assertEqual(stats.proc_stat_ticks(text), 300)
        self.assertEqual(stats.cpu_percent(100, 250, 100.0, 2.0), 75.0)
        self.assertEqual(stats.cpu_percent(100, 250, 100.0, 0.0), 0.0)
        proc_stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"
        self.assertEqual(stats.machine_cpu_times(proc_stat), (150, 1000))
        self.assertEqual(stats.busy_percent((150, 1000), (300, 1200)), 75.0)
        self.assertIsNone(stats.busy_percent((150, 1000), (150, 1000)))
        self.assertRaises(ValueError, stats.machine_cpu_times, "intr 1 2 3\n")

    def test_saturation(self) -> None:
        self.assertEqual(stats.saturation([40.0, 45.0], 4, None, 1000.0), (False, None))
        saturated, why = stats.saturation([95.0, 20.0], 4, None, 1000.0)
        self.assertTrue(saturated)
        self.assertIn("95 %", why or "")
        # Eight workers sharing two cores, all busy: the generator had no more CPU to give.
        self.assertTrue(stats.saturation([23.0] * 8, 2, None, 1000.0)[0])
        # Open loop: offering much less than asked means the generator fell behind.
        saturated, why = stats.saturation([30.0], 4, 10_000.0, 8_000.0)
        self.assertTrue(saturated)
        self.assertIn("10,000", why or "")
        self.assertFalse(stats.saturation([30.0], 4, 10_000.0, 9_990.0)[0])
        # Sharing the machine: all CPUs busy, the server under a core, so the workers took its CPU.
        saturated, why = stats.saturation([66.0, 68.0], 2, None, 1000.0, server_cpu_pct=51.0, machine_busy_pct=94.0)
        self.assertTrue(saturated)
        self.assertIn("94 % busy", why or "")
        self.assertFalse(stats.saturation([66.0, 68.0], 2, None, 1000.0, server_cpu_pct=99.0, machine_busy_pct=94.0)[0])
        self.assertFalse(stats.saturation([40.0, 40.0], 2, None, 1000.0, server_cpu_pct=43.0, machine_busy_pct=60.0)[0])

    def info(self, **changes: Any) -> stats.RunInfo:
        values: dict[str, Any] = {
            "scenario": "room10",
            "host": "127.0.0.1",
            "tcp_port": 9001,
            "udp_port": 9002,
            "rooms": 1,
            "members": 10,
            "window": 16,
            "rate": None,
            "size": 100,
            "workers": 2,
            "duration_s": 2.0,
            "warmup_s": 1.0,
            "expire_s": 0.5,
            "setup_s": 0.5,
            "server_pid": 42,
            "server_cpu_pct": 97.25,
            "machine_cpu_busy_pct": 60.0,
            "cores": 4,
        }
        values.update(changes)
        return stats.RunInfo(**values)

    def test_report(self) -> None:
        results = [
            stats.WorkerResult(
                1,
                sent=50,
                expected=450,
                delivered=440,
                received_in_window=442,
                latency_hist={100: 400, 200: 40},
                latency_sum_ns=48_000_000,
                latency_max_ns=250_000,
                cpu_s=0.5,
                cpu_interval_s=2.0,
            ),
            stats.WorkerResult(
                0,
                sent=50,
                expected=450,
                delivered=450,
                received_in_window=450,
                latency_hist={100: 450},
                latency_sum_ns=45_000_000,
                cpu_s=1.0,
                cpu_interval_s=2.0,
            ),
        ]
        report = stats.build_report(self.info(), results)
        for name in DOCUMENTED_FIELDS:
            self.assertIn(name, report)
        self.assertEqual((report["sent"], report["expected"], report["delivered"], report["lost"]), (100, 900, 890, 10))
        self.assertAlmostEqual(report["loss_pct"], 100 * 10 / 900, places=3)
        self.assertEqual(report["delivered_per_s"], 446.0)
        self.assertEqual(report["sent_per_s"], 50.0)
        self.assertEqual(report["joins_per_s"], 20.0)
        self.assertEqual(report["latency_us"]["p50"], 100.0)
        self.assertEqual(report["latency_us"]["p99"], 200.0)
        self.assertEqual(report["latency_us"]["max"], 250.0)
        self.assertEqual(report["generator_cpu_pct_per_worker"], [50.0, 25.0])
        self.assertEqual(report["generator_cpu_pct"], 75.0)
        self.assertEqual(report["server_cpu_pct"], 97.2)
        self.assertFalse(report["generator_saturated"])
        # 1.1 % lost: worth a warning.
        self.assertEqual(len(report["warnings"]), 1)
        self.assertIn("lost", report["warnings"][0])
        self.assertEqual(json.loads(stats.render_json(report)), report)
        table = stats.render_table(report)
        for text in ("room10: 1 room x 10 members", "16 in flight", "p99 200 µs", "97.2 % of one core (pid 42)"):
            self.assertIn(text, table)

    def test_report_saturated_and_unknowns(self) -> None:
        results = [stats.WorkerResult(0, cpu_s=1.9, cpu_interval_s=2.0)]
        report = stats.build_report(self.info(server_pid=None, server_cpu_pct=None, workers=1), results)
        self.assertIsNone(report["server_cpu_pct"])
        self.assertIsNone(report["latency_us"]["p50"])
        self.assertTrue(report["generator_saturated"])
        self.assertTrue(
            any(w.startswith("the generator, not the server, may be the bottleneck") for w in report["warnings"])
        )
        table = stats.render_table(report)
        self.assertIn("unknown (give --server-pid)", table)
        self.assertIn("warning: the generator, not the server, may be the bottleneck", table)

    def test_report_nothing_saturated_suggests_a_larger_window(self) -> None:
        results = [stats.WorkerResult(0, sent=10, expected=10, delivered=10, cpu_s=0.5, cpu_interval_s=2.0)]
        report = stats.build_report(self.info(server_cpu_pct=43.0, window=8), results)
        self.assertFalse(report["generator_saturated"])
        self.assertEqual(len(report["warnings"]), 1)
        self.assertIn("only 8 messages are in flight", report["warnings"][0])
        # One message in flight is a latency measurement (pingpong), and open
        # loop has no window to raise: no such hint.
        report = stats.build_report(self.info(server_cpu_pct=43.0, window=1), results)
        self.assertEqual(report["warnings"], [])
        report = stats.build_report(self.info(server_cpu_pct=43.0, window=None, rate=5.0), results)
        self.assertEqual(report["warnings"], [])


class ScenarioTests(SynchronousTestCase):
    def test_table(self) -> None:
        layouts = {name: (each.rooms, each.members) for name, each in scenarios.SCENARIOS.items()}
        self.assertEqual(layouts, {"pingpong": (1, 2), "room10": (1, 10), "rooms100": (100, 5), "fanout200": (1, 200)})
        self.assertEqual(scenarios.SCENARIOS["pingpong"].window, 1)
        self.assertEqual(scenarios.SCENARIOS["pingpong"].workers, 1)
        self.assertIn(scenarios.DEFAULT_SCENARIO, scenarios.SCENARIOS)
        for name in scenarios.SCENARIOS:
            self.assertIn(name, scenarios.scenario_table())

    def test_split_evenly(self) -> None:
        self.assertEqual(scenarios.split_evenly(16, 3), [6, 5, 5])
        self.assertEqual(scenarios.split_evenly(1, 2), [1, 0])
        self.assertRaises(ValueError, scenarios.split_evenly, 1, 0)

    def test_assign_members(self) -> None:
        blocks = scenarios.assign_members(100, 5, 2)
        self.assertEqual([len(block) for block in blocks], [250, 250])
        # Whole rooms stay in one worker when there are enough rooms.
        self.assertEqual({k // 5 for k in blocks[0]} & {k // 5 for k in blocks[1]}, set())
        big = scenarios.assign_members(1, 200, 3)
        self.assertEqual(sorted(k for block in big for k in block), list(range(200)))
        self.assertEqual([len(block) for block in big], [67, 67, 66])

    def test_sender_order_interleaves_rooms(self) -> None:
        self.assertEqual(scenarios.sender_order([0, 1, 2, 3, 4, 5], 3), [0, 3, 1, 4, 2, 5])


class SetupTests(SynchronousTestCase):
    def test_frames(self) -> None:
        frame = request_frame("hoge", OP_CREATE, b'{"username": "a"}')
        self.assertEqual(frame[:3], b"\x04\x01\x00")
        self.assertEqual(int.from_bytes(frame[3:32], "big"), 17)
        self.assertEqual(frame[32:36], b"hoge")
        self.assertEqual(payload_size(b"22" + 27 * b"\x00"), 22)
        self.assertEqual(payload_size(28 * b"\x00" + b"\x16"), 22)
        self.assertRaises(SetupError, payload_size, b"2\x002" + 26 * b"\x00")
        whole = reply(b"hoge", 1, 1, b"\x00")
        self.assertIsNone(split_frame(whole[:-1]))
        self.assertEqual(split_frame(whole + b"more"), (1, 1, b"\x00", len(whole)))

    def setup(self, port: int, requests: list[MemberRequest]) -> RoomSetup:
        return RoomSetup(("127.0.0.1", port), socket.AF_INET, requests, "", 4, 5.0, 10.0)

    def test_registers_members(self) -> None:
        seen: list[tuple[int, str, dict[str, Any], int]] = []

        def handle(conn: socket.socket) -> None:
            operation, room, payload = read_request(conn)
            conn.sendall(reply(room, operation, 1, b"\x00") + reply(room, operation, 2, b"tok-%d" % len(seen)))
            port = b""
            while len(port) < 2:
                port += conn.recv(2 - len(port))
            seen.append((operation, room.decode(), json.loads(payload), int.from_bytes(port, "big")))

        server = ScriptedServer(self, handle)
        requests = [
            MemberRequest(0, "r", "m0", OP_CREATE, 40000),
            MemberRequest(1, "r", "m1", OP_JOIN, 40001),
            MemberRequest(2, "r", "m2", OP_JOIN, 40002),
        ]
        result = self.setup(server.port, requests).run()
        self.assertEqual(server.errors, [])
        self.assertEqual(sorted(result.tokens), [0, 1, 2])
        self.assertEqual(result.kept_open, 0)
        # The creator goes first; every request is the model dialect's JSON.
        self.assertEqual(seen[0][:3], (OP_CREATE, "r", {"username": "m0", "password": ""}))
        self.assertEqual(sorted((each[2]["username"], each[3]) for each in seen[1:]), [("m1", 40001), ("m2", 40002)])

    def test_refusal_names_the_status(self) -> None:
        def handle(conn: socket.socket) -> None:
            operation, room, _payload = read_request(conn)
            conn.sendall(reply(room, operation, 1, b"\x08"))

        server = ScriptedServer(self, handle)
        setup = self.setup(server.port, [MemberRequest(0, "r", "m0", OP_CREATE, 40000)])
        error = self.assertRaises(SetupError, setup.run)
        self.assertIn("status 8 (room full)", str(error))
        self.assertIn("create of room 'r' as 'm0'", str(error))

    def test_server_closes_without_token(self) -> None:
        def handle(conn: socket.socket) -> None:
            # Read the request, then hang up without answering.
            read_request(conn)

        server = ScriptedServer(self, handle)
        setup = self.setup(server.port, [MemberRequest(0, "r", "m0", OP_CREATE, 40000)])
        error = self.assertRaises(SetupError, setup.run)
        self.assertIn("closed the connection without a token", str(error))


class CommandLineTests(SynchronousTestCase):
    def run_main(self, *arguments: str) -> tuple[int, str]:
        """chatd-bench in this process: (exit status, stderr). Only for runs that end before any worker starts."""
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                status = bench_main.main(list(arguments))
            except SystemExit as exit:
                status = int(exit.code or 0)
        return status, stderr.getvalue()

    def test_refuses_remote_hosts(self) -> None:
        status, stderr = self.run_main("--host", "192.0.2.1", "--quiet")
        self.assertEqual(status, 2)
        self.assertIn("192.0.2.1 (192.0.2.1) is not a loopback address", stderr)
        self.assertIn("--allow-remote", stderr)
        self.assertNotIn("Traceback", stderr)

    def test_unreachable_server(self) -> None:
        status, stderr = self.run_main("--tcp-port", str(free_port(socket.SOCK_STREAM)), "--quiet")
        self.assertEqual(status, 1)
        self.assertIn("chatd-bench: error: cannot reach the server at 127.0.0.1:", stderr)
        self.assertNotIn("Traceback", stderr)

    def test_limits(self) -> None:
        for arguments, message in [
            (("--duration", "61"), "--duration is at most 60 s"),
            (("--size", "10"), "--size must be from 64 to 4000"),
            (("--members", "1"), "--members must be from 2"),
            (("--window", "4", "--rate", "100"), "not allowed with argument"),
        ]:
            status, stderr = self.run_main(*arguments)
            self.assertEqual(status, 2, arguments)
            self.assertIn(message, stderr)


class RealServerTests(SynchronousTestCase):
    """One short run of room10 against a real chatd."""

    def start_chatd(self, tcp_port: int, udp_port: int) -> subprocess.Popen[bytes]:
        log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in cleanup)
        self.addCleanup(log.close)

        def output() -> str:
            log.seek(0)
            return log.read().decode("utf-8", "replace")[-3000:]

        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "--nodaemon",
                "--pidfile=",
                "chatd",
                "--tcp-port",
                str(tcp_port),
                "--udp-port",
                str(udp_port),
            ],
            cwd=REPO_ROOT,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def kill() -> None:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)

        self.addCleanup(kill)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                self.fail(f"chatd exited with status {process.returncode}:\n{output()}")
            try:
                socket.create_connection(("127.0.0.1", tcp_port), timeout=0.5).close()
                return process
            except OSError:
                if time.monotonic() > deadline:
                    self.fail(f"chatd did not accept TCP within {START_TIMEOUT:g} s:\n{output()}")
                time.sleep(0.05)

    def test_room10(self) -> None:
        tcp_port, udp_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        server = self.start_chatd(tcp_port, udp_port)
        # Two workers whatever the machine, so that the run spans processes.
        command = [sys.executable, "-m", "chatd.bench.main", "--scenario", "room10", "--duration", "1"]
        command += ["--warmup", "0.2", "--json", "--workers", "2", "--server-pid", str(server.pid)]
        command += ["--tcp-port", str(tcp_port), "--udp-port", str(udp_port)]
        run = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertNotIn("Traceback", run.stderr)
        report = json.loads(run.stdout)
        for name in DOCUMENTED_FIELDS:
            self.assertIn(name, report)
        self.assertEqual((report["scenario"], report["rooms"], report["members"]), ("room10", 1, 10))
        self.assertEqual((report["duration_s"], report["workers"]), (1.0, 2))
        self.assertGreater(report["sent"], 0)
        self.assertGreater(report["delivered"], 0)
        self.assertLessEqual(report["delivered"], report["expected"])
        self.assertEqual(report["expected"], 9 * report["sent"])
        self.assertEqual(report["lost"], report["expected"] - report["delivered"])
        self.assertTrue(0 <= report["loss_pct"] <= 100)
        self.assertGreater(report["delivered_per_s"], 0)
        self.assertGreater(report["sent_per_s"], 0)
        latency = report["latency_us"]
        self.assertTrue(0 <= latency["p50"] <= latency["p99"] <= latency["p999"], latency)
        self.assertIsInstance(report["server_cpu_pct"], float)
        self.assertGreaterEqual(report["server_cpu_pct"], 0)
        self.assertGreaterEqual(report["generator_cpu_pct"], 0)
        self.assertGreater(report["setup_s"], 0)
        self.assertGreater(report["joins_per_s"], 0)
        self.assertIsInstance(report["generator_saturated"], bool)
        self.assertEqual((report["misdelivered"], report["duplicates"], report["wrong_len"]), (0, 0, 0))
