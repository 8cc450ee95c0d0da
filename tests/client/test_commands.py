"""Tests for chatd.client.commands: what a typed line means (pure)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.commands import COMMAND_NAMES, HELP, Command, Run, Say, Unknown, Usage, parse


class ParseTests(SynchronousTestCase):
    def test_plain_text_is_said(self) -> None:
        self.assertEqual(parse("hello there"), Say("hello there"))

    def test_text_keeps_its_spaces(self) -> None:
        self.assertEqual(parse("  indented  "), Say("  indented  "))

    def test_blank_lines_do_nothing(self) -> None:
        self.assertIsNone(parse(""))
        self.assertIsNone(parse("   "))

    def test_known_commands(self) -> None:
        for command in Command:
            if command is not Command.ME:
                self.assertEqual(parse(f"/{command.value}"), Run(command))

    def test_commands_ignore_case_and_trailing_words(self) -> None:
        self.assertEqual(parse("/WHO"), Run(Command.WHO))
        self.assertEqual(parse("/quit  bye all "), Run(Command.QUIT, "bye all"))

    def test_me_takes_the_rest_of_the_line(self) -> None:
        self.assertEqual(parse("/me waves  at bob"), Run(Command.ME, "waves  at bob"))

    def test_me_without_text_says_how(self) -> None:
        parsed = parse("/me")
        self.assertIsInstance(parsed, Usage)
        assert isinstance(parsed, Usage)
        self.assertIn("/me waves", parsed.message)

    def test_unknown_command_is_not_text(self) -> None:
        self.assertEqual(parse("/foo bar"), Unknown("foo"))

    def test_double_slash_sends_one_slash(self) -> None:
        self.assertEqual(parse("//help is not a command"), Say("/help is not a command"))
        self.assertEqual(parse("//"), Say("/"))


class HelpTests(SynchronousTestCase):
    def test_exit_is_quit(self) -> None:
        self.assertEqual(parse("/exit"), Run(Command.QUIT))
        self.assertEqual(parse("/EXIT"), Run(Command.QUIT))

    def test_the_text_exit_is_never_said(self) -> None:
        # The server would read it as leaving, and the client would rejoin at once.
        for line in ("//exit", " /exit", " /exit ", "//exit  "):
            parsed = parse(line)
            self.assertIsInstance(parsed, Usage, line)
            assert isinstance(parsed, Usage)
            self.assertIn("not sent", parsed.message)

    def test_every_command_is_explained(self) -> None:
        usages = " ".join(entry.usage for entry in HELP)
        for name in COMMAND_NAMES:
            self.assertIn(name, usages)
