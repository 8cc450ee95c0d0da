"""Tests for chatd.protocol.payloads: request parsing, names, acknowledge payloads, notices."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.protocol import payloads
from chatd.protocol.errors import (
    InvalidNameError,
    InvalidUTF8Error,
    MalformedFrameError,
    ProtocolError,
    RoomExistsError,
    Status,
    UnsupportedVersionError,
)
from chatd.protocol.payloads import (
    DEFAULT_MAX_USER_NAME,
    MODEL_REMOVED_FOR_SILENCE,
    MODEL_ROOM_CLOSED,
    NATIVE_VERSION,
    Dialect,
    Notice,
    NoticeKind,
    ParsedRoomRequest,
    RoomRequest,
    acknowledge_payload,
    decode_json,
    encode_json,
    entered_payload,
    error_payload,
    invite_payload,
    legacy_secret_payload,
    loggable_payload,
    members_payload,
    parse_port,
    parse_room_request,
    read_room_request,
    rekey_payload,
    validate_name,
    validate_user_name,
)


def as_json(obj: object) -> bytes:
    return json.dumps(obj).encode("utf-8")


class RoomRequestAcceptedTests(SynchronousTestCase):
    """Every form of create/join payload that clients send."""

    def test_json_username(self) -> None:
        request = parse_room_request(b'{"username": "ann"}')
        self.assertEqual(request, RoomRequest("ann"))
        self.assertIsNone(request.password)
        self.assertIsNone(request.invite)
        self.assertIsNone(request.version)
        self.assertFalse(request.native)

    def test_json_username_and_password(self) -> None:
        request = parse_room_request(as_json({"username": "ann", "password": "s3cret"}))
        self.assertEqual(request, RoomRequest("ann", password="s3cret"))

    def test_json_invite(self) -> None:
        request = parse_room_request(as_json({"username": "bob", "invite": "tok-123"}))
        self.assertEqual(request, RoomRequest("bob", invite="tok-123"))

    def test_json_null_and_empty_fields_mean_absent(self) -> None:
        request = parse_room_request(as_json({"username": "ann", "password": "", "invite": None}))
        self.assertEqual(request, RoomRequest("ann"))

    def test_json_unknown_keys_are_ignored(self) -> None:
        request = parse_room_request(as_json({"username": "ann", "colour": "blue"}))
        self.assertEqual(request, RoomRequest("ann"))

    def test_json_with_surrounding_white_space(self) -> None:
        request = parse_room_request(b'  \n{"username": "ann"}\r\n')
        self.assertEqual(request, RoomRequest("ann"))

    def test_native(self) -> None:
        payload = as_json({"chatd": 1, "username": "ann", "password": "pw", "invite": "inv"})
        request = parse_room_request(payload)
        self.assertEqual(request, RoomRequest("ann", "pw", "inv", NATIVE_VERSION))
        self.assertTrue(request.native)

    def test_bare_user_name(self) -> None:
        request = parse_room_request(b"ann")
        self.assertEqual(request, RoomRequest("ann"))
        self.assertFalse(request.native)

    def test_bare_user_name_with_trailing_newline(self) -> None:
        self.assertEqual(parse_room_request(b"ann\n"), RoomRequest("ann"))
        self.assertEqual(parse_room_request(b"ann\r\n"), RoomRequest("ann"))

    def test_bare_user_name_with_inner_space_and_non_ascii(self) -> None:
        name = "J\u00fcrgen \u5c71\u7530"
        self.assertEqual(parse_room_request(name.encode("utf-8")), RoomRequest(name))

    def test_user_name_at_the_limit(self) -> None:
        name = "a" * DEFAULT_MAX_USER_NAME
        self.assertEqual(parse_room_request(name.encode()).username, name)
        self.assertEqual(parse_room_request(b"abc", max_user_name=3).username, "abc")

    def test_user_name_limit_counts_utf8_bytes(self) -> None:
        self.assertEqual(parse_room_request("\u00e9\u00e9".encode(), max_user_name=4).username, "\u00e9\u00e9")
        self.assertRaises(InvalidNameError, parse_room_request, "\u00e9\u00e9\u00e9".encode(), max_user_name=5)


class RoomRequestRefusedTests(SynchronousTestCase):
    """Every refusal, with the status byte the client is told."""

    def assert_refused(self, payload: bytes, error: type[ProtocolError], status: Status, **kwargs: Any) -> None:
        caught = self.assertRaises(error, parse_room_request, payload, **kwargs)
        self.assertIs(caught.status, status)

    def test_empty(self) -> None:
        self.assert_refused(b"", InvalidNameError, Status.INVALID_NAME)
        self.assert_refused(b"\n", InvalidNameError, Status.INVALID_NAME)
        self.assert_refused(as_json({"username": ""}), InvalidNameError, Status.INVALID_NAME)

    def test_too_long(self) -> None:
        self.assert_refused(b"a" * (DEFAULT_MAX_USER_NAME + 1), InvalidNameError, Status.INVALID_NAME)
        self.assert_refused(b"abcd", InvalidNameError, Status.INVALID_NAME, max_user_name=3)
        self.assert_refused(as_json({"username": "a" * 33}), InvalidNameError, Status.INVALID_NAME)

    def test_control_characters(self) -> None:
        for name in ("an\x00n", "an\nn", "an\x1b[2Jn", "an\u200en", "an\u202en", "an\x7fn"):
            self.assert_refused(as_json({"username": name}), InvalidNameError, Status.INVALID_NAME)
        self.assert_refused(b"an\tn", InvalidNameError, Status.INVALID_NAME)
        self.assert_refused(b"\x1b[31mann", InvalidNameError, Status.INVALID_NAME)

    def test_lone_surrogate_user_name(self) -> None:
        """JSON can escape a surrogate that UTF-8 cannot carry."""
        self.assert_refused(b'{"username": "an\\ud800n"}', InvalidNameError, Status.INVALID_NAME)

    def test_leading_or_trailing_space(self) -> None:
        for payload in (b" ann", b"ann ", b"ann \n", b"\tann"):
            self.assert_refused(payload, InvalidNameError, Status.INVALID_NAME)
        for name in (" ann", "ann ", "\u3000ann", "ann\n"):
            self.assert_refused(as_json({"username": name}), InvalidNameError, Status.INVALID_NAME)

    def test_colon_in_user_name(self) -> None:
        self.assert_refused(b"ann:", InvalidNameError, Status.INVALID_NAME)
        self.assert_refused(as_json({"username": "ann: hi"}), InvalidNameError, Status.INVALID_NAME)

    def test_bad_utf8(self) -> None:
        self.assert_refused(b"an\xffn", InvalidUTF8Error, Status.MALFORMED_REQUEST)
        self.assert_refused(b'{"username": "an\xc3"}', InvalidUTF8Error, Status.MALFORMED_REQUEST)

    def test_invalid_json(self) -> None:
        for payload in (b"{", b'{"username": "ann"', b"{username: ann}", b'{"username": "ann"} x'):
            self.assert_refused(payload, MalformedFrameError, Status.MALFORMED_REQUEST)

    def test_non_object_json(self) -> None:
        """
        Only a payload starting with '{' is read as JSON; anything else is a bare name.

        So JSON arrays and scalars are (odd but valid) user names, not refusals.
        """
        self.assertEqual(parse_room_request(b"[1, 2]"), RoomRequest("[1, 2]"))
        self.assertEqual(parse_room_request(b'"ann"'), RoomRequest('"ann"'))
        self.assert_refused(b'{"ann": 1} {"bob": 2}', MalformedFrameError, Status.MALFORMED_REQUEST)

    def test_missing_username(self) -> None:
        self.assert_refused(b"{}", MalformedFrameError, Status.MALFORMED_REQUEST)
        self.assert_refused(as_json({"password": "pw"}), MalformedFrameError, Status.MALFORMED_REQUEST)

    def test_non_string_fields(self) -> None:
        for obj in (
            {"username": 7},
            {"username": None},
            {"username": ["ann"]},
            {"username": {"name": "ann"}},
            {"username": "ann", "password": 1234},
            {"username": "ann", "password": True},
            {"username": "ann", "invite": ["x"]},
            {"username": "ann", "invite": 0},
        ):
            self.assert_refused(as_json(obj), MalformedFrameError, Status.MALFORMED_REQUEST)

    def test_non_integer_version(self) -> None:
        for version in ("1", 1.0, True, [1]):
            payload = as_json({"chatd": version, "username": "ann"})
            self.assert_refused(payload, MalformedFrameError, Status.MALFORMED_REQUEST)

    def test_unsupported_version(self) -> None:
        for version in (0, 2, -1, 99):
            payload = as_json({"chatd": version, "username": "ann"})
            error = self.assertRaises(UnsupportedVersionError, parse_room_request, payload)
            self.assertIs(error.status, Status.UNSUPPORTED_VERSION)
            self.assertTrue(error.closes)

    def test_version_is_checked_before_the_user_name(self) -> None:
        """A client from the future is told its version is the problem, not its request."""
        self.assertRaises(UnsupportedVersionError, parse_room_request, as_json({"chatd": 2}))

    def test_deeply_nested_json(self) -> None:
        """Nesting deep enough to exhaust the JSON decoder's recursion is still just malformed."""
        payload = b'{"username": ' + b"[" * 2000 + b"]" * 2000 + b"}"
        self.assertRaises(MalformedFrameError, parse_room_request, payload)
        self.assertRaises(MalformedFrameError, parse_room_request, b'{"a":' + b"[" * 4000)

    def test_lone_surrogate_password(self) -> None:
        """A password must survive encoding to UTF-8 (it is hashed as UTF-8 later)."""
        payload = b'{"username": "ann", "password": "\\udc80"}'
        self.assertRaises(MalformedFrameError, parse_room_request, payload)

    @settings(max_examples=300, deadline=None)
    @given(
        payload=st.one_of(
            st.binary(max_size=200),
            st.text(max_size=60).map(lambda text: text.encode("utf-8")),
            st.dictionaries(
                st.sampled_from(["username", "password", "invite", "chatd", "other"]),
                st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40)),
            ).map(lambda obj: json.dumps(obj).encode("utf-8")),
        )
    )
    def test_arbitrary_bytes_raise_only_protocol_errors(self, payload: bytes) -> None:
        try:
            request = parse_room_request(payload)
        except ProtocolError:
            return
        self.assertIsInstance(request, RoomRequest)
        self.assertEqual(validate_user_name(request.username, DEFAULT_MAX_USER_NAME), request.username)


