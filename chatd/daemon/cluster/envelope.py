"""
What chatd nodes publish to each other through Redis, and the codec for it:
bytes in, typed values out, and back. Pure: no Redis, no Twisted, no clock.

Four kinds of envelope travel on a room's channel (L{room_channel}):

- L{Posted}: a message the room log numbered (C{chatd.daemon.cluster.log}).
  It is built by the log's Lua script, not here: the node encodes it with
  sequence number 0 (L{posted_template}) and the script writes the number
  it takes into the 8 bytes at L{SEQ_OFFSET}, so the numbering, the stored
  copy and the published copy are one atomic step. The same bytes are what
  the log keeps, so a node that reads the log back (a repair, a resync
  after Redis was away) gets exactly what the bus carried.
- a POSTED_BATCH: several POSTED of one room, numbered in one call of the
  log's script (L{chatd.daemon.cluster.batch}: a node's messages of one
  reactor turn), published as one message so that every node reads one
  pub/sub message for them, not one each. It is never stored (the log keeps
  each POSTED on its own) and never handed to a room's handler: the bus
  splits it (L{decode_all}) into its POSTED, in order.
- L{Notice}: a member joined, left or timed out, moved to another node
  (resumed there), or the host changed; with
  the member list when it changed, so that every node can show it without
  asking the directory.
- L{RoomClosed}: the room's incarnation (epoch) ended: each node tells its
  members, drops its state for the room and unsubscribes.

Every envelope names its C{origin} node, so a node skips what it has
already done itself: the copies of its own members' messages went out on
the fast path before the message reached Redis.

The format, version 1 (L{VERSION}), big-endian throughout::

    u8 version, u8 kind, then per kind:
    POSTED       u64 seq, 8 bytes epoch, u64 time_ms, u64 message_id,
                 str16 room, str16 origin, str16 client, bytes16 name, bytes32 text
    NOTICE       8 bytes epoch, u8 notice kind, u8 has member list,
                 str16 room, str16 origin, str16 member, str16 reason, str16 host,
                 [u16 count, str16 name * count]   (when it has the list)
    ROOM_CLOSED  8 bytes epoch, str16 room, str16 origin, str16 member, str16 reason
    POSTED_BATCH u16 count, then count * (u32 length, a POSTED envelope of that length),
                 all of one room and incarnation, in the order of their numbers

C{str16} is a u16 length and UTF-8, C{bytes16}/C{bytes32} a u16/u32 length and
raw bytes (a message's name and text are kept as the relay holds them). The
epoch (16 lowercase hexadecimal characters, chatd.daemon.history) travels as
its 8 bytes. An empty C{host} stands for None. The version byte comes first
so that a node of a later version can refuse, with one clear error, what it
cannot read (a rolling upgrade publishes the old version until every node
reads the new one).

POSTED_BATCH is kind 4 of version 1, added after the others: a node of an
earlier version drops it (an unknown kind, counted) and finds the messages
it carried in the log when the next single POSTED shows it the gap (the
bus's catch-up), late but in order. Upgrade every node before relying on
cross-node latency.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from chatd.daemon.history import EPOCH_HEX, HistoryEntry
from chatd.protocol.errors import ChatError

VERSION = 1
"""The first byte of every envelope this codec writes, and the only one it reads."""

SEQ_OFFSET = 2
"""Where a POSTED envelope's u64 sequence number starts: the room log's script writes it there."""
SEQ_SIZE = 8

_U64_MAX = 2**64 - 1
_EPOCH = re.compile(rf"[0-9a-f]{{{EPOCH_HEX}}}")
_POSTED_FIXED = struct.Struct(">BBQ8sQQ")
_NOTICE_FIXED = struct.Struct(">BB8sBB")
_CLOSED_FIXED = struct.Struct(">BB8s")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_BATCH_HEADER = struct.Struct(">BBH")
_FRAMED_POSTED_FIXED = struct.Struct(">IBBQ8sQQ")
_POSTED_HEAD = struct.Struct(">BBQ8sQQH")
"""A POSTED's fixed fields and its room's length."""


class EnvelopeError(ChatError):
    """Bytes that are not an envelope this node can read: a node of another version, or damage."""


class Kind(Enum):
    """The second byte of an envelope."""

    POSTED = 1
    NOTICE = 2
    ROOM_CLOSED = 3
    POSTED_BATCH = 4


_POSTED_KIND = Kind.POSTED.value
_BATCH_KIND = Kind.POSTED_BATCH.value


class NoticeKind(Enum):
    """What a L{Notice} says happened (closing a room is a L{RoomClosed})."""

    JOINED = 1
    LEFT = 2
    TIMED_OUT = 3
    HOST_CHANGED = 4
    MOVED = 5
    """
    The member resumed on the notice's origin node (its membership moved
    there): the node it was on drops its copy quietly, without a leave
    notice; for every other node it is still in the room, elsewhere. A node
    of an earlier version refuses this kind (an EnvelopeError, counted and
    dropped): its members keep showing the member, which is still there.
    """


@dataclass(slots=True)
class Posted:
    """
    A message numbered by the room log: what every node relays to its
    members, and what the log keeps. Not frozen, unlike the other envelopes:
    the bus makes one for every message of every room, and a frozen
    dataclass takes five times as long to make (0.9 against 0.17 µs);
    nothing changes one once made.
    """

    room: str
    epoch: str
    """The room's incarnation the message belongs to (16 lowercase hexadecimal characters)."""
    seq: int
    """The room's sequence number (from 1); 0 only in a L{posted_template}, before the log numbers it."""
    time_ms: int
    """The origin node's time for the message, in milliseconds since the Unix epoch (the SENT's time)."""
    name: bytes
    """The sender's name, UTF-8, as the relay holds it."""
    text: bytes
    """The text, UTF-8, as the relay holds it."""
    origin: str
    """The node that relayed it to its own members already (and that acknowledges it to the sender)."""
    client: str = ""
    """The sender's client id (reliable delivery's duplicate window), "" when it gave none."""
    message_id: int = 0
    """The sender's id for the message (SEND), 0 for a message without one (MESSAGE, legacy)."""

    def entry(self) -> HistoryEntry:
        """The message as the history holds it, and as a POSTED frame carries it."""
        return HistoryEntry(self.seq, self.time_ms, self.name, self.text)


