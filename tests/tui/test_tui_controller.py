"""
Tests for chatd.tui.controller: which screen shows when, with a fake client
(the real client and server: test_tui_app).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd.client.chat_cli import ChatArguments
from chatd.client.chat_client import IChatListener
from chatd.protocol.errors import RoomNotFoundError, UsernameTakenError
from chatd.tui.controller import TerminalApp
from chatd.tui.editing import Typed
from chatd.tui.screens import NameScreen, RoomScreen
from tests.tui_helpers import FakeClient, press, screen_text, shows, status_line, type_line


class TerminalAppTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clients: list[FakeClient] = []

    def make_client(self, host: str, tcp_port: int, udp_port: int, listener: IChatListener) -> FakeClient:
        client = FakeClient(host, tcp_port, udp_port, listener)
        self.clients.append(client)
        return client

    def app(self, **arguments: Any) -> TerminalApp:
        app = TerminalApp(ChatArguments(**arguments), self.make_client, self.clock)
        app.start()
        return app

    def showing(self, app: TerminalApp) -> object:
        return app.widget.original_widget

    def test_no_flags_start_with_the_name(self) -> None:
        self.assertIsInstance(self.showing(self.app()), NameScreen)

    def test_a_name_skips_the_name_screen(self) -> None:
        app = self.app(name="alice")
        self.assertIsInstance(self.showing(app), RoomScreen)
        self.assertIn("You are alice.", screen_text(app.widget))

    def test_name_and_room_go_straight_to_the_chat(self) -> None:
        app = self.app(name="alice", room="hoge", password="pw", host="10.0.0.1", tcp_port=9101)
        assert app.session is not None
        self.assertIs(self.showing(app), app.session.screen)
        self.assertIn("│ connecting │", status_line(app.widget))
        self.assertEqual(self.clients[0].address, ("10.0.0.1", 9101, 9002))
        self.assertEqual(self.clients[0].requests, [("join", "hoge", "alice", "pw", "")])

    def test_a_room_without_a_name_asks_only_the_name(self) -> None:
        app = self.app(room="hoge", create=True)
        type_line(app.widget, "alice")
        self.assertEqual(self.clients[0].requests, [("create", "hoge", "alice", "")])

    def test_esc_goes_back_to_change_the_name(self) -> None:
        app = self.app(name="alice")
        press(app.widget, "esc")
        self.assertIsInstance(self.showing(app), NameScreen)
        press(app.widget, "backspace")
        type_line(app.widget, "x")
        self.assertIn("You are alicx.", screen_text(app.widget))

    def test_a_failure_goes_back_to_the_form_with_the_values_kept(self) -> None:
        app = self.app(name="alice", room="hoge")
        self.clients[0].enter_fails(RoomNotFoundError("no room"))
        self.assertIsNone(app.session)
        self.assertTrue(shows(app.widget, "There is no room “hoge”: check its name, or choose “create a room”."))
        self.assertIn("Room            hoge", screen_text(app.widget))
        press(app.widget, "enter")
        self.assertEqual(len(self.clients), 2)

    def test_name_taken_asks_for_another_name_then_the_room_again(self) -> None:
        app = self.app(name="alice", room="hoge")
        self.clients[0].enter_fails(UsernameTakenError("taken"))
        self.assertIsInstance(self.showing(app), NameScreen)
        self.assertTrue(shows(app.widget, "Someone in room “hoge” is already called “alice”"))
        type_line(app.widget, "2")
        self.assertIsInstance(self.showing(app), RoomScreen)
        press(app.widget, "enter")
        self.assertEqual(self.clients[1].requests, [("join", "hoge", "alice2", "", "")])

    def test_leave_goes_back_to_the_rooms_and_history_stays(self) -> None:
        app = self.app(name="alice", room="hoge")
        self.clients[0].enter_succeeds(False, ("alice",))
        type_line(app.widget, "said in hoge")
        type_line(app.widget, "/leave")
        self.assertIsInstance(self.showing(app), RoomScreen)
        self.assertIn("You left room hoge.", screen_text(app.widget))
        press(app.widget, "enter")
        self.clients[1].enter_succeeds(False, ("alice",))
        press(app.widget, "up", "up")
        self.assertIn("hoge> said in hoge", screen_text(app.widget))

    def test_a_typed_run_that_no_field_takes_is_typed_key_by_key(self) -> None:
        """On the create/join choice, a space chooses; a quick "x " must still choose."""
        app = self.app(name="alice")
        press(app.widget, "up", "right", Typed("x "), "down")
        type_line(app.widget, "hoge")
        self.assertEqual(self.clients[0].requests, [("create", "hoge", "alice", "")])

    def test_ctrl_c_anywhere_quits(self) -> None:
        app = self.app()
        press(app.widget, "ctrl c")
        self.assertEqual(self.successResultOf(app.finished), 0)

    def test_quit_while_connecting(self) -> None:
        app = self.app(name="alice", room="hoge")
        press(app.widget, "ctrl c")
        self.assertEqual(self.successResultOf(app.finished), 0)
        self.assertEqual(self.clients[0].left, 1)

    def test_quit_leaves_the_room_once(self) -> None:
        app = self.app(name="alice", room="hoge")
        self.clients[0].enter_succeeds(True, ("alice",))
        type_line(app.widget, "/quit")
        press(app.widget, "ctrl c")
        self.assertEqual(self.successResultOf(app.finished), 0)
        self.assertEqual(self.clients[0].left, 1)

    def test_a_bug_behind_a_key_is_shown_not_raised(self) -> None:
        app = self.app(name="alice", room="hoge")
        self.clients[0].enter_succeeds(False, ("alice",))

        def broken(text: str) -> None:
            raise RuntimeError("boom")

        self.clients[0].send = broken  # type: ignore[method-assign]
        type_line(app.widget, "hello")
        self.assertIn("-!- Internal error: RuntimeError: boom. Please report it.", screen_text(app.widget))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
