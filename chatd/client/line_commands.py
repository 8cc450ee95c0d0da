"""
Line mode's slash commands (chatd.client.line_mode): what a line of input
does in the room.

A line that starts with C{/} is a command, as in the terminal app
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
    C{/retry}              sends our messages that were not delivered again:
                           C{= sending 2 messages again}, or C{= nothing to
                           send again: no message failed}
    C{/stats}              our own delivery counts: C{= delivery: 3 messages
                           sent again, 1 repaired, 0 duplicates dropped, 0
                           missed; path: UDP}
    C{/help}               one line per command: C{= /who: list the room's
                           members}
    C{//TEXT}              sends C{/TEXT}: text that starts with a slash, as
                           in IRC
    =====================  ====================================================

Without reliable delivery (an older server), C{/retry} and C{/stats} both
answer C{= this server does not offer reliable delivery: each message is sent
once, without acknowledgement}: a fact about the server, not a mistake.

An unknown command (C{/frobnicate}), a command used wrongly (C{/me} alone),
or one only the host may use is one line on standard error, and nothing is
sent. Nor is a message that is just C{/exit} (C{//exit}): the server would
take it for leaving the room.

The commands act on the session through L{CommandTarget}; the session
keeps the state (what waits to be sent, when to end).
"""

from __future__ import annotations

from typing import Protocol, assert_never

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from chatd.client.chat_client import ChatClient
from chatd.client.commands import EXIT_TEXT, Command, HelpEntry, Run, Say, Unknown, Usage, parse
from chatd.client.events import ACTION_PREFIX
from chatd.client.line_output import HelpLine, Invitation, LineEvent, Members, Retried, StatsReport
from chatd.protocol.errors import NotInRoomError

LINE_HELP: tuple[HelpEntry, ...] = (
    HelpEntry("/help", "this list"),
    HelpEntry("/who", "list the room's members"),
    HelpEntry("/me TEXT", "send an action, shown as '* name TEXT'"),
    HelpEntry("/invite", "(host) make a single-use invitation token"),
    HelpEntry("/close", "(host) close the room for everyone, and exit"),
    HelpEntry("/exit", "leave the room and exit, as the end of input does (also /quit, /leave)"),
    HelpEntry("/retry", "send your messages that were not delivered again"),
    HelpEntry("/stats", "your delivery counts: messages sent again, repaired, missed; the path"),
    HelpEntry("//TEXT", "send TEXT starting with one '/'"),
)
"""
Not the terminal app's chatd.client.commands.HELP: here /close and /exit end
the process, and there is no other room for /leave to pick.
"""


class CommandTarget(Protocol):
    """What the commands act on: the session (a LineSession)."""

    client: ChatClient

    @property
    def room(self) -> str:
        """The room we are in, as the server last named it."""
        ...

    def say(self, text: str) -> None:
        """Send C{text} to the room, now or, while reconnecting, once back."""

    def write(self, event: LineEvent) -> None:
        """One line to standard output."""

    def warn(self, message: str) -> None:
        """One line to standard error."""

    def finish_input(self, *, closing_room: bool = False) -> None:
        """Read no more: leave (closing the room, as its host) and exit, as at the end of input."""

    def answer_due(self, answer: Deferred[None]) -> None:
        """An answer is on its way: the end waits for it."""


def read_line(session: CommandTarget, line: str) -> None:
    """One line of input: a message, or (starting with C{/}) a command."""
    if not line.startswith("/") and line.strip() != EXIT_TEXT:
        # Text as it is (blank lines too); " /exit " is refused by the parser.
        session.say(line)
        return
    match parse(line):
        case Say(text=text):
            session.say(text)
        case Run() as command:
            run_command(session, command)
        case Unknown(name=name):
            session.warn(f"unknown command /{name}: not sent (/help lists the commands; //{name} sends it as text)")
        case Usage(message=message):
            session.warn(message)
        case None:
            pass


def run_command(session: CommandTarget, command: Run) -> None:
    """Do a known command."""
    match command.command:
        case Command.ME:
            session.say(ACTION_PREFIX + command.argument)
        case Command.HELP:
            for entry in LINE_HELP:
                session.write(HelpLine(entry.usage, entry.description))
        case Command.WHO:
            session.write(Members(session.room, session.client.members))
        case Command.INVITE:
            _invite(session)
        case Command.CLOSE:
            # A room lasts as long as its host stays: the host leaving closes it.
            if _is_host(session):
                session.finish_input(closing_room=True)
            else:
                session.warn(f"only the room's host can close it; {EXIT_TEXT} leaves it")
        case Command.LEAVE | Command.QUIT:
            # Line mode has no other room to go to: leaving is the end.
            session.finish_input()
        case Command.RETRY:
            _retry(session)
        case Command.STATS:
            client = session.client
            session.write(StatsReport(client.delivery_stats if client.delivery else None))
        case _:
            assert_never(command.command)


def _is_host(session: CommandTarget) -> bool:
    info = session.client.info
    return info is not None and info.host


def _retry(session: CommandTarget) -> None:
    client = session.client
    if not client.delivery:
        session.write(Retried(delivery=False))
        return
    try:
        ids = client.retry()
    except NotInRoomError as error:
        # Reconnecting: the client sends what is unacknowledged once back anyway.
        session.warn(f"not sent again: {error}")
        return
    session.write(Retried(delivery=True, ids=tuple(ids)))


def _invite(session: CommandTarget) -> None:
    if not _is_host(session):
        session.warn("only the room's host can invite; ask the host for an invitation")
        return

    def show(token: str) -> None:
        session.write(Invitation(session.room, token))

    def failed(failure: Failure) -> None:
        session.warn(f"no invitation: {failure.getErrorMessage()}")

    answered = session.client.invite().addCallbacks(show, failed)
    if not answered.called:
        session.answer_due(answered)