@dataclass(frozen=True, slots=True)
class Notice:
    """A member came, went, or became host; C{members} is the room's member list when it changed, else None."""

    room: str
    epoch: str
    kind: NoticeKind
    member: str
    """The member the notice is about."""
    origin: str
    """The node the member is (or was) on."""
    reason: str = ""
    """Why, in the daemon's words (a LeaveReason's value, say); "" when there is nothing to add."""
    members: tuple[str, ...] | None = None
    """Everyone in the room, in the order they entered, when the list changed; None when it is not sent."""
    host: str | None = None
    """The room's host, when known (with C{members}, or for HOST_CHANGED)."""


@dataclass(frozen=True, slots=True)
class RoomClosed:
    """The room's incarnation C{epoch} ended: nodes tell their members and forget the room."""

    room: str
    epoch: str
    origin: str
    reason: str = ""
    """Why, in the daemon's words (a CloseReason's value)."""
    member: str = ""
    """The member whose departure closed it (the host), "" when none did (a server stopping, a repair)."""


Envelope = Posted | Notice | RoomClosed


def room_channel(prefix: str, room: str) -> bytes:
    """
    The pub/sub channel of a room's envelopes. Redis's pub/sub ignores the
    database number, so the prefix is what keeps two deployments on one
    Redis apart.
    """
    return f"{prefix}:room:{room}".encode()


# -- encoding -----------------------------------------------------------------


def encode(envelope: Envelope) -> bytes:
    """The envelope's bytes (version L{VERSION}). ValueError for a value the format cannot carry."""
    if isinstance(envelope, Posted):
        return _encode_posted(envelope, envelope.seq)
    if isinstance(envelope, Notice):
        return _encode_notice(envelope)
    return _encode_closed(envelope)


