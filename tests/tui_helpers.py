"""Shared fixtures of the terminal app's tests: rendering as text, keys, a fake client."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import urwid
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from chatd.client.chat_client import ConnectionState, IChatListener, RoomInfo
from chatd.client.delivery import DeliveryStats
from chatd.client.events import ChatEvent, MessageStateChanged, Reconnected
from chatd.client.servers import ServerAddress
from chatd.protocol.errors import MessageTooLongError, NotInRoomError

REACTOR: Any = _reactor
CLOCK = cast(IReactorTime, _reactor)

SIZE = (100, 30)
"""Wide enough that no line the tests look for wraps."""


def screen_text(widget: urwid.Widget, size: tuple[int, int] = SIZE) -> str:
    """What C{widget} shows, as the lines of text a person would read."""
    canvas = widget.render(size, focus=True)
    return "\n".join(row.decode("utf-8").rstrip() for row in canvas.text)


def status_line(widget: urwid.Widget, size: tuple[int, int] = SIZE) -> str:
    """The chat screen's status line: the one that starts with the room and a bar."""
    lines = [line for line in screen_text(widget, size).splitlines() if " │ " in line and line.startswith(" ")]
    return lines[-1] if lines else ""


def press(widget: urwid.Widget, *keys: str, size: tuple[int] | tuple[int, int] = SIZE) -> None:
    for key in keys:
        widget.keypress(size, key)


def type_text(widget: urwid.Widget, text: str, size: tuple[int] | tuple[int, int] = SIZE) -> None:
    press(widget, *text, size=size)


def type_line(widget: urwid.Widget, text: str, size: tuple[int] | tuple[int, int] = SIZE) -> None:
    type_text(widget, text, size)
    press(widget, "enter", size=size)


def flat_text(widget: urwid.Widget, size: tuple[int, int] = SIZE) -> str:
    """
    The screen's words with the line breaks, box edges and runs of spaces
    gone, to find a message however it wrapped in a dialog.
    """
    return " ".join(screen_text(widget, size).replace("│", " ").split())


def shows(widget: urwid.Widget, text: str) -> bool:
    return " ".join(text.split()) in flat_text(widget)


async def until(predicate: Callable[[], bool], what: str | Callable[[], str], timeout: float = 5.0) -> None:
    """
    Wait on the real reactor, a little at a time, until C{predicate}; fail
    after C{timeout}, saying C{what} (called then, if it is a function).
    """
    deadline = CLOCK.seconds() + timeout
    while not predicate():
        if CLOCK.seconds() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what() if callable(what) else what}")
        await deferLater(CLOCK, 0.01)


class FakeClient:
    """
    A chat client that does what the test says, when it says: entering stays
    pending until L{enter_succeeds} or L{enter_fails}; events come from L{emit}.
    """

    max_message = 100

    def __init__(self, host: str, tcp_port: int, udp_port: int, listener: IChatListener) -> None:
        self.address = (host, tcp_port, udp_port)
        self.listener = listener
        self.state = ConnectionState.IDLE
        self.info: RoomInfo | None = None
        self.members: tuple[str, ...] = ()
        self.room_host: str | None = None
        self.newly_pinned: str | None = None
        self.server = ServerAddress(host, tcp_port, udp_port)
        self.requests: list[tuple[str, ...]] = []
        self.sent: list[str] = []
        self.invitations: list[Deferred[str]] = []
        self.left = 0
        self.native_only = False
        """What the last create asked for: a native-only room or not."""
        self.closed_room = 0
        """How often close_room was asked for (it leaves too)."""
        self._entering: Deferred[RoomInfo] | None = None
        self.delivery = False
        """The server granted reliable delivery: sends get ids, and the delivery_* below say something."""
        self.delivery_stats: DeliveryStats | None = None
        self.delivery_path: str | None = None
        self.failed: list[int] = []
        """The ids of the messages given up on, that retry() sends again."""
        self.early_state: str | None = None
        """A state to tell from inside send(), before it returns the id, as the client may."""

    def _enter(self, *request: str) -> Deferred[RoomInfo]:
        self.requests.append(request)
        self.state = ConnectionState.CONNECTING
        self._entering = Deferred()
        return self._entering

    def create(
        self, room: str, user: str, password: str | None = None, *, native_only: bool = False
    ) -> Deferred[RoomInfo]:
        self.native_only = native_only
        return self._enter("create", room, user, password or "")

    def join(self, room: str, user: str, password: str | None = None, invite: str | None = None) -> Deferred[RoomInfo]:
        return self._enter("join", room, user, password or "", invite or "")

    def enter_succeeds(self, host: bool, members: Iterable[str]) -> None:
        assert self._entering is not None
        _, room, user, *_ = self.requests[-1]
        self.members = tuple(members)
        self.info = RoomInfo(room, user, host, self.members, 300.0, 30.0)
        # As chatd.client.chat_client infers it: the member list starts with the host.
        self.room_host = user if host else (self.members[0] if self.members else None)
        self.state = ConnectionState.IN_ROOM
        self._entering.callback(self.info)

    def enter_fails(self, error: Exception) -> None:
        assert self._entering is not None
        self.state = ConnectionState.IDLE
        self._entering.errback(error)

    def emit(self, event: ChatEvent, state: ConnectionState | None = None) -> None:
        if state is not None:
            self.state = state
        members = getattr(event, "members", None)
        if members is not None:
            self.members = members
        if isinstance(event, Reconnected) and event.host is not None:
            self.room_host = event.host
        self.listener.chat_event(event)

    def send(self, text: str) -> int | None:
        if self.state is not ConnectionState.IN_ROOM:
            raise NotInRoomError("not in a room")
        if len(text) > self.max_message:
            raise MessageTooLongError(f"a message of {len(text)} bytes is too long to relay")
        self.sent.append(text)
        if not self.delivery:
            return None
        message_id = len(self.sent)
        if self.early_state is not None:
            self.listener.chat_event(MessageStateChanged(message_id, text, self.early_state))
        return message_id

    def retry(self) -> list[int]:
        if self.state is not ConnectionState.IN_ROOM:
            raise NotInRoomError("not in a room")
        retried, self.failed = self.failed, []
        return retried

    def invite(self) -> Deferred[str]:
        invitation: Deferred[str] = Deferred()
        self.invitations.append(invitation)
        return invitation

    def close_room(self) -> Deferred[None]:
        self.closed_room += 1
        return self.leave()

    def leave(self) -> Deferred[None]:
        self.left += 1
        self.state = ConnectionState.CLOSED
        return succeed(None)


def attribute_at(widget: urwid.Widget, needle: str, size: tuple[int, int] = SIZE) -> object:
    """
    The display attribute where C{needle} first shows in C{widget}: the
    innermost one, when attributes are layered (an AttrMap around markup).
    """
    canvas = widget.render(size, focus=True)
    wanted = needle.encode("utf-8")
    for row in canvas.content():
        segments = list(row)
        line = b"".join(data for _, _, data in segments)
        start = line.find(wanted)
        if start < 0:
            continue
        offset = 0
        for attribute, _, data in segments:
            if offset <= start < offset + len(data):
                if isinstance(attribute, urwid.LayeredAttr):
                    return attribute.layers[0]
                return attribute
            offset += len(data)
    raise AssertionError(f"{needle!r} is not on the screen")