class NameTests(SynchronousTestCase):
    def test_valid(self) -> None:
        self.assertEqual(validate_name("hoge", 64, "room name"), "hoge")
        self.assertEqual(validate_name("a b:c", 5, "room name"), "a b:c")

    def test_room_names_may_hold_colons(self) -> None:
        """Only user names are split at ': '."""
        self.assertEqual(validate_name("lobby: 1", 64, "room name"), "lobby: 1")
        self.assertRaises(InvalidNameError, validate_user_name, "lobby: 1", 64)

    def test_refusals_name_the_thing(self) -> None:
        error = self.assertRaises(InvalidNameError, validate_name, "", 64, "room name")
        self.assertIn("room name", str(error))

    def test_limit(self) -> None:
        self.assertRaises(InvalidNameError, validate_name, "abcdef", 5, "room name")
        self.assertRaises(InvalidNameError, validate_name, "\u00e9\u00e9\u00e9", 5, "room name")

    def test_format_characters(self) -> None:
        for name in ("a\u200bb", "a\ufeffb", "a\u2066b"):
            self.assertRaises(InvalidNameError, validate_name, name, 64, "room name")


class ParsePortTests(SynchronousTestCase):
    def test_valid(self) -> None:
        self.assertEqual(parse_port(b"9002"), 9002)
        self.assertEqual(parse_port(b"1"), 1)
        self.assertEqual(parse_port(b"65535"), 65535)
        self.assertEqual(parse_port(b" 8001\n"), 8001)
        self.assertEqual(parse_port(b"08001"), 8001)

    def test_out_of_range(self) -> None:
        for payload in (b"0", b"65536", b"99999999"):
            self.assertRaises(MalformedFrameError, parse_port, payload)

    def test_not_a_number(self) -> None:
        for payload in (b"", b" ", b"-1", b"+80", b"80a", b"8 0", b"0x50", b"1e3", b"1_000"):
            self.assertRaises(MalformedFrameError, parse_port, payload)

    def test_non_ascii_digits(self) -> None:
        """Arabic-Indic and superscript digits are digits to str.isdigit, not to the protocol."""
        self.assertRaises(MalformedFrameError, parse_port, "\u0668\u0660".encode())
        self.assertRaises(MalformedFrameError, parse_port, "8\u00b2".encode())

    def test_bad_utf8(self) -> None:
        self.assertRaises(InvalidUTF8Error, parse_port, b"80\xff")

    def test_too_many_digits(self) -> None:
        """
        Python refuses int() of over 4300 digits with ValueError; the port parser must not leak it.

        Reachable whenever the server's max_payload is set above 4300 bytes.
        """
        self.assertRaises(MalformedFrameError, parse_port, b"1" * 5000)