def posted_template(posted: Posted) -> bytes:
    """
    C{posted} encoded with sequence number 0, whatever its C{seq}: what the
    room log's script numbers (L{with_seq} is the same splice in Python).
    """
    return _encode_posted(posted, 0)


def with_seq(template: bytes, seq: int) -> bytes:
    """A POSTED envelope's bytes with C{seq} written at L{SEQ_OFFSET}: what the log's script does."""
    if not 1 <= seq <= _U64_MAX:
        raise ValueError(f"sequence number {seq} is out of range")
    return template[:SEQ_OFFSET] + seq.to_bytes(SEQ_SIZE, "big") + template[SEQ_OFFSET + SEQ_SIZE :]


def framed(envelopes: Sequence[bytes]) -> bytes:
    """Envelopes one after the other, each behind its u32 length: a batch's body, and what the log's script reads."""
    return b"".join(_U32.pack(len(envelope)) + envelope for envelope in envelopes)


def encode_batch(envelopes: Sequence[bytes]) -> bytes:
    """
    A POSTED_BATCH of C{envelopes} (numbered POSTED of one room, in order):
    what the room log's script publishes for a batch of more than one
    message (L{chatd.daemon.cluster.log.RoomLog.post_batch}), made here for
    tests and tools.
    """
    if not 0 < len(envelopes) <= 0xFFFF:
        raise ValueError(f"a batch holds 1 to 65535 envelopes, not {len(envelopes)}")
    return _BATCH_HEADER.pack(VERSION, Kind.POSTED_BATCH.value, len(envelopes)) + framed(envelopes)


class TemplateFramer:
    """
    The framed templates (L{framed} of L{posted_template}s) of one room's
    messages from one node, made with the room, epoch and origin encoded
    once: what a batch costs per message in Python is one struct and one join.
    """

    __slots__ = ("_epoch", "_middle")

    def __init__(self, room: str, epoch: str, origin: str) -> None:
        self._epoch = _epoch_bytes(epoch)
        self._middle = _str16(room) + _str16(origin)

    def frame(self, time_ms: int, name: bytes, text: bytes, client: str, message_id: int) -> bytes:
        """
        The message's template (sequence number 0) behind its u32 length.
        struct.error for a time or id outside a u64, or a name or text too long.
        """
        client_bytes = client.encode()
        size = _POSTED_FIXED.size + len(self._middle) + 8 + len(client_bytes) + len(name) + len(text)
        return b"".join(
            (
                _FRAMED_POSTED_FIXED.pack(size, VERSION, _POSTED_KIND, 0, self._epoch, time_ms, message_id),
                self._middle,
                _U16.pack(len(client_bytes)),
                client_bytes,
                _U16.pack(len(name)),
                name,
                _U32.pack(len(text)),
                text,
            )
        )


def _encode_posted(posted: Posted, seq: int) -> bytes:
    for what, number in (("seq", seq), ("time_ms", posted.time_ms), ("message_id", posted.message_id)):
        if not 0 <= number <= _U64_MAX:
            raise ValueError(f"{what} {number} does not fit in a u64")
    return b"".join(
        (
            _POSTED_FIXED.pack(
                VERSION, Kind.POSTED.value, seq, _epoch_bytes(posted.epoch), posted.time_ms, posted.message_id
            ),
            _str16(posted.room),
            _str16(posted.origin),
            _str16(posted.client),
            _bytes16(posted.name),
            _bytes32(posted.text),
        )
    )


def _encode_notice(notice: Notice) -> bytes:
    parts = [
        _NOTICE_FIXED.pack(
            VERSION, Kind.NOTICE.value, _epoch_bytes(notice.epoch), notice.kind.value, notice.members is not None
        ),
        _str16(notice.room),
        _str16(notice.origin),
        _str16(notice.member),
        _str16(notice.reason),
        _str16(notice.host or ""),
    ]
    if notice.members is not None:
        if len(notice.members) > 0xFFFF:
            raise ValueError(f"a member list of {len(notice.members)} names is too long for an envelope")
        parts.append(_U16.pack(len(notice.members)))
        parts.extend(_str16(name) for name in notice.members)
    return b"".join(parts)


