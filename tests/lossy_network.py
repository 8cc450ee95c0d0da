"""
An in-memory datagram network that loses, reorders and duplicates, driven
by a simulated clock and a seeded random generator, so that a run is the
same every time. Reusable: the delivery simulation drives it with a model
server (tests/client/test_delivery_sim.py), and a test of the daemon's relay
can put the real relay behind it.

Reordering comes from random delays: two datagrams sent close together may
arrive in either order.
"""

from __future__ import annotations

import heapq
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Payload = TypeVar("Payload")


@dataclass(order=True, slots=True)
class _InFlight(Generic[Payload]):
    deliver_at: float
    order: int
    source: Hashable = field(compare=False)
    destination: Hashable = field(compare=False)
    payload: Payload = field(compare=False)


@dataclass(frozen=True, slots=True)
class Delivery(Generic[Payload]):
    """A datagram arriving: from C{source} to C{destination}, at C{time}."""

    time: float
    source: Hashable
    destination: Hashable
    payload: Payload


DropRule = Callable[[Hashable, Hashable, object], bool]
"""(source, destination, payload) -> whether to drop that datagram."""


class LossyNetwork(Generic[Payload]):
    """
    Datagrams in flight with their delivery times. C{send} decides each
    datagram's fate at once (lost, delivered once or twice, when); C{deliver}
    hands out those whose time has come, in time order.

    C{loss}, C{duplicate}: probabilities per datagram; C{delay}: the range of
    one-way delays, seconds (uniform: the spread is what reorders).
    C{drop_once}: one-shot rules that drop the next datagram they match (a
    lost tail message, for example); C{blocked}: a standing rule (UDP blocked).
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[float, float] = (0.005, 0.05),
    ) -> None:
        self.rng = rng
        self.loss = loss
        self.duplicate = duplicate
        self.delay = delay
        self.blocked: DropRule | None = None
        self._drop_once: list[DropRule] = []
        self._heap: list[_InFlight[Payload]] = []
        self._order = 0
        self.sent = 0
        self.lost = 0
        self.duplicated = 0

    def drop_once(self, rule: DropRule) -> None:
        """Drop the next datagram C{rule} matches (then forget the rule)."""
        self._drop_once.append(rule)

    def send(self, now: float, source: Hashable, destination: Hashable, payload: Payload) -> None:
        self.sent += 1
        if self.blocked is not None and self.blocked(source, destination, payload):
            self.lost += 1
            return
        for rule in self._drop_once:
            if rule(source, destination, payload):
                self._drop_once.remove(rule)
                self.lost += 1
                return
        if self.rng.random() < self.loss:
            self.lost += 1
            return
        copies = 1
        if self.rng.random() < self.duplicate:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            self._order += 1
            deliver_at = now + self.rng.uniform(*self.delay)
            heapq.heappush(self._heap, _InFlight(deliver_at, self._order, source, destination, payload))

    def next_time(self) -> float | None:
        """When the next datagram arrives; None when none is in flight."""
        return self._heap[0].deliver_at if self._heap else None

    def deliver(self, now: float) -> list[Delivery[Payload]]:
        """The datagrams arriving by C{now}, in arrival order."""
        arrived: list[Delivery[Payload]] = []
        while self._heap and self._heap[0].deliver_at <= now:
            item = heapq.heappop(self._heap)
            arrived.append(Delivery(item.deliver_at, item.source, item.destination, item.payload))
        return arrived

    def __len__(self) -> int:
        return len(self._heap)


class SimulatedRoom(ABC):
    """
    What the simulations of reliable delivery share: a seeded clock-driven
    run in which members talk, and a wait until the room has settled.
    Subclasses say how time advances, who posts, and what settled means.
    """

    now: float
    rng: random.Random

    @abstractmethod
    def step_until(self, time: float) -> None:
        """Run every event up to C{time}."""

    @abstractmethod
    def post(self, name: str, text: str) -> None:
        """Member C{name} sends C{text}."""

    @abstractmethod
    def settled(self) -> bool:
        """Every message acknowledged, and every member shows the room's latest with no gap."""

    def settle(self, limit: float = 600.0) -> None:
        """Run until L{settled}, within C{limit} simulated seconds."""
        end = self.now + limit
        while self.now < end:
            self.step_until(self.now + 1.0)
            if self.settled():
                return
        raise AssertionError("not settled")

    def chat(self, names: list[str], count: int, interval: float = 0.01) -> None:
        """Each of C{names} posts C{count} messages, one every C{interval} seconds (jittered)."""
        schedule = sorted(
            (self.now + i * interval + self.rng.uniform(0, interval), name, i) for name in names for i in range(count)
        )
        for at, name, i in schedule:
            self.step_until(at)
            self.post(name, f"{name} {i}")


def expected_shown(
    room: Sequence[tuple[str, str]], name: str, skip: int, shown_seqs: Collection[int]
) -> list[tuple[int, str, str]]:
    """
    What member C{name} should have shown of C{room} (the room's messages as
    (sender, text), sequence numbers from 1), as (seq, sender, text): every
    other member's message, in room order; of the first C{skip} (before it
    entered, beyond the history it was offered), only those it did show.
    The simulations' check that every message was shown once and in order.
    """
    return [
        (seq, sender, text)
        for seq, (sender, text) in enumerate(room, 1)
        if sender != name and (seq > skip or seq in shown_seqs)
    ]
