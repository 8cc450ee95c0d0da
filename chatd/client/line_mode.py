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

Commands: a line that starts with C{/} is a command, as in the terminal app,
never text for the room: C{/exit}, C{/who}, C{/me TEXT}, C{/retry}, C{/stats},
C{/help}, ...; their answers go to standard output and start with C{= }
(chatd.client.line_commands lists them).

Reliable delivery (a server with the "delivery" feature, docs/reliability.md):
the client sends each message again until the server acknowledges it. A
message it gives up on is one line, C{! not delivered: TEXT (/retry sends it
again)}, and C{/retry} sends every such message again under its own id, so
that none is shown twice. Messages said before we entered come first, each
marked C{[history] }.

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

Output: one line per event, as text (C{* bob joined hoge}, C{alice: hello})
or, with C{--json}, as a JSON object (chatd.client.line_output lists every
event and its fields).

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
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.client.chat_cli import ChatArguments, make_client
from chatd.client.chat_client import ConnectionState, IChatListener
from chatd.client.events import ChatEvent, ConnectionLost, Reconnected, RemovedForInactivity, RoomClosed
from chatd.client.line_commands import read_line
from chatd.client.line_console import LineConsole, report_to_stderr
from chatd.client.line_output import Entered, LineEvent, format_json, format_text
from chatd.protocol.errors import ChatError, MessageTooLongError, NotInRoomError

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
        """The end of input, or /exit, has come: no more lines are read."""
        self._closing_room = False
        """/close was typed: the host leaves by closing the room on purpose."""
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
        self.write(Entered.from_info(info))
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

    # -- what the commands act on (line_commands.CommandTarget) ----------------------------

    def warn(self, message: str) -> None:
        # After the output lines before it: it may be about one of them.
        self.console.after_output(lambda: self._report(message))

    @property
    def room(self) -> str:
        return self._room

    def write(self, event: LineEvent) -> None:
        line = self._format(event)
        # None: the text form leaves the event out (a message of ours that was sent).
        if line is not None:
            self.console.write_line(line)

    def say(self, text: str) -> None:
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

    def answer_due(self, answer: Deferred[None]) -> None:
        self._answers_due.append(answer)
        answer.addBoth(lambda _: self._answers_due.remove(answer))

    def finish_input(self, *, closing_room: bool = False) -> None:
        """The end of input, or /exit: send what waits, then leave and exit."""
        if closing_room:
            self._closing_room = True
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

    # -- from the console ------------------------------------------------------------------

    def line_read(self, line: str) -> None:
        """One line of input: a message, or (starting with C{/}) a command."""
        read_line(self, line)

    def input_ended(self) -> None:
        self.finish_input()

    def output_lost(self) -> None:
        self._end(EXIT_OK)

    # -- from the client -------------------------------------------------------------------

    def chat_event(self, event: ChatEvent) -> None:
        self.write(event)
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
