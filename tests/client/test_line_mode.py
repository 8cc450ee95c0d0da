"""
Line mode (chatd.client.line_mode): the pure event formatting, the console's line
handling, sessions in this process against the real service, and two
C{chatd-chat --line} processes chatting through it, checked byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from typing_extensions import override
from zope.interface import implementer

from chatd.client.chat_cli import ChatArguments
from chatd.client.chat_client import ChatClient, ConnectionState, IChatListener, RoomInfo
from chatd.client.commands import Command, Run, Say, Unknown, Usage
from chatd.client.events import (
    ChatEvent,
    ConnectionLost,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Reconnected,
    Reconnecting,
    RemovedForInactivity,
    RoomClosed,
    ServerStopping,
    Throttled,
    UdpPathLost,
    UdpPathRestored,
    WaitingForHost,
)
from chatd.client.line_mode import (
    EXIT_ENDED,
    EXIT_INTERNAL,
    EXIT_NOT_ENTERED,
    EXIT_OK,
    EXIT_USAGE,
    PENDING_LIMIT,
    RECONNECT_GRACE,
    Entered,
    HelpLine,
    Invitation,
    LineConsole,
    LineEvent,
    LineSession,
    format_json,
    format_text,
    one_line,
    parse_line,
    run_line_mode,
)
from chatd.daemon.service import ChatService, make_service
from chatd.daemon.settings import Settings
from chatd.protocol.errors import NotInRoomError

CLOCK = cast(IReactorTime, _reactor)
REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0
"""Seconds any one wait may take before the test fails (a process start included)."""
HELLO = "こんにちは 🙂"
WAVE = "/me 手を振る 👋"
FAMILY = "👨\u200d👩\u200d👧"
"""An emoji sequence: its zero-width joiners must survive the text form."""


async def until(case: SynchronousTestCase, predicate: Callable[[], bool], what: str) -> None:
    """Wait, bounded by WAIT, until C{predicate} holds."""
    deadline = CLOCK.seconds() + WAIT
    while not predicate():
        if CLOCK.seconds() > deadline:
            case.fail(f"not within {WAIT:g} s: {what}")
        await deferLater(CLOCK, 0.01)


# -- formatting ----------------------------------------------------------------------------

EVENTS: list[tuple[LineEvent, str, dict[str, Any]]] = [
    (
        Entered("hoge", "alice", True, ("alice",)),
        "* you created hoge as alice; members: alice",
        {"event": "entered", "room": "hoge", "user": "alice", "host": True, "members": ["alice"]},
    ),
    (
        Entered("hoge", "bob", False, ("alice", "bob")),
        "* you joined hoge as bob; members: alice, bob",
        {"event": "entered", "room": "hoge", "user": "bob", "host": False, "members": ["alice", "bob"]},
    ),
    (
        MessageReceived("alice", "hello", 1795885041.972),
        "alice: hello",
        {"event": "message", "sender": "alice", "text": "hello", "time": 1795885041.972, "action": False},
    ),
    (
        MessageReceived("alice", "/me waves", 1795885041.5),
        "* alice waves",
        {"event": "message", "sender": "alice", "text": "/me waves", "time": 1795885041.5, "action": True},
    ),
    (
        MemberJoined("bob", ("alice", "bob"), "* bob joined hoge"),
        "* bob joined hoge",
        {"event": "joined", "user": "bob", "members": ["alice", "bob"], "text": "* bob joined hoge"},
    ),
    (
        MemberLeft("bob", ("alice",), "* bob left hoge"),
        "* bob left hoge",
        {"event": "left", "user": "bob", "members": ["alice"], "text": "* bob left hoge", "timed_out": False},
    ),
    (
        MemberLeft("bob", ("alice",), "* bob was removed from hoge after 300 s without activity", timed_out=True),
        "* bob was removed from hoge after 300 s without activity",
        {
            "event": "left",
            "user": "bob",
            "members": ["alice"],
            "text": "* bob was removed from hoge after 300 s without activity",
            "timed_out": True,
        },
    ),
    (
        RoomClosed("hoge", "the host left", "* room hoge was closed: the host left"),
        "* room hoge was closed: the host left",
        {
            "event": "room_closed",
            "room": "hoge",
            "reason": "the host left",
            "text": "* room hoge was closed: the host left",
        },
    ),
    (
        RemovedForInactivity("hoge", "* you were removed from hoge after 300 s without activity"),
        "* you were removed from hoge after 300 s without activity",
        {"event": "removed", "room": "hoge", "text": "* you were removed from hoge after 300 s without activity"},
    ),
    (
        ServerStopping("hoge", "* the server is shutting down; room hoge is closed"),
        "* the server is shutting down; room hoge is closed",
        {"event": "server_stopping", "room": "hoge", "text": "* the server is shutting down; room hoge is closed"},
    ),
    (
        Throttled("hoge", "* you are sending too fast: messages are being dropped; slow down"),
        "* you are sending too fast: messages are being dropped; slow down",
        {
            "event": "throttled",
            "room": "hoge",
            "text": "* you are sending too fast: messages are being dropped; slow down",
        },
    ),
    (
        ConnectionLost("Connection was closed cleanly.", will_reconnect=True),
        "! lost the connection to the server; reconnecting",
        {"event": "connection_lost", "reason": "Connection was closed cleanly.", "will_reconnect": True},
    ),
    (
        ConnectionLost("room hoge is gone", will_reconnect=False),
        "! lost the connection to the server: room hoge is gone",
        {"event": "connection_lost", "reason": "room hoge is gone", "will_reconnect": False},
    ),
    (
        Reconnecting(3, 2.0),
        "! reconnecting in 2 s (attempt 3)",
        {"event": "reconnecting", "attempt": 3, "delay": 2.0},
    ),
    (
        Reconnected("hoge", ("alice", "bob")),
        "! reconnected to hoge; members: alice, bob",
        {"event": "reconnected", "room": "hoge", "members": ["alice", "bob"], "host": None},
    ),
    (
        Reconnected("hoge", ("alice", "bob"), "alice"),
        "! reconnected to hoge; members: alice, bob; host: alice",
        {"event": "reconnected", "room": "hoge", "members": ["alice", "bob"], "host": "alice"},
    ),
    (
        WaitingForHost("hoge", "alice", 3, 2.0, 55.0),
        "! waiting for alice to reopen hoge: trying again in 2 s (attempt 3; giving up in 55 s)",
        {"event": "waiting_for_host", "room": "hoge", "host": "alice", "attempt": 3, "delay": 2.0, "gives_up_in": 55.0},
    ),
    (
        UdpPathLost(12.3),
        "! no UDP from the server for 12 s: messages cannot be delivered",
        {"event": "udp_lost", "silent_for": 12.3},
    ),
    (UdpPathRestored(), "! UDP from the server again: messages are delivered", {"event": "udp_restored"}),
]


class FormatTextTests(SynchronousTestCase):
    def test_every_event(self) -> None:
        for event, line, _ in EVENTS:
            self.assertEqual(format_text(event), line, event)

    def test_japanese_and_emoji_as_they_are(self) -> None:
        self.assertEqual(format_text(MessageReceived("花子", HELLO, 0.0)), f"花子: {HELLO}")
        self.assertEqual(format_text(MessageReceived("花子", WAVE, 0.0)), "* 花子 手を振る 👋")
        self.assertEqual(format_text(MessageReceived("花子", FAMILY, 0.0)), f"花子: {FAMILY}")

    def test_me_without_a_space_is_a_message(self) -> None:
        self.assertEqual(format_text(MessageReceived("alice", "/me", 0.0)), "alice: /me")
        self.assertEqual(format_text(MessageReceived("alice", "/meow", 0.0)), "alice: /meow")

    def test_an_empty_message(self) -> None:
        self.assertEqual(format_text(MessageReceived("alice", "", 0.0)), "alice: ")

    def test_line_breaks_and_controls_are_escaped(self) -> None:
        event = MessageReceived("alice", "one\ntwo\r\x1b[31m\x85\u2028\u2029\x7f\tend", 0.0)
        self.assertEqual(format_text(event), "alice: one\\ntwo\\r\\x1b[31m\\x85\\u2028\\u2029\\x7f\tend")

    def test_one_line_keeps_plain_text(self) -> None:
        text = f"a\\b {HELLO} {FAMILY} \u3000"
        self.assertIs(one_line(text), text)


class FormatJsonTests(SynchronousTestCase):
    def test_every_event(self) -> None:
        for event, _, expected in EVENTS:
            line = format_json(event)
            self.assertEqual(json.loads(line), expected, event)
            # Key order is part of the format: "event" first, then as documented.
            self.assertEqual(list(json.loads(line)), list(expected), event)

    def test_exact_line(self) -> None:
        self.assertEqual(
            format_json(MessageReceived("alice", "hello", 1795885041.972)),
            '{"event": "message", "sender": "alice", "text": "hello", "time": 1795885041.972, "action": false}',
        )

    def test_utf8_not_ascii_escapes(self) -> None:
        self.assertEqual(
            format_json(MessageReceived("花子", WAVE, 1.5)),
            '{"event": "message", "sender": "花子", "text": "/me 手を振る 👋", "time": 1.5, "action": true}',
        )

    def test_one_line_for_any_text(self) -> None:
        text = "one\ntwo\r\x85\u2028\u2029\x00"
        line = format_json(MessageReceived("alice", text, 0.0))
        self.assertEqual(line.splitlines(), [line])
        self.assertEqual(json.loads(line)["text"], text)


# -- the console ---------------------------------------------------------------------------


class FakeOwner:
    """Records what a LineConsole reports."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.warnings: list[str] = []
        self.ended: list[str] = []

    def line_read(self, line: str) -> None:
        self.sent.append(line)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def input_ended(self) -> None:
        self.ended.append("input")

    def output_lost(self) -> None:
        self.ended.append("output")


