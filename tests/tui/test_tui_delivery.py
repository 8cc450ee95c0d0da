"""
Reliable delivery on the chat screen (chatd.tui.delivery_view, drawn by
chatd.tui.chat_screen): our messages' states in place, history dimmed under a
divider, missed messages and the path, /retry and /stats; with a fake client.
"""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.chat_client import ConnectionState
from chatd.client.delivery import DeliveryStats
from chatd.client.events import (
    ConnectionLost,
    DeliveryPathChanged,
    MessageReceived,
    MessagesMissed,
    MessageStateChanged,
    Reconnected,
    RoomClosed,
    RoomRecreated,
    UdpPathLost,
)
from chatd.tui import theme
from chatd.tui.chat_screen import ChatScreen, StatusInfo, Tone
from tests.tui.test_tui_session import NOON, _SessionTest
from tests.tui_helpers import attribute_at, screen_text, status_line, type_line

NINE = time.mktime((2026, 11, 28, 9, 5, 30, 0, 0, -1))
"""09:05 local time."""
NARROW = (59, 30)
"""Narrow enough that the member list makes way: each conversation line ends with its newline."""
NO_DELIVERY = "--- This server does not offer reliable delivery: each message is sent once, without acknowledgement."


class ScreenTests(SynchronousTestCase):
    """The widget alone: states changed in place, history lines, the status line."""

    def setUp(self) -> None:
        self.screen = ChatScreen("hoge", lambda line: None)

    def test_an_own_message_changes_state_in_place(self) -> None:
        self.screen.add_message(NINE, "alice", "hello", own=True, message_id=1)
        self.screen.add_message(NINE, "bob", "after")
        self.assertIn("09:05 <alice> hello …\n09:05 <bob> after", screen_text(self.screen, NARROW))
        self.assertEqual(attribute_at(self.screen, "…"), theme.SENDING)
        self.assertTrue(self.screen.set_message_state(1, "not delivered"))
        self.assertIn(
            "09:05 <alice> hello ✗ not delivered — /retry\n09:05 <bob> after", screen_text(self.screen, NARROW)
        )
        self.assertEqual(attribute_at(self.screen, "✗ not delivered"), theme.ERROR)
        self.screen.set_message_state(1, "sending")
        self.assertTrue(self.screen.set_message_state(1, "sent"))
        self.assertIn("09:05 <alice> hello\n", screen_text(self.screen, NARROW))
        # Sent is final: the line is no longer looked up.
        self.assertFalse(self.screen.set_message_state(1, "not delivered"))
        self.assertNotIn("✗", screen_text(self.screen))

    def test_without_an_id_there_is_no_state(self) -> None:
        self.screen.add_message(NINE, "alice", "hello", own=True)
        self.screen.add_action(NINE, "alice", "waves")
        self.assertIn("09:05 <alice> hello\n09:05 * alice waves\n", screen_text(self.screen, NARROW))
        self.assertFalse(self.screen.set_message_state(1, "sent"))

    def test_an_own_action_has_a_state_too(self) -> None:
        self.screen.add_action(NINE, "alice", "waves", message_id=2, state="not delivered")
        self.assertIn("09:05 * alice waves ✗ not delivered — /retry", screen_text(self.screen))
        self.assertEqual(attribute_at(self.screen, "* alice waves"), theme.ACTION)

    def test_history_is_dim(self) -> None:
        self.screen.add_divider(NINE, "history")
        self.screen.add_history(NINE, "bob", "old news")
        self.screen.add_history(NINE, "bob", "waved", action=True)
        self.assertIn(
            "09:05 ──── history ────\n09:05 <bob> old news\n09:05 * bob waved", screen_text(self.screen, NARROW)
        )
        for text in ("──── history", "<bob> old news", "* bob waved"):
            self.assertEqual(attribute_at(self.screen, text), theme.HISTORY, text)

    def test_the_status_line_shows_the_path_and_the_failures(self) -> None:
        status = StatusInfo("hoge", "alice", "connected", Tone.GOOD, 2, False, "127.0.0.1:9001", path="udp")
        self.screen.set_status(status)
        self.assertEqual(status_line(self.screen), " hoge │ connected │ UDP │ 2 members │ alice @ 127.0.0.1:9001")
        self.screen.set_status(
            StatusInfo(
                "hoge", "alice", "connected", Tone.GOOD, 2, False, "127.0.0.1:9001", True, "tcp", not_delivered=2
            )
        )
        self.assertEqual(
            status_line(self.screen),
            " hoge │ connected │ TCP (UDP blocked) │ 2 not delivered: /retry │ 2 members │ alice @ 127.0.0.1:9001",
        )
        self.assertEqual(attribute_at(self.screen, "TCP (UDP blocked)"), theme.STATUS_BUSY)
        self.assertEqual(attribute_at(self.screen, "2 not delivered"), theme.STATUS_BAD)


class _DeliveryTest(_SessionTest):
    def setUp(self) -> None:
        super().setUp()
        self.client.delivery = True
        self.client.delivery_path = "udp"
        self.client.delivery_stats = DeliveryStats(retransmissions=3, repaired=1, duplicates=2)
        self.enter()


