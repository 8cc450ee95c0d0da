"""
What to tell the person when something fails, and where they can fix it.

Pure: an exception in, a sentence and the field to correct out. No
traceback ever reaches the screen; an error we did not expect is named by
its type and message, which is still more use than silence. Also the small
helpers that turn the server's and the client's words into the chat
screen's sentences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from chatd.client.events import ConnectionLost
from chatd.protocol.errors import (
    ChatError,
    ConnectionClosedError,
    ConnectionFailedError,
    InvalidInvitationError,
    InvalidNameError,
    InvalidPasswordError,
    RateLimitedError,
    RoomExistsError,
    RoomFullError,
    RoomNotFoundError,
    ServerFullError,
    UsernameTakenError,
)
from chatd.tui.screens import Field, RoomChoice


class Fix(Enum):
    """Which screen the correction belongs on."""

    NAME = "name"
    ROOM = "room"


@dataclass(frozen=True, slots=True)
class Explanation:
    text: str
    fix: Fix = Fix.ROOM
    field: Field = Field.ROOM


def _last_reason(text: str) -> str:
    """
    The innermost reason of a chained message, which is the one a person can
    act on: "cannot reach ...: ConnectionRefusedError (Connection was refused
    by other side: 111: Connection refused.)" says "Connection refused".
    """
    inner = text.rpartition("(")[2].rstrip(").") if "(" in text else text
    last = re.sub(r"^\[Errno -?\d+\]\s*", "", inner.rpartition(": ")[2].strip())
    return last.rstrip(".") or text


def describe(error: BaseException | None) -> str:
    """A short description of any error, for notices in the chat screen."""
    if error is None:
        return "unknown error"
    if isinstance(error, ChatError):
        return str(error) or type(error).__name__
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def explain_entry_failure(error: BaseException, name: str, choice: RoomChoice) -> Explanation:
    """Why creating or joining failed, said so that the person knows what to change."""
    room = choice.room
    if isinstance(error, ConnectionFailedError):
        return Explanation(
            f"Cannot reach chatd at {choice.host}, TCP port {choice.tcp_port} ({_last_reason(str(error))}):"
            " is the server running, and is that its address?",
            field=Field.HOST,
        )
    if isinstance(error, RoomExistsError):
        return Explanation(f"Room “{room}” already exists: choose “join a room”, or another room name.")
    if isinstance(error, RoomNotFoundError):
        return Explanation(f"There is no room “{room}”: check its name, or choose “create a room”.")
    if isinstance(error, InvalidPasswordError):
        if choice.password:
            return Explanation(f"Wrong password for room “{room}”.", field=Field.PASSWORD)
        return Explanation(f"Room “{room}” needs its password, or an invitation from its host.", field=Field.PASSWORD)
    if isinstance(error, InvalidInvitationError):
        return Explanation(
            "That invitation does not open this room: it may be used up, expired, or for another room."
            " Ask the host for a new one (/invite).",
            field=Field.INVITE,
        )
    if isinstance(error, UsernameTakenError):
        return Explanation(f"Someone in room “{room}” is already called “{name}”: pick another name.", fix=Fix.NAME)
    if isinstance(error, InvalidNameError):
        # The server words these "user name ..." or "room name ...".
        if str(error).startswith("user name"):
            return Explanation(f"The server refuses that name: {error}.", fix=Fix.NAME)
        return Explanation(f"The server refuses that room name: {error}.")
    if isinstance(error, RoomFullError):
        return Explanation(f"Room “{room}” is full: {error}.")
    if isinstance(error, ServerFullError | RateLimitedError):
        return Explanation(f"The server is busy ({error}); try again in a moment.")
    if isinstance(error, ConnectionClosedError):
        return Explanation(f"The server hung up before answering ({error}); try again.", field=Field.HOST)
    return Explanation(f"Could not enter room “{room}”: {describe(error)}.")


# -- sentences for the chat screen, from the client's events ------------------------------


def duration(seconds: float) -> str:
    """'45 s', '2 min': how long until the client gives up, as a person would say it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def clause(text: str) -> str:
    """A server's or Twisted's text to quote: no '* ' notice mark, a capital, no full stop."""
    text = text.removeprefix("* ").strip().rstrip(".") or "no reason given"
    return text[0].upper() + text[1:]


def lost_connection(event: ConnectionLost) -> str:
    """The 'Lost the connection' sentence, without its end: why, when the reason says more than the socket's."""
    explanation = event.explanation
    if explanation is None:
        return "Lost the connection to the server"
    return f"Lost the connection to the server: {clause(explanation)}"


def sentence(text: str) -> str:
    """A server's or the client's words as a sentence of our own: a capital and a full stop."""
    return clause(text) + "."
