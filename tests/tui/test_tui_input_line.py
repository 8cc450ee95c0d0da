"""Tests for chatd.tui.input_line: history, completion, and the keys that use them."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from chatd.tui.input_line import InputHistory, InputLine, complete
from tests.tui_helpers import press, type_text


class InputHistoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.history = InputHistory()
        for line in ("first", "second", "third"):
            self.history.add(line)

    def test_walks_back_then_forward_to_the_draft(self) -> None:
        self.assertEqual(self.history.previous("draft"), "third")
        self.assertEqual(self.history.previous("third"), "second")
        self.assertEqual(self.history.next(), "third")
        self.assertEqual(self.history.next(), "draft")
        self.assertIsNone(self.history.next())

    def test_stops_at_the_oldest(self) -> None:
        for _ in range(3):
            self.history.previous("")
        self.assertIsNone(self.history.previous(""))

    def test_repeats_and_blanks_are_not_kept(self) -> None:
        self.history.add("third")
        self.history.add("  ")
        self.assertEqual(self.history.previous(""), "third")
        self.assertEqual(self.history.previous(""), "second")

    def test_limited(self) -> None:
        history = InputHistory(limit=2)
        for line in ("a", "b", "c"):
            history.add(line)
        self.assertEqual([history.previous(""), history.previous(""), history.previous("")], ["c", "b", None])


class CompleteTests(SynchronousTestCase):
    names = ("alice", "bob", "bobby", "Carol")
    commands = ("/help", "/who", "/whois")

    def test_a_name_at_the_start_addresses_someone(self) -> None:
        self.assertEqual(complete("al", self.names, self.commands), "alice: ")

    def test_a_name_later_on_gets_a_space(self) -> None:
        self.assertEqual(complete("hi car", self.names, self.commands), "hi Carol ")

    def test_several_matches_complete_what_they_share(self) -> None:
        self.assertEqual(complete("b", self.names, self.commands), "bob")
        self.assertIsNone(complete("bob", self.names, self.commands))

    def test_commands_at_the_start(self) -> None:
        self.assertEqual(complete("/he", self.names, self.commands), "/help ")
        self.assertEqual(complete("/w", self.names, self.commands), "/who")

    def test_nothing_to_complete(self) -> None:
        self.assertIsNone(complete("", self.names, self.commands))
        self.assertIsNone(complete("hi ", self.names, self.commands))
        self.assertIsNone(complete("zed", self.names, self.commands))


class InputLineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.line = InputLine("> ", lambda: ("alice", "bob"), ("/help",))

    def keys(self, *keys: str) -> None:
        press(self.line, *keys, size=(40,))

    def test_take_empties_and_remembers(self) -> None:
        type_text(self.line, "hello", size=(40,))
        self.assertEqual(self.line.take(), "hello")
        self.assertEqual(self.line.edit_text, "")
        self.keys("up")
        self.assertEqual(self.line.edit_text, "hello")

    def test_up_and_down_keep_the_draft(self) -> None:
        for text in ("one", "two"):
            type_text(self.line, text, size=(40,))
            self.line.take()
        type_text(self.line, "dra", size=(40,))
        self.keys("up", "up")
        self.assertEqual(self.line.edit_text, "one")
        self.keys("down", "down")
        self.assertEqual(self.line.edit_text, "dra")
        self.assertEqual(self.line.edit_pos, 3)

    def test_readline_keys(self) -> None:
        type_text(self.line, "hello big world", size=(40,))
        self.keys("ctrl w")
        self.assertEqual(self.line.edit_text, "hello big ")
        self.keys("ctrl a", "ctrl k")
        self.assertEqual(self.line.edit_text, "")

    def test_tab_completes_at_the_end_only(self) -> None:
        type_text(self.line, "bo", size=(40,))
        self.keys("tab")
        self.assertEqual(self.line.edit_text, "bob: ")
        self.keys("left", "tab")
        self.assertEqual(self.line.edit_text, "bob: ")
