"""
The debug client's commands: what a typed line asks for, and what it learns.

L{parse_command} turns one line typed into C{chatd-debug} into an action
(L{SendFrame}, L{SendBytes}, L{SendDatagram}, L{SendSealed}, L{ChangeDialect},
L{Show}, L{Connect}, L{Quit}) or refuses it with a L{CommandError}; L{advance}
and L{learn} move the L{Session} (dialect, room, token, UDP key, invitation,
ports) on after an action is carried out or a frame arrives from the server;
L{open_datagram} says what the session can read of a sealed datagram.

It is pure: no reactor, no I/O. The session is a frozen value; these
functions return a new one and the caller keeps it, so every command and
everything the client learns can be tested without a connection. The one
exception is the session's L{Channel} (the UDP key, chatd.protocol.seal): it counts the
frames sealed with it and remembers the counters received, as a key's sending
counter and replay window must, so it changes in place when the client seals
a L{SendSealed} or opens a received datagram. A new key is a new Channel.
Carrying the actions out is L{chatd.debug.client}'s job; turning bytes into
text, L{chatd.debug.describe}'s.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from chatd.debug.describe import Opened, Opening, Unopened
from chatd.protocol.datagrams import FrameType, encode_legacy
from chatd.protocol.errors import ChatError, ProtocolError
from chatd.protocol.payloads import Dialect, encode_json
from chatd.protocol.seal import (
    KEY_BYTES,
    MAX_KEY_ID,
    REJECT_AFTER,
    SEALED_MARKER,
    Channel,
    Direction,
    Sealer,
    peek_header,
)
from chatd.protocol.wire import PORT_SIZE, Frame, Operation, SizeEncoding, State

HELP = """\
commands (one a line; arguments with spaces in quotes, as in a shell):
  create ROOM USER [PASSWORD] [--native-only]
                                create a room (operation 1); --native-only: a room only
                                native clients may join ("native_only": true; the server
                                allows it over TLS only, docs/protocol.md 4.8)
  join ROOM USER [PASSWORD]     join a room by name (operation 2)
  accept ROOM USER INVITE       join a room with an invitation token
  invite [ROOM]                 ask for an invitation token (operation 4, host only)
  register [PORT]               register a UDP port (operation 3, seed dialect);
                                default: this client's UDP port
  port [PORT]                   send a UDP port as 2 raw bytes (model dialect);
                                default: this client's UDP port
  rekey [ROOM]                  ask for a new UDP key (operation 6, native members only)
  members [ROOM]                ask for the room's member list (operation 7, native members only)
  say TEXT                      legacy chat datagram, with the room and token learned
  nsay TEXT                     native MESSAGE datagram, sealed with the UDP key learned
  keepalive                     native KEEPALIVE datagram, sealed with the UDP key learned
                                (the first sealed datagram registers the UDP address)
  raw HEX                       send bytes on TCP as they are (spaces and | ignored)
  udpraw HEX                    send a datagram as it is (spaces and | ignored): garbage,
                                or a sealed datagram shown before, again (a replay)
  dialect [model|seed|native]   show or change how requests are written:
                                model = binary size + JSON, seed = ASCII size + JSON,
                                native = binary size + JSON with "chatd": 1
  state                         show the dialect, room, token, UDP key id and counters
                                (never the key), and ports in use
  connect                       open a new TCP connection (after the server closed it)
  help                          this text
  quit                          close everything and leave (end of input does the same)
output: ">>" sent, "<<" received, "--" client notes, "!!" errors; a native datagram
shows its clear header (key id, counter, flags), what it carries once opened with
the UDP key (or why it could not be opened), and its hex"""


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
    """The member token from that frame, for legacy datagrams (never sent on UDP by native members)."""
    channel: Channel | None = None
    """
    The UDP key from the last native complete create, join or rekey frame, as
    a client Channel (sending TO_SERVER): it seals nsay and keepalive with its
    counter (C{channel.sent}, the next one to use), and opens what the server
    sends, refusing replays. None until a native membership hands one out.
    """
    invite: str | None = None
    """The last invitation token received."""
    local_udp_port: int | None = None
    """This client's UDP port, once it listens."""


