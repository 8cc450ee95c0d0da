"""
The chat server: one room store shared by the TCP factory and the UDP relay.

Like twisted.names' resolver, one controller object serves both transports.
It also decides who is told what when membership changes: notices go over
the member's TCP connection while it is open (UDP may lose them) and as a
datagram otherwise.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from chatd.errors import RateLimitedError
from chatd.interfaces import IRoomObserver, IRoomStore
from chatd.payloads import Notice, NoticeKind
from chatd.rooms import CloseReason, HashRunner, LeaveReason, Member, Room, RoomRegistry, run_inline
from chatd.settings import Settings
from chatd.tcp import RoomFactory
from chatd.udp import RelayProtocol


@implementer(IRoomObserver)
class ChatServer:
    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        settings: Settings | None = None,
        store: IRoomStore | None = None,
        run_hash: HashRunner = run_inline,
    ) -> None:
        self.clock = clock
        self.settings = settings or Settings()
        self.store: IRoomStore = store or RoomRegistry(clock, self.settings, run_hash)
        self.store.observer = self
        self.relay = RelayProtocol(self.store, clock, self.settings)
        self.relay.on_throttled = self._throttled
        self.tcp_factory = RoomFactory(self.store, clock, self.settings)

    # -- IRoomObserver ------------------------------------------------------

    def member_joined(self, member: Member) -> None:
        room = member.room
        notice = Notice(NoticeKind.MEMBER_JOINED, room.name, member.name, members=room.names())
        for other in room.members.values():
            if other is not member:
                self._tell(other, notice)

    def member_left(self, member: Member, reason: LeaveReason) -> None:
        room = member.room
        kind = NoticeKind.TIMED_OUT if reason is LeaveReason.TIMED_OUT else NoticeKind.MEMBER_LEFT
        notice = Notice(kind, room.name, member.name, idle_timeout=self.settings.idle_timeout, members=room.names())
        for other in room.members.values():
            self._tell(other, notice)
        if reason is LeaveReason.TIMED_OUT:
            self._tell(member, notice)
        self._hang_up(member)
        self._log.info("{user} {event} {room}", user=member.name, event=reason.value, room=room.name)

    def room_closed(self, room: Room, members: list[Member], reason: CloseReason) -> None:
        kind = NoticeKind.SERVER_STOPPING if reason is CloseReason.SERVER_STOPPING else NoticeKind.ROOM_CLOSED
        host = room.host.name if room.host is not None else None
        notice = Notice(kind, room.name, host, reason=reason.value, idle_timeout=self.settings.idle_timeout)
        for member in members:
            self._tell(member, notice)
            self._hang_up(member)
        self.relay.forget_room(room)
        self._log.info("room {room} closed: {reason}", event="room_closed", room=room.name, reason=reason.value)

    def _throttled(self, member: Member) -> None:
        self._tell(member, Notice(NoticeKind.THROTTLED, member.room.name, member.name))
        self._log.info("{user} throttled in {room}", event="throttled", user=member.name, room=member.room.name)

    def _tell(self, member: Member, notice: Notice) -> None:
        if member.connection is not None:
            member.connection.send_notice(notice)
        else:
            self.relay.send_notice(member, notice)

    def _hang_up(self, member: Member) -> None:
        if member.connection is not None:
            member.connection.close()
            member.connection = None

    # -- housekeeping -------------------------------------------------------

    def sweep(self) -> None:
        """Remove idle members and log the counters; never raises (TimerService would stop)."""
        with self._log.failuresHandled("while sweeping idle members"):
            self.store.expire()
            self.tcp_factory.prune()
            rate_limited = self.rate_limit_hits()
            self._log.info(
                "{event}: {rooms} rooms, {members} members, {connections} connections,"
                " {datagrams_in} datagrams in, {datagrams_out} out, {dropped} dropped,"
                " {bytes_in} bytes in, {bytes_out} out, {rate_limited} rate-limited",
                event="stats",
                rooms=len(self.store.rooms()),
                members=self.store.member_count(),
                connections=len(self.tcp_factory.connections),
                datagrams_in=self.relay.received,
                datagrams_out=self.relay.sent,
                dropped=self.relay.drops.total,
                bytes_in=self.relay.received_bytes,
                bytes_out=self.relay.sent_bytes,
                rate_limited=sum(rate_limited.values()),
                **{f"dropped_{reason}": count for reason, count in self.relay.drops.counts.items()},
                **{f"rate_limited_{limit}": count for limit, count in rate_limited.items()},
            )

    def rate_limit_hits(self) -> dict[str, int]:
        """
        How often each limit turned something away: "datagrams" (a member's
        messages or bytes per second; the datagram is dropped), "connections"
        (new TCP connections per address) and "password_attempts" (joins with
        a password or invitation per address), the last two refused as RATE_LIMITED.
        """
        refused = dict(self.tcp_factory.rate_limited)
        return {
            "datagrams": self.relay.drops.counts[RateLimitedError.reason],
            "connections": refused.get("connections", 0),
            "password_attempts": refused.get("password_attempts", 0),
        }

    def stop(self) -> Deferred[None]:
        """
        Tell every member the server is stopping, close every room and
        connection, and fire once the connections are closed or the grace
        period is over, whichever is first.
        """
        for room in self.store.rooms():
            self.store.close_room(room, CloseReason.SERVER_STOPPING)
        connections = list(self.tcp_factory.connections)
        closed = [connection.when_closed() for connection in connections]
        for connection in connections:
            connection.close()

        def abort_stragglers() -> None:
            # A peer that does not read would hold its connection open for ever.
            for connection in connections:
                connection.abort()

        timer = self.clock.callLater(self.settings.shutdown_grace, abort_stragglers)

        def stop_timer(result: object) -> None:
            if timer.active():
                timer.cancel()

        return DeferredList(closed, consumeErrors=True).addBoth(stop_timer)
