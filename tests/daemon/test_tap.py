"""Tests for chatd.daemon.tap: the twistd options and makeService."""

from __future__ import annotations

import os
import tempfile
from dataclasses import fields

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.fastudp import HAVE_MMSG
from chatd.daemon.service import ChatService
from chatd.daemon.settings import OPTIONS, Settings, declaration
from chatd.daemon.tap import TAP_ONLY_PARAMETERS, Options, makeService


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
            "--idle-timeout=300",
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
            "--no-legacy",
            "--messages-per-s=17",
            "--message-burst=18",
            "--bytes-per-s=19",
            "--byte-burst=20000",
            "--connections-per-s=21",
            "--connection-burst=22",
            "--password-attempts-per-min=23",
            "--password-attempt-burst=24",
            "--limit-loopback",
            "--tls-port=25",
            "--metrics-port=26",
            "--metrics-interface=::1",
            "--udp-io=twisted",
            "--send-queue=27",
            "--send-queue-timeout=28",
            "--max-invitations=29",
            "--max-rooms-per-host=30",
            "--max-hashing=31",
            "--max-hashing-per-host=32",
            "--auth-failures-per-s=33",
            "--auth-failure-burst=34",
            "--presence-interval=35",
        ).settings()
        self.assertEqual(
            settings,
            Settings(
                interface="::1",
                tcp_port=1,
                udp_port=2,
                idle_timeout=300,
                sweep_interval=4,
                handshake_timeout=5,
                frame_timeout=6,
                keepalive_interval=7,
                max_payload=8,
                max_room_name=9,
                max_user_name=10,
                max_rooms=11,
                max_members=12,
                max_connections=13,
                max_connections_per_host=14,
                invite_ttl=15,
                password_cost=16,
                log_frames=True,
                legacy=False,
                messages_per_s=17,
                message_burst=18,
                bytes_per_s=19,
                byte_burst=20000,
                connections_per_s=21,
                connection_burst=22,
                password_attempts_per_min=23,
                password_attempt_burst=24,
                limit_loopback=True,
                tls_port=25,
                metrics_port=26,
                metrics_interface="::1",
                udp_io="twisted",
                send_queue=27,
                send_queue_timeout=28,
                max_invitations=29,
                max_rooms_per_host=30,
                max_hashing=31,
                max_hashing_per_host=32,
                auth_failures_per_s=33,
                auth_failure_burst=34,
                presence_interval=35,
            ),
        )

    def test_udp_io_defaults_to_batched_where_recvmmsg_exists(self) -> None:
        self.assertEqual(parse().settings().udp_io, "batched" if HAVE_MMSG else "twisted")
        self.assertEqual(parse("--udp-io=batched").settings().udp_io, "batched")

    def test_short_options(self) -> None:
        settings = parse("-i", "0.0.0.0", "-t", "0", "-u", "0").settings()
        self.assertEqual((settings.interface, settings.tcp_port, settings.udp_port), ("0.0.0.0", 0, 0))

    def test_metrics_are_off_by_default_and_on_loopback(self) -> None:
        settings = parse().settings()
        self.assertEqual((settings.metrics_port, settings.metrics_interface), (None, "127.0.0.1"))

    def test_metrics_port_zero_picks_a_free_port(self) -> None:
        self.assertEqual(parse("--metrics-port=0").settings().metrics_port, 0)

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
            ["--messages-per-s=0"],
            ["--byte-burst=inf"],
            ["--tls-cert=/nonexistent/cert.pem"],
            ["--tls-cert=/nonexistent/cert.pem", "--tls-key=/nonexistent/key.pem"],
            ["--metrics-port=65536"],
            ["--metrics-port=-1"],
            ["--metrics-port=http"],
            ["--metrics-interface=localhost"],
            ["--udp-io=epoll"],
        ):
            self.assertRaises(UsageError, parse, *argv)

    def test_settings_that_contradict_each_other_are_refused(self) -> None:
        cases = [
            # The case: hosts that keep alive every 30 s evicted after 20.
            (["--idle-timeout=20"], "--idle-timeout 20 is shorter than 2 keepalive intervals (60 s)"),
            (["--idle-timeout=59", "--keepalive-interval=30"], "--idle-timeout 59 is shorter than"),
            (["--sweep-interval=400"], "--sweep-interval 400 is longer than --idle-timeout 300"),
            (["--message-burst=0.5"], "--message-burst 0.5 is less than 1"),
            (["--byte-burst=4095"], "--byte-burst 4095 is less than a datagram (4096 bytes)"),
            (["--metrics-port=9001"], "--metrics-port and --tcp-port are both 9001 on 127.0.0.1"),
        ]
        for argv, message in cases:
            with self.assertRaises(UsageError) as raised:
                parse(*argv)
            self.assertIn(message, str(raised.exception))
            self.assertNotIn("\n", str(raised.exception))
        # At the edges, and apart, they are fine.
        parse("--idle-timeout=60", "--keepalive-interval=30", "--sweep-interval=60", "--byte-burst=4096")
        parse("--metrics-port=9001", "--metrics-interface=::1")
        parse("--idle-timeout=1", "--sweep-interval=0.1", "--keepalive-interval=0.5")

    def test_help_names_every_option(self) -> None:
        text = str(Options())
        for name in (
            "--interface",
            "--tcp-port",
            "--udp-port",
            "--idle-timeout",
            "--stats-interval",
            "--log-frames",
            "--log-json",
            "--metrics-port",
            "--metrics-interface",
            "--udp-io",
        ):
            self.assertIn(name, text)