class AcknowledgePayloadTests(SynchronousTestCase):
    def test_legacy_is_one_byte(self) -> None:
        for dialect in (Dialect.MODEL, Dialect.SEED):
            for status in Status:
                self.assertEqual(acknowledge_payload(status, dialect, "why"), bytes((status,)))

    def test_native_success_is_one_byte(self) -> None:
        self.assertEqual(acknowledge_payload(Status.SUCCESS, Dialect.NATIVE, "ok"), b"\x00")

    def test_native_error_carries_json_detail(self) -> None:
        payload = acknowledge_payload(Status.ROOM_NOT_FOUND, Dialect.NATIVE, "no room \u90e8\u5c4b")
        self.assertEqual(payload[0], Status.ROOM_NOT_FOUND)
        detail = json.loads(payload[1:].decode("utf-8"))
        self.assertEqual(
            detail,
            {"chatd": NATIVE_VERSION, "status": "room_not_found", "message": "no room \u90e8\u5c4b", "versions": [1]},
        )
        self.assertIn("\u90e8\u5c4b".encode(), payload)

    def test_error_payload(self) -> None:
        error = RoomExistsError("room hoge exists")
        self.assertEqual(error_payload(error, Dialect.SEED), b"\x01")
        payload = error_payload(error, Dialect.NATIVE)
        self.assertEqual(payload[:1], b"\x01")
        self.assertEqual(json.loads(payload[1:])["message"], "room hoge exists")
        self.assertEqual(json.loads(payload[1:])["status"], "room_exists")


