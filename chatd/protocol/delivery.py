"""
Reliable delivery's frames (the native "delivery" feature): what acknowledged
sends, room sequence numbers, repair and the TCP fallback put inside a sealed
frame.

Pure, like chatd.protocol.datagrams: bytes in, typed values out, and back.
The design is in docs/reliability.md; the byte layouts in docs/protocol.md,
section 7.6.

A member that asked for the feature at create or join keeps every frame of
the plain native protocol and adds these bodies:

- SEND (client to server): C{[id: u64][text]}, a message the client
  retransmits, under the same id, until it is acknowledged;
- SENT (server to client): C{[id: u64][seq: u64][time_ms: u64]}, the
  acknowledgement: the room sequence number the message got, and when;
- POSTED (server to client): C{[seq: u64][time_ms: u64][name size: u8][name][text]},
  a room message with its sequence number (relayed, repaired, or history);
- REPAIR (client to server): C{[first: u64][last: u64]}, the sequence
  numbers a client is missing;
- GONE (server to client): C{[first: u64][last: u64]}, sequence numbers
  older than the room's history: they cannot be repaired;
- PROBE (client to server): empty; answered by UDP like a keepalive, but it
  never moves the member's path (the client asks whether UDP works again);
- KEEPALIVE_ACK, with the feature, carries C{[latest seq: u64]}, so that a lost
  last message is noticed within one keepalive.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from chatd.protocol.errors import MalformedFrameError
from chatd.protocol.payloads import decode_text
from chatd.protocol.seal import OVERHEAD

MAX_NATIVE_DATAGRAM = 1200
"""
The most UDP payload a datagram may have, with the feature,, either way: what QUIC and
WebRTC keep to, so that no datagram is fragmented at the IP layer on common
paths (a lost fragment loses the datagram). Anything larger goes over the
member's TCP connection (operation 8) instead.
"""

SEQ_MAX = (1 << 64) - 1
"""Sequence numbers and message ids are u64; 0 is never used for either."""

REPAIR_BATCH = 64
"""The most messages the server sends for one REPAIR request; the client asks again for the rest."""

_U64 = struct.Struct("!Q")
_SEND_HEAD = _U64
_SENT = struct.Struct("!QQQ")
_POSTED_HEAD = struct.Struct("!QQB")
_RANGE = struct.Struct("!QQ")

POSTED_OVERHEAD = OVERHEAD + _POSTED_HEAD.size
"""Bytes a sealed POSTED adds to sender name and text: 32 + 17."""
SEND_OVERHEAD = OVERHEAD + _SEND_HEAD.size
"""Bytes a sealed SEND adds to its text: 32 + 8."""


@dataclass(frozen=True, slots=True)
class Send:
    """A SEND body: a message under the client's id for it."""

    message_id: int
    text: str


@dataclass(frozen=True, slots=True)
class Sent:
    """A SENT body: the server's acknowledgement of a SEND."""

    message_id: int
    seq: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class Posted:
    """A POSTED body: one room message in room order."""

    seq: int
    time_ms: int
    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class SeqRange:
    """C{first} to C{last}, both included: the body of REPAIR and GONE."""

    first: int
    last: int

    def __len__(self) -> int:
        return self.last - self.first + 1


def _positive(value: int, what: str) -> int:
    if not 0 < value <= SEQ_MAX:
        raise MalformedFrameError(f"{what} {value} is not between 1 and 2^64 - 1")
    return value


def encode_send(message_id: int, text: str) -> bytes:
    return _SEND_HEAD.pack(_positive(message_id, "message id")) + text.encode("utf-8")


def decode_send(body: bytes) -> Send:
    if len(body) < _SEND_HEAD.size:
        raise MalformedFrameError("SEND body shorter than its message id")
    (message_id,) = _SEND_HEAD.unpack_from(body)
    return Send(_positive(message_id, "message id"), decode_text(body[_SEND_HEAD.size :], "message"))


def send_text(body: bytes) -> bytes:
    """The text of a SEND body as bytes, unchecked (the relay checks UTF-8 once, as for MESSAGE)."""
    return body[_SEND_HEAD.size :]


def encode_sent(message_id: int, seq: int, time_ms: int) -> bytes:
    return _SENT.pack(_positive(message_id, "message id"), _positive(seq, "sequence number"), time_ms)


def decode_sent(body: bytes) -> Sent:
    if len(body) != _SENT.size:
        raise MalformedFrameError(f"SENT body of {len(body)} bytes, not {_SENT.size}")
    message_id, seq, time_ms = _SENT.unpack(body)
    return Sent(_positive(message_id, "message id"), _positive(seq, "sequence number"), time_ms)


def pack_posted(seq: int, time_ms: int, name: bytes, text: bytes) -> bytes:
    """A POSTED body from the sender's name and text already in UTF-8 (name at most 255 bytes)."""
    return _POSTED_HEAD.pack(seq, time_ms, len(name)) + name + text


def encode_posted(seq: int, time_ms: int, sender: str, text: str) -> bytes:
    return pack_posted(_positive(seq, "sequence number"), time_ms, sender.encode("utf-8"), text.encode("utf-8"))


def decode_posted(body: bytes) -> Posted:
    if len(body) < _POSTED_HEAD.size:
        raise MalformedFrameError("POSTED body shorter than its header")
    seq, time_ms, name_size = _POSTED_HEAD.unpack_from(body)
    text_start = _POSTED_HEAD.size + name_size
    if len(body) < text_start:
        raise MalformedFrameError("POSTED body shorter than its sender name")
    sender = decode_text(body[_POSTED_HEAD.size : text_start], "sender name")
    return Posted(_positive(seq, "sequence number"), time_ms, sender, decode_text(body[text_start:], "message"))


def encode_range(first: int, last: int) -> bytes:
    """A REPAIR or GONE body."""
    _positive(first, "first sequence number")
    if last < first or last > SEQ_MAX:
        raise MalformedFrameError(f"range {first} to {last} is empty or out of bounds")
    return _RANGE.pack(first, last)


def decode_range(body: bytes) -> SeqRange:
    if len(body) != _RANGE.size:
        raise MalformedFrameError(f"range body of {len(body)} bytes, not {_RANGE.size}")
    first, last = _RANGE.unpack(body)
    _positive(first, "first sequence number")
    if last < first:
        raise MalformedFrameError(f"range {first} to {last} is empty")
    return SeqRange(first, last)


def encode_latest(seq: int) -> bytes:
    """A KEEPALIVE_ACK body with the feature: the room's latest sequence number (0 when none yet)."""
    return _U64.pack(seq)


def decode_latest(body: bytes) -> int:
    """
    The latest sequence number of a KEEPALIVE_ACK body; 0 for the empty body
    without the feature, so that a client can read both.
    """
    if not body:
        return 0
    if len(body) != _U64.size:
        raise MalformedFrameError(f"KEEPALIVE_ACK body of {len(body)} bytes, not 0 or {_U64.size}")
    (seq,) = _U64.unpack(body)
    return int(seq)


def fits_datagram(body_size: int) -> bool:
    """Whether a sealed frame with a body of C{body_size} bytes may go by UDP (with the feature)."""
    return body_size + OVERHEAD <= MAX_NATIVE_DATAGRAM