def _encode_closed(closed: RoomClosed) -> bytes:
    return b"".join(
        (
            _CLOSED_FIXED.pack(VERSION, Kind.ROOM_CLOSED.value, _epoch_bytes(closed.epoch)),
            _str16(closed.room),
            _str16(closed.origin),
            _str16(closed.member),
            _str16(closed.reason),
        )
    )


def _epoch_bytes(epoch: str) -> bytes:
    if not _EPOCH.fullmatch(epoch):
        raise ValueError(f"epoch {epoch!r} is not {EPOCH_HEX} lowercase hexadecimal characters")
    return bytes.fromhex(epoch)


def _str16(text: str) -> bytes:
    return _bytes16(text.encode())


def _bytes16(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"{len(data)} bytes do not fit a u16 length")
    return _U16.pack(len(data)) + data


def _bytes32(data: bytes) -> bytes:
    if len(data) > 0xFFFFFFFF:
        raise ValueError(f"{len(data)} bytes do not fit a u32 length")
    return _U32.pack(len(data)) + data


# -- a node's own messages, coming back ------------------------------------------


def origin_field(node: str) -> bytes:
    """Node C{node}'s name as a POSTED carries it (a str16): what L{own_posted} looks for."""
    return _str16(node)


def own_posted(data: bytes, origin: bytes) -> tuple[str, int, int] | None:
    """
    The epoch, first sequence number and count of a POSTED or POSTED_BATCH
    whose (first) POSTED names C{origin} (an L{origin_field}), read from its
    head alone; None for anything else. The bus's test for a node's own
    messages coming back to it, before any decoding: what it finds is only a
    candidate, which the node checks whole (L{is_echo}).
    """
    if len(data) < 2 or data[0] != VERSION:
        return None
    if data[1] == _POSTED_KIND:
        start, count = 0, 1
    elif data[1] == _BATCH_KIND:
        if len(data) < _BATCH_HEADER.size + _U32.size:
            return None
        start, count = _BATCH_HEADER.size + _U32.size, _BATCH_HEADER.unpack_from(data)[2]
    else:
        return None
    at = start + _POSTED_FIXED.size
    if len(data) < at + _U16.size:
        return None
    at += _U16.size + _U16.unpack_from(data, at)[0]
    if not data.startswith(origin, at):
        return None
    _, _, seq, epoch, _, _ = _POSTED_FIXED.unpack_from(data, start)
    return epoch.hex(), seq, count


_SEQ_END = SEQ_OFFSET + SEQ_SIZE
_NO_SEQ = bytes(SEQ_SIZE)


def is_echo(data: bytes, framed: bytes, count: int) -> bool:
    """
    Whether C{data}, a message on a room's channel, is the POSTED (C{count}
    1) or POSTED_BATCH of exactly the C{count} templates in C{framed} (a
    batch's body: L{framed} of L{posted_template}s, as the log's script
    read them), byte for byte but for the sequence numbers the script wrote:
    a node's own messages come back, and it needs no decoding to know them.
    """
    if count == 1:
        return (
            len(data) == len(framed) - _U32.size
            and data[:SEQ_OFFSET] == framed[_U32.size : _U32.size + SEQ_OFFSET]
            and data[_SEQ_END:] == framed[_U32.size + _SEQ_END :]
        )
    if len(data) != _BATCH_HEADER.size + len(framed) or data[: _BATCH_HEADER.size] != _BATCH_HEADER.pack(
        VERSION, _BATCH_KIND, count
    ):
        return False
    # The batch's body with each sequence number put back to 0: the templates, if it is theirs.
    body = bytearray(data)
    del body[: _BATCH_HEADER.size]
    at = 0
    for _ in range(count):
        if at + _U32.size > len(body):
            return False
        start = at + _U32.size
        body[start + SEQ_OFFSET : start + _SEQ_END] = _NO_SEQ
        at = start + _U32.unpack_from(body, at)[0]
    return body == framed