def attached(console: LineConsole) -> StringTransportWithDisconnection:
    transport = StringTransportWithDisconnection()
    transport.protocol = console
    console.makeConnection(transport)
    return transport


class LineConsoleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.owner = FakeOwner()
        self.console = LineConsole(self.owner)
        self.transport = attached(self.console)

    def test_lines_are_sent_as_text(self) -> None:
        self.console.dataReceived(f"hello\n{HELLO}\r\n\n\r\n  \n".encode())
        self.assertEqual(self.owner.sent, ["hello", HELLO, "  "])

    def test_a_line_split_across_reads(self) -> None:
        data = f"{WAVE}\n".encode()
        for index in range(len(data)):
            self.console.dataReceived(data[index : index + 1])
        self.assertEqual(self.owner.sent, [WAVE])

    def test_invalid_utf8_is_not_sent(self) -> None:
        self.console.dataReceived(b"\xff\xfe\nok\n")
        self.assertEqual(self.owner.sent, ["ok"])
        self.assertEqual(self.owner.warnings, ["not sent: the line is not valid UTF-8"])

    def test_too_long_a_line_is_dropped_and_reading_goes_on(self) -> None:
        long = b"x" * (LineConsole.MAX_LENGTH + 10)
        self.console.dataReceived(b"first\n" + long + b"\nsecond\nthird\n")
        self.assertEqual(self.owner.sent, ["first", "second", "third"])
        self.assertEqual(len(self.owner.warnings), 1)
        self.assertFalse(self.transport.disconnecting)

    def test_too_long_a_line_in_pieces(self) -> None:
        self.console.dataReceived(b"x" * (LineConsole.MAX_LENGTH + 10))
        self.console.dataReceived(b"y" * 100)
        self.console.dataReceived(b"zz\nnext\n")
        self.assertEqual(self.owner.sent, ["next"])
        self.assertEqual(len(self.owner.warnings), 1)

    def test_end_of_input_sends_the_last_line_without_newline(self) -> None:
        self.console.dataReceived(b"one\nlast")
        self.console.readConnectionLost()
        self.assertEqual(self.owner.sent, ["one", "last"])
        self.assertEqual(self.owner.ended, ["input"])

    def test_end_of_input_while_paused_sends_nothing(self) -> None:
        self.console.pause_input()
        self.console.dataReceived(b"one\ntwo")
        self.console.readConnectionLost()
        self.assertEqual(self.owner.sent, [])
        self.assertEqual(self.owner.ended, ["input"])

    def test_end_of_input_after_too_long_a_line(self) -> None:
        self.console.dataReceived(b"x" * (LineConsole.MAX_LENGTH + 10))
        self.console.readConnectionLost()
        self.assertEqual(self.owner.sent, [])
        self.assertEqual(len(self.owner.warnings), 1)

    def test_paused_input_waits(self) -> None:
        self.console.pause_input()
        self.assertEqual(self.transport.producerState, "paused")
        self.console.dataReceived(b"one\ntwo\n")
        self.assertEqual(self.owner.sent, [])
        self.console.resume_input()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.owner.sent, ["one", "two"])

    def test_write_line(self) -> None:
        self.console.write_line(HELLO)
        self.assertEqual(self.transport.value(), f"{HELLO}\n".encode())

    def test_output_lost(self) -> None:
        self.console.writeConnectionLost()
        self.console.write_line("nobody reads this")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.owner.ended, ["output"])