class JsonTests(SynchronousTestCase):
    def test_encode_adds_the_version(self) -> None:
        self.assertEqual(json.loads(encode_json({"invite": "x"})), {"chatd": NATIVE_VERSION, "invite": "x"})

    def test_encode_keeps_non_ascii(self) -> None:
        self.assertIn("\u00e9".encode(), encode_json({"user": "\u00e9"}))

    def test_round_trip(self) -> None:
        obj = {"event": "joined", "members": ["ann", "bob"]}
        self.assertEqual(decode_json(encode_json(obj)), {"chatd": NATIVE_VERSION, **obj})

    def test_decode_refusals(self) -> None:
        self.assertRaises(InvalidUTF8Error, decode_json, b'{"a": "\xff"}')
        self.assertRaises(MalformedFrameError, decode_json, b"{")
        self.assertRaises(MalformedFrameError, decode_json, b"[1]")
        self.assertRaises(MalformedFrameError, decode_json, b"")

    def test_decode_deeply_nested(self) -> None:
        self.assertRaises(MalformedFrameError, decode_json, b'{"a": ' + b"[" * 2000 + b"]" * 2000 + b"}")


class NoticeTests(SynchronousTestCase):
    def test_joined(self) -> None:
        notice = Notice(NoticeKind.MEMBER_JOINED, "hoge", "bob")
        self.assertEqual(notice.text_for("ann"), "* bob joined hoge")
        self.assertEqual(notice.encode_for("ann", Dialect.SEED), b"* bob joined hoge")

    def test_left(self) -> None:
        notice = Notice(NoticeKind.MEMBER_LEFT, "hoge", "bob")
        self.assertEqual(notice.text_for("ann"), "* bob left hoge")

    def test_timed_out_for_the_others(self) -> None:
        notice = Notice(NoticeKind.TIMED_OUT, "hoge", "bob", idle_timeout=300.0)
        self.assertEqual(notice.text_for("ann"), "* bob was removed from hoge after 300 s without activity")

    def test_timed_out_for_the_member_removed(self) -> None:
        notice = Notice(NoticeKind.TIMED_OUT, "hoge", "bob", idle_timeout=300.0)
        self.assertEqual(notice.text_for("bob"), "* you were removed from hoge after 300 s without activity")
        self.assertEqual(
            notice.encode_for("bob", Dialect.SEED),
            b"* you were removed from hoge after 300 s without activity",
        )
        # The model client's own sentence, nothing added: it ends its program on it.
        self.assertEqual(notice.encode_for("bob", Dialect.MODEL), MODEL_REMOVED_FOR_SILENCE.encode("utf-8"))
        self.assertEqual(
            notice.encode_for("ann", Dialect.MODEL), b"* bob was removed from hoge after 300 s without activity"
        )

    def test_model_members_get_the_closing_sentence(self) -> None:
        closing = "チャットルームが閉じられました".encode()
        self.assertEqual(MODEL_ROOM_CLOSED.encode("utf-8"), closing)
        for reason in ("the host left", "the host closed the room", "the host timed out"):
            notice = Notice(NoticeKind.ROOM_CLOSED, "hoge", "ann", reason=reason)
            self.assertEqual(notice.encode_for("bob", Dialect.MODEL), closing)
            self.assertEqual(notice.encode_for("bob", Dialect.SEED), f"* room hoge was closed: {reason}".encode())
            self.assertEqual(json.loads(notice.encode_for("bob", Dialect.NATIVE))["text"], notice.text_for("bob"))
        stopping = Notice(NoticeKind.SERVER_STOPPING, "hoge", "ann", reason="the server is shutting down")
        self.assertEqual(stopping.encode_for("ann", Dialect.MODEL), closing)
        # A host removed for silence is told so; its members, that their room closed.
        timed_out = Notice(NoticeKind.ROOM_CLOSED, "hoge", "ann", reason="the host timed out", for_silence=True)
        self.assertEqual(timed_out.encode_for("ann", Dialect.MODEL), MODEL_REMOVED_FOR_SILENCE.encode("utf-8"))
        self.assertEqual(timed_out.encode_for("bob", Dialect.MODEL), closing)

    def test_timed_out_fractional_seconds(self) -> None:
        notice = Notice(NoticeKind.TIMED_OUT, "hoge", "bob", idle_timeout=0.5)
        self.assertEqual(notice.text_for("ann"), "* bob was removed from hoge after 0.5 s without activity")

    def test_room_closed(self) -> None:
        notice = Notice(NoticeKind.ROOM_CLOSED, "hoge", "ann", reason="the host left")
        self.assertEqual(notice.text_for("bob"), "* room hoge was closed: the host left")

    def test_server_stopping(self) -> None:
        notice = Notice(NoticeKind.SERVER_STOPPING, "hoge")
        self.assertEqual(notice.text_for("ann"), "* the server is shutting down; room hoge is closed")

    def test_text_is_utf8(self) -> None:
        notice = Notice(NoticeKind.MEMBER_JOINED, "\u90e8\u5c4b", "\u00e9mile")
        self.assertEqual(notice.encode_for("ann", Dialect.SEED), "* \u00e9mile joined \u90e8\u5c4b".encode())

    def test_json_joined(self) -> None:
        notice = Notice(NoticeKind.MEMBER_JOINED, "hoge", "bob")
        # Byte for byte, as docs/protocol.md 4.6 gives it: the change, not the list.
        self.assertEqual(
            notice.to_json("ann"),
            b'{"chatd": 1, "event": "joined", "room": "hoge", "text": "* bob joined hoge", "user": "bob"}',
        )
        self.assertEqual(notice.encode_for("ann", Dialect.NATIVE), notice.to_json("ann"))

    def test_json_left(self) -> None:
        obj = json.loads(Notice(NoticeKind.MEMBER_LEFT, "hoge", "bob").to_json("ann"))
        self.assertEqual(obj["event"], "left")
        self.assertEqual(obj["user"], "bob")
        self.assertNotIn("members", obj)
        self.assertNotIn("reason", obj)

    def test_json_timed_out_for_the_member_removed(self) -> None:
        notice = Notice(NoticeKind.TIMED_OUT, "hoge", "bob", idle_timeout=300.0)
        obj = json.loads(notice.to_json("bob"))
        self.assertEqual(obj["event"], "timed_out")
        self.assertEqual(obj["user"], "bob")
        self.assertEqual(obj["text"], "* you were removed from hoge after 300 s without activity")
        self.assertEqual(json.loads(notice.to_json("ann"))["text"], notice.text_for("ann"))

    def test_json_room_closed(self) -> None:
        notice = Notice(NoticeKind.ROOM_CLOSED, "hoge", reason="the host left")
        self.assertEqual(
            json.loads(notice.to_json("bob")),
            {
                "chatd": NATIVE_VERSION,
                "event": "room_closed",
                "room": "hoge",
                "reason": "the host left",
                "text": "* room hoge was closed: the host left",
            },
        )

    def test_json_server_stopping(self) -> None:
        obj = json.loads(Notice(NoticeKind.SERVER_STOPPING, "hoge").to_json("ann"))
        self.assertEqual(obj["event"], "server_stopping")
        self.assertNotIn("user", obj)
        self.assertEqual(obj["text"], "* the server is shutting down; room hoge is closed")

    def test_json_keeps_non_ascii(self) -> None:
        payload = Notice(NoticeKind.MEMBER_JOINED, "\u90e8\u5c4b", "bob").to_json("ann")
        self.assertIn("\u90e8\u5c4b".encode(), payload)
        self.assertEqual(json.loads(payload)["room"], "\u90e8\u5c4b")


