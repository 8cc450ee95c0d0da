"""
A chatd node of a cluster: what one ChatServer needs to serve rooms
together with other nodes through Redis (docs/cluster.md).

    node = ClusterNode(name, clock=reactor, settings=settings)      # before Redis answers
    server = ChatServer(reactor, settings, run_hash=..., cluster=node)
    await node.start_with(directory, redis, url)  # the bus connected: creates and joins may go
    ...
    await server.stop()         # every room here closed (cluster-wide for the rooms hosted here)
    await node.stop()           # what that wrote to Redis written, the bus stopped

(chatd.daemon.service and chatd.daemon.cluster.service do exactly this.)

The node gives its server's room store the cluster's claims
(chatd.daemon.cluster.store.ClusterClaims), and follows, on the bus, the
channel of every room that has members here. What arrives there reaches the
members here as if it had happened here:

- a message another node posted is relayed to them in their dialects
  (RelayProtocol.relay_posted); one this node posted comes back too, and
  then only its delivery members get it (POSTED with the log's number: the
  others had their copies at once, on the relay's fast path); every message
  also goes into the room's cache of the log, for REPAIR and KEEPALIVE_ACK;
- a join, leave or time-out on another node is told with the same notices
  and the same coalescing as a local one (ChatServer.presence_elsewhere),
  and the member list (Room.remote_members) follows;
- a room closed by its host's node is closed here, with the same notice.

The heartbeat and the reaper are the service's (chatd.daemon.service), on
the same directory.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.daemon.cluster.bus import ClusterBus
from chatd.daemon.cluster.directory import Removal, RoomDirectory
from chatd.daemon.cluster.envelope import Envelope, Posted, RoomClosed
from chatd.daemon.cluster.envelope import Notice as NoticeEnvelope
from chatd.daemon.cluster.envelope import NoticeKind as EnvelopeNoticeKind
from chatd.daemon.cluster.log import RoomLog
from chatd.daemon.cluster.records import ReapedMember, ReapReport
from chatd.daemon.cluster.redis_url import RedisConnection, RedisURL
from chatd.daemon.cluster.store import HOST_SERVER_STOPPED, LEFT, ClusterClaims, SharedHistory
from chatd.daemon.interfaces import IClusterNode
from chatd.protocol.errors import ClusterUnavailableError

if TYPE_CHECKING:
    # Types only: the controller, the room store and the settings import
    # this package's parents at run time (the settings read --redis).
    from chatd.daemon.controller import ChatServer
    from chatd.daemon.rooms import Room
    from chatd.daemon.settings import Settings

DEFAULT_START_TIMEOUT = 5.0
"""Seconds L{ClusterNode.start} waits for the bus to reach Redis."""


@implementer(IClusterNode)
class ClusterNode:
    """
    One node: its room directory, room log and bus (each on Redis; the
    directory and the log may share the command connection, the bus has its
    own), and the claims its server's room store consults.

    It exists before it has Redis, so that the server can be built with it:
    until L{start} (or L{start_with}) has given it its Redis side and the bus
    reached Redis, the claims refuse creates and joins as the cluster being
    unavailable.
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        *,
        clock: IReactorTime,
        settings: Settings,
        directory: RoomDirectory | None = None,
        log: RoomLog | None = None,
        bus: ClusterBus | None = None,
    ) -> None:
        """
        @param name: this node's name in the cluster (--node), the directory's and the bus's.
        @param settings: the daemon's (history bounds, member and invitation limits).
        @param directory: the room directory, the room log and the bus, when they exist already (tests);
            otherwise given to L{start}, or made by L{start_with} from ClusterService's connection.
        """
        if not name:
            raise ValueError("a cluster node needs a name")
        self.name = name
        self.clock = clock
        self.settings = settings
        self._directory = directory
        self._room_log = log
        self.bus = bus
        self.claims = ClusterClaims(name, self, clock, settings)
        self._server: ChatServer | None = None
        self._watched: dict[str, Room] = {}
        """The rooms whose channel this node follows, by name: those with members here."""
        self._confirmed: set[Room] = set()
        """The watched rooms whose subscription Redis confirmed."""
        self._degraded = False
        """Whether this node's members were told the server is degraded (Redis lost), and not yet that it recovered."""
        self._forgetting: IDelayedCall | None = None
        """When the members of this node's previous life that did not come back are removed."""
        self._reading_members: dict[Room, list[set[str]]] = {}
        """
        For each room whose member list L{refresh_members} is reading, a set
        per read of the names a notice told of meanwhile: the read's answer
        may be older than those notices, so it does not undo them.
        """

    @property
    def directory(self) -> RoomDirectory:
        if self._directory is None:
            raise ClusterUnavailableError(f"node {self.name} has no connection to Redis yet")
        return self._directory

    @property
    def log(self) -> RoomLog:
        if self._room_log is None:
            raise ClusterUnavailableError(f"node {self.name} has no connection to Redis yet")
        return self._room_log

    @property
    def _the_bus(self) -> ClusterBus:
        if self.bus is None:
            raise ClusterUnavailableError(f"node {self.name} has no connection to Redis yet")
        return self.bus

    # -- the life of the node ---------------------------------------------------------

    def attach(self, server: object) -> None:
        if self._server is not None:
            raise ValueError("this node serves a server already")
        self._server = cast("ChatServer", server)

    async def start_with(
        self, directory: RoomDirectory, redis: RedisConnection, url: RedisURL, timeout: float = DEFAULT_START_TIMEOUT
    ) -> None:
        """
        Start on ClusterService's connection and directory (once its C{ready}
        fired): the room log on the same command connection, the bus on a
        subscriber connection of its own to C{url}. ClusterUnavailableError
        when the bus cannot reach Redis within C{timeout} seconds.
        """
        from twisted.internet.endpoints import HostnameEndpoint

        prefix = directory.keys.prefix
        log = RoomLog(redis, clock=self.clock, prefix=prefix, max_messages=self.settings.history_messages)
        endpoint = HostnameEndpoint(self.clock, url.host, url.port)
        bus = ClusterBus(endpoint, clock=self.clock, redis=redis, log=log, prefix=prefix, node=self.name)
        await self.start(timeout, directory=directory, log=log, bus=bus)

    async def start(
        self,
        timeout: float = DEFAULT_START_TIMEOUT,
        *,
        directory: RoomDirectory | None = None,
        log: RoomLog | None = None,
        bus: ClusterBus | None = None,
    ) -> None:
        """
        Start the bus (unless it runs already) and wait until it reaches
        Redis: ClusterUnavailableError after C{timeout} seconds. The
        directory, log and bus given here replace those given to the constructor.
        """
        self._directory = directory or self._directory
        self._room_log = log or self._room_log
        self.bus = bus or self.bus
        if self._directory is None or self._room_log is None or self.bus is None:
            raise ValueError("a cluster node starts with a directory, a room log and a bus")
        if self._directory.node != self.name or (self.bus.node and self.bus.node != self.name):
            raise ValueError(f"node {self.name}'s directory and bus must be node {self.name}'s")
        self.bus.add_listener(self._bus_state)
        if not self.bus.running:
            self.bus.startService()
        try:
            await self.bus.when_connected(timeout)
        except Exception as error:
            raise ClusterUnavailableError(f"node {self.name}: the bus cannot reach Redis: {error}") from None

    async def stop(self) -> None:
        """
        Once the server has stopped (its rooms closed): wait for what the
        closes wrote to Redis, then stop following rooms and stop the bus.
        """
        if self._forgetting is not None and self._forgetting.active():
            self._forgetting.cancel()
        self._forgetting = None
        await self.claims.settle()
        self.claims.stop()
        for room in list(self._watched.values()):
            self.unwatch(room)
        bus = self.bus
        if bus is None:
            return
        if bus.running:
            await bus.stopService()
        with suppress(ValueError):
            bus.remove_listener(self._bus_state)

    @property
    def connected(self) -> bool:
        """Whether Redis is reachable, as the bus last found it (False before the node has a bus)."""
        return self.bus is not None and bool(self.bus.connected)

    def _bus_state(self, connected: bool) -> None:
        server = self._server
        if not connected and not self._degraded:
            self._degraded = True
            if server is not None:
                server.cluster_degraded(True)
        elif connected and self._degraded:
            self._degraded = False
            if server is not None:
                server.cluster_degraded(False)
        if connected:
            self._log.info("node {node}: Redis is back; rooms are followed again", node=self.name, event="redis_back")
            self.claims.reconnected()
            for room in list(self._watched.values()):
                history = room.history
                assert isinstance(history, SharedHistory)
                history.post_held()
            # The bus caught the messages up from the log; the notices of
            # the outage are lost, so the member lists are read again.
            for room in list(self._watched.values()):
                Deferred.fromCoroutine(self.refresh_members(room)).addErrback(self._not_refreshed, room)
        else:
            self._log.warn(
                "node {node}: Redis is lost: creates and joins are refused, messages are relayed on this node only",
                node=self.name,
                event="redis_lost",
            )

    # -- following rooms (RoomFeeds) ----------------------------------------------------

    def watch(self, room: Room) -> None:
        current = self._watched.get(room.name)
        if current is room:
            return
        if current is not None:
            # An incarnation that ended unseen: its feed goes first.
            self.unwatch(current)
        self._watched[room.name] = room
        history = room.history
        assert isinstance(history, SharedHistory)
        subscribing = self._the_bus.subscribe(
            room.name,
            lambda envelope: self._received(room, envelope),
            epoch=history.epoch,
            since=history.latest,
            own=lambda data, first, count: self._own_came_back(room, data, first, count),
        )
        subscribing.addCallback(lambda _: self._confirmed.add(room) if self._watched.get(room.name) is room else None)
        subscribing.addErrback(
            lambda failure: self._log.warn(
                "node {node}: could not follow room {room}: {error}",
                node=self.name,
                room=room.name,
                error=failure.getErrorMessage(),
            )
        )

    def unwatch(self, room: Room) -> None:
        if self._watched.get(room.name) is not room:
            return
        del self._watched[room.name]
        self._confirmed.discard(room)
        self._the_bus.unsubscribe(room.name).addErrback(lambda _: None)

    def publish(self, room: Room, envelope: NoticeEnvelope | RoomClosed) -> Deferred[Any]:
        return self._the_bus.publish(room.name, envelope)

    def watched(self) -> list[str]:
        """The rooms this node follows (for tests and operators)."""
        return list(self._watched)

    def following(self, name: str) -> bool:
        """Whether Redis confirmed this node's subscription to room C{name}'s channel."""
        room = self._watched.get(name)
        return room is not None and room in self._confirmed

    def _not_refreshed(self, failure: Failure, room: Room) -> None:
        self._log.warn(
            "node {node}: could not read room {room}'s members again: {error}",
            node=self.name,
            room=room.name,
            error=failure.getErrorMessage(),
        )

    async def refresh_members(self, room: Room) -> None:
        """
        Read C{room}'s members on other nodes from the directory, and tell
        the members here of the differences as of joins and leaves (after
        Redis was away, when the notices of the outage were lost).
        """
        told_meanwhile: set[str] = set()
        self._reading_members.setdefault(room, []).append(told_meanwhile)
        try:
            records = await self.directory.members(room.name)
        finally:
            reads = [read for read in self._reading_members.pop(room) if read is not told_meanwhile]
            if reads:
                self._reading_members[room] = reads
        server = self._server
        if server is None or room.closed or self._watched.get(room.name) is not room:
            return
        # The bus and the directory's reads go over different connections:
        # a notice that arrived during the read may be newer than its answer.
        elsewhere = {record.name for record in records if record.node != self.name} - told_meanwhile
        for name in [name for name in room.remote_members if name not in elsewhere and name not in told_meanwhile]:
            gone = room.remote_left(name)
            if gone is not None:
                server.presence_elsewhere(gone, joined=False)
        for name in sorted(elsewhere):
            came = room.remote_joined(name)
            if came is not None:
                server.presence_elsewhere(came, joined=True)

    async def announce_reaped(self, report: ReapReport) -> None:
        """
        Tell every node what a reap (or an eviction) removed, as the dead
        node would have: a LEFT notice for each member removed, a closing for
        each room released (its log deleted), so that their members here
        and elsewhere are told and the lists follow. Call it with what
        L{RoomDirectory.reap} answered, on the node that reaped.
        """
        for member in report.members:
            if member.was_host:
                continue
            left = NoticeEnvelope(member.room, member.epoch, EnvelopeNoticeKind.LEFT, member.name, member.node, LEFT)
            await self._the_bus.publish(member.room, left)
        for released in report.rooms:
            closed = RoomClosed(released.name, released.epoch, self.name, HOST_SERVER_STOPPED, released.host)
            await self._the_bus.publish(released.name, closed)
            await self.log.delete(released.name, released.epoch)

    # -- a restart ----------------------------------------------------------------------------

    async def recall_previous_life(self, grace: float) -> int:
        """
        At start: the members this node's index holds from its previous
        life (it stopped, or died, and came back under the same name before
        the reaper's grace period ran out, so nobody reaped them). Their
        clients resume here or elsewhere; L{grace} seconds from now, those
        that did not are removed (L{forget_previous_life}). How many entries
        there were.
        """
        entries = await self.directory.node_members(self.name)
        if entries and self._forgetting is None:

            def forget() -> None:
                self._forgetting = None
                Deferred.fromCoroutine(self.forget_previous_life(entries)).addErrback(
                    lambda failure: self._log.warn(
                        "node {node}: could not remove the members of its previous life: {error}",
                        node=self.name,
                        error=failure.getErrorMessage(),
                    )
                )

            self._forgetting = self.clock.callLater(grace, forget)
        return len(entries)

    async def forget_previous_life(self, entries: list[tuple[str, str]]) -> ReapReport:
        """
        Remove the (room, member) C{entries} of this node's previous life
        that are still this node's in the directory and have no member here
        now (they did not resume within the grace period), as the reaper
        removes a dead node's: a member's leaving told everywhere, a host's
        room closed everywhere ("the host's server stopped").
        """
        report = ReapReport()
        for room_name, name in entries:
            record = await self.directory.room(room_name)
            if record is None:
                continue
            local = self._watched.get(room_name)
            if local is not None and local.history.epoch == record.epoch and name in local.members:
                continue
            if record.host == name:
                member = await self.directory.member(room_name, name)
                if member is None or member.node != self.name:
                    continue
                released = await self.directory.release_room(room_name, record.epoch)
                if released is not None:
                    report += ReapReport(rooms=(released,))
                continue
            removal = await self.directory.remove_member(room_name, record.epoch, name, self.name)
            if removal is Removal.REMOVED:
                report += ReapReport(members=(ReapedMember(room_name, record.epoch, name, self.name, False),))
                if local is not None and local.history.epoch == record.epoch and self._server is not None:
                    # This node's own notice does not come back to it: its members are told here.
                    gone = local.remote_left(name)
                    if gone is not None:
                        self._server.presence_elsewhere(gone, joined=False)
        if report.members or report.rooms:
            self._log.info(
                "node {node}: removed {members} members and {rooms} rooms of its previous life that did not come back",
                node=self.name,
                members=len(report.members),
                rooms=len(report.rooms),
                event="previous_life_forgotten",
            )
            await self.announce_reaped(report)
        return report

    # -- what the other nodes say ---------------------------------------------------------

    def _received(self, room: Room, envelope: Envelope) -> None:
        """One of C{room}'s envelopes, in the order Redis delivered them (the bus logs what raises)."""
        if room.closed or envelope.epoch != room.history.epoch:
            return
        server = self._server
        assert server is not None
        if isinstance(envelope, Posted):
            history = room.history
            assert isinstance(history, SharedHistory)
            if not history.receive(envelope):
                return
            server.relay.relay_posted(
                room,
                envelope.name,
                envelope.text,
                envelope.seq,
                envelope.time_ms,
                relayed_here=envelope.origin == self.name,
            )
        elif isinstance(envelope, NoticeEnvelope):
            if envelope.origin != self.name:
                self._presence(server, room, envelope)
        else:
            self._closed(server, room, envelope)

    def _own_came_back(self, room: Room, data: bytes, first: int, count: int) -> bool:
        """
        C{count} of C{room}'s messages numbered from C{first}, which this node
        posted, back from the bus undecoded: when they are the batch it sent
        (SharedHistory.echoed), what L{_received} does with each, from the
        messages it sent (the bus then hands them to nobody else). False
        otherwise: the bus decodes them.
        """
        history = room.history
        if room.closed or not isinstance(history, SharedHistory):
            return False
        messages = history.echoed(data, count)
        if messages is None:
            return False
        server = self._server
        assert server is not None
        hold, relay_posted = history.cache.hold, server.relay.relay_posted
        seq = first
        for message in messages:
            if hold(seq, message.time_ms, message.name, message.text):
                relay_posted(room, message.name, message.text, seq, message.time_ms, relayed_here=True)
            seq += 1
        return True

    def _presence(self, server: ChatServer, room: Room, notice: NoticeEnvelope) -> None:
        for told_meanwhile in self._reading_members.get(room, ()):
            told_meanwhile.add(notice.member)
        if notice.kind is EnvelopeNoticeKind.JOINED:
            came = room.remote_joined(notice.member)
            if came is not None:
                server.presence_elsewhere(came, joined=True)
        elif notice.kind is EnvelopeNoticeKind.MOVED:
            # Resumed on the notice's origin: dropped here if it was here, still listed everywhere.
            server.moved_elsewhere(room, notice.member)
        elif notice.kind in (EnvelopeNoticeKind.LEFT, EnvelopeNoticeKind.TIMED_OUT):
            gone = room.remote_left(notice.member)
            if gone is not None:
                server.presence_elsewhere(gone, joined=False, timed_out=notice.kind is EnvelopeNoticeKind.TIMED_OUT)

    def _closed(self, server: ChatServer, room: Room, closed: RoomClosed) -> None:
        self.claims.closed_by_cluster.add(room)
        server.closed_elsewhere(room, closed.reason)
