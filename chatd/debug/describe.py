"""
The debug client's describers: bytes and frames in, text out.

Everything C{chatd-debug} prints about what went over the wire is written
here: a TCP frame decoded (L{describe_frame}, L{describe_status}) and as hex
split into its fields (L{frame_hex}), a stream of bytes as the frames it holds
(L{describe_tcp_bytes}), a refused header (L{describe_header}), a datagram of
any dialect (L{describe_datagram}), and one entry of output (L{report}).

A native datagram is sealed (L{chatd.protocol.seal}): only its header is in the clear.
What is inside is shown from an L{Opening}, what the caller made of it with
the session's key (L{Opened}, or L{Unopened} and why); this module holds no
keys and opens nothing.

It is pure (no reactor, no I/O, no session state), so every output format can
be tested on bytes alone; it is kept apart from L{chatd.debug.commands}
(which decides what to send) and L{chatd.debug.client} (which sends it)
because what the client shows changes for other reasons than what it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from chatd.protocol.datagrams import FrameType, decode_legacy, decode_relay_body
from chatd.protocol.delivery import decode_latest, decode_posted, decode_range, decode_send, decode_sent
from chatd.protocol.errors import ProtocolError, Status
from chatd.protocol.seal import HEADER_SIZE as SEALED_HEADER_SIZE
from chatd.protocol.seal import SEALED_MARKER, TAG_SIZE, peek_header
from chatd.protocol.wire import (
    HEADER_SIZE,
    PORT_SIZE,
    Frame,
    FrameDecoder,
    Operation,
    State,
    frame_length,
)

RECEIVE_LIMIT = 1 << 20
"""The largest frame payload the client shows; far above the server's limit."""

_SEALED_FIELDS = (1, 1, 1, 4, 8)
"""A sealed frame's clear header: marker, version, flags, key id, counter."""
_SEALED_GROUPS = (3, 1, 1, 1)
"""How its hex is grouped: marker version flags | key id | counter | ciphertext | tag."""

NO_KEY = "this client holds no UDP key (a native create, join or rekey hands one out)"


@dataclass(frozen=True, slots=True)
class Opened:
    """What a sealed datagram carries, once its tag verified under the session's key."""

    frame_type: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Unopened:
    """A sealed datagram the session could not open, and why (no key, another key, forged, replayed)."""

    reason: str


Opening = Opened | Unopened


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def show_bytes(data: bytes) -> str:
    """Text as a quoted Python literal (control characters escaped), else the bytes literal."""
    try:
        return repr(data.decode("utf-8"))
    except UnicodeDecodeError:
        return f"{data!r} (not UTF-8)"


def _name_of(enum: type[Operation] | type[State] | type[Status], value: int) -> str:
    try:
        return f"{value} {enum(value).name}"
    except ValueError:
        return f"{value} (unknown)"


def describe_status(payload: bytes) -> str:
    """An acknowledge payload: the status byte by name, and any detail after it."""
    if not payload:
        return "status missing (empty payload)"
    try:
        status = Status(payload[0])
    except ValueError:
        text = f"status {payload[0]} (not a known status)"
    else:
        text = f"status {status.value} {status.name} ({status.text})"
    if len(payload) > 1:
        text += f", detail {show_bytes(payload[1:])}"
    return text


def describe_frame(frame: Frame) -> str:
    """A decoded frame in two lines: the header fields, then the payload."""
    room_size = len(frame.room.encode("utf-8"))
    header = (
        f"operation {_name_of(Operation, frame.operation)}, state {_name_of(State, frame.state)}, "
        f"room {frame.room!r} ({plural(room_size, 'byte')}), "
        f"payload {plural(len(frame.payload), 'byte')} ({frame.encoding.value} size)"
    )
    if frame.state is State.ACKNOWLEDGE:
        body = describe_status(frame.payload)
    elif frame.payload:
        body = f"payload {show_bytes(frame.payload)}"
    else:
        body = "payload (empty)"
    return f"{header}\n{body}"