class LoggablePayloadTests(SynchronousTestCase):
    def test_secrets_in_json_are_redacted(self) -> None:
        logged = loggable_payload(b'{"username": "ann", "password": "s3cret", "invite": "tok"}')
        self.assertEqual(logged, '{"username": "ann", "password": "[redacted]", "invite": "[redacted]"}')

    def test_udp_keys_are_redacted(self) -> None:
        logged = loggable_payload(b'{"chatd": 1, "key": "U7u3LuSh1Iz1g9VwBin2EhelqpXlUlvvAJOKgqhEZaQ=", "key_id": 5}')
        # The key id is in clear on every sealed datagram: next to a user name
        # in a log, it would tie that person to their UDP flow.
        self.assertEqual(logged, '{"chatd": 1, "key": "[redacted]", "key_id": "[redacted]"}')

    def test_broken_json_is_redacted_whole(self) -> None:
        self.assertEqual(loggable_payload(b'{"username": "ann", "password": "s3cret"'), "[redacted]")

    def test_plain_text_is_shown_and_secret_text_is_not(self) -> None:
        self.assertEqual(loggable_payload(b"ann"), "'ann'")
        self.assertEqual(loggable_payload(b"TaKJ_t-Wl-8pxX2sbekl5Q", secret=True), "[redacted]")


