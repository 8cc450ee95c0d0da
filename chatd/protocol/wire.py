"""
The TCRP frame codec: the 32-byte header framing of the TCP room protocol.

Pure: bytes in, typed values out, and back. No sockets, clock or logging, so
every path can be tested exhaustively (tests/protocol/test_wire.py). The byte layout is
specified in docs/protocol.md, "TCP frames".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from chatd.protocol.errors import (
    FrameTooLargeError,
    InvalidUTF8Error,
    MalformedFrameError,
    UnknownOperationError,
)

HEADER_SIZE = 32
SIZE_FIELD_SIZE = HEADER_SIZE - 3
PORT_SIZE = 2
DEFAULT_MAX_PAYLOAD = 4096

_DIGITS = frozenset(b"0123456789")


class Operation(IntEnum):
    UNKNOWN = 0
    """Only in an acknowledge: the request's operation could not be read."""
    CREATE = 1
    JOIN = 2
    REGISTER_UDP = 3
    INVITE = 4
    NOTICE = 5
    REKEY = 6
    """Native only: replace the member's UDP key (before its counter runs out)."""
    MEMBERS = 7
    """Native only: ask for the room's member list (notices carry only the changes)."""
    DATAGRAM = 8
    """
    Native members with the "delivery" feature only: a sealed frame carried over the control connection
    instead of UDP, either way (the TCP fallback, and frames over 1200 bytes).
    Never acknowledged: it stands for a datagram.
    """


class State(IntEnum):
    REQUEST = 0
    ACKNOWLEDGE = 1
    COMPLETE = 2


class SizeEncoding(Enum):
    """How the 29-byte OperationPayloadSize field is written."""

    BINARY = "binary"
    """Big-endian unsigned integer (model and native dialects)."""

    ASCII = "ascii"
    """Decimal digits, left-justified, padded with NUL bytes (seed dialect)."""


@dataclass(frozen=True, slots=True)
class Frame:
    operation: Operation
    state: State
    room: str
    payload: bytes
    encoding: SizeEncoding = SizeEncoding.BINARY


@dataclass(frozen=True, slots=True)
class PortBytes:
    """The model dialect's UDP port: 2 raw big-endian bytes after a complete frame."""

    port: int


def decode_payload_size(field: bytes) -> tuple[int, SizeEncoding]:
    """
    Read the 29-byte size field in whichever encoding it uses.

    A big-endian size that fits any sane limit starts with a zero byte; an ASCII
    size starts with a digit. The two never collide (docs/protocol.md).
    """
    if len(field) != SIZE_FIELD_SIZE:
        raise MalformedFrameError(f"size field of {len(field)} bytes")
    if field[0] in _DIGITS:
        digits = field.rstrip(b"\x00")
        if not all(byte in _DIGITS for byte in digits):
            raise MalformedFrameError("ASCII size field has non-digits before its NUL padding")
        return int(digits), SizeEncoding.ASCII
    return int.from_bytes(field, "big"), SizeEncoding.BINARY


def frame_length(header: bytes) -> tuple[int, int, SizeEncoding]:
    """
    The framing rule: from a frame's 32-byte C{header} (more bytes are
    ignored), its payload size, its whole length (header, room name and
    payload: C{HEADER_SIZE + RoomNameSize + OperationPayloadSize}) and the
    size encoding. Raises L{MalformedFrameError} for an unreadable size
    field or a header shorter than 32 bytes.
    """
    if len(header) < HEADER_SIZE:
        raise MalformedFrameError(f"header of {len(header)} bytes")
    size, encoding = decode_payload_size(header[3:HEADER_SIZE])
    return size, HEADER_SIZE + header[0] + size, encoding


def encode_payload_size(size: int, encoding: SizeEncoding) -> bytes:
    if encoding is SizeEncoding.ASCII:
        return str(size).encode("ascii").ljust(SIZE_FIELD_SIZE, b"\x00")
    return size.to_bytes(SIZE_FIELD_SIZE, "big")


def encode_frame(frame: Frame) -> bytes:
    room = frame.room.encode("utf-8")
    if len(room) > 255:
        raise ValueError(f"room name of {len(room)} bytes does not fit its 1-byte size")
    header = bytes((len(room), frame.operation, frame.state))
    return header + encode_payload_size(len(frame.payload), frame.encoding) + room + frame.payload


def _frame_from(header: bytes, body: bytes, encoding: SizeEncoding) -> Frame:
    try:
        operation = Operation(header[1])
        state = State(header[2])
    except ValueError:
        raise UnknownOperationError(f"operation {header[1]} with state {header[2]} is not defined") from None
    try:
        room = body[: header[0]].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidUTF8Error("room name is not valid UTF-8") from None
    return Frame(operation, state, room, body[header[0] :], encoding)


def decode_frame(data: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """Decode exactly one whole frame; trailing or missing bytes are an error."""
    decoder = FrameDecoder(max_payload)
    decoder.feed(data)
    item = decoder.next()
    if not isinstance(item, Frame) or decoder.buffered:
        raise MalformedFrameError("not exactly one frame")
    return item


class FrameDecoder:
    """
    Incremental decoder for a TCP byte stream of frames.

    Follows IntNStringReceiver's discipline: one buffer; the announced size is
    checked against the limit from the header alone, before any body is
    buffered; nothing is parsed past an error. L{next} returns items one at a
    time so that the caller can change what is expected next (L{expect_port})
    between two items, even for bytes that arrived in the same chunk.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._expect_port = False
        self.encoding_hint: SizeEncoding | None = None
        """The size encoding of the last header seen, to answer in kind on errors."""

    @property
    def buffered(self) -> int:
        """How many received bytes wait for the rest of their item."""
        return len(self._buffer)

    @property
    def pending_operation(self) -> Operation:
        """The operation of the frame being read, to answer in kind on errors."""
        if len(self._buffer) < 2 or self._expect_port:
            return Operation.UNKNOWN
        try:
            return Operation(self._buffer[1])
        except ValueError:
            return Operation.UNKNOWN

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def expect_port(self) -> None:
        """The next item is the model dialect's 2-byte UDP port, not a frame."""
        self._expect_port = True

    def next(self) -> Frame | PortBytes | None:
        """The next whole item, or None until more bytes arrive."""
        if self._expect_port:
            if len(self._buffer) < PORT_SIZE:
                return None
            port = int.from_bytes(self._buffer[:PORT_SIZE], "big")
            del self._buffer[:PORT_SIZE]
            self._expect_port = False
            return PortBytes(port)
        if len(self._buffer) < HEADER_SIZE:
            return None
        header = bytes(self._buffer[:HEADER_SIZE])
        size, end, encoding = frame_length(header)
        self.encoding_hint = encoding
        if size > self.max_payload:
            raise FrameTooLargeError(f"payload of {size} bytes is over the limit of {self.max_payload}")
        if len(self._buffer) < end:
            return None
        # Parse before consuming: a refused frame stays buffered, so
        # pending_operation names its operation, not the next frame's.
        frame = _frame_from(header, bytes(self._buffer[HEADER_SIZE:end]), encoding)
        del self._buffer[:end]
        return frame
