"""
The named load scenarios of chatd-bench, and the limits every run is held to.

A scenario fixes the room layout and the default load; the command line can
override each part (C{--rooms}, C{--members}, C{--window}, C{--rate},
C{--workers}). Every member of every room sends, round-robin, rooms
interleaved, so consecutive messages hit different rooms.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DURATION = 60.0
"""Seconds measured, at most: a load generator must not run away."""
MAX_WARMUP = 10.0
MAX_EXPIRE = 5.0
"""A copy older than this is lost; it also bounds the drain after sending stops."""
MIN_SIZE = 64
"""The text header "seq=<n> t=<ns> s=<k> " must fit in the message."""
MAX_SIZE = 4000
"""chatd relays a message only if user name + message + 22 <= 4096 bytes."""
MAX_MEMBERS_PER_ROOM = 1000
MAX_TOTAL_MEMBERS = 20000
MAX_WINDOW = 4096


@dataclass(frozen=True)
class Scenario:
    name: str
    rooms: int
    members: int
    window: int
    """Default messages in flight in total (closed loop), when no C{--rate} is given."""
    workers: int | None
    """Default worker processes; C{None}: one per CPU."""
    description: str


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        # One message at a time: the one-hop latency when nothing queues. One
        # process, because a single message in flight cannot use more.
        Scenario("pingpong", 1, 2, 1, 1, "1 room x 2 members, one message in flight: one-hop latency"),
        Scenario("room10", 1, 10, 16, None, "1 room x 10 members, all send: a typical room"),
        Scenario("rooms100", 100, 5, 16, None, "100 rooms x 5 members, all send: the cost per incoming datagram"),
        Scenario("fanout200", 1, 200, 8, None, "1 room x 200 members, all send: the cost per recipient"),
    )
}
DEFAULT_SCENARIO = "room10"


def scenario_table() -> str:
    """The scenarios as aligned text lines, for --help."""
    width = max(len(name) for name in SCENARIOS)
    return "\n".join(
        f"  {scenario.name:<{width}}  {scenario.description}"
        f" (default window {scenario.window}{', 1 worker' if scenario.workers == 1 else ''})"
        for scenario in SCENARIOS.values()
    )


def split_evenly(total: int, parts: int) -> list[int]:
    """C{total} split into C{parts} integers that differ by at most one, larger ones first."""
    if parts <= 0:
        raise ValueError("parts must be positive")
    quotient, remainder = divmod(total, parts)
    return [quotient + (1 if index < remainder else 0) for index in range(parts)]


def assign_members(rooms: int, members: int, workers: int) -> list[list[int]]:
    """
    Member indices (k = room * members + index) for each worker: contiguous
    blocks of nearly equal size.

    Contiguous blocks keep whole rooms in one worker when there are at least
    as many rooms as workers, so most copies are received by the process that
    sent them; a big room is split so that its fan-out is received by several
    processes.
    """
    sizes = split_evenly(rooms * members, workers)
    blocks: list[list[int]] = []
    start = 0
    for size in sizes:
        blocks.append(list(range(start, start + size)))
        start += size
    return blocks


def sender_order(local: list[int], members: int) -> list[int]:
    """A worker's members in sending order: by index in the room, then by room, so rooms interleave."""
    return sorted(local, key=lambda k: (k % members, k // members))