class DerivedOptionsTests(SynchronousTestCase):
    """The twistd options are derived from the settings' declarations: nothing to keep in step by hand."""

    def test_every_setting_has_an_option_and_every_option_a_setting(self) -> None:
        options = Options()
        # Less Twisted's own (--help, --version).
        long_options = {name.rstrip("=") for name in options.longOpt} - {
            name.rstrip("=") for name in usage.Options().longOpt
        }
        tap_only = {parameter[0] for parameter in TAP_ONLY_PARAMETERS}
        exposed = {}
        for setting_field in fields(Settings):
            if declaration(setting_field).exposed:
                (option,) = (option for option in OPTIONS if option.field == setting_field.name)
                exposed[option.name] = setting_field
        self.assertEqual(long_options, set(exposed) | tap_only)
        self.assertEqual(set(exposed) & tap_only, set())
        for name, setting_field in exposed.items():
            if setting_field.type == "bool":
                self.assertIn(name, options.longOpt, "a flag takes no value")
            else:
                self.assertIn(f"{name}=", options.longOpt)
                self.assertEqual(options[name], setting_field.default, name)

    def test_each_option_sets_its_setting(self) -> None:
        # Every flag alone, every parameter with its own default given.
        for option in OPTIONS:
            if option.flag:
                settings = parse(f"--{option.name}").settings()
                self.assertEqual(getattr(settings, option.field), not option.default, option.name)
            elif option.default is not None:
                settings = parse(f"--{option.name}={option.default}").settings()
                self.assertEqual(settings, Settings(), option.name)

    def test_short_options(self) -> None:
        synonyms = Options().synonyms
        shorts = {option.short: option.name for option in OPTIONS if option.short}
        self.assertEqual(shorts, {"i": "interface", "t": "tcp-port", "u": "udp-port"})
        for short, name in shorts.items():
            self.assertEqual(synonyms[short], name)

    def test_help_shows_each_help_text(self) -> None:
        # Without white space: --help wraps lines at spaces and after hyphens.
        text = "".join(str(Options()).split())
        helps = [option.help for option in OPTIONS] + [parameter[3] for parameter in TAP_ONLY_PARAMETERS]
        for help_text in helps:
            self.assertIn("".join(help_text.split()), text)
        for option in OPTIONS:
            self.assertIn(f"--{option.name}", text)
        for parameter in TAP_ONLY_PARAMETERS:
            self.assertIn(f"--{parameter[0]}", text)


class MakeServiceTests(SynchronousTestCase):
    def test_builds_service_tree_without_starting(self) -> None:
        reactor = MemoryReactorClock()
        service = makeService(parse("--tcp-port=0"), reactor)
        self.assertIsInstance(service, ChatService)
        self.assertEqual([child.name for child in service], ["udp", "tcp", "sweeper", "stats", "shutdown"])
        self.assertEqual(reactor.tcpServers, [])

    def test_metrics_port_adds_the_metrics_listener(self) -> None:
        service = makeService(parse("--metrics-port=0"), MemoryReactorClock())
        self.assertEqual([child.name for child in service], ["udp", "tcp", "metrics", "sweeper", "stats", "shutdown"])

    def test_log_json_option(self) -> None:
        fd, path = tempfile.mkstemp()
        os.close(fd)
        self.addCleanup(os.remove, path)
        service = makeService(parse(f"--log-json={path}"), MemoryReactorClock())
        self.assertIsNotNone(service._log_observer)
