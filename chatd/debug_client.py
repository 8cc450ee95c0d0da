"""
The telnet-style debug client: type requests as words, see every byte.

C{chatd-debug [--host 127.0.0.1] [--tcp-port 9001] [--udp-port 9002]} (or
C{python -m chatd.debug_client}) connects to a chatd, reads one command a line
from stdin and prints every TCP frame and UDP datagram it sends or receives
twice: decoded, and as hex with the fields split by C{|} (the hex can be
pasted back into C{raw} or C{udpraw}). Type C{help} for the commands.

The parts that decide anything are pure: L{parse_command} turns a line into
an action, L{learn} and L{advance} move the L{Session} on, and the
C{describe_*} functions turn bytes into text. The network parts
(L{ServerConnection}, L{ServerDatagrams}, L{Console}, L{DebugClient}) only
move bytes between them and the sockets.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NoReturn

from twisted.internet import task
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import CannotListenError, ConnectError, ConnectionDone, MessageLengthError
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.internet.stdio import StandardIO
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from chatd.datagrams import (
    FrameType,
    NativeFrame,
    decode_legacy,
    decode_native,
    decode_relay_body,
    encode_legacy,
    encode_native,
)
from chatd.errors import ChatError, ProtocolError, Status
from chatd.payloads import Dialect, encode_json
from chatd.wire import (
    HEADER_SIZE,
    PORT_SIZE,
    Frame,
    FrameDecoder,
    Operation,
    SizeEncoding,
    State,
    decode_payload_size,
    encode_frame,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TCP_PORT = 9001
DEFAULT_UDP_PORT = 9002
RECEIVE_LIMIT = 1 << 20
"""The largest frame payload the client shows; far above the server's limit."""
MAX_UDP_PACKET = 65535
"""Any datagram at all, so that an oversized one shows as such."""
CLOSE_TIMEOUT = 5.0
"""Seconds to wait for a connection (or stdout) to close cleanly before giving up on it."""

_NATIVE_FIELDS = (1, 1, 1, 1, 8, 1)
"""A native datagram header: marker, version, type, flags, sequence, authentication length."""
_RELAY_FIELDS = (8, 1)
"""A relay body's prefix: server time in milliseconds, sender name length."""

HELP = """\
commands (one a line; arguments with spaces in quotes, as in a shell):
  create ROOM USER [PASSWORD]   create a room (operation 1)
  join ROOM USER [PASSWORD]     join a room by name (operation 2)
  accept ROOM USER INVITE       join a room with an invitation token
  invite [ROOM]                 ask for an invitation token (operation 4, host only)
  register [PORT]               register a UDP port (operation 3, seed dialect);
                                default: this client's UDP port
  port [PORT]                   send a UDP port as 2 raw bytes (model dialect);
                                default: this client's UDP port
  say TEXT                      legacy chat datagram, with the room and token learned
  nsay TEXT                     native MESSAGE datagram, with the token learned
  keepalive                     native KEEPALIVE datagram
  raw HEX                       send bytes on TCP as they are (spaces and | ignored)
  udpraw HEX                    send a datagram as it is (spaces and | ignored)
  dialect [model|seed|native]   show or change how requests are written:
                                model = binary size + JSON, seed = ASCII size + JSON,
                                native = binary size + JSON with "chatd": 1
  state                         show the dialect, room, token and ports in use
  connect                       open a new TCP connection (after the server closed it)
  help                          this text
  quit                          close everything and leave (end of input does the same)
output: ">>" sent, "<<" received, "--" client notes, "!!" errors"""


class CommandError(ChatError):
    """A line that is not a valid command; the message says why, for the person typing."""


# -- session state -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """What the client has learned so far; commands read it, frames update it."""

    dialect: Dialect = Dialect.MODEL
    room: str | None = None
    """The room of the last complete create or join frame."""
    token: str | None = None
    """The member token from that frame, for datagrams."""
    invite: str | None = None
    """The last invitation token received."""
    local_udp_port: int | None = None
    """This client's UDP port, once it listens."""
    sequence: int = 0
    """The sequence number of the last native datagram sent."""


