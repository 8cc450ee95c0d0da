"""
A node's room store in a cluster: the L{IRoomClaims} that the in-memory
store (chatd.daemon.rooms.RoomRegistry) consults, on the Redis room
directory and room log, and the history of a room numbered cluster-wide.

The registry keeps each node's own members, and everything the datagram
path looks up, in memory; this module makes the decisions that must be
made once for the whole cluster go through Redis first:

- a create claims the name cluster-wide (L{ClusterClaims.claim}) and starts
  the room's log before the room is anyone's here; a refusal is
  RoomExistsError, whichever node holds the name;
- a join of a room held elsewhere makes a I{replica} here (L{ClusterClaims.find}):
  the same name and epoch, the record's password hash and native_only, the
  host remote, the history loaded from the log; then adds the member's
  name cluster-wide (L{ClusterClaims.admit}: NAME_TAKEN, ROOM_FULL);
- an invitation is recorded when minted and spent in the directory, once
  cluster-wide, wherever it is presented;
- a departure removes the member cluster-wide and tells the other nodes; a
  close that is this node's doing (its host left here) releases the room
  and tells every node; a replica whose last member here left is only
  dropped here; a node that stops (SIGTERM) leaves its rooms and members in
  the cluster, for its members to resume elsewhere or on its next life;
- a resume (L{ClusterClaims.take_over}) moves the member to this node in
  the directory, checking and replacing its credential there, and tells the
  node it was on to drop its copy (a MOVED notice).

Requests wait for Redis and fail with ClusterUnavailableError when it
cannot be reached (refused at once while the bus says Redis is away).
What a departure or a close writes goes in the background, tracked so that
a stopping node waits for it (L{ClusterClaims.settle}).

L{SharedHistory} is a cluster room's L{IHistory}: reads from the node's
cache of the log (chatd.daemon.cluster.log.ClusterHistory, fed in order by
the bus), numbering by the log: C{append} answers UNNUMBERED, and the
number comes with L{SharedHistory.when_numbered} once the message is
stored, never before. The node's messages go to the log in batches, one
script call per reactor turn for all its rooms (chatd.daemon.cluster.batch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.daemon.cluster.batch import DEFAULT_MAX_BATCH, Outgoing, PostBatcher, RoomQueue
from chatd.daemon.cluster.directory import (
    InvitationOutcome,
    MemberOutcome,
    RoomDirectory,
    Spending,
    TakeOverOutcome,
)
from chatd.daemon.cluster.envelope import Notice as NoticeEnvelope
from chatd.daemon.cluster.envelope import NoticeKind as EnvelopeNoticeKind
from chatd.daemon.cluster.envelope import Posted, RoomClosed
from chatd.daemon.cluster.log import ClusterHistory, RedisUnavailableError, RoomLog, StaleEpochError
from chatd.daemon.cluster.records import MemberRecord, RoomRecord
from chatd.daemon.history import DEFAULT_HISTORY_MESSAGES, UNNUMBERED, Held, IHistory, new_epoch
from chatd.daemon.interfaces import INumberedLater, IRoomClaims, Replica, Resumption
from chatd.protocol.errors import (
    ClusterUnavailableError,
    InvalidInvitationError,
    InvalidPasswordError,
    RoomExistsError,
    RoomFullError,
    RoomNotFoundError,
    UsernameTakenError,
)
from chatd.protocol.payloads import DELIVERY, Dialect, RoomRequest

if TYPE_CHECKING:
    # Types only: the room store imports the settings, which import this
    # package (--redis); at run time the cluster needs neither.
    from chatd.daemon.rooms import CloseReason, LeaveReason, Member, Room
    from chatd.daemon.settings import Settings

_log = Logger()

LEFT = "left"
"""LeaveReason.LEFT's value: a member's connection went away (as the notices say it)."""
TIMED_OUT = "timed_out"
"""LeaveReason.TIMED_OUT's value."""
SERVER_STOPPING = "the server is shutting down"
"""CloseReason.SERVER_STOPPING's value: this node stops; its rooms stay in the cluster."""
HOST_SERVER_STOPPED = "the host's server stopped"
"""CloseReason.HOST_SERVER_STOPPED's value: what a room whose host's node died closes with."""
WRITE_ATTEMPTS = 5
"""Times a departure's or a close's write to Redis is tried while the bus says Redis is there."""
_UNTAGGED = ("", 0)
"""No client id or message id: a message that is not a delivery member's SEND."""
UNAVAILABLE = "the cluster's shared state (Redis) cannot be reached: rooms cannot be created or joined now"
"""The one sentence a create, join or invitation is refused with while Redis is away."""


