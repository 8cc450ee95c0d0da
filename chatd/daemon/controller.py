"""
The chat server: one room store shared by the TCP factory and the UDP relay.

Like twisted.names' resolver, one controller object serves both transports.
It also decides who is told what when membership changes, or when the relay
reports a member sending too fast (L{IRelayObserver}): notices go over the
member's TCP connection while it is open (UDP may lose them) and otherwise
are handed to the relay to send as a datagram (L{IDatagramNotices}). Notices
go one way, from here to the connection or the relay; the relay reaches
back only through L{IRelayObserver}, the store through L{IRoomObserver}.

Join and leave notices say only what changed, and a room's bursts of them are
coalesced (L{_PresenceWindow}): someone who comes and goes as fast as they
can connect costs each member a notice or two per presence interval, not one
per visit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from chatd.daemon.delivery import DeliveryGauges, delivery_gauges
from chatd.daemon.interfaces import IClusterNode, IRelayObserver, IRoomObserver, IRoomStore
from chatd.daemon.relay import RelayProtocol
from chatd.daemon.rooms import CloseReason, HashRunner, LeaveReason, Member, Room, RoomRegistry, run_inline
from chatd.daemon.settings import Settings
from chatd.daemon.stats import StoreStats
from chatd.daemon.tcp_factory import RoomFactory
from chatd.protocol.errors import RateLimitedError
from chatd.protocol.payloads import Dialect, Notice, NoticeKind

_BEFORE_THE_WINDOW = -1
"""The sequence a member who was in the room before its presence window opened counts as entering at."""
_EVERYONE = _BEFORE_THE_WINDOW - 1
"""A change's C{told_after} when every member there before it is to hear of it."""


@dataclass(eq=False, slots=True)
class _Change:
    """One join or leave in a room, numbered within its presence window."""

    member: Member
    notice: Notice
    sequence: int
    told_after: int = _EVERYONE
    """Only members who entered after this sequence hear of it."""


@dataclass(eq=False, slots=True)
class _PresenceWindow:
    """
    One room's presence notices over one presence interval.

    The change that opens a window is sent at once; the ones after it are
    held until the window ends, then sent as their net effect: a member who
    joined and left within the window is not mentioned to those who never
    heard of it. A member hears of a change only if it was in the room before
    the change (its create or join answer listed everyone there at that
    moment, so an earlier change would be told twice).
    """

    timer: IDelayedCall | None = None
    next_sequence: int = 0
    held: list[_Change] = field(default_factory=list)
    entered: dict[Member, int] = field(default_factory=dict)
    """Members who joined during this window, with the sequence of their join."""

    def number(self, member: Member, notice: Notice) -> _Change:
        change = _Change(member, notice, self.next_sequence)
        self.next_sequence += 1
        if notice.kind is NoticeKind.MEMBER_JOINED:
            self.entered[member] = change.sequence
        return change

    def hold(self, change: _Change) -> None:
        if change.notice.kind is not NoticeKind.MEMBER_JOINED:
            for index, earlier in enumerate(self.held):
                # The same member object: a rejoin under the same name is a
                # new member (a new token, maybe another person), never cancelled.
                if earlier.member is change.member:
                    self._cancel(index, change)
                    return
        self.held.append(change)

    def _cancel(self, index: int, leave: _Change) -> None:
        """A held join, and now the same member's leave: nobody who was there before hears of either."""
        join = self.held.pop(index)
        del self.entered[leave.member]
        # Whoever entered in between was listed the member on entering, so
        # still has to hear that it left; if nobody did, nothing is kept.
        if any(join.sequence < entered < leave.sequence for entered in self.entered.values()):
            leave.told_after = join.sequence
            self.held.append(leave)

    def hears_of(self, member: Member, change: _Change) -> bool:
        """
        Whether C{member} is to be told of C{change}: it is not about it, and
        it entered before it (and after C{told_after}).
        """
        entered = self.entered.get(member, _BEFORE_THE_WINDOW)
        return member is not change.member and change.told_after < entered < change.sequence


