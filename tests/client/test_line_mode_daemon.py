"""
C{chatd-chat --line} processes against a real C{twistd -n chatd} daemon: the
slash commands (C{/exit}, C{/who}, an unknown one), the end of input while
the client is reconnecting to a daemon that was killed, and the order of the
last standard error line after the standard output it follows.

The other member is a ChatClient in this process, so the test hears exactly
what reached the room.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IReactorProcess
from twisted.trial.unittest import TestCase

from chatd.client.chat_client import ChatClient
from chatd.client.events import MemberJoined, MemberLeft, RoomClosed
from chatd.client.line_mode import EXIT_ENDED, EXIT_OK, RECONNECT_GRACE
from tests.client.test_line_mode import REPO_ROOT, LineProcess
from tests.daemon.test_twistd import Daemon
from tests.loopback_clients import free_ports
from tests.waiting import CLOCK, Recorder, sleep, until

WAIT = 10.0
"""Seconds a process start or exit may take before the test fails."""


class LineModeAgainstDaemonTests(TestCase):
    timeout = 45

    def setUp(self) -> None:
        self.tcp_port, self.udp_port = free_ports()
        self.daemon = Daemon(self, self.tcp_port, self.udp_port)
        # Blocks the reactor while the daemon starts: nothing of ours runs yet.
        self.daemon.wait_listening()

    def spawn(self, *arguments: str, merge_stderr: bool = False) -> LineProcess:
        """A C{chatd-chat --line} process; with C{merge_stderr} its stderr goes into its stdout pipe."""
        process = LineProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "chatd.tui.main", "--line"]
        command += ["--tcp-port", str(self.tcp_port), "--udp-port", str(self.udp_port), *arguments]
        if merge_stderr:
            # One pipe for both (the shell's 2>&1) keeps the order the two were written in.
            command = ["/bin/sh", "-c", 'exec "$@" 2>&1', "sh", *command]
        IReactorProcess(_reactor).spawnProcess(process, command[0], command, env=env, path=str(REPO_ROOT))
        self.addCleanup(self._kill, process)
        return process

    async def _kill(self, process: LineProcess) -> None:
        if not process.ended.called:
            assert process.transport is not None
            process.transport.signalProcess("KILL")
        await process.ended

    async def host(self, room: str = "hoge") -> tuple[ChatClient, Recorder]:
        """Alice, a ChatClient in this process, creates C{room}."""
        heard = Recorder("alice")
        client = ChatClient(_reactor, "127.0.0.1", self.tcp_port, self.udp_port, listener=heard, reconnect=False)
        self.addCleanup(client.leave)
        await client.create(room, "alice")
        return client, heard

    async def output_line(self, process: LineProcess, number: int) -> str:
        """Line C{number} (from 1) of C{process}'s output, once it is there."""
        await until(
            lambda: len(process.lines()) >= number or process.ended.called,
            f"line {number}; output so far {process.stdout!r}, stderr {process.stderr!r}",
            WAIT,
        )
        self.assertGreaterEqual(len(process.lines()), number, (process.stdout, process.stderr))
        return process.lines()[number - 1].decode("utf-8")

    async def exit_status(self, process: LineProcess, within: float = WAIT) -> int:
        await until(lambda: process.ended.called, f"exit; stdout {process.stdout!r}, stderr {process.stderr!r}", within)
        return await process.ended

    async def test_exit_leaves_and_exits_0(self) -> None:
        _, heard = await self.host()
        bob = self.spawn("--room", "hoge", "--name", "bob")
        self.assertEqual(await self.output_line(bob, 1), "* you joined hoge as bob; members: alice, bob\n")
        await heard.next(MemberJoined, lambda event: event.user == "bob")
        bob.write("before\n/exit\nafter\n")
        self.assertEqual(await self.exit_status(bob), EXIT_OK)
        await heard.next(MemberLeft, lambda event: event.user == "bob")
        # Longer than the client's first reconnect delay (0.5 s): a rejoin would show by now.
        await sleep(1.5)
        self.assertEqual(len(heard.of(MemberJoined)), 1, heard.events)
        self.assertEqual(heard.messages_from("bob"), ["before"])
        self.assertEqual((bob.stdout, bob.stderr), (b"* you joined hoge as bob; members: alice, bob\n", b""))

    async def test_close_closes_the_room_on_purpose(self) -> None:
        """The host's /close: the others are told the host closed the room, and it exits 0."""
        heard = Recorder("bob")
        bob = ChatClient(_reactor, "127.0.0.1", self.tcp_port, self.udp_port, listener=heard, reconnect=False)
        self.addCleanup(bob.leave)
        alice = self.spawn("--room", "hoge", "--name", "alice", "--create")
        self.assertEqual(await self.output_line(alice, 1), "* you created hoge as alice; members: alice\n")
        await bob.join("hoge", "bob")
        self.assertEqual(await self.output_line(alice, 2), "* bob joined hoge\n")
        alice.write("/close\n")
        self.assertEqual(await self.exit_status(alice), EXIT_OK)
        closed = await heard.next(RoomClosed)
        self.assertEqual(closed.reason, "the host closed the room")

    async def test_who_prints_the_members(self) -> None:
        await self.host()
        bob = self.spawn("--room", "hoge", "--name", "bob")
        self.assertEqual(await self.output_line(bob, 1), "* you joined hoge as bob; members: alice, bob\n")
        carol = self.spawn("--room", "hoge", "--name", "carol", "--json")
        self.assertEqual(json.loads(await self.output_line(carol, 1))["members"], ["alice", "bob", "carol"])
        self.assertEqual(await self.output_line(bob, 2), "* carol joined hoge\n")
        bob.write("/who\n")
        carol.write("/WHO\n")
        self.assertEqual(await self.output_line(bob, 3), "= members of hoge: alice, bob, carol\n")
        self.assertEqual(
            json.loads(await self.output_line(carol, 2)),
            {"event": "members", "room": "hoge", "members": ["alice", "bob", "carol"]},
        )
        for process in (bob, carol):
            process.close_stdin()
            self.assertEqual(await self.exit_status(process), EXIT_OK)
        self.assertEqual((bob.stderr, carol.stderr), (b"", b""))

    async def test_an_unknown_command_is_an_error_and_not_sent(self) -> None:
        _, heard = await self.host()
        bob = self.spawn("--room", "hoge", "--name", "bob")
        await self.output_line(bob, 1)
        await heard.next(MemberJoined, lambda event: event.user == "bob")
        bob.write("/frobnicate the thing\n//frobnicate is a word\nhello\n")
        await heard.message("bob", "hello")
        self.assertEqual(heard.messages_from("bob"), ["/frobnicate is a word", "hello"])
        await until(lambda: bob.stderr.endswith(b"\n"), f"bob's error; stderr {bob.stderr!r}", WAIT)
        self.assertEqual(
            bob.stderr,
            b"chatd-chat: unknown command /frobnicate: not sent (/help lists the commands;"
            b" //frobnicate sends it as text)\n",
        )
        bob.close_stdin()
        self.assertEqual(await self.exit_status(bob), EXIT_OK)

    async def test_end_of_input_while_reconnecting(self) -> None:
        bob = self.spawn("--room", "hoge", "--name", "bob", "--create")
        self.assertEqual(await self.output_line(bob, 1), "* you created hoge as bob; members: bob\n")
        # Killed, not stopped: no notice, the client just loses its connection and retries.
        self.daemon.kill()
        await until(lambda: b"! reconnecting" in bob.stdout, f"bob reconnecting; stdout {bob.stdout!r}", WAIT)
        started = CLOCK.seconds()
        bob.close_stdin()
        # Nothing waits to be sent, so there is nothing to wait for: it ends at once.
        self.assertEqual(await self.exit_status(bob, within=3.0), EXIT_OK)
        self.assertLess(CLOCK.seconds() - started, 3.0)
        self.assertEqual(bob.stderr, b"")

    async def test_end_of_input_while_reconnecting_with_lines_unsent(self) -> None:
        bob = self.spawn("--room", "hoge", "--name", "bob", "--create")
        await self.output_line(bob, 1)
        self.daemon.kill()
        await until(lambda: b"! reconnecting" in bob.stdout, f"bob reconnecting; stdout {bob.stdout!r}", WAIT)
        started = CLOCK.seconds()
        bob.write("one\ntwo\n")
        bob.close_stdin()
        # The lines wait RECONNECT_GRACE seconds for the server to come back; it does not.
        self.assertEqual(await self.exit_status(bob, within=RECONNECT_GRACE + 3.0), EXIT_ENDED)
        self.assertLess(CLOCK.seconds() - started, RECONNECT_GRACE + 3.0)
        self.assertEqual(
            bob.stderr,
            b"chatd-chat: end of input while reconnecting; 2 lines not sent\n",
        )

    async def test_room_closed_line_comes_after_the_event(self) -> None:
        alice, _ = await self.host()
        bob = self.spawn("--room", "hoge", "--name", "bob", merge_stderr=True)
        await self.output_line(bob, 1)
        await alice.leave()
        self.assertEqual(await self.exit_status(bob), EXIT_ENDED)
        self.assertEqual(
            bob.stdout.decode("utf-8"),
            "* you joined hoge as bob; members: alice, bob\n"
            "* room hoge was closed: the host left\n"
            "chatd-chat: room hoge was closed: the host left\n",
        )

    async def test_answers_and_errors_in_the_order_of_the_input(self) -> None:
        alice = self.spawn("--room", "hoge", "--name", "alice", "--create", merge_stderr=True)
        await self.output_line(alice, 1)
        # The end of input comes at once: the invitation is still awaited.
        alice.write("/who\n/nope\n/invite\n")
        alice.close_stdin()
        self.assertEqual(await self.exit_status(alice), EXIT_OK)
        lines = alice.stdout.decode("utf-8").splitlines()
        self.assertEqual(
            lines[:3],
            [
                "* you created hoge as alice; members: alice",
                "= members of hoge: alice",
                "chatd-chat: unknown command /nope: not sent (/help lists the commands; //nope sends it as text)",
            ],
        )
        self.assertEqual(len(lines), 4, lines)
        self.assertRegex(lines[3], r"^= invitation to hoge: [A-Za-z0-9_-]{22}$")
