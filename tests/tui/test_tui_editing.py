"""Tests for chatd.tui.editing: readline keys, and typed runs inserted in one go."""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from chatd.tui.chat_screen import ChatScreen
from chatd.tui.editing import TextEdit, Typed, coalesce_typing
from tests.tui_helpers import press, type_text


class CoalesceTypingTests(SynchronousTestCase):
    def test_runs_of_characters_become_one_key(self) -> None:
        keys = coalesce_typing(["h", "i", " ", "b", "o", "b", "enter", "x", "up", "o", "k"])
        self.assertEqual(keys, [Typed("hi bob"), "enter", "x", "up", Typed("ok")])
        self.assertIsInstance(keys[0], Typed)
        self.assertNotIsInstance(keys[2], Typed)

    def test_mouse_events_and_control_characters_break_runs(self) -> None:
        mouse = ("mouse press", 1, 2, 3)
        self.assertEqual(coalesce_typing(["a", mouse, "b", "\t", "c"]), ["a", mouse, "b", "\t", "c"])

    def test_a_run_is_never_a_key_name(self) -> None:
        self.assertNotEqual(Typed("enter"), "enter")
        self.assertNotEqual("up", Typed("up"))
        self.assertIsNone({"enter": "activate"}.get(Typed("enter")))
        self.assertEqual(Typed("enter"), Typed("enter"))
        self.assertEqual(len({Typed("a"), Typed("a")}), 1)


class TextEditTests(SynchronousTestCase):
    def test_a_run_is_inserted_at_the_cursor(self) -> None:
        edit = TextEdit("", "hello world")
        edit.set_edit_pos(5)
        press(edit, Typed(" big"), size=(40,))
        self.assertEqual((edit.edit_text, edit.edit_pos), ("hello big world", 9))

    def test_readline_keys(self) -> None:
        edit = TextEdit()
        type_text(edit, "one two", size=(40,))
        press(edit, "ctrl w", size=(40,))
        self.assertEqual(edit.edit_text, "one ")
        press(edit, "ctrl u", size=(40,))
        self.assertEqual(edit.edit_text, "")

    def test_a_paste_costs_one_insert(self) -> None:
        """Key by key, 8000 characters took seconds; as one run, well under one."""
        screen = ChatScreen("hoge", lambda line: None)
        started = time.monotonic()
        for key in coalesce_typing(list("y" * 8000)):
            assert isinstance(key, str)
            screen.keypress((100, 30), key)
        self.assertEqual(len(screen.input.edit_text), 8000)
        self.assertLess(time.monotonic() - started, 0.5)