class OwnMessageTests(_DeliveryTest):
    def test_sending_then_sent(self) -> None:
        type_line(self.screen, "hello")
        self.assertIn("<alice> hello …", self.text())
        self.client.emit(MessageStateChanged(1, "hello", "sent", 7))
        self.assertIn("<alice> hello\n", screen_text(self.screen, NARROW))
        self.assertNotIn("…", self.text())

    def test_a_state_told_before_send_returns(self) -> None:
        self.client.early_state = "sent"
        type_line(self.screen, "quick")
        self.assertIn("<alice> quick\n", screen_text(self.screen, NARROW))
        self.assertNotIn("…", self.text())

    def test_not_delivered_then_retry(self) -> None:
        type_line(self.screen, "one")
        type_line(self.screen, "/me waves")
        self.client.emit(MessageStateChanged(1, "one", "not delivered"))
        self.client.emit(MessageStateChanged(2, "/me waves", "not delivered"))
        text = self.text()
        self.assertIn("<alice> one ✗ not delivered — /retry", text)
        self.assertIn("* alice waves ✗ not delivered — /retry", text)
        self.assertIn("│ 2 not delivered: /retry │", status_line(self.screen))
        self.client.failed = [1, 2]
        type_line(self.screen, "/retry")
        text = self.text()
        self.assertIn("--- Sending 2 messages again.", text)
        self.assertIn("<alice> one …", text)
        self.assertNotIn("not delivered:", status_line(self.screen))
        # Sent again by the client under their ids: never a new line.
        self.assertEqual(self.client.sent, ["one", "/me waves"])
        type_line(self.screen, "/retry")
        self.assertIn("--- Nothing to send again: no message failed.", self.text())

    def test_retry_while_reconnecting(self) -> None:
        self.client.emit(ConnectionLost("Connection was closed cleanly.", True), ConnectionState.RECONNECTING)
        type_line(self.screen, "/retry")
        self.assertIn("-!- Not sent again: reconnecting to the server; send it again once connected.", self.text())

    def test_stats(self) -> None:
        type_line(self.screen, "/stats")
        self.assertIn(
            "--- Reliable delivery, your counts: 3 messages sent again, 1 repaired, 2 duplicates dropped,"
            " 0 missed; path: UDP.",
            screen_text(self.screen, (160, 30)),
        )


class ReceivingTests(_DeliveryTest):
    def test_history_under_a_divider_then_live(self) -> None:
        self.client.emit(MessageReceived("bob", "said earlier", NOON - 600, seq=1, history=True))
        self.client.emit(MessageReceived("bob", "/me left for lunch", NOON - 500, seq=2, history=True))
        self.client.emit(MessageReceived("bob", "back now", NOON, seq=3))
        text = screen_text(self.screen, NARROW)
        self.assertIn(
            "──── history: said before you came in ────\n"
            f"{_hhmm(NOON - 600)} <bob> said earlier\n"
            f"{_hhmm(NOON - 500)} * bob left for lunch\n"
            f"{_hhmm(NOON)} <bob> back now",
            text,
        )
        self.assertEqual(attribute_at(self.screen, "said earlier"), theme.HISTORY)
        self.assertIsNone(attribute_at(self.screen, "back now"))
        self.assertEqual(text.count("──── history"), 1)

    def test_missed_and_recreated_are_notices(self) -> None:
        self.client.emit(MessagesMissed(4, 6, "3 messages missed"))
        self.client.emit(RoomRecreated("hoge", "room hoge was created again: earlier messages are gone"))
        text = self.text()
        self.assertIn("-!- 3 messages missed.", text)
        self.assertIn("-!- Room hoge was created again: earlier messages are gone.", text)
        self.assertEqual(attribute_at(self.screen, "3 messages missed."), theme.NOTICE)

    def test_the_path_in_the_status_line(self) -> None:
        self.assertEqual(status_line(self.screen), " hoge │ connected │ UDP │ 2 members │ alice @ 127.0.0.1:9001")
        self.client.emit(UdpPathLost(6.0))
        self.client.emit(DeliveryPathChanged("tcp", "UDP blocked: messages go over TCP"))
        self.assertIn("-!- UDP blocked: messages go over TCP.", self.text())
        # Over TCP messages do arrive: no "UDP: no answer" alarm beside it.
        self.assertEqual(
            status_line(self.screen), " hoge │ connected │ TCP (UDP blocked) │ 2 members │ alice @ 127.0.0.1:9001"
        )
        self.client.emit(DeliveryPathChanged("udp", "UDP works again"))
        self.assertIn("│ connected │ UDP │", status_line(self.screen))

    def test_a_reconnection_reads_the_path_again(self) -> None:
        self.client.delivery_path = "tcp"
        self.client.emit(Reconnected("hoge", ("alice", "bob"), "bob"), ConnectionState.IN_ROOM)
        self.assertIn("│ TCP (UDP blocked) │", status_line(self.screen))

    def test_a_closed_room_shows_no_path(self) -> None:
        self.client.emit(RoomClosed("hoge", "the host left", "* room hoge was closed: the host left"))
        self.assertEqual(status_line(self.screen), " hoge │ closed │ 0 members │ alice @ 127.0.0.1:9001")


class WithoutTheFeatureTests(_SessionTest):
    def setUp(self) -> None:
        super().setUp()
        self.enter()

    def test_no_state_no_path_and_commands_say_why(self) -> None:
        type_line(self.screen, "hello")
        type_line(self.screen, "/retry")
        type_line(self.screen, "/stats")
        text = screen_text(self.screen, (160, 30))
        self.assertIn("<alice> hello\n", screen_text(self.screen, NARROW))
        self.assertEqual(text.count(NO_DELIVERY), 2)
        self.assertEqual(status_line(self.screen), " hoge │ connected │ 2 members │ alice @ 127.0.0.1:9001")

    def test_help_lists_them(self) -> None:
        type_line(self.screen, "/help")
        text = self.text()
        self.assertIn("/retry     send your messages that were not delivered again", text)
        self.assertIn("/stats     your delivery counts", text)


def _hhmm(when: float) -> str:
    return time.strftime("%H:%M", time.localtime(when))
