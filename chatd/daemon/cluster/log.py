"""
A room's message log in Redis: the sequence numbers and the bounded history
every node of a cluster shares (docs/reliability.md, section 3, made
cluster-wide), and the local cache a node answers repairs from.

L{RoomLog.post_batch} is one Lua script, so one round trip and one atomic
step for any number of messages of any number of rooms (a node's messages
of one reactor turn, chatd.daemon.cluster.batch; L{RoomLog.post} is a batch
of one): for each room it checks the incarnation (epoch), takes the next
C{n} sequence numbers (HINCRBY by n), writes each into its message's
envelope (the 8 bytes at C{envelope.SEQ_OFFSET}), appends each envelope to
the room's stream trimmed to the history size (XADD MAXLEN), and PUBLISHes
them on the room's channel: the envelope itself for one message, one
POSTED_BATCH envelope holding them all for several, so that every node
following the room reads one pub/sub message per room and batch. Redis runs
one script at a time, so the publishes of a room leave in the order of
their numbers, whichever nodes posted them, and a number is never given
twice or skipped.

A script touching several rooms' keys is fine on one Redis; under Redis
Cluster (docs/cluster.md 10) a batch would have to be split by hash slot.

Keys, for a room C{R} under the prefix C{P} (the braces are a Redis Cluster
hash tag: a room's two keys share a slot, as a script's keys must)::

    P:log:{R}:meta      hash: epoch (the incarnation), seq (the latest number)
    P:log:{R}:entries   stream: one entry per message, id "<seq>-0", field e = the envelope

Why a stream and not a list (RPUSH + LTRIM): a stream entry's id is the
sequence number, so a repair's range is an XRANGE by number, with no index
arithmetic tying the list's length to the counter (the two could only
disagree through a bug, and then a list would serve the wrong messages
under the right numbers, where a stream serves none); XADD refuses an id
not above the last one, a second guard on the numbering; XADD trims in the
same command (MAXLEN, exact: the bound is the history setting, as in
memory); and a stream can be read with XREAD by a consumer that is not a
node (an archiver, an exporter) without touching the nodes. A list would
cost about the same memory for 512 short entries.

The log keeps the whole envelope, not only the history's four fields: what
a node reads back (a resync after Redis was away, L{RoomLog.posted_after})
is exactly what the bus carried, origin and message id included.

The history's byte bound (--history-bytes) is not applied in Redis: the
count bound (--history-messages, 512 by default) caps a room's log at 512
relayed copies of at most 4 KiB, 2 MiB. The local cache applies both bounds,
as the in-memory history does.

A node's own cache is L{ClusterHistory}: the reads of C{IHistory} from a
local ring, loaded from the log when the node starts serving the room and
fed, in order, by the bus, so that REPAIR, KEEPALIVE_ACK and the history on
join are answered without Redis. Its numbering comes from L{RoomLog.post}.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.daemon.cluster.bus_stats import BusStats
from chatd.daemon.cluster.envelope import (
    SEQ_OFFSET,
    SEQ_SIZE,
    VERSION,
    Kind,
    Posted,
    TemplateFramer,
    decode,
    room_channel,
)
from chatd.daemon.history import (
    DEFAULT_HISTORY_BYTES,
    DEFAULT_HISTORY_MESSAGES,
    Held,
    HistoryEntry,
    IHistory,
    RoomHistory,
)
from chatd.protocol.errors import ChatError

T = TypeVar("T")

RedisConnection = Any
"""
A txredisapi connection (or pool) for commands: C{Connection(...)},
C{ConnectionPool(...)} or their lazy forms. Any charset works (replies are
read back to bytes), but C{charset=None, convertNumbers=False} spares the
decoding. txredisapi ships no types, hence Any.
"""

DEFAULT_COMMAND_TIMEOUT = 2.0
"""
Seconds a log command may take before it fails as L{RedisUnavailableError}.
txredisapi queues a command while its connection is down and sends it once
it is back; a node must not wait that long to tell its member, so the wait
is bounded. A post that timed out may still be stored later: the member is
not acknowledged, sends again under the same message id, and the duplicate
windows (fed by the bus, whose envelopes carry the id) recognise it.
"""

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_MAX_POST_REFS = 4096
"""The most rooms whose keys L{RoomLog.post_batch} keeps encoded (past it, it starts again)."""

_STATE_MARK = "epoch="
# The log's scripts return the epoch behind this mark: a bare epoch of 16
# digits would be turned into a number by txredisapi's convertNumbers.

_POST_BATCH = f"""
local size, expiry = ARGV[1], tonumber(ARGV[2])
local result = {{}}
for room = 1, #KEYS / 2 do
  local meta, entries = KEYS[2 * room - 1], KEYS[2 * room]
  local blob = ARGV[room + 2]
  local epoch, channel, count, position = struct.unpack('>I2c0I2c0I4', blob)
  local current = redis.call('HGET', meta, 'epoch')
  if current ~= epoch then
    table.insert(result, '0:{_STATE_MARK}' .. (current or ''))
  else
    local first = redis.call('HINCRBY', meta, 'seq', count) - count + 1
    local numbered = {{}}
    for index = 1, count do
      local length = struct.unpack('>I4', blob, position)
      local start = position + 4
      local seq = first + index - 1
      local envelope = string.sub(blob, start, start + {SEQ_OFFSET - 1}) .. struct.pack('>I{SEQ_SIZE}', seq)
        .. string.sub(blob, start + {SEQ_OFFSET + SEQ_SIZE}, start + length - 1)
      redis.call('XADD', entries, 'MAXLEN', size, string.format('%d-0', seq), 'e', envelope)
      numbered[index] = envelope
      position = start + length
    end
    if position ~= #blob + 1 then
      return redis.error_reply('chatd: a batch of ' .. count .. ' messages does not fill its ' .. #blob .. ' bytes')
    end
    if count == 1 then
      redis.call('PUBLISH', channel, numbered[1])
    else
      for index = 1, count do
        numbered[index] = struct.pack('>I4', #numbered[index]) .. numbered[index]
      end
      redis.call('PUBLISH', channel, struct.pack('>BBI2', {VERSION}, {Kind.POSTED_BATCH.value}, count)
        .. table.concat(numbered))
    end
    if expiry > 0 then
      redis.call('PEXPIRE', meta, expiry)
      redis.call('PEXPIRE', entries, expiry)
    end
    table.insert(result, string.format('1:%d', first))
  end
end
return table.concat(result, ',')
"""
"""
KEYS: each room's meta and entries. ARGV: history size, expiry in ms (0: none),
then for each room one argument: its epoch and its channel (each behind a
u16 length), its message count (u32), and its framed templates
(envelope.framed: each POSTED numbered 0 behind its u32 length). One
argument, not four: txredisapi encodes a command's arguments one by one in
Python, and a node's batches mostly hold one message per room. Returns one
string, for the same reason (txredisapi parses a list's elements one by
one): per room, comma-separated, "1:" and its first number, or "0:" and the
current epoch (behind its mark) when the log is not the epoch's (nothing
done for that room). A batch of an earlier room is kept when a later one
is malformed: Redis does not roll a script back.
"""

_READ = f"""
local current = redis.call('HGET', KEYS[1], 'epoch')
if not current or (ARGV[1] ~= '' and current ~= ARGV[1]) then
  return {{0, '{_STATE_MARK}' .. (current or '')}}
end
local latest = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local result = {{1, '{_STATE_MARK}' .. current, latest, latest + 1}}
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first > 0 then
  result[4] = tonumber(string.match(first[1][1], '^%d+'))
end
if ARGV[2] == 'tail' then
  if tonumber(ARGV[3]) > 0 then
    local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
    for index = #entries, 1, -1 do
      table.insert(result, entries[index][2][2])
    end
  end
elseif ARGV[2] ~= '' then
  local entries = redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[3])
  for _, entry in ipairs(entries) do
    table.insert(result, entry[2][2])
  end
