"""
The chat view: scrollback, member list, status line and input line.

A box widget that only shows what it is told (lines, members, status) and
hands each typed line to a callback; the session decides what lines mean.
The input line keeps the focus; PgUp and PgDn scroll the scrollback, and the
view follows new lines only while it is at the bottom, so reading back is
never interrupted.

Own messages sent with reliable delivery (docs/reliability.md) carry their
state after the text, changed in place by L{ChatScreen.set_message_state}: a
dim C{…} while sending, nothing once the server has it (an acknowledged
message looks like any other: only the exceptions catch the eye), and a red
C{✗ not delivered — /retry} when the client gave up. Messages from before
you came in (history) are dim, under a divider line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import urwid
from typing_extensions import override

from chatd.client.commands import COMMAND_NAMES, path_words
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

    path: str | None = None
    """The path messages take with reliable delivery, C{"udp"} or C{"tcp"}; None without the feature."""
    not_delivered: int = 0
    """Own messages the client gave up on, waiting for /retry."""


HOST_MARK = " (host)"
"""After the host's name in the member list."""

SENDING = "sending"
SENT = "sent"
NOT_DELIVERED = "not delivered"
"""The states of an own message (chatd.client.events.MessageStateChanged)."""

_STATE_MARKS: dict[str, list[str | tuple[str, str]]] = {
    SENDING: [" ", (theme.SENDING, "…")],
    SENT: [],
    NOT_DELIVERED: [" ", (theme.ERROR, "✗ not delivered — /retry")],
}


@dataclass(slots=True)
class _OwnLine:
    """An own message on screen, to redraw with its new state."""

    text: urwid.Text
    markup: list[str | tuple[str, str]]


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
        self._own: dict[int, _OwnLine] = {}
        """Own messages whose state may still change, by message id."""
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

    def add_message(
        self,
        when: float,
        sender: str,
        text: str,
        *,
        own: bool = False,
        mention: bool = False,
        message_id: int | None = None,
        state: str = SENDING,
    ) -> None:
        """
        A message; an own one with a C{message_id} (reliable delivery) shows
        C{state}, and L{set_message_state} changes it.
        """
        if own:
            self._append_own(when, [(theme.OWN_NICK, f"<{sender}>"), " ", (theme.OWN_TEXT, text)], message_id, state)
        else:
            body: str | tuple[str, str] = (theme.MENTION, text) if mention else text
            self._append(when, [(theme.nick_attribute(sender), f"<{sender}>"), " ", body])

    def add_action(
        self, when: float, sender: str, text: str, *, message_id: int | None = None, state: str = SENDING
    ) -> None:
        self._append_own(when, [(theme.ACTION, f"* {sender} {text}")], message_id, state)

    def add_history(self, when: float, sender: str, text: str, *, action: bool = False) -> None:
        """A message said before we came in: all dim, so that it does not read as happening now."""
        self._append(when, (theme.HISTORY, f"* {sender} {text}" if action else f"<{sender}> {text}"))

    def add_divider(self, when: float, text: str) -> None:
        """A rule with C{text} in it, between parts of the conversation (the history, and now)."""
        self._append(when, (theme.HISTORY, f"──── {text} ────"))

    def set_message_state(self, message_id: int, state: str) -> bool:
        """Show an own message's new state, in place; False if no line has that id (yet)."""
        line = self._own.get(message_id)
        if line is None:
            return False
        line.text.set_text(line.markup + _STATE_MARKS.get(state, []))
        if state == SENT:
            # Final: nothing will change it again, so the line need not be found.
            del self._own[message_id]
        return True

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

    def _append_own(self, when: float, markup: list[str | tuple[str, str]], message_id: int | None, state: str) -> None:
        if message_id is None:
            # Without reliable delivery there is no state to show.
            self._append(when, markup)
            return
        self._own[message_id] = _OwnLine(self._append(when, markup), markup)
        self.set_message_state(message_id, state)

    def _append(self, when: float, markup: _Markup) -> urwid.Text:
        """Add a line; its text widget, to change it later."""
        following = self.following
        line = _line(when, markup)
        self._lines.append(line)
        if len(self._lines) > MAX_LINES:
            del self._lines[: len(self._lines) - MAX_LINES]
        if following:
            self._lines.set_focus(len(self._lines) - 1)
        else:
            self._show_status()
        text = line.contents[1][0]
        assert isinstance(text, urwid.Text)
        return text

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
        if status.path is not None:
            # TCP is the fallback: worth a glance, as the reason is a blocked UDP.
            words = path_words(status.path)
            parts += [" │ ", (theme.STATUS_BUSY, words) if status.path == "tcp" else words]
        if status.udp_lost and status.path != "tcp":
            # Over TCP messages are delivered: a silent UDP is no news then.
            parts += [" │ ", (theme.STATUS_BAD, "UDP: no answer")]
        if status.not_delivered:
            parts += [" │ ", (theme.STATUS_BAD, f"{status.not_delivered} not delivered: /retry")]
        parts.append(f" │ {status.members} member{'s' if status.members != 1 else ''}")
        if status.host:
            parts += [" │ ", (theme.STATUS_BUSY, "host")]
        parts.append(f" │ {status.user} @ {status.server}")
        if not self.following:
            parts += [" │ ", (theme.STATUS_BUSY, "more below: PgDn")]
        self._status_text.set_text(parts)
