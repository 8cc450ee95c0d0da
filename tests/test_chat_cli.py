"""Tests for chatd.chat_cli: the command line of chatd-chat."""

from __future__ import annotations

import contextlib
import io

from twisted.trial.unittest import SynchronousTestCase

from chatd.chat_cli import DEFAULT_TLS_PORT, ChatArguments, parse_arguments
from chatd.tls import TrustMode

FINGERPRINT = "SHA256:" + ":".join(["ab"] * 32)


class ParseArgumentsTests(SynchronousTestCase):
    def refused(self, *argv: str) -> str:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as exited:
            parse_arguments(list(argv))
        self.assertEqual(exited.exception.code, 2)
        return err.getvalue()

    def test_defaults_are_plain_tcp_on_the_seed_ports(self) -> None:
        self.assertEqual(parse_arguments([]), ChatArguments())

    def test_room_flags(self) -> None:
        arguments = parse_arguments(["--room", "hoge", "--name", "ann", "--password", "pw", "--create"])
        self.assertEqual(
            (arguments.room, arguments.name, arguments.password, arguments.create), ("hoge", "ann", "pw", True)
        )

    def test_line_mode_needs_room_and_name(self) -> None:
        self.assertIn("--line needs --room and --name", self.refused("--line"))
        self.assertIn("--json needs --line", self.refused("--json"))
        self.assertIn("not allowed with argument", self.refused("--password", "x", "--invite", "y"))

    def test_tls_port_alone_pins_on_first_use(self) -> None:
        arguments = parse_arguments(["--tls-port", "9443"])
        assert arguments.tls is not None
        self.assertEqual((arguments.tls.mode, arguments.tcp_port), (TrustMode.TOFU, 9443))

    def test_trust_options_turn_tls_on_at_the_default_port(self) -> None:
        for argv, mode in (
            (["--tls-ca", "/etc/chatd/cert.pem"], TrustMode.CA_FILE),
            (["--tls-fingerprint", FINGERPRINT], TrustMode.FINGERPRINT),
            (["--tls-system"], TrustMode.SYSTEM),
            (["--tls-tofu"], TrustMode.TOFU),
        ):
            arguments = parse_arguments(argv)
            assert arguments.tls is not None
            self.assertEqual((arguments.tls.mode, arguments.tcp_port), (mode, DEFAULT_TLS_PORT))

    def test_bad_trust_options(self) -> None:
        self.assertIn("--tls-fingerprint", self.refused("--tls-fingerprint", "nonsense"))
        self.assertIn("not allowed with argument", self.refused("--tls-ca", "x", "--tls-system"))
        self.assertIn("not a port number", self.refused("--tls-port", "0"))
