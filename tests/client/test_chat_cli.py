"""Tests for chatd.client.chat_cli: the command line of chatd-chat."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.chat_cli import ChatArguments, command_words, parse_arguments
from chatd.client.tls import TrustMode
from chatd.client.tls_arguments import DEFAULT_TLS_PORT

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

    def test_native_only_needs_create_and_tls(self) -> None:
        """The server refuses a native-only create over plain TCP: the command line says so before connecting."""
        refusal = self.refused("--room", "hoge", "--create", "--native-only")
        # After argparse's usage, one line says why and what to add.
        why = refusal.splitlines()[-1]
        self.assertTrue(why.startswith("chatd-chat: error: --native-only needs TLS"), why)
        self.assertIn("only on its TLS port", why)
        self.assertIn("--native-only is for --create", self.refused("--room", "hoge", "--native-only", "--tls-tofu"))
        arguments = parse_arguments(["--room", "hoge", "--create", "--native-only", "--tls-tofu"])
        self.assertTrue(arguments.native_only)
        self.assertFalse(parse_arguments(["--create", "--tls-tofu"]).native_only)


class CommandWordsTests(SynchronousTestCase):
    """command_words: how the /invite hint writes the command that runs chatd-chat."""

    def setUp(self) -> None:
        self.checkout = tempfile.mkdtemp(prefix="chatd-words-")
        self.addCleanup(shutil.rmtree, self.checkout, True)
        self.bin = os.path.join(self.checkout, ".venv", "bin")
        os.makedirs(self.bin)
        self.program = os.path.join(self.bin, "chatd-chat")
        with open(self.program, "w") as script:
            script.write("#!/bin/sh\n")
        os.chmod(self.program, 0o755)

    def words(self, argv0: str, search_path: str = "/nonexistent") -> list[str]:
        return command_words(argv0, search_path, self.checkout)

    def test_the_readme_set_up_is_not_on_the_path(self) -> None:
        # sh .ci/serve puts chatd-chat in .venv/bin and the README runs it from there.
        self.assertEqual(self.words(".venv/bin/chatd-chat"), [".venv/bin/chatd-chat"])
        self.assertEqual(self.words("./.venv/bin/chatd-chat"), [".venv/bin/chatd-chat"])
        self.assertEqual(self.words(self.program), [self.program])

    def test_on_the_path_it_is_the_bare_name(self) -> None:
        self.assertEqual(self.words(self.program, search_path=self.bin), ["chatd-chat"])
        self.assertEqual(self.words(".venv/bin/chatd-chat", search_path=f"/nonexistent:{self.bin}"), ["chatd-chat"])

    def test_another_chatd_chat_on_the_path_is_not_this_one(self) -> None:
        other = tempfile.mkdtemp(prefix="chatd-other-")
        self.addCleanup(shutil.rmtree, other, True)
        shutil.copy(self.program, os.path.join(other, "chatd-chat"))
        self.assertEqual(self.words(".venv/bin/chatd-chat", search_path=other), [".venv/bin/chatd-chat"])

    def test_a_path_out_of_the_working_directory_is_made_absolute(self) -> None:
        inner = os.path.join(self.checkout, "docs")
        os.mkdir(inner)
        words = command_words("../.venv/bin/chatd-chat", "/nonexistent", inner)
        self.assertEqual(words, [self.program])

    def test_python_dash_m(self) -> None:
        words = self.words(os.path.join(self.checkout, "chatd", "tui", "main.py"))
        self.assertEqual(words[1:], ["-m", "chatd.tui.main"])
        self.assertTrue(os.path.isabs(words[0]) or os.sep not in words[0])

    def test_not_started_as_chatd_chat(self) -> None:
        # A test runner, or a program of one's own on the library: the name the docs use.
        self.assertEqual(self.words("/usr/bin/pytest"), ["chatd-chat"])
        self.assertEqual(self.words("chatd-chat"), ["chatd-chat"])