class DrainingTransport(StringTransportWithDisconnection):
    """A StringTransport that, as stdio's does, tells a pull producer when its output has drained."""

    def drain(self) -> None:
        assert self.producer is not None
        self.producer.resumeProducing()


class AfterOutputTests(SynchronousTestCase):
    """StdioLines.after_output: stderr lines wait for the stdout lines before them."""

    def setUp(self) -> None:
        self.console = LineConsole(FakeOwner())
        self.transport = DrainingTransport()
        self.transport.protocol = self.console
        self.console.makeConnection(self.transport)
        self.console.watch_output()
        self.done: list[str] = []

    def test_nothing_written_acts_at_once(self) -> None:
        self.console.after_output(lambda: self.done.append("warned"))
        self.assertEqual(self.done, ["warned"])

    def test_waits_for_the_lines_before_it(self) -> None:
        self.console.write_line("event")
        self.console.after_output(lambda: self.done.append("first"))
        self.console.after_output(lambda: self.done.append("second"))
        self.assertEqual(self.done, [])
        self.transport.drain()
        self.assertEqual(self.done, ["first", "second"])
        self.console.after_output(lambda: self.done.append("third"))
        self.assertEqual(self.done, ["first", "second", "third"])

    def test_close_lets_it_go_and_unregisters(self) -> None:
        self.console.write_line("event")
        self.console.after_output(lambda: self.done.append("warned"))
        self.successResultOf(self.console.close(Clock()))
        self.assertEqual(self.done, ["warned"])
        self.assertIsNone(self.transport.producer)

    def test_output_lost_lets_it_go(self) -> None:
        self.console.write_line("event")
        self.console.after_output(lambda: self.done.append("warned"))
        self.console.writeConnectionLost()
        self.assertEqual(self.done, ["warned"])