@implementer(IRoomObserver, IRelayObserver)
class ChatServer:
    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        settings: Settings | None = None,
        store: IRoomStore | None = None,
        run_hash: HashRunner = run_inline,
        cluster: IClusterNode | None = None,
    ) -> None:
        """
        @param cluster: the node of a cluster this server is (chatd.daemon.cluster.node),
            whose claims its room store consults; None (the default) for a server alone.
        """
        self.clock = clock
        self.settings = settings or Settings()
        claims = cluster.claims if cluster is not None else None
        self.store: IRoomStore = store or RoomRegistry(clock, self.settings, run_hash, claims=claims)
        self.store.observer = self
        self.relay = RelayProtocol(self.store, clock, self.settings)
        self.relay.observer = self
        # The relay takes the sealed frames members send over TCP (operation 8).
        self.tcp_factory = RoomFactory(self.store, clock, self.settings, tunnel=self.relay)
        self._repairs_reported: dict[str, int] = {}
        """The store's repair counts at the last sweep: only new repairs are logged."""
        self._presence: dict[Room, _PresenceWindow] = {}
        """The rooms whose presence window is open: a change there now is held."""
        self.cluster = cluster
        if cluster is not None:
            cluster.attach(self)

    # -- IRoomObserver ------------------------------------------------------

    def member_joined(self, member: Member) -> None:
        self._presence_changed(member, Notice(NoticeKind.MEMBER_JOINED, member.room.name, member.name))

    def member_left(self, member: Member, reason: LeaveReason) -> None:
        room = member.room
        kind = NoticeKind.TIMED_OUT if reason is LeaveReason.TIMED_OUT else NoticeKind.MEMBER_LEFT
        notice = Notice(
            kind,
            room.name,
            member.name,
            idle_timeout=self.settings.idle_timeout,
            for_silence=reason is LeaveReason.TIMED_OUT,
        )
        if reason is LeaveReason.TIMED_OUT:
            # Its last word from the room, before its connection closes: never held.
            self._tell(member, notice)
        self._presence_changed(member, notice)
        self._hang_up(member)
        self._log.info("{user} {event} {room}", user=member.name, event=reason.value, room=room.name)

    def member_resumed(self, member: Member, previous: Member) -> None:
        """
        A member took its place back (a resume): the others hear nothing,
        as nobody came or went. Its old connection, if still open, is
        closed without a notice (the client that resumed is the one that
        would read it). Presence changes still held about the old
        membership are now about the new one, so that the member is not
        told of its own join.
        """
        window = self._presence.get(member.room)
        if window is not None:
            if previous in window.entered:
                window.entered[member] = window.entered.pop(previous)
            for change in window.held:
                if change.member is previous:
                    change.member = member
        self._hang_up(previous)
        self._log.info("{user} resumed in {room}", event="resumed", user=member.name, room=member.room.name)

    def room_closed(self, room: Room, members: list[Member], reason: CloseReason) -> None:
        # Held joins and leaves are stale: the close notice says it all.
        self._close_window(room)
        kind = NoticeKind.SERVER_STOPPING if reason is CloseReason.SERVER_STOPPING else NoticeKind.ROOM_CLOSED
        host = room.host_name
        notice = Notice(
            kind,
            room.name,
            host,
            reason=reason.value,
            idle_timeout=self.settings.idle_timeout,
            # The host itself was removed for silence: a model host is told so.
            for_silence=reason is CloseReason.HOST_TIMED_OUT,
        )
        for member in members:
            self._tell(member, notice)
            self._hang_up(member)
        self.relay.forget_room(room)
        self._log.info("room {room} closed: {reason}", event="room_closed", room=room.name, reason=reason.value)

    # -- what other nodes of a cluster say (chatd.daemon.cluster.node) --------------

    def presence_elsewhere(self, member: Member, *, joined: bool, timed_out: bool = False) -> None:
        """
        A member on another node of the cluster (C{member} its stand-in in
        C{Room.remote_members}) joined, left, or was removed for silence:
        this node's members are told as of a local change, in the same
        presence windows.
        """
        if joined:
            self.member_joined(member)
            return
        kind = NoticeKind.TIMED_OUT if timed_out else NoticeKind.MEMBER_LEFT
        notice = Notice(kind, member.room.name, member.name, idle_timeout=self.settings.idle_timeout)
        self._presence_changed(member, notice)

    def cluster_degraded(self, degraded: bool) -> None:
        """
        This node lost the cluster's shared state (Redis), or has it back:
        every native member here is told, in each of its rooms
        (SERVER_DEGRADED, then SERVER_RECOVERED). Legacy members are told
        nothing: their wire has no such notice, and a sentence they do not
        expect could end a model client's program.
        """
        kind = NoticeKind.SERVER_DEGRADED if degraded else NoticeKind.SERVER_RECOVERED
        for room in self.store.rooms():
            notice = Notice(kind, room.name)
            for member in list(room.members.values()):
                if member.dialect is Dialect.NATIVE:
                    self._tell(member, notice)
        self._log.info(
            "members told the server is {state}",
            state="degraded" if degraded else "recovered",
            event="server_degraded" if degraded else "server_recovered",
        )

    def moved_elsewhere(self, room: Room, name: str) -> None:
        """
        Member C{name}, here, resumed on another node of the cluster: its
        copy here is dropped quietly (its old connection closed without a
        notice), and nobody is told anything: it is still in the room.
        """
        self.store.moved_away(room, name)

    def closed_elsewhere(self, room: Room, reason: str) -> None:
        """
        The cluster closed C{room} (its host's node said why, in
        C{CloseReason}'s words): closed here, its members here told so. A
        server stopping elsewhere is not this one: its members are told
        the host's server stopped.
        """
        try:
            why = CloseReason(reason)
        except ValueError:
            why = CloseReason.HOST_LEFT
        if why is CloseReason.SERVER_STOPPING:
            why = CloseReason.HOST_SERVER_STOPPED
        self.store.close_room(room, why)

    # -- presence notices ---------------------------------------------------

    def _presence_changed(self, member: Member, notice: Notice) -> None:
        """A join or leave in C{member}'s room: told at once if the room was quiet, else held."""
        room = member.room
        window = self._presence.get(room)
        if window is not None:
            window.hold(window.number(member, notice))
            return
        window = _PresenceWindow()
        self._announce(room, window, window.number(member, notice))
        if self.settings.presence_interval > 0:
            window.timer = self.clock.callLater(self.settings.presence_interval, self._end_window, room)
            self._presence[room] = window

    def _end_window(self, room: Room) -> None:
        window = self._presence.pop(room, None)
        if window is None or not window.held or room.closed:
            return
        for change in window.held:
            self._announce(room, window, change)
        # A batch went out: the room's next change waits for the next one, so
        # that one room's batches are at least an interval apart.
        following = _PresenceWindow()
        following.timer = self.clock.callLater(self.settings.presence_interval, self._end_window, room)
        self._presence[room] = following

    def _announce(self, room: Room, window: _PresenceWindow, change: _Change) -> None:
        for other in room.members.values():
            if window.hears_of(other, change):
                self._tell(other, change.notice)

    def _close_window(self, room: Room) -> None:
        window = self._presence.pop(room, None)
        if window is not None and window.timer is not None and window.timer.active():
            window.timer.cancel()

    # -- IRelayObserver -----------------------------------------------------

    def member_throttled(self, member: Member) -> None:
        self._tell(member, Notice(NoticeKind.THROTTLED, member.room.name, member.name))
        self._log.info("{user} throttled in {room}", event="throttled", user=member.name, room=member.room.name)

    # -- notices --------------------------------------------------------------

    def _tell(self, member: Member, notice: Notice) -> None:
        """The one way out for notices: the member's TCP connection if open, else a datagram."""
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
        """Remove idle members and forget what has expired; never raises (TimerService would stop)."""
        with self._log.failuresHandled("while sweeping idle members"):
            self.store.expire()
            self._report_repairs()
            self.tcp_factory.prune()
            self.relay.prune()

    def log_stats(self) -> None:
        """
        Log the counters as one C{stats} event, every C{stats_interval}: not
        every sweep, which may run ten times a second. Never raises.
        """
        with self._log.failuresHandled("while logging the counters"):
            rate_limited = self.rate_limit_hits()
            udp = self.relay.stats
            tcp = self.tcp_factory.stats
            self._log.info(
                "{event}: {rooms} rooms, {members} members, {connections} connections,"
                " {datagrams_in} datagrams in, {datagrams_out} out, {dropped} dropped,"
                " {bytes_in} bytes in, {bytes_out} out, {rate_limited} rate-limited,"
                " {refused_frames} TCP frames refused",
                event="stats",
                rooms=len(self.store.rooms()),
                members=self.store.member_count(),
                connections=tcp.connections,
                datagrams_in=udp.received,
                datagrams_out=udp.sent,
                dropped=udp.drops.total,
                bytes_in=udp.received_bytes,
                bytes_out=udp.sent_bytes,
                rate_limited=sum(rate_limited.values()),
                refused_frames=sum(tcp.refused_requests.values()),
                **{f"dropped_{reason}": count for reason, count in udp.drops.counts.items()},
                **{f"rate_limited_{limit}": count for limit, count in rate_limited.items()},
                **{f"refused_{limit}": count for limit, count in self.limit_refusals().items()},
                **{f"aborted_{reason}": count for reason, count in tcp.aborted.items()},
                **{f"refused_frames_{reason}": count for reason, count in tcp.refused_requests.items()},
            )

    def _report_repairs(self) -> None:
        """
        Log what the store's sweep had to repair since the last sweep. Each
        repair is a room or member that a create, join or departure left
        half done: a bug of ours, so it is logged as an error, not counted quietly.
        """
        store: StoreStats = self.store.stats
        repaired = dict(store.repaired)
        new = {kind: count - self._repairs_reported.get(kind, 0) for kind, count in repaired.items()}
        new = {kind: count for kind, count in new.items() if count > 0}
        self._repairs_reported = repaired
        if new:
            self._log.error(
                "bug: the sweep repaired the room store ({repairs}): a create, join or departure was left half done",
                event="store_repaired",
                repairs=", ".join(f"{count} {kind}" for kind, count in sorted(new.items())),
                **{f"repaired_{kind}": count for kind, count in new.items()},
            )

    def rate_limit_hits(self) -> dict[str, int]:
        """
        How often each limit turned something away: "datagrams" (a member's
        messages or bytes per second; the datagram is dropped), "connections"
        (new TCP connections per address), "password_attempts" (creates and
        joins with a password, joins with an invitation, per address),
        "hashing" (password hashes already running in the whole daemon) and
        "hashing_per_host" (already running for one address); all but the
        first are refused as RATE_LIMITED.
        """
        tcp = self.tcp_factory.stats.rate_limited_by_limit()
        store: StoreStats = self.store.stats
        return {
            "datagrams": self.relay.stats.drops.counts[RateLimitedError.reason],
            "connections": tcp["connections"],
            "password_attempts": tcp["password_attempts"],
            "hashing": store.refused["hashing"],
            "hashing_per_host": tcp["hashing_per_host"],
        }

    def delivery_gauges(self) -> DeliveryGauges:
        """
        Reliable delivery's gauges, read from the rooms when asked for: the
        messages and bytes every room's history holds, and the members whose
        path is TCP.
        """
        return delivery_gauges(self.store.rooms())

    def limit_refusals(self) -> dict[str, int]:
        """
        How often a cap on what one peer may hold refused a request:
        "rooms_per_host" (SERVER_FULL) and "invitations" (ROOM_FULL).
        """
        store: StoreStats = self.store.stats
        return store.refused_by_cap()

    def stop(self) -> Deferred[None]:
        """
        Tell every member the server is stopping, close every room and
        connection, and fire once the connections are closed or the grace
        period is over, whichever is first.
        """
        for room in self.store.rooms():
            self.store.close_room(room, CloseReason.SERVER_STOPPING)
        for room in list(self._presence):
            # A store that closed a room without telling us must not leave a timer behind.
            self._close_window(room)
        connections = list(self.tcp_factory.connections)
        if not connections:
            # Nothing to flush: no grace period to wait for, not even a timer.
            return succeed(None)
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