# -- decoding -----------------------------------------------------------------


def decode(data: bytes) -> Envelope:
    """The envelope in C{data}, all of it; L{EnvelopeError} saying what is wrong otherwise."""
    if len(data) < 2:
        raise EnvelopeError(f"envelope of {len(data)} bytes is too short for its version and kind")
    if data[0] != VERSION:
        raise EnvelopeError(f"envelope version {data[0]} is not {VERSION}, the one this node reads")
    if data[1] == _POSTED_KIND:
        try:
            return _read_posted(data, 0, len(data), {})
        except struct.error:
            raise EnvelopeError(f"POSTED envelope of {len(data)} bytes is truncated") from None
    try:
        kind = Kind(data[1])
    except ValueError:
        raise EnvelopeError(f"envelope kind {data[1]} is unknown") from None
    if kind is Kind.POSTED_BATCH:
        raise EnvelopeError("a POSTED_BATCH holds several envelopes: read it with decode_all")
    reader = _Reader(data)
    try:
        if kind is Kind.NOTICE:
            envelope: Envelope = _decode_notice(reader)
        else:
            envelope = _decode_closed(reader)
    except struct.error:
        raise EnvelopeError(f"{kind.name} envelope of {len(data)} bytes is truncated") from None
    except UnicodeDecodeError as error:
        raise EnvelopeError(f"{kind.name} envelope has text that is not UTF-8: {error.reason}") from None
    if reader.offset != len(data):
        raise EnvelopeError(f"{kind.name} envelope has {len(data) - reader.offset} bytes after its end")
    return envelope


def decode_all(data: bytes) -> list[Envelope]:
    """
    The envelopes in C{data}: those of a POSTED_BATCH, in order, or the one
    envelope it is (L{decode}). L{EnvelopeError} when any is not readable:
    a batch is taken whole or not at all.
    """
    if len(data) < 2 or data[1] != Kind.POSTED_BATCH.value or data[0] != VERSION:
        return [decode(data)]
    if len(data) < _BATCH_HEADER.size:
        raise EnvelopeError(f"POSTED_BATCH envelope of {len(data)} bytes is truncated")
    _, _, count = _BATCH_HEADER.unpack_from(data)
    at = _BATCH_HEADER.size
    envelopes: list[Envelope] = []
    names: dict[bytes, str] = {}
    try:
        for _ in range(count):
            (length,) = _U32.unpack_from(data, at)
            start = at + _U32.size
            at = start + length
            if at > len(data):
                raise struct.error("past the end")
            envelopes.append(_posted_in(data, start, at, names))
    except struct.error:
        raise EnvelopeError(f"POSTED_BATCH envelope of {len(data)} bytes is truncated") from None
    if at != len(data):
        raise EnvelopeError(f"POSTED_BATCH envelope has {len(data) - at} bytes after its end")
    if not envelopes:
        raise EnvelopeError("POSTED_BATCH envelope holds no envelope")
    first = envelopes[0]
    for envelope in envelopes:
        if not isinstance(envelope, Posted) or envelope.room != first.room or envelope.epoch != first.epoch:
            raise EnvelopeError("POSTED_BATCH envelope holds what is not a POSTED of its first one's room")
    return envelopes


def _posted_in(data: bytes, start: int, end: int, names: dict[bytes, str]) -> Envelope:
    """
    The envelope in C{data[start:end]}, one of a batch: a POSTED is read in
    place (L{_read_posted}); anything else is L{decode}'s to read or refuse.
    """
    if end - start < 2 or data[start] != VERSION or data[start + 1] != _POSTED_KIND:
        return decode(data[start:end])
    return _read_posted(data, start, end, names)