class FakeClient:
    """What a LineSession uses of a ChatClient, recorded; no network."""

    def __init__(self, *, host: bool = False) -> None:
        self.state = ConnectionState.IN_ROOM
        self.info: RoomInfo | None = RoomInfo("hoge", "alice", host, ("alice", "bob"), 300.0, 30.0)
        self.members: tuple[str, ...] = ("alice", "bob")
        self.sent: list[str] = []
        self.invitation: Deferred[str] = Deferred()

    def send(self, text: str) -> None:
        if self.state is not ConnectionState.IN_ROOM:
            raise NotInRoomError("reconnecting")
        self.sent.append(text)

    def invite(self) -> Deferred[str]:
        return self.invitation


class _SessionCase(SynchronousTestCase):
    """A session without a network: a fake client, a fake clock."""

    def setUp(self) -> None:
        self.reports: list[str] = []
        self.clock = Clock()
        self.session = self.make_session()
        self.transport = attached(self.session.console)
        self.client = FakeClient()
        self.session.client = cast(ChatClient, self.client)

    def make_session(self, **fields: Any) -> LineSession:
        arguments = ChatArguments(room="hoge", name="alice", line=True, **fields)
        return LineSession(self.clock, arguments, self.reports.append)

    def output(self) -> str:
        data: bytes = self.transport.value()
        return data.decode("utf-8")

    def read(self, data: str) -> None:
        self.session.console.dataReceived(data.encode("utf-8"))

    def lose_connection(self) -> None:
        self.client.state = ConnectionState.RECONNECTING
        self.session.chat_event(ConnectionLost("gone", will_reconnect=True))
        self.session.chat_event(Reconnecting(1, 0.5))

    def reconnect(self) -> None:
        self.client.state = ConnectionState.IN_ROOM
        self.session.chat_event(Reconnected("hoge", ("alice",)))


