"""
Text fields that type like a terminal program: readline keys, and pasted
text inserted in one go.

urwid hands an Edit one key at a time, and every key costs a layout of the
whole line, so a pasted kilobyte took seconds and grew quadratically. The
MainLoop's input filter (L{coalesce_typing}) joins each run of plain
characters read together into one L{Typed} key, which a L{TextEdit}
inserts at once; anything else that receives one gets its characters one by
one (see chatd.tui.controller).
"""

from __future__ import annotations

from typing import Any

import urwid
from typing_extensions import override
from urwid.command_map import Command

Key = str | tuple[str, int, int, int]
"""A key name or a mouse event, as urwid's screens report input."""

_READLINE_KEYS: dict[str, Command] = {
    "ctrl a": Command.MAX_LEFT,
    "ctrl e": Command.MAX_RIGHT,
    "ctrl b": Command.LEFT,
    "ctrl f": Command.RIGHT,
    "meta b": Command.WORD_LEFT,
    "meta f": Command.WORD_RIGHT,
    "ctrl u": Command.DELETE_TO_LINE_START,
    "ctrl k": Command.DELETE_TO_LINE_END,
    "ctrl w": Command.DELETE_WORD_LEFT,
    "meta backspace": Command.DELETE_WORD_LEFT,
    "ctrl p": Command.UP,
    "ctrl n": Command.DOWN,
}
"""What people's fingers expect from irssi and a shell; urwid binds none of them."""


def readline_keys() -> urwid.CommandMap:
    """urwid's command map with the readline keys added."""
    command_map = urwid.command_map.copy()
    for key, command in _READLINE_KEYS.items():
        command_map[key] = command
    return command_map


class Typed(str):
    """
    A run of plain characters typed (or pasted) together.

    Never equal to a key name, so that typing "up" or "enter" quickly can
    never pass for the key: no widget's command map or comparison matches it.
    """

    __slots__ = ()

    @override
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Typed) and str.__eq__(self, other)

    @override
    def __ne__(self, other: object) -> bool:
        return not self == other

    @override
    def __hash__(self) -> int:
        return hash((Typed, str(self)))


def _plain(key: Key) -> bool:
    return isinstance(key, str) and len(key) == 1 and key.isprintable()


def coalesce_typing(keys: list[Key], raw: Any = None) -> list[Key]:
    """C{keys} with each run of two or more plain characters as one L{Typed} key (a MainLoop input filter)."""
    out: list[Key] = []
    run: list[str] = []

    def flush() -> None:
        if len(run) > 1:
            out.append(Typed("".join(run)))
        else:
            out.extend(run)
        run.clear()

    for key in keys:
        if _plain(key):
            assert isinstance(key, str)
            run.append(key)
        else:
            flush()
            out.append(key)
    flush()
    return out


class TextEdit(urwid.Edit):
    """An Edit with the readline keys, which takes a L{Typed} run whole."""

    def __init__(self, caption: str | tuple[str, str] = "", edit_text: str = "", mask: str | None = None) -> None:
        super().__init__(caption, edit_text, mask=mask)
        self._command_map = readline_keys()

    @override
    def keypress(self, size: tuple[int], key: str) -> str | None:  # type: ignore[override]  # as Edit narrows it
        if isinstance(key, Typed):
            self.insert_text("".join(char for char in key if self.valid_char(char)))
            return None
        return super().keypress(size, key)
