"""
Bounded waiting on the real reactor, for the tests that run real clients
against a real daemon: every wait ends in a test failure that says what did
not happen, never in a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface import implementer

from chatd.client.chat_client import ChatClient, IChatListener
from chatd.client.events import ChatEvent, MemberJoined, MemberLeft, MessageReceived, RoomClosed

if TYPE_CHECKING:
    from twisted.trial.unittest import SynchronousTestCase

    from chatd.client.servers import ServerAddress

CLOCK = cast(IReactorTime, _reactor)
WAIT = 5.0
"""Seconds any single wait may take before the test fails."""

E = TypeVar("E")
T = TypeVar("T")


async def bounded(waiting: Deferred[T], what: str, timeout: float = WAIT) -> T:
    """The result of C{waiting}, or a test failure after C{timeout} seconds."""
    waiting.addTimeout(timeout, CLOCK)
    try:
        return await waiting
    except DeferredTimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = CLOCK.seconds() + timeout
    while not predicate():
        if CLOCK.seconds() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await deferLater(CLOCK, 0.01)


async def sleep(seconds: float) -> None:
    await deferLater(CLOCK, seconds)


@implementer(IChatListener)
class Recorder:
    """Everything one chatd.client.chat_client.ChatClient heard, in order, and a way to wait for more."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[ChatEvent] = []
        self._waiters: list[tuple[Callable[[ChatEvent], bool], Deferred[ChatEvent]]] = []

    def chat_event(self, event: ChatEvent) -> None:
        self.events.append(event)
        for waiter in list(self._waiters):
            matches, waiting = waiter
            if matches(event):
                self._waiters.remove(waiter)
                waiting.callback(event)

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    def messages_from(self, sender: str) -> list[str]:
        return [event.text for event in self.of(MessageReceived) if event.sender == sender]

    def seqs(self) -> list[int]:
        """The room's numbers of the messages heard with one (reliable delivery's), in the order shown."""
        return [event.seq for event in self.of(MessageReceived) if event.seq is not None]

    def comings_and_goings(self, since: int) -> list[ChatEvent]:
        """The joins, leaves and closes heard from event number C{since} on (C{len(events)} before a step)."""
        return [event for event in self.events[since:] if isinstance(event, MemberJoined | MemberLeft | RoomClosed)]

    async def next(self, kind: type[E], where: Callable[[E], bool] = lambda _: True, timeout: float = WAIT) -> E:
        """The first event of C{kind} that satisfies C{where}: already heard, or within C{timeout}."""

        def matches(event: ChatEvent) -> bool:
            return isinstance(event, kind) and where(event)

        for event in self.events:
            if matches(event):
                return cast(E, event)
        waiter: tuple[Callable[[ChatEvent], bool], Deferred[ChatEvent]] = (matches, Deferred())
        self._waiters.append(waiter)
        try:
            heard = await bounded(waiter[1], f"{self.name} hears a {kind.__name__}; heard {self.events}", timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return cast(E, heard)

    async def message(self, sender: str, text: str, timeout: float = WAIT) -> MessageReceived:
        return await self.next(MessageReceived, lambda m: (m.sender, m.text) == (sender, text), timeout)


def client_with_servers(
    case: SynchronousTestCase, servers: list[ServerAddress], name: str, **options: Any
) -> tuple[ChatClient, Recorder]:
    """
    chatd's client with a list of servers and reliable delivery, on the real
    reactor, retrying quickly (0.1 s, at most 0.3 s apart: tests check logic,
    not pacing), and left at C{case}'s cleanup; C{options} override any of
    ChatClient's (C{reconnect=False}, C{delivery=False}, ...). The resume and
    cluster tests' member.
    """
    heard = Recorder(name)
    settings: dict[str, Any] = {
        "delivery": True,
        "request_timeout": WAIT,
        "first_retry_delay": 0.1,
        "max_retry_delay": 0.3,
        **options,
    }
    client = ChatClient(CLOCK, listener=heard, servers=servers, **settings)
    case.addCleanup(client.leave)
    return client, heard