end
return result
"""
"""
KEYS: meta, entries. ARGV: epoch ('' for whichever), then 'tail' and a count,
or first and last sequence numbers ('+' for the latest), or '' and '' (the
state alone). Returns 1, the epoch, latest, oldest, then the envelopes; or 0
and the current epoch ('' for none) when the log is not the epoch's.
"""

_BEGIN = """
local current = redis.call('HGET', KEYS[1], 'epoch')
if current == ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', 0)
local expiry = tonumber(ARGV[2])
if expiry > 0 then
  redis.call('PEXPIRE', KEYS[1], expiry)
end
return 1
"""
"""KEYS: meta, entries. ARGV: epoch, expiry in ms. Returns 1 when it started the log, 0 if it was the epoch's."""

_DELETE = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""
"""KEYS: meta, entries. ARGV: epoch. Returns 1 when it deleted the epoch's log, 0 when the log was not the epoch's."""


class StaleEpochError(ChatError):
    """
    The room's log is not the incarnation asked for: the room was closed (and
    perhaps made again) since the caller learned its epoch. Nothing was done.
    """

    def __init__(self, room: str, epoch: str, current: str | None) -> None:
        now = "has no log (closed)" if current is None else f"is incarnation {current} now"
        super().__init__(f"room {room!r}: incarnation {epoch} is over; the room {now}")
        self.room = room
        self.epoch = epoch
        self.current = current


