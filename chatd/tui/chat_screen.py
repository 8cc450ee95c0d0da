"""
The chat view: scrollback, member list, status line and input line.

A box widget that only shows what it is told (lines, members, status) and
hands each typed line to a callback; the session decides what lines mean.
The input line keeps the focus; PgUp and PgDn scroll the scrollback, and the
view follows new lines only while it is at the bottom, so reading back is
never interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import urwid
from typing_extensions import override

from chatd.client.commands import COMMAND_NAMES
from chatd.tui import theme
from chatd.tui.input_line import InputHistory, InputLine

_Size = tuple[()] | tuple[int] | tuple[int, int]
_Markup = str | tuple[str, str] | list[str | tuple[str, str]]

MAX_LINES = 5000
"""Scrollback kept; the oldest lines go first."""

NARROW = 60
"""Below this many columns the member list gives its room to the conversation."""


class LineKind(Enum):
    """A system line's kind: its marker, the marker's colour and the text's."""

    JOINED = ("-->", theme.JOINED, None)
    LEFT = ("<--", theme.LEFT, None)
    NOTICE = ("-!-", theme.NOTICE, theme.NOTICE)
    INFO = ("---", theme.NOTICE, None)
    ERROR = ("-!-", theme.ERROR, theme.ERROR)

    def __init__(self, marker: str, marker_attribute: str, text_attribute: str | None) -> None:
        self.marker = marker
        self.marker_attribute = marker_attribute
        self.text_attribute = text_attribute


class Tone(Enum):
    """How the connection state is coloured in the status line."""

    GOOD = theme.STATUS_GOOD
    BUSY = theme.STATUS_BUSY
    BAD = theme.STATUS_BAD


@dataclass(frozen=True, slots=True)
class StatusInfo:
    room: str
    user: str
    state: str
    tone: Tone
    members: int
    host: bool
    server: str
    udp_lost: bool = False
    """The server's UDP answers stopped: messages are not delivered, though the room is still there."""


HOST_MARK = " (host)"
"""After the host's name in the member list."""


def clock_time(when: float) -> str:
    """HH:MM in local time, as the scrollback shows it."""
    return time.strftime("%H:%M", time.localtime(when))


def _line(when: float, markup: _Markup) -> urwid.Columns:
    # Two columns, so wrapped text hangs under the text, not the time.
    return urwid.Columns([(6, urwid.Text((theme.TIME, clock_time(when)))), urwid.Text(markup)])