_DIALECT_NOTES = {
    Dialect.MODEL: "binary size, JSON payload",
    Dialect.SEED: "ASCII size, JSON payload",
    Dialect.NATIVE: 'binary size, JSON payload with "chatd": 1',
}


_REGISTER_HINTS = {
    Dialect.MODEL: "port (2 raw bytes, then the server closes TCP)",
    Dialect.SEED: "register (operation 3)",
    Dialect.NATIVE: "keepalive (the first datagram registers)",
}


def describe_session(session: Session) -> str:
    return "\n".join(
        [
            f"dialect    {session.dialect.value} ({_DIALECT_NOTES[session.dialect]})",
            f"room       {_or_none(session.room)}",
            f"token      {_or_none(session.token)}",
            f"invitation {_or_none(session.invite)}",
            f"UDP port   {_or_none(session.local_udp_port)}",
            f"native sequence: last sent {session.sequence}",
        ]
    )


def _or_none(value: object) -> str:
    return "(none)" if value is None else repr(value) if isinstance(value, str) else str(value)


# -- actions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendFrame:
    """Send one frame on the TCP connection."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class SendBytes:
    """Send bytes on the TCP connection that are not (necessarily) a frame."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send a datagram to the server's UDP port."""

    data: bytes
    sequence: int | None = None
    """The native sequence number it uses, to remember once it is sent."""


@dataclass(frozen=True, slots=True)
class ChangeDialect:
    dialect: Dialect


