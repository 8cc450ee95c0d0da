"""Tests for chatd.tap: the twistd options and makeService."""

from __future__ import annotations

import os
import tempfile

from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from chatd.service import ChatService
from chatd.settings import Settings
from chatd.tap import Options, makeService


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(parse().settings(), Settings())

    def test_every_option(self) -> None:
        settings = parse(
            "--interface=::1",
            "--tcp-port=1",
            "--udp-port=2",
            "--idle-timeout=3",
            "--sweep-interval=4",
            "--handshake-timeout=5",
            "--frame-timeout=6",
            "--keepalive-interval=7",
            "--max-payload=8",
            "--max-room-name=9",
            "--max-user-name=10",
            "--max-rooms=11",
            "--max-members=12",
            "--max-connections=13",
            "--max-connections-per-host=14",
            "--invite-ttl=15",
            "--password-cost=16",
            "--log-frames",
        ).settings()
        self.assertEqual(
            settings,
            Settings("::1", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, log_frames=True),
        )

    def test_short_options(self) -> None:
        settings = parse("-i", "0.0.0.0", "-t", "0", "-u", "0").settings()
        self.assertEqual((settings.interface, settings.tcp_port, settings.udp_port), ("0.0.0.0", 0, 0))

    def test_bad_values_are_usage_errors(self) -> None:
        for argv in (
            ["--tcp-port=70000"],
            ["--udp-port=-1"],
            ["--tcp-port=abc"],
            ["--interface=localhost"],
            ["--idle-timeout=0"],
            ["--frame-timeout=-1"],
            ["--max-rooms=0"],
            ["--max-room-name=256"],
            ["--max-user-name=0"],
            ["--password-cost=1000"],
            ["--no-such-option"],
        ):
            self.assertRaises(UsageError, parse, *argv)

    def test_help_names_every_option(self) -> None:
        text = str(Options())
        for name in ("--interface", "--tcp-port", "--udp-port", "--idle-timeout", "--log-frames", "--log-json"):
            self.assertIn(name, text)


class MakeServiceTests(SynchronousTestCase):
    def test_builds_service_tree_without_starting(self) -> None:
        reactor = MemoryReactorClock()
        service = makeService(parse("--tcp-port=0"), reactor)
        self.assertIsInstance(service, ChatService)
        self.assertEqual([child.name for child in service], ["udp", "tcp", "sweeper", "shutdown"])
        self.assertEqual(reactor.tcpServers, [])

    def test_log_json_option(self) -> None:
        fd, path = tempfile.mkstemp()
        os.close(fd)
        self.addCleanup(os.remove, path)
        service = makeService(parse(f"--log-json={path}"), MemoryReactorClock())
        self.assertIsNotNone(service._log_observer)
