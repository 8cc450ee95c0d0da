"""chatd.daemon.web.messages: the page's JSON messages, read strictly and written field by field (docs/web.md)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.web import messages
from chatd.daemon.web.messages import MAX_MESSAGE_ID, Enter, Invite, Leave, Members, Say, read_request
from chatd.protocol.errors import MalformedFrameError, RateLimitedError, RoomNotFoundError
from chatd.protocol.payloads import NoticeKind


def read(obj: Any) -> messages.Request:
    return read_request(json.dumps(obj))


class ReadRequestTests(SynchronousTestCase):
    def test_every_request(self) -> None:
        self.assertEqual(read({"type": "say", "id": 7, "text": "hi"}), Say(7, "hi"))
        self.assertEqual(
            read({"type": "enter", "action": "create", "room": "r", "name": "n", "password": "p"}),
            Enter(True, "r", "n", "p", None),
        )
        self.assertEqual(
            read({"type": "enter", "action": "join", "room": "r", "name": "n", "invite": "t"}),
            Enter(False, "r", "n", None, "t"),
        )
        self.assertEqual(read({"type": "invite"}), Invite())
        self.assertEqual(read({"type": "members"}), Members())
        self.assertEqual(read({"type": "leave"}), Leave())

    def test_unknown_members_are_ignored(self) -> None:
        self.assertEqual(read({"type": "say", "id": 1, "text": "x", "colour": "red"}), Say(1, "x"))

    def test_empty_or_null_password_and_invitation_are_none(self) -> None:
        for extra in ({"password": ""}, {"password": None}, {"invite": ""}, {}):
            entered = read({"type": "enter", "action": "join", "room": "r", "name": "n", **extra})
            assert isinstance(entered, Enter)
            self.assertEqual((entered.password, entered.invite), (None, None), extra)

    def test_message_ids(self) -> None:
        self.assertEqual(read({"type": "say", "id": 0, "text": ""}), Say(0, ""))
        self.assertEqual(read({"type": "say", "id": MAX_MESSAGE_ID, "text": ""}), Say(MAX_MESSAGE_ID, ""))
        for bad in (-1, MAX_MESSAGE_ID + 1, 1.5, "1", True, None):
            with self.assertRaises(MalformedFrameError, msg=repr(bad)):
                read({"type": "say", "id": bad, "text": "x"})

    def test_refused(self) -> None:
        bad: list[Any] = [
            [],
            "say",
            1,
            None,
            {},
            {"type": "shout"},
            {"type": None},
            {"type": "say", "id": 1},
            {"type": "say", "id": 1, "text": 5},
            {"type": "enter", "action": "visit", "room": "r", "name": "n"},
            {"type": "enter", "action": "join", "room": "r"},
            {"type": "enter", "action": "join", "name": "n"},
            {"type": "enter", "action": "join", "room": 1, "name": "n"},
            {"type": "enter", "action": "join", "room": "r", "name": "n", "password": 1},
            {"type": "enter", "action": "create", "room": "r", "name": "n", "invite": "t"},
            {"type": "enter", "action": "join", "room": "r", "name": "n", "invite": "t", "password": "p"},
        ]
        for obj in bad:
            with self.assertRaises(MalformedFrameError, msg=repr(obj)):
                read(obj)
        for text in ("", "{", "not json", "[" * 100000):
            with self.assertRaises(MalformedFrameError, msg=text[:20]):
                read_request(text)

    @given(st.text(max_size=200))
    def test_anything_is_a_request_or_malformed(self, text: str) -> None:
        with contextlib.suppress(MalformedFrameError):
            read_request(text)

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=12,
        ),
        st.sampled_from(["say", "enter", "invite", "members", "leave", "other"]),
    )
    def test_any_json_object_is_a_request_or_malformed(self, value: Any, kind: str) -> None:
        obj = {"type": kind, "id": value, "text": value, "action": value, "room": value, "name": value}
        try:
            request = read(obj)
        except MalformedFrameError:
            return
        self.assertIsInstance(request, Say | Enter | Invite | Members | Leave)


class WriteTests(SynchronousTestCase):
    def test_encode_is_compact_utf8(self) -> None:
        self.assertEqual(messages.encode({"type": "x", "text": "ほげ"}), '{"type":"x","text":"ほげ"}'.encode())

    def test_chat_message(self) -> None:
        self.assertEqual(
            messages.chat_message(3, 1700000000123, "alice", "hi"),
            {"type": "message", "seq": 3, "time": 1700000000123, "from": "alice", "text": "hi"},
        )
        self.assertEqual(messages.chat_message(3, 1, "a", "b", history=True)["history"], True)

    def test_entered_message(self) -> None:
        self.assertEqual(
            messages.entered_message(
                room="r",
                name="n",
                created=False,
                host="h",
                members=("h", "n"),
                epoch="00112233aabbccdd",
                latest=4,
                history=[],
                idle_timeout=300.0,
            ),
            {
                "type": "entered",
                "room": "r",
                "name": "n",
                "created": False,
                "host": "h",
                "members": ["h", "n"],
                "epoch": "00112233aabbccdd",
                "latest": 4,
                "history": [],
                "idle_timeout": 300.0,
            },
        )

    def test_the_others(self) -> None:
        self.assertEqual(messages.sent_message(1, 2, 3), {"type": "sent", "id": 1, "seq": 2, "time": 3})
        self.assertEqual(
            messages.members_message(("a", "b"), "a"), {"type": "members", "members": ["a", "b"], "host": "a"}
        )
        self.assertEqual(
            messages.invitation_message("tok", 3600.0), {"type": "invitation", "invite": "tok", "expires_in": 3600.0}
        )
        self.assertEqual(
            messages.notice_message(NoticeKind.MEMBER_JOINED, "* b joined r", "b", ""),
            {"type": "notice", "event": "joined", "text": "* b joined r", "user": "b"},
        )
        self.assertEqual(
            messages.notice_message(NoticeKind.ROOM_CLOSED, "* room r was closed: why", "h", "why"),
            {
                "type": "notice",
                "event": "room_closed",
                "text": "* room r was closed: why",
                "user": "h",
                "reason": "why",
            },
        )
        self.assertEqual(
            messages.notice_message(NoticeKind.THROTTLED, "slow down", None, ""),
            {"type": "notice", "event": "throttled", "text": "slow down"},
        )

    def test_refusals_are_sentences(self) -> None:
        self.assertEqual(
            messages.refused_message(RoomNotFoundError("no room 'x'")),
            {"type": "refused", "error": "room_not_found", "text": "No room 'x'."},
        )
        self.assertEqual(
            messages.refused_message(RateLimitedError("sending too fast!"), 9),
            {"type": "refused", "error": "rate_limited", "text": "Sending too fast!", "id": 9},
        )
        self.assertEqual(messages.sentence("  "), "")
        self.assertEqual(messages.sentence("done."), "Done.")

    @given(st.text(max_size=50))
    def test_a_sentence_ends_once(self, text: str) -> None:
        made = messages.sentence(text)
        if text.strip():
            self.assertTrue(made.endswith((".", "!", "?")))
            self.assertEqual(messages.sentence(made), made)
        else:
            self.assertEqual(made, "")
