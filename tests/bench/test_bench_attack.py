"""
chatd-attack (chatd.bench.attack): its pure helpers (frames, forged and
garbage datagrams, delivery arithmetic, rendering, options), and short runs of
a few attacks against a real daemon started with C{--limit-loopback}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.bench import attack
from chatd.bench.attack_floods import SEALED_PREFIX, TAG_SIZE, forged_datagram, garbage_datagram
from chatd.bench.attack_legit import Delivery, message_text, sequence_of
from chatd.bench.attack_wire import create_frame, invite_frame, join_payload, legacy_datagram, rss_kb
from chatd.protocol.datagrams import decode_legacy
from chatd.protocol.seal import peek_header
from chatd.protocol.wire import Operation, SizeEncoding, State, decode_frame
from tests.daemon.test_twistd import REPO_ROOT, START_TIMEOUT, TWISTD, environment
from tests.loopback_clients import free_ports


class HelperTests(SynchronousTestCase):
    def test_create_frame_is_a_model_or_native_request(self) -> None:
        frame = decode_frame(create_frame("lobby", "alice", native=True, password="pw"))
        self.assertEqual((frame.operation, frame.state, frame.room), (Operation.CREATE, State.REQUEST, "lobby"))
        self.assertEqual(frame.encoding, SizeEncoding.BINARY)
        self.assertEqual(json.loads(frame.payload), {"username": "alice", "password": "pw", "chatd": 1})
        self.assertEqual(json.loads(join_payload("bob", native=False)), {"username": "bob"})
        invite = decode_frame(invite_frame("lobby"))
        self.assertEqual((invite.operation, invite.payload), (Operation.INVITE, b""))

    def test_legacy_datagram(self) -> None:
        datagram = decode_legacy(legacy_datagram("lobby", "T0KEN", message_text(7)))
        self.assertEqual((datagram.room, datagram.token, datagram.message), ("lobby", "T0KEN", b"legit 7"))

    def test_forged_datagram_looks_sealed(self) -> None:
        rng = random.Random(1)
        for _ in range(50):
            datagram = forged_datagram(rng, 0xDEADBEEF)
            self.assertTrue(datagram.startswith(SEALED_PREFIX))
            self.assertEqual(peek_header(datagram).key_id, 0xDEADBEEF)
            self.assertGreaterEqual(len(datagram), 15 + 1 + TAG_SIZE)
            garbage = garbage_datagram(rng)
            self.assertTrue(1 <= len(garbage) <= 256)
            self.assertNotEqual(garbage[0], 0)

    def test_delivery_arithmetic(self) -> None:
        self.assertEqual(Delivery(4, 3).percent, 75.0)
        self.assertIsNone(Delivery(0, 0).percent)
        self.assertEqual(attack.delivery_percent(Delivery(3, 2)), 66.7)
        self.assertEqual(sequence_of(b"alice: legit 42"), 42)
        self.assertIsNone(sequence_of(b"* bob joined lobby"))

    def test_rss_of_this_process(self) -> None:
        value = rss_kb(os.getpid())
        self.assertIsNotNone(value)
        assert value is not None
        self.assertGreater(value, 1000)
        self.assertIsNone(rss_kb(None))

    def test_rendering(self) -> None:
        reports = [
            attack.AttackReport("garbage", "native", 1.0, 1024, 2048, 2048, 1536, 10, 9, 90.0, {"datagrams": 5}),
            attack.AttackReport("forgery", "native", 1.0, error="PairError: refused"),
        ]
        table = attack.render_table(reports).splitlines()
        self.assertEqual(len(table), 3)
        self.assertIn("deliv %", table[0])
        self.assertIn("90.0", table[1])
        self.assertIn("datagrams=5", table[1])
        self.assertIn("PairError", table[2])
        options = attack.make_parser().parse_args(["--tcp-port", "1", "--udp-port", "2"])
        document = json.loads(attack.render_json(reports, options))
        self.assertEqual(document["attacks"][0]["delivery_pct"], 90.0)
        self.assertEqual(document["attacks"][0]["counters"], {"datagrams": 5})
        self.assertEqual(attack.brief({"text": "x" * 100}, 20)[-1], "…")

    def test_attack_names(self) -> None:
        self.assertEqual(attack.attack_names("garbage, forgery"), ["garbage", "forgery"])
        self.assertRaises(argparse.ArgumentTypeError, attack.attack_names, "garbage,nope")
        self.assertEqual(attack.make_parser().parse_args([]).attack, list(attack.ATTACKS))


class Daemon:
    """C{twistd -n chatd --limit-loopback} on free ports; killed in cleanup."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.tcp_port, self.udp_port = free_ports()
        directory = tempfile.mkdtemp(prefix="chatd-attack-")
        case.addCleanup(shutil.rmtree, directory, True)
        self.log_path = Path(directory) / "twistd.log"
        output: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 (closed in cleanup)
        case.addCleanup(output.close)
        arguments = ["--tcp-port", str(self.tcp_port), "--udp-port", str(self.udp_port), "--limit-loopback"]
        self.process = subprocess.Popen(
            [*TWISTD, "chatd", *arguments],
            cwd=REPO_ROOT,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        case.addCleanup(self.kill)
        deadline = time.monotonic() + START_TIMEOUT
        while "chatd listening on" not in self.log_path.read_text("utf-8", "replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                case.fail(f"chatd did not start:\n{self.log_path.read_text('utf-8', 'replace')}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


class LiveDaemonTests(SynchronousTestCase):
    def run_tool(self, daemon: Daemon, *arguments: str) -> tuple[int, dict[str, Any]]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = attack.main(
                [
                    "--tcp-port",
                    str(daemon.tcp_port),
                    "--udp-port",
                    str(daemon.udp_port),
                    "--server-pid",
                    str(daemon.process.pid),
                    "--duration",
                    "0.6",
                    "--drain",
                    "0.5",
                    "--json",
                    *arguments,
                ]
            )
        return status, json.loads(out.getvalue())

    def assert_measured(self, report: dict[str, Any]) -> None:
        self.assertIsNone(report["error"])
        for name in ("rss_before_kb", "rss_peak_kb", "rss_after_kb", "rss_end_kb"):
            self.assertGreater(report[name], 1000, name)
        self.assertGreater(report["legit_sent"], 0)
        self.assertTrue(0 <= report["legit_received"] <= report["legit_sent"])
        self.assertIsNotNone(report["delivery_pct"])

    def test_floods_and_invitations(self) -> None:
        daemon = Daemon(self)
        status, document = self.run_tool(daemon, "--attack", "garbage,forgery,invitations", "--rate", "2000")
        self.assertEqual(status, 0)
        garbage, forgery, invitations = document["attacks"]
        for report in (garbage, forgery, invitations):
            self.assert_measured(report)
        self.assertGreater(garbage["counters"]["datagrams"], 0)
        self.assertEqual(forgery["legit_dialect"], "native")
        self.assertGreater(forgery["counters"]["key_id"], 0)
        self.assertGreater(invitations["counters"]["granted"], 0)

    def test_pipelined_and_squat_with_a_model_pair(self) -> None:
        daemon = Daemon(self)
        status, document = self.run_tool(daemon, "--attack", "pipelined,room-squat", "--legit-dialect", "model")
        self.assertEqual(status, 0)
        pipelined, squat = document["attacks"]
        for report in (pipelined, squat):
            self.assert_measured(report)
            self.assertEqual(report["legit_dialect"], "model")
            self.assertEqual(report["counters"]["probe_create_status"], "success")
        self.assertEqual(pipelined["counters"]["requests"], 1170)
        self.assertGreater(pipelined["counters"]["answers"], 0)
        self.assertGreater(squat["counters"]["rooms"], 0)