class SessionEventTests(_SessionCase):
    """What a session does on each event."""

    def test_reconnecting_keeps_reading_and_lines_wait(self) -> None:
        self.lose_connection()
        # Still reading: otherwise the end of input could not be seen.
        self.assertEqual(self.transport.producerState, "producing")
        self.read("one\n/me waves\n")
        self.assertEqual(self.client.sent, [])
        self.reconnect()
        self.assertEqual(self.client.sent, ["one", "/me waves"])
        self.assertEqual(
            self.output(),
            "! lost the connection to the server: gone; reconnecting\n"
            "! reconnecting in 0.5 s (attempt 1)\n"
            "! reconnected to hoge; members: alice\n",
        )
        self.assertNoResult(self.session.ended)

    def test_end_of_input_while_reconnecting_ends_at_once(self) -> None:
        self.lose_connection()
        self.session.console.readConnectionLost()
        self.assertEqual(self.successResultOf(self.session.ended), EXIT_OK)
        self.assertEqual((self.reports, self.session.closing_message), ([], None))

    def test_lines_waiting_at_end_of_input_get_a_grace(self) -> None:
        self.lose_connection()
        self.read("one\nlast")
        self.session.console.readConnectionLost()
        self.clock.advance(RECONNECT_GRACE - 0.1)
        self.assertNoResult(self.session.ended)
        self.reconnect()
        self.assertEqual(self.client.sent, ["one", "last"])
        self.assertEqual(self.successResultOf(self.session.ended), EXIT_OK)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lines_waiting_at_end_of_input_are_given_up(self) -> None:
        self.lose_connection()
        self.read("one\ntwo\n")
        self.session.console.readConnectionLost()
        self.clock.advance(RECONNECT_GRACE)
        self.assertEqual(self.successResultOf(self.session.ended), EXIT_ENDED)
        self.assertEqual(self.session.closing_message, "end of input while reconnecting; 2 lines not sent")
        self.assertEqual(self.client.sent, [])

    def test_lines_while_reconnecting_are_bounded(self) -> None:
        self.lose_connection()
        self.read("x\n" * (PENDING_LIMIT + 2))
        self.assertEqual(self.reports, [f"not sent: reconnecting, and {PENDING_LIMIT} lines already wait"] * 2)
        self.reconnect()
        self.assertEqual(len(self.client.sent), PENDING_LIMIT)

    def test_room_closed_ends_with_3(self) -> None:
        self.session.chat_event(RoomClosed("hoge", "the host left", "* room hoge was closed: the host left"))
        self.assertEqual(self.successResultOf(self.session.ended), EXIT_ENDED)
        # Said on stderr only once stdout has drained (LineSession.run).
        self.assertEqual(self.reports, [])
        self.assertEqual(self.session.closing_message, "room hoge was closed: the host left")

    def test_removed_ends_with_3(self) -> None:
        self.session.chat_event(RemovedForInactivity("hoge", "* you were removed from hoge after 1 s without activity"))
        self.assertEqual(self.successResultOf(self.session.ended), EXIT_ENDED)
        self.assertEqual(self.session.closing_message, "you were removed from hoge after 1 s without activity")

    def test_connection_lost_for_good_ends_with_3(self) -> None:
        self.lose_connection()
        self.read("unsent\n")
        self.session.chat_event(ConnectionLost("gone", will_reconnect=False))
        self.assertEqual(self.successResultOf(self.session.ended), EXIT_ENDED)
        self.assertEqual(self.session.closing_message, "lost the connection to the server: gone; 1 line not sent")

    def test_server_stopping_goes_on(self) -> None:
        self.session.chat_event(ServerStopping("hoge", "* the server is shutting down; room hoge is closed"))
        self.assertNoResult(self.session.ended)

    def test_json_output(self) -> None:
        session = self.make_session(json=True)
        transport = attached(session.console)
        session.chat_event(MessageReceived("bob", HELLO, 2.5))
        self.assertEqual(
            transport.value(),
            f'{{"event": "message", "sender": "bob", "text": "{HELLO}", "time": 2.5, "action": false}}\n'.encode(),
        )


class SlashCommandTests(_SessionCase):
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

    def test_parse_line(self) -> None:
        self.assertEqual(parse_line("/exit"), Run(Command.QUIT))
        self.assertEqual(parse_line("/Exit  soon "), Run(Command.QUIT, "soon"))
        self.assertEqual(parse_line("/exits"), Unknown("exits"))
        self.assertEqual(parse_line("//exits"), Say("/exits"))
        refused = Usage("not sent: the server takes the text /exit as leaving the room; /exit leaves")
        for line in ("//exit", " /exit ", "//exit "):
            self.assertEqual(parse_line(line), refused, line)


# -- sessions in this process, against the real service ------------------------------------


@implementer(IChatListener)
class Heard:
    def __init__(self) -> None:
        self.events: list[ChatEvent] = []

    def chat_event(self, event: ChatEvent) -> None:
        self.events.append(event)


class InProcessSession:
    """A line-mode run in this process, its stdio a StringTransport."""

    def __init__(self, reactor: Any, arguments: ChatArguments) -> None:
        self.reports: list[str] = []
        self.reported_after_stdout_closed: list[bool] = []
        """For each report: whether standard output was closed (so drained) before it."""
        self.console: LineConsole | None = None
        self.transport = StringTransportWithDisconnection()
        self.status = run_line_mode(reactor, arguments, attach=self._attach, report=self._report)

    def _report(self, message: str) -> None:
        self.reports.append(message)
        self.reported_after_stdout_closed.append(not self.transport.connected)

    def _attach(self, console: LineConsole) -> object:
        self.console = console
        self.transport.protocol = console
        console.makeConnection(self.transport)
        return self.transport

    def output(self) -> str:
        data: bytes = self.transport.value()
        return data.decode("utf-8")

    def end_input(self, data: bytes = b"") -> None:
        assert self.console is not None
        if data:
            self.console.dataReceived(data)
        self.console.readConnectionLost()


