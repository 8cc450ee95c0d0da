"""
One visit to one room: the client's events become lines on the chat screen,
and what is typed there becomes messages and commands for the client.

The session owns its client (made by the factory it is given, with itself
as the listener) and its ChatScreen. It never switches screens: leaving and
quitting are handed to the controller through two callbacks. What reliable
delivery adds (our messages' states, history, the path, /retry and /stats)
is drawn by its chatd.tui.delivery_view.DeliveryView.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.client.chat_cli import command_words
from chatd.client.chat_client import (
    DEFAULT_HOST,
    DEFAULT_TCP_PORT,
    DEFAULT_UDP_PORT,
    ConnectionState,
    IChatListener,
    RoomInfo,
)
from chatd.client.commands import HELP, KEYS, Command, Run, Say, Unknown, Usage, parse
from chatd.client.events import (
    ACTION_PREFIX,
    ChatEvent,
    ConnectionLost,
    DeliveryPathChanged,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    MessagesMissed,
    MessageStateChanged,
    Reconnected,
    Reconnecting,
    RemovedForInactivity,
    RoomClosed,
    RoomRecreated,
    ServerDegraded,
    ServerRecovered,
    ServerStopping,
    Throttled,
    UdpPathLost,
    UdpPathRestored,
    WaitingForHost,
)
from chatd.client.servers import ServerAddress
from chatd.protocol.errors import MessageTooLongError, NotInRoomError
from chatd.tui.chat_screen import ChatScreen, LineKind, StatusInfo, Tone
from chatd.tui.delivery_view import DeliveryClient, DeliveryView
from chatd.tui.input_line import InputHistory
from chatd.tui.screens import RoomChoice
from chatd.tui.wording import describe, duration, lost_connection, sentence


class ChatClientLike(DeliveryClient, Protocol):
    """What the app needs of a chat client: chatd.client.chat_client.ChatClient, or a test's fake."""

    @property
    def state(self) -> ConnectionState: ...

    @property
    def info(self) -> RoomInfo | None: ...

    @property
    def members(self) -> tuple[str, ...]: ...

    @property
    def room_host(self) -> str | None: ...

    @property
    def newly_pinned(self) -> str | None: ...

    @property
    def server(self) -> ServerAddress:
        """The server in use (or tried next, while reconnecting)."""
        ...

    def create(
        self, room: str, user: str, password: str | None = None, *, native_only: bool = False
    ) -> Deferred[RoomInfo]: ...

    def join(
        self, room: str, user: str, password: str | None = None, invite: str | None = None
    ) -> Deferred[RoomInfo]: ...

    def send(self, text: str) -> int | None:
        """Send C{text}; its message id with reliable delivery, None without."""
        ...

    def invite(self) -> Deferred[str]: ...

    def close_room(self) -> Deferred[None]: ...

    def leave(self) -> Deferred[None]: ...


ClientFactory = Callable[[str, int, int, IChatListener], ChatClientLike]
"""Makes a client for (host, TCP port, UDP port) that tells C{listener} its events."""

_RETRY_NOW = 0.05
"""Seconds left at which a reconnect countdown says 'trying now'."""


