"""Tests for chatd.datagrams: legacy chat datagrams, native frames, relay bodies."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.datagrams import (
    MAX_DATAGRAM,
    NATIVE_MARKER,
    FrameType,
    LegacyDatagram,
    NativeFrame,
    RelayedMessage,
    decode_datagram,
    decode_legacy,
    decode_native,
    decode_relay_body,
    encode_legacy,
    encode_native,
    encode_relay_body,
    native_header,
    relay_text,
)
from chatd.errors import (
    FrameTooLargeError,
    InvalidUTF8Error,
    MalformedFrameError,
    ProtocolError,
    Status,
    UnsupportedVersionError,
)
from chatd.payloads import NATIVE_VERSION

NATIVE_HEADER_SIZE = 13
"""marker, version, type, flags (1 byte each), sequence (8), auth length (1)."""


def _short_utf8(min_bytes: int, max_bytes: int) -> st.SearchStrategy[str]:
    return st.text(min_size=min_bytes, max_size=max_bytes).filter(
        lambda text: min_bytes <= len(text.encode("utf-8")) <= max_bytes
    )


def native(frame_type: int, body: bytes = b"", auth: bytes = b"tok", version: int = NATIVE_VERSION) -> bytes:
    """A native frame built by hand, so the encoder is not trusted to test the decoder."""
    return bytes((NATIVE_MARKER, version, frame_type, 0)) + (7).to_bytes(8, "big") + bytes((len(auth),)) + auth + body


class LegacyDatagramTests(SynchronousTestCase):
    def test_decode(self) -> None:
        data = b"\x04\x03hogetokhello"
        self.assertEqual(decode_datagram(data), LegacyDatagram("hoge", "tok", b"hello"))
        self.assertEqual(decode_legacy(data), LegacyDatagram("hoge", "tok", b"hello"))

    def test_encode(self) -> None:
        self.assertEqual(encode_legacy("hoge", "tok", "hello"), b"\x04\x03hogetokhello")

    def test_empty_message(self) -> None:
        self.assertEqual(decode_datagram(b"\x01\x01rt"), LegacyDatagram("r", "t", b""))

    def test_non_ascii(self) -> None:
        data = encode_legacy("\u90e8\u5c4b", "t\u00f6k", "\u3053\u3093\u306b\u3061\u306f")
        self.assertEqual(data[:2], b"\x06\x04")
        self.assertEqual(
            decode_datagram(data), LegacyDatagram("\u90e8\u5c4b", "t\u00f6k", "\u3053\u3093\u306b\u3061\u306f".encode())
        )

    def test_empty(self) -> None:
        error = self.assertRaises(MalformedFrameError, decode_datagram, b"")
        self.assertEqual(error.reason, "malformed")

    def test_shorter_than_the_header(self) -> None:
        self.assertRaises(MalformedFrameError, decode_datagram, b"\x04")
        self.assertRaises(MalformedFrameError, decode_legacy, b"")

    def test_zero_sizes(self) -> None:
        self.assertRaises(MalformedFrameError, decode_datagram, b"\x04\x00hogehello")
        self.assertRaises(MalformedFrameError, decode_legacy, b"\x00\x03tokhello")
        self.assertRaises(MalformedFrameError, decode_legacy, b"\x00\x00")

    def test_truncated_room(self) -> None:
        self.assertRaises(MalformedFrameError, decode_datagram, b"\x04\x03hog")

    def test_truncated_token(self) -> None:
        self.assertRaises(MalformedFrameError, decode_datagram, b"\x04\x03hogeto")

    def test_exactly_room_and_token(self) -> None:
        self.assertEqual(decode_datagram(b"\x04\x03hogetok"), LegacyDatagram("hoge", "tok", b""))

    def test_invalid_utf8(self) -> None:
        for data in (b"\x02\x01\xc3\x28t", b"\x01\x02r\xff\xfe", b"\x01\x01rthi \xe3\x81"):
            error = self.assertRaises(InvalidUTF8Error, decode_datagram, data)
            self.assertEqual(error.reason, "invalid_utf8")

    def test_largest(self) -> None:
        data = b"\x01\x01rt" + b"m" * (MAX_DATAGRAM - 4)
        self.assertEqual(decode_datagram(data), LegacyDatagram("r", "t", b"m" * (MAX_DATAGRAM - 4)))

    def test_oversize(self) -> None:
        data = b"\x01\x01rt" + b"m" * (MAX_DATAGRAM - 3)
        self.assertEqual(len(data), 4097)
        error = self.assertRaises(FrameTooLargeError, decode_datagram, data)
        self.assertEqual(error.reason, "too_large")
        self.assertRaises(FrameTooLargeError, decode_legacy, data)

    @settings(max_examples=150, deadline=None)
    @given(room=_short_utf8(1, 255), token=_short_utf8(1, 255), message=st.text(max_size=200))
    def test_round_trip(self, room: str, token: str, message: str) -> None:
        self.assertEqual(
            decode_datagram(encode_legacy(room, token, message)), LegacyDatagram(room, token, message.encode("utf-8"))
        )


class NativeFrameTests(SynchronousTestCase):
    def test_header_layout(self) -> None:
        self.assertEqual(
            native_header(FrameType.KEEPALIVE_ACK, 0x0102030405060708, b"ab", flags=0x80),
            b"\x00\x01\x05\x80\x01\x02\x03\x04\x05\x06\x07\x08\x02ab",
        )
        self.assertEqual(len(native_header(FrameType.RELAY, 1)), NATIVE_HEADER_SIZE)

    def test_decode_message(self) -> None:
        frame = decode_datagram(native(FrameType.MESSAGE, "h\u00e9".encode(), auth=b"token"))
        self.assertEqual(frame, NativeFrame(FrameType.MESSAGE, 7, b"token", "h\u00e9".encode()))

    def test_decode_keepalive(self) -> None:
        self.assertEqual(decode_datagram(native(FrameType.KEEPALIVE)), NativeFrame(FrameType.KEEPALIVE, 7, b"tok", b""))

    def test_flags(self) -> None:
        data = bytearray(native(FrameType.KEEPALIVE))
        data[3] = 0xA5
        self.assertEqual(decode_native(bytes(data)).flags, 0xA5)

    def test_server_side_types_decode(self) -> None:
        """Clients decode what the server sends; refusing these from clients is the UDP adapter's job."""
        relay_body = encode_relay_body("ann", b"hi", 1)
        self.assertEqual(
            decode_datagram(native(FrameType.RELAY, relay_body, auth=b"")),
            NativeFrame(FrameType.RELAY, 7, b"", relay_body),
        )
        self.assertEqual(
            decode_datagram(native(FrameType.NOTICE, b'{"event": "left"}', auth=b"")),
            NativeFrame(FrameType.NOTICE, 7, b"", b'{"event": "left"}'),
        )
        self.assertEqual(
            decode_datagram(native(FrameType.KEEPALIVE_ACK, auth=b"")),
            NativeFrame(FrameType.KEEPALIVE_ACK, 7, b"", b""),
        )

    def test_relay_body_is_binary(self) -> None:
        """A RELAY body starts with a binary timestamp: it is not checked as text."""
        self.assertEqual(decode_native(native(FrameType.RELAY, b"\xff\xfe")).body, b"\xff\xfe")

    def test_text_bodies_must_be_utf8(self) -> None:
        self.assertRaises(InvalidUTF8Error, decode_datagram, native(FrameType.MESSAGE, b"\xff"))
        self.assertRaises(InvalidUTF8Error, decode_datagram, native(FrameType.NOTICE, b"\xc3"))

    def test_version_mismatch(self) -> None:
        for version in (0, 2, 0xFF):
            error = self.assertRaises(
                UnsupportedVersionError, decode_datagram, native(FrameType.MESSAGE, version=version)
            )
            self.assertIs(error.status, Status.UNSUPPORTED_VERSION)
            self.assertEqual(error.reason, "unsupported_version")

    def test_unknown_frame_type(self) -> None:
        for frame_type in (0, 6, 0xFF):
            self.assertRaises(MalformedFrameError, decode_datagram, native(frame_type))

    def test_shorter_than_the_header(self) -> None:
        whole = native(FrameType.KEEPALIVE, auth=b"")
        for size in range(1, NATIVE_HEADER_SIZE):
            self.assertRaises(MalformedFrameError, decode_datagram, whole[:size])
        self.assertIsInstance(decode_datagram(whole), NativeFrame)

    def test_truncated_auth(self) -> None:
        data = native(FrameType.KEEPALIVE, auth=b"token")[:-1]
        self.assertRaises(MalformedFrameError, decode_datagram, data)

    def test_not_a_native_marker(self) -> None:
        self.assertRaises(MalformedFrameError, decode_native, b"\x01" + native(FrameType.KEEPALIVE)[1:])

    def test_oversize(self) -> None:
        data = native(FrameType.MESSAGE, b"m" * MAX_DATAGRAM)
        self.assertRaises(FrameTooLargeError, decode_datagram, data)
        self.assertRaises(FrameTooLargeError, decode_native, data)

    def test_largest(self) -> None:
        body = b"m" * (MAX_DATAGRAM - NATIVE_HEADER_SIZE - 3)
        self.assertEqual(decode_native(native(FrameType.MESSAGE, body)).body, body)

    @settings(max_examples=150, deadline=None)
    @given(
        frame_type=st.sampled_from(FrameType),
        sequence=st.integers(min_value=0, max_value=2**64 - 1),
        auth=st.binary(max_size=255),
        text=st.text(max_size=200),
        raw=st.binary(max_size=200),
        flags=st.integers(min_value=0, max_value=255),
    )
    def test_round_trip(
        self, frame_type: FrameType, sequence: int, auth: bytes, text: str, raw: bytes, flags: int
    ) -> None:
        body = text.encode("utf-8") if frame_type in (FrameType.MESSAGE, FrameType.NOTICE) else raw
        frame = NativeFrame(frame_type, sequence, auth, body, flags)
        data = encode_native(frame)
        self.assertEqual(data, native_header(frame_type, sequence, auth, flags) + body)
        self.assertEqual(decode_datagram(data), frame)
        self.assertEqual(decode_native(data), frame)