def _hex_fields(data: bytes, sizes: Sequence[int], groups: Sequence[int]) -> str:
    """
    C{data} as hex, cut into fields of C{sizes} (the rest is one more field).

    Fields are separated by a space within a group and by C{|} between
    groups; C{groups} says how many fields each group holds. Empty fields
    are left out.
    """
    fields: list[str] = []
    offset = 0
    for size in sizes:
        fields.append(data[offset : offset + size].hex())
        offset += size
    fields.append(data[offset:].hex())
    parts: list[str] = []
    start = 0
    for count in [*groups, len(fields)]:
        group = " ".join(field for field in fields[start : start + count] if field)
        if group:
            parts.append(group)
        start += count
        if start >= len(fields):
            break
    return " | ".join(parts)


def frame_hex(data: bytes) -> str:
    """The bytes of a frame as hex: C{size op state size-field | room | payload}."""
    if len(data) < HEADER_SIZE:
        return data.hex()
    return _hex_fields(data, (1, 1, 1, HEADER_SIZE - 3, data[0]), (4, 1))


def describe_header(data: bytes) -> str:
    """The raw fields of a 32-byte header the codec refused, as far as they go."""
    if len(data) < HEADER_SIZE:
        return f"{plural(len(data), 'byte')}, shorter than a {HEADER_SIZE}-byte header"
    field = data[3:HEADER_SIZE]
    digits = field.rstrip(b"\x00")
    size = f"ASCII {digits.decode('ascii')!r}" if digits.isdigit() else f"binary {int.from_bytes(field, 'big')}"
    return (
        f"header: room size {data[0]}, operation {_name_of(Operation, data[1])}, "
        f"state {_name_of(State, data[2])}, size field {size}"
    )


def frame_size(data: bytes) -> int | None:
    """
    The length of the frame at the start of C{data}, if its header can be read
    and all of it is there; None otherwise (framing is lost, or more is due).
    """
    if len(data) < HEADER_SIZE:
        return None
    try:
        _, end, _ = frame_length(data)
    except ProtocolError:
        return None
    return end if end <= len(data) else None


def describe_tcp_bytes(data: bytes) -> str:
    """
    Bytes for the TCP stream, as the frames they hold: each one decoded and in
    hex, then whatever is not a whole frame (a partial or refused frame).
    """
    lines: list[str] = []
    rest = data
    decoder = FrameDecoder(RECEIVE_LIMIT)
    decoder.feed(rest)
    while rest:
        try:
            item = decoder.next()
        except ProtocolError as error:
            # A frame of known length is skipped; a refused header takes the rest.
            size = frame_size(rest) or len(rest)
            lines += [f"not a frame: {error}", describe_header(rest[:size]), f"hex {frame_hex(rest[:size])}"]
            rest = rest[size:]
            decoder = FrameDecoder(RECEIVE_LIMIT)
            decoder.feed(rest)
            continue
        if item is None:
            lines.append(f"{plural(len(rest), 'byte')}, not a whole frame")
            if len(rest) == PORT_SIZE:
                lines.append(f"(as a model dialect UDP port: {int.from_bytes(rest, 'big')})")
            lines.append(f"hex {rest.hex()}")
            break
        assert isinstance(item, Frame)
        size = len(rest) - decoder.buffered
        lines += [describe_frame(item), f"hex {frame_hex(rest[:size])}"]
        rest = rest[size:]
    return "\n".join(lines)