class ReadRoomRequestTests(SynchronousTestCase):
    """read_room_request: the dialect decision and the request from one parse."""

    def test_native_decision(self) -> None:
        cases = [
            (b'{"chatd": 1, "username": "ann"}', True),
            (b'{"chatd": 99}', True),
            (b'{"chatd": "1", "username": "ann"}', True),
            (b'{"chatd": 1, "username": "* ann"}', True),
            (b'  {"chatd": 1, "username": "ann"}\r\n', True),
            (b'{"chatd": null, "username": "ann"}', False),
            (b'{"username": "ann"}', False),
            (b"{", False),
            (b"ann", False),
            (b"[1, 2]", False),
            (b"\xff", False),
            ('{"chatd": 1}'.encode("utf-16"), False),
            ('\u00a0{"chatd": 1, "username": "ann"}'.encode(), False),
        ]
        for payload, native in cases:
            self.assertEqual(read_room_request(payload).native, native, payload)

    def test_valid_request(self) -> None:
        parsed = read_room_request(b'{"chatd": 1, "username": "ann", "password": "pw"}')
        request = RoomRequest("ann", "pw", version=1)
        self.assertEqual(parsed, ParsedRoomRequest(True, request))
        self.assertEqual(parsed.request(), request)

    def test_refusal_is_kept_then_raised(self) -> None:
        cases: list[tuple[bytes, bool, type[Exception]]] = [
            (b'{"chatd": 99, "username": "ann"}', True, UnsupportedVersionError),
            (b'{"chatd": true, "username": "ann"}', True, MalformedFrameError),
            (b'{"chatd": 1, "username": "a:b"}', True, InvalidNameError),
            (b'{"username": 5}', False, MalformedFrameError),
            (b'{"username"', False, MalformedFrameError),
            (b"*ann", False, InvalidNameError),
            (b"\xff", False, InvalidUTF8Error),
        ]
        for payload, native, error in cases:
            parsed = read_room_request(payload)
            self.assertEqual(parsed.native, native, payload)
            self.assertIsInstance(parsed.parsed, error)
            self.assertRaises(error, parsed.request)

    def test_max_user_name(self) -> None:
        self.assertEqual(read_room_request(b"abc", 3).request(), RoomRequest("abc"))
        self.assertRaises(InvalidNameError, read_room_request(b"abcd", 3).request)

    def test_json_is_decoded_once(self) -> None:
        calls: list[str] = []
        loads = json.loads

        def counting(text: str) -> object:
            calls.append(text)
            return loads(text)

        self.patch(json, "loads", counting)
        for payload in (b'{"chatd": 1, "username": "ann"}', b'{"username": "ann"}', b'{"chatd": 2, "username": "x"}'):
            del calls[:]
            read_room_request(payload)
            self.assertEqual(len(calls), 1, payload)
        del calls[:]
        read_room_request(b"ann")
        self.assertEqual(calls, [])

    def test_parse_room_request_raises_what_read_keeps(self) -> None:
        self.assertEqual(parse_room_request(b"ann"), read_room_request(b"ann").request())
        self.assertRaises(UnsupportedVersionError, parse_room_request, b'{"chatd": 2, "username": "ann"}')


