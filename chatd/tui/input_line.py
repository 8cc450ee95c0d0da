"""
The chat screen's input line: a text field with shell-like history (Up and
Down) and Tab completion of member names and commands.

The history and the completion rules are plain classes and functions, so
they are tested without a terminal; L{InputLine} only binds them to keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import urwid
from typing_extensions import override
from urwid.command_map import Command

from chatd.tui.editing import TextEdit

MAX_HISTORY = 500
MAX_ROWS = 4
"""The input line's most rows on screen: a long paste must not push the conversation off it."""


class InputHistory:
    """
    Lines sent earlier, newest last, walked like a shell's history.

    Walking away from the line being typed keeps it as a draft, and walking
    back past the newest entry returns it, so Up by mistake loses nothing.
    """

    def __init__(self, limit: int = MAX_HISTORY) -> None:
        self._limit = limit
        self._entries: list[str] = []
        self._position = 0
        self._draft = ""

    def add(self, line: str) -> None:
        # A repeat of the newest entry adds nothing to walk through.
        if line.strip() and (not self._entries or self._entries[-1] != line):
            self._entries.append(line)
            del self._entries[: -self._limit]
        self._position = len(self._entries)
        self._draft = ""

    def previous(self, current: str) -> str | None:
        """The entry before the one shown; None at the oldest."""
        if self._position == 0:
            return None
        if self._position == len(self._entries):
            self._draft = current
        self._position -= 1
        return self._entries[self._position]

    def next(self) -> str | None:
        """The entry after the one shown, then the draft; None when already at the draft."""
        if self._position >= len(self._entries):
            return None
        self._position += 1
        if self._position == len(self._entries):
            return self._draft
        return self._entries[self._position]


def complete(text: str, names: Sequence[str], commands: Sequence[str]) -> str | None:
    """
    C{text} with its last word completed, or None when nothing (or more than
    one thing) fits. A name that starts the line gets ": " after it, the way
    IRC clients address someone; elsewhere a space.
    """
    head, _, word = text.rpartition(" ")
    if not word:
        return None
    at_start = head == ""
    candidates = commands if at_start and word.startswith("/") else names
    folded = word.casefold()
    matches = sorted({candidate for candidate in candidates if candidate.casefold().startswith(folded)})
    if not matches:
        return None
    if len(matches) > 1:
        common = _common_prefix(matches)
        if len(common) <= len(word):
            return None
        return f"{head} {common}" if head else common
    suffix = ": " if at_start and not word.startswith("/") else " "
    completed = matches[0] + suffix
    return f"{head} {completed}" if head else completed


def _common_prefix(words: Sequence[str]) -> str:
    first, last = min(words), max(words)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[:size]


class InputLine(TextEdit):
    """One line of input; Enter is left to the screen, which takes the text."""

    def __init__(
        self,
        caption: str | tuple[str, str],
        names: Callable[[], Sequence[str]],
        commands: Sequence[str],
        history: InputHistory | None = None,
    ) -> None:
        super().__init__(caption)
        self.history = InputHistory() if history is None else history
        self._names = names
        self._commands = commands

    def take(self) -> str:
        """The typed line, now in the history; the input line is left empty."""
        line = str(self.edit_text)
        self.history.add(line)
        self.set_edit_text("")
        return line

    def put_back(self, text: str) -> None:
        """Show C{text} again for editing (a message that could not be sent)."""
        self.set_edit_text(text)
        self.set_edit_pos(len(text))

    @override
    def keypress(self, size: tuple[int], key: str) -> str | None:  # type: ignore[override]  # as Edit narrows it
        command = self._command_map[key]
        if command is Command.UP:
            self._show(self.history.previous(self.edit_text))
            return None
        if command is Command.DOWN:
            self._show(self.history.next())
            return None
        if key == "tab":
            # Only at the end of the line: completing mid-line would
            # rewrite text the cursor has not reached.
            if self.edit_pos == len(self.edit_text):
                self._show(complete(self.edit_text, self._names(), self._commands))
            return None
        return super().keypress(size, key)

    @override
    def rows(self, size: tuple[int], focus: bool = False) -> int:
        return min(MAX_ROWS, super().rows(size, focus))

    @override
    def render(  # type: ignore[override]  # as Edit narrows it
        self, size: tuple[int], focus: bool = False
    ) -> urwid.TextCanvas | urwid.CompositeCanvas:
        canvas = super().render(size, focus)
        total = canvas.rows()
        if total <= MAX_ROWS:
            return canvas
        # The rows around the cursor, which is where the person is looking.
        cursor = self.get_cursor_coords(size)
        row = cursor[1] if cursor is not None else total - 1
        shown = urwid.CompositeCanvas(canvas)
        shown.trim(max(0, min(row - MAX_ROWS + 1, total - MAX_ROWS)), MAX_ROWS)
        return shown

    def _show(self, text: str | None) -> None:
        if text is not None:
            self.put_back(text)