class RedisUnavailableError(ChatError):
    """Redis did not answer in time, or the connection to it is lost: nothing is known to have been done."""


class ClusterNumberingError(ChatError):
    """A cluster room's messages are numbered by the room log (L{RoomLog.post}), never by a node's cache."""


class LogState(NamedTuple):
    """Where a room's log stands."""

    epoch: str
    latest: int
    """The latest sequence number given; 0 before any."""
    oldest: int
    """The oldest sequence number held; latest + 1 when none is."""


class LogTail(NamedTuple):
    """What L{RoomLog.tail} answers: the log's state and its last messages."""

    state: LogState
    held: Held


class Catchup(NamedTuple):
    """What L{RoomLog.posted_after} answers: the log's state and the envelopes after a number, in order."""

    state: LogState
    posted: Sequence[Posted]


class RoomBatch(NamedTuple):
    """One room's messages in a L{RoomLog.post_batch}: their templates, framed (envelope.framed)."""

    room: str
    epoch: str
    framed: bytes
    """The POSTED templates (numbered 0), each behind its u32 length: envelope.TemplateFramer.frame's, joined."""
    messages: int
    """How many templates C{framed} holds."""


class RoomLog:
    """
    The rooms' logs in one Redis, through one command connection (not the
    bus's subscriber connection: a subscribed connection runs no commands).

    Every method returns a Deferred that fails with L{StaleEpochError} when
    the room's log is not the epoch given, and with L{RedisUnavailableError}
    when Redis does not answer within C{command_timeout}.
    """

    def __init__(
        self,
        redis: RedisConnection,
        *,
        clock: IReactorTime,
        prefix: str = "chatd",
        max_messages: int = DEFAULT_HISTORY_MESSAGES,
        stats: BusStats | None = None,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        idle_expiry: float | None = None,
    ) -> None:
        """
        @param redis: the command connection (L{RedisConnection}).
        @param clock: times round trips and bounds them.
        @param prefix: the first part of every key and channel: one per deployment sharing a Redis.
        @param max_messages: the history size (--history-messages): the most messages a room's log holds.
        @param stats: where round trips, publishes and stale epochs are counted (shared with the bus, say).
        @param command_timeout: seconds before a command fails as L{RedisUnavailableError}.
        @param idle_expiry: when given, a room's log expires this many seconds after its last post: a
            safety net for logs whose room nobody closed (every node of it died); None keeps them.
        """
        if max_messages < 1:
            raise ValueError(f"a room's log holds at least 1 message, not {max_messages}")
        self._redis = redis
        self._clock = clock
        self.prefix = prefix
        self.max_messages = max_messages
        self.stats = BusStats() if stats is None else stats
        self.command_timeout = command_timeout
        self._expiry_ms = 0 if idle_expiry is None else max(1, round(idle_expiry * 1000))
        self._post_refs: dict[tuple[str, str], tuple[bytes, bytes, bytes]] = {}
        """Per (room, epoch): L{_refs}, made once, not at every post."""

    def keys(self, room: str) -> list[str]:
        """The room's meta hash and entries stream (for operators and tests)."""
        return [f"{self.prefix}:log:{{{room}}}:meta", f"{self.prefix}:log:{{{room}}}:entries"]

    # -- writing -----------------------------------------------------------------

    def begin(self, room: str, epoch: str) -> Deferred[bool]:
        """
        Start the room's log for incarnation C{epoch}, empty, numbering from 1:
        what the node that created the room does once the directory said it
        won the name. Whatever an earlier incarnation left is deleted. Doing it
        again for the same epoch changes nothing (True when this call started it).
        """
        reply = self._eval(_BEGIN, room, [epoch, self._expiry_ms])
        return reply.addCallback(lambda started: bool(started))

    def post(
        self,
        room: str,
        epoch: str,
        name: bytes,
        text: bytes,
        time_ms: int,
        origin_node: str,
        *,
        client: str = "",
        message_id: int = 0,
    ) -> Deferred[int]:
        """
        Number a message in the room's incarnation C{epoch}, keep it, and
        publish it to every node subscribed to the room, in one atomic step.
        The result is its sequence number. C{client} and C{message_id} are the
        sender's (reliable delivery's SEND), carried so that any node's
        duplicate window learns the number the message got.
        """
        framed = TemplateFramer(room, epoch, origin_node).frame(time_ms, name, text, client, message_id)
        reply = self.post_batch([RoomBatch(room, epoch, framed, 1)])

        def numbered(answers: list[int | StaleEpochError]) -> int:
            (answer,) = answers
            if isinstance(answer, StaleEpochError):
                raise answer
            return answer

        return reply.addCallback(numbered)

    def post_batch(self, batches: Sequence[RoomBatch]) -> Deferred[list[int | StaleEpochError]]:
        """
        Number, keep and publish the messages of several rooms in one script
        call (one round trip, one atomic step): for each room, in the order
        given, its messages take the next C{messages} numbers in the order of its
        C{framed} templates, each is appended to the room's stream, and they
        are published on its channel as one POSTED (one message) or one
        POSTED_BATCH (several). The result has, per batch, the number its first
        message got, or the L{StaleEpochError} of a room whose log is not the
        batch's epoch (its messages were not stored; the other rooms' were).
        """
        keys: list[bytes] = []
        args: list[Any] = [self.max_messages, self._expiry_ms]
        refs = self._post_refs
        for batch in batches:
            known = refs.get((batch.room, batch.epoch))
            if known is None:
                if len(refs) >= _MAX_POST_REFS:
                    refs.clear()
                known = refs[(batch.room, batch.epoch)] = self._refs(batch.room, batch.epoch)
            meta, entries, head = known
            keys += (meta, entries)
            args.append(b"".join((head, _U32.pack(batch.messages), batch.framed)))
        reply = timed(self._redis.eval(_POST_BATCH, keys, args), self._clock, self.stats, self.command_timeout)

        def numbered(answer: object) -> list[int | StaleEpochError]:
            results: list[int | StaleEpochError] = []
            for batch, result in zip(batches, _as_bytes(answer).split(b","), strict=True):
                stored, _, value = result.partition(b":")
                if stored == b"0":
                    self.stats.stale_epochs += 1
                    results.append(StaleEpochError(batch.room, batch.epoch, _epoch_of(value)))
                else:
                    self.stats.publishes += 1
                    results.append(int(value))
            return results

        return reply.addCallback(numbered)

    def _refs(self, room: str, epoch: str) -> tuple[bytes, bytes, bytes]:
        """A room's keys for L{post_batch}, and the head of its argument: its epoch and channel."""
        meta, entries = (key.encode() for key in self.keys(room))
        epoch_bytes, channel = epoch.encode(), room_channel(self.prefix, room)
        return meta, entries, b"".join((_U16.pack(len(epoch_bytes)), epoch_bytes, _U16.pack(len(channel)), channel))

    def delete(self, room: str, epoch: str) -> Deferred[bool]:
        """
        Delete the room's log if it is still incarnation C{epoch}'s (the room
        closed): True if it was deleted, False if it was gone already or is a
        newer incarnation's, which stays.
        """
        return self._eval(_DELETE, room, [epoch]).addCallback(lambda deleted: bool(deleted))

    # -- reading -----------------------------------------------------------------

    def latest(self, room: str) -> Deferred[LogState | None]:
        """The room's log's state, whichever its incarnation; None when the room has no log."""
        return self._read(room, "", "", "").addCallback(lambda read: None if read is None else read[0])

    def range(self, room: str, epoch: str, first: int, last: int) -> Deferred[Held]:
        """
        The messages C{first}..C{last} (both included) that the log holds, in
        order, and the oldest it holds: what C{IHistory.range} answers, so
        that C{serve_repair}'s rules apply to it unchanged.
        """

        def held(read: tuple[LogState, list[Posted]] | None) -> Held:
            state, posted = self._known(read, room, epoch)
            return Held([message.entry() for message in posted], state.oldest)

        if first > last:
            return self._read(room, epoch, "", "").addCallback(held)
        return self._read(room, epoch, max(first, 0), last).addCallback(held)

    def tail(self, room: str, count: int) -> Deferred[LogTail | None]:
        """The room's last C{count} messages held, whichever its incarnation (in the state); None when it has no log."""

        def tail(read: tuple[LogState, list[Posted]] | None) -> LogTail | None:
            if read is None:
                return None
            state, posted = read
            return LogTail(state, Held([message.entry() for message in posted], state.oldest))

        return self._read(room, "", "tail", max(count, 0)).addCallback(tail)

    def posted_after(self, room: str, epoch: str | None, after: int) -> Deferred[Catchup | None]:
        """
        The envelopes the log holds after sequence number C{after} of
        incarnation C{epoch}, in order: what a node missed while its bus was
        away. When the log is another incarnation's now (the room was closed
        and made again meanwhile), or C{epoch} is None, every envelope it
        holds, with its state saying which epoch. None when the room has no log.
        """
        if epoch is None:
            return self._catchup(self._read(room, "", 1, "+"))

        def other_incarnation(failure: Failure) -> Deferred[tuple[LogState, list[Posted]] | None]:
            failure.trap(StaleEpochError)
            return self._read(room, "", 1, "+")

        reply = self._read(room, epoch, after + 1, "+")
        return self._catchup(reply.addCallbacks(lambda read: self._known(read, room, epoch), other_incarnation))

    @staticmethod
    def _catchup(reply: Deferred[Any]) -> Deferred[Catchup | None]:
        return reply.addCallback(lambda read: None if read is None else Catchup(*read))

    # -- the round trips -----------------------------------------------------------

    def _read(
        self, room: str, epoch: str, first: int | str, last: int | str
    ) -> Deferred[tuple[LogState, list[Posted]] | None]:
        def parsed(answer: list[Any]) -> tuple[LogState, list[Posted]] | None:
            if answer[0] == 0:
                current = _epoch_of(answer[1])
                if epoch and current != epoch:
                    self.stats.stale_epochs += 1
                    raise StaleEpochError(room, epoch, current)
                return None
            state = LogState(_epoch_of(answer[1]) or "", int(answer[2]), int(answer[3]))
            posted = [decode(_as_bytes(data)) for data in answer[4:]]
            return state, [message for message in posted if isinstance(message, Posted)]

        return self._eval(_READ, room, [epoch, first, last]).addCallback(parsed)

    def _known(
        self, read: tuple[LogState, list[Posted]] | None, room: str, epoch: str
    ) -> tuple[LogState, list[Posted]]:
        """What C{_read} found under C{epoch}; L{StaleEpochError} when the room has no log at all."""
        if read is None:
            self.stats.stale_epochs += 1
            raise StaleEpochError(room, epoch, None)
        return read

    def _eval(self, script: str, room: str, args: list[Any]) -> Deferred[Any]:
        return timed(self._redis.eval(script, self.keys(room), args), self._clock, self.stats, self.command_timeout)


