"""
The UDP datagram codec: legacy chat datagrams, and what native frames carry.

Pure, like chatd.protocol.wire. A first byte of 0x00 is never a valid legacy
RoomNameSize (room names are not empty), so it marks a native frame; native
frames are sealed (chatd.protocol.seal), and this module holds what goes inside them:
the frame types and the RELAY body. Layouts are specified in
docs/protocol.md, "UDP datagrams".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from chatd.protocol.errors import FrameTooLargeError, MalformedFrameError
from chatd.protocol.payloads import decode_text
from chatd.protocol.seal import OVERHEAD, SEALED_MARKER, SealedHeader, peek_header

MAX_DATAGRAM = 4096

RELAY_PREFIX = struct.Struct("!QB")
"""server time in milliseconds, sender name length: the start of a native RELAY body."""
_pack_relay_prefix = RELAY_PREFIX.pack


class FrameType(IntEnum):
    """What a sealed native frame carries; encrypted, so only the two ends see it."""

    MESSAGE = 1
    """Client to server: chat text to relay."""
    KEEPALIVE = 2
    """Client to server: nothing to say, but still here (and registers the address)."""
    RELAY = 3
    """Server to client: a message from another member."""
    NOTICE = 4
    """Server to client: a system notice, as JSON."""
    KEEPALIVE_ACK = 5
    """Server to client: the answer to a keepalive, so the client knows UDP works (with "delivery": the latest seq)."""
    SEND = 6
    """Delivery, client to server: a message under the client's id, retransmitted until acknowledged."""
    SENT = 7
    """Delivery, server to client: a SEND's acknowledgement, with the room sequence number it got."""
    POSTED = 8
    """Delivery, server to client: a room message with its sequence number (relayed, repaired or history)."""
    REPAIR = 9
    """Delivery, client to server: a range of sequence numbers the client is missing."""
    GONE = 10
    """Delivery, server to client: a range older than the room's history, which cannot be repaired."""
    PROBE = 11
    """Delivery, client to server: is UDP through again? Answered by UDP; never moves the member's path."""


CLIENT_FRAME_TYPES = frozenset((FrameType.MESSAGE, FrameType.KEEPALIVE))
"""The frame types a plain native client may send; the others are the server's."""
DELIVERY_CLIENT_FRAME_TYPES = CLIENT_FRAME_TYPES | {FrameType.SEND, FrameType.REPAIR, FrameType.PROBE}
"""The frame types a client with the "delivery" feature may send."""


@dataclass(frozen=True, slots=True)
class LegacyDatagram:
    """C{[RoomNameSize][TokenSize][room][token][message]}, the shared legacy form."""

    room: str
    token: str
    message: bytes
    """The message as sent; checked to be UTF-8 so it can be relayed as is."""


@dataclass(frozen=True, slots=True)
class RelayedMessage:
    """The body of a native RELAY frame, decoded."""

    sender: str
    text: str
    timestamp_ms: int


def _check_size(data: bytes) -> None:
    if len(data) > MAX_DATAGRAM:
        raise FrameTooLargeError(f"datagram of {len(data)} bytes is over {MAX_DATAGRAM}")


def decode_datagram(data: bytes) -> LegacyDatagram | SealedHeader:
    """
    Decode any client datagram as far as can be done without keys: a legacy
    datagram whole, a native one to its clear header. Every failure is a
    ProtocolError.
    """
    _check_size(data)
    if not data:
        raise MalformedFrameError("empty datagram")
    if data[0] == SEALED_MARKER:
        return peek_header(data)
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


RELAY_OVERHEAD = OVERHEAD + RELAY_PREFIX.size
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


def pack_relay_body(name: bytes, message: bytes, timestamp_ms: int) -> bytes:
    """
    A native RELAY body from the sender's name already in UTF-8 (at most
    255 bytes): C{[timestamp_ms: 8][name size: 1][name][message]}. The relay's
    hot path: one copy per message, sealed for each native recipient.
    """
    return _pack_relay_prefix(timestamp_ms, len(name)) + name + message


def encode_relay_body(sender: str, message: bytes, timestamp_ms: int) -> bytes:
    """L{pack_relay_body} for a sender name as text."""
    return pack_relay_body(sender.encode("utf-8"), message, timestamp_ms)


def decode_relay_body(body: bytes) -> RelayedMessage:
    if len(body) < RELAY_PREFIX.size:
        raise MalformedFrameError("relay body shorter than its header")
    timestamp_ms, name_size = RELAY_PREFIX.unpack_from(body)
    text_start = RELAY_PREFIX.size + name_size
    if len(body) < text_start:
        raise MalformedFrameError("relay body shorter than its sender name")
    sender = decode_text(body[RELAY_PREFIX.size : text_start], "sender name")
    return RelayedMessage(sender, decode_text(body[text_start:], "message"), timestamp_ms)
