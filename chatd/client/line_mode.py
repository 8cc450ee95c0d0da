"""
Line mode of C{chatd-chat} (C{--line}): chat from scripts and bots.

    chatd-chat --line --room R --name N [--password P | --invite T] [--create] [--json]

It creates or joins the room, then sends each line of standard input as one
message, and writes everything it hears to standard output, one event per
line, each line written as soon as the event arrives. At the end of input it
sends a last line that has no newline; then, as at C{/exit}, it leaves the
room and exits 0.

Input: UTF-8 lines ending in LF; a CR before the LF is dropped; an empty line
is not sent; a line that is not UTF-8, or too long for one datagram, is not
sent and a warning goes to standard error. Lines read while the client is
reconnecting wait (up to 1000 of them, L{PENDING_LIMIT}; more are not sent,
each with a warning) and go out once it is back in the room.

Commands: a line that starts with C{/} is a command, as in the terminal app
(chatd.client.commands; the name's case does not matter), never text for the
room. Their answers go to standard output and start with C{= }:

    =====================  ====================================================
    line                   what it does
    =====================  ====================================================
    C{/exit} (C{/quit},    as the end of input: leave the room, exit 0; the
    C{/leave})             lines after it are not read
    C{/close}              the host only: the same (the host leaving closes
                           the room for everyone)
    C{/who}                C{= members of hoge: alice, bob}
    C{/me TEXT}            sends the action C{/me TEXT}
    C{/invite}             the host only: C{= invitation to hoge: TOKEN}
    C{/help}               one line per command: C{= /who: list the room's
                           members}
    C{//TEXT}              sends C{/TEXT}: text that starts with a slash, as
                           in IRC
    =====================  ====================================================

An unknown command (C{/frobnicate}), a command used wrongly (C{/me} alone),
or one only the host may use is one line on standard error, and nothing is
sent. Nor is a message that is just C{/exit} (C{//exit}): the server would
take it for leaving the room.

Standard error gets one line per warning, each written only once the
standard output lines before it have gone out, so that the two, read
together, keep the order of the input. An answer still on its way at the end
of input (C{/invite}) is waited for, up to L{ANSWER_TIMEOUT} (5 s).

End of input while reconnecting: nothing to wait for if every line read was
sent, so the client stops reconnecting, and exits 0 at once. Lines that still
wait get L{RECONNECT_GRACE} (5 s) for the connection to come back; if it does
not, they are given up and the exit status is 3, with C{end of input while
reconnecting; 2 lines not sent} on standard error. Either way the process ends
within RECONNECT_GRACE + FLUSH_TIMEOUT + LEAVE_TIMEOUT + the output's
CLOSE_TIMEOUT (16 s) of the end of input, wherever the server is.

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

Exit status, with one line C{chatd-chat: ...} on standard error for every
status but 0 (argparse writes its own for 2). That line is written once
standard output has drained and closed, so it comes after the event it
explains, also where both go to one file:

    = =====================================================================
    0 end of input or C{/exit}: we left the room (or nobody reads our
      output any more)
    1 could not enter the room: server not running or unreachable, room
      exists, no such room, wrong password, invalid invitation, name taken
    2 usage: bad or missing arguments (from argparse, before we start)
    3 the room ended under us: closed by its host, or we were removed for
      inactivity, or the connection was lost for good; or the input ended
      while reconnecting, and lines read were never sent
    4 an unexpected error (a bug): reported in one line, no traceback
    = =====================================================================

A server that stops is not the end: the client reconnects (see
chatd.client.chat_client), and line mode goes on once it is back, unless the input ends
first (above).
"""

from __future__ import annotations

