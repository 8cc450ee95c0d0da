"""
chatd.client.events: every native notice as the typed event a client hands on.

The notices are spelled out as JSON the way docs/protocol.md shows them; one
test also feeds what the server's own Notice encoder writes, so the two sides
cannot drift apart without a failure here.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.events import (
    ChatEvent,
    ConnectionLost,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    RemovedForInactivity,
    RoomClosed,
    ServerDegraded,
    ServerRecovered,
    ServerStopping,
    Throttled,
    apply_presence,
    event_from_notice,
)
from chatd.protocol.payloads import Dialect, Notice, NoticeKind, read_notice


def notice(**members: Any) -> dict[str, Any]:
    """A native notice object as the server sends it: C{"chatd": 1} first."""
    return {"chatd": 1, **members}


def event_of(obj: dict[str, Any], me: str, members: tuple[str, ...] = ()) -> ChatEvent | None:
    """The event for notice object C{obj}, read as the client reads it (chatd.protocol's reader first)."""
    return event_from_notice(read_notice(obj), me, members)


class EventFromNoticeTests(SynchronousTestCase):
    def test_joined(self) -> None:
        """A notice names the newcomer; the list is the client's own, with it added."""
        event = event_of(notice(event="joined", room="hoge", text="* bob joined hoge", user="bob"), "alice", ("alice",))
        self.assertEqual(event, MemberJoined("bob", ("alice", "bob"), "* bob joined hoge"))

    def test_left(self) -> None:
        # The notice of docs/protocol.md section 8.5, byte for byte.
        raw = '{"chatd": 1, "event": "left", "room": "hoge", "text": "* carol left hoge", "user": "carol"}'
        event = event_of(json.loads(raw), "bob", ("alice", "carol", "bob"))
        self.assertEqual(event, MemberLeft("carol", ("alice", "bob"), "* carol left hoge"))
        assert isinstance(event, MemberLeft)
        self.assertFalse(event.timed_out)

    def test_changes_already_known_change_nothing(self) -> None:
        """
        A change held back by the server can arrive after a member list that
        holds it already (docs/protocol.md 4.6): applying it again is harmless.
        """
        joined = notice(event="joined", room="hoge", text="t", user="bob")
        left = notice(event="left", room="hoge", text="t", user="carol")
        self.assertEqual(event_of(joined, "alice", ("alice", "bob")), MemberJoined("bob", ("alice", "bob"), "t"))
        self.assertEqual(event_of(left, "alice", ("alice", "bob")), MemberLeft("carol", ("alice", "bob"), "t"))

    def test_apply_presence_keeps_join_order(self) -> None:
        self.assertEqual(apply_presence(("a", "b", "c"), "b", joined=False), ("a", "c"))
        self.assertEqual(apply_presence(("a", "c"), "b", joined=True), ("a", "c", "b"))
        self.assertEqual(apply_presence((), "a", joined=True), ("a",))
        self.assertEqual(apply_presence(("a",), "z", joined=False), ("a",))

    def test_a_member_list_in_the_notice_is_taken_at_its_word(self) -> None:
        """A server from before notices carried only the change sent the whole list: it wins."""
        event = event_of(
            notice(event="left", room="hoge", text="t", members=["alice", "bob"], user="carol"), "bob", ("zed",)
        )
        self.assertEqual(event, MemberLeft("carol", ("alice", "bob"), "t"))

    def test_timed_out_about_another(self) -> None:
        """Someone else was removed: an ordinary departure, marked as timed out."""
        text = "* bob was removed from hoge after 300 s without activity"
        event = event_of(notice(event="timed_out", room="hoge", text=text, user="bob"), "alice", ("alice", "bob"))
        self.assertEqual(event, MemberLeft("bob", ("alice",), text, timed_out=True))

    def test_timed_out_about_me(self) -> None:
        """The same notice about this client itself: it is out of the room."""
        text = "* you were removed from hoge after 300 s without activity"
        event = event_of(notice(event="timed_out", room="hoge", text=text, user="bob"), "bob", ("alice", "bob"))
        self.assertEqual(event, RemovedForInactivity("hoge", text))

    def test_room_closed(self) -> None:
        # The notice of docs/protocol.md section 8.8, byte for byte.
        raw = (
            '{"chatd": 1, "event": "room_closed", "room": "lobby", "text": "* room lobby was closed: the host left",'
            ' "user": "bob", "reason": "the host left"}'
        )
        event = event_of(json.loads(raw), "carol")
        self.assertEqual(event, RoomClosed("lobby", "the host left", "* room lobby was closed: the host left"))

    def test_room_closed_to_the_host(self) -> None:
        """A closed room is a closed room, also for the member it names."""
        event = event_of(
            notice(event="room_closed", room="lobby", text="t", user="bob", reason="the host timed out"), "bob"
        )
        self.assertEqual(event, RoomClosed("lobby", "the host timed out", "t"))

    def test_server_stopping(self) -> None:
        text = "* the server is shutting down; room lobby is closed"
        event = event_of(
            notice(
                event="server_stopping", room="lobby", text=text, user="alice", reason="the server is shutting down"
            ),
            "bob",
        )
        self.assertEqual(event, ServerStopping("lobby", text))

    def test_unknown_event(self) -> None:
        """A newer server's event, or no event at all, is not guessed at."""
        self.assertIsNone(event_of(notice(event="renamed", room="hoge", text="* hoge is now fuga"), "a"))
        self.assertIsNone(event_of(notice(room="hoge", text="* something"), "a"))
        self.assertIsNone(event_of(notice(event=None, room="hoge"), "a"))
        self.assertIsNone(event_of({}, "a"))

    def test_unknown_members_ignored(self) -> None:
        """Members a later version adds change nothing (docs/protocol.md section 9)."""
        event = event_of(notice(event="joined", room="r", text="t", user="b", colour="blue", since=12), "a", ("a",))
        self.assertEqual(event, MemberJoined("b", ("a", "b"), "t"))

    def test_missing_fields(self) -> None:
        """Absent strings read as empty; the client's list is then left as it was."""
        self.assertEqual(event_of({"event": "left"}, "a", ("a",)), MemberLeft("", ("a",), ""))
        self.assertEqual(event_of({"event": "room_closed"}, "a"), RoomClosed("", "", ""))

    def test_every_server_notice_is_known(self) -> None:
        """What the server's Notice writes for each kind, as each recipient sees it."""
        expected: dict[NoticeKind, tuple[type[object], type[object]]] = {
            # kind: (event for the member it is about, event for another member)
            NoticeKind.MEMBER_JOINED: (MemberJoined, MemberJoined),
            NoticeKind.MEMBER_LEFT: (MemberLeft, MemberLeft),
            NoticeKind.TIMED_OUT: (RemovedForInactivity, MemberLeft),
            NoticeKind.ROOM_CLOSED: (RoomClosed, RoomClosed),
            NoticeKind.SERVER_STOPPING: (ServerStopping, ServerStopping),
            NoticeKind.THROTTLED: (Throttled, Throttled),
            NoticeKind.SERVER_DEGRADED: (ServerDegraded, ServerDegraded),
            NoticeKind.SERVER_RECOVERED: (ServerRecovered, ServerRecovered),
        }
        self.assertEqual(set(expected), set(NoticeKind))
        for kind, (for_subject, for_other) in expected.items():
            sent = Notice(kind, "hoge", "bob", reason="why", idle_timeout=5.0)
            for recipient, wanted in (("bob", for_subject), ("alice", for_other)):
                payload = sent.encode_for(recipient, Dialect.NATIVE)
                event = event_of(json.loads(payload), recipient)
                self.assertIsInstance(event, wanted, (kind, recipient))
                self.assertEqual(getattr(event, "text", None), sent.text_for(recipient), (kind, recipient))


class MessageReceivedTests(SynchronousTestCase):
    def test_action(self) -> None:
        message = MessageReceived("alice", "/me waves 👋", 1767225600.0)
        self.assertTrue(message.is_action)
        self.assertEqual(message.action, "waves 👋")

    def test_empty_action(self) -> None:
        message = MessageReceived("alice", "/me ", 0.0)
        self.assertTrue(message.is_action)
        self.assertEqual(message.action, "")

    def test_not_actions(self) -> None:
        for text in ("hello", "/me", "/meow", " /me waves", "/ME waves", "say /me waves", "", "こんにちは"):
            self.assertFalse(MessageReceived("alice", text, 0.0).is_action, text)

    def test_fields(self) -> None:
        message = MessageReceived("アリス", "寿司 🍣", 1767225600.5)
        self.assertEqual((message.sender, message.text, message.time), ("アリス", "寿司 🍣", 1767225600.5))


class ConnectionLostTests(SynchronousTestCase):
    def test_the_sockets_own_wording_explains_nothing(self) -> None:
        # What a killed server's connection says: true of the socket, of no use to a reader.
        for reason in (
            "Connection was closed cleanly.",
            "Connection to the other side was lost in a non-clean fashion.",
            "",
        ):
            self.assertIsNone(ConnectionLost(reason, True).explanation, reason)

    def test_a_reason_of_ours_is_kept(self) -> None:
        event = ConnectionLost("room hoge is gone since the server restarted", False)
        self.assertEqual(event.explanation, "room hoge is gone since the server restarted")