def _read_posted(data: bytes, start: int, end: int, names: dict[bytes, str]) -> Posted:
    """
    The POSTED envelope in C{data[start:end]} (its version and kind checked),
    read field by field in place. The bus reads every message of every room
    this way, so this is on the cross-node path: no copy of the envelope, no
    reader object, and the room's, origin's and client's names, the same in
    every message of a batch, decoded once into C{names}. struct.error when
    the fields pass C{end}; L{EnvelopeError} for bytes after them, or names
    that are not UTF-8.
    """
    _, _, seq, epoch, time_ms, message_id, length = _POSTED_HEAD.unpack_from(data, start)
    at = start + _POSTED_HEAD.size
    room = data[at : at + length]
    at += length
    (length,) = _U16.unpack_from(data, at)
    at += 2
    origin = data[at : at + length]
    at += length
    (length,) = _U16.unpack_from(data, at)
    at += 2
    client = data[at : at + length]
    at += length
    (length,) = _U16.unpack_from(data, at)
    at += 2
    name = data[at : at + length]
    at += length
    (length,) = _U32.unpack_from(data, at)
    at += 4
    text = data[at : at + length]
    at += length
    if at > end:
        raise struct.error("past the end")
    if at != end:
        raise EnvelopeError(f"POSTED envelope has {end - at} bytes after its end")
    room_name = names.get(room)
    origin_name = names.get(origin)
    client_id = names.get(client)
    if room_name is None or origin_name is None or client_id is None:
        try:
            room_name = names[room] = room.decode()
            origin_name = names[origin] = origin.decode()
            client_id = names[client] = client.decode()
        except UnicodeDecodeError as error:
            raise EnvelopeError(f"POSTED envelope has text that is not UTF-8: {error.reason}") from None
    return Posted(room_name, epoch.hex(), seq, time_ms, name, text, origin_name, client_id, message_id)


class _Reader:
    """Reads fields in turn; struct.error when the bytes run out (decode says so as an L{EnvelopeError})."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def fixed(self, layout: struct.Struct) -> tuple[int | bytes, ...]:
        values = layout.unpack_from(self.data, self.offset)
        self.offset += layout.size
        return tuple(values)

    def raw(self, length: int) -> bytes:
        end = self.offset + length
        if end > len(self.data):
            raise struct.error("past the end")
        value = self.data[self.offset : end]
        self.offset = end
        return value

    def bytes16(self) -> bytes:
        (length,) = _U16.unpack_from(self.data, self.offset)
        self.offset += _U16.size
        return self.raw(length)

    def bytes32(self) -> bytes:
        (length,) = _U32.unpack_from(self.data, self.offset)
        self.offset += _U32.size
        return self.raw(length)

    def str16(self) -> str:
        return self.bytes16().decode()

    def u16(self) -> int:
        (value,) = _U16.unpack_from(self.data, self.offset)
        self.offset += _U16.size
        return int(value)


def _decode_notice(reader: _Reader) -> Notice:
    _, _, epoch, kind_value, has_members = reader.fixed(_NOTICE_FIXED)
    assert isinstance(epoch, bytes) and isinstance(kind_value, int) and isinstance(has_members, int)
    try:
        kind = NoticeKind(kind_value)
    except ValueError:
        raise EnvelopeError(f"notice kind {kind_value} is unknown") from None
    if has_members > 1:
        raise EnvelopeError(f"notice's member-list flag is {has_members}, not 0 or 1")
    room, origin, member, reason, host = (reader.str16() for _ in range(5))
    members = tuple(reader.str16() for _ in range(reader.u16())) if has_members else None
    return Notice(room, epoch.hex(), kind, member, origin, reason, members, host or None)


def _decode_closed(reader: _Reader) -> RoomClosed:
    _, _, epoch = reader.fixed(_CLOSED_FIXED)
    assert isinstance(epoch, bytes)
    room, origin, member, reason = (reader.str16() for _ in range(4))
    return RoomClosed(room, epoch.hex(), origin, reason, member)