KEY_20_3F = bytes(range(0x20, 0x40))
KEY_40_5F = bytes(range(0x40, 0x60))


class ServerPayloadTests(SynchronousTestCase):
    """The native JSON the server builds, byte for byte (docs/protocol.md's examples where there are some)."""

    def test_entered_payload(self) -> None:
        payload = entered_payload(
            token="Hq3vT9bW1xZ7mK2nR5cY8A",
            key=KEY_20_3F,
            key_id=712774629,
            room="hoge",
            user="ann",
            host=False,
            members=("a", "ann"),
            idle_timeout=300.0,
            keepalive_interval=30.0,
        )
        self.assertEqual(
            payload,
            b'{"chatd": 1, "token": "Hq3vT9bW1xZ7mK2nR5cY8A", "key": "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",'
            b' "key_id": 712774629, "room": "hoge", "user": "ann", "host": false, "members": ["a", "ann"],'
            b' "idle_timeout": 300.0, "keepalive_interval": 30.0}',
        )

    def test_entered_payload_non_ascii(self) -> None:
        payload = entered_payload(
            token="t",
            key=b"",
            key_id=1,
            room="\u90e8\u5c4b",
            user="\u00e9",
            host=True,
            members=["\u00e9"],
            idle_timeout=0.5,
            keepalive_interval=1,
        )
        self.assertEqual(
            payload,
            '{"chatd": 1, "token": "t", "key": "", "key_id": 1, "room": "\u90e8\u5c4b", "user": "\u00e9",'
            ' "host": true, "members": ["\u00e9"], "idle_timeout": 0.5, "keepalive_interval": 1}'.encode(),
        )

    def test_rekey_payload(self) -> None:
        self.assertEqual(
            rekey_payload(KEY_40_5F, 1910524573),
            b'{"chatd": 1, "key": "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=", "key_id": 1910524573}',
        )

    def test_invite_payload(self) -> None:
        self.assertEqual(
            invite_payload("Pq5sWn0Lc3Vx8Rt2Mb7KyA", 3600.0, Dialect.NATIVE),
            b'{"chatd": 1, "invite": "Pq5sWn0Lc3Vx8Rt2Mb7KyA", "expires_in": 3600.0}',
        )
        for dialect in (Dialect.MODEL, Dialect.SEED):
            self.assertEqual(invite_payload("Zx8pLm2Qv7RtY4nB0cKd9w", 3600.0, dialect), b"Zx8pLm2Qv7RtY4nB0cKd9w")

    def test_legacy_secret_payload(self) -> None:
        self.assertEqual(legacy_secret_payload("Hq3vT9bW1xZ7mK2nR5cY8A"), b"Hq3vT9bW1xZ7mK2nR5cY8A")
        self.assertRaises(UnicodeEncodeError, legacy_secret_payload, "\u00e9")

    def test_members_payload(self) -> None:
        self.assertEqual(
            members_payload(("ann", "bob"), "ann"), b'{"chatd": 1, "members": ["ann", "bob"], "host": "ann"}'
        )
        self.assertEqual(members_payload((), None), b'{"chatd": 1, "members": [], "host": null}')


