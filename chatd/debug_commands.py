"""
The debug client's commands: what a typed line asks for, and what it learns.

L{parse_command} turns one line typed into C{chatd-debug} into an action
(L{SendFrame}, L{SendBytes}, L{SendDatagram}, L{ChangeDialect}, L{Show},
L{Connect}, L{Quit}) or refuses it with a L{CommandError}; L{advance} and
L{learn} move the L{Session} (dialect, room, token, invitation, ports) on
after an action is carried out or a frame arrives from the server.

It is pure: no reactor, no I/O. The session is a frozen value; these
functions return a new one and the caller keeps it, so every command and
everything the client learns can be tested without a connection. Carrying the actions out
is L{chatd.debug_client}'s job; turning bytes into text, L{chatd.debug_describe}'s.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from chatd.datagrams import FrameType, NativeFrame, encode_legacy, encode_native
from chatd.errors import ChatError
from chatd.payloads import Dialect, encode_json
from chatd.wire import PORT_SIZE, Frame, Operation, SizeEncoding, State

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
        return Show(f"dialect {session.dialect.value} ({DIALECT_NOTES[session.dialect]})")
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