DIALECT_NOTES = {
    Dialect.MODEL: "binary size, JSON payload",
    Dialect.SEED: "ASCII size, JSON payload",
    Dialect.NATIVE: 'binary size, JSON payload with "chatd": 1',
}


def describe_session(session: Session) -> str:
    return "\n".join(
        [
            f"dialect    {session.dialect.value} ({DIALECT_NOTES[session.dialect]})",
            f"room       {_or_none(session.room)}",
            f"token      {_or_none(session.token)}",
            f"UDP key    {describe_key(session.channel)}",
            f"invitation {_or_none(session.invite)}",
            f"UDP port   {_or_none(session.local_udp_port)}",
        ]
    )


def describe_key(channel: Channel | None) -> str:
    """The key id and counters of a UDP key; never the key itself."""
    if channel is None:
        return "(none)"
    received = "none yet" if channel.newest_received < 0 else str(channel.newest_received)
    return (
        f"key id {channel.key_id} (the key itself is not shown), "
        f"next counter to send {channel.sent}, newest counter received {received}"
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


@dataclass(frozen=True, slots=True)
class SendSealed:
    """
    Seal a native frame with the session's UDP key and send it to the server's
    UDP port. Sealing takes the key's next counter, whether or not the
    datagram then gets out: a counter is never used twice.
    """

    frame_type: FrameType
    body: bytes


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


Action = SendFrame | SendBytes | SendDatagram | SendSealed | ChangeDialect | Show | Connect | Quit


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


_NATIVE_ONLY = "--native-only"


def _parse_create(rest: str, session: Session) -> Action:
    usage = f"create ROOM USER [PASSWORD] [{_NATIVE_ONLY}]"
    words = _words(rest, usage, 2, 4)
    native_only = _NATIVE_ONLY in words
    if native_only:
        words.remove(_NATIVE_ONLY)
    if not 2 <= len(words) <= 3:
        raise CommandError(f"usage: {usage}")
    # Sent in any dialect and over any port, as asked: a debug client shows the server's refusal too.
    return _enter(Operation.CREATE, words, session, {"native_only": True} if native_only else {})


def _parse_join(rest: str, session: Session) -> Action:
    return _parse_enter(Operation.JOIN, "join ROOM USER [PASSWORD]", rest, session)


def _parse_enter(operation: Operation, usage: str, rest: str, session: Session) -> Action:
    return _enter(operation, _words(rest, usage, 2, 3), session)


def _enter(operation: Operation, words: list[str], session: Session, extra: dict[str, Any] | None = None) -> Action:
    """A create or join request for ROOM USER [PASSWORD], with C{extra} members after them."""
    request: dict[str, Any] = {"username": words[1]}
    if len(words) == 3:
        request["password"] = words[2]
    request.update(extra or {})
    return _request(operation, words[0], _json_payload(request, session.dialect), session)


def _parse_accept(rest: str, session: Session) -> Action:
    room, user, invite = _words(rest, "accept ROOM USER INVITE", 3, 3)
    payload = _json_payload({"username": user, "invite": invite}, session.dialect)
    return _request(Operation.JOIN, room, payload, session)


def _parse_invite(rest: str, session: Session) -> Action:
    words = _words(rest, "invite [ROOM]", 0, 1)
    room = words[0] if words else session.room or ""
    return _request(Operation.INVITE, room, b"", session)


def _parse_rekey(rest: str, session: Session) -> Action:
    words = _words(rest, "rekey [ROOM]", 0, 1)
    room = words[0] if words else session.room or ""
    return _request(Operation.REKEY, room, b"", session)


def _parse_members(rest: str, session: Session) -> Action:
    words = _words(rest, "members [ROOM]", 0, 1)
    room = words[0] if words else session.room or ""
    return _request(Operation.MEMBERS, room, b"", session)


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


def _native(frame_type: FrameType, body: bytes, session: Session, command: str) -> SendSealed:
    channel = session.channel
    if channel is None:
        raise CommandError(
            f"{command} needs a UDP key: create or join a room in the native dialect first "
            "(its complete frame carries the key)"
        )
    if channel.sent >= REJECT_AFTER:
        raise CommandError(f"the UDP key id {channel.key_id} is spent (no counter left): rekey for a new one")
    return SendSealed(frame_type, body)


def _parse_raw(rest: str, session: Session) -> Action:
    return SendBytes(_parse_hex(rest, "raw HEX"))


def _parse_udpraw(rest: str, session: Session) -> Action:
    return SendDatagram(_parse_hex(rest, "udpraw HEX"))


def _parse_dialect(rest: str, session: Session) -> Action:
    words = _words(rest, "dialect [model|seed|native]", 0, 1)
    if not words:
        return Show(f"dialect {session.dialect.value} ({DIALECT_NOTES[session.dialect]})")
    try:
        dialect = Dialect(words[0].lower())
        if dialect is Dialect.WEB:
            # Browsers speak WebSocket to --web-port, not frames.
            raise ValueError(dialect)
        return ChangeDialect(dialect)
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
    "rekey": _parse_rekey,
    "members": _parse_members,
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
    return session


def learn(session: Session, frame: Frame) -> Session:
    """
    The session after a frame from the server.

    A complete create or join frame carries the member token (legacy: the
    payload text; native: JSON C{"token"}) and, native only, the UDP key (JSON
    C{"key"}, base64, and C{"key_id"}); a complete rekey frame a new key; a
    complete invite frame an invitation token (legacy: the text; native: JSON
    C{"invite"}). Every new key is a new Channel, its counters at the start.
    A membership without a usable key has none: nsay and keepalive refuse.
    Notices, acknowledgements and anything unreadable change nothing.
    """
    if frame.state is not State.COMPLETE:
        return session
    if frame.operation in (Operation.CREATE, Operation.JOIN):
        token = _payload_field(frame.payload, "token")
        if token is None:
            return session
        return replace(session, room=frame.room, token=token, channel=_channel_from(frame.payload))
    if frame.operation is Operation.REKEY:
        channel = _channel_from(frame.payload)
        return session if channel is None else replace(session, channel=channel)
    if frame.operation is Operation.INVITE:
        invite = _payload_field(frame.payload, "invite")
        return session if invite is None else replace(session, invite=invite)
    return session


def _channel_from(payload: bytes) -> Channel | None:
    """The client Channel for the UDP key in a native complete payload; None when there is no usable one."""
    obj = _json_object(payload)
    if obj is None:
        return None
    encoded, key_id = obj.get("key"), obj.get("key_id")
    if not isinstance(encoded, str) or type(key_id) is not int or not 0 <= key_id <= MAX_KEY_ID:
        return None
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(key) != KEY_BYTES:
        return None
    return Channel(key, key_id, Direction.TO_SERVER)


def open_datagram(session: Session, data: bytes, *, sent: bool) -> Opening | None:
    """
    What the session can read of a sealed datagram, for L{describe_datagram}:
    None when it holds no key (or the datagram is not native).

    One this client C{sent} is opened as the server would open it, but
    without the server's replay window, so that a replay sent with udpraw
    still shows what it carries; nothing changes. One it received goes
    through the session's Channel, like any client's: it refuses replays and
    datagrams under another key, and an authenticated one moves the
    Channel's replay window.

    @see: L{chatd.debug.describe.describe_datagram}
    """
    channel = session.channel
    if channel is None or not data or data[0] != SEALED_MARKER:
        return None
    try:
        header = peek_header(data)
        if header.key_id != channel.key_id:
            return Unopened(f"sealed under key id {header.key_id}, not this client's key id {channel.key_id}")
        if sent:
            _, frame_type, body = Sealer(channel.key).open(Direction.TO_SERVER, data)
        else:
            frame_type, body = channel.open(data, header)
    except ProtocolError as error:
        return Unopened(str(error))
    return Opened(frame_type, body)


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