class NativeOnlyRequestTests(SynchronousTestCase):
    def test_native_only_flag(self) -> None:
        request = parse_room_request(b'{"chatd": 1, "username": "ann", "native_only": true}')
        self.assertTrue(request.native_only)
        self.assertFalse(parse_room_request(b'{"username": "ann"}').native_only)
        with self.assertRaises(MalformedFrameError):
            parse_room_request(b'{"username": "ann", "native_only": "yes"}')

    def test_throttled_notice_text(self) -> None:
        notice = Notice(NoticeKind.THROTTLED, "hoge", "eve")
        self.assertEqual(notice.text_for("eve"), "* you are sending too fast: messages are being dropped; slow down")


class NoticeEncodingCacheTests(SynchronousTestCase):
    def test_encoded_once_per_kind_of_recipient(self) -> None:
        notice = Notice(NoticeKind.TIMED_OUT, "hoge", "bob", idle_timeout=300.0)
        for_ann = notice.encode_for("ann", Dialect.NATIVE)
        self.assertIs(notice.encode_for("cat", Dialect.NATIVE), for_ann)
        self.assertIn(b"bob was removed", for_ann)
        self.assertIn(b"you were removed", notice.encode_for("bob", Dialect.NATIVE))
        self.assertEqual(
            notice.encode_for("ann", Dialect.SEED), b"* bob was removed from hoge after 300 s without activity"
        )
        self.assertEqual(notice, Notice(NoticeKind.TIMED_OUT, "hoge", "bob", idle_timeout=300.0))


class AnswersReadBackTests(SynchronousTestCase):
    """The client's readers of the native answers take back exactly what the builders wrote."""

    KEY = bytes(range(32))

    def test_entered(self) -> None:
        payload = payloads.entered_payload(
            token="tok",
            key=self.KEY,
            key_id=7,
            room="部屋",
            user="ann",
            host=False,
            members=("bob", "ann"),
            idle_timeout=300.0,
            keepalive_interval=30.0,
        )
        answer = payloads.read_entered_payload(payload)
        self.assertEqual(
            answer,
            payloads.EnteredAnswer("tok", self.KEY, 7, "部屋", "ann", False, ("bob", "ann"), 300.0, 30.0),
        )

    def test_rekey_members_invite(self) -> None:
        self.assertEqual(payloads.read_rekey_payload(payloads.rekey_payload(self.KEY, 9)), (self.KEY, 9))
        members = payloads.members_payload(("alice", "bob"), "alice")
        self.assertEqual(payloads.read_members_payload(members), (("alice", "bob"), "alice"))
        self.assertEqual(payloads.read_members_payload(payloads.members_payload((), None)), ((), None))
        invite = payloads.invite_payload("inv", 3600.0, payloads.Dialect.NATIVE)
        self.assertEqual(payloads.read_invite_payload(invite), "inv")

    def test_unusable_answers_are_malformed(self) -> None:
        for read, payload in (
            (payloads.read_entered_payload, b'{"chatd": 1, "key": "AA==", "key_id": 1}'),
            (payloads.read_entered_payload, b'{"chatd": 1, "key": "not base64!", "key_id": 1}'),
            (payloads.read_rekey_payload, b'{"chatd": 1, "key_id": 1}'),
            (payloads.read_members_payload, b'{"chatd": 1, "members": "alice"}'),
            (payloads.read_invite_payload, b'{"chatd": 1}'),
            (payloads.read_invite_payload, b"[]"),
        ):
            with self.assertRaises(MalformedFrameError, msg=payload):
                read(payload)

    def test_room_request_bytes(self) -> None:
        # ASCII JSON, in the documented key order; the server reads it back whole.
        payload = payloads.room_request_payload("花子", "pw", None, True)
        self.assertEqual(payload, b'{"chatd": 1, "username": "\\u82b1\\u5b50", "password": "pw", "native_only": true}')
        request = payloads.read_room_request(payload).request()
        self.assertEqual((request.username, request.password, request.native_only), ("花子", "pw", True))
        self.assertEqual(
            payloads.room_request_payload("ann", None, "inv", False, version=2)[:27], b'{"chatd": 2, "username": "a'
        )
