"""
Tests for chatd.tui.session: client events to chat lines, typed lines to
commands, with a fake client on a Clock (the real client: test_tui_app).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd.client.chat_client import ConnectionState, IChatListener
from chatd.client.events import (
    ConnectionLost,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Reconnected,
    Reconnecting,
    RemovedForInactivity,
    RoomClosed,
    ServerStopping,
    Throttled,
    UdpPathLost,
    UdpPathRestored,
    WaitingForHost,
)
from chatd.tui import theme
from chatd.tui.screens import RoomChoice
from chatd.tui.session import ChatSession
from tests.tui_helpers import FakeClient, attribute_at, press, screen_text, shows, status_line, type_line

HOGE = RoomChoice(False, "hoge", None, None, "127.0.0.1", 9001, 9002)
NOON = 1_700_000_000.0


class _SessionTest(SynchronousTestCase):
    choice = HOGE

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOON)
        self.left: list[str] = []
        self.quits = 0
        self.changes = 0
        self.clients: list[FakeClient] = []
        self.session = ChatSession(
            "alice",
            self.choice,
            self.make_client,
            self.clock,
            on_leave=self.left.append,
            on_quit=self.quit,
            changed=self.changed,
        )
        self.client = self.clients[0]
        self.screen = self.session.screen

    def make_client(self, host: str, tcp_port: int, udp_port: int, listener: IChatListener) -> FakeClient:
        client = FakeClient(host, tcp_port, udp_port, listener)
        self.clients.append(client)
        return client

    def quit(self) -> None:
        self.quits += 1

    def changed(self) -> None:
        self.changes += 1

    def enter(self, host: bool = False, members: tuple[str, ...] = ("bob", "alice")) -> None:
        self.session.enter()
        self.client.enter_succeeds(host, members)

    def text(self) -> str:
        return screen_text(self.screen)


class EnteringTests(_SessionTest):
    def test_the_client_is_made_for_the_chosen_server(self) -> None:
        self.assertEqual(self.client.address, ("127.0.0.1", 9001, 9002))
        self.assertIs(self.client.listener, self.session)

    def test_join(self) -> None:
        self.session.enter()
        self.assertEqual(self.client.requests, [("join", "hoge", "alice", "", "")])
        self.assertIn("connecting", status_line(self.screen))
        self.client.enter_succeeds(False, ("bob", "alice"))
        text = self.text()
        self.assertIn("You joined room hoge.", text)
        self.assertIn("2 members in room hoge: alice (you), bob (host)", text)
        self.assertEqual(status_line(self.screen), " hoge │ connected │ 2 members │ alice @ 127.0.0.1:9001")

    def test_create_makes_a_host(self) -> None:
        self.enter(host=True, members=("alice",))
        self.assertIn("You created room hoge and host it.", self.text())
        self.assertIn("│ host │", status_line(self.screen))


class EventTests(_SessionTest):
    def setUp(self) -> None:
        super().setUp()
        self.enter()

    def test_messages_and_actions(self) -> None:
        self.client.emit(MessageReceived("bob", "hello", NOON))
        self.client.emit(MessageReceived("bob", "/me waves", NOON))
        text = self.text()
        self.assertIn("<bob> hello", text)
        self.assertIn("* bob waves", text)
        self.assertGreater(self.changes, 0)

    def test_a_display_bug_does_not_reach_the_client(self) -> None:
        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("boom")

        self.screen.add_message = broken  # type: ignore[method-assign]
        self.client.emit(MessageReceived("bob", "hello", NOON))
        self.assertIn("-!- Internal error: RuntimeError: boom. Please report it.", self.text())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_members_come_and_go(self) -> None:
        self.client.emit(MemberJoined("carol", ("alice", "bob", "carol"), "* carol joined hoge"))
        self.assertIn("--> carol joined", self.text())
        self.assertIn("3 members", status_line(self.screen))
        self.client.emit(MemberLeft("bob", ("alice", "carol"), "* bob left hoge"))
        self.client.emit(MemberLeft("carol", ("alice",), "* carol was removed", timed_out=True))
        text = self.text()
        self.assertIn("<-- bob left", text)
        self.assertIn("<-- carol was removed after too long without a sign of life", text)
        self.assertIn("1 here", text)

    def test_room_closed_under_us(self) -> None:
        self.client.emit(RoomClosed("hoge", "the host left", "* room hoge was closed: the host left"))
        text = self.text()
        self.assertIn("-!- Room hoge was closed: the host left.", text)
        self.assertIn("/leave to pick another room, /quit to exit.", text)
        self.assertEqual(status_line(self.screen), " hoge │ closed │ 0 members │ alice @ 127.0.0.1:9001")

    def test_removed_for_inactivity(self) -> None:
        self.client.emit(RemovedForInactivity("hoge", "* you were removed from hoge after 300 s without activity"))
        self.assertIn("-!- You were removed from hoge after 300 s without activity.", self.text())
        self.assertIn("│ closed │", status_line(self.screen))

    def test_throttled(self) -> None:
        self.client.emit(Throttled("hoge", "* you are sending too fast: messages are being dropped; slow down"))
        self.assertIn("-!- You are sending too fast: messages are being dropped; slow down.", self.text())

    def test_status_through_a_reconnect(self) -> None:
        self.assertIn("│ connected │", status_line(self.screen))
        self.client.emit(ServerStopping("hoge", "* the server is shutting down; room hoge is closed"))
        self.client.emit(ConnectionLost("Connection was closed cleanly.", True), ConnectionState.RECONNECTING)
        self.client.emit(Reconnecting(1, 2.0))
        text = self.text()
        self.assertIn("The server is shutting down; reconnecting when it is back.", text)
        self.assertIn("Lost the connection to the server; reconnecting.", text)
        self.assertIn("│ reconnecting (attempt 1, in 2s) │", status_line(self.screen))
        self.clock.advance(1.01)
        self.assertIn("│ reconnecting (attempt 1, in 1s) │", status_line(self.screen))
        self.clock.advance(1)
        self.assertIn("│ reconnecting (attempt 1, trying now) │", status_line(self.screen))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.client.emit(Reconnecting(2, 4.0))
        self.assertIn("│ reconnecting (attempt 2, in 4s) │", status_line(self.screen))
        self.client.emit(Reconnected("hoge", ("alice", "bob", "carol")), ConnectionState.IN_ROOM)
        self.assertIn("Reconnected to room hoge.", self.text())
        self.assertIn("│ connected │ 3 members │", status_line(self.screen))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_who_hosts_is_shown(self) -> None:
        self.assertIn("2 members in room hoge: alice (you), bob (host)", self.text())
        self.assertIn("bob (host)", [row.rpartition("│ ")[2].strip() for row in self.text().splitlines()])

    def test_waiting_for_the_host_after_a_restart(self) -> None:
        """Told once in the scrollback; the status line counts down each try; back when the host is."""
        self.client.emit(ConnectionLost("Connection was closed cleanly.", True), ConnectionState.RECONNECTING)
        self.client.emit(Reconnecting(1, 0.5))
        self.clock.advance(0.5)
        self.client.emit(WaitingForHost("hoge", "bob", 2, 2.0, 120.0))
        self.assertTrue(
            shows(
                self.screen,
                "-!- The server restarted and room hoge is gone; waiting for bob to reopen it (giving up in 2 min).",
            )
        )
        self.assertIn("│ waiting for bob to reopen the room (attempt 2, in 2s) │", status_line(self.screen))
        self.clock.advance(2.0)
        self.client.emit(WaitingForHost("hoge", "bob", 3, 4.0, 118.0))
        self.assertIn("│ waiting for bob to reopen the room (attempt 3, in 4s) │", status_line(self.screen))
        self.assertEqual(self.text().count("waiting for bob to reopen it"), 1)
        type_line(self.screen, "anyone?")
        self.assertIn("Not sent: the room is not back yet (waiting for its host to reopen it)", self.text())
        self.client.emit(Reconnected("hoge", ("bob", "alice"), "bob"), ConnectionState.IN_ROOM)
        self.assertIn("│ connected │ 2 members │", status_line(self.screen))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        type_line(self.screen, "/who")
        self.assertIn("2 members in room hoge: alice (you), bob (host)", self.text())

    def test_udp_path_lost_and_restored(self) -> None:
        self.client.emit(UdpPathLost(4.5))
        self.assertIn(
            "-!- No UDP from the server for 4 s: messages cannot be delivered, either way."
            " Is UDP port 9002 blocked on the way? Still trying.",
            screen_text(self.screen, (160, 30)),
        )
        self.assertEqual(
            status_line(self.screen), " hoge │ connected │ UDP: no answer │ 2 members │ alice @ 127.0.0.1:9001"
        )
        self.assertEqual(attribute_at(self.screen, "UDP: no answer"), theme.STATUS_BAD)
        self.client.emit(UdpPathRestored())
        self.assertIn("-!- UDP from the server again: messages are delivered.", self.text())
        self.assertEqual(status_line(self.screen), " hoge │ connected │ 2 members │ alice @ 127.0.0.1:9001")

    def test_leaving_stops_the_countdown(self) -> None:
        self.client.emit(Reconnecting(1, 30.0), ConnectionState.RECONNECTING)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.session.leave()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TypingTests(_SessionTest):
    def setUp(self) -> None:
        super().setUp()
        self.enter()

    def test_text_is_sent_and_shown_at_once(self) -> None:
        type_line(self.screen, "hi bob")
        self.assertEqual(self.client.sent, ["hi bob"])
        self.assertIn("<alice> hi bob", self.text())

    def test_me(self) -> None:
        type_line(self.screen, "/me waves")
        self.assertEqual(self.client.sent, ["/me waves"])
        self.assertIn("* alice waves", self.text())

    def test_double_slash(self) -> None:
        type_line(self.screen, "//etc/hosts is the file")
        self.assertEqual(self.client.sent, ["/etc/hosts is the file"])

    def test_unknown_command_is_not_sent(self) -> None:
        type_line(self.screen, "/foo bar")
        self.assertEqual(self.client.sent, [])
        self.assertIn("-!- Unknown command /foo — /help lists them.", self.text())

    def test_help(self) -> None:
        type_line(self.screen, "/help")
        text = self.text()
        for usage in ("/who", "/me TEXT", "/invite", "/leave", "/close", "/quit", "//TEXT", "PgUp/PgDn"):
            self.assertIn(usage, text)

    def test_who(self) -> None:
        type_line(self.screen, "/who")
        self.assertEqual(self.text().count("2 members in room hoge: alice (you), bob (host)"), 2)

    def test_history(self) -> None:
        for line in ("first", "/who", "third"):
            type_line(self.screen, line)
        press(self.screen, "up", "up")
        self.assertIn("hoge> /who", self.text())
        press(self.screen, "down")
        self.assertIn("hoge> third", self.text())
        press(self.screen, "down")
        self.assertEqual(self.screen.input.edit_text, "")

    def test_too_long_is_not_lost(self) -> None:
        type_line(self.screen, "x" * 150)
        self.assertIn("Not sent: a message of 150 bytes is too long to relay; shorten it.", self.text())
        self.assertEqual(self.screen.input.edit_text, "x" * 150)

    def test_not_sent_while_reconnecting(self) -> None:
        self.client.emit(ConnectionLost("gone", True), ConnectionState.RECONNECTING)
        self.client.emit(Reconnecting(1, 0.5))
        type_line(self.screen, "anyone?")
        self.assertIn("Not sent: reconnecting to the server; send it again once connected.", self.text())
        self.assertEqual(self.screen.input.edit_text, "anyone?")
        self.session.leave()

    def test_host_commands_are_refused_to_members(self) -> None:
        type_line(self.screen, "/invite")
        type_line(self.screen, "/close")
        text = self.text()
        self.assertIn("Only the room's host can invite; ask the host for an invitation.", text)
        self.assertIn("Only the room's host can close it; /leave leaves it.", text)
        self.assertEqual((self.client.invitations, self.client.left), ([], 0))

    def test_leave(self) -> None:
        type_line(self.screen, "/leave")
        self.assertEqual(self.client.left, 1)
        self.assertEqual(self.left, ["You left room hoge."])

    def test_quit(self) -> None:
        type_line(self.screen, "/quit")
        self.assertEqual(self.quits, 1)


class NativeOnlyHostTests(_SessionTest):
    choice = RoomChoice(True, "my room", None, None, "127.0.0.1", 9003, 9002, native_only=True)

    def test_the_create_asks_for_a_native_only_room(self) -> None:
        self.enter(host=True, members=("alice",))
        self.assertTrue(self.client.native_only)


class HostTests(_SessionTest):
    choice = RoomChoice(True, "my room", "pw", None, "chat.example", 9101, 9002)

    def setUp(self) -> None:
        super().setUp()
        self.enter(host=True, members=("alice",))

    def test_create_is_not_native_only_unless_asked(self) -> None:
        self.assertFalse(self.client.native_only)

    def test_invite_shows_the_token_and_how_to_use_it(self) -> None:
        type_line(self.screen, "/invite")
        self.client.invitations[0].callback("tok3n")
        text = screen_text(self.screen, (160, 30))
        self.assertIn("-!- Invitation for room my room: tok3n", text)
        self.assertIn(
            "chatd-chat --host chat.example --tcp-port 9101 --room 'my room' --name THEIR-NAME --invite tok3n", text
        )

    def test_close_says_what_closing_is(self) -> None:
        type_line(self.screen, "/close")
        # Closed on purpose (the others are told so), which leaves as well.
        self.assertEqual((self.client.closed_room, self.client.left), (1, 1))
        self.assertTrue(shows(self.screen, "You closed room my room: everyone in it was told and removed."))
        self.assertTrue(
            shows(self.screen, "(A chatd room lasts as long as its host stays: the host leaving closes it.)")
        )
        self.assertIn("│ closed │", status_line(self.screen))
        type_line(self.screen, "/leave")
        self.assertEqual(self.left, ["You closed room my room."])

    def test_who_says_you_host(self) -> None:
        type_line(self.screen, "/who")
        self.assertIn("1 member in room my room: alice (you, host)", self.text())

    def test_still_the_host_after_a_restart(self) -> None:
        self.client.emit(ConnectionLost("reset", True), ConnectionState.RECONNECTING)
        self.client.emit(Reconnected("my room", ("alice",), "alice"), ConnectionState.IN_ROOM)
        self.assertIn("│ host │", status_line(self.screen))
        type_line(self.screen, "/invite")
        self.assertEqual(len(self.client.invitations), 1)

    def test_a_host_whose_room_was_taken_is_told(self) -> None:
        self.client.emit(ConnectionLost("reset", True), ConnectionState.RECONNECTING)
        self.client.emit(Reconnected("my room", ("carol", "alice"), "carol"), ConnectionState.IN_ROOM)
        self.assertIn("carol made the room again before you came back: carol hosts it now.", self.text())
        self.assertNotIn("│ host │", status_line(self.screen))
        type_line(self.screen, "/invite")
        self.assertEqual(self.client.invitations, [])
        type_line(self.screen, "/who")
        self.assertIn("2 members in room my room: alice (you), carol (host)", self.text())

    def test_a_host_leaving_is_told_it_closed_the_room(self) -> None:
        type_line(self.screen, "/leave")
        self.assertEqual(self.left, ["You left room my room; as its host, leaving closed it for everyone."])