class _ServiceTestCase(TestCase):
    timeout = 20
    settings = Settings(tcp_port=0, udp_port=0, password_cost=2)

    def setUp(self) -> None:
        self.service: ChatService = make_service(self.settings, _reactor)
        self.service.startService()
        self.addCleanup(self._stop_service)

    def _stop_service(self) -> Deferred[Any] | None:
        return self.service.stopService() if self.service.running else None

    def arguments(self, room: str = "hoge", name: str = "bob", **fields: Any) -> ChatArguments:
        return ChatArguments(
            tcp_port=self.service.tcp_port,
            udp_port=self.service.udp_port,
            room=room,
            name=name,
            line=True,
            **fields,
        )

    def session(self, arguments: ChatArguments) -> InProcessSession:
        session = InProcessSession(_reactor, arguments)

        def finish() -> Deferred[int] | None:
            # A test that failed half-way leaves its session in the room.
            if session.status.called or session.console is None:
                return None
            session.end_input()
            return session.status

        self.addCleanup(finish)
        return session

    async def host(self, room: str = "hoge", password: str | None = None) -> tuple[ChatClient, Heard]:
        """A plain ChatClient that created C{room}, as alice."""
        heard = Heard()
        client = ChatClient(_reactor, "127.0.0.1", self.service.tcp_port, self.service.udp_port, listener=heard)
        self.addCleanup(client.leave)
        await client.create(room, "alice", password)
        return client, heard

    async def refused(self, arguments: ChatArguments, message: str) -> None:
        session = self.session(arguments)
        status = await session.status
        self.assertEqual((status, session.reports), (EXIT_NOT_ENTERED, [message]))
        self.assertEqual(session.output(), "")
        self.assertFalse(session.transport.connected, "stdio is closed at exit")


class NeverStartedTests(TestCase):
    timeout = 5

    async def test_an_unexpected_error_is_one_line(self) -> None:
        reports: list[str] = []

        def attach(console: LineConsole) -> object:
            raise RuntimeError("no stdio here")

        arguments = ChatArguments(room="hoge", name="bob", line=True)
        status = await run_line_mode(_reactor, arguments, attach=attach, report=reports.append)
        self.assertEqual((status, reports), (EXIT_INTERNAL, ["unexpected error: RuntimeError: no stdio here"]))

    async def test_no_room_is_a_usage_error(self) -> None:
        session = InProcessSession(_reactor, ChatArguments(name="bob", line=True))
        self.assertEqual(await session.status, EXIT_USAGE)
        self.assertEqual(session.reports, ["line mode needs --room and --name"])


class EnteringFailsTests(_ServiceTestCase):
    """Every way of not getting in: exit status 1, one line on stderr, nothing on stdout."""

    async def test_server_not_running(self) -> None:
        # A port that was free a moment ago: nothing listens on it.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            number = probe.getsockname()[1]
        session = self.session(replace(self.arguments(), tcp_port=number))
        self.assertEqual(await session.status, EXIT_NOT_ENTERED)
        self.assertEqual(len(session.reports), 1)
        self.assertTrue(
            session.reports[0].startswith(
                f"cannot join room hoge: cannot reach chatd at 127.0.0.1 port {number}: ConnectionRefusedError"
            ),
            session.reports,
        )

    async def test_room_exists(self) -> None:
        await self.host()
        await self.refused(self.arguments(create=True), "cannot create room hoge: room 'hoge' exists")

    async def test_no_such_room(self) -> None:
        await self.refused(self.arguments(), "cannot join room hoge: no room 'hoge'")

    async def test_wrong_password(self) -> None:
        await self.host(password="secret")
        await self.refused(self.arguments(password="guess"), "cannot join room hoge: wrong password for room 'hoge'")

    async def test_name_taken(self) -> None:
        await self.host()
        await self.refused(self.arguments(name="alice"), "cannot join room hoge: 'alice' is already in room 'hoge'")

    async def test_invalid_invitation(self) -> None:
        await self.host(password="secret")
        await self.refused(
            self.arguments(invite="Zx8pLm2Qv7RtY4nB0cKd9w"),
            "cannot join room hoge: the invitation is not valid for this room",
        )


