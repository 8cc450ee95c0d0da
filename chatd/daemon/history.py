"""
Reliable delivery's state on the server, per room: the message history (the
sequence numbers, the epoch and the ring) and the duplicate windows.

Plain logic: no I/O, no clock of its own (the caller passes the time, in
milliseconds), no Twisted. The design is docs/reliability.md, section 3; the
frames that carry what this computes are in chatd.protocol.delivery.

- L{IHistory} is a room's history, the seam a shared (Redis) store will
  implement; L{RoomHistory} is the in-memory one: a ring bounded by a number
  of messages and by the bytes of their names and texts.
- L{serve_repair} says what a REPAIR gets (the entries to send as POSTED, and
  the one GONE range); L{history_from} what a joining member is offered.
- L{DuplicateWindow} recognises a SEND sent again, per (room, client);
  L{RoomWindows} keeps a room's windows, those of members that left included
  (a bounded number of them).
"""

from __future__ import annotations

import re
import secrets
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from enum import Enum
from typing import NamedTuple

from zope.interface import Attribute, Interface, implementer

from chatd.protocol.delivery import REPAIR_BATCH, SeqRange

DUPLICATE_WINDOW = 128
"""
The message ids a L{DuplicateWindow} remembers, below its highest: four times
the client's 32 unacknowledged sends (Outbox.MAX_IN_FLIGHT), so every
retransmission a client can make falls inside it. A window is 3 KiB (three
u64 per id), allocated when its client first sends.
"""

DEPARTED_WINDOWS = 64
"""The windows of members that left a room that the room keeps, so that a client coming back keeps its window."""

EPOCH_HEX = 16
"""A room's epoch: this many lowercase hexadecimal characters (8 random bytes)."""

DEFAULT_HISTORY_MESSAGES = 512
"""The most messages a room's history holds (--history-messages): a quarter of ergo's 2,048."""
DEFAULT_HISTORY_BYTES = 256 * 1024
"""The most bytes of names and texts a room's history holds (--history-bytes): 256 MiB over 1,000 rooms."""
DEFAULT_HISTORY_ON_JOIN = 50
"""The messages of history offered to a member as it enters (--history-on-join)."""

_EPOCH = re.compile(r"[0-9a-f]{16}")