class RelayTests(SynchronousTestCase):
    def test_relay_text(self) -> None:
        """The model dialect's relay: "<username>: <message>" as UTF-8."""
        self.assertEqual(relay_text("ann", b"hello"), b"ann: hello")
        self.assertEqual(relay_text("\u00e9mile", "h\u00e9".encode()), "\u00e9mile: h\u00e9".encode())
        self.assertEqual(relay_text("ann", b""), b"ann: ")

    def test_relay_body_layout(self) -> None:
        body = encode_relay_body("ann", b"hi", 1_700_000_000_123)
        self.assertEqual(body, struct.pack("!QB", 1_700_000_000_123, 3) + b"annhi")

    def test_decode_relay_body(self) -> None:
        body = struct.pack("!QB", 42, 3) + b"ann" + "h\u00e9".encode()
        self.assertEqual(decode_relay_body(body), RelayedMessage("ann", "h\u00e9", 42))

    def test_relay_body_refusals(self) -> None:
        self.assertRaises(MalformedFrameError, decode_relay_body, b"")
        self.assertRaises(MalformedFrameError, decode_relay_body, struct.pack("!QB", 1, 3)[:-1])
        self.assertRaises(MalformedFrameError, decode_relay_body, struct.pack("!QB", 1, 3) + b"an")
        self.assertRaises(InvalidUTF8Error, decode_relay_body, struct.pack("!QB", 1, 1) + b"\xff")
        self.assertRaises(InvalidUTF8Error, decode_relay_body, struct.pack("!QB", 1, 1) + b"a\xff")

    @settings(max_examples=150, deadline=None)
    @given(
        sender=_short_utf8(0, 255),
        text=st.text(max_size=200),
        timestamp=st.integers(min_value=0, max_value=2**64 - 1),
    )
    def test_round_trip(self, sender: str, text: str, timestamp: int) -> None:
        body = encode_relay_body(sender, text.encode("utf-8"), timestamp)
        self.assertEqual(decode_relay_body(body), RelayedMessage(sender, text, timestamp))


class ArbitraryBytesTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(
        data=st.one_of(
            st.binary(max_size=64),
            st.binary(min_size=MAX_DATAGRAM - 2, max_size=MAX_DATAGRAM + 2),
            st.builds(lambda tail: b"\x00\x01" + tail, st.binary(max_size=40)),
            st.builds(lambda head, tail: bytes(head) + tail, st.lists(st.integers(0, 8), max_size=2), st.binary()),
        )
    )
    def test_decode_datagram_raises_only_protocol_errors(self, data: bytes) -> None:
        try:
            decoded = decode_datagram(data)
        except ProtocolError:
            return
        self.assertIsInstance(decoded, LegacyDatagram | NativeFrame)
        self.assertLessEqual(len(data), MAX_DATAGRAM)

    @settings(max_examples=300, deadline=None)
    @given(data=st.binary(max_size=64))
    def test_decode_relay_body_raises_only_protocol_errors(self, data: bytes) -> None:
        try:
            decoded = decode_relay_body(data)
        except ProtocolError:
            return
        self.assertIsInstance(decoded, RelayedMessage)
