"""
chatd.protocol.payloads, the client's side of notices and acknowledges:
every notice and acknowledge the server's builders write reads back as what
was built, and what no builder writes is refused with a ProtocolError.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.protocol.errors import (
    InvalidUTF8Error,
    MalformedFrameError,
    ProtocolError,
    RoomExistsError,
    Status,
    UnknownStatusError,
    error_for_status,
)
from chatd.protocol.payloads import (
    NATIVE_VERSION,
    SUPPORTED_VERSIONS,
    Acknowledgement,
    Dialect,
    Notice,
    NoticeKind,
    ReceivedNotice,
    acknowledge_payload,
    error_payload,
    read_acknowledge_payload,
    read_notice,
    read_notice_payload,
)


def as_json(obj: object) -> bytes:
    return json.dumps(obj).encode("utf-8")


def notice(**members: Any) -> dict[str, Any]:
    return {"chatd": NATIVE_VERSION, **members}


class NoticeRoundTripTests(SynchronousTestCase):
    """What Notice.to_json writes, read_notice reads back, for every kind and recipient."""

    def notices(self) -> list[Notice]:
        """Every kind, about someone and about no one, with and without a reason, non-ASCII too."""
        made = []
        for kind in NoticeKind:
            for user in ("bob", None, "ボブ"):
                for reason in ("", "the host left"):
                    made.append(Notice(kind, "ほげ" if user == "ボブ" else "hoge", user, reason, idle_timeout=2.5))
        return made

    def test_every_kind_reads_back(self) -> None:
        seen = set()
        for sent in self.notices():
            for recipient in ("bob", "alice", "ボブ"):
                for payload in (sent.to_json(recipient), sent.encode_for(recipient, Dialect.NATIVE)):
                    read = read_notice_payload(payload)
                    self.assertEqual(
                        read,
                        ReceivedNotice(
                            kind=sent.kind,
                            room=sent.room,
                            text=sent.text_for(recipient),
                            user=sent.user,
                            reason=sent.reason,
                        ),
                        (sent, recipient),
                    )
                    seen.add(read.kind)
        self.assertEqual(seen, set(NoticeKind), "every kind the server builds is read")

    def test_the_documented_example(self) -> None:
        # docs/protocol.md section 4.6, byte for byte.
        raw = b'{"chatd": 1, "event": "joined", "room": "hoge", "text": "* bob joined hoge", "user": "bob"}'
        self.assertEqual(
            read_notice_payload(raw), ReceivedNotice(NoticeKind.MEMBER_JOINED, "hoge", "* bob joined hoge", "bob")
        )

    def test_read_notice_and_read_notice_payload_agree(self) -> None:
        obj = notice(event="left", room="r", text="t", user="u")
        self.assertEqual(read_notice(obj), read_notice_payload(as_json(obj)))


class NoticeLenientTests(SynchronousTestCase):
    """What a newer or older server may send is read, not refused (docs/protocol.md section 9)."""

    def test_unknown_event(self) -> None:
        read = read_notice(notice(event="renamed", room="hoge", text="* hoge is now fuga"))
        self.assertEqual(read, ReceivedNotice(None, "hoge", "* hoge is now fuga"))

    def test_no_event(self) -> None:
        self.assertIsNone(read_notice(notice(room="hoge")).kind)
        self.assertIsNone(read_notice(notice(event=None)).kind)
        self.assertEqual(read_notice({}), ReceivedNotice(None))

    def test_absent_members_read_as_empty(self) -> None:
        self.assertEqual(read_notice({"event": "left"}), ReceivedNotice(NoticeKind.MEMBER_LEFT))
        self.assertEqual(
            read_notice(notice(event="room_closed", room=None, text=None, user=None, reason=None)),
            ReceivedNotice(NoticeKind.ROOM_CLOSED),
        )

    def test_unknown_members_are_ignored(self) -> None:
        read = read_notice(notice(event="joined", room="r", text="t", user="b", colour="blue", since=12))
        self.assertEqual(read, ReceivedNotice(NoticeKind.MEMBER_JOINED, "r", "t", "b"))

    def test_an_old_servers_member_list(self) -> None:
        read = read_notice(notice(event="left", room="r", text="t", user="c", members=["a", "b"]))
        self.assertEqual(read.members, ("a", "b"))
        self.assertEqual(read_notice(notice(event="left", members=[])).members, ())


class NoticeRefusedTests(SynchronousTestCase):
    """A notice no server writes raises MalformedFrameError."""

    def test_not_a_json_object(self) -> None:
        for payload in (b"", b"{", b"[1]", b'"joined"', b"* bob joined hoge", b"\xff"):
            self.assertRaises(MalformedFrameError, read_notice_payload, payload)

    def test_known_members_of_the_wrong_type(self) -> None:
        for key in ("event", "room", "text", "user", "reason"):
            for value in (5, True, ["x"], {"x": 1}, 1.5):
                self.assertRaises(MalformedFrameError, read_notice, notice(**{"event": "joined", key: value}))

    def test_member_lists_that_are_not_lists_of_names(self) -> None:
        for value in ("alice", 5, {"alice": 1}, ["alice", 5], [None], [["alice"]]):
            self.assertRaises(MalformedFrameError, read_notice, notice(event="left", members=value))

    def test_lone_surrogates(self) -> None:
        # JSON can escape a lone surrogate, which no UTF-8 can carry.
        payload = b'{"chatd": 1, "event": "joined", "room": "hoge", "text": "\\ud800"}'
        self.assertRaises(InvalidUTF8Error, read_notice_payload, payload)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64))
    def test_arbitrary_bytes_raise_only_protocol_errors(self, payload: bytes) -> None:
        try:
            read = read_notice_payload(payload)
        except ProtocolError:
            return
        self.assertIsInstance(read, ReceivedNotice)

    @settings(max_examples=300, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(["event", "room", "text", "user", "reason", "members", "other"]),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                lambda inner: st.lists(inner, max_size=3),
                max_leaves=5,
            ),
        )
    )
    def test_arbitrary_objects_read_or_raise_malformed(self, obj: dict[str, Any]) -> None:
        try:
            read = read_notice(obj)
        except MalformedFrameError:
            return
        self.assertIsInstance(read.room, str)
        self.assertIsInstance(read.text, str)
        self.assertIsInstance(read.reason, str)
        self.assertIsInstance(read.user, str | None)


class AcknowledgeRoundTripTests(SynchronousTestCase):
    """What acknowledge_payload and error_payload write, read_acknowledge_payload reads back."""

    def test_every_status_in_every_dialect(self) -> None:
        for status in Status:
            for dialect in Dialect:
                for message in ("", "no room 'nope'", "ルーム「ほげ」はありません"):
                    read = read_acknowledge_payload(acknowledge_payload(status, dialect, message))
                    detailed = dialect is Dialect.NATIVE and status is not Status.SUCCESS
                    self.assertEqual(
                        read,
                        Acknowledgement(status, message if detailed else "", SUPPORTED_VERSIONS if detailed else ()),
                        (status, dialect, message),
                    )

    def test_refusal_names_the_status(self) -> None:
        for status in Status:
            refusal = read_acknowledge_payload(acknowledge_payload(status, Dialect.NATIVE, "why")).refusal
            if status is Status.SUCCESS:
                self.assertIsNone(refusal)
                continue
            assert refusal is not None
            self.assertIs(type(refusal), type(error_for_status(status)))
            self.assertEqual(refusal.status, status)
            self.assertEqual(str(refusal), "why")

    def test_legacy_refusal_is_worded_from_its_status(self) -> None:
        refusal = read_acknowledge_payload(acknowledge_payload(Status.ROOM_NOT_FOUND, Dialect.SEED)).refusal
        self.assertEqual(str(refusal), "room not found")

    def test_error_payload(self) -> None:
        refusal = read_acknowledge_payload(error_payload(RoomExistsError("room hoge exists"), Dialect.NATIVE)).refusal
        self.assertIsInstance(refusal, RoomExistsError)
        self.assertEqual(str(refusal), "room hoge exists")

    def test_the_documented_example(self) -> None:
        # docs/protocol.md section 3.2.
        raw = b'\x02{"chatd": 1, "status": "room_not_found", "message": "no room \'nope\'", "versions": [1]}'
        self.assertEqual(read_acknowledge_payload(raw), Acknowledgement(2, "no room 'nope'", (1,)))

    def test_unknown_status_from_a_newer_server(self) -> None:
        read = read_acknowledge_payload(bytes([200]))
        self.assertEqual(read, Acknowledgement(200))
        self.assertIsInstance(read.refusal, UnknownStatusError)
        self.assertEqual(str(read.refusal), "status 200")

    def test_unknown_detail_members_are_ignored(self) -> None:
        read = read_acknowledge_payload(b"\x01" + as_json({"chatd": 1, "message": "m", "retry_in": 3}))
        self.assertEqual(read, Acknowledgement(1, "m"))

    def test_a_success_is_its_byte(self) -> None:
        """Nothing after a success's status byte is read: no dialect sends anything there."""
        self.assertEqual(read_acknowledge_payload(b"\x00"), Acknowledgement(0))
        self.assertEqual(read_acknowledge_payload(b"\x00not json"), Acknowledgement(0))


class AcknowledgeRefusedTests(SynchronousTestCase):
    def test_no_status_byte(self) -> None:
        self.assertRaises(MalformedFrameError, read_acknowledge_payload, b"")

    def test_detail_that_is_not_a_json_object(self) -> None:
        for detail in (b"{", b"[1]", b"no room", b"\xff"):
            self.assertRaises(MalformedFrameError, read_acknowledge_payload, b"\x02" + detail)

    def test_known_members_of_the_wrong_type(self) -> None:
        for detail in (
            {"message": 5},
            {"message": ["m"]},
            {"versions": 1},
            {"versions": [True]},
            {"versions": ["1"]},
            {"versions": [1.5]},
        ):
            self.assertRaises(MalformedFrameError, read_acknowledge_payload, b"\x02" + as_json(detail))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64))
    def test_arbitrary_bytes_raise_only_protocol_errors(self, payload: bytes) -> None:
        try:
            read = read_acknowledge_payload(payload)
        except ProtocolError:
            return
        self.assertEqual(read.status, payload[0])