class InRoomTests(_ServiceTestCase):
    async def test_lines_in_events_out_and_leave_at_end_of_input(self) -> None:
        client, heard = await self.host()
        session = self.session(self.arguments())
        await until(self, lambda: session.output() != "", "bob entered")
        self.assertEqual(session.output(), "* you joined hoge as bob; members: alice, bob\n")
        client.send(HELLO)
        await until(self, lambda: HELLO in session.output(), "bob heard alice")
        # CRLF, an empty line, a line that is not UTF-8, and a last line without newline.
        session.end_input(WAVE.encode() + b"\r\n\n\xff\nbye")
        self.assertEqual(await session.status, EXIT_OK)
        await until(self, lambda: any(isinstance(event, MemberLeft) for event in heard.events), "bob left")
        # Messages, then the leave: UDP and TCP must not overtake each other
        # at the end of input (see FLUSH_TIMEOUT).
        self.assertEqual(
            [(type(event).__name__, getattr(event, "text", "")) for event in heard.events],
            [
                ("MemberJoined", "* bob joined hoge"),
                ("MessageReceived", WAVE),
                ("MessageReceived", "bye"),
                ("MemberLeft", "* bob left hoge"),
            ],
        )
        self.assertEqual(session.output(), f"* you joined hoge as bob; members: alice, bob\nalice: {HELLO}\n")
        self.assertEqual(session.reports, ["not sent: the line is not valid UTF-8"])
        self.assertFalse(session.transport.connected)

    async def test_json(self) -> None:
        client, _ = await self.host()
        session = self.session(self.arguments(json=True))
        await until(self, lambda: session.output() != "", "bob entered")
        client.send(WAVE)
        await until(self, lambda: session.output().count("\n") == 2, "bob heard alice")
        entered, message = (json.loads(line) for line in session.output().splitlines())
        self.assertEqual(
            entered, {"event": "entered", "room": "hoge", "user": "bob", "host": False, "members": ["alice", "bob"]}
        )
        self.assertIsInstance(message.pop("time"), float)
        self.assertEqual(message, {"event": "message", "sender": "alice", "text": WAVE, "action": True})
        session.end_input()
        self.assertEqual(await session.status, EXIT_OK)

    async def test_room_closed_under_us(self) -> None:
        client, _ = await self.host()
        session = self.session(self.arguments())
        await until(self, lambda: session.output() != "", "bob entered")
        await client.leave()
        self.assertEqual(await session.status, EXIT_ENDED)
        self.assertEqual(
            session.output(),
            "* you joined hoge as bob; members: alice, bob\n* room hoge was closed: the host left\n",
        )
        self.assertEqual(session.reports, ["room hoge was closed: the host left"])
        # After the event's line has gone out, not before it.
        self.assertEqual(session.reported_after_stdout_closed, [True])

    async def test_output_lost_leaves(self) -> None:
        _, heard = await self.host()
        session = self.session(self.arguments())
        await until(self, lambda: session.output() != "", "bob entered")
        assert session.console is not None
        session.console.writeConnectionLost()
        self.assertEqual(await session.status, EXIT_OK)
        await until(self, lambda: any(isinstance(event, MemberLeft) for event in heard.events), "bob left")

    async def test_server_stopping_then_end_of_input(self) -> None:
        session = self.session(self.arguments(name="alice", create=True))
        await until(self, lambda: session.output() != "", "alice entered")
        await self.service.stopService()
        await until(self, lambda: "! reconnecting" in session.output(), "alice reconnecting")
        # 0.5 s shortened by up to 20 % at random, to the hundredth of a second.
        retry = re.fullmatch(
            r"\* you created hoge as alice; members: alice\n"
            r"\* the server is shutting down; room hoge is closed\n"
            r"! lost the connection to the server; reconnecting\n"
            r"! reconnecting in (0\.\d{1,2}) s \(attempt 1\)\n",
            session.output(),
        )
        assert retry is not None, session.output()
        self.assertTrue(0.4 <= float(retry.group(1)) <= 0.5, retry.group(1))
        session.end_input()
        self.assertEqual(await session.status, EXIT_OK)
        self.assertEqual(session.reports, [])


class RemovedForInactivityTests(_ServiceTestCase):
    settings = Settings(tcp_port=0, udp_port=0, password_cost=2, idle_timeout=0.5, sweep_interval=0.1)

    async def test_removed(self) -> None:
        client, _ = await self.host()
        # The host stays active by talking (keepalives come only every 30 s).
        chatter = LoopingCall(client.send, "")
        chatter.clock = CLOCK
        chatter.start(0.1)
        self.addCleanup(lambda: chatter.stop() if chatter.running else None)
        session = self.session(self.arguments())
        self.assertEqual(await session.status, EXIT_ENDED)
        self.assertTrue(session.output().startswith("* you joined hoge as bob; members: alice, bob\n"))
        self.assertTrue(
            session.output().endswith("* you were removed from hoge after 0.5 s without activity\n"),
            session.output(),
        )
        self.assertEqual(session.reports, ["you were removed from hoge after 0.5 s without activity"])


# -- chatd-chat --line processes -----------------------------------------------------------


