"""Tests for chatd.protocol.datagrams: legacy chat datagrams, native frames, relay bodies."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.protocol.datagrams import (
    CLIENT_FRAME_TYPES,
    MAX_DATAGRAM,
    RELAY_OVERHEAD,
    FrameType,
    LegacyDatagram,
    RelayedMessage,
    decode_datagram,
    decode_legacy,
    decode_relay_body,
    encode_legacy,
    encode_relay_body,
    pack_relay_body,
    relay_text,
)
from chatd.protocol.errors import (
    FrameTooLargeError,
    InvalidUTF8Error,
    MalformedFrameError,
    ProtocolError,
    UnsupportedVersionError,
)
from chatd.protocol.seal import Channel, Direction, SealedHeader, new_key


def _short_utf8(min_bytes: int, max_bytes: int) -> st.SearchStrategy[str]:
    return st.text(min_size=min_bytes, max_size=max_bytes).filter(
        lambda text: min_bytes <= len(text.encode("utf-8")) <= max_bytes
    )


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


class NativeDatagramTests(SynchronousTestCase):
    """Native datagrams are sealed (tests/protocol/test_seal.py); decode_datagram reads their clear header."""

    def test_native_datagram_decodes_to_its_header(self) -> None:
        sealed = Channel(new_key(), 77, Direction.TO_SERVER).seal(FrameType.MESSAGE, b"hi")
        self.assertEqual(decode_datagram(sealed), SealedHeader(77, 0, 0))

    def test_short_native_datagram(self) -> None:
        with self.assertRaises(MalformedFrameError):
            decode_datagram(b"\x00\x01\x00")

    def test_other_version(self) -> None:
        with self.assertRaises(UnsupportedVersionError):
            decode_datagram(b"\x00\x02" + bytes(40))

    def test_oversize_native(self) -> None:
        with self.assertRaises(FrameTooLargeError):
            decode_datagram(b"\x00\x01" + bytes(MAX_DATAGRAM))

    def test_client_frame_types(self) -> None:
        self.assertEqual(CLIENT_FRAME_TYPES, {FrameType.MESSAGE, FrameType.KEEPALIVE})

    def test_relay_overhead_is_the_largest_copy(self) -> None:
        body = encode_relay_body("ann", b"x" * 10, 0)
        sealed = Channel(new_key(), 1, Direction.TO_CLIENT).seal(FrameType.RELAY, body)
        self.assertEqual(len(sealed), RELAY_OVERHEAD + len("ann") + 10)
        self.assertGreater(RELAY_OVERHEAD, len(relay_text("ann", b"")) - len("ann"))


class RelayTests(SynchronousTestCase):
    def test_relay_text(self) -> None:
        """The model dialect's relay: "<username>: <message>" as UTF-8."""
        self.assertEqual(relay_text("ann", b"hello"), b"ann: hello")
        self.assertEqual(relay_text("\u00e9mile", "h\u00e9".encode()), "\u00e9mile: h\u00e9".encode())
        self.assertEqual(relay_text("ann", b""), b"ann: ")

    def test_relay_body_layout(self) -> None:
        body = encode_relay_body("ann", b"hi", 1_700_000_000_123)
        self.assertEqual(body, struct.pack("!QB", 1_700_000_000_123, 3) + b"annhi")

    def test_pack_relay_body(self) -> None:
        """The relay's encoder, from the name's bytes: the same body, byte for byte."""
        self.assertEqual(
            pack_relay_body(b"ann", b"hi", 1_700_000_000_123), b"\x00\x00\x01\x8b\xcf\xe5\x68\x7b\x03annhi"
        )
        name = "\u00e9mile"
        self.assertEqual(
            pack_relay_body(name.encode(), "h\u00e9".encode(), 7), encode_relay_body(name, "h\u00e9".encode(), 7)
        )
        self.assertEqual(pack_relay_body(b"", b"", 0), bytes(9))
        self.assertEqual(len(pack_relay_body(b"n" * 255, b"", 0)), 9 + 255)

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
        self.assertIsInstance(decoded, LegacyDatagram | SealedHeader)
        self.assertLessEqual(len(data), MAX_DATAGRAM)

    @settings(max_examples=300, deadline=None)
    @given(data=st.binary(max_size=64))
    def test_decode_relay_body_raises_only_protocol_errors(self, data: bytes) -> None:
        try:
            decoded = decode_relay_body(data)
        except ProtocolError:
            return
        self.assertIsInstance(decoded, RelayedMessage)