import contextlib
import json
import sys
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, assert_never

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from chatd.client.chat_cli import ChatArguments, make_client
from chatd.client.chat_client import ConnectionState, IChatListener, RoomInfo
from chatd.client.commands import Command, HelpEntry, Parsed, Run, Say, Unknown, Usage, parse
from chatd.client.events import (
    ACTION_PREFIX,
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
from chatd.client.stdio_lines import StdioLines
from chatd.protocol.errors import ChatError, MessageTooLongError, NotInRoomError

PROGRAM = "chatd-chat"

EXIT_OK = 0
EXIT_NOT_ENTERED = 1
EXIT_USAGE = 2
"""Given by argparse in chatd.client.chat_cli; ours only if called without a room or a name."""
EXIT_ENDED = 3
EXIT_INTERNAL = 4

FLUSH_TIMEOUT = 1.0
"""
Seconds to wait, at the end of input, for the server to confirm it has every
message sent: messages go by UDP and the leave by TCP, and the server must not
see the leave first (it would drop the message of a member who is gone).
"""
LEAVE_TIMEOUT = 5.0
"""Seconds leaving may take before we exit anyway (the server notices a closed connection)."""
RECONNECT_GRACE = 5.0
"""
Seconds that lines read while reconnecting wait, after the end of input (or
C{/exit}), for the connection to come back before they are given up.
"""
ANSWER_TIMEOUT = 5.0
"""Seconds the end waits for the answers to commands still on their way (an C{/invite})."""
PENDING_LIMIT = 1000
"""Lines read while reconnecting that are kept to send once back; more are dropped, each with a warning."""
EXIT_TEXT = "/exit"
"""A message of just this text is, to the server, leaving the room (the legacy protocol's word)."""


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


# -- slash commands: what a line means -----------------------------------------------------

LINE_HELP: tuple[HelpEntry, ...] = (
    HelpEntry("/help", "this list"),
    HelpEntry("/who", "list the room's members"),
    HelpEntry("/me TEXT", "send an action, shown as '* name TEXT'"),
    HelpEntry("/invite", "(host) make a single-use invitation token"),
    HelpEntry("/close", "(host) close the room for everyone, and exit"),
    HelpEntry("/exit", "leave the room and exit, as the end of input does (also /quit, /leave)"),
    HelpEntry("//TEXT", "send TEXT starting with one '/'"),
)


def parse_line(line: str) -> Parsed | None:
    """What a line of input asks for, as in the terminal app (chatd.client.commands); None for a blank line."""
    return parse(line)


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


# -- the session ---------------------------------------------------------------------------


def report_to_stderr(message: str) -> None:
    """Write C{chatd-chat: message} as one line to standard error."""
    try:
        sys.stderr.write(f"{PROGRAM}: {one_line(message)}\n")
        sys.stderr.flush()
    except OSError:
        # stderr may share stdout's file description, which stdio made
        # non-blocking; a warning lost is better than a crash.
        pass


class ConsoleOwner(Protocol):
    """What the console tells about its input and output (a LineSession, or a test's fake)."""

    def line_read(self, line: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def input_ended(self) -> None: ...

    def output_lost(self) -> None: ...


class LineConsole(StdioLines):
    """Standard input and output as lines: bytes in, text to the session; lines out."""

    MAX_LENGTH = 1 << 16
    """Longer than any message can be (one datagram); longer lines are dropped."""

    def __init__(self, session: ConsoleOwner) -> None:
        super().__init__()
        self._session = session
        self._input_ended = False
        self._skipping = False
        """Dropping the rest of a line that was too long, up to its newline."""
        self._resume_buffer = False

    def write_line(self, line: str) -> None:
        self.write_text(line)

    def pause_input(self) -> None:
        if self.transport is not None and not self._input_ended and not self.paused:
            self.pauseProducing()

    def resume_input(self) -> None:
        if self.transport is not None and not self._input_ended and self.paused:
            self.resumeProducing()

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._skipping:
            end = data.find(self.delimiter)
            if end < 0:
                return
            self._skipping = False
            data = data[end + len(self.delimiter) :]
        super().dataReceived(data)
        # LineReceiver stops at a line that is too long; the lines after it,
        # put back by lineLengthExceeded, still need reading.
        while self._resume_buffer and not self.paused:
            self._resume_buffer = False
            super().dataReceived(b"")

    @override
    def lineReceived(self, line: bytes) -> None:
        line = line.removesuffix(b"\r")
        if not line:
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._session.warn("not sent: the line is not valid UTF-8")
            return
        self._session.line_read(text)

    @override
    def lineLengthExceeded(self, line: bytes) -> None:
        # Not LineReceiver's default (hang up): one bad line should not end a bot.
        self._session.warn(f"not sent: a line of more than {self.MAX_LENGTH} bytes")
        _, found, rest = line.partition(self.delimiter)
        if found:
            self._buffer = rest
            self._resume_buffer = True
        else:
            self._skipping = True

    @override
    def input_ended(self) -> None:
        """End of input: send a last line without a newline, then end the session."""
        self._input_ended = True
        rest = self.clearLineBuffer()
        # Paused, the rest could not be sent now (reconnecting) or ever (ended).
        if not self._skipping and not self.paused:
            for line in rest.split(self.delimiter):
                self.lineReceived(line)
        self._session.input_ended()

    @override
    def output_lost(self) -> None:
        """Nobody reads our output any more: nothing left to do."""
        self._session.output_lost()

    @override
    def stdio_lost(self) -> None:
        self._session.output_lost()


@implementer(IChatListener)
class LineSession:
    """One run of line mode: lines from the console to the room, the room's events back."""

    def __init__(self, reactor: Any, arguments: ChatArguments, report: Callable[[str], None]) -> None:
        self._clock: IReactorTime = reactor
        self._arguments = arguments
        self._report = report
        self._format = format_json if arguments.json else format_text
        self.console = LineConsole(self)
        self.client = make_client(reactor, arguments, self)
        self.ended: Deferred[int] = Deferred()
        """Fires with the exit status once the session should end."""
        self.closing_message: str | None = None
        """Why the session ended, for standard error once standard output has drained."""
        self._room = arguments.room or ""
        self._last_sent: float | None = None
        self._reconnecting = False
        self._pending: deque[str] = deque()
        """Messages read while reconnecting, to send once back in the room."""
        self._input_over = False
        self._closing_room = False
        """/close was typed: the host leaves by closing the room on purpose."""
        """The end of input, or /exit, has come: no more lines are read."""
        self._grace: IDelayedCall | None = None
        self._answers_due: list[Deferred[None]] = []
        """Commands whose answer is on its way (an /invite): the end waits for them."""

    async def run(self, attach: Callable[[LineConsole], object]) -> int:
        """Enter the room, chat until the end, leave; the exit status."""
        try:
            attach(self.console)
            # Lines typed now would find no room to go to: they wait in the pipe.
            self.console.pause_input()
            status = await self._chat()
        except Exception as error:
            self.warn(_unexpected(error))
            status = EXIT_INTERNAL
            await self._leave()
        await self.console.close(self._clock)
        if self.closing_message is not None:
            # Only now: standard output is written by the reactor, later than a
            # write to standard error, and this line explains the last event.
            self.warn(self.closing_message)
        return status

    async def _chat(self) -> int:
        arguments = self._arguments
        room, name = arguments.room, arguments.name
        if room is None or name is None:
            self.warn("line mode needs --room and --name")
            return EXIT_USAGE
        try:
            if arguments.create:
                info = await self.client.create(room, name, arguments.password, native_only=arguments.native_only)
            else:
                info = await self.client.join(room, name, arguments.password, arguments.invite)
        except ChatError as error:
            self.warn(f"cannot {'create' if arguments.create else 'join'} room {room}: {error}")
            return EXIT_NOT_ENTERED
        if self.client.newly_pinned:
            self.warn(
                f"first TLS connection to {arguments.host} port {arguments.tcp_port}: pinned its certificate"
                f" {self.client.newly_pinned}; check it with whoever runs the server"
            )
        self._room = info.room
        self._write(Entered.from_info(info))
        self.console.resume_input()
        status = await self.ended
        await self._leave()
        return status

    async def _leave(self) -> None:
        if self._answers_due:
            # "/invite" then the end of input: the script wants its token.
            waiting = DeferredList(list(self._answers_due), consumeErrors=True)
            with contextlib.suppress(Exception):
                await waiting.addTimeout(ANSWER_TIMEOUT, self._clock)
        if self._last_sent is not None and self.client.state is ConnectionState.IN_ROOM:
            # The server answers datagrams in order: once it answers this
            # keepalive, every earlier message has been relayed.
            await self.client.flush(FLUSH_TIMEOUT)
        # Leaving is closing our own sockets (and, while reconnecting, no longer
        # retrying); the server notices either way, and a failure here must not
        # hide the exit status.
        with contextlib.suppress(Exception):
            # /close tells the others the host closed the room on purpose.
            closing = self._closing_room and self.client.state is ConnectionState.IN_ROOM
            leaving = self.client.close_room() if closing else self.client.leave()
            await leaving.addTimeout(LEAVE_TIMEOUT, self._clock)

    def _end(self, status: int, message: str | None = None) -> None:
        if self.ended.called:
            return
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if self._pending and message is not None:
            message = f"{message}; {_count_lines(len(self._pending))} not sent"
        self._pending.clear()
        self.closing_message = message
        self.console.pause_input()
        self.ended.callback(status)

    def warn(self, message: str) -> None:
        # After the output lines before it: it may be about one of them.
        self.console.after_output(lambda: self._report(message))

    def _write(self, event: LineEvent) -> None:
        self.console.write_line(self._format(event))

    # -- from the console ------------------------------------------------------------------

    def line_read(self, line: str) -> None:
        """One line of input: a message, or (starting with C{/}) a command."""
        if not line.startswith("/") and line.strip() != EXIT_TEXT:
            # Text as it is (blank lines too); " /exit " is refused by the parser.
            self._say(line)
            return
        match parse_line(line):
            case Say(text=text):
                self._say(text)
            case Run() as command:
                self._run(command)
            case Unknown(name=name):
                self.warn(f"unknown command /{name}: not sent (/help lists the commands; //{name} sends it as text)")
            case Usage(message=message):
                self.warn(message)
            case None:
                pass

    def _say(self, text: str) -> None:
        if self._reconnecting:
            if len(self._pending) < PENDING_LIMIT:
                self._pending.append(text)
            else:
                self.warn(f"not sent: reconnecting, and {PENDING_LIMIT} lines already wait")
            return
        self._send(text)

    def _send(self, text: str) -> None:
        try:
            self.client.send(text)
        except (MessageTooLongError, NotInRoomError) as error:
            self.warn(f"not sent: {error}")
        else:
            self._last_sent = self._clock.seconds()

    def _run(self, run: Run) -> None:
        match run.command:
            case Command.ME:
                self._say(ACTION_PREFIX + run.argument)
            case Command.HELP:
                for entry in LINE_HELP:
                    self._write(HelpLine(entry.usage, entry.description))
            case Command.WHO:
                self._write(Members(self._room, self.client.members))
            case Command.INVITE:
                self._invite()
            case Command.CLOSE:
                # A room lasts as long as its host stays: the host leaving closes it.
                if self._is_host():
                    self._closing_room = True
                    self._finish_input()
                else:
                    self.warn(f"only the room's host can close it; {EXIT_TEXT} leaves it")
            case Command.LEAVE | Command.QUIT:
                # Line mode has no other room to go to: leaving is the end.
                self._finish_input()
            case _:
                assert_never(run.command)

    def _is_host(self) -> bool:
        info = self.client.info
        return info is not None and info.host

    def _invite(self) -> None:
        if not self._is_host():
            self.warn("only the room's host can invite; ask the host for an invitation")
            return

        def show(token: str) -> None:
            self._write(Invitation(self._room, token))

        def failed(failure: Failure) -> None:
            self.warn(f"no invitation: {failure.getErrorMessage()}")

        answered = self.client.invite().addCallbacks(show, failed)
        if not answered.called:
            self._answers_due.append(answered)
            answered.addBoth(lambda _: self._answers_due.remove(answered))

    def _finish_input(self) -> None:
        """The end of input, or /exit: send what waits, then leave and exit."""
        if self._input_over:
            return
        self._input_over = True
        # After /exit, the lines that follow it are left unread.
        self.console.pause_input()
        if not self._pending:
            # Nothing waits to be sent, so nothing to wait for, even while
            # reconnecting: leaving stops the retries.
            self._end(EXIT_OK)
            return
        self._grace = self._clock.callLater(RECONNECT_GRACE, self._give_up)

    def _give_up(self) -> None:
        self._grace = None
        self._end(EXIT_ENDED, "end of input while reconnecting")

    def input_ended(self) -> None:
        self._finish_input()

    def output_lost(self) -> None:
        self._end(EXIT_OK)

    # -- from the client -------------------------------------------------------------------

    def chat_event(self, event: ChatEvent) -> None:
        self._write(event)
        match event:
            case ConnectionLost(will_reconnect=True):
                # Input is still read, so that its end is seen (and ends the
                # session); messages wait in _pending until we are back.
                self._reconnecting = True
            case ConnectionLost():
                self._end(EXIT_ENDED, f"lost the connection to the server: {event.reason}")
            case Reconnected():
                self._reconnecting = False
                self._room = event.room
                while self._pending and not self._reconnecting:
                    self._send(self._pending.popleft())
                if self._input_over:
                    self._end(EXIT_OK)
            case RoomClosed() | RemovedForInactivity():
                self._end(EXIT_ENDED, event.text.removeprefix("* "))
            case _:
                pass


def run_line_mode(
    reactor: Any,
    arguments: ChatArguments,
    *,
    attach: Callable[[LineConsole], object] | None = None,
    report: Callable[[str], None] = report_to_stderr,
) -> Deferred[int]:
    """
    Run line mode on C{reactor}; fire with the exit status (never fail).

    C{attach} connects the console to its input and output (standard I/O
    unless a test gives another transport); C{report} writes one line to
    standard error.
    """
    if attach is None:

        def attach(console: LineConsole) -> object:
            stdio = StandardIO(console, reactor=reactor)
            console.watch_output()
            return stdio

    session = LineSession(reactor, arguments, report)

    def internal_error(failure: Failure) -> int:
        # Whatever escaped the session's own handling: still one line, no traceback.
        report(_unexpected(failure.value))
        return EXIT_INTERNAL

    return Deferred.fromCoroutine(session.run(attach)).addErrback(internal_error)


def _count_lines(count: int) -> str:
    return f"{count} line{'s' if count != 1 else ''}"


def _unexpected(error: object) -> str:
    return f"unexpected error: {error.__class__.__name__}: {error}"
