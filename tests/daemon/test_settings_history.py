"""Tests for the history settings of chatd.daemon.settings (reliable delivery): declared, derived, checked."""

from __future__ import annotations

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.history import DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_MESSAGES, DEFAULT_HISTORY_ON_JOIN
from chatd.daemon.settings import OPTIONS, Settings, not_negative
from chatd.daemon.tap import Options


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class HistorySettingsTests(SynchronousTestCase):
    def test_defaults_are_the_documented_ones(self) -> None:
        # docs/reliability.md, 3 and 6: 512 messages, 256 KiB, 50 on join.
        settings = Settings()
        self.assertEqual(
            (settings.history_messages, settings.history_bytes, settings.history_on_join), (512, 262144, 50)
        )
        self.assertEqual((DEFAULT_HISTORY_MESSAGES, DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_ON_JOIN), (512, 262144, 50))

    def test_options_are_derived(self) -> None:
        options = {option.field: option for option in OPTIONS}
        for field, name in (
            ("history_messages", "history-messages"),
            ("history_bytes", "history-bytes"),
            ("history_on_join", "history-on-join"),
        ):
            self.assertEqual((options[field].name, options[field].coerce, options[field].flag), (name, int, False))

    def test_each_option_fills_its_setting(self) -> None:
        settings = parse("--history-messages=7", "--history-bytes=100", "--history-on-join=0").settings()
        self.assertEqual(settings, Settings(history_messages=7, history_bytes=100, history_on_join=0))

    def test_checks(self) -> None:
        cases = [
            (Settings(history_messages=0), "--history-messages must be at least 1"),
            (Settings(history_bytes=0), "--history-bytes must be at least 1"),
            (Settings(history_on_join=-1), "--history-on-join must be at least 0"),
            (Settings(history_messages=1, history_bytes=1, history_on_join=0), None),
        ]
        for settings, complaint in cases:
            self.assertEqual(settings.invalid_value(), complaint)

    def test_refused_on_the_command_line(self) -> None:
        for argv in ("--history-messages=0", "--history-bytes=-5", "--history-on-join=-1", "--history-bytes=lots"):
            self.assertRaises(UsageError, parse, argv)

    def test_not_negative(self) -> None:
        self.assertEqual((not_negative("--x", 0), not_negative("--x", 1)), (None, None))
        self.assertEqual(not_negative("--x", -1), "--x must be at least 0")
