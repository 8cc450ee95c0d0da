"""
The UDP datagram codec: legacy chat datagrams and native frames.

Pure, like chatd.wire. A first byte of 0x00 is never a valid legacy
RoomNameSize (room names are not empty), so it marks a native frame. Layouts
are specified in docs/protocol.md, "UDP datagrams".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from chatd.errors import FrameTooLargeError, MalformedFrameError, UnsupportedVersionError
from chatd.payloads import NATIVE_VERSION, decode_text

MAX_DATAGRAM = 4096
NATIVE_MARKER = 0x00

_NATIVE_HEADER = struct.Struct("!BBBBQB")
"""marker, version, frame type, flags, sequence number, authentication length."""

_RELAY_PREFIX = struct.Struct("!QB")
"""server time in milliseconds, sender name length."""


class FrameType(IntEnum):
    MESSAGE = 1
    """Client to server: chat text to relay."""
    KEEPALIVE = 2
    """Client to server: nothing to say, but still here (and registers the address)."""
    RELAY = 3
    """Server to client: a message from another member."""
    NOTICE = 4
    """Server to client: a system notice, as JSON."""
    KEEPALIVE_ACK = 5
    """Server to client: the answer to a keepalive, so the client knows UDP works."""


@dataclass(frozen=True, slots=True)
class LegacyDatagram:
    """C{[RoomNameSize][TokenSize][room][token][message]}, the shared legacy form."""

    room: str
    token: str
    message: bytes
    """The message as sent; checked to be UTF-8 so it can be relayed as is."""


@dataclass(frozen=True, slots=True)
class NativeFrame:
    frame_type: FrameType
    sequence: int
    auth: bytes
    """Authentication data: in version 1 the member's token."""
    body: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class RelayedMessage:
    """The body of a native RELAY frame, decoded."""

    sender: str
    text: str
    timestamp_ms: int


def _check_size(data: bytes) -> None:
    if len(data) > MAX_DATAGRAM:
        raise FrameTooLargeError(f"datagram of {len(data)} bytes is over {MAX_DATAGRAM}")


def decode_datagram(data: bytes) -> LegacyDatagram | NativeFrame:
    """Decode any client datagram; every failure is a ProtocolError."""
    _check_size(data)
    if not data:
        raise MalformedFrameError("empty datagram")
    if data[0] == NATIVE_MARKER:
        return decode_native(data)
    return decode_legacy(data)


def decode_legacy(data: bytes) -> LegacyDatagram:
    _check_size(data)
    if len(data) < 2:
        raise MalformedFrameError("datagram shorter than its 2-byte header")
    room_size, token_size = data[0], data[1]
    if room_size == 0 or token_size == 0:
        raise MalformedFrameError("empty room name or token")
    token_start = 2 + room_size
    message_start = token_start + token_size
    if len(data) < message_start:
        raise MalformedFrameError("datagram shorter than its room name and token")
    room = decode_text(data[2:token_start], "room name")
    token = decode_text(data[token_start:message_start], "token")
    message = data[message_start:]
    decode_text(message, "message")
    return LegacyDatagram(room, token, message)


def encode_legacy(room: str, token: str, message: str) -> bytes:
    room_bytes = room.encode("utf-8")
    token_bytes = token.encode("utf-8")
    return bytes((len(room_bytes), len(token_bytes))) + room_bytes + token_bytes + message.encode("utf-8")


def decode_native(data: bytes) -> NativeFrame:
    _check_size(data)
    if len(data) < _NATIVE_HEADER.size:
        raise MalformedFrameError("native frame shorter than its header")
    marker, version, frame_type, flags, sequence, auth_size = _NATIVE_HEADER.unpack_from(data)
    if marker != NATIVE_MARKER:
        raise MalformedFrameError("not a native frame")
    if version != NATIVE_VERSION:
        raise UnsupportedVersionError(f"native frame version {version}")
    try:
        kind = FrameType(frame_type)
    except ValueError:
        raise MalformedFrameError(f"unknown native frame type {frame_type}") from None
    body_start = _NATIVE_HEADER.size + auth_size
    if len(data) < body_start:
        raise MalformedFrameError("native frame shorter than its authentication data")
    body = data[body_start:]
    if kind in (FrameType.MESSAGE, FrameType.NOTICE):
        decode_text(body, "message")
    return NativeFrame(kind, sequence, data[_NATIVE_HEADER.size : body_start], body, flags)


def encode_native(frame: NativeFrame) -> bytes:
    header = _NATIVE_HEADER.pack(
        NATIVE_MARKER, NATIVE_VERSION, frame.frame_type, frame.flags, frame.sequence, len(frame.auth)
    )
    return header + frame.auth + frame.body


def native_header(frame_type: FrameType, sequence: int, auth: bytes = b"", flags: int = 0) -> bytes:
    """The fixed part of a native frame, for senders that add the body themselves."""
    return _NATIVE_HEADER.pack(NATIVE_MARKER, NATIVE_VERSION, frame_type, flags, sequence, len(auth)) + auth


RELAY_OVERHEAD = _NATIVE_HEADER.size + _RELAY_PREFIX.size
"""Bytes a relayed copy adds to sender name and message, at most (native; legacy adds 2)."""


def check_relay_size(sender: str, message: bytes) -> None:
    """
    Refuse a message whose relayed copies would not fit in a datagram of
    MAX_DATAGRAM bytes, so that a client reading 4096 bytes at a time never
    gets a copy cut short.
    """
    size = len(sender.encode("utf-8")) + len(message) + RELAY_OVERHEAD
    if size > MAX_DATAGRAM:
        raise FrameTooLargeError(f"relayed copy of {size} bytes is over {MAX_DATAGRAM}")


def relay_text(sender: str, message: bytes) -> bytes:
    """What a legacy recipient gets: C{"<sender>: <message>"} as UTF-8."""
    return sender.encode("utf-8") + b": " + message


def encode_relay_body(sender: str, message: bytes, timestamp_ms: int) -> bytes:
    name = sender.encode("utf-8")
    return _RELAY_PREFIX.pack(timestamp_ms, len(name)) + name + message


def decode_relay_body(body: bytes) -> RelayedMessage:
    if len(body) < _RELAY_PREFIX.size:
        raise MalformedFrameError("relay body shorter than its header")
    timestamp_ms, name_size = _RELAY_PREFIX.unpack_from(body)
    text_start = _RELAY_PREFIX.size + name_size
    if len(body) < text_start:
        raise MalformedFrameError("relay body shorter than its sender name")
    sender = decode_text(body[_RELAY_PREFIX.size : text_start], "sender name")
    return RelayedMessage(sender, decode_text(body[text_start:], "message"), timestamp_ms)
