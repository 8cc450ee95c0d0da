"""Tests for chatd.tui.screens: the name and create/join screens as widgets, keys in, text out."""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from chatd.tui.screens import Field, NameScreen, RoomChoice, RoomScreen
from tests.tui_helpers import press, screen_text, type_line, type_text

DEFAULTS = RoomChoice(False, "", None, None, "127.0.0.1", 9001, 9002)


class NameScreenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.names: list[str] = []
        self.screen = NameScreen(self.names.append)

    def test_asks_for_a_name(self) -> None:
        self.assertIn("Your name", screen_text(self.screen))

    def test_enter_submits_the_name(self) -> None:
        type_line(self.screen, " alice ")
        self.assertEqual(self.names, ["alice"])

    def test_a_name_the_server_would_refuse_is_explained_here(self) -> None:
        type_line(self.screen, "al:ice")
        self.assertEqual(self.names, [])
        self.assertIn("That name will not do: user name holds ':'.", screen_text(self.screen))

    def test_empty_name(self) -> None:
        press(self.screen, "enter")
        self.assertEqual(self.names, [])
        self.assertIn("user name is empty", screen_text(self.screen))

    def test_narrow_terminal(self) -> None:
        text = screen_text(self.screen, (40, 20))
        self.assertIn("Your name", text)


class RoomScreenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.choices: list[RoomChoice] = []
        self.backs = 0
        self.screen = self.make(DEFAULTS)

    def make(self, defaults: RoomChoice) -> RoomScreen:
        def back() -> None:
            self.backs += 1

        screen = RoomScreen(defaults, self.choices.append, back)
        screen.set_name("alice")
        return screen

    def test_shows_the_defaults(self) -> None:
        text = screen_text(self.screen)
        self.assertIn("You are alice.", text)
        self.assertIn("(X) join a room", text)
        self.assertIn("( ) create a room", text)
        self.assertRegex(text, r"Server +127\.0\.0\.1 +TCP 9001 +UDP 9002")

    def test_join_is_the_default(self) -> None:
        type_line(self.screen, "hoge")
        self.assertEqual(self.choices, [RoomChoice(False, "hoge", None, None, "127.0.0.1", 9001, 9002)])

    def test_native_only_from_the_command_line_is_kept(self) -> None:
        # The form has no field for it: the command line's choice goes through.
        self.screen = self.make(replace(DEFAULTS, create=True, native_only=True))
        type_line(self.screen, "hoge")
        self.assertEqual(self.choices, [RoomChoice(True, "hoge", None, None, "127.0.0.1", 9001, 9002, True)])

    def test_choose_create_with_the_arrow_keys(self) -> None:
        press(self.screen, "up", "right", " ", "down")
        type_line(self.screen, "hoge")
        self.assertTrue(self.choices[-1].create)
        self.assertIn("(X) create a room", screen_text(self.screen))

    def test_tab_moves_to_the_password_and_masks_it(self) -> None:
        type_text(self.screen, "hoge")
        press(self.screen, "tab")
        type_line(self.screen, "s3cret")
        self.assertEqual(self.choices[-1].password, "s3cret")
        self.assertNotIn("s3cret", screen_text(self.screen))
        self.assertIn("******", screen_text(self.screen))

    def test_shift_tab_goes_back_round(self) -> None:
        """From the room: the two choices, then round to the last field, the UDP port."""
        press(self.screen, "shift tab", "shift tab", "shift tab")
        type_text(self.screen, "7")
        self.assertIn("UDP 90027", screen_text(self.screen))

    def test_server_fields(self) -> None:
        type_text(self.screen, "hoge")
        press(self.screen, "tab", "tab", "tab", *["backspace"] * 9)
        type_text(self.screen, "::1")
        press(self.screen, "tab", "backspace")
        type_line(self.screen, "5")
        choice = self.choices[-1]
        self.assertEqual((choice.host, choice.tcp_port, choice.udp_port), ("::1", 9005, 9002))

    def test_a_bad_port_is_explained_and_not_submitted(self) -> None:
        type_text(self.screen, "hoge")
        press(self.screen, "tab", "tab", "tab", "tab", *["backspace"] * 4)
        type_line(self.screen, "99999")
        self.assertEqual(self.choices, [])
        self.assertIn("The tcp port must be a number from 1 to 65535.", screen_text(self.screen))

    def test_room_name_needed(self) -> None:
        press(self.screen, "enter")
        self.assertEqual(self.choices, [])
        self.assertIn("The room name is empty.", screen_text(self.screen))

    def test_password_or_invitation_not_both(self) -> None:
        type_text(self.screen, "hoge")
        press(self.screen, "tab")
        type_text(self.screen, "pw")
        press(self.screen, "tab")
        type_line(self.screen, "token")
        self.assertEqual(self.choices, [])
        self.assertIn("Give the password or an invitation, not both.", screen_text(self.screen))

    def test_no_invitation_to_create(self) -> None:
        screen = self.make(DEFAULTS.__class__(True, "hoge", None, "token", "127.0.0.1", 9001, 9002))
        press(screen, "enter")
        self.assertEqual(self.choices, [])
        self.assertIn("An invitation is for joining a room", screen_text(screen))

    def test_errors_put_the_cursor_where_the_fix_goes(self) -> None:
        type_text(self.screen, "hoge")
        self.screen.message.error("Wrong password for room “hoge”.")
        self.screen.focus_field(Field.PASSWORD)
        type_text(self.screen, "right")
        text = screen_text(self.screen)
        self.assertIn("Wrong password", text)
        self.assertIn("Password        *****", text)
        press(self.screen, "enter")
        self.assertEqual(self.choices[-1].password, "right")
        self.assertNotIn("Wrong password", screen_text(self.screen))

    def test_esc_goes_back_to_the_name(self) -> None:
        press(self.screen, "esc")
        self.assertEqual(self.backs, 1)

    def test_narrow_terminal(self) -> None:
        text = screen_text(self.screen, (50, 24))
        self.assertIn("Room", text)
