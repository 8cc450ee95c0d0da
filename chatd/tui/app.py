"""
The terminal itself: an urwid MainLoop on Twisted's reactor around the
L{TerminalApp}, so the UI and the network share one reactor.

The reactor belongs to C{task.react} (chatd.client.chat_cli); the loop is started
and stopped around the app (house style, section 5), and whatever ends the
app (quitting, an error, the reactor shutting down on SIGTERM) gives the
terminal back in its normal mode.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

import urwid
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from chatd.client.chat_cli import ChatArguments, client_for
from chatd.client.chat_client import IChatListener
from chatd.tui import theme
from chatd.tui.controller import TerminalApp
from chatd.tui.editing import coalesce_typing
from chatd.tui.session import ChatClientLike, ClientFactory

NOT_A_TERMINAL = 2


def run_terminal_app(reactor: Any, arguments: ChatArguments) -> Deferred[int]:
    """Run the terminal app on C{reactor} (running); fire with the exit status when the user quits."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        sys.stderr.write("chatd-chat: the terminal app needs a terminal; scripts and bots can use --line\n")
        return succeed(NOT_A_TERMINAL)

    def client_factory(host: str, tcp_port: int, udp_port: int, listener: IChatListener) -> ChatClientLike:
        # Host and ports come from the screen, which the user may have edited.
        return client_for(reactor, arguments, host, tcp_port, udp_port, listener)

    screen = urwid.display.raw.Screen()
    return Deferred.fromCoroutine(run_app(reactor, arguments, client_factory, screen, sys.stdin.fileno()))


class _Redraw:
    """Repaint once soon after changes that came from the network, not from a key."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._pending: IDelayedCall | None = None
        self.draw: Callable[[], None] = lambda: None

    def request(self) -> None:
        # Coalesced: a burst of messages costs one repaint.
        if self._pending is None:
            self._pending = self._clock.callLater(0, self._run)

    def _run(self) -> None:
        self._pending = None
        self.draw()

    def cancel(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None


async def run_app(
    reactor: Any,
    arguments: ChatArguments,
    client_factory: ClientFactory,
    screen: urwid.display.raw.Screen,
    keyboard: int,
    errors: TextIO = sys.stderr,
) -> int:
    """
    The app on C{screen}, which reads keys from the terminal C{keyboard}
    (a file descriptor), until it finishes; the exit status. Unexpected
    errors are printed to C{errors} once the terminal is back to normal,
    with status 1.
    """
    redraw = _Redraw(reactor)
    app = TerminalApp(arguments, client_factory, reactor, redraw.request)
    loop = urwid.MainLoop(
        app.widget,
        theme.PALETTE,
        screen=screen,
        # Off, so that the terminal's own selection copies text as usual.
        handle_mouse=False,
        input_filter=coalesce_typing,
        event_loop=urwid.TwistedEventLoop(reactor=reactor, manage_reactor=False),
    )

    def draw() -> None:
        if screen.started:
            loop.draw_screen()

    redraw.draw = draw
    stopped = False

    def stop_loop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            redraw.cancel()
            loop.stop()

    def on_shutdown() -> Deferred[None]:
        # The reactor is stopping under us (SIGTERM, SIGINT from outside):
        # say goodbye to the room, then give the terminal back, since the
        # code after the await below will never run.
        return app.close().addBoth(lambda _: stop_loop())

    trigger = reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    loop.start()
    try:
        # Ctrl-C is a key here (it quits after leaving the room), not SIGINT,
        # which would stop the reactor under us; stop() puts it back.
        screen.tty_signal_keys(intr="undefined", fileno=keyboard)
        app.start()
        return await app.finished
    except Exception:
        stop_loop()
        errors.write("chatd-chat: internal error; please report it with this:\n")
        traceback.print_exc(file=errors)
        await app.close()
        return 1
    finally:
        stop_loop()
        reactor.removeSystemEventTrigger(trigger)