class ChatScreen(urwid.WidgetWrap[urwid.Frame[urwid.Columns, urwid.AttrMap[urwid.Text], urwid.Pile]]):
    def __init__(self, room: str, on_line: Callable[[str], None], history: InputHistory | None = None) -> None:
        self._on_line = on_line
        self._status: StatusInfo | None = None
        self._members: tuple[str, ...] = ()
        self._lines = urwid.SimpleFocusListWalker[urwid.Columns]([])
        self._scrollback = urwid.ListBox(self._lines)
        self._member_lines = urwid.SimpleListWalker[urwid.Text]([])
        self._member_panel = urwid.ListBox(self._member_lines)
        self._member_width = 11
        self._separator = urwid.AttrMap(urwid.SolidFill("│"), theme.HINT)
        self._body = urwid.Columns([self._scrollback], dividechars=1)
        self._show_members(True)
        self._status_text = urwid.Text("", wrap="ellipsis")
        self.input = InputLine((theme.PROMPT, f"{room}> "), lambda: self._members, COMMAND_NAMES, history)
        header = urwid.AttrMap(
            urwid.Text(
                f" chatd · {room} · /help lists the commands · PgUp/PgDn scroll · Ctrl-C quits", wrap="ellipsis"
            ),
            theme.HEADER,
        )
        footer = urwid.Pile([urwid.AttrMap(self._status_text, theme.STATUS), self.input])
        super().__init__(urwid.Frame(self._body, header=header, footer=footer, focus_part="footer"))

    # -- what the session tells it ------------------------------------------

    def add_message(self, when: float, sender: str, text: str, *, own: bool = False, mention: bool = False) -> None:
        if own:
            self._append(when, [(theme.OWN_NICK, f"<{sender}>"), " ", (theme.OWN_TEXT, text)])
        else:
            body: str | tuple[str, str] = (theme.MENTION, text) if mention else text
            self._append(when, [(theme.nick_attribute(sender), f"<{sender}>"), " ", body])

    def add_action(self, when: float, sender: str, text: str) -> None:
        self._append(when, (theme.ACTION, f"* {sender} {text}"))

    def add_line(self, when: float, kind: LineKind, text: str) -> None:
        body = text if kind.text_attribute is None else (kind.text_attribute, text)
        self._append(when, [(kind.marker_attribute, kind.marker), " ", body])

    def set_members(self, members: Sequence[str], me: str, host: str | None = None) -> None:
        self._members = tuple(sorted(members, key=str.casefold))
        shown = [name + HOST_MARK if name == host else name for name in self._members]
        widest = max((len(name) for name in shown), default=0)
        self._member_width = max(11, min(23, widest + 2))
        if len(self._body.contents) > 1:
            self._show_members(True)
        self._member_lines[:] = [urwid.Text((theme.MEMBERS_TITLE, f"{len(self._members)} here"))] + [
            urwid.Text((theme.MEMBER_ME if name == me else theme.nick_attribute(name), text), wrap="ellipsis")
            for name, text in zip(self._members, shown, strict=True)
        ]
        self._show_status()

    def set_status(self, status: StatusInfo) -> None:
        self._status = status
        self._show_status()

    @property
    def following(self) -> bool:
        """Whether the view is at the newest line (and so follows new ones)."""
        return not self._lines or self._lines.focus == len(self._lines) - 1

    # -- urwid ----------------------------------------------------------------

    @override
    def render(self, size: _Size, focus: bool = False) -> urwid.Canvas:
        self._fit(size)
        return super().render(size, focus)

    @override
    def keypress(self, size: _Size, key: str) -> str | None:
        self._fit(size)
        if key in ("page up", "page down"):
            self._scroll(size, key)
            return None
        unhandled = super().keypress(size, key)
        if unhandled == "enter":
            self._on_line(self.input.take())
            return None
        return unhandled

    def _fit(self, size: _Size) -> None:
        wide = not size or size[0] >= NARROW
        if wide != (len(self._body.contents) > 1):
            self._show_members(wide)

    def _show_members(self, shown: bool) -> None:
        panel = [
            (self._separator, self._body.options(urwid.WHSettings.GIVEN, 1)),
            (self._member_panel, self._body.options(urwid.WHSettings.GIVEN, self._member_width)),
        ]
        self._body.contents[1:] = panel if shown else []

    def _scroll(self, size: _Size, key: str) -> None:
        # The frame routes keys to its focus part, which is the input line;
        # lending the focus to the body for one key scrolls the scrollback.
        frame = self._w
        if len(size) != 2:
            return
        frame.focus_position = "body"
        try:
            frame.keypress(size, key)
        finally:
            frame.focus_position = "footer"
        self._show_status()

    def _append(self, when: float, markup: _Markup) -> None:
        following = self.following
        self._lines.append(_line(when, markup))
        if len(self._lines) > MAX_LINES:
            del self._lines[: len(self._lines) - MAX_LINES]
        if following:
            self._lines.set_focus(len(self._lines) - 1)
        else:
            self._show_status()

    def _show_status(self) -> None:
        status = self._status
        if status is None:
            return
        parts: list[str | tuple[str, str]] = [
            " ",
            (theme.STATUS_ROOM, status.room),
            " │ ",
            (status.tone.value, status.state),
        ]
        if status.udp_lost:
            parts += [" │ ", (theme.STATUS_BAD, "UDP: no answer")]
        parts.append(f" │ {status.members} member{'s' if status.members != 1 else ''}")
        if status.host:
            parts += [" │ ", (theme.STATUS_BUSY, "host")]
        parts.append(f" │ {status.user} @ {status.server}")
        if not self.following:
            parts += [" │ ", (theme.STATUS_BUSY, "more below: PgDn")]
        self._status_text.set_text(parts)
