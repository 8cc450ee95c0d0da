"""
Reliable delivery, the client's receiving side (docs/reliability.md, section
4): the timeline puts a room's numbered messages in room order, shows each
once, asks for the gaps with REPAIR and reports what the history no longer
holds as "N messages missed". The sending side is in chatd.client.delivery.

Sans-IO, like the outbox: every call takes the time (float seconds) and
returns the items now showable, in room order; C{repairs_due} and
C{next_deadline} give the REPAIR ranges and when to ask next.

Terms: C{next_seq} is the next sequence number to show; the horizon is the
highest number known to exist (from a message, the client's own SENT, a
keepalive answer, the join or the resume). A number from C{next_seq} to the
horizon is either buffered (arrived out of order, or the client's own), gone
(GONE said so), or missing: the missing ones are the gaps, each with the time
it is next asked for.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from chatd.client.delivery import DeliveryStats, RttEstimator
from chatd.protocol.delivery import REPAIR_BATCH, Posted, SeqRange

RECREATED = "the room was created again; earlier messages are gone"


@dataclass(frozen=True, slots=True)
class Shown:
    """A room message to show, in room order."""

    seq: int
    time_ms: int
    sender: str
    text: str
    history: bool
    """Offered on entering (at or before the room's number then): shown marked as history."""


@dataclass(frozen=True, slots=True)
class Missed:
    """Messages C{first} to C{last} are older than the room's history: "N messages missed"."""

    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    @property
    def message(self) -> str:
        return f"{self.count} message{'s' if self.count != 1 else ''} missed"


@dataclass(frozen=True, slots=True)
class RoomRecreated:
    """The room has a new epoch: its numbering started again and earlier messages are gone."""

    epoch: str
    message: str = RECREATED


TimelineItem = Shown | Missed | RoomRecreated


@dataclass(slots=True)
class _Gap:
    first: int
    last: int
    due: float
    """When to ask for it (again)."""
    asked: bool = False
    """A REPAIR for it went and is not answered yet (a message arriving in it counts as repaired)."""
    deferred: bool = False
    """Due, but left out of a round by MAX_REPAIR_RANGES: asked as soon as the asked gaps are answered."""


class Timeline:
    """
    The receiving side of one room under one epoch at a time (C{resume}
    follows the room across reconnections and a new epoch).

    C{own_name}: the member's user name. A message of its own that is not
    history was shown by the local echo when it was typed, so a POSTED of it
    (which the server sends only inside a repair: the client's SENT was lost
    and its number asked for) fills its place without being shown, as the
    client's own SENT does.
    """

    MAX_BUFFERED = 2048
    """Out-of-order messages kept at most; beyond, the farthest is dropped and repaired again later."""
    MAX_GONE = 64
    """GONE ranges remembered at most (beyond, the farthest is forgotten and asked again)."""
    MAX_REPAIR_RANGES = 8
    """REPAIR ranges per round: 8 x 64 = 512, the server's default history, so a long gap is paced by answers."""

    def __init__(
        self,
        epoch: str,
        seq: int,
        history_from: int,
        now: float,
        *,
        own_name: str | None = None,
        rtt: RttEstimator | None = None,
        stats: DeliveryStats | None = None,
    ) -> None:
        self.own_name = own_name
        self.rtt = rtt if rtt is not None else RttEstimator()
        self.stats = stats if stats is not None else DeliveryStats()
        self._start(epoch, seq, history_from, now)

    def _start(self, epoch: str, seq: int, history_from: int, now: float) -> None:
        self.epoch = epoch
        self.history_through = seq
        """Numbers up to this one are shown as history: the room's latest as this member entered."""
        self.next_seq = max(history_from, 1)
        self.horizon = max(seq, self.next_seq - 1)
        self._buffer: dict[int, Posted | None] = {}
        """Arrived ahead of C{next_seq}: the message, or None for one of the client's own (not shown)."""
        self._gone: list[tuple[int, int]] = []
        self._gaps: list[_Gap] = []
        if self.horizon >= self.next_seq:
            # The history offered: asked for at once, nothing to wait for.
            self._gaps.append(_Gap(self.next_seq, self.horizon, now))

    # What the core and the tests read.

    @property
    def last_shown(self) -> int:
        return self.next_seq - 1

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def gaps(self) -> list[SeqRange]:
        """The missing numbers, as ranges in order."""
        return [SeqRange(g.first, g.last) for g in self._gaps]

    # What the core feeds.

    def posted(self, message: Posted, now: float) -> list[TimelineItem]:
        """A POSTED (relayed, repaired or history): the items now showable."""
        seq = message.seq
        if seq < self.next_seq or seq in self._buffer:
            self.stats.duplicates += 1
            return []
        own = self.own_name is not None and message.sender == self.own_name and seq > self.history_through
        if self._fill(seq, now):
            self.stats.repaired += 1
        self._buffer[seq] = None if own else message
        items = self._advance()
        self._bound()
        return items

    def own_sent(self, seq: int, now: float) -> list[TimelineItem]:
        """The client's own SENT: its number fills its place, not shown (the local echo showed it)."""
        if seq < self.next_seq:
            return []
        if seq not in self._buffer:
            self._fill(seq, now)
        self._buffer[seq] = None
        items = self._advance()
        self._bound()
        return items

    def gone(self, gone: SeqRange, now: float) -> list[TimelineItem]:
        """A GONE: these numbers are older than the history; shown as "N messages missed" in their place."""
        first, last = max(gone.first, self.next_seq), gone.last
        if last < first:
            return []
        if last > self.horizon:
            self._extend(first - 1, now)
            self.horizon = last
        self._remove_from_gaps(first, last)
        self._add_gone(first, last, now)
        return self._advance()

    def latest(self, seq: int, now: float) -> list[TimelineItem]:
        """A KEEPALIVE_ACK's latest number: anything newer than the horizon is a gap (a lost last message)."""
        self._extend(seq, now)
        return []

    def resume(self, epoch: str, seq: int, history_from: int, now: float) -> list[TimelineItem]:
        """
        After a reconnection, with the rejoin's answer. Same epoch: ask at
        once for everything after the last shown up to C{seq} (and every gap
        still open), shown as ordinary messages. New epoch: start afresh, as
        on entering, and say the room was created again.
        """
        if epoch != self.epoch:
            self._start(epoch, seq, history_from, now)
            return [RoomRecreated(epoch)]
        if seq > self.horizon:
            self._insert_gap(_Gap(self.horizon + 1, seq, now))
            self.horizon = seq
        for gap in self._gaps:
            gap.due, gap.asked, gap.deferred = now, False, False
        return []

    def repairs_due(self, now: float) -> list[SeqRange]:
        """
        The REPAIR ranges to send now, oldest first: each at most
        REPAIR_BATCH wide, at most MAX_REPAIR_RANGES of them. Each gap asked
        is asked again after an RTO while still missing.
        """
        pull_deferred = not any(g.asked for g in self._gaps)
        due = [g for g in self._gaps if g.due <= now or (pull_deferred and g.deferred)]
        ranges: list[SeqRange] = []
        for gap in due:
            first = gap.first
            while first <= gap.last and len(ranges) < self.MAX_REPAIR_RANGES:
                last = min(gap.last, first + REPAIR_BATCH - 1)
                if ranges and ranges[-1].last + 1 == first and len(ranges[-1]) + last - first + 1 <= REPAIR_BATCH:
                    # Gaps split by a message dropped from the buffer: one range for both.
                    first = ranges[-1].first
                    ranges.pop()
                ranges.append(SeqRange(first, last))
                first = last + 1
        asked_through = ranges[-1].last if ranges else 0
        retry_at = now + self.rtt.rto
        for gap in due:
            if gap.first > asked_through:
                gap.due, gap.deferred = retry_at, True
                continue
            if gap.last > asked_through:
                rest = _Gap(asked_through + 1, gap.last, retry_at, deferred=True)
                gap.last = asked_through
                self._gaps.insert(self._gaps.index(gap) + 1, rest)
            gap.due, gap.asked, gap.deferred = retry_at, True, False
        return ranges

    def next_deadline(self) -> float | None:
        """When C{repairs_due} has something to ask; None when nothing is missing."""
        if not self._gaps:
            return None
        if not any(g.asked for g in self._gaps) and any(g.deferred for g in self._gaps):
            return 0.0
        return min(g.due for g in self._gaps)

    # The bookkeeping.

    def _extend(self, seq: int, now: float) -> None:
        """Numbers up to C{seq} exist: the new ones past the horizon are a gap, asked after the reorder delay."""
        if seq > self.horizon:
            self._insert_gap(_Gap(self.horizon + 1, seq, now + self.rtt.reorder_delay))
            self.horizon = seq

    def _fill(self, seq: int, now: float) -> bool:
        """C{seq} arrived: no longer missing. Whether a REPAIR had asked for it."""
        if seq > self.horizon:
            self._extend(seq - 1, now)
            self.horizon = seq
            return False
        index = bisect.bisect_right(self._gaps, seq, key=lambda g: g.first) - 1
        if index < 0 or self._gaps[index].last < seq:
            return False
        gap = self._gaps[index]
        asked = gap.asked
        if gap.first == gap.last:
            del self._gaps[index]
        elif seq == gap.first:
            gap.first += 1
        elif seq == gap.last:
            gap.last -= 1
        else:
            self._gaps.insert(index + 1, _Gap(seq + 1, gap.last, gap.due, gap.asked, gap.deferred))
            gap.last = seq - 1
        return asked

    def _remove_from_gaps(self, first: int, last: int) -> None:
        kept: list[_Gap] = []
        for gap in self._gaps:
            if gap.last < first or gap.first > last:
                kept.append(gap)
                continue
            if gap.first < first:
                kept.append(_Gap(gap.first, first - 1, gap.due, gap.asked, gap.deferred))
            if gap.last > last:
                kept.append(_Gap(last + 1, gap.last, gap.due, gap.asked, gap.deferred))
        self._gaps = kept

    def _insert_gap(self, new: _Gap) -> None:
        """Insert a gap, merged with a neighbour it touches (so that gaps stay as few as their separators)."""
        index = bisect.bisect_left(self._gaps, new.first, key=lambda g: g.first)
        if index > 0 and self._gaps[index - 1].last + 1 == new.first:
            index -= 1
            before = self._gaps.pop(index)
            new = _Gap(before.first, new.last, min(before.due, new.due))
        if index < len(self._gaps) and self._gaps[index].first == new.last + 1:
            after = self._gaps.pop(index)
            new = _Gap(new.first, after.last, min(after.due, new.due))
        self._gaps.insert(index, new)

    def _add_gone(self, first: int, last: int, now: float) -> None:
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self._gone, (first, last)]):
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        while len(merged) > self.MAX_GONE:
            # Forgotten, so missing again: the server will say GONE again when asked.
            a, b = merged.pop()
            for seq_range in self._unbuffered(a, b):
                self._insert_gap(_Gap(seq_range[0], seq_range[1], now + self.rtt.rto))
        self._gone = merged

    def _unbuffered(self, first: int, last: int) -> list[tuple[int, int]]:
        """The parts of first..last not in the buffer."""
        parts: list[tuple[int, int]] = []
        start = first
        for seq in sorted(k for k in self._buffer if first <= k <= last):
            if seq > start:
                parts.append((start, seq - 1))
            start = seq + 1
        if start <= last:
            parts.append((start, last))
        return parts

    def _bound(self) -> None:
        if len(self._buffer) <= self.MAX_BUFFERED:
            return
        # The farthest is the one needed last: dropping it delays the least, and repair fetches it again.
        farthest = max(self._buffer)
        del self._buffer[farthest]
        if not any(a <= farthest <= b for a, b in self._gone):
            self._insert_gap(_Gap(farthest, farthest, 0.0))

    def _advance(self) -> list[TimelineItem]:
        items: list[TimelineItem] = []
        while True:
            seq = self.next_seq
            if seq in self._buffer:
                message = self._buffer.pop(seq)
                if message is not None:
                    items.append(Shown(seq, message.time_ms, message.sender, message.text, seq <= self.history_through))
                self.next_seq += 1
                continue
            if self._gone and self._gone[0][0] <= seq:
                end = self._gone[0][1]
                # A message that arrived inside a GONE range is shown in its place all the same.
                end = min([end, *(k - 1 for k in self._buffer if k <= end)])
                if end >= seq:
                    items.append(Missed(seq, end))
                    self.stats.missed += end - seq + 1
                    self.next_seq = end + 1
                if self._gone[0][1] < self.next_seq:
                    self._gone.pop(0)
                continue
            return items
