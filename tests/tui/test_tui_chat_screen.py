"""Tests for chatd.tui.chat_screen: the chat view as a widget, rendered as text."""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from chatd.tui import theme
from chatd.tui.chat_screen import ChatScreen, LineKind, StatusInfo, Tone, clock_time
from chatd.tui.input_line import MAX_ROWS
from tests.tui_helpers import attribute_at, press, screen_text, status_line, type_line

FIVE_PAST_NINE = time.mktime((2026, 11, 28, 9, 5, 30, 0, 0, -1))
"""09:05 local time, whatever the test machine's zone."""


class ChatScreenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lines: list[str] = []
        self.screen = ChatScreen("hoge", self.lines.append)

    def test_clock_time(self) -> None:
        self.assertEqual(clock_time(FIVE_PAST_NINE), "09:05")

    def test_messages_show_time_and_sender(self) -> None:
        self.screen.add_message(FIVE_PAST_NINE, "bob", "hello")
        self.assertIn("09:05 <bob> hello", screen_text(self.screen))

    def test_own_messages_and_notices_look_different(self) -> None:
        self.screen.add_message(FIVE_PAST_NINE, "bob", "from bob")
        self.screen.add_message(FIVE_PAST_NINE, "alice", "from me", own=True)
        self.screen.add_line(FIVE_PAST_NINE, LineKind.NOTICE, "a notice")
        self.screen.add_line(FIVE_PAST_NINE, LineKind.ERROR, "an error")
        self.assertEqual(attribute_at(self.screen, "<alice>"), theme.OWN_NICK)
        self.assertEqual(attribute_at(self.screen, "from me"), theme.OWN_TEXT)
        self.assertEqual(attribute_at(self.screen, "<bob>"), theme.nick_attribute("bob"))
        self.assertIsNone(attribute_at(self.screen, "from bob"))
        self.assertEqual(attribute_at(self.screen, "a notice"), theme.NOTICE)
        self.assertEqual(attribute_at(self.screen, "an error"), theme.ERROR)
        self.assertEqual(attribute_at(self.screen, "09:05"), theme.TIME)

    def test_mentions_stand_out(self) -> None:
        self.screen.add_message(FIVE_PAST_NINE, "bob", "hi alice", mention=True)
        self.assertEqual(attribute_at(self.screen, "hi alice"), theme.MENTION)

    def test_actions(self) -> None:
        self.screen.add_action(FIVE_PAST_NINE, "bob", "waves")
        self.assertIn("09:05 * bob waves", screen_text(self.screen))
        self.assertEqual(attribute_at(self.screen, "* bob waves"), theme.ACTION)

    def test_joins_and_leaves(self) -> None:
        self.screen.add_line(FIVE_PAST_NINE, LineKind.JOINED, "bob joined")
        self.screen.add_line(FIVE_PAST_NINE, LineKind.LEFT, "bob left")
        text = screen_text(self.screen)
        self.assertIn("09:05 --> bob joined", text)
        self.assertIn("09:05 <-- bob left", text)

    def test_long_lines_hang_under_the_text(self) -> None:
        self.screen.add_message(FIVE_PAST_NINE, "bob", "word " * 30)
        rows = [line for line in screen_text(self.screen, (60, 12)).splitlines() if "word" in line]
        self.assertGreater(len(rows), 1)
        self.assertTrue(rows[1].startswith("      word"), rows[1])

    def test_members_sorted_and_counted(self) -> None:
        self.screen.set_members(("carol", "alice", "Bob"), "alice")
        rows = screen_text(self.screen).splitlines()
        panel = [row.rpartition("│ ")[2].strip() for row in rows[1:5]]
        self.assertEqual(panel, ["3 here", "alice", "Bob", "carol"])
        self.assertEqual(attribute_at(self.screen, "alice"), theme.MEMBER_ME)

    def test_the_host_is_marked(self) -> None:
        self.screen.set_members(("carol", "alice", "Bob"), "alice", host="carol")
        rows = screen_text(self.screen).splitlines()
        panel = [row.rpartition("│ ")[2].strip() for row in rows[1:5]]
        self.assertEqual(panel, ["3 here", "alice", "Bob", "carol (host)"])

    def test_narrow_terminals_drop_the_member_list(self) -> None:
        self.screen.set_members(("alice", "bob"), "alice")
        self.screen.add_message(FIVE_PAST_NINE, "bob", "hi")
        self.assertNotIn("2 here", screen_text(self.screen, (50, 10)))
        self.assertIn("09:05 <bob> hi", screen_text(self.screen, (50, 10)))
        self.assertIn("2 here", screen_text(self.screen, (80, 10)))

    def test_a_long_input_leaves_the_conversation_in_view(self) -> None:
        self.screen.add_message(FIVE_PAST_NINE, "bob", "still visible")
        self.screen.input.put_back("y" * 2000)
        rows = screen_text(self.screen, (80, 12)).splitlines()
        self.assertIn("09:05 <bob> still visible", rows[1])
        self.assertEqual(sum(1 for row in rows if row.startswith("yyyy")), MAX_ROWS)
        self.assertTrue(rows[-1].startswith("y"))

    def test_status_line(self) -> None:
        self.screen.set_status(StatusInfo("hoge", "alice", "connected", Tone.GOOD, 2, True, "127.0.0.1:9001"))
        self.assertEqual(status_line(self.screen), " hoge │ connected │ 2 members │ host │ alice @ 127.0.0.1:9001")
        self.assertEqual(attribute_at(self.screen, "connected"), theme.STATUS_GOOD)

    def test_enter_hands_over_the_line(self) -> None:
        type_line(self.screen, "hello")
        press(self.screen, "enter")
        self.assertEqual(self.lines, ["hello", ""])
        press(self.screen, "up")
        self.assertIn("hoge> hello", screen_text(self.screen))

    def test_reading_back_is_not_interrupted(self) -> None:
        self.screen.set_status(StatusInfo("hoge", "alice", "connected", Tone.GOOD, 2, False, "127.0.0.1:9001"))
        for number in range(60):
            self.screen.add_message(FIVE_PAST_NINE, "bob", f"line {number}")
        self.assertIn("line 59", screen_text(self.screen))
        press(self.screen, "page up", "page up")
        self.assertFalse(self.screen.following)
        self.assertIn("more below: PgDn", status_line(self.screen))
        self.screen.add_message(FIVE_PAST_NINE, "bob", "line 60")
        self.assertNotIn("line 60", screen_text(self.screen))
        press(self.screen, "page down", "page down", "page down")
        self.assertTrue(self.screen.following)
        self.assertIn("line 60", screen_text(self.screen))
        self.assertNotIn("more below", status_line(self.screen))
