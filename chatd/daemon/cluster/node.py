"""
A chatd node of a cluster: what one ChatServer needs to serve rooms
together with other nodes through Redis (docs/cluster.md).

    node = ClusterNode(directory, log, bus, clock=reactor, settings=settings)
    server = ChatServer(reactor, settings, run_hash=..., cluster=node)
    await node.start()          # the bus connected: creates and joins may go
    ...
    await server.stop()         # every room here closed (cluster-wide for the rooms hosted here)
    await node.stop()           # what that wrote to Redis written, the bus stopped

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
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.daemon.cluster.bus import ClusterBus
from chatd.daemon.cluster.directory import RoomDirectory
from chatd.daemon.cluster.envelope import Envelope, Posted, RoomClosed
from chatd.daemon.cluster.envelope import Notice as NoticeEnvelope
from chatd.daemon.cluster.envelope import NoticeKind as EnvelopeNoticeKind
from chatd.daemon.cluster.log import RoomLog
from chatd.daemon.cluster.records import ReapReport
from chatd.daemon.cluster.store import ClusterClaims, SharedHistory, stand_in
from chatd.daemon.interfaces import IClusterNode
from chatd.daemon.rooms import CloseReason, LeaveReason, Room
from chatd.daemon.settings import Settings
from chatd.protocol.errors import ClusterUnavailableError

if TYPE_CHECKING:
    from chatd.daemon.controller import ChatServer

DEFAULT_START_TIMEOUT = 5.0
"""Seconds L{ClusterNode.start} waits for the bus to reach Redis."""

_LEAVE_REASONS = {
    EnvelopeNoticeKind.LEFT: LeaveReason.LEFT,
    EnvelopeNoticeKind.TIMED_OUT: LeaveReason.TIMED_OUT,
}


@implementer(IClusterNode)
class ClusterNode:
    """
    One node: its room directory, room log and bus (each on Redis; the
    directory and the log may share the command connection, the bus has its
    own), and the claims its server's room store consults.
    """

    _log = Logger()

    def __init__(
        self,
        directory: RoomDirectory,
        log: RoomLog,
        bus: ClusterBus,
        *,
        clock: IReactorTime,
        settings: Settings | None = None,
    ) -> None:
        if bus.node and bus.node != directory.node:
            raise ValueError(f"the bus is node {bus.node!r}'s, the directory node {directory.node!r}'s")
        self.directory = directory
        self.log = log
        self.bus = bus
        self.name = directory.node
        self.clock = clock
        self.claims = ClusterClaims(directory, log, self, clock, settings)
        self._server: ChatServer | None = None
        self._watched: dict[str, Room] = {}
        """The rooms whose channel this node follows, by name: those with members here."""
        self._confirmed: set[Room] = set()
        """The watched rooms whose subscription Redis confirmed."""

    # -- the life of the node ---------------------------------------------------------

    def attach(self, server: object) -> None:
        from chatd.daemon.controller import ChatServer

        if not isinstance(server, ChatServer):
            raise TypeError("a cluster node serves a chatd.daemon.controller.ChatServer")
        if self._server is not None:
            raise ValueError("this node serves a server already")
        self._server = server

    async def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """
        Start the bus (unless it runs already) and wait until it reaches
        Redis: ClusterUnavailableError after C{timeout} seconds.
        """
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
        await self.claims.settle()
        self.claims.stop()
        for room in list(self._watched.values()):
            self.unwatch(room)
        if self.bus.running:
            await self.bus.stopService()
        with suppress(ValueError):
            self.bus.remove_listener(self._bus_state)

    @property
    def connected(self) -> bool:
        """Whether Redis is reachable, as the bus last found it."""
        return bool(self.bus.connected)

    def _bus_state(self, connected: bool) -> None:
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
        subscribing = self.bus.subscribe(
            room.name, lambda envelope: self._received(room, envelope), epoch=history.epoch, since=history.latest
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
        self.bus.unsubscribe(room.name).addErrback(lambda _: None)

    def publish(self, room: Room, envelope: NoticeEnvelope | RoomClosed) -> Deferred[Any]:
        return self.bus.publish(room.name, envelope)

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
        records = await self.directory.members(room.name)
        server = self._server
        if server is None or room.closed or self._watched.get(room.name) is not room:
            return
        elsewhere = {record.name for record in records if record.node != self.name}
        for name in [name for name in room.remote_members if name not in elsewhere]:
            server.presence_elsewhere(room.remote_members.pop(name), LeaveReason.LEFT)
        for name in sorted(elsewhere):
            if name not in room.remote_members and name not in room.members:
                room.remote_members[name] = member = stand_in(room, name)
                server.presence_elsewhere(member, None)

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
            left = NoticeEnvelope(
                member.room, member.epoch, EnvelopeNoticeKind.LEFT, member.name, member.node, LeaveReason.LEFT.value
            )
            await self.bus.publish(member.room, left)
        for released in report.rooms:
            reason = CloseReason.HOST_SERVER_STOPPED.value
            closed = RoomClosed(released.name, released.epoch, self.name, reason, released.host)
            await self.bus.publish(released.name, closed)
            await self.log.delete(released.name, released.epoch)

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

    def _presence(self, server: ChatServer, room: Room, notice: NoticeEnvelope) -> None:
        name = notice.member
        if notice.kind is EnvelopeNoticeKind.JOINED:
            if name in room.members or name in room.remote_members:
                return
            member = room.remote_members[name] = stand_in(room, name)
            server.presence_elsewhere(member, None)
            return
        reason = _LEAVE_REASONS.get(notice.kind)
        if reason is None:
            return
        gone = room.remote_members.pop(name, None)
        if gone is not None:
            server.presence_elsewhere(gone, reason)

    def _closed(self, server: ChatServer, room: Room, closed: RoomClosed) -> None:
        try:
            reason = CloseReason(closed.reason)
        except ValueError:
            reason = CloseReason.HOST_LEFT
        if reason is CloseReason.SERVER_STOPPING:
            # Not this server: its members are told the room closed, not that their server stops.
            reason = CloseReason.HOST_SERVER_STOPPED
        self.claims.closed_by_cluster.add(room)
        server.store.close_room(room, reason)
