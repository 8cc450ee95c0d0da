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
    message from the history      C{[history] alice: hello}, C{[history] * alice
    (said before we entered)      waves}
    our message not delivered     C{! not delivered: hello (/retry sends it again)}
    our message sending, sent     nothing: only the failure needs a reader's eye
    messages missed               C{! 3 messages missed}
    room created again            C{! room hoge was created again: earlier messages
                                  are gone} (the client's words)
    delivery path changed         C{! UDP blocked: messages go over TCP},
                                  C{! UDP works again}
    ============================  =================================================

The lines marked C{!} after "message from the history" come only from a server
with reliable delivery (the "delivery" feature, docs/reliability.md); they
carry the client library's own sentence after the C{! }. Our own messages are
not printed when sent (they are what we wrote), only when they fail for good.

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
                         C{action} (bool: the text starts with C{/me }); with
                         reliable delivery also C{seq} (int: its place in the
                         room) and C{history} (bool: said before we entered)
    C{"message_state"}   C{id} (int: ours, for the message), C{state}
                         (C{"sending"}, C{"sent"} or C{"not delivered"}), C{seq}
                         (int once sent, else null), C{text}: one of our messages
    C{"missed"}          C{first}, C{last}, C{count} (ints), C{text}: messages
                         older than the room's history, never to be shown
    C{"room_recreated"}  C{room}, C{text}: numbering started again
    C{"path"}            C{path} (C{"udp"} or C{"tcp"}), C{text}
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
    C{"retried"}         C{delivery} (bool: the server offers it), C{ids} (the
                         messages sent again): the answer to C{/retry}
    C{"stats"}           C{delivery} (bool), C{retransmissions}, C{repaired},
                         C{duplicates}, C{missed} (ints), C{path} (C{"udp"} or
                         C{"tcp"}); all null without the feature: C{/stats}
    ===================  ===========================================================

    {"event": "message", "sender": "alice", "text": "hello", "time": 1795885041.972, "action": false}
    {"event": "message", "sender": "jo", "text": "hi", "time": 1795885000.5, "action": false, "seq": 7, "history": true}
    {"event": "message_state", "id": 3, "state": "not delivered", "seq": null, "text": "hello"}

The C{seq} and C{history} of a message are there exactly when the server
numbers messages (reliable delivery); without it a message object is what it
always was, byte for byte. Every state of our messages is written in JSON,
"sending" and "sent" included, so that a bot can wait for its acknowledgements.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any, assert_never

from chatd.client.chat_client import RoomInfo
from chatd.client.commands import NO_DELIVERY, retry_words, stats_words
from chatd.client.delivery import DeliveryStats
from chatd.client.events import (
    ChatEvent,
    ConnectionLost,
    DeliveryPathChanged,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    MessagesMissed,
    MessageStateChanged,
    Reconnected,
    Reconnecting,
    RemovedForInactivity,
    RoomClosed,
    RoomRecreated,
    ServerDegraded,
    ServerRecovered,
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


@dataclass(frozen=True, slots=True)
class Retried:
    """The answer to C{/retry}: which failed messages went again."""

    delivery: bool
    """The server offers reliable delivery; without it nothing is ever sent again."""
    ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StatsReport:
    """The answer to C{/stats}: our own delivery counts, None without the feature."""

    stats: DeliveryStats | None


CommandAnswer = Members | Invitation | HelpLine | Retried | StatsReport
LineEvent = ChatEvent | Entered | CommandAnswer
"""Everything line mode prints."""


HISTORY_MARK = "[history] "
"""
Before a message said before we entered: a script that only wants what is
new drops these lines, and a person reading sees why old talk appears.
"""
NOT_DELIVERED = "not delivered"
"""The state (L{MessageStateChanged}) of a message the client gave up on."""


# -- formatting: pure, one event to one line -----------------------------------------------


def format_text(event: LineEvent) -> str | None:
    """The text form of C{event}: one line, without its newline; None for an event the text form leaves out."""
    match event:
        case Entered():
            verb = "created" if event.host else "joined"
            line = f"* you {verb} {event.room} as {event.user}; members: {', '.join(event.members)}"
        case MessageReceived():
            line = f"* {event.sender} {event.action}" if event.is_action else f"{event.sender}: {event.text}"
            if event.history:
                line = HISTORY_MARK + line
        case MessageStateChanged():
            # "sending" and "sent" are the normal course of every line we
            # write; only a message given up on needs the reader to act.
            if event.state != NOT_DELIVERED:
                return None
            line = f"! not delivered: {event.text} (/retry sends it again)"
        case MessagesMissed() | RoomRecreated() | DeliveryPathChanged():
            line = f"! {event.text}"
        case MemberJoined() | MemberLeft() | RoomClosed() | RemovedForInactivity() | ServerStopping() | Throttled():
            line = event.text
        case ServerDegraded() | ServerRecovered():
            line = event.text
        case ConnectionLost():
            why = f": {event.explanation}" if event.explanation is not None else ""
            line = f"! lost the connection to the server{why}" + ("; reconnecting" if event.will_reconnect else "")
        case Reconnecting():
            line = _reconnecting_line(event)
        case Reconnected():
            line = _reconnected_line(event)
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
        case Retried():
            line = f"= {retry_words(event.ids) if event.delivery else NO_DELIVERY}"
        case StatsReport():
            line = f"= {NO_DELIVERY}" if event.stats is None else f"= delivery: {stats_words(event.stats)}"
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
            message: dict[str, Any] = {
                "event": "message",
                "sender": event.sender,
                "text": event.text,
                "time": event.time,
                "action": event.is_action,
            }
            if event.seq is not None or event.history:
                # Only from a server that numbers messages: without it, the
                # object stays what scripts have always read.
                message |= {"seq": event.seq, "history": event.history}
            return message
        case MessageStateChanged():
            return {
                "event": "message_state",
                "id": event.message_id,
                "state": event.state,
                "seq": event.seq,
                "text": event.text,
            }
        case MessagesMissed():
            return {
                "event": "missed",
                "first": event.first,
                "last": event.last,
                "count": event.count,
                "text": event.text,
            }
        case RoomRecreated():
            return {"event": "room_recreated", "room": event.room, "text": event.text}
        case DeliveryPathChanged():
            return {"event": "path", "path": event.path, "text": event.text}
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
        case ServerDegraded():
            return {"event": "server_degraded", "room": event.room, "text": event.text}
        case ServerRecovered():
            return {"event": "server_recovered", "room": event.room, "text": event.text}
        case ConnectionLost():
            return {"event": "connection_lost", "reason": event.reason, "will_reconnect": event.will_reconnect}
        case Reconnecting():
            return {
                "event": "reconnecting",
                "attempt": event.attempt,
                "delay": event.delay,
                "server": event.server or None,
                "resuming": event.resuming,
            }
        case Reconnected():
            return {
                "event": "reconnected",
                "room": event.room,
                "members": list(event.members),
                "host": event.host,
                "server": event.server or None,
                "resumed": event.resumed,
                "as_host": event.as_host,
            }
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
        case Retried():
            return {"event": "retried", "delivery": event.delivery, "ids": list(event.ids)}
        case StatsReport():
            return _stats_object(event.stats)
        case _:
            assert_never(event)


def _stats_object(stats: DeliveryStats | None) -> dict[str, Any]:
    if stats is None:
        # The same keys either way: a script reads them without checking first.
        counts: dict[str, Any] = dict.fromkeys(("retransmissions", "repaired", "duplicates", "missed", "path"))
        return {"event": "stats", "delivery": False, **counts}
    return {
        "event": "stats",
        "delivery": True,
        "retransmissions": stats.retransmissions,
        "repaired": stats.repaired,
        "duplicates": stats.duplicates,
        "missed": stats.missed,
        # Lower case, as the "path" event's: DeliveryStats says "UDP" or "TCP".
        "path": stats.path.lower(),
    }


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


def _reconnecting_line(event: Reconnecting) -> str:
    """
    C{! reconnecting in 0.5 s (attempt 1)}, then where and how when the
    event says: C{: resuming on SERVER} (a resume first) or C{: to SERVER}.
    The words before stay as they were, for the scripts that look for them.
    """
    line = f"! reconnecting in {event.delay:g} s (attempt {event.attempt})"
    if event.server:
        line += f": resuming on {event.server}" if event.resuming else f": to {event.server}"
    return line


def _reconnected_line(event: Reconnected) -> str:
    """
    C{! reconnected to ROOM}, then how and where when the event says
    (C{: resumed as host on SERVER}, C{: resumed on SERVER}, C{ on SERVER}),
    then the members and the host (not named when it is us).
    """
    where = f" on {event.server}" if event.server else ""
    if event.resumed:
        where = f": resumed as host{where}" if event.as_host else f": resumed{where}"
    host = f"; host: {event.host}" if event.host is not None and not (event.resumed and event.as_host) else ""
    return f"! reconnected to {event.room}{where}; members: {', '.join(event.members)}{host}"