class LineProcess(ProcessProtocol):
    """One C{python -m chatd.client.chat_cli --line ...}: its output collected, its exit status awaited."""

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.ended: Deferred[int] = Deferred()

    @override
    def outReceived(self, data: bytes) -> None:
        self.stdout += data

    @override
    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    @override
    def processEnded(self, reason: Failure) -> None:
        if isinstance(reason.value, ProcessDone):
            self.ended.callback(0)
        elif isinstance(reason.value, ProcessTerminated) and reason.value.exitCode is not None:
            self.ended.callback(reason.value.exitCode)
        else:
            # Killed by a signal: no exit status.
            self.ended.callback(-1)

    def write(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(text.encode("utf-8"))

    def close_stdin(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def lines(self) -> list[bytes]:
        return self.stdout.splitlines(keepends=True)


class ProcessTests(_ServiceTestCase):
    """Two chatd-chat --line processes chat through the service running in this process."""

    timeout = 60

    def spawn(self, *arguments: str) -> LineProcess:
        process = LineProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "chatd.tui.main", "--line"]
        command += ["--tcp-port", str(self.service.tcp_port), "--udp-port", str(self.service.udp_port)]
        IReactorProcess(_reactor).spawnProcess(
            process, sys.executable, [*command, *arguments], env=env, path=str(REPO_ROOT)
        )
        self.addCleanup(self._kill, process)
        return process

    async def _kill(self, process: LineProcess) -> None:
        if not process.ended.called:
            assert process.transport is not None
            process.transport.signalProcess("KILL")
        await process.ended

    async def line(self, process: LineProcess, number: int, expected: str) -> None:
        """Wait for line C{number} (from 1) of C{process}'s output, and check its bytes."""
        await until(
            self,
            lambda: len(process.lines()) >= number or process.ended.called,
            f"line {number}: {expected!r}; output so far {process.stdout!r}, stderr {process.stderr!r}",
        )
        self.assertEqual(process.lines()[number - 1 : number], [f"{expected}\n".encode()], process.stderr)

    async def exit_status(self, process: LineProcess) -> int:
        await until(self, lambda: process.ended.called, f"exit; stderr {process.stderr!r}")
        return await process.ended

    async def test_two_processes_chat(self) -> None:
        alice = self.spawn("--room", "hoge", "--name", "alice", "--create")
        await self.line(alice, 1, "* you created hoge as alice; members: alice")
        bob = self.spawn("--room", "hoge", "--name", "bob")
        await self.line(bob, 1, "* you joined hoge as bob; members: alice, bob")
        await self.line(alice, 2, "* bob joined hoge")
        # Bob speaks first: his message is relayed only after his first
        # keepalive (sent before it) registered his address, so he hears alice.
        bob.write(f"{HELLO}\n")
        await self.line(alice, 3, f"bob: {HELLO}")
        alice.write(f"{WAVE}\r\n")
        await self.line(bob, 2, "* alice 手を振る 👋")
        bob.close_stdin()
        self.assertEqual(await self.exit_status(bob), 0)
        await self.line(alice, 4, "* bob left hoge")
        alice.close_stdin()
        self.assertEqual(await self.exit_status(alice), 0)

        self.assertEqual(
            alice.stdout,
            "* you created hoge as alice; members: alice\n"
            "* bob joined hoge\n"
            "bob: こんにちは 🙂\n"
            "* bob left hoge\n".encode(),
        )
        self.assertEqual(bob.stdout, "* you joined hoge as bob; members: alice, bob\n* alice 手を振る 👋\n".encode())
        self.assertEqual((alice.stderr, bob.stderr), (b"", b""))

    async def test_json_and_the_host_leaving(self) -> None:
        alice = self.spawn("--room", "hoge", "--name", "alice", "--create", "--json")
        await self.line(
            alice, 1, '{"event": "entered", "room": "hoge", "user": "alice", "host": true, "members": ["alice"]}'
        )
        bob = self.spawn("--room", "hoge", "--name", "bob")
        await self.line(bob, 1, "* you joined hoge as bob; members: alice, bob")
        await self.line(
            alice, 2, '{"event": "joined", "user": "bob", "members": ["alice", "bob"], "text": "* bob joined hoge"}'
        )
        bob.write(f"{WAVE}\n")
        await until(self, lambda: len(alice.lines()) >= 3, "alice heard bob")
        time = json.loads(alice.lines()[2])["time"]
        self.assertIsInstance(time, float)
        self.assertLess(abs(time - CLOCK.seconds()), 60)
        await self.line(
            alice,
            3,
            f'{{"event": "message", "sender": "bob", "text": "{WAVE}", "time": {time!r}, "action": true}}',
        )
        # The host's end of input closes the room: bob ends with status 3.
        alice.close_stdin()
        self.assertEqual(await self.exit_status(alice), 0)
        self.assertEqual(await self.exit_status(bob), EXIT_ENDED)
        await self.line(bob, 2, "* room hoge was closed: the host left")
        self.assertEqual(len(alice.lines()), 3)
        self.assertEqual(len(bob.lines()), 2)
        self.assertEqual((alice.stderr, bob.stderr), (b"", b"chatd-chat: room hoge was closed: the host left\n"))

    async def test_refused_process(self) -> None:
        bob = self.spawn("--room", "nowhere", "--name", "bob")
        self.assertEqual(await self.exit_status(bob), EXIT_NOT_ENTERED)
        self.assertEqual((bob.stdout, bob.stderr), (b"", b"chatd-chat: cannot join room nowhere: no room 'nowhere'\n"))