@dataclass(frozen=True, slots=True)
class Show:
    """Print text; nothing is sent."""

    text: str


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a new TCP connection to the server."""


@dataclass(frozen=True, slots=True)
class Quit:
    """Close everything and leave."""


Action = SendFrame | SendBytes | SendDatagram | ChangeDialect | Show | Connect | Quit


# -- the command parser --------------------------------------------------------

_COMMAND_LINE = re.compile(r"\s*(\S+)(?:\s(.*))?", re.DOTALL)
_HEX_SEPARATORS = re.compile(r"[\s|]+")


def parse_command(line: str, session: Session) -> Action | None:
    """
    The action one typed line asks for, or None for a blank or C{#} comment line.

    Pure: the session is only read. Raises L{CommandError} with a message for
    the person typing when the line is not a valid command.
    """
    match = _COMMAND_LINE.fullmatch(line.rstrip("\r\n"))
    if match is None:
        return None
    word, rest = match.group(1), match.group(2) or ""
    if word.startswith("#"):
        return None
    parser = _PARSERS.get(word.lower())
    if parser is None:
        raise CommandError(f"unknown command {word!r}; type help for the list")
    return parser(rest, session)


def _words(rest: str, usage: str, minimum: int, maximum: int) -> list[str]:
    try:
        words = shlex.split(rest)
    except ValueError as error:
        raise CommandError(f"{error}; usage: {usage}") from None
    if not minimum <= len(words) <= maximum:
        raise CommandError(f"usage: {usage}")
    return words


def _encoding(dialect: Dialect) -> SizeEncoding:
    return SizeEncoding.ASCII if dialect is Dialect.SEED else SizeEncoding.BINARY


def _json_payload(obj: dict[str, Any], dialect: Dialect) -> bytes:
    if dialect is Dialect.NATIVE:
        return encode_json(obj)
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _request(operation: Operation, room: str, payload: bytes, session: Session) -> SendFrame:
    size = len(room.encode("utf-8"))
    if size > 255:
        raise CommandError(f"the room name is {size} bytes long; its size field holds at most 255")
    return SendFrame(Frame(operation, State.REQUEST, room, payload, _encoding(session.dialect)))


def _parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise CommandError(f"{text!r} is not a port number from 0 to 65535")
    return int(text)


def _port_or_ours(words: list[str], session: Session) -> int:
    if words:
        return _parse_port(words[0])
    if session.local_udp_port is None:
        raise CommandError("this client has no UDP port yet; give one")
    return session.local_udp_port


def _parse_hex(rest: str, usage: str) -> bytes:
    digits = _HEX_SEPARATORS.sub("", rest)
    if not digits:
        raise CommandError(f"usage: {usage}")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise CommandError("not hex: give pairs of hex digits, e.g. 04010031") from None


def _membership(session: Session, command: str) -> tuple[str, str]:
    if session.room is None or session.token is None:
        raise CommandError(f"{command} needs a token: create or join a room first (the complete frame carries it)")
    return session.room, session.token


def _parse_create(rest: str, session: Session) -> Action:
    return _parse_enter(Operation.CREATE, "create ROOM USER [PASSWORD]", rest, session)


def _parse_join(rest: str, session: Session) -> Action:
    return _parse_enter(Operation.JOIN, "join ROOM USER [PASSWORD]", rest, session)


def _parse_enter(operation: Operation, usage: str, rest: str, session: Session) -> Action:
    words = _words(rest, usage, 2, 3)
    request: dict[str, Any] = {"username": words[1]}
    if len(words) == 3:
        request["password"] = words[2]
    return _request(operation, words[0], _json_payload(request, session.dialect), session)


def _parse_accept(rest: str, session: Session) -> Action:
    room, user, invite = _words(rest, "accept ROOM USER INVITE", 3, 3)
    payload = _json_payload({"username": user, "invite": invite}, session.dialect)
    return _request(Operation.JOIN, room, payload, session)


def _parse_invite(rest: str, session: Session) -> Action:
    words = _words(rest, "invite [ROOM]", 0, 1)
    room = words[0] if words else session.room or ""
    return _request(Operation.INVITE, room, b"", session)


def _parse_register(rest: str, session: Session) -> Action:
    port = _port_or_ours(_words(rest, "register [PORT]", 0, 1), session)
    return _request(Operation.REGISTER_UDP, session.room or "", str(port).encode("ascii"), session)


def _parse_port_bytes(rest: str, session: Session) -> Action:
    port = _port_or_ours(_words(rest, "port [PORT]", 0, 1), session)
    return SendBytes(port.to_bytes(PORT_SIZE, "big"))


def _parse_say(rest: str, session: Session) -> Action:
    if not rest:
        raise CommandError("usage: say TEXT")
    room, token = _membership(session, "say")
    if len(room.encode("utf-8")) > 255 or len(token.encode("utf-8")) > 255:
        raise CommandError("the room name or token is too long for a legacy datagram")
    return SendDatagram(encode_legacy(room, token, rest))


def _parse_nsay(rest: str, session: Session) -> Action:
    if not rest:
        raise CommandError("usage: nsay TEXT")
    return _native(FrameType.MESSAGE, rest.encode("utf-8"), session, "nsay")


def _parse_keepalive(rest: str, session: Session) -> Action:
    _words(rest, "keepalive", 0, 0)
    return _native(FrameType.KEEPALIVE, b"", session, "keepalive")


def _native(frame_type: FrameType, body: bytes, session: Session, command: str) -> SendDatagram:
    _, token = _membership(session, command)
    auth = token.encode("utf-8")
    if len(auth) > 255:
        raise CommandError("the token is too long for a native datagram")
    sequence = session.sequence + 1
    return SendDatagram(encode_native(NativeFrame(frame_type, sequence, auth, body)), sequence)


def _parse_raw(rest: str, session: Session) -> Action:
    return SendBytes(_parse_hex(rest, "raw HEX"))


def _parse_udpraw(rest: str, session: Session) -> Action:
    return SendDatagram(_parse_hex(rest, "udpraw HEX"))


def _parse_dialect(rest: str, session: Session) -> Action:
    words = _words(rest, "dialect [model|seed|native]", 0, 1)
    if not words:
        return Show(f"dialect {session.dialect.value} ({_DIALECT_NOTES[session.dialect]})")
    try:
        return ChangeDialect(Dialect(words[0].lower()))
    except ValueError:
        raise CommandError("the dialect is one of model, seed, native") from None


def _parse_state(rest: str, session: Session) -> Action:
    _words(rest, "state", 0, 0)
    return Show(describe_session(session))


def _parse_help(rest: str, session: Session) -> Action:
    return Show(HELP)


def _parse_connect(rest: str, session: Session) -> Action:
    _words(rest, "connect", 0, 0)
    return Connect()


def _parse_quit(rest: str, session: Session) -> Action:
    return Quit()


_PARSERS: dict[str, Callable[[str, Session], Action]] = {
    "create": _parse_create,
    "join": _parse_join,
    "accept": _parse_accept,
    "invite": _parse_invite,
    "register": _parse_register,
    "port": _parse_port_bytes,
    "say": _parse_say,
    "nsay": _parse_nsay,
    "keepalive": _parse_keepalive,
    "raw": _parse_raw,
    "udpraw": _parse_udpraw,
    "dialect": _parse_dialect,
    "state": _parse_state,
    "help": _parse_help,
    "?": _parse_help,
    "connect": _parse_connect,
    "quit": _parse_quit,
    "exit": _parse_quit,
}


# -- how the session moves on ----------------------------------------------------


def advance(session: Session, action: Action) -> Session:
    """The session once C{action} has been carried out."""
    if isinstance(action, ChangeDialect):
        return replace(session, dialect=action.dialect)
    if isinstance(action, SendDatagram) and action.sequence is not None:
        return replace(session, sequence=action.sequence)
    return session


def learn(session: Session, frame: Frame) -> Session:
    """
    The session after a frame from the server.

    A complete create or join frame carries the member token (legacy: the
    payload text; native: JSON C{"token"}); a complete invite frame an
    invitation token (legacy: the text; native: JSON C{"invite"}). Notices,
    acknowledgements and anything unreadable change nothing.
    """
    if frame.state is not State.COMPLETE:
        return session
    if frame.operation in (Operation.CREATE, Operation.JOIN):
        token = _payload_field(frame.payload, "token")
        if token is None:
            return session
        return replace(session, room=frame.room, token=token, sequence=0)
    if frame.operation is Operation.INVITE:
        invite = _payload_field(frame.payload, "invite")
        return session if invite is None else replace(session, invite=invite)
    return session


def _json_object(payload: bytes) -> dict[str, Any] | None:
    if not payload.lstrip().startswith(b"{"):
        return None
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        # RecursionError: a server (or a man in the middle) can nest deeply.
        return None
    return obj if isinstance(obj, dict) else None


def _payload_field(payload: bytes, key: str) -> str | None:
    """A token in a complete payload: legacy, the plain text; native, the JSON C{key}."""
    if payload.lstrip().startswith(b"{"):
        obj = _json_object(payload)
        value = None if obj is None else obj.get(key)
        if not isinstance(value, str) or not value:
            return None
        try:
            # JSON can escape a lone surrogate, which no datagram could carry.
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return value
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return text or None


# -- describers ----------------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
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
        f"room {frame.room!r} ({_plural(room_size, 'byte')}), "
        f"payload {_plural(len(frame.payload), 'byte')} ({frame.encoding.value} size)"
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
        return f"{_plural(len(data), 'byte')}, shorter than a {HEADER_SIZE}-byte header"
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
        size, _ = decode_payload_size(data[3:HEADER_SIZE])
    except ProtocolError:
        return None
    end = HEADER_SIZE + data[0] + size
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
            lines.append(f"{_plural(len(rest), 'byte')}, not a whole frame")
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


def _describe_native(data: bytes) -> tuple[str, str]:
    try:
        frame = decode_native(data)
    except ProtocolError as error:
        return f"native frame the codec refuses: {error}", data.hex()
    header = (
        f"native {frame.frame_type.name} frame, sequence {frame.sequence}, flags {frame.flags}, "
        f"auth {show_bytes(frame.auth) if frame.auth else '(none)'}"
    )
    hex_text = _hex_fields(data, (*_NATIVE_FIELDS, len(frame.auth)), (len(_NATIVE_FIELDS), 1))
    if frame.frame_type is FrameType.RELAY:
        name_size = frame.body[8] if len(frame.body) > 8 else 0
        hex_text = _hex_fields(
            data,
            (*_NATIVE_FIELDS, len(frame.auth), *_RELAY_FIELDS, name_size),
            (len(_NATIVE_FIELDS), 1, len(_RELAY_FIELDS), 1),
        )
        try:
            relayed = decode_relay_body(frame.body)
        except ProtocolError as error:
            return f"{header}\nrelay body the codec refuses: {error}", hex_text
        body = f"from {relayed.sender!r} at {_timestamp(relayed.timestamp_ms)}: {relayed.text!r}"
    elif frame.body:
        body = f"body {show_bytes(frame.body)}"
    else:
        body = "no body"
    return f"{header}\n{body}", hex_text


def describe_datagram(data: bytes, *, sent: bool) -> str:
    """
    A datagram decoded, and its hex with the fields split by C{|}.

    C{sent}: from this client to the server, where a legacy datagram is a
    chat datagram (room, token, message); from the server a legacy datagram
    is plain text.
    """
    if not data:
        return "empty datagram"
    if data[0] == 0:
        text, hex_text = _describe_native(data)
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


# -- the network side ----------------------------------------------------------------


def _host_port(address: IAddress) -> tuple[str, int]:
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host, address.port
    return str(address), 0


def _show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def client_endpoint(reactor: IReactorTCP, host: str, port: int) -> IStreamClientEndpoint:
    """An endpoint for an IPv4 or IPv6 literal, or a host name (either family)."""
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=10)
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=10)
    return HostnameEndpoint(reactor, host, port, timeout=10)


class ServerConnection(Protocol):
    """The TCP connection: feeds a FrameDecoder, hands each frame and its bytes on."""

    def __init__(self, client: DebugClient) -> None:
        self._client = client
        self._decoder = FrameDecoder(RECEIVE_LIMIT)
        self._pending = bytearray()
        """Received bytes not yet handed on: exactly what the decoder holds."""
        self.closed_by_us = False
        self.lost = False
        self._lost_waiters: list[Deferred[None]] = []

    @override
    def dataReceived(self, data: bytes) -> None:
        self._pending += data
        self._decoder.feed(data)
        while True:
            try:
                item = self._decoder.next()
            except ProtocolError as error:
                # A refused frame of known length is skipped; a refused header
                # loses the framing, so everything received so far goes with it.
                size = frame_size(bytes(self._pending)) or len(self._pending)
                self._client.refused_received(self._take(size), error)
                self._decoder = FrameDecoder(RECEIVE_LIMIT)
                self._decoder.feed(bytes(self._pending))
                continue
            if item is None:
                return
            assert isinstance(item, Frame)
            self._client.frame_received(item, self._take(len(self._pending) - self._decoder.buffered))

    def _take(self, count: int) -> bytes:
        data = bytes(self._pending[:count])
        del self._pending[:count]
        return data

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self._client.connection_lost(self, reason, bytes(self._pending))
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def when_lost(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self.lost:
            waiter.callback(None)
        else:
            self._lost_waiters.append(waiter)
        return waiter

    def close(self) -> None:
        self.closed_by_us = True
        if not self.lost and self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        if not self.lost and ITCPTransport.providedBy(self.transport):
            self.transport.abortConnection()


class ServerDatagrams(DatagramProtocol):
    """The UDP port: every datagram that arrives goes to the client."""

    noisy = False

    def __init__(self, client: DebugClient) -> None:
        self._client = client

    @override
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._client.datagram_received(datagram, (str(addr[0]), int(addr[1])))

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.write(data, address)


class DebugClient:
    """
    One debugging session: a TCP connection, a UDP port and the L{Session}.

    Everything it prints goes through C{write} (one call per entry, possibly
    several lines), so tests can collect it. Lines come in through
    L{handle_line}; L{stopped} fires once L{shutdown} has closed everything.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        write: Callable[[str], None],
        host: str = DEFAULT_HOST,
        tcp_port: int = DEFAULT_TCP_PORT,
        udp_port: int = DEFAULT_UDP_PORT,
    ) -> None:
        self._reactor = reactor
        self._write = write
        self.host = host
        self.tcp_port = tcp_port
        self.udp_port = udp_port
        self.session = Session()
        self.connection: ServerConnection | None = None
        self._connecting = False
        self._datagrams: ServerDatagrams | None = None
        self._listener: IListeningPort | None = None
        self._server_udp: tuple[str, int] | None = None
        self._greeted = False
        self._stopping = False
        self.stopped: Deferred[None] = Deferred()

    # -- connecting --------------------------------------------------------------

    async def connect(self) -> bool:
        """Open the TCP connection (and, the first time, the UDP port); False if that failed."""
        self._connecting = True
        where = _show_address(self.host, self.tcp_port)
        try:
            protocol: ServerConnection = await connectProtocol(
                client_endpoint(self._reactor, self.host, self.tcp_port), ServerConnection(self)
            )
        except (ConnectError, OSError) as error:
            self._write(f"!! cannot connect to {where}: {error}")
            return False
        finally:
            self._connecting = False
        if self._stopping:
            protocol.close()
            return False
        self.attach(protocol)
        return True

    def attach(self, protocol: ServerConnection) -> None:
        """Use a connected L{ServerConnection}; the first one also opens the UDP port beside it."""
        self.connection = protocol
        assert protocol.transport is not None
        local_host, local_port = _host_port(protocol.transport.getHost())
        server_host, server_port = _host_port(protocol.transport.getPeer())
        self._server_udp = (server_host, self.udp_port)
        self._write(
            f"-- connected to {_show_address(server_host, server_port)} from {_show_address(local_host, local_port)}"
        )
        if self._listener is None and not self._greeted:
            self._listen_udp(local_host)
        if not self._greeted:
            self._greeted = True
            dialect = self.session.dialect
            self._write(f"-- dialect {dialect.value} ({_DIALECT_NOTES[dialect]}); type help for the commands")

    def _listen_udp(self, local_host: str) -> None:
        # The TCP connection's own address: the same family and interface, so
        # the server sees datagrams come from the host it saw connect.
        if not IReactorUDP.providedBy(self._reactor):
            self._write("!! this reactor cannot do UDP: no datagrams")
            return
        reactor = IReactorUDP(self._reactor)
        datagrams = ServerDatagrams(self)
        try:
            listener = reactor.listenUDP(0, datagrams, local_host, MAX_UDP_PACKET)
        except CannotListenError as error:
            self._write(f"!! cannot listen for UDP on {local_host}: {error}")
            return
        self._listener, self._datagrams = listener, datagrams
        _, port = _host_port(listener.getHost())
        self.session = replace(self.session, local_udp_port=port)
        assert self._server_udp is not None
        self._write(
            f"-- UDP: listening on {_show_address(local_host, port)}, sending to {_show_address(*self._server_udp)}"
        )

    # -- commands ----------------------------------------------------------------

    def handle_line(self, line: str) -> None:
        """Carry out one typed line; every error is printed, none is raised."""
        try:
            action = parse_command(line, self.session)
            if action is not None:
                self._perform(action)
        except CommandError as error:
            self._write(f"!! {error}")
        except Exception as error:
            # A bug here must not end the session the developer is debugging with.
            self._write(f"!! internal error of the debug client: {type(error).__name__}: {error}")

    def _perform(self, action: Action) -> None:
        if isinstance(action, SendFrame):
            self._send_tcp(encode_frame(action.frame))
        elif isinstance(action, SendBytes):
            self._send_tcp(action.data)
        elif isinstance(action, SendDatagram):
            if self._send_udp(action.data):
                self.session = advance(self.session, action)
        elif isinstance(action, ChangeDialect):
            self.session = advance(self.session, action)
            self._write(f"-- dialect {action.dialect.value} ({_DIALECT_NOTES[action.dialect]})")
        elif isinstance(action, Show):
            self._write(action.text)
        elif isinstance(action, Connect):
            if self.connection is not None or self._connecting:
                raise CommandError("already connected (or connecting)")
            Deferred.fromCoroutine(self.connect()).addErrback(self._connect_failed)
        else:
            self.shutdown()

    def _connect_failed(self, failure: Failure) -> None:
        self._write(f"!! cannot connect: {failure.getErrorMessage()}")

    def _send_tcp(self, data: bytes) -> None:
        connection = self.connection
        if connection is None or connection.closed_by_us:
            raise CommandError("not connected to the server; type connect to open a new connection")
        self._write(report(f">> TCP {_plural(len(data), 'byte')}", describe_tcp_bytes(data)))
        connection.send(data)

    def _send_udp(self, data: bytes) -> bool:
        if self._datagrams is None or self._server_udp is None:
            raise CommandError("no UDP port to send from")
        where = _show_address(*self._server_udp)
        self._write(report(f">> UDP to {where}, {_plural(len(data), 'byte')}", describe_datagram(data, sent=True)))
        try:
            self._datagrams.send(data, self._server_udp)
        except (OSError, MessageLengthError) as error:
            self._write(f"!! the datagram was not sent: {error}")
            return False
        return True

    # -- what the server sends ----------------------------------------------------

    def frame_received(self, frame: Frame, data: bytes) -> None:
        self._write(report(f"<< TCP {_plural(len(data), 'byte')}", f"{describe_frame(frame)}\nhex {frame_hex(data)}"))
        before, self.session = self.session, learn(self.session, frame)
        if self.session.token != before.token or self.session.room != before.room:
            self._write(
                f"-- token for room {self.session.room!r}: {self.session.token} (say, nsay, keepalive use it); "
                f"to register your UDP address: {_REGISTER_HINTS[self.session.dialect]}"
            )
        if self.session.invite != before.invite:
            self._write(
                f"-- invitation to room {frame.room!r}: {self.session.invite} "
                f"(whoever has it can: accept {shlex.quote(frame.room)} USER {self.session.invite})"
            )

    def refused_received(self, data: bytes, error: ProtocolError) -> None:
        self._write(
            report(
                f"!! << TCP {_plural(len(data), 'byte')} the frame codec refuses: {error}",
                f"{describe_header(data)}\nhex {frame_hex(data)}",
            )
        )

    def connection_lost(self, connection: ServerConnection, reason: Failure, leftover: bytes) -> None:
        if self.connection is connection:
            self.connection = None
        if leftover:
            self._write(
                report(
                    f"!! {_plural(len(leftover), 'byte')} received that never became a whole frame",
                    f"hex {leftover.hex()}",
                )
            )
        if connection.closed_by_us:
            self._write("-- TCP connection closed")
        elif reason.check(ConnectionDone):
            self._write("-- the server closed the TCP connection (type connect for a new one)")
        else:
            self._write(f"!! TCP connection lost: {reason.getErrorMessage()} (type connect for a new one)")

    def datagram_received(self, data: bytes, source: tuple[str, int]) -> None:
        headline = f"<< UDP from {_show_address(*source)}, {_plural(len(data), 'byte')}"
        if source != self._server_udp:
            headline += " (not the server's UDP address)"
        self._write(report(headline, describe_datagram(data, sent=False)))

    # -- the end -----------------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """Close the connection and the UDP port, then fire L{stopped}; safe to call again."""
        if not self._stopping:
            self._stopping = True
            Deferred.fromCoroutine(self._shutdown())
        return self.stopped

    async def _shutdown(self) -> None:
        connection = self.connection
        if connection is not None:
            lost = connection.when_lost()
            connection.close()
            try:
                await lost.addTimeout(CLOSE_TIMEOUT, IReactorTime(self._reactor))
            except TimeoutError:
                connection.abort()
        listener, self._listener, self._datagrams = self._listener, None, None
        stopping = None if listener is None else listener.stopListening()
        if stopping is not None:
            await stopping
        self.stopped.callback(None)


