"""
chatd.tui.app on a real terminal: a pseudo-terminal stands in for the user's,
urwid's raw screen draws on it, keys are written to its other end. The
point: whatever ends the app, the terminal is left as it was found.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
import sys
import termios

import urwid
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from chatd.client.chat_cli import ChatArguments
from chatd.client.chat_client import IChatListener
from chatd.tui.app import run_app, run_terminal_app
from tests.tui_helpers import CLOCK, REACTOR, FakeClient, until


class NotATerminalTests(unittest.SynchronousTestCase):
    def test_says_so_and_points_to_line_mode(self) -> None:
        errors = io.StringIO()
        self.patch(sys, "stdin", io.StringIO())
        self.patch(sys, "stderr", errors)
        self.assertEqual(self.successResultOf(run_terminal_app(REACTOR, ChatArguments())), 2)
        self.assertIn("needs a terminal; scripts and bots can use --line", errors.getvalue())


class RunAppTests(unittest.TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.master, self.slave = os.openpty()
        self.addCleanup(os.close, self.master)
        self.addCleanup(os.close, self.slave)
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.set_blocking(self.master, False)
        self.before = termios.tcgetattr(self.slave)
        self.drawn = bytearray()
        self.errors = io.StringIO()
        self.clients: list[FakeClient] = []

    def make_client(self, host: str, tcp_port: int, udp_port: int, listener: IChatListener) -> FakeClient:
        client = FakeClient(host, tcp_port, udp_port, listener)
        self.clients.append(client)
        return client

    def run_app(self, arguments: ChatArguments) -> Deferred[int]:
        tty_in = os.fdopen(self.slave, "rb", buffering=0, closefd=False)
        tty_out = os.fdopen(self.slave, "w", encoding="utf-8", closefd=False)
        self.addCleanup(tty_in.close)
        self.addCleanup(tty_out.close)
        screen = urwid.display.raw.Screen(tty_in, tty_out, bracketed_paste_mode=False, focus_reporting=False)
        return Deferred.fromCoroutine(
            run_app(REACTOR, arguments, self.make_client, screen, self.slave, errors=self.errors)
        )

    def output(self) -> bytes:
        try:
            while chunk := os.read(self.master, 65536):
                self.drawn += chunk
        except BlockingIOError:
            pass
        return bytes(self.drawn)

    async def type(self, data: bytes) -> None:
        """Write C{data} as keys, as fast as the terminal takes them, with no waiting between."""
        while data:
            try:
                data = data[os.write(self.master, data) :]
            except BlockingIOError:
                # The terminal's buffer is full until the app reads.
                await deferLater(CLOCK, 0.001)
            self.output()

    async def finish(self, running: Deferred[int]) -> int:
        await until(lambda: running.called, "the app finished")
        status = await running
        # urwid's Twisted loop has one idle call of 1/256 s still to run.
        await deferLater(CLOCK, 0.05)
        return status

    async def test_ctrl_c_quits_and_gives_the_terminal_back(self) -> None:
        running = self.run_app(ChatArguments())
        await until(lambda: b"Your name" in self.output(), "the name screen drawn")
        self.assertNotEqual(termios.tcgetattr(self.slave), self.before)
        os.write(self.master, b"alice\r")
        await until(lambda: b"Create or join a room" in self.output(), "the room screen drawn")
        os.write(self.master, b"\x03")
        self.assertEqual(await self.finish(running), 0)
        self.assertEqual(termios.tcgetattr(self.slave), self.before)

    async def test_quit_leaves_the_room(self) -> None:
        running = self.run_app(ChatArguments(name="alice", room="hoge", create=True))
        await until(lambda: bool(self.clients), "a client")
        self.clients[0].enter_succeeds(True, ("alice",))
        await until(lambda: b"You created room hoge" in self.output(), "the chat screen drawn by the network event")
        os.write(self.master, b"/quit\r")
        self.assertEqual(await self.finish(running), 0)
        self.assertEqual(self.clients[0].left, 1)
        self.assertEqual(termios.tcgetattr(self.slave), self.before)

    async def test_a_long_paste_is_quick_and_too_long_is_said(self) -> None:
        running = self.run_app(ChatArguments(name="alice", room="hoge", create=True))
        await until(lambda: bool(self.clients), "a client")
        self.clients[0].enter_succeeds(True, ("alice",))
        await until(lambda: b"You created room hoge" in self.output(), "the chat screen")
        await self.type(b"y" * 5000 + b"\r")
        await until(lambda: b"too long to relay" in self.output(), "the message refused", timeout=3)
        os.write(self.master, b"\x03")
        self.assertEqual(await self.finish(running), 0)

    async def test_an_error_gives_the_terminal_back_then_says_so(self) -> None:
        def broken(host: str, tcp_port: int, udp_port: int, listener: IChatListener) -> FakeClient:
            raise RuntimeError("no clients today")

        self.make_client = broken  # type: ignore[method-assign]
        running = self.run_app(ChatArguments(name="alice", room="hoge"))
        self.assertEqual(await self.finish(running), 1)
        self.assertEqual(termios.tcgetattr(self.slave), self.before)
        self.assertIn("chatd-chat: internal error", self.errors.getvalue())
        self.assertIn("RuntimeError: no clients today", self.errors.getvalue())
