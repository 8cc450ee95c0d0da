"""
Line mode's slash commands (chatd.client.line_commands), through a session
with a fake client: what each does, and what is never sent.
"""

from __future__ import annotations

import json
from typing import cast

from chatd.client.chat_client import ChatClient
from chatd.client.commands import Command, Run, Say, Unknown, Usage, parse
from chatd.client.line_mode import EXIT_OK
from chatd.client.line_output import HelpLine, Invitation, format_json
from chatd.protocol.errors import NotInRoomError
from tests.client.test_line_console import attached
from tests.client.test_line_mode import FakeClient, SessionCase


class SlashCommandTests(SessionCase):
    """Lines starting with a slash, as the terminal app reads them (chatd.client.commands)."""

    def test_exit_leaves_and_reads_no_further(self) -> None:
        self.read("before\n/exit\nafter\n")
        self.assertEqual(self.successResultOf(self.session.ended), EXIT_OK)
        self.assertEqual(self.client.sent, ["before"])
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual((self.output(), self.reports), ("", []))

    def test_quit_leave_and_exit_in_any_case(self) -> None:
        for line in ("/quit", "/leave", "/EXIT now"):
            session = self.make_session()
            attached(session.console)
            session.console.dataReceived(f"{line}\n".encode())
            self.assertEqual(self.successResultOf(session.ended), EXIT_OK, line)

    def test_exit_while_reconnecting_is_the_end_of_input(self) -> None:
        self.lose_connection()
        self.read("one\n/exit\n")
        self.assertNoResult(self.session.ended)
        self.reconnect()
        self.assertEqual(self.client.sent, ["one"])
        self.assertEqual(self.successResultOf(self.session.ended), EXIT_OK)

    def test_who(self) -> None:
        self.read("/who\n")
        self.assertEqual(self.output(), "= members of hoge: alice, bob\n")

    def test_who_json(self) -> None:
        session = self.make_session(json=True)
        session.client = cast(ChatClient, self.client)
        transport = attached(session.console)
        session.console.dataReceived(b"/who\n")
        self.assertEqual(transport.value(), b'{"event": "members", "room": "hoge", "members": ["alice", "bob"]}\n')

    def test_help(self) -> None:
        self.read("/help\n")
        self.assertEqual(
            self.output().splitlines(),
            [
                "= /help: this list",
                "= /who: list the room's members",
                "= /me TEXT: send an action, shown as '* name TEXT'",
                "= /invite: (host) make a single-use invitation token",
                "= /close: (host) close the room for everyone, and exit",
                "= /exit: leave the room and exit, as the end of input does (also /quit, /leave)",
                "= /retry: send your messages that were not delivered again",
                "= /stats: your delivery counts: messages sent again, repaired, missed; the path",
                "= //TEXT: send TEXT starting with one '/'",
            ],
        )

    def test_help_json(self) -> None:
        self.assertEqual(
            json.loads(format_json(HelpLine("/who", "list the room's members"))),
            {"event": "help", "usage": "/who", "description": "list the room's members"},
        )

    def test_me(self) -> None:
        self.read("/me waves\n/me\n")
        self.assertEqual(self.client.sent, ["/me waves"])
        self.assertEqual(self.reports, ["/me needs some text: /me waves"])

    def test_unknown_command_is_not_sent(self) -> None:
        self.read("/frobnicate now\n/\n")
        self.assertEqual(self.client.sent, [])
        self.assertEqual(
            self.reports,
            [
                "unknown command /frobnicate: not sent (/help lists the commands; //frobnicate sends it as text)",
                "unknown command /: not sent (/help lists the commands; // sends it as text)",
            ],
        )
        self.assertNoResult(self.session.ended)

    def test_double_slash_sends_one(self) -> None:
        self.read("//frobnicate\n//\na/b\n")
        self.assertEqual(self.client.sent, ["/frobnicate", "/", "a/b"])

    def test_the_text_exit_is_never_sent(self) -> None:
        # The server would take it for leaving the room.
        self.read("//exit\n /exit \n")
        self.assertEqual(self.client.sent, [])
        self.assertEqual(
            self.reports, ["not sent: the server takes the text /exit as leaving the room; /exit leaves"] * 2
        )
        self.assertNoResult(self.session.ended)

    def test_invite_as_host(self) -> None:
        self.client = FakeClient(host=True)
        self.session.client = cast(ChatClient, self.client)
        self.read("/invite\n")
        self.client.invitation.callback("Zx8pLm2Qv7RtY4nB0cKd9w")
        self.assertEqual(self.output(), "= invitation to hoge: Zx8pLm2Qv7RtY4nB0cKd9w\n")
        self.assertEqual(
            json.loads(format_json(Invitation("hoge", "Zx8pLm2Qv7RtY4nB0cKd9w"))),
            {"event": "invitation", "room": "hoge", "token": "Zx8pLm2Qv7RtY4nB0cKd9w"},
        )

    def test_invite_refused(self) -> None:
        self.client = FakeClient(host=True)
        self.session.client = cast(ChatClient, self.client)
        self.read("/invite\n")
        self.client.invitation.errback(NotInRoomError("not in a room"))
        self.assertEqual(self.reports, ["no invitation: not in a room"])

    def test_invite_and_close_not_host(self) -> None:
        self.read("/invite\n/close\n")
        self.assertEqual(
            self.reports,
            [
                "only the room's host can invite; ask the host for an invitation",
                "only the room's host can close it; /exit leaves it",
            ],
        )
        self.assertNoResult(self.session.ended)

    def test_close_as_host(self) -> None:
        self.client = FakeClient(host=True)
        self.session.client = cast(ChatClient, self.client)
        self.read("/close\n")
        self.assertEqual(self.successResultOf(self.session.ended), EXIT_OK)

    def test_parse(self) -> None:
        self.assertEqual(parse("/exit"), Run(Command.QUIT))
        self.assertEqual(parse("/Exit  soon "), Run(Command.QUIT, "soon"))
        self.assertEqual(parse("/exits"), Unknown("exits"))
        self.assertEqual(parse("//exits"), Say("/exits"))
        refused = Usage("not sent: the server takes the text /exit as leaving the room; /exit leaves")
        for line in ("//exit", " /exit ", "//exit "):
            self.assertEqual(parse(line), refused, line)
