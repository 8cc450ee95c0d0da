"""
Line mode (chatd.client.line_mode): a session's reading, reconnecting and
ending with a fake client, sessions in this process against the real service,
and two C{chatd-chat --line} processes chatting through it, checked byte for
byte. What it prints, its console and its commands have their own tests
(test_line_output, test_line_console, test_line_commands).
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
from chatd.client.delivery import DeliveryStats
from chatd.client.events import (
    ChatEvent,
    ConnectionLost,
    MemberLeft,
    MessageReceived,
    Reconnected,
    Reconnecting,
    RemovedForInactivity,
    RoomClosed,
    ServerStopping,
)
from chatd.client.line_console import LineConsole
from chatd.client.line_mode import (
    EXIT_ENDED,
    EXIT_INTERNAL,
    EXIT_NOT_ENTERED,
    EXIT_OK,
    EXIT_USAGE,
    PENDING_LIMIT,
    RECONNECT_GRACE,
    LineSession,
    run_line_mode,
)
from chatd.daemon.service import ChatService, make_service
from chatd.daemon.settings import Settings
from chatd.protocol.errors import NotInRoomError
from tests.client.test_line_console import attached
from tests.client.test_line_output import HELLO, WAVE

CLOCK = cast(IReactorTime, _reactor)
REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0
"""Seconds any one wait may take before the test fails (a process start included)."""


async def until(case: SynchronousTestCase, predicate: Callable[[], bool], what: str) -> None:
    """Wait, bounded by WAIT, until C{predicate} holds."""
    deadline = CLOCK.seconds() + WAIT
    while not predicate():
        if CLOCK.seconds() > deadline:
            case.fail(f"not within {WAIT:g} s: {what}")
        await deferLater(CLOCK, 0.01)


# -- a session with a fake client ----------------------------------------------------------


class FakeClient:
    """What a LineSession uses of a ChatClient, recorded; no network."""

    def __init__(self, *, host: bool = False) -> None:
        self.state = ConnectionState.IN_ROOM
        self.info: RoomInfo | None = RoomInfo("hoge", "alice", host, ("alice", "bob"), 300.0, 30.0)
        self.members: tuple[str, ...] = ("alice", "bob")
        self.sent: list[str] = []
        self.invitation: Deferred[str] = Deferred()
        self.delivery = False
        """The server granted reliable delivery: sends get ids, /retry and /stats have something to say."""
        self.delivery_stats: DeliveryStats | None = None
        self.delivery_path: str | None = None
        self.failed: list[int] = []
        """The ids of the messages given up on, that retry() sends again."""

    def send(self, text: str) -> int | None:
        if self.state is not ConnectionState.IN_ROOM:
            raise NotInRoomError("reconnecting")
        self.sent.append(text)
        return len(self.sent) if self.delivery else None

    def retry(self) -> list[int]:
        if self.state is not ConnectionState.IN_ROOM:
            raise NotInRoomError("reconnecting")
        retried, self.failed = self.failed, []
        return retried

    def invite(self) -> Deferred[str]:
        return self.invitation


class SessionCase(SynchronousTestCase):
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


class SessionEventTests(SessionCase):
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
        # chatd-chat asks for reliable delivery: the message has its place in the room, and is not history.
        self.assertEqual(
            message,
            {"event": "message", "sender": "alice", "text": WAVE, "action": True, "seq": 1, "history": False},
        )
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
            # It holds a resume credential: it tries that first, on the same server.
            r"! reconnecting in (0\.\d{1,2}) s \(attempt 1\): resuming on 127\.0\.0\.1:\d+\n",
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
            f'{{"event": "message", "sender": "bob", "text": "{WAVE}", "time": {time!r}, "action": true,'
            ' "seq": 1, "history": false}',
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
