"""
A node's messages on their way to the room log, in batches.

Every message a node relays in a cluster room is also posted to the room's
log in Redis (chatd.daemon.cluster.log): numbered, stored, published to the
other nodes. One script call per message costs the relay path about ten
times what relaying the message to the node's own members costs (a command
encoded and a reply parsed in Python, a Deferred, a timeout). So a node's
messages are gathered instead: L{PostBatcher.add} only queues a message on
its room's L{RoomQueue}; once per reactor turn (C{callLater(0)}: after the
UDP port's whole read, up to 64 datagrams, and its sends), every room's
queued messages go to Redis in ONE script call (L{RoomLog.post_batch}),
which numbers, stores and publishes them all.

Guarantees, as with one call per message:

- A room's messages are numbered in the order the node relayed them: a
  room's queue is taken in order, and at most one call is in flight per
  node, so a call never overtakes an earlier one (not even when Redis lost
  its scripts and txredisapi sends a call again as EVAL). The log's script
  numbers the room's messages of all nodes in one order.
- A message's number is known (L{Outgoing.when_numbered}) only once Redis
  stored it, never before; None when it was not stored (Redis away or too
  slow, the room's incarnation over): nothing may acknowledge it.
- Each message carries its own client id and message id, so the duplicate
  windows work per message.

While a call is in flight, what is said meanwhile waits and goes in the
next call, as soon as the answer is in: the busier the node, the larger
its batches. A call holds at most C{max_batch} messages (64, and never
more than a room's history holds); what is left goes in the next call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from chatd.daemon.cluster.envelope import TemplateFramer, is_echo
from chatd.daemon.cluster.log import RoomBatch, RoomLog, StaleEpochError

DEFAULT_MAX_BATCH = 64
"""The most messages one script call carries: as many as one read of the batching UDP port brings."""

PENDING = -1
"""L{Outgoing.seq} while the log has not answered."""


class Outgoing:
    """One message on its way to the log, and who waits for its number."""

    __slots__ = ("_waiters", "client", "message_id", "name", "seq", "text", "time_ms")

    def __init__(self, name: bytes, text: bytes, time_ms: int, client: str = "", message_id: int = 0) -> None:
        self.name = name
        self.text = text
        self.time_ms = time_ms
        self.client = client
        """The sender's client id (reliable delivery's duplicate window), "" for none."""
        self.message_id = message_id
        """The sender's id for the message, 0 for none."""
        self.seq: int | None = PENDING
        """Its number once stored; None once it could not be; L{PENDING} until then."""
        self._waiters: list[Deferred[int | None]] | None = None

    def when_numbered(self) -> Deferred[int | None]:
        """Fires with its number once stored, None if it could not be (at once if that is known)."""
        if self.seq != PENDING:
            return succeed(self.seq)
        waiting: Deferred[int | None] = Deferred()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiting)
        return waiting

    def settle(self, seq: int | None) -> None:
        """Stored as C{seq}, or (None) not stored: tell whoever waits."""
        self.seq = seq
        waiters, self._waiters = self._waiters, None
        if waiters:
            for waiting in waiters:
                waiting.callback(seq)


MAX_UNECHOED = 4
"""
The most batches of a room kept for recognising them when they come back
on the bus (L{RoomQueue.echoed}). With one call in flight per node, a room
has at most two out normally (one on its way back, one in the call), so
more means they went another way (a catch-up, a bus away): the oldest is
let go, and the node decodes what comes back instead. It bounds what a
room keeps for this to 4 batches of at most 64 messages of at most 4 KiB.
"""


