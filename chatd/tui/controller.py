"""
Which screen shows when: name, then create/join, then the chat, and back.

L{TerminalApp} has no terminal of its own: its C{widget} is what the urwid
MainLoop shows (or what a test renders and feeds keys to), and C{finished}
fires with the exit status. Clients come from the factory it is given, so
tests use the real ChatClient on loopback or a fake.
"""

from __future__ import annotations

from collections.abc import Callable

import urwid
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from chatd.client.chat_cli import ChatArguments
from chatd.client.chat_client import RoomInfo
from chatd.tui.chat_screen import LineKind
from chatd.tui.editing import Typed
from chatd.tui.input_line import InputHistory
from chatd.tui.screens import NameScreen, RoomChoice, RoomScreen
from chatd.tui.session import ChatSession, ClientFactory
from chatd.tui.wording import Fix, describe, explain_entry_failure

_Size = tuple[()] | tuple[int] | tuple[int, int]

QUIT_KEYS = ("ctrl c",)
LEAVE_TIMEOUT = 3.0
"""Seconds quitting waits to say goodbye to the server before exiting anyway."""


def _nothing() -> None:
    pass


class _Top(urwid.WidgetPlaceholder[urwid.Widget]):
    """The app's one top widget: global keys, and the last line of defence."""

    _log = Logger()

    def __init__(self, app: TerminalApp) -> None:
        super().__init__(urwid.SolidFill(" "))
        self._app = app

    @override
    def keypress(self, size: _Size, key: str) -> str | None:
        if key in QUIT_KEYS:
            self._app.quit()
            return None
        try:
            unhandled = super().keypress(size, key)
            if isinstance(unhandled, Typed):
                # Not a text field's: the characters one by one, as typed.
                for char in unhandled:
                    super().keypress(size, char)
                return None
            return unhandled
        except Exception:
            # urwid would only log it (its loop does not own the reactor):
            # show it instead, and keep the app usable.
            failure = Failure()
            self._log.failure("while handling the key {key}", failure, key=key)
            self._app.show_internal_error(failure)
            return None


class TerminalApp:
    """The app: its screens, the room session if any, and when it is finished."""

    def __init__(
        self,
        arguments: ChatArguments,
        client_factory: ClientFactory,
        clock: IReactorTime,
        changed: Callable[[], None] = _nothing,
    ) -> None:
        """
        C{changed} is called after anything changes the widgets outside a
        keypress (network events, answers), so the MainLoop can redraw.
        """
        self._client_factory = client_factory
        self._clock = clock
        self._changed = changed
        self.finished: Deferred[int] = Deferred()
        self.name = arguments.name or ""
        self._defaults = RoomChoice(
            create=arguments.create,
            room=arguments.room or "",
            password=arguments.password,
            invite=arguments.invite,
            host=arguments.host,
            tcp_port=arguments.tcp_port,
            udp_port=arguments.udp_port,
            native_only=arguments.native_only,
        )
        self._enter_after_name = arguments.room is not None
        self.name_screen = NameScreen(self._name_entered, self.name)
        self.room_screen = RoomScreen(self._defaults, self._room_chosen, self._show_name)
        self.room_screen.set_name(self.name)
        self.session: ChatSession | None = None
        self._history = InputHistory()
        """Shared by the rooms visited, as a shell's history is by directories."""
        self._quitting = False
        self.widget = _Top(self)

    def start(self) -> None:
        """Show the first screen the command line did not answer."""
        if not self.name:
            self._show_name()
        elif self._enter_after_name:
            self._enter_after_name = False
            self._enter(self._defaults)
        else:
            self._show_rooms()

    # -- screens ----------------------------------------------------------------

    def _show(self, widget: urwid.Widget) -> None:
        self.widget.original_widget = widget
        self._changed()

    def _show_name(self) -> None:
        self._show(self.name_screen)

    def _show_rooms(self) -> None:
        self._show(self.room_screen)

    def _name_entered(self, name: str) -> None:
        self.name = name
        self.room_screen.set_name(name)
        if self._enter_after_name:
            self._enter_after_name = False
            self._enter(self._defaults)
        else:
            self._show_rooms()

    def _room_chosen(self, choice: RoomChoice) -> None:
        self._enter(choice)

    # -- in a room ----------------------------------------------------------------

    def _enter(self, choice: RoomChoice) -> None:
        session = ChatSession(
            self.name,
            choice,
            self._client_factory,
            self._clock,
            on_leave=self._left,
            on_quit=self.quit,
            changed=self._changed,
            history=self._history,
        )
        self.session = session
        self._show(session.screen)

        def entered(info: RoomInfo) -> None:
            if choice.invite:
                self.room_screen.clear_invite()

        def failed(failure: Failure) -> None:
            if session is not self.session or self._quitting:
                return
            self.session = None
            explanation = explain_entry_failure(failure.value or Exception(), self.name, choice)
            if explanation.fix is Fix.NAME:
                self.name_screen.message.error(explanation.text)
                self._show_name()
            else:
                self.room_screen.message.error(explanation.text)
                self.room_screen.focus_field(explanation.field)
                self._show_rooms()

        session.enter().addCallbacks(entered, failed)

    def _left(self, message: str) -> None:
        self.session = None
        if not self._quitting:
            self.room_screen.message.info(message)
            self._show_rooms()

    # -- ending -------------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Leave the room, if in one; the app stays (tests, and reactor shutdown)."""
        session, self.session = self.session, None
        if session is None:
            return succeed(None)
        leaving = session.leave()
        leaving.addTimeout(LEAVE_TIMEOUT, self._clock)
        leaving.addErrback(lambda failure: None)
        return leaving

    def quit(self) -> None:
        """Leave the room and fire C{finished} with 0; a second call does nothing."""
        if self._quitting:
            return
        self._quitting = True
        self.close().addBoth(lambda _: self.finished.callback(0))

    def show_internal_error(self, failure: Failure) -> None:
        text = f"Internal error: {describe(failure.value)}. Please report it."
        if self.session is not None and self.widget.original_widget is self.session.screen:
            self.session.screen.add_line(self._clock.seconds(), LineKind.ERROR, text)
        elif self.widget.original_widget is self.name_screen:
            self.name_screen.message.error(text)
        else:
            self.room_screen.message.error(text)