def new_epoch() -> str:
    """A fresh epoch: 16 random hexadecimal characters, so a room made again under the same name is told apart."""
    return secrets.token_hex(EPOCH_HEX // 2)


class HistoryEntry(NamedTuple):
    """
    One message of a room's history: what a POSTED carries. A NamedTuple, not
    a dataclass: one is made for every message relayed, and a tuple is the
    cheapest object to make and to hold.
    """

    seq: int
    time_ms: int
    """The server's time when the message was relayed, in milliseconds since the epoch (the SENT's time)."""
    name: bytes
    """The sender's name, UTF-8 (at most 255 bytes, as POSTED's u8 length allows)."""
    text: bytes
    """The text, UTF-8."""

    @property
    def size(self) -> int:
        """The bytes this entry counts against the history's byte bound: its name and text."""
        return len(self.name) + len(self.text)


_Held = tuple[int, int, bytes, bytes, int]
"""
A held message as the ring keeps it: the fields of a L{HistoryEntry}, in a
plain tuple, and the bytes appended to the ring before it (L{RoomHistory}'s running total).
"""


class Held(NamedTuple):
    """What L{IHistory.range} answers."""

    entries: Sequence[HistoryEntry]
    """The entries asked for that the history holds, in order of sequence number, contiguous."""
    oldest: int
    """The oldest sequence number the history holds; latest + 1 when it holds none."""


class Repair(NamedTuple):
    """What the server sends for one REPAIR (L{serve_repair})."""

    entries: Sequence[HistoryEntry]
    """To send as POSTED, in order: at most REPAIR_BATCH."""
    gone: SeqRange | None
    """To send as one GONE: the part of the range older than the history, or None."""


class IHistory(Interface):
    """
    A room's message history: its epoch, its sequence numbers and the recent
    messages, in a ring bounded by count and bytes (docs/reliability.md, 3).

    Synchronous on purpose: L{append} runs on the relay's hot path, before
    the copies are sent, for every message relayed, and its sequence number
    goes into those copies. A shared (Redis) implementation stays
    synchronous by keeping a local ring like L{RoomHistory} as the cache
    every read is answered from, and writing each append through to Redis
    in the background (a pipelined RPUSH/LTRIM, not waited for). The room's
    sequence numbers then come from the one daemon that relays for the room;
    Redis holds the copy that outlives it (and that another daemon loads,
    with the epoch, when it takes the room over).
    """

    epoch = Attribute("The room's incarnation: 16 lowercase hexadecimal characters, made with the room.")
    latest = Attribute("The latest sequence number given (that of the last message appended); 0 before any.")
    oldest = Attribute("The oldest sequence number held; latest + 1 when none is held.")
    message_count = Attribute("How many messages are held (for chatd_history_messages).")
    byte_count = Attribute("How many bytes of names and texts are held (for chatd_history_bytes).")

    def append(name: bytes, text: bytes, time_ms: int) -> int:  # noqa: N805
        """
        Number a message (the room's next sequence number, from 1), hold it,
        and forget the oldest ones past the bounds. Returns its sequence number.
        """

    def range(first: int, last: int) -> Held:  # noqa: N805
        """
        The entries of sequence numbers C{first} to C{last} (both included)
        that are held, and the oldest held, so that the caller can tell the
        part older than the history (GONE) from the part not yet given.
        """


UNNUMBERED = 0
"""
What L{IHistory.append} answers for a message whose number comes later: a
cluster room's messages are numbered by the shared room log
(chatd.daemon.cluster), and no copy or SENT may carry a number before it is
stored there (chatd.daemon.interfaces.INumberedLater).
"""


@implementer(IHistory)
class RoomHistory:
    """
    A room's history in memory: a deque of L{HistoryEntry}, oldest first.

    The ring holds at most C{max_messages} messages and, but for one case, at
    most C{max_bytes} bytes of names and texts; the oldest messages go first
    when either bound is passed. The case: a message larger than
    C{max_bytes} alone is kept, alone (everything older goes), until the next
    one comes. The ring never drops the message it has just numbered, so
    the latest message can always be repaired (a client learns of it from a
    KEEPALIVE_ACK, and asks); the byte bound is exceeded by at most that one
    message, itself at most a relayed copy's size (4,096 bytes).

    The held sequence numbers are contiguous (oldest .. latest), so a
    sequence number's place in the deque is plain arithmetic.

    The ring holds plain tuples, made into L{HistoryEntry} only when read
    (L{range}): L{append} runs for every message relayed, a read only for a
    repair or a join, and a plain tuple costs a sixth of a NamedTuple's
    Python-level constructor.

    The bytes held are counted with a running total of the bytes ever
    appended, each entry keeping the total before it: the ring holds the
    total less its oldest entry's mark. A message's size is read once, as it
    comes, and one that falls off the ring (the deque's maxlen drops it, in
    C) needs no subtraction: about a sixth less work per append.
    """

    __slots__ = ("_appended", "_ring", "epoch", "latest", "max_bytes", "max_messages")

    def __init__(
        self,
        max_messages: int = DEFAULT_HISTORY_MESSAGES,
        max_bytes: int = DEFAULT_HISTORY_BYTES,
        epoch: str | None = None,
        *,
        make_epoch: Callable[[], str] = new_epoch,
    ) -> None:
        """
        @param epoch: the epoch, when not a new one (tests; a shared store loading a room).
        @param make_epoch: makes the epoch when none is given (tests make it predictable).
        """
        if max_messages < 1 or max_bytes < 1:
            raise ValueError(f"history bounds must be at least 1, not {max_messages} messages and {max_bytes} bytes")
        chosen = make_epoch() if epoch is None else epoch
        if not _EPOCH.fullmatch(chosen):
            raise ValueError(f"epoch {chosen!r} is not {EPOCH_HEX} lowercase hexadecimal characters")
        self.epoch = chosen
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.latest = 0
        self._appended = 0
        """The bytes of names and texts appended since the room was made: the running total."""
        self._ring: deque[_Held] = deque(maxlen=max_messages)

    @property
    def oldest(self) -> int:
        return self.latest - len(self._ring) + 1

    @property
    def message_count(self) -> int:
        return len(self._ring)

    @property
    def byte_count(self) -> int:
        ring = self._ring
        return self._appended - ring[0][4] if ring else 0

    def append(self, name: bytes, text: bytes, time_ms: int) -> int:
        # On the relay's path for every message: written out, with no
        # Python-level call (a plain tuple). The deque's maxlen drops the
        # oldest by count, in C; only the byte bound needs a loop, and only
        # when it is passed.
        self.latest = seq = self.latest + 1
        before = self._appended
        self._appended = appended = before + len(name) + len(text)
        ring = self._ring
        ring.append((seq, time_ms, name, text, before))
        if appended - ring[0][4] > self.max_bytes:
            # len(ring) > 1: the message just numbered stays, even alone over max_bytes (see the class).
            while len(ring) > 1 and appended - ring[0][4] > self.max_bytes:
                ring.popleft()
        return seq

    def range(self, first: int, last: int) -> Held:
        ring = self._ring
        oldest = self.latest - len(ring) + 1
        start = max(first, oldest) - oldest
        stop = min(last, self.latest) - oldest + 1
        # A deque's indexing walks its 64-entry blocks from the nearer end: a
        # few steps for a ring of hundreds, and no copy of the ring.
        return Held([HistoryEntry(*ring[index][:4]) for index in range(start, stop)], oldest)

    def __repr__(self) -> str:
        return (
            f"<RoomHistory epoch={self.epoch} seqs {self.oldest}..{self.latest}"
            f" ({len(self._ring)}/{self.max_messages} messages, {self.byte_count}/{self.max_bytes} bytes)>"
        )


def serve_repair(history: IHistory, first: int, last: int, batch: int = REPAIR_BATCH) -> Repair:
    """
    What the server sends for REPAIR C{first}..C{last} (docs/reliability.md, 3):

    - a range wholly past the latest sequence number: nothing (the client
      asked for what is not yet numbered; its KEEPALIVE_ACKs will tell it);
    - POSTED for each message of C{first}..min(C{last}, C{first} + batch - 1,
      latest) that the history holds: at most C{batch}, counted from
      C{first}, and the client asks again for the rest;
    - one GONE for the part of C{first}..C{last} older than the oldest held.
      All of that part, not only what falls within the batch: it is one
      16-byte frame however long, and the client then asks for what follows
      it, instead of asking again batch after batch of messages that are gone.

    C{first} and C{last} are as REPAIR's decoder gives them: 1 <= first <= last.
    """
    if not 1 <= first <= last:
        raise ValueError(f"repair range {first}..{last} is empty or starts below 1")
    if first > history.latest:
        return Repair((), None)
    held = history.range(first, min(last, first + batch - 1))
    # The older part: first..oldest - 1, within the range. oldest <= latest + 1,
    # so it never reaches past the latest.
    gone = SeqRange(first, min(last, held.oldest - 1)) if first < held.oldest else None
    return Repair(held.entries, gone)


def history_from(history: IHistory, on_join: int) -> int:
    """
    The first sequence number of the history offered to a member entering
    with C{on_join} messages of history (--history-on-join): the last
    C{on_join} numbered, of those held; latest + 1 when that is none
    (C{on_join} 0, or nothing held). The member asks for it with REPAIR.
    """
    if on_join < 0:
        raise ValueError(f"history on join must be at least 0, not {on_join}")
    latest: int = history.latest
    oldest: int = history.oldest
    # oldest is latest + 1 when nothing is held, so this is latest + 1 then too.
    return max(oldest, latest - on_join + 1)


class Verdict(Enum):
    """What L{DuplicateWindow.check} says of a message id that is not a duplicate it can answer."""

    NEW = "new"
    """Not seen: number it, relay it, L{DuplicateWindow.record} it."""
    STALE = "stale"
    """Below the window: seen long ago, or never to be accepted; dropped, counted as a duplicate, no SENT."""


class Duplicate(NamedTuple):
    """A message id seen before, in the window: the SENT to send again, with what the message got the first time."""

    seq: int
    time_ms: int


class DuplicateWindow:
    """
    The message ids of one client in one room that the server has numbered:
    the last L{DUPLICATE_WINDOW} ids below the highest seen, with the
    sequence number and time each got.

    The window is the ids from highest - DUPLICATE_WINDOW + 1 to highest.
    Ids may arrive in any order: one above the highest, or in the window and
    not yet recorded, is new; one in the window and recorded is a duplicate;
    one below the window is stale (a retransmission so late that it cannot
    be told from a forgery, docs/reliability.md, 3).

    The ids are held by their slot, C{id % DUPLICATE_WINDOW}: within the
    window every id has a slot of its own, and an id that leaves the window
    is overwritten by the one that takes its slot, so the memory is
    DUPLICATE_WINDOW entries without any eviction to do. A slot whose id
    differs from the one asked about is an id that left the window: that one
    is new. The slots are one flat array of u64 (id, seq, time_ms), 3 KiB,
    where a dict of tuples would take some 16 times as much; id 0 marks a
    slot never used (ids start at 1).
    """

    __slots__ = ("_slots", "highest")

    def __init__(self) -> None:
        self.highest = 0
        """The highest message id recorded; 0 before any (ids start at 1)."""
        self._slots = array("Q", bytes(8 * 3 * DUPLICATE_WINDOW))

    def check(self, message_id: int) -> Verdict | Duplicate:
        """What to do with a SEND of C{message_id} (1 to 2^64 - 1, as decoded)."""
        if message_id > self.highest:
            return Verdict.NEW
        if message_id <= self.highest - DUPLICATE_WINDOW:
            return Verdict.STALE
        slots, at = self._slots, 3 * (message_id % DUPLICATE_WINDOW)
        if slots[at] != message_id:
            return Verdict.NEW
        return Duplicate(slots[at + 1], slots[at + 2])

    def record(self, message_id: int, seq: int, time_ms: int) -> None:
        """
        Remember that C{message_id} got C{seq} at C{time_ms}: after L{check}
        said it was new. An id already below the window is not remembered
        (it would be out of the window at once).
        """
        if message_id <= self.highest - DUPLICATE_WINDOW:
            return
        slots, at = self._slots, 3 * (message_id % DUPLICATE_WINDOW)
        slots[at] = message_id
        slots[at + 1] = seq
        slots[at + 2] = time_ms
        if message_id > self.highest:
            self.highest = message_id

    def forget(self, message_id: int) -> None:
        """
        Forget C{message_id}, recorded while its number was not known (a
        cluster room's message that could not be stored): its client's next
        copy of it is new again.
        """
        slots, at = self._slots, 3 * (message_id % DUPLICATE_WINDOW)
        if slots[at] == message_id:
            slots[at] = 0

    def remembered(self) -> int:
        """How many ids in the window are remembered (for tests and debugging: it counts, in O(DUPLICATE_WINDOW))."""
        floor = self.highest - DUPLICATE_WINDOW
        return sum(1 for message_id in self._slots[::3] if message_id > max(floor, 0))


class RoomWindows:
    """
    A room's duplicate windows, by client key: the client's id (the C{client}
    of its request, a string), or, for a client that gave none, anything
    unique to its membership (its Member, say), left with C{keep=False}.

    A window serves every live membership under its key: a client that
    joins again before its old member times out shares its window with it.
    When the last one leaves, the window is kept among the departed, at
    most C{departed_limit} (L{DEPARTED_WINDOWS}) of them, the oldest
    forgotten first; a member coming back under the key gets it back. So
    the memory is bounded by the live members plus that limit, whatever
    comes and goes. The windows go with this object when the room closes.
    """

    __slots__ = ("_departed", "_live", "departed_limit")

    def __init__(self, departed_limit: int = DEPARTED_WINDOWS) -> None:
        if departed_limit < 0:
            raise ValueError(f"departed_limit must be at least 0, not {departed_limit}")
        self.departed_limit = departed_limit
        self._live: dict[Hashable, tuple[DuplicateWindow, int]] = {}
        # key -> (its window, how many live memberships use it)
        self._departed: OrderedDict[Hashable, DuplicateWindow] = OrderedDict()
        # key -> window, the one that left first first

    def enter(self, key: Hashable) -> DuplicateWindow:
        """
        A member enters under C{key}: its window, shared with a live member
        under the same key, or back from the departed, or new. The caller
        holds it for the membership (the relay's path does no look-up), and
        calls L{leave} once when the membership ends.
        """
        live = self._live.get(key)
        if live is not None:
            window, users = live
            self._live[key] = (window, users + 1)
            return window
        window = self._departed.pop(key) if key in self._departed else DuplicateWindow()
        self._live[key] = (window, 1)
        return window

    def leave(self, key: Hashable, *, keep: bool = True) -> None:
        """
        A member under C{key} left. When it was the last under that key, its
        window is kept among the departed (C{keep}: a client id, which may
        come back) or forgotten (a membership's own key, which cannot).
        A key that has no live member is ignored.
        """
        live = self._live.get(key)
        if live is None:
            return
        window, users = live
        if users > 1:
            self._live[key] = (window, users - 1)
            return
        del self._live[key]
        if keep and self.departed_limit:
            self._departed[key] = window
            if len(self._departed) > self.departed_limit:
                self._departed.popitem(last=False)

    def window(self, key: Hashable) -> DuplicateWindow | None:
        """The window of a live member under C{key}, or None."""
        live = self._live.get(key)
        return None if live is None else live[0]

    @property
    def live(self) -> int:
        """How many windows serve live members."""
        return len(self._live)

    @property
    def departed(self) -> int:
        """How many windows of members that left are kept."""
        return len(self._departed)