class RoomQueue:
    """
    One room's messages waiting for the batcher (a cluster room's
    SharedHistory owns one), and whom to tell how its calls went.

    It also keeps the batches sent and not yet back on the bus (the log's
    script publishes each to every node following the room, this one
    included), so that the node knows its own messages when they come back
    by comparing bytes (L{echoed}) instead of decoding each: the room's
    cache and its delivery members take them from here.
    """

    __slots__ = ("epoch", "framer", "report", "room", "unechoed", "waiting")

    def __init__(self, room: str, epoch: str, origin: str, report: Callable[[Failure | None], None]) -> None:
        """
        @param report: told after each call that carried this room's messages: None when they
            were stored, the failure when they were not.
        """
        self.room = room
        self.epoch = epoch
        self.framer = TemplateFramer(room, epoch, origin)
        self.report = report
        self.waiting: list[Outgoing] = []
        self.unechoed: deque[tuple[list[Outgoing], bytes]] = deque()
        """The batches sent, oldest first, with their templates as sent: what comes back on the bus."""

    def batch(self, messages: list[Outgoing]) -> RoomBatch:
        """C{messages} framed for the log, and kept to be known again when they come back (L{echoed})."""
        frame = self.framer.frame
        framed = b"".join(
            [
                frame(message.time_ms, message.name, message.text, message.client, message.message_id)
                for message in messages
            ]
        )
        unechoed = self.unechoed
        unechoed.append((messages, framed))
        if len(unechoed) > MAX_UNECHOED:
            unechoed.popleft()
        return RoomBatch(self.room, self.epoch, framed, len(messages))

    def echoed(self, data: bytes, count: int) -> list[Outgoing] | None:
        """
        The messages of the oldest batch sent, when C{data} (a message on the
        room's channel naming this node as its origin, C{count} POSTED) is
        that batch coming back, numbered; None otherwise. Then nothing sent
        before is waited for any more (what did not come back this way came
        another way, or never will): what comes next is decoded.
        """
        unechoed = self.unechoed
        if unechoed:
            messages, framed = unechoed[0]
            if len(messages) == count and is_echo(data, framed, count):
                unechoed.popleft()
                return messages
            unechoed.clear()
        return None


class PostBatcher:
    """A node's poster to the room log: its messages of a reactor turn in one script call (see the module)."""

    def __init__(self, log: RoomLog, clock: IReactorTime, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"a batch holds at least 1 message, not {max_batch}")
        self.log = log
        self.clock = clock
        self.max_batch = max_batch
        self._queues: dict[RoomQueue, None] = {}
        """The rooms with messages waiting, in the order they had their first (a dict: ordered, unique)."""
        self._scheduled: IDelayedCall | None = None
        self._in_flight = False
        self.calls = 0
        """Script calls made."""
        self.posted = 0
        """Messages those calls carried."""
        self.largest = 0
        """The most messages one call carried."""

    def add(self, queue: RoomQueue, message: Outgoing) -> None:
        """Post C{message} in C{queue}'s room with the turn's other messages."""
        queue.waiting.append(message)
        if queue not in self._queues:
            self._queues[queue] = None
        if not self._in_flight and self._scheduled is None:
            self._scheduled = self.clock.callLater(0, self.flush)

    @property
    def waiting(self) -> int:
        """Messages not yet sent to Redis."""
        return sum(len(queue.waiting) for queue in self._queues)

    @property
    def busy(self) -> bool:
        """Whether a call is in flight or messages wait."""
        return self._in_flight or bool(self._queues)

    def flush(self) -> None:
        """Send what waits now, in one call (unless one is in flight: then once it is answered)."""
        if self._scheduled is not None:
            if self._scheduled.active():
                self._scheduled.cancel()
            self._scheduled = None
        if self._in_flight or not self._queues:
            return
        taken: list[tuple[RoomQueue, list[Outgoing]]] = []
        budget = self.max_batch
        queues = self._queues
        while queues and budget > 0:
            queue = next(iter(queues))
            waiting = queue.waiting
            if len(waiting) <= budget:
                messages, queue.waiting = waiting, []
                del queues[queue]
            else:
                messages = waiting[:budget]
                del waiting[:budget]
            budget -= len(messages)
            taken.append((queue, messages))
        count = self.max_batch - budget
        self.calls += 1
        self.posted += count
        self.largest = max(self.largest, count)
        self._in_flight = True
        try:
            reply = self.log.post_batch([queue.batch(messages) for queue, messages in taken])
        except Exception:
            self._failed(Failure(), taken)
            return
        reply.addCallbacks(self._numbered, self._failed, callbackArgs=(taken,), errbackArgs=(taken,))

    def _numbered(self, answers: list[int | StaleEpochError], taken: list[tuple[RoomQueue, list[Outgoing]]]) -> None:
        self._in_flight = False
        for (queue, messages), answer in zip(taken, answers, strict=True):
            if isinstance(answer, StaleEpochError):
                for message in messages:
                    message.settle(None)
                queue.unechoed.clear()
                queue.report(Failure(answer))
                continue
            for offset, message in enumerate(messages):
                message.settle(answer + offset)
            queue.report(None)
        self.flush()

    def _failed(self, failure: Failure, taken: list[tuple[RoomQueue, list[Outgoing]]]) -> None:
        # Not stored, never acknowledged: a delivery client sends its copy again under its id.
        self._in_flight = False
        for queue, messages in taken:
            for message in messages:
                message.settle(None)
            # Stored or not, it is not known: what comes back is decoded.
            queue.unechoed.clear()
            queue.report(failure)
        self.flush()