@implementer(IChatListener)
class ChatSession:
    _log = Logger()

    def __init__(
        self,
        name: str,
        choice: RoomChoice,
        client_factory: ClientFactory,
        clock: IReactorTime,
        *,
        on_leave: Callable[[str], None],
        on_quit: Callable[[], None],
        changed: Callable[[], None],
        history: InputHistory | None = None,
    ) -> None:
        self.name = name
        self.choice = choice
        self._clock = clock
        self._on_leave = on_leave
        self._on_quit = on_quit
        self._changed = changed
        self._host = False
        self._over: str | None = None
        """Why the room is over for us (closed, removed, left), once it is."""
        self._leaving: Deferred[None] | None = None
        self._retry: Reconnecting | WaitingForHost | None = None
        self._udp_lost = False
        """The client said its UDP path is dead (UdpPathLost) and has not said it is back."""
        self._told_waiting = False
        """The scrollback already says we wait for the host to reopen the room."""
        self._retry_at = 0.0
        self._told_server = ""
        """The server the scrollback last said the client is on, or tries next."""
        self._ticker: IDelayedCall | None = None
        self._mention = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)", re.IGNORECASE)
        self.screen = ChatScreen(choice.room, self._typed, history)
        self.client = client_factory(choice.host, choice.tcp_port, choice.udp_port, self)
        self._delivery = DeliveryView(self.screen, self.client, clock)
        self._show_status()

    # -- entering and leaving -------------------------------------------------

    def enter(self) -> Deferred[RoomInfo]:
        """Create or join the chosen room; fails with the client's error."""
        choice = self.choice
        if choice.create:
            entering = self.client.create(choice.room, self.name, choice.password, native_only=choice.native_only)
        else:
            entering = self.client.join(choice.room, self.name, choice.password, choice.invite)
        self._update()
        return entering.addCallback(self._entered)

    def _entered(self, info: RoomInfo) -> RoomInfo:
        self._host = info.host
        now = self._clock.seconds()
        if info.host:
            self.screen.add_line(now, LineKind.NOTICE, f"You created room {info.room} and host it.")
            self.screen.add_line(
                now, LineKind.INFO, "/invite makes an invitation for a password room; /close ends the room."
            )
        else:
            self.screen.add_line(now, LineKind.NOTICE, f"You joined room {info.room}.")
        if self.client.newly_pinned:
            self.screen.add_line(
                now,
                LineKind.INFO,
                f"First TLS connection to this server: its certificate {self.client.newly_pinned} is now pinned;"
                " check it with whoever runs the server.",
            )
        self._set_members(self.client.members)
        self._delivery.entered()
        self._who()
        self.screen.add_line(now, LineKind.INFO, "/help lists the commands.")
        self._update()
        return info

    def leave(self, closing: bool = False) -> Deferred[None]:
        """
        Leave the room (once); safe in any state, and when already left.
        C{closing}: as its host, close it on purpose (the others are told so).
        """
        self._stop_ticker()
        if self._leaving is None:
            self._leaving = self.client.close_room() if closing else self.client.leave()
            self._leaving.addErrback(self._log_failure, "while leaving")
        # A fresh Deferred per caller: each may chain on it without disturbing the others.
        done: Deferred[None] = Deferred()
        self._leaving.addBoth(lambda result: done.callback(None))
        return done

    def _log_failure(self, failure: Failure, doing: str) -> None:
        self._log.failure("{doing}", failure, doing=doing)

    # -- what the client hears --------------------------------------------------

    def chat_event(self, event: ChatEvent) -> None:
        try:
            self._show_event(event)
        except Exception:
            # This runs inside the client's protocol callbacks: a bug in the
            # display must not break the connection as well.
            failure = Failure()
            self._log.failure("while showing {event!r}", failure, event=event)
            self.screen.add_line(
                self._clock.seconds(), LineKind.ERROR, f"Internal error: {describe(failure.value)}. Please report it."
            )
        self._update()

    def _show_event(self, event: ChatEvent) -> None:
        now = self._clock.seconds()
        screen = self.screen
        if isinstance(event, MessageReceived) and event.history:
            self._delivery.history(event)
        elif isinstance(event, MessageStateChanged | MessagesMissed | RoomRecreated | DeliveryPathChanged):
            self._delivery.show(event)
        elif isinstance(event, MessageReceived):
            self._delivery.live()
            if event.is_action:
                screen.add_action(event.time, event.sender, event.action)
            else:
                screen.add_message(event.time, event.sender, event.text, mention=bool(self._mention.search(event.text)))
        elif isinstance(event, MemberJoined):
            screen.add_line(now, LineKind.JOINED, f"{event.user} joined")
            self._set_members(event.members)
        elif isinstance(event, MemberLeft):
            how = "was removed after too long without a sign of life" if event.timed_out else "left"
            screen.add_line(now, LineKind.LEFT, f"{event.user} {how}")
            self._set_members(event.members)
        elif isinstance(event, RoomClosed):
            reason = f": {event.reason}" if event.reason else ""
            self._room_over(now, f"Room {event.room} was closed{reason}.")
        elif isinstance(event, RemovedForInactivity):
            self._room_over(now, sentence(event.text))
        elif isinstance(event, Throttled):
            # Said by the server, since our own messages were shown as sent.
            screen.add_line(now, LineKind.ERROR, sentence(event.text))
        elif isinstance(event, ServerDegraded):
            screen.add_line(now, LineKind.ERROR, "The server is degraded: only members on it hear you for now.")
        elif isinstance(event, ServerRecovered):
            screen.add_line(now, LineKind.NOTICE, "The server has recovered: every member hears you again.")
        elif isinstance(event, ServerStopping):
            screen.add_line(now, LineKind.NOTICE, "The server is shutting down; reconnecting when it is back.")
        elif isinstance(event, ConnectionLost):
            if event.will_reconnect:
                screen.add_line(now, LineKind.NOTICE, f"{lost_connection(event)}; reconnecting.")
            else:
                self._room_over(now, f"{lost_connection(event)}.")
        elif isinstance(event, Reconnecting):
            self._retry = event
            self._retry_at = now + event.delay
            self._tell_server(now, event)
            self._tick()
        elif isinstance(event, Reconnected):
            self._retry = None
            self._told_waiting = False
            self._stop_ticker()
            screen.add_line(now, LineKind.NOTICE, f"Reconnected to room {event.room}.{_resumed_words(event)}")
            self._told_server = event.server
            if event.host is not None:
                self._host_after_reconnect(now, event.host == self.name, event.host)
            self._set_members(event.members)
            self._delivery.entered()
        elif isinstance(event, WaitingForHost):
            self._waiting_for_host(now, event)
        elif isinstance(event, UdpPathLost):
            self._udp_lost = True
            screen.add_line(
                now,
                LineKind.ERROR,
                f"No UDP from the server for {event.silent_for:.0f} s: messages cannot be delivered, either way."
                f" Is UDP port {self.choice.udp_port} blocked on the way? Still trying.",
            )
        elif isinstance(event, UdpPathRestored):
            self._udp_lost = False
            screen.add_line(now, LineKind.NOTICE, "UDP from the server again: messages are delivered.")

    def _tell_server(self, now: float, event: Reconnecting) -> None:
        """Say where the next try goes, once per server: the first try, and each move to another."""
        if not event.server or event.server == self._told_server:
            return
        self._told_server = event.server
        verb = "Resuming" if event.resuming else "Reconnecting"
        self.screen.add_line(now, LineKind.NOTICE, f"{verb} on {event.server}\u2026")

    def _host_after_reconnect(self, now: float, hosting: bool, host: str) -> None:
        """Say so if the restart changed who hosts the room (someone else made it again first)."""
        if self._host and not hosting:
            self.screen.add_line(
                now, LineKind.ERROR, f"{host} made the room again before you came back: {host} hosts it now."
            )
        self._host = hosting

    def _waiting_for_host(self, now: float, event: WaitingForHost) -> None:
        """Count down to the next try, and say (once per wait) what is being waited for."""
        if not self._told_waiting:
            self._told_waiting = True
            host = event.host if event.host is not None else "its host"
            self.screen.add_line(
                now,
                LineKind.NOTICE,
                f"The server restarted and room {event.room} is gone; waiting for {host} to reopen it"
                f" (giving up in {duration(event.gives_up_in)}).",
            )
        self._retry = event
        self._retry_at = now + event.delay
        self._tick()

    def _room_over(self, now: float, text: str) -> None:
        self._over = text
        self._retry = None
        self._stop_ticker()
        self._set_members(())
        self.screen.add_line(now, LineKind.ERROR, text)
        self.screen.add_line(now, LineKind.INFO, "/leave to pick another room, /quit to exit.")

    def _set_members(self, members: tuple[str, ...]) -> None:
        self.screen.set_members(members, self.name, self.client.room_host)

    # -- the status line --------------------------------------------------------

    def _state(self) -> tuple[str, Tone]:
        state = self.client.state
        if self._over is not None or state is ConnectionState.CLOSED:
            return "closed", Tone.BAD
        if self._retry is not None:
            left = self._retry_at - self._clock.seconds()
            when = f"in {math.ceil(left)}s" if left > _RETRY_NOW else "trying now"
            if isinstance(self._retry, WaitingForHost):
                host = self._retry.host if self._retry.host is not None else "the host"
                return f"waiting for {host} to reopen the room (attempt {self._retry.attempt}, {when})", Tone.BUSY
            return f"reconnecting (attempt {self._retry.attempt}, {when})", Tone.BUSY
        if state is ConnectionState.IN_ROOM:
            return "connected", Tone.GOOD
        if state is ConnectionState.IDLE:
            return "not connected", Tone.BAD
        return state.value, Tone.BUSY

    def _show_status(self) -> None:
        text, tone = self._state()
        choice = self.choice
        self.screen.set_status(
            StatusInfo(
                room=choice.room,
                user=self.name,
                state=text,
                tone=tone,
                members=len(self.client.members) if self._over is None else 0,
                host=self._host and self._over is None,
                server=self.client.server.label,
                udp_lost=self._udp_lost and self._over is None and self.client.state is ConnectionState.IN_ROOM,
                path=self._delivery.path if self._over is None else None,
                not_delivered=len(self._delivery.failed) if self._over is None else 0,
            )
        )

    def _update(self) -> None:
        self._show_status()
        self._changed()

    def _tick(self) -> None:
        """Count down to the next reconnect attempt, a second at a time."""
        self._stop_ticker()
        self._update()
        left = self._retry_at - self._clock.seconds()
        if self._retry is not None and left > _RETRY_NOW:
            # Just past the next whole second, so the shown number has changed.
            self._ticker = self._clock.callLater(min(left, (left % 1 or 1.0) + 0.01), self._tick)

    def _stop_ticker(self) -> None:
        if self._ticker is not None and self._ticker.active():
            self._ticker.cancel()
        self._ticker = None

    # -- what is typed ------------------------------------------------------------

    def _typed(self, line: str) -> None:
        parsed = parse(line)
        if parsed is None:
            return
        now = self._clock.seconds()
        if isinstance(parsed, Say):
            self._send(parsed.text, line)
        elif isinstance(parsed, Unknown):
            self.screen.add_line(now, LineKind.ERROR, f"Unknown command /{parsed.name} — /help lists them.")
        elif isinstance(parsed, Usage):
            self.screen.add_line(now, LineKind.ERROR, parsed.message)
        else:
            self._run(parsed, line)
        self._update()

    def _run(self, run: Run, line: str) -> None:
        command = run.command
        if command is Command.ME:
            self._send(ACTION_PREFIX + run.argument, line)
        elif command is Command.HELP:
            self._help()
        elif command is Command.WHO:
            self._who()
        elif command is Command.INVITE:
            self._invite()
        elif command is Command.CLOSE:
            self._close()
        elif command is Command.LEAVE:
            self._leave()
        elif command is Command.QUIT:
            self._on_quit()
        elif command is Command.RETRY:
            self._send_again()
        elif command is Command.STATS:
            self._delivery.stats()

    def _send_again(self) -> None:
        try:
            self._delivery.retry()
        except NotInRoomError:
            # Reconnecting: the client sends what is unacknowledged once back anyway.
            self.screen.add_line(self._clock.seconds(), LineKind.ERROR, f"Not sent again: {self._why_not_in_room()}.")

    def _send(self, text: str, line: str) -> None:
        now = self._clock.seconds()
        try:
            message_id = self.client.send(text)
        except MessageTooLongError as error:
            self._not_sent(now, f"{error}; shorten it", line)
            return
        except NotInRoomError:
            self._not_sent(now, self._why_not_in_room(), line)
            return
        action = text[len(ACTION_PREFIX) :] if text.startswith(ACTION_PREFIX) else None
        self._delivery.sent(text, message_id, me=self.name, action=action)

    def _not_sent(self, now: float, why: str, line: str) -> None:
        self.screen.add_line(now, LineKind.ERROR, f"Not sent: {why}. Your text is back in the input line.")
        self.screen.input.put_back(line)

    def _why_not_in_room(self) -> str:
        if self._over is not None:
            return "you are no longer in the room (/leave to pick another)"
        if isinstance(self._retry, WaitingForHost):
            return "the room is not back yet (waiting for its host to reopen it); send it again once it is"
        if self._retry is not None or self.client.state is ConnectionState.RECONNECTING:
            return "reconnecting to the server; send it again once connected"
        if self.client.state is ConnectionState.CONNECTING:
            return "still connecting"
        return "not in the room"

    def _help(self) -> None:
        now = self._clock.seconds()
        self.screen.add_line(now, LineKind.INFO, "Commands:")
        for entry in HELP:
            self.screen.add_line(now, LineKind.INFO, f"  {entry.usage:<10} {entry.description}")
        self.screen.add_line(now, LineKind.INFO, "Keys:")
        for entry in KEYS:
            self.screen.add_line(now, LineKind.INFO, f"  {entry.usage:<10} {entry.description}")

    def _who(self) -> None:
        now = self._clock.seconds()
        if self._over is not None:
            self.screen.add_line(now, LineKind.INFO, "Nobody: you are no longer in the room.")
            return
        host = self.name if self._host else self.client.room_host
        names = sorted(self.client.members, key=str.casefold)
        shown = ", ".join(_who_entry(name, you=name == self.name, host=name == host) for name in names)
        count = f"{len(names)} member{'s' if len(names) != 1 else ''}"
        self.screen.add_line(now, LineKind.INFO, f"{count} in room {self.choice.room}: {shown}")

    def _host_only(self, what: str, instead: str) -> bool:
        now = self._clock.seconds()
        if self._over is not None:
            self.screen.add_line(now, LineKind.ERROR, f"Cannot {what}: you are no longer in the room.")
            return False
        if not self._host:
            self.screen.add_line(now, LineKind.ERROR, f"Only the room's host can {what}; {instead}.")
            return False
        return True

    def _invite(self) -> None:
        if not self._host_only("invite", "ask the host for an invitation"):
            return

        def show(token: str) -> None:
            now = self._clock.seconds()
            self.screen.add_line(now, LineKind.NOTICE, f"Invitation for room {self.choice.room}: {token}")
            self.screen.add_line(now, LineKind.INFO, "It lets one person in, once. They join with:")
            self.screen.add_line(now, LineKind.INFO, f"  {self._join_command(token)}")

        def failed(failure: Failure) -> None:
            self.screen.add_line(self._clock.seconds(), LineKind.ERROR, f"No invitation: {describe(failure.value)}.")

        self.client.invite().addCallbacks(show, failed).addBoth(lambda _: self._update())

    def _join_command(self, token: str) -> str:
        choice = self.choice
        # As it will run: after the README's set-up chatd-chat is .venv/bin/chatd-chat, not on the PATH.
        words = command_words()
        if choice.host != DEFAULT_HOST:
            words += ["--host", choice.host]
        if choice.tcp_port != DEFAULT_TCP_PORT:
            words += ["--tcp-port", str(choice.tcp_port)]
        if choice.udp_port != DEFAULT_UDP_PORT:
            words += ["--udp-port", str(choice.udp_port)]
        words += ["--room", choice.room, "--name", "THEIR-NAME", "--invite", token]
        return shlex.join(words)

    def _close(self) -> None:
        if not self._host_only("close it", "/leave leaves it"):
            return
        room = self.choice.room

        def closed(_: None) -> None:
            now = self._clock.seconds()
            self._over = f"You closed room {room}."
            self._set_members(())
            self.screen.add_line(
                now,
                LineKind.NOTICE,
                f"You closed room {room}: everyone in it was told and removed."
                " (A chatd room lasts as long as its host stays: the host leaving closes it.)",
            )
            self.screen.add_line(now, LineKind.INFO, "/leave to pick another room, /quit to exit.")
            self._update()

        self.leave(closing=True).addCallback(closed)

    def _leave(self) -> None:
        room = self.choice.room
        if self._over is not None:
            said = self._over
        elif self._host:
            said = f"You left room {room}; as its host, leaving closed it for everyone."
        else:
            said = f"You left room {room}."
        self.leave().addCallback(lambda _: self._on_leave(said))


def _who_entry(name: str, *, you: bool, host: bool) -> str:
    marks = [mark for mark, applies in (("you", you), ("host", host)) if applies]
    return f"{name} ({', '.join(marks)})" if marks else name


def _resumed_words(event: Reconnected) -> str:
    """After "Reconnected to room R.": how (resumed, as host) and where, when the event says."""
    where = f" on {event.server}" if event.server else ""
    if event.resumed:
        return f" Resumed as host{where}." if event.as_host else f" Resumed{where}: the same place in the room."
    return f" Entered anew{where}." if event.server else ""
