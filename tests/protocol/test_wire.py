"""Tests for chatd.protocol.wire: the 32-byte-header TCP frame codec."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.protocol.errors import (
    FrameTooLargeError,
    InvalidUTF8Error,
    MalformedFrameError,
    ProtocolError,
    Status,
    UnknownOperationError,
)
from chatd.protocol.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    SIZE_FIELD_SIZE,
    Frame,
    FrameDecoder,
    Operation,
    PortBytes,
    SizeEncoding,
    State,
    decode_frame,
    decode_payload_size,
    encode_frame,
    encode_payload_size,
    frame_length,
)

SEED_HEADER = b"\x04\x01\x001" + 28 * b"\x00"
SEED_BODY = b"hogea"
SEED_FRAME = Frame(Operation.CREATE, State.REQUEST, "hoge", b"a", SizeEncoding.ASCII)

ROOM_NAMES = st.text(max_size=255).filter(lambda name: len(name.encode("utf-8")) <= 255)
FRAMES = st.builds(
    Frame,
    operation=st.sampled_from(Operation),
    state=st.sampled_from(State),
    room=ROOM_NAMES,
    payload=st.binary(max_size=DEFAULT_MAX_PAYLOAD),
    encoding=st.sampled_from(SizeEncoding),
)


def drain(decoder: FrameDecoder) -> list[Frame | PortBytes]:
    """Every whole item the decoder holds."""
    items: list[Frame | PortBytes] = []
    while (item := decoder.next()) is not None:
        items.append(item)
    return items


def header(room_size: int, operation: int, state: int, size_field: bytes) -> bytes:
    return bytes((room_size, operation, state)) + size_field


class SeedExampleTests(SynchronousTestCase):
    """The example from the seed document (wire-dialects.md, dialect "seed")."""

    def test_header_is_32_bytes(self) -> None:
        self.assertEqual(len(SEED_HEADER), HEADER_SIZE)
        self.assertEqual(HEADER_SIZE, 32)
        self.assertEqual(SIZE_FIELD_SIZE, 29)

    def test_decodes(self) -> None:
        frame = decode_frame(SEED_HEADER + SEED_BODY)
        self.assertEqual(frame.room, "hoge")
        self.assertIs(frame.operation, Operation.CREATE)
        self.assertIs(frame.state, State.REQUEST)
        self.assertEqual(frame.payload, b"a")
        self.assertIs(frame.encoding, SizeEncoding.ASCII)
        self.assertEqual(frame, SEED_FRAME)

    def test_reencodes_to_the_same_bytes(self) -> None:
        self.assertEqual(encode_frame(SEED_FRAME), SEED_HEADER + SEED_BODY)

    def test_binary_form_of_the_same_frame(self) -> None:
        binary = Frame(Operation.CREATE, State.REQUEST, "hoge", b"a")
        self.assertEqual(encode_frame(binary), b"\x04\x01\x00" + 28 * b"\x00" + b"\x01" + SEED_BODY)
        self.assertEqual(decode_frame(encode_frame(binary)), binary)


class PayloadSizeTests(SynchronousTestCase):
    def test_ascii(self) -> None:
        field = b"4096" + 25 * b"\x00"
        self.assertEqual(decode_payload_size(field), (4096, SizeEncoding.ASCII))
        self.assertEqual(encode_payload_size(4096, SizeEncoding.ASCII), field)

    def test_ascii_zero(self) -> None:
        field = b"0" + 28 * b"\x00"
        self.assertEqual(decode_payload_size(field), (0, SizeEncoding.ASCII))
        self.assertEqual(encode_payload_size(0, SizeEncoding.ASCII), field)

    def test_ascii_all_digits(self) -> None:
        """29 digits and no padding at all is still a (huge) ASCII size."""
        self.assertEqual(decode_payload_size(b"9" * 29), (int("9" * 29), SizeEncoding.ASCII))

    def test_binary(self) -> None:
        field = 27 * b"\x00" + b"\x10\x00"
        self.assertEqual(decode_payload_size(field), (4096, SizeEncoding.BINARY))
        self.assertEqual(encode_payload_size(4096, SizeEncoding.BINARY), field)

    def test_binary_zero(self) -> None:
        self.assertEqual(decode_payload_size(29 * b"\x00"), (0, SizeEncoding.BINARY))

    def test_ascii_junk_before_the_nuls(self) -> None:
        for field in (
            b"12a" + 26 * b"\x00",
            b"1 " + 27 * b"\x00",
            b"1\x002" + 26 * b"\x00",
            b"1" + 27 * b"\x00" + b"x",
        ):
            self.assertRaises(MalformedFrameError, decode_payload_size, field)

    def test_wrong_field_length(self) -> None:
        self.assertRaises(MalformedFrameError, decode_payload_size, b"1" + 27 * b"\x00")
        self.assertRaises(MalformedFrameError, decode_payload_size, 30 * b"\x00")

    @settings(max_examples=100, deadline=None)
    @given(size=st.integers(min_value=0, max_value=10**20), encoding=st.sampled_from(SizeEncoding))
    def test_round_trip(self, size: int, encoding: SizeEncoding) -> None:
        field = encode_payload_size(size, encoding)
        self.assertEqual(len(field), SIZE_FIELD_SIZE)
        self.assertEqual(decode_payload_size(field), (size, encoding))


class FrameLengthTests(SynchronousTestCase):
    """frame_length: the one place the length of a frame is worked out from its header."""

    def test_seed_example(self) -> None:
        self.assertEqual(frame_length(SEED_HEADER), (1, 37, SizeEncoding.ASCII))
        self.assertEqual(frame_length(SEED_HEADER + SEED_BODY + b"more"), (1, 37, SizeEncoding.ASCII))

    def test_binary(self) -> None:
        self.assertEqual(
            frame_length(header(4, 6, 2, (89).to_bytes(SIZE_FIELD_SIZE, "big"))), (89, 125, SizeEncoding.BINARY)
        )
        self.assertEqual(frame_length(header(255, 1, 0, bytes(SIZE_FIELD_SIZE))), (0, 287, SizeEncoding.BINARY))

    def test_refusals(self) -> None:
        self.assertRaises(MalformedFrameError, frame_length, SEED_HEADER[:-1])
        self.assertRaises(MalformedFrameError, frame_length, b"")
        self.assertRaises(MalformedFrameError, frame_length, header(4, 1, 0, b"1x" + 27 * b"\x00"))

    @given(frame=FRAMES, tail=st.binary(max_size=8))
    def test_matches_encode_frame(self, frame: Frame, tail: bytes) -> None:
        data = encode_frame(frame)
        self.assertEqual(frame_length(data + tail), (len(frame.payload), len(data), frame.encoding))


class EncodeFrameTests(SynchronousTestCase):
    def test_room_name_over_255_bytes(self) -> None:
        frame = Frame(Operation.CREATE, State.REQUEST, "\u00e9" * 128, b"")
        self.assertRaises(ValueError, encode_frame, frame)

    def test_room_name_of_255_bytes(self) -> None:
        frame = Frame(Operation.JOIN, State.REQUEST, "a" * 255, b"x")
        data = encode_frame(frame)
        self.assertEqual(data[0], 255)
        self.assertEqual(decode_frame(data), frame)

    def test_multibyte_room_name_size_is_in_bytes(self) -> None:
        frame = Frame(Operation.JOIN, State.REQUEST, "\u90e8\u5c4b", b"")
        data = encode_frame(frame)
        self.assertEqual(data[0], 6)
        self.assertEqual(data[HEADER_SIZE:], "\u90e8\u5c4b".encode())


class DecodeFrameTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(frame=FRAMES)
    def test_round_trip(self, frame: Frame) -> None:
        data = encode_frame(frame)
        self.assertEqual(len(data), HEADER_SIZE + len(frame.room.encode("utf-8")) + len(frame.payload))
        self.assertEqual(decode_frame(data), frame)

    def test_trailing_bytes(self) -> None:
        self.assertRaises(MalformedFrameError, decode_frame, SEED_HEADER + SEED_BODY + b"x")

    def test_two_frames(self) -> None:
        self.assertRaises(MalformedFrameError, decode_frame, 2 * (SEED_HEADER + SEED_BODY))

    def test_missing_bytes(self) -> None:
        self.assertRaises(MalformedFrameError, decode_frame, SEED_HEADER + b"hoge")
        self.assertRaises(MalformedFrameError, decode_frame, SEED_HEADER[:31])
        self.assertRaises(MalformedFrameError, decode_frame, b"")

    def test_max_payload(self) -> None:
        data = encode_frame(Frame(Operation.CREATE, State.REQUEST, "r", b"x" * 11))
        self.assertEqual(decode_frame(data, max_payload=11).payload, b"x" * 11)
        self.assertRaises(FrameTooLargeError, decode_frame, data, max_payload=10)

    def test_at_the_default_limit(self) -> None:
        at_limit = Frame(Operation.CREATE, State.REQUEST, "r", b"x" * DEFAULT_MAX_PAYLOAD)
        self.assertEqual(decode_frame(encode_frame(at_limit)), at_limit)
        over = Frame(Operation.CREATE, State.REQUEST, "r", b"x" * (DEFAULT_MAX_PAYLOAD + 1))
        self.assertRaises(FrameTooLargeError, decode_frame, encode_frame(over))

    def test_empty_room_and_payload(self) -> None:
        frame = Frame(Operation.NOTICE, State.COMPLETE, "", b"")
        self.assertEqual(decode_frame(encode_frame(frame)), frame)

    def test_invalid_utf8_room_name(self) -> None:
        data = header(2, 1, 0, 29 * b"\x00") + b"\xc3\x28"
        error = self.assertRaises(InvalidUTF8Error, decode_frame, data)
        self.assertIs(error.status, Status.MALFORMED_REQUEST)

    def test_room_name_cut_inside_a_character(self) -> None:
        """The room size counts bytes: a size that splits a character is invalid UTF-8."""
        data = header(1, 1, 0, encode_payload_size(2, SizeEncoding.BINARY)) + "\u00e9".encode() + b"a"
        self.assertRaises(InvalidUTF8Error, decode_frame, data)

    def test_invalid_utf8_in_payload_is_not_the_codecs_business(self) -> None:
        data = header(1, 1, 0, encode_payload_size(1, SizeEncoding.BINARY)) + b"r\xff"
        self.assertEqual(decode_frame(data).payload, b"\xff")

    def test_unknown_operation(self) -> None:
        for operation in (9, 0x7F, 0xFF):
            data = header(1, operation, 0, 29 * b"\x00") + b"r"
            self.assertRaises(UnknownOperationError, decode_frame, data)

    def test_unknown_state(self) -> None:
        for state in (3, 0x30, 0xFF):
            data = header(1, 1, state, 29 * b"\x00") + b"r"
            self.assertRaises(UnknownOperationError, decode_frame, data)

    def test_every_known_operation_and_state(self) -> None:
        for operation in Operation:
            for state in State:
                data = header(1, operation, state, 29 * b"\x00") + b"r"
                frame = decode_frame(data)
                self.assertIs(frame.operation, operation)
                self.assertIs(frame.state, state)


class FrameDecoderTests(SynchronousTestCase):
    def test_nothing_yet(self) -> None:
        decoder = FrameDecoder()
        self.assertIsNone(decoder.next())
        self.assertEqual(decoder.buffered, 0)

    def test_one_byte_at_a_time(self) -> None:
        decoder = FrameDecoder()
        data = SEED_HEADER + SEED_BODY
        for index, byte in enumerate(data[:-1]):
            decoder.feed(bytes((byte,)))
            self.assertIsNone(decoder.next())
            self.assertEqual(decoder.buffered, index + 1)
        decoder.feed(data[-1:])
        self.assertEqual(decoder.next(), SEED_FRAME)
        self.assertEqual(decoder.buffered, 0)
        self.assertIsNone(decoder.next())

    def test_many_frames_in_one_feed(self) -> None:
        sent = [
            Frame(Operation.CREATE, State.REQUEST, "hoge", b'{"username": "ann"}'),
            Frame(Operation.JOIN, State.REQUEST, "fuga", b"bob", SizeEncoding.ASCII),
            Frame(Operation.REGISTER_UDP, State.REQUEST, "", b"9002", SizeEncoding.ASCII),
            Frame(Operation.NOTICE, State.COMPLETE, "\u90e8\u5c4b", b""),
        ]
        decoder = FrameDecoder()
        decoder.feed(b"".join(encode_frame(frame) for frame in sent) + SEED_HEADER[:10])
        self.assertEqual(drain(decoder), sent)
        self.assertEqual(decoder.buffered, 10)

    @settings(max_examples=75, deadline=None)
    @given(sent=st.lists(FRAMES, max_size=4), data=st.data())
    def test_any_chunking(self, sent: list[Frame], data: st.DataObject) -> None:
        stream = b"".join(encode_frame(frame) for frame in sent)
        cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20)))
        decoder = FrameDecoder()
        received: list[Frame | PortBytes] = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            decoder.feed(stream[start:end])
            received.extend(drain(decoder))
        self.assertEqual(received, sent)
        self.assertEqual(decoder.buffered, 0)

    def test_huge_size_refused_from_the_header_alone(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(header(4, 1, 0, b"\xff" * 29))
        self.assertRaises(FrameTooLargeError, decoder.next)
        self.assertEqual(decoder.buffered, HEADER_SIZE)

    def test_size_over_the_limit_refused_before_any_body(self) -> None:
        decoder = FrameDecoder(max_payload=100)
        decoder.feed(header(4, 1, 0, encode_payload_size(101, SizeEncoding.BINARY)))
        error = self.assertRaises(FrameTooLargeError, decoder.next)
        self.assertIs(error.status, Status.REQUEST_TOO_LARGE)
        self.assertTrue(error.closes)

    def test_huge_ascii_size_refused_from_the_header_alone(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(header(4, 1, 0, b"9" * 29))
        self.assertRaises(FrameTooLargeError, decoder.next)
        self.assertIs(decoder.encoding_hint, SizeEncoding.ASCII)

    def test_size_at_the_limit_waits_for_the_body(self) -> None:
        decoder = FrameDecoder(max_payload=100)
        decoder.feed(header(4, 1, 0, encode_payload_size(100, SizeEncoding.BINARY)))
        self.assertIsNone(decoder.next())

    def test_ascii_junk_before_the_nuls(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(header(4, 1, 0, b"1x" + 27 * b"\x00") + SEED_BODY)
        self.assertRaises(MalformedFrameError, decoder.next)

    def test_invalid_utf8_room_name(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(header(1, 1, 0, 29 * b"\x00") + b"\x80")
        self.assertRaises(InvalidUTF8Error, decoder.next)

    def test_unknown_operation(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(header(1, 9, 0, 29 * b"\x00") + b"r")
        self.assertRaises(UnknownOperationError, decoder.next)

    def test_port_after_a_frame(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(SEED_HEADER + SEED_BODY)
        self.assertEqual(decoder.next(), SEED_FRAME)
        decoder.expect_port()
        self.assertIsNone(decoder.next())
        decoder.feed(b"\x23")
        self.assertIsNone(decoder.next())
        decoder.feed(b"\x2a")
        self.assertEqual(decoder.next(), PortBytes(0x232A))
        self.assertEqual(decoder.buffered, 0)

    def test_port_in_the_same_chunk_as_the_frame(self) -> None:
        """The raw port bytes are read as a port, not as the start of a header."""
        decoder = FrameDecoder()
        decoder.feed(SEED_HEADER + SEED_BODY + b"\x1f\x41")
        self.assertEqual(decoder.next(), SEED_FRAME)
        decoder.expect_port()
        self.assertEqual(decoder.next(), PortBytes(8001))
        self.assertIsNone(decoder.next())

    def test_frames_resume_after_the_port(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(SEED_HEADER + SEED_BODY + b"\xff\xff" + SEED_HEADER + SEED_BODY)
        self.assertEqual(decoder.next(), SEED_FRAME)
        decoder.expect_port()
        self.assertEqual(decoder.next(), PortBytes(65535))
        self.assertEqual(decoder.next(), SEED_FRAME)
        self.assertEqual(decoder.buffered, 0)

    def test_port_bytes_are_not_a_frame_without_expect_port(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(b"\x1f\x41")
        self.assertIsNone(decoder.next())
        self.assertEqual(decoder.buffered, 2)

    def test_pending_operation(self) -> None:
        decoder = FrameDecoder()
        self.assertIs(decoder.pending_operation, Operation.UNKNOWN)
        decoder.feed(b"\x04")
        self.assertIs(decoder.pending_operation, Operation.UNKNOWN)
        decoder.feed(b"\x02")
        self.assertIs(decoder.pending_operation, Operation.JOIN)
        decoder.feed(b"\x00")
        self.assertIs(decoder.pending_operation, Operation.JOIN)

    def test_pending_operation_unknown_byte(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(b"\x04\xee")
        self.assertIs(decoder.pending_operation, Operation.UNKNOWN)

    def test_pending_operation_while_expecting_a_port(self) -> None:
        decoder = FrameDecoder()
        decoder.expect_port()
        decoder.feed(b"\x00\x01")
        self.assertIs(decoder.pending_operation, Operation.UNKNOWN)

    def test_encoding_hint(self) -> None:
        decoder = FrameDecoder()
        self.assertIsNone(decoder.encoding_hint)
        ascii_frame = encode_frame(Frame(Operation.JOIN, State.REQUEST, "r", b"ann", SizeEncoding.ASCII))
        decoder.feed(ascii_frame[:HEADER_SIZE])
        self.assertIsNone(decoder.next())
        self.assertIs(decoder.encoding_hint, SizeEncoding.ASCII)
        decoder.feed(ascii_frame[HEADER_SIZE:])
        self.assertIsNotNone(decoder.next())
        decoder.feed(encode_frame(Frame(Operation.JOIN, State.REQUEST, "r", b"ann")))
        self.assertIsNotNone(decoder.next())
        self.assertIs(decoder.encoding_hint, SizeEncoding.BINARY)

    def test_encoding_hint_before_a_refusal(self) -> None:
        """A too-large frame is still answered in the size encoding its header used."""
        decoder = FrameDecoder(max_payload=10)
        decoder.feed(header(1, 1, 0, encode_payload_size(11, SizeEncoding.ASCII)))
        self.assertRaises(FrameTooLargeError, decoder.next)
        self.assertIs(decoder.encoding_hint, SizeEncoding.ASCII)

    @settings(max_examples=300, deadline=None)
    @given(
        chunks=st.lists(
            st.one_of(
                st.binary(max_size=64),
                st.builds(encode_frame, FRAMES),
                st.builds(lambda tail: SEED_HEADER[:3] + tail, st.binary(min_size=29, max_size=40)),
            ),
            max_size=8,
        ),
        port_after=st.lists(st.booleans(), max_size=8),
    )
    def test_arbitrary_bytes_raise_only_protocol_errors(self, chunks: list[bytes], port_after: list[bool]) -> None:
        decoder = FrameDecoder()
        switches = iter(port_after)
        try:
            for chunk in chunks:
                decoder.feed(chunk)
                while (item := decoder.next()) is not None:
                    self.assertIsInstance(item, Frame | PortBytes)
                    if next(switches, False):
                        decoder.expect_port()
                self.assertIsInstance(decoder.pending_operation, Operation)
        except ProtocolError:
            pass