class RoomFeeds(Protocol):
    """
    What the claims need of the node: its Redis side (once it has one), and
    a room's feed from the other nodes, while the room has members here.
    """

    @property
    def directory(self) -> RoomDirectory:
        """The room directory; ClusterUnavailableError before the node has Redis."""

    @property
    def log(self) -> RoomLog:
        """The room log; ClusterUnavailableError before the node has Redis."""

    @property
    def connected(self) -> bool:
        """Whether Redis is reachable now, as far as the node knows (its bus)."""

    def watch(self, room: Room) -> None:
        """Follow C{room}'s channel (idempotent): its messages, notices and close reach the members here."""

    def unwatch(self, room: Room) -> None:
        """Stop following C{room}'s channel (it is closed here)."""

    def publish(self, room: Room, envelope: NoticeEnvelope | RoomClosed) -> Deferred[Any]:
        """Tell the other nodes following C{room}."""


@implementer(IHistory, INumberedLater)
class SharedHistory:
    """
    A cluster room's history: read from the node's cache of the room log,
    numbered by the log. C{append} hands the message to the node's
    L{PostBatcher} (numbered, stored and published with the reactor turn's
    other messages, in one call) and answers UNNUMBERED; L{when_numbered}
    fires with the number once it is stored, None when it could not be.
    """

    __slots__ = (
        "_batcher",
        "_failed",
        "_held",
        "_last",
        "_queue",
        "_tag",
        "cache",
        "connected",
        "log",
        "max_held",
        "node",
        "room",
    )

    def __init__(
        self,
        cache: ClusterHistory,
        log: RoomLog,
        room: str,
        node: str,
        connected: Callable[[], bool],
        max_held: int = DEFAULT_HISTORY_MESSAGES,
        *,
        batcher: PostBatcher,
    ) -> None:
        """
        @param connected: whether Redis is reachable now: while it is not, nothing is posted.
        @param max_held: the most messages held while Redis is away; past it, they are not stored.
        @param batcher: the node's poster to the log (on C{log}), shared by its rooms.
        """
        self.max_held = max_held
        self.cache = cache
        self.log = log
        self.room = room
        self.node = node
        self.connected = connected
        self._batcher = batcher
        self._queue = RoomQueue(room, cache.epoch, node, self._report)
        self._held: list[Outgoing] = []
        """Messages appended while Redis was away (with their client's ids), posted in order once it is back."""
        self._tag: tuple[str, int] = _UNTAGGED
        """The client id and message id the next append carries (L{tag_next})."""
        self._last: Outgoing | None = None
        self._failed = False

    @property
    def epoch(self) -> str:
        return self.cache.epoch

    @property
    def latest(self) -> int:
        return self.cache.latest

    @property
    def oldest(self) -> int:
        return self.cache.oldest

    @property
    def message_count(self) -> int:
        return self.cache.message_count

    @property
    def byte_count(self) -> int:
        return self.cache.byte_count

    def tag_next(self, client: str, message_id: int) -> None:
        self._tag = (client, message_id) if client else _UNTAGGED

    def append(self, name: bytes, text: bytes, time_ms: int) -> int:
        client, message_id = self._tag
        if client:
            self._tag = _UNTAGGED
        message = self._last = Outgoing(name, text, time_ms, client, message_id)
        if self.connected():
            self._batcher.add(self._queue, message)
        elif len(self._held) < self.max_held:
            # Held here, not queued on the connection: posted once Redis is
            # back, and only then acknowledged (a delivery member's copies
            # sent again meanwhile are duplicates of it, not new messages).
            self._held.append(message)
        else:
            message.settle(None)
            self._report(Failure(ClusterUnavailableError(UNAVAILABLE)))
        return UNNUMBERED

    def post_held(self) -> None:
        """Redis is back: post what was appended while it was away, in order (in the next call)."""
        held, self._held = self._held, []
        for message in held:
            self._batcher.add(self._queue, message)

    def drop_held(self) -> None:
        """The room is closed here: what was held is never stored."""
        held, self._held = self._held, []
        for message in held:
            message.settle(None)

    def when_numbered(self) -> Deferred[int | None]:
        last = self._last
        return succeed(None) if last is None else last.when_numbered()

    def range(self, first: int, last: int) -> Held:
        return self.cache.range(first, last)

    def receive(self, posted: Posted) -> bool:
        """A message from the bus (this node's own included): held in order; False for one held already."""
        return self.cache.receive(posted)

    def echoed(self, data: bytes, count: int) -> list[Outgoing] | None:
        """This node's oldest batch of the room's messages sent, if C{data} from the bus is it (RoomQueue.echoed)."""
        return self._queue.echoed(data, count)

    def _report(self, failure: Failure | None) -> None:
        """How a call with this room's messages went: None, stored; else why they were not."""
        if failure is None:
            if self._failed:
                self._failed = False
                _log.info("room {room}: messages are stored in the room log again", room=self.room)
            return
        # Relayed to the members here already; never acknowledged, never
        # numbered: a delivery client sends it again under its id.
        if not self._failed:
            self._failed = True
            _log.warn(
                "room {room}: a message could not be stored in the room log ({error}); not acknowledged",
                room=self.room,
                error=failure.getErrorMessage(),
                event="post_failed",
            )
        if not failure.check(RedisUnavailableError, StaleEpochError, ClusterUnavailableError):
            _log.failure("room {room}: posting to the room log failed unexpectedly", failure, room=self.room)


