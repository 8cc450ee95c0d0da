"""
What line mode (chatd.client.line_mode) prints: one event to one line of
standard output, as text or, with C{--json}, as JSON. Pure: no I/O, no client.

Output, text form (the default), for people and simple scripts. Room notices
start with C{* }, the client's own connection news with C{! }:

    ============================  =================================================
    event                         line
    ============================  =================================================
    entered the room (first)      C{* you created hoge as alice; members: alice}
                                  C{* you joined hoge as bob; members: alice, bob}
    message                       C{alice: hello}
    action (C{/me waves})         C{* alice waves}
    member joined, left, timed    the server's notice text: C{* bob joined hoge},
    out; room closed; removed     C{* bob left hoge}, C{* room hoge was closed: the
    for inactivity; server        host left}, C{* you were removed from hoge after
    stopping                      300 s without activity}, ...
    connection lost               C{! lost the connection to the server; reconnecting}
                                  (C{: <reason>} after "server" when the reason
                                  says more than that the connection closed;
                                  without C{; reconnecting} if it will not)
    reconnecting                  C{! reconnecting in 0.43 s (attempt 1)}
    reconnected                   C{! reconnected to hoge; members: alice, bob;
                                  host: alice}
    waiting for the host          C{! waiting for alice to reopen hoge: trying
                                  again in 1.8 s (attempt 3; giving up in 55 s)}
    UDP unanswered; back again    C{! no UDP from the server for 12 s: messages
                                  cannot be delivered}; C{! UDP from the server
                                  again: messages are delivered}
    ============================  =================================================

Control characters (and U+2028, U+2029) in names and texts are written as
escapes (C{\\n}, C{\\r}, C{\\x1b}, C{\\u2028}) so that one event stays one line;
a backslash is written as it is, so the text form is not exact: use C{--json}.

Output, JSON form (C{--json}): one JSON object per line, UTF-8 (not ASCII
escapes), always starting with C{"event"}; keys in the order below. These names
and fields are stable; new keys may be added at the end, never removed.

    ===================  ===========================================================
    C{"event"}           other keys
    ===================  ===========================================================
    C{"entered"}         C{room}, C{user}, C{host} (bool: we created it), C{members}
    C{"message"}         C{sender}, C{text} (exact, C{/me } included), C{time}
                         (float, seconds since the epoch, the server's clock),
                         C{action} (bool: the text starts with C{/me })
    C{"joined"}          C{user}, C{members} (everyone now), C{text}
    C{"left"}            C{user}, C{members} (who remain), C{text}, C{timed_out}
                         (bool: removed for inactivity rather than leaving)
    C{"room_closed"}     C{room}, C{reason}, C{text}
    C{"removed"}         C{room}, C{text}: we were removed for inactivity
    C{"server_stopping"} C{room}, C{text}
    C{"throttled"}       C{room}, C{text}: we sent too fast, messages were dropped
    C{"connection_lost"} C{reason}, C{will_reconnect} (bool)
    C{"reconnecting"}    C{attempt} (int), C{delay} (float seconds)
    C{"reconnected"}     C{room}, C{members}, C{host} (string, or null if unknown)
    C{"waiting_for_host"} C{room}, C{host} (or null), C{attempt}, C{delay},
                         C{gives_up_in} (float seconds)
    C{"udp_lost"}        C{silent_for} (float seconds since the last datagram)
    C{"udp_restored"}    (nothing more)
    C{"members"}         C{room}, C{members}: the answer to C{/who}
    C{"invitation"}      C{room}, C{token}: the answer to C{/invite}
    C{"help"}            C{usage}, C{description}: one per command, for C{/help}
    ===================  ===========================================================

    {"event": "message", "sender": "alice", "text": "hello", "time": 1795885041.972, "action": false}
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any, assert_never

from chatd.client.chat_client import RoomInfo
from chatd.client.events import (
    ChatEvent,
    ConnectionLost,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Reconnected,
    Reconnecting,
    RemovedForInactivity,
    RoomClosed,
    ServerStopping,
    Throttled,
    UdpPathLost,
    UdpPathRestored,
    WaitingForHost,
)


@dataclass(frozen=True, slots=True)
class Entered:
    """We are in the room: the first line of every session that got in."""

    room: str
    user: str
    host: bool
    members: tuple[str, ...]

    @classmethod
    def from_info(cls, info: RoomInfo) -> Entered:
        return cls(info.room, info.user, info.host, info.members)


@dataclass(frozen=True, slots=True)
class Members:
    """The answer to C{/who}: who is in the room, as this client knows it."""

    room: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Invitation:
    """The answer to C{/invite}: a single-use token for the room."""

    room: str
    token: str


@dataclass(frozen=True, slots=True)
class HelpLine:
    """One line of the answer to C{/help}."""

    usage: str
    description: str


CommandAnswer = Members | Invitation | HelpLine
LineEvent = ChatEvent | Entered | CommandAnswer
"""Everything line mode prints."""


# -- formatting: pure, one event to one line -----------------------------------------------


def format_text(event: LineEvent) -> str:
    """The text form of C{event}: one line, without its newline."""
    match event:
        case Entered():
            verb = "created" if event.host else "joined"
            line = f"* you {verb} {event.room} as {event.user}; members: {', '.join(event.members)}"
        case MessageReceived():
            line = f"* {event.sender} {event.action}" if event.is_action else f"{event.sender}: {event.text}"
        case MemberJoined() | MemberLeft() | RoomClosed() | RemovedForInactivity() | ServerStopping() | Throttled():
            line = event.text
        case ConnectionLost():
            why = f": {event.explanation}" if event.explanation is not None else ""
            line = f"! lost the connection to the server{why}" + ("; reconnecting" if event.will_reconnect else "")
        case Reconnecting():
            line = f"! reconnecting in {event.delay:g} s (attempt {event.attempt})"
        case Reconnected():
            host = f"; host: {event.host}" if event.host is not None else ""
            line = f"! reconnected to {event.room}; members: {', '.join(event.members)}{host}"
        case WaitingForHost():
            host = event.host if event.host is not None else "the host"
            line = (
                f"! waiting for {host} to reopen {event.room}: trying again in {event.delay:g} s"
                f" (attempt {event.attempt}; giving up in {event.gives_up_in:.0f} s)"
            )
        case UdpPathLost():
            line = f"! no UDP from the server for {event.silent_for:.0f} s: messages cannot be delivered"
        case UdpPathRestored():
            line = "! UDP from the server again: messages are delivered"
        case Members():
            line = f"= members of {event.room}: {', '.join(event.members)}"
        case Invitation():
            line = f"= invitation to {event.room}: {event.token}"
        case HelpLine():
            line = f"= {event.usage}: {event.description}"
        case _:
            assert_never(event)
    return one_line(line)


def event_object(event: LineEvent) -> dict[str, Any]:
    """The JSON object of C{event}, as a dict in its documented key order."""
    match event:
        case Entered():
            return {
                "event": "entered",
                "room": event.room,
                "user": event.user,
                "host": event.host,
                "members": list(event.members),
            }
        case MessageReceived():
            return {
                "event": "message",
                "sender": event.sender,
                "text": event.text,
                "time": event.time,
                "action": event.is_action,
            }
        case MemberJoined():
            return {"event": "joined", "user": event.user, "members": list(event.members), "text": event.text}
        case MemberLeft():
            return {
                "event": "left",
                "user": event.user,
                "members": list(event.members),
                "text": event.text,
                "timed_out": event.timed_out,
            }
        case RoomClosed():
            return {"event": "room_closed", "room": event.room, "reason": event.reason, "text": event.text}
        case RemovedForInactivity():
            return {"event": "removed", "room": event.room, "text": event.text}
        case ServerStopping():
            return {"event": "server_stopping", "room": event.room, "text": event.text}
        case Throttled():
            return {"event": "throttled", "room": event.room, "text": event.text}
        case ConnectionLost():
            return {"event": "connection_lost", "reason": event.reason, "will_reconnect": event.will_reconnect}
        case Reconnecting():
            return {"event": "reconnecting", "attempt": event.attempt, "delay": event.delay}
        case Reconnected():
            return {"event": "reconnected", "room": event.room, "members": list(event.members), "host": event.host}
        case WaitingForHost():
            return {
                "event": "waiting_for_host",
                "room": event.room,
                "host": event.host,
                "attempt": event.attempt,
                "delay": event.delay,
                "gives_up_in": event.gives_up_in,
            }
        case UdpPathLost():
            return {"event": "udp_lost", "silent_for": event.silent_for}
        case UdpPathRestored():
            return {"event": "udp_restored"}
        case Members():
            return {"event": "members", "room": event.room, "members": list(event.members)}
        case Invitation():
            return {"event": "invitation", "room": event.room, "token": event.token}
        case HelpLine():
            return {"event": "help", "usage": event.usage, "description": event.description}
        case _:
            assert_never(event)


def format_json(event: LineEvent) -> str:
    """The JSON form of C{event}: one line, without its newline."""
    line = json.dumps(event_object(event), ensure_ascii=False)
    # json leaves these unescaped, and Python's str.splitlines (and JavaScript
    # before ES2019) would break the line at them.
    return line.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def one_line(text: str) -> str:
    """C{text} with every character that could break or garble a line written as an escape."""
    if not any(_breaks_line(char) for char in text):
        return text
    return "".join(_escape(char) if _breaks_line(char) else char for char in text)


def _breaks_line(char: str) -> bool:
    # Tab is harmless in a line; format characters (Cf) are kept because emoji
    # sequences need the zero-width joiner.
    return char != "\t" and unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _escape(char: str) -> str:
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