def _timestamp(milliseconds: int) -> str:
    try:
        moment = datetime.fromtimestamp(milliseconds / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{milliseconds} ms"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe_opened(opened: Opened) -> str:
    """The inside of a sealed frame: its type by name, and its body decoded as that type carries it."""
    try:
        kind = FrameType(opened.frame_type)
    except ValueError:
        return f"frame type {opened.frame_type} (unknown), body {show_bytes(opened.body)}"
    body = opened.body
    try:
        described = _describe_body(kind, body)
    except ProtocolError as error:
        return f"{kind.name} body the codec refuses: {error}"
    if described is not None:
        return described
    if not body:
        return f"{kind.name} (no body)"
    return f"{kind.name} {show_bytes(body)}"


def _describe_body(kind: FrameType, body: bytes) -> str | None:
    """The frame types whose bodies have fields, read by the protocol's own decoders; None for the others."""
    if kind is FrameType.RELAY:
        relayed = decode_relay_body(body)
        return f"RELAY from {relayed.sender!r} at {_timestamp(relayed.timestamp_ms)}: {relayed.text!r}"
    if kind is FrameType.SEND:
        send = decode_send(body)
        return f"SEND id {send.message_id}: {send.text!r}"
    if kind is FrameType.SENT:
        sent = decode_sent(body)
        return f"SENT id {sent.message_id} as seq {sent.seq} at {_timestamp(sent.time_ms)}"
    if kind is FrameType.POSTED:
        posted = decode_posted(body)
        return f"POSTED seq {posted.seq} from {posted.sender!r} at {_timestamp(posted.time_ms)}: {posted.text!r}"
    if kind in (FrameType.REPAIR, FrameType.GONE):
        asked = decode_range(body)
        return f"{kind.name} seq {asked.first} to {asked.last} ({len(asked)} messages)"
    if kind is FrameType.KEEPALIVE_ACK and body:
        return f"KEEPALIVE_ACK, the room's latest seq {decode_latest(body)}"
    return None


def sealed_hex(data: bytes) -> str:
    """A sealed frame as hex: C{marker version flags | key id | counter | ciphertext | tag}."""
    if len(data) < SEALED_HEADER_SIZE + TAG_SIZE:
        return data.hex()
    return _hex_fields(data, (*_SEALED_FIELDS, len(data) - SEALED_HEADER_SIZE - TAG_SIZE), _SEALED_GROUPS)


def _describe_sealed(data: bytes, opening: Opening | None) -> tuple[str, str]:
    try:
        header = peek_header(data)
    except ProtocolError as error:
        return f"native frame the codec refuses: {error}", data.hex()
    clear = f"sealed native frame, key id {header.key_id}, counter {header.counter}, flags {header.flags}"
    if isinstance(opening, Opened):
        inside = describe_opened(opening)
    else:
        inside = f"could not open: {NO_KEY if opening is None else opening.reason}"
    return f"{clear}\n{inside}", sealed_hex(data)


def describe_datagram(data: bytes, *, sent: bool, opening: Opening | None = None) -> str:
    """
    A datagram decoded, and its hex with the fields split by C{|}.

    C{sent}: from this client to the server, where a legacy datagram is a
    chat datagram (room, token, message); from the server a legacy datagram
    is plain text. A native datagram shows its clear header, then what
    C{opening} says is inside (None: this client has no key to open it with).
    """
    if not data:
        return "empty datagram"
    if data[0] == SEALED_MARKER:
        text, hex_text = _describe_sealed(data, opening)
    elif sent:
        try:
            datagram = decode_legacy(data)
        except ProtocolError as error:
            text, hex_text = f"not a legacy chat datagram: {error}", data.hex()
        else:
            text = (
                f"legacy chat datagram, room {datagram.room!r}, token {datagram.token!r}\n"
                f"message {show_bytes(datagram.message)}"
            )
            hex_text = _hex_fields(data, (1, 1, data[0], data[1]), (2, 1, 1))
    else:
        text, hex_text = f"legacy text {show_bytes(data)}", data.hex()
    return f"{text}\nhex {hex_text}"


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())


def report(headline: str, body: str) -> str:
    """A headline and its indented details: one entry of the client's output."""
    return f"{headline}\n{_indent(body)}" if body else headline