def timed(reply: Deferred[T], clock: IReactorTime, stats: BusStats, timeout: float | None) -> Deferred[T]:
    """
    C{reply}, a Redis command's answer, counted in C{stats} as a round trip
    with its latency, bounded by C{timeout} seconds; its connection errors
    (and the timeout) as L{RedisUnavailableError}. Redis's own refusals
    (txredisapi's ResponseError) pass through as they are.
    """
    started = clock.seconds()
    if timeout is not None:
        reply.addTimeout(timeout, clock)

    def answered(value: T) -> T:
        stats.round_trip(clock.seconds() - started)
        return value

    def failed(failure: Failure) -> Failure:
        stats.round_trip(clock.seconds() - started, failed=True)
        if failure.check(DeferredTimeoutError):
            raise RedisUnavailableError(f"Redis did not answer within {timeout:g} s") from None
        # By name: importing txredisapi would install the global reactor (it reads it at import time).
        if failure.check("txredisapi.ConnectionError"):
            raise RedisUnavailableError(f"Redis is unreachable: {failure.getErrorMessage()}") from None
        return failure

    return reply.addCallbacks(answered, failed)


def _as_bytes(value: object) -> bytes:
    """A bulk reply as bytes, whatever the connection's charset made of it (txredisapi decodes what it can)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"a Redis reply of {type(value).__name__} where bytes were expected")


def _epoch_of(value: object) -> str | None:
    """The epoch behind the scripts' mark; None for a room without a log."""
    epoch = _as_bytes(value).decode().removeprefix(_STATE_MARK)
    return epoch or None


