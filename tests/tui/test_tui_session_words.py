"""
The words of chatd.tui.session a person reads when the connection goes, and
the command the /invite hint prints (tests/tui/test_tui_session.py has the rest).
"""

from __future__ import annotations

import os
import sys
from unittest import mock

from chatd.client.chat_client import ConnectionState
from chatd.client.events import ConnectionLost
from chatd.tui.screens import RoomChoice
from tests.tui.test_tui_session import _SessionTest
from tests.tui_helpers import screen_text, type_line


class LostConnectionWordsTests(_SessionTest):
    def setUp(self) -> None:
        super().setUp()
        self.enter()

    def lost(self, reason: str, will_reconnect: bool) -> str:
        state = ConnectionState.RECONNECTING if will_reconnect else ConnectionState.CLOSED
        self.client.emit(ConnectionLost(reason, will_reconnect), state)
        return screen_text(self.screen, (160, 30))

    def test_a_killed_server_is_the_server_gone(self) -> None:
        # What Twisted says when the daemon is killed: its socket was closed "cleanly" by the kernel.
        text = self.lost("Connection was closed cleanly.", will_reconnect=True)
        self.assertIn("Lost the connection to the server; reconnecting.", text)
        self.assertNotIn("cleanly", text)

    def test_a_broken_connection(self) -> None:
        reason = "Connection to the other side was lost in a non-clean fashion: Connection lost."
        text = self.lost(reason, will_reconnect=False)
        self.assertIn("Lost the connection to the server.", text)
        self.assertNotIn("non-clean", text)

    def test_a_reason_that_says_more_is_kept(self) -> None:
        text = self.lost("the TLS certificate of 127.0.0.1:9003 has changed", will_reconnect=False)
        self.assertIn("Lost the connection to the server: The TLS certificate of 127.0.0.1:9003 has changed.", text)


class InviteCommandTests(_SessionTest):
    choice = RoomChoice(True, "hoge", "pw", None, "127.0.0.1", 9001, 9002)

    def setUp(self) -> None:
        super().setUp()
        self.enter(host=True, members=("alice",))

    def invite_hint(self, argv0: str) -> str:
        with mock.patch.object(sys, "argv", [argv0]), mock.patch.dict(os.environ, {"PATH": "/nonexistent"}):
            type_line(self.screen, "/invite")
            self.client.invitations[-1].callback("tok3n")
        return screen_text(self.screen, (160, 30))

    def test_the_readme_set_up_runs_it_from_the_venv(self) -> None:
        # sh .ci/serve sets up .venv; the README starts .venv/bin/chatd-chat, which is not on the PATH.
        text = self.invite_hint(".venv/bin/chatd-chat")
        self.assertIn("  .venv/bin/chatd-chat --room hoge --name THEIR-NAME --invite tok3n", text)

    def test_a_program_started_by_its_full_path(self) -> None:
        program = os.path.join(os.sep, "opt", "chat app", "bin", "chatd-chat")
        text = self.invite_hint(program)
        self.assertIn(f"  '{program}' --room hoge --name THEIR-NAME --invite tok3n", text)
