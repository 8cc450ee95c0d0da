"""
The palette: every display attribute the widgets use, in one place.

Sixteen colours only, on the terminal's own background, so it reads the same
in a bare xterm, tmux and a light or dark theme.
"""

from __future__ import annotations

import zlib

PaletteEntry = tuple[str, str, str]

HEADER = "header"
HINT = "hint"
STATUS = "status"
STATUS_ROOM = "status room"
STATUS_GOOD = "status good"
STATUS_BUSY = "status busy"
STATUS_BAD = "status bad"
TIME = "time"
OWN_NICK = "own nick"
OWN_TEXT = "own text"
MENTION = "mention"
ACTION = "action"
JOINED = "joined"
LEFT = "left"
NOTICE = "notice"
ERROR = "error"
SENDING = "sending"
HISTORY = "history"
MEMBERS_TITLE = "members title"
MEMBER = "member"
MEMBER_ME = "member me"
PROMPT = "prompt"
FORM_TITLE = "form title"
LABEL = "label"
FIELD = "field"
FIELD_FOCUS = "field focus"
CHOICE_FOCUS = "choice focus"

NICK_COLOURS = ("light cyan", "light green", "light blue", "dark cyan", "dark green", "brown", "dark magenta")
NICKS = tuple(f"nick {index}" for index in range(len(NICK_COLOURS)))
"""
Each sender keeps one colour, chosen from its name, as weechat does: easier to
follow who says what. Yellow (you, mentions), light magenta (actions) and red
(errors) are left out so that those stay distinct.
"""


def nick_attribute(name: str) -> str:
    """The attribute for C{name}: the same in every run, whoever else is there."""
    return NICKS[zlib.crc32(name.encode("utf-8")) % len(NICKS)]


PALETTE: list[PaletteEntry] = [
    (HEADER, "white,bold", "dark blue"),
    (HINT, "dark gray", "default"),
    (STATUS, "light gray", "dark blue"),
    (STATUS_ROOM, "white,bold", "dark blue"),
    (STATUS_GOOD, "light green,bold", "dark blue"),
    (STATUS_BUSY, "yellow,bold", "dark blue"),
    (STATUS_BAD, "light red,bold", "dark blue"),
    (TIME, "dark gray", "default"),
    (OWN_NICK, "yellow,bold", "default"),
    (OWN_TEXT, "light gray", "default"),
    (MENTION, "yellow,bold", "default"),
    (ACTION, "light magenta", "default"),
    (JOINED, "light green", "default"),
    (LEFT, "brown", "default"),
    (NOTICE, "dark cyan", "default"),
    (ERROR, "light red,bold", "default"),
    # Dim: a message on its way, and talk from before you came in, are there
    # to be read but are not what is happening now.
    (SENDING, "dark gray", "default"),
    (HISTORY, "dark gray", "default"),
    (MEMBERS_TITLE, "white,bold", "default"),
    (MEMBER, "default", "default"),
    (MEMBER_ME, "yellow,bold", "default"),
    (PROMPT, "light cyan,bold", "default"),
    (FORM_TITLE, "white,bold", "default"),
    (LABEL, "light gray", "default"),
    (FIELD, "white", "dark gray"),
    (FIELD_FOCUS, "black", "light gray"),
    (CHOICE_FOCUS, "black", "light gray"),
    *((name, colour, "default") for name, colour in zip(NICKS, NICK_COLOURS, strict=True)),
]