# -- the node's cache ------------------------------------------------------------------


@implementer(IHistory)
class ClusterHistory:
    """
    A node's copy of a room's log: the reads of C{IHistory} (epoch, latest,
    oldest, counts, L{range}) from a local ring, so that C{serve_repair},
    C{history_from} and KEEPALIVE_ACK work on it unchanged and without Redis.

    It is filled in order and only that way: L{load} (or L{from_tail}) when
    the node starts serving the room, then L{receive} for every POSTED
    envelope the bus hands over, the node's own messages included (they come
    back on its own subscription). Never from L{RoomLog.post}'s answer: that
    arrives on the command connection, and nothing orders it against the
    subscriber connection, so a node's own number 7 could be known before
    another node's 6 arrived.

    The ring has the log's bounds (and the byte bound besides), so while the
    feed is unbroken it holds what the log holds; a message missing from the
    feed (older than the log could give back after an outage) is a gap the
    ring starts again after, as the log itself did. L{append} is refused:
    numbering is the log's (L{ClusterNumberingError}).
    """

    __slots__ = ("_ring", "gaps")

    def __init__(
        self, epoch: str, max_messages: int = DEFAULT_HISTORY_MESSAGES, max_bytes: int = DEFAULT_HISTORY_BYTES
    ) -> None:
        self._ring = RoomHistory(max_messages, max_bytes, epoch)
        self.gaps = 0
        """Times the feed skipped numbers (an outage longer than the log's ring): the ring started again."""

    @classmethod
    def from_tail(
        cls, tail: LogTail, max_messages: int = DEFAULT_HISTORY_MESSAGES, max_bytes: int = DEFAULT_HISTORY_BYTES
    ) -> ClusterHistory:
        """A cache holding what L{RoomLog.tail} read, at the log's latest number."""
        history = cls(tail.state.epoch, max_messages, max_bytes)
        for entry in tail.held.entries:
            history.receive_entry(entry)
        if history.latest < tail.state.latest:
            # Nothing held (or only older): the numbering still starts after the log's latest.
            history._restart_at(tail.state.latest + 1)
        return history

    @classmethod
    def load(
        cls,
        log: RoomLog,
        room: str,
        epoch: str,
        max_messages: int = DEFAULT_HISTORY_MESSAGES,
        max_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> Deferred[ClusterHistory]:
        """
        The room's cache, read from its log (one round trip). Subscribe the room
        on the bus with C{since=history.latest} afterwards: the bus then hands
        over what was posted between this read and the subscription.
        L{StaleEpochError} when the log is not C{epoch}'s.
        """

        def made(tail: LogTail | None) -> ClusterHistory:
            if tail is None or tail.state.epoch != epoch:
                log.stats.stale_epochs += 1
                raise StaleEpochError(room, epoch, None if tail is None else tail.state.epoch)
            return cls.from_tail(tail, max_messages, max_bytes)

        return log.tail(room, max_messages).addCallback(made)

    @property
    def epoch(self) -> str:
        return self._ring.epoch

    @property
    def latest(self) -> int:
        return self._ring.latest

    @property
    def oldest(self) -> int:
        return self._ring.oldest

    @property
    def message_count(self) -> int:
        return self._ring.message_count

    @property
    def byte_count(self) -> int:
        return self._ring.byte_count

    def append(self, name: bytes, text: bytes, time_ms: int) -> int:
        raise ClusterNumberingError(
            "a cluster room's messages are numbered by RoomLog.post; feed its cache with receive"
        )

    def range(self, first: int, last: int) -> Held:
        return self._ring.range(first, last)

    def receive(self, posted: Posted) -> bool:
        """
        Hold a POSTED envelope from the bus (or a resync). False, and nothing
        held, for one already held or older, or of another incarnation (the
        node's handler starts a new cache for a new epoch).
        """
        if posted.epoch != self._ring.epoch:
            return False
        # The fields, not posted.entry(): every message from the bus comes this way.
        return self.hold(posted.seq, posted.time_ms, posted.name, posted.text)

    def receive_entry(self, entry: HistoryEntry) -> bool:
        """L{receive} for an entry known to be this incarnation's."""
        return self.hold(entry.seq, entry.time_ms, entry.name, entry.text)

    def hold(self, seq: int, time_ms: int, name: bytes, text: bytes) -> bool:
        """L{receive} for a message known to be this incarnation's, by its fields."""
        ring = self._ring
        if seq <= ring.latest:
            return False
        if seq > ring.latest + 1:
            self.gaps += 1
            self._restart_at(seq)
            ring = self._ring
        ring.append(name, text, time_ms)
        return True

    def _restart_at(self, seq: int) -> None:
        """Forget what is held: the next message held will be C{seq}."""
        old = self._ring
        self._ring = RoomHistory(old.max_messages, old.max_bytes, old.epoch)
        self._ring.latest = seq - 1

    def __repr__(self) -> str:
        return f"<ClusterHistory {self._ring!r}>"