@implementer(IHalfCloseableProtocol)
class Console(LineReceiver):
    """Lines from stdin to the client; the client's output to stdout."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 16

    def __init__(self) -> None:
        self.client: DebugClient | None = None
        self._output_open = True
        self._lost = False
        self._lost_waiters: list[Deferred[None]] = []

    def write(self, text: str) -> None:
        if self.transport is not None and self._output_open and not self._lost:
            self.transport.write(text.encode("utf-8", "backslashreplace") + b"\n")

    @override
    def lineReceived(self, line: bytes) -> None:
        if self.client is None:
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.write("!! that line is not valid UTF-8 (raw and udpraw take any bytes as hex)")
            return
        self.client.handle_line(text)

    @override
    def lineLengthExceeded(self, line: bytes) -> None:
        # Not the default (hang up): the rest of the session is still good.
        self.write(f"!! a line of more than {self.MAX_LENGTH} bytes was dropped")

    # IHalfCloseableProtocol: stdio looks these two up by their Twisted names.
    def readConnectionLost(self) -> None:  # noqa: N802
        """End of input: leave, as quit does."""
        if self.client is not None:
            self.client.shutdown()

    def writeConnectionLost(self) -> None:  # noqa: N802
        """Nobody reads the output any more: leave."""
        self._output_open = False
        if self.client is not None:
            self.client.shutdown()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self.client is not None:
            self.client.shutdown()

    def close(self, clock: IReactorTime) -> Deferred[None]:
        """Flush the output and close stdio; fires when done (or after a bounded wait)."""
        if self._lost or self.transport is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if self._output_open:
            self._lost_waiters.append(waiter)
        else:
            # stdout is gone already, so stdio will not report the close.
            waiter.callback(None)
        self.transport.loseConnection()
        waiter.addTimeout(CLOSE_TIMEOUT, clock)
        waiter.addErrback(_ignore_timeout)
        return waiter


def _ignore_timeout(failure: Failure) -> None:
    failure.trap(TimeoutError)


# -- main ----------------------------------------------------------------------------------


def _port_argument(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return int(text)


def _host_argument(text: str) -> str:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not host:
        raise argparse.ArgumentTypeError("the host is empty")
    return host


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chatd-debug",
        description="Talk to a chatd by hand: type requests as words, see every frame decoded and as hex.",
        epilog="Once connected, type help for the commands.",
    )
    parser.add_argument(
        "--host",
        type=_host_argument,
        default=DEFAULT_HOST,
        help=f"the server's address or name, IPv4 or IPv6 (default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--tcp-port",
        type=_port_argument,
        default=DEFAULT_TCP_PORT,
        help=f"the server's TCP port (default {DEFAULT_TCP_PORT})",
    )
    parser.add_argument(
        "--udp-port",
        type=_port_argument,
        default=DEFAULT_UDP_PORT,
        help=f"the server's UDP port (default {DEFAULT_UDP_PORT})",
    )
    return parser.parse_args(argv)


async def run(reactor: Any, options: argparse.Namespace) -> None:
    """Connect, then carry out typed lines until quit or the end of input."""
    console = Console()
    stdio = StandardIO(console, reactor=reactor)
    # Typed lines wait until the connection is up.
    stdio.pauseProducing()
    client = DebugClient(reactor, console.write, options.host, options.tcp_port, options.udp_port)
    console.client = client
    connected = await client.connect()
    if connected:
        stdio.resumeProducing()
        await client.stopped
    else:
        await client.shutdown()
    await console.close(reactor)
    if not connected:
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The C{chatd-debug} console script."""
    options = parse_arguments(argv)
    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