@implementer(IRoomClaims)
class ClusterClaims:
    """
    The cluster's side of a node's room store (L{IRoomClaims}), on the Redis
    directory and room log. C{feeds} is the node (chatd.daemon.cluster.node).
    """

    def __init__(self, node: str, feeds: RoomFeeds, clock: IReactorTime, settings: Settings) -> None:
        self.node = node
        self.feeds = feeds
        self.clock = clock
        self.settings = settings
        self.closed_by_cluster: set[Room] = set()
        """Rooms being closed here because the cluster said so: nothing more to tell it."""
        self._pending: set[Deferred[Any]] = set()
        self._unwritten: list[tuple[Callable[[], Any], int]] = []
        """Departures and closes that Redis was away for, written again once it is back (L{reconnected})."""
        self._retry: IDelayedCall | None = None
        self._batcher: PostBatcher | None = None

    @property
    def directory(self) -> RoomDirectory:
        return self.feeds.directory

    @property
    def log(self) -> RoomLog:
        return self.feeds.log

    def _connected(self) -> bool:
        return self.feeds.connected

    # -- requests -----------------------------------------------------------------

    def check_available(self) -> None:
        if not self.feeds.connected:
            raise ClusterUnavailableError(UNAVAILABLE)

    @property
    def batcher(self) -> PostBatcher:
        """The node's poster to the room log (made for the log the node has now)."""
        log = self.log
        if self._batcher is None or self._batcher.log is not log:
            self._batcher = PostBatcher(log, self.clock, max_batch=min(DEFAULT_MAX_BATCH, log.max_messages))
        return self._batcher

    def new_history(self, name: str) -> IHistory:
        settings = self.settings
        cache = ClusterHistory(new_epoch(), settings.history_messages, settings.history_bytes)
        return SharedHistory(
            cache, self.log, name, self.node, self._connected, settings.history_messages, batcher=self.batcher
        )

    def claim(self, room: Room, host: Member) -> Deferred[None]:
        return Deferred.fromCoroutine(self._claim(room, host))

    async def _claim(self, room: Room, host: Member) -> None:
        self.check_available()
        epoch = room.history.epoch
        record = RoomRecord(
            name=room.name,
            epoch=epoch,
            host=host.name,
            host_node=self.node,
            password=room.password_hash,
            native_only=room.native_only,
            created_ms=max(0, int(self.clock.seconds() * 1000)),
        )
        if not await self.directory.claim_room(
            record, self._record_of(host.name, host.dialect, host.delivery, host.credential_hash)
        ):
            raise RoomExistsError(f"room {room.name!r} exists")
        try:
            await _unavailable_as_cluster(self.log.begin(room.name, epoch))
        except BaseException:
            self._background(lambda: self.directory.release_room(room.name, epoch))
            raise

    def find(self, name: str) -> Deferred[Replica | None]:
        return Deferred.fromCoroutine(self._find(name))

    async def _find(self, name: str) -> Replica | None:
        self.check_available()
        record = await self.directory.room(name)
        if record is None:
            return None
        settings = self.settings
        try:
            cache = await _unavailable_as_cluster(
                ClusterHistory.load(self.log, name, record.epoch, settings.history_messages, settings.history_bytes)
            )
        except StaleEpochError:
            # Closed (or made again) since the directory was read: not this room any more.
            return None
        members = await self.directory.members(name)
        history = SharedHistory(
            cache, self.log, name, self.node, self._connected, settings.history_messages, batcher=self.batcher
        )
        names = tuple(member.name for member in members)
        return Replica(name, history, record.password, record.native_only, record.host, names)

    def admit(
        self, room: Room, request: RoomRequest, dialect: Dialect, credential_hash: str | None = None
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(self._admit(room, request, dialect, credential_hash))

    async def _admit(self, room: Room, request: RoomRequest, dialect: Dialect, credential_hash: str | None) -> None:
        self.check_available()
        delivery = dialect is Dialect.NATIVE and DELIVERY in request.features
        record = self._record_of(request.username, dialect, delivery, credential_hash)
        outcome = await self.directory.add_member(room.name, room.history.epoch, record, self.settings.max_members)
        if outcome is MemberOutcome.NAME_TAKEN:
            raise UsernameTakenError(f"{request.username!r} is already in room {room.name!r}")
        if outcome is MemberOutcome.ROOM_FULL:
            raise RoomFullError(f"room {room.name!r} holds its limit of {self.settings.max_members} members")
        if outcome is MemberOutcome.NO_ROOM:
            raise RoomNotFoundError(f"room {room.name!r} was closed")

    def take_over(
        self, room: Room, name: str, credential: str, new_credential: str, client: str | None
    ) -> Deferred[Resumption]:
        return Deferred.fromCoroutine(self._take_over(room, name, credential, new_credential, client))

    async def _take_over(
        self, room: Room, name: str, credential: str, new_credential: str, client: str | None
    ) -> Resumption:
        self.check_available()
        epoch = room.history.epoch
        taken = await self.directory.take_over_member(room.name, epoch, name, credential, self.node, new_credential)
        if taken.outcome is TakeOverOutcome.NO_ROOM:
            raise RoomNotFoundError(f"room {room.name!r} was closed")
        if taken.outcome is not TakeOverOutcome.MOVED or taken.previous_node is None:
            raise InvalidPasswordError(
                f"cannot resume as {name!r} in room {room.name!r}: the resume credential is"
                " not valid (already used, or that member is gone)"
            )
        acknowledged: tuple[tuple[int, int, int], ...] = ()
        if client:
            acknowledged = await self._posted_by(room, name, client)
        return Resumption(taken.previous_node, acknowledged)

    async def _posted_by(self, room: Room, name: str, client: str) -> tuple[tuple[int, int, int], ...]:
        """
        What member C{name}'s client C{client} posted in C{room} that the log
        holds: (message id, seq, time). The membership is this node's already,
        so a failure here costs only the duplicate window's memory (a copy
        sent again would be relayed twice), not the resume.
        """
        try:
            catchup = await self.log.posted_after(room.name, room.history.epoch, 0)
        except Exception as error:
            _log.warn(
                "room {room}: could not read what {name} posted before resuming: {error}",
                room=room.name,
                name=name,
                error=str(error),
            )
            return ()
        if catchup is None or catchup.state.epoch != room.history.epoch:
            return ()
        sender = name.encode("utf-8")
        return tuple(
            (posted.message_id, posted.seq, posted.time_ms)
            for posted in catchup.posted
            if posted.client == client and posted.name == sender and posted.message_id
        )

    def spend_invitation(self, room: Room, invite: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._spend_invitation(room, invite))

    async def _spend_invitation(self, room: Room, invite: str) -> None:
        self.check_available()
        outcome = await self.directory.spend_invitation(room.name, room.history.epoch, invite)
        if outcome is Spending.EXPIRED:
            raise InvalidInvitationError("the invitation has expired")
        if outcome is Spending.NO_ROOM:
            raise RoomNotFoundError(f"room {room.name!r} was closed")
        if outcome is not Spending.SPENT:
            raise InvalidInvitationError("the invitation is not valid for this room")

    # -- notifications ---------------------------------------------------------------

    def invitation_minted(self, room: Room, invite: str, ttl: float) -> None:
        adding = Deferred.fromCoroutine(
            self.directory.add_invitation(room.name, room.history.epoch, invite, ttl, self.settings.max_invitations)
        )

        def added(outcome: InvitationOutcome) -> None:
            if outcome is not InvitationOutcome.ADDED:
                _log.warn(
                    "room {room}: an invitation was not recorded cluster-wide ({outcome})",
                    room=room.name,
                    outcome=outcome.value,
                )

        self._background(lambda: adding.addCallback(added), again=False)

    def entered(self, member: Member) -> None:
        room = member.room
        room.remote_members.pop(member.name, None)
        self.feeds.watch(room)
        if not member.is_host:
            self._publish(
                room, NoticeEnvelope(room.name, room.history.epoch, EnvelopeNoticeKind.JOINED, member.name, self.node)
            )

    def resumed(self, member: Member, previous_node: str) -> None:
        room = member.room
        room.remote_members.pop(member.name, None)
        self.feeds.watch(room)
        if previous_node != self.node:
            # The node it was on (if alive) drops its copy quietly; the others keep listing it.
            moved = NoticeEnvelope(room.name, room.history.epoch, EnvelopeNoticeKind.MOVED, member.name, self.node)
            self._publish(room, moved)

    def abandoned(self, room: Room, name: str) -> None:
        epoch = room.history.epoch
        if not room.replica and room.host is not None and room.host.name == name:
            self._release(room)
        else:
            self._background(lambda: self.directory.remove_member(room.name, epoch, name, self.node))

    def member_left(self, member: Member, reason: LeaveReason) -> None:
        self._leave(member.room, member.name, reason.value)

    def room_closed(self, room: Room, members: list[Member], reason: CloseReason) -> None:
        history = room.history
        if isinstance(history, SharedHistory):
            history.drop_held()
        if room in self.closed_by_cluster:
            self.closed_by_cluster.discard(room)
        elif reason.value == SERVER_STOPPING:
            # The node stops (SIGTERM): the room and its members stay in the
            # cluster, for them to resume on another node, or on this one
            # once it is back, within the grace period; after it, the reaper
            # (or this node's next life, L{ClusterNode.forget_previous_life})
            # removes whoever did not come back.
            pass
        elif room.replica:
            # The room goes on elsewhere: only this node's members leave it.
            for member in members:
                self._leave(room, member.name, LEFT)
        else:
            self._release(room)
            host = room.host_name or ""
            self._publish(room, RoomClosed(room.name, room.history.epoch, self.node, reason.value, host))
        self.feeds.unwatch(room)

    # -- the background --------------------------------------------------------------

    def stop(self) -> None:
        """The node stops: nothing more is tried again."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._unwritten.clear()

    def settle(self) -> Deferred[None]:
        """Fires once what departures and closes wrote to Redis so far is written (or failed)."""
        pending = list(self._pending)
        return DeferredList(pending, consumeErrors=True).addCallback(lambda _: None)

    def _leave(self, room: Room, name: str, reason: str) -> None:
        """C{name} left C{room} here, for C{reason} (a LeaveReason's value)."""
        epoch = room.history.epoch
        self._background(lambda: self.directory.remove_member(room.name, epoch, name, self.node))
        kind = EnvelopeNoticeKind.TIMED_OUT if reason == TIMED_OUT else EnvelopeNoticeKind.LEFT
        self._publish(room, NoticeEnvelope(room.name, epoch, kind, name, self.node, reason))

    def _release(self, room: Room) -> None:
        epoch = room.history.epoch
        self._background(lambda: self.directory.release_room(room.name, epoch))
        self._background(lambda: self.log.delete(room.name, epoch))

    def _publish(self, room: Room, envelope: NoticeEnvelope | RoomClosed) -> None:
        self._background(lambda: self.feeds.publish(room, envelope))

    def reconnected(self) -> None:
        """
        Redis is back: write what departures and closes could not write while
        it was away (each write is idempotent: a member already gone, a room
        already released, change nothing), in the order they happened.
        """
        unwritten, self._unwritten = self._unwritten, []
        for work, attempts in unwritten:
            self._background(work, attempts=attempts)

    def _background(self, work: Callable[[], Any], *, again: bool = True, attempts: int = 0) -> None:
        """
        Run C{work} (making a coroutine or a Deferred) and track it until it
        ends; its failure is logged, never raised. Unless C{again} is False,
        what Redis was away for is kept for L{reconnected}: not even sent
        while the node knows Redis is away (the connection would queue it
        and send it late), and tried again a second later, at most
        L{WRITE_ATTEMPTS} times, when it failed with the bus connected.
        """
        if again and not self.feeds.connected:
            self._unwritten.append((work, attempts))
            return
        made = work()
        running: Deferred[Any] = made if isinstance(made, Deferred) else Deferred.fromCoroutine(made)
        self._pending.add(running)

        def done(result: object) -> None:
            self._pending.discard(running)
            if not isinstance(result, Failure):
                return
            if again and result.check(ClusterUnavailableError, RedisUnavailableError) and attempts + 1 < WRITE_ATTEMPTS:
                self._unwritten.append((work, attempts + 1))
                if self.feeds.connected and (self._retry is None or not self._retry.active()):
                    self._retry = self.clock.callLater(1.0, self.reconnected)
                return
            _log.warn(
                "node {node}: the cluster could not be told of a change: {error}",
                node=self.node,
                error=result.getErrorMessage(),
                event="cluster_write_failed",
            )

        running.addBoth(done)

    def _record_of(self, name: str, dialect: Dialect, delivery: bool, credential_hash: str | None) -> MemberRecord:
        return MemberRecord(name, self.node, dialect.value, delivery, credential_hash)


async def _unavailable_as_cluster(waiting: Deferred[Any]) -> Any:
    """The log's answer, its RedisUnavailableError as ClusterUnavailableError (what a TCP peer is told)."""
    try:
        return await waiting
    except RedisUnavailableError as error:
        raise ClusterUnavailableError(f"the room log in Redis cannot be reached: {error}") from None
