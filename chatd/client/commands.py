"""
What a line typed in the chat screen means: text to send, or a slash command.

Pure: no urwid, no client. The session decides what each command does; the
sentences that answer C{/retry} and C{/stats} are here, so that the terminal
app and line mode (chatd.client.line_commands) say the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from chatd.client.delivery import DeliveryStats


class Command(Enum):
    HELP = "help"
    WHO = "who"
    ME = "me"
    INVITE = "invite"
    LEAVE = "leave"
    CLOSE = "close"
    QUIT = "quit"
    RETRY = "retry"
    STATS = "stats"


@dataclass(frozen=True, slots=True)
class Say:
    """Text for the room, exactly as it goes on the wire."""

    text: str


@dataclass(frozen=True, slots=True)
class Run:
    """A known slash command; C{argument} is the rest of the line, stripped."""

    command: Command
    argument: str = ""


@dataclass(frozen=True, slots=True)
class Unknown:
    """A slash command nobody knows: said so, never sent as text."""

    name: str


@dataclass(frozen=True, slots=True)
class Usage:
    """A known command used wrongly; C{message} says how to use it."""

    message: str


Parsed = Say | Run | Unknown | Usage


@dataclass(frozen=True, slots=True)
class HelpEntry:
    usage: str
    description: str


HELP: tuple[HelpEntry, ...] = (
    HelpEntry("/help", "this list"),
    HelpEntry("/who", "list the room's members"),
    HelpEntry("/me TEXT", "send an action, shown as '* name TEXT'"),
    HelpEntry("/invite", "(host) make a single-use invitation token"),
    HelpEntry("/leave", "leave the room and pick another (a host leaving closes it)"),
    HelpEntry("/close", "(host) close the room for everyone"),
    HelpEntry("/quit", "leave the room and exit (also /exit, Ctrl-C)"),
    HelpEntry("/retry", "send your messages that were not delivered again"),
    HelpEntry("/stats", "your delivery counts: messages sent again, repaired, missed; the path"),
    HelpEntry("//TEXT", "send TEXT starting with one '/'"),
)

KEYS: tuple[HelpEntry, ...] = (
    HelpEntry("Up/Down", "earlier lines you typed"),
    HelpEntry("Tab", "complete a member's name or a command"),
    HelpEntry("PgUp/PgDn", "scroll the conversation"),
)

COMMAND_NAMES: tuple[str, ...] = tuple(f"/{command.value}" for command in Command)
"""For completion in the input line."""


ALIASES: dict[str, Command] = {"exit": Command.QUIT}
"""Other names of commands: C{/exit}, the legacy servers' word for leaving."""
EXIT_TEXT = "/exit"
"""A message the server reads as leaving the room, whatever the client meant."""


def parse(line: str) -> Parsed | None:
    """
    What C{line} asks for; None for a blank line (nothing to do).

    A leading "//" sends the rest with one "/", so text may start with a
    slash, except the text C{/exit}: the server would read it as leaving,
    and the client would rejoin at once, which nobody means.
    """
    if not line.strip():
        return None
    if not line.startswith("/") or line.startswith("//"):
        text = line[1:] if line.startswith("//") else line
        if text.strip() == EXIT_TEXT:
            return Usage(f"not sent: the server takes the text {EXIT_TEXT} as leaving the room; {EXIT_TEXT} leaves")
        return Say(text)
    name, _, rest = line[1:].partition(" ")
    argument = rest.strip()
    lowered = name.lower()
    try:
        command = ALIASES.get(lowered) or Command(lowered)
    except ValueError:
        return Unknown(name)
    if command is Command.ME and not argument:
        return Usage("/me needs some text: /me waves")
    return Run(command, argument)


# -- the answers to /retry and /stats, for both faces --------------------------------------

NO_DELIVERY = "this server does not offer reliable delivery: each message is sent once, without acknowledgement"
"""What /retry and /stats say to a server without the "delivery" feature (docs/reliability.md)."""


def retry_words(ids: Sequence[int]) -> str:
    """What /retry did, with the feature: how many messages go again, or that none had failed."""
    if not ids:
        return "nothing to send again: no message failed"
    return f"sending {_count(len(ids), 'message')} again"


def stats_words(stats: DeliveryStats) -> str:
    """
    The member's own delivery counts, in the order a person asks about them:
    what it had to send again, what was repaired or dropped on the way in,
    what was lost for good, and which path messages take.
    """
    return (
        f"{_count(stats.retransmissions, 'message')} sent again, {stats.repaired} repaired,"
        f" {_count(stats.duplicates, 'duplicate')} dropped, {stats.missed} missed; path: {path_words(stats.path)}"
    )


def path_words(path: str) -> str:
    """C{"UDP"}, or C{"TCP (UDP blocked)"}: the path in use, and why when it is not the usual one."""
    return "TCP (UDP blocked)" if path.lower() == "tcp" else "UDP"


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"
