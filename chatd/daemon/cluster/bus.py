"""
The bus: a node's pub/sub link to the other nodes through Redis.

A node subscribes to a room's channel (C{envelope.room_channel}) while it
has local members in the room, and hands what arrives to the room's
handler: decoded envelopes, one at a time, in the order Redis delivered
them (for POSTED, the order of their sequence numbers: the room log's
script publishes them in that order). Messages are published by the log's
post (one script: numbered, kept, published; several of a room in one
POSTED_BATCH, which the bus splits into its POSTED); the bus publishes the
rest (L{ClusterBus.publish}: notices, a room's closing).

The subscriber connection is its own: a subscribed Redis connection runs no
other command, so publishing (and the log) use the node's command
connection. The connection is kept by Twisted's C{ClientService}: when
Redis goes away the bus logs one warning, says so (L{ClusterBus.connected}
and the listeners, so the node can tell its members "the server is
degraded"), reconnects by itself with a bounded, jittered backoff, makes
every current subscription again, and says it is back. A PING every few
seconds finds a Redis that stopped answering without closing the
connection.

What was published while the bus was away is not on pub/sub any more, but
messages are in the room log. With a log (C{log=}), the bus catches every
room up after it subscribes again: it reads from the log what came after
the last sequence number it handed over, hands that over in order, then
what pub/sub delivered meanwhile (held back while the log was read),
dropping the POSTED it already handed over. The same catch-up fills a gap
in the live feed, and runs when a room is subscribed with C{since=} (a
node that loaded its cache from the log, then subscribed). A room closed
while the bus was away is handed over as a L{RoomClosed} with origin ""
and reason L{MISSED_CLOSE}. Notices published while the bus was away are
lost: a node learns the member list again from the directory.

Envelopes that do not decode are dropped and counted, a handler that
raises is logged and counted; neither reaches the reactor.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.daemon.cluster.bus_stats import BusStats
from chatd.daemon.cluster.envelope import (
    Envelope,
    EnvelopeError,
    Posted,
    RoomClosed,
    decode_all,
    encode,
    origin_field,
    own_posted,
    room_channel,
)
from chatd.daemon.cluster.log import Catchup, LogState, RedisConnection, RedisUnavailableError, RoomLog, timed

Handler = Callable[[Envelope], None]
"""What a room's envelopes are handed to, one at a time, in order."""
OwnHandler = Callable[[bytes, int, int], bool]
"""
What a room's messages from this node are offered to first, undecoded
(the message's bytes, its first sequence number, how many POSTED it holds),
when they come next in order: True when it took them all (they are handed
to nobody else), False to have them decoded and handed over as any other.
"""
StateListener = Callable[[bool], None]
"""Told True when the bus is connected (subscriptions made), False when it lost Redis."""

MISSED_CLOSE = "the room was closed while this node was away from Redis"
"""The reason of the L{RoomClosed} a catch-up makes up for a room whose incarnation ended unseen."""

DEFAULT_MIN_DELAY = 0.1
"""Seconds before the first reconnection attempt; doubled at each failure, up to L{DEFAULT_MAX_DELAY}."""
DEFAULT_MAX_DELAY = 5.0
"""The longest wait between reconnection attempts: a Redis back is found within this (plus jitter)."""
DEFAULT_PING_INTERVAL = 3.0
"""Seconds between PINGs on the subscriber connection; one unanswered for as long drops the connection."""

_log = Logger()


class _Subscription:
    """A room the bus subscribes to, and where its feed stands."""

    __slots__ = (
        "catching_up",
        "channel",
        "confirmed",
        "epoch",
        "generation",
        "handler",
        "held_back",
        "last_seq",
        "own",
        "placed",
        "room",
        "waiters",
    )

    def __init__(
        self,
        room: str,
        channel: bytes,
        handler: Handler,
        epoch: str | None,
        since: int | None,
        own: OwnHandler | None = None,
    ) -> None:
        self.room = room
        self.channel = channel
        self.handler = handler
        self.own = own
        self.epoch = epoch
        """The incarnation of the last POSTED handed over (or given with C{since})."""
        self.last_seq = since
        """The last POSTED sequence number handed over; None before any is known."""
        self.catching_up = False
        self.held_back: list[Envelope] = []
        """What pub/sub delivered while the log was being read: handed over after the catch-up."""
        self.generation = 0
        """Counts catch-ups, so that one overtaken by a newer one (after a reconnection) is ignored."""
        self.placed = True
        """Whether the feed's start is known, so the SUBSCRIBE may go (see L{ClusterBus.subscribe})."""
        self.confirmed = False
        """Whether Redis confirmed the subscription on the current connection."""
        self.waiters: list[Deferred[None]] = []


class ClusterBus(Service):
    """
    The bus of one node: a C{twisted.application} service (start it with the
    node's service tree; stopping it closes the connection).
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        *,
        clock: IReactorTime,
        redis: RedisConnection | None = None,
        log: RoomLog | None = None,
        prefix: str = "chatd",
        node: str = "",
        password: str | None = None,
        stats: BusStats | None = None,
        min_delay: float = DEFAULT_MIN_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        command_timeout: float = 2.0,
    ) -> None:
        """
        @param endpoint: where Redis listens (C{HostnameEndpoint(reactor, host, port)}, say).
        @param clock: the backoff's, the PINGs' and the latencies' clock.
        @param redis: the node's command connection, for L{publish} (the log's, typically).
        @param log: the room log to catch up from; None: no catch-up (what was missed is missed).
        @param prefix: the channels' prefix, as the log's.
        @param node: this node's name: POSTED from other nodes are timed for the cross-node latency.
        @param password: Redis's AUTH password, if it has one.
        @param stats: the counters (the log's, so that one object holds both).
        """
        if not 0 < min_delay <= max_delay:
            raise ValueError(f"reconnection delays must be 0 < min <= max, not {min_delay} and {max_delay}")
        self._clock = clock
        self._redis = redis
        self._log = log
        self.prefix = prefix
        self.node = node
        self._origin = origin_field(node)
        self.stats = (log.stats if log is not None else BusStats()) if stats is None else stats
        self.command_timeout = command_timeout
        self._ping_interval = ping_interval
        self._subscriptions: dict[bytes, _Subscription] = {}
        self._listeners: list[StateListener] = []
        self._connection_waiters: list[Deferred[None]] = []
        self._protocol: Any = None
        self._ever_connected = False
        self.connected = False
        """Whether the bus has Redis: connected, and every subscription made again."""
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = clock
        self._backoff = backoffPolicy(min_delay, max_delay, 2.0, jitter=lambda: random.uniform(0, min_delay))
        self._unusable = 0
        """Connections made since the last usable one (see L{_retry_delay})."""
        self._service = ClientService(endpoint, _BusFactory(self, password), retryPolicy=self._retry_delay, clock=clock)

    # -- the service ------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802 (Twisted's name)
        super().startService()
        self._service.startService()
        if self._ping_interval > 0:
            self._pinger.start(self._ping_interval, now=False)

    def stopService(self) -> Deferred[None]:  # noqa: N802 (Twisted's name)
        super().stopService()
        if self._pinger.running:
            self._pinger.stop()
        stopped: Deferred[None] = self._service.stopService()
        return stopped

    # -- the node's side ----------------------------------------------------------------

    def add_listener(self, listener: StateListener) -> None:
        """Tell C{listener} each time the bus loses Redis (False) and has it again (True)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        self._listeners.remove(listener)

    def when_connected(self, timeout: float | None = None) -> Deferred[None]:
        """
        Fires once the bus is connected (now, if it is); with C{timeout}, fails
        with L{RedisUnavailableError} after that many seconds (what a node
        starting up waits before it gives up with one clear line).
        """
        if self.connected:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._connection_waiters.append(waiting)
        if timeout is None:
            return waiting

        def gave_up(failure: Failure) -> None:
            if waiting in self._connection_waiters:
                self._connection_waiters.remove(waiting)
            failure.trap("twisted.internet.defer.TimeoutError")
            raise RedisUnavailableError(f"Redis did not answer the bus within {timeout:g} s") from None

        return waiting.addTimeout(timeout, self._clock).addErrback(gave_up)

    def subscribe(
        self,
        room: str,
        handler: Handler,
        *,
        epoch: str | None = None,
        since: int | None = None,
        own: OwnHandler | None = None,
    ) -> Deferred[None]:
        """
        Hand C{room}'s envelopes to C{handler} from now on (offering what
        this node posted to C{own} first, when given). Fires once Redis
        confirmed the subscription (on this connection, or on the next one
        when Redis is away), or once it is unsubscribed, if that comes first.
        With C{epoch} and C{since} (the cache's latest, L{ClusterHistory.load}),
        the messages of that incarnation after C{since}
        are read from the log and handed over first, so none falls between
        the node's read of the log and its subscription.

        Without them, and with a log, "now" is where the log stands when this
        is called: it is read before the SUBSCRIBE, and what is posted between
        the two is caught up once Redis confirmed it. Without a log, "now" is
        the confirmation.
        """
        if since is not None and epoch is None:
            raise ValueError("subscribing since a sequence number needs the incarnation it belongs to")
        channel = room_channel(self.prefix, room)
        if channel in self._subscriptions:
            raise ValueError(f"room {room!r} is subscribed already")
        subscription = _Subscription(room, channel, handler, epoch, since, own)
        self._subscriptions[channel] = subscription
        confirmed: Deferred[None] = Deferred()
        subscription.waiters.append(confirmed)
        if since is None and self._log is not None:
            subscription.placed = False
            self._log.latest(room).addBoth(self._place, subscription)
        elif self._protocol is not None:
            self._send_subscribe(self._protocol, subscription).addErrback(self._subscribe_failed, subscription)
        return confirmed

    def _place(self, state: LogState | Failure | None, subscription: _Subscription) -> None:
        """Where a subscription's feed starts (the log's latest before it), then the SUBSCRIBE."""
        if self._subscriptions.get(subscription.channel) is not subscription:
            return
        if isinstance(state, Failure):
            # Redis is away: the feed starts with what the subscription, made once it is back, delivers.
            _log.warn(
                "could not read room {room}'s log to subscribe: {error}", room=subscription.room, error=state.value
            )
        elif state is not None:
            subscription.epoch, subscription.last_seq = state.epoch, state.latest
        else:
            subscription.last_seq = 0
        subscription.placed = True
        if self._protocol is not None:
            self._send_subscribe(self._protocol, subscription).addErrback(self._subscribe_failed, subscription)

    def unsubscribe(self, room: str) -> Deferred[None]:
        """Stop handing C{room}'s envelopes over (at once); fires when Redis has confirmed, or at once if it is away."""
        channel = room_channel(self.prefix, room)
        subscription = self._subscriptions.pop(channel, None)
        if subscription is None:
            return succeed(None)
        subscription.generation += 1
        waiters, subscription.waiters = subscription.waiters, []
        for waiting in waiters:
            # Its subscribe's Deferred: the subscription is over before it was confirmed.
            waiting.callback(None)
        if self._protocol is None:
            return succeed(None)
        reply = timed(self._protocol.unsubscribe([channel]), self._clock, self.stats, self.command_timeout)
        return reply.addCallback(lambda _: None)

    def subscribed(self) -> list[str]:
        """The rooms subscribed to, in the order they were."""
        return [subscription.room for subscription in self._subscriptions.values()]

    def publish(self, room: str, envelope: Envelope) -> Deferred[int]:
        """
        Publish C{envelope} on C{room}'s channel, through the command
        connection: how many subscribers (nodes) got it. Messages go through
        L{RoomLog.post} instead, which numbers and keeps them too.
        """
        if self._redis is None:
            raise ValueError("this bus was given no command connection to publish with")
        reply = timed(
            self._redis.publish(room_channel(self.prefix, room), encode(envelope)),
            self._clock,
            self.stats,
            self.command_timeout,
        )

        def published(receivers: int) -> int:
            self.stats.publishes += 1
            return int(receivers)

        return reply.addCallback(published)

    # -- the connection -------------------------------------------------------------------

    def _connection_ready(self, protocol: Any) -> None:
        """
        A new connection (the first, or after a loss) is usable: make every
        subscription on it, then say the bus is connected. If that fails, the
        connection is dropped and ClientService tries again.

        Not ClientService's prepareConnection: a connection lost while being
        prepared has no transition in its state machine.
        """
        self._protocol = protocol
        made = [self._send_subscribe(protocol, sub) for sub in list(self._subscriptions.values()) if sub.placed]

        def failed(failure: Failure) -> None:
            if protocol is self._protocol:
                # Info: the outage was warned of once already, and this repeats at each attempt.
                _log.info("the bus could not subscribe again: {error}", error=failure.value)
                protocol.transport.abortConnection()

        gatherResults(made, consumeErrors=True).addCallbacks(lambda _: self._now_connected(protocol), failed)

    def _retry_delay(self, attempt: int) -> float:
        """
        ClientService's delay before attempt C{attempt}: it counts failures to
        connect only, so connections that were made but never became usable
        (refused, dropped at once) are counted here, or they would be retried
        without backing off.
        """
        return self._backoff(max(attempt, self._unusable))

    def _now_connected(self, protocol: Any) -> None:
        if protocol is not self._protocol:
            return
        self._unusable = 0
        if self._ever_connected:
            self.stats.reconnects += 1
            _log.info("Redis is back: the bus subscribed to {rooms} rooms again", rooms=len(self._subscriptions))
        self._ever_connected = True
        self.connected = True
        waiters, self._connection_waiters = self._connection_waiters, []
        for waiting in waiters:
            waiting.callback(None)
        self._tell(True)

    def _send_subscribe(self, protocol: Any, subscription: _Subscription) -> Deferred[None]:
        if self._log is not None and subscription.last_seq is not None:
            # Until the log has been read, what pub/sub delivers is held back (see the module).
            subscription.catching_up = True
        reply = timed(protocol.subscribe([subscription.channel]), self._clock, self.stats, self.command_timeout)

        def made(_: object) -> None:
            if self._subscriptions.get(subscription.channel) is not subscription or protocol is not self._protocol:
                return
            subscription.confirmed = True
            waiters, subscription.waiters = subscription.waiters, []
            for waiting in waiters:
                waiting.callback(None)
            self._catch_up(subscription)

        return reply.addCallback(made)

    def _subscribe_failed(self, failure: Failure, subscription: _Subscription) -> None:
        # The connection is going (a reconnection subscribes again) or Redis refused: either way, logged.
        _log.warn(
            "could not subscribe to room {room}: {error}", room=subscription.room, error=failure.getErrorMessage()
        )

    def _connection_lost(self, protocol: Any, reason: Failure) -> None:
        """The subscriber connection closed: tell the node once, and let ClientService reconnect."""
        if protocol is not self._protocol:
            return
        self._protocol = None
        for subscription in self._subscriptions.values():
            subscription.confirmed = False
        if not self.connected:
            return
        self.connected = False
        self.stats.disconnects += 1
        if self.running:
            _log.warn(
                "Redis lost ({reason}): the bus reconnects by itself and catches its rooms up from the log",
                reason=reason.getErrorMessage(),
            )
        self._tell(False)

    def _tell(self, connected: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(connected)
            except Exception:
                _log.failure("a bus listener failed")

    def _ping(self) -> None:
        """A PING on the subscriber connection: a Redis that does not answer within the interval is dropped."""
        protocol = self._protocol
        if protocol is None or not self.connected:
            return

        def unanswered(failure: Failure) -> None:
            if protocol is self._protocol and protocol.transport is not None:
                # Info: the loss that follows is the one warning of the outage.
                _log.info("Redis did not answer the bus's PING: {error}", error=failure.getErrorMessage())
                protocol.transport.abortConnection()

        timed(protocol.execute_command("PING"), self._clock, self.stats, self._ping_interval).addErrback(unanswered)

    # -- what arrives -------------------------------------------------------------------------

    def _received(self, channel: bytes, data: bytes) -> None:
        """
        A message on a channel: decoded (a POSTED_BATCH into its POSTED, in
        order), and each envelope handed over (or held back while its room
        catches up), as if each had come on its own. This node's own
        messages, next in order, are offered undecoded to the room's C{own}
        first (L{_took_own}).
        """
        subscription = self._subscriptions.get(channel)
        if subscription is not None and subscription.own is not None and self._took_own(subscription, data):
            return
        try:
            envelopes = decode_all(data)
        except EnvelopeError as error:
            self.stats.decode_errors += 1
            if self.stats.decode_errors == 1 or self.stats.decode_errors % 1000 == 0:
                _log.warn(
                    "dropped what is not an envelope on {channel!r} ({count} so far): {error}",
                    channel=channel,
                    count=self.stats.decode_errors,
                    error=error,
                )
            return
        self.stats.received += len(envelopes)
        first = envelopes[0]
        if isinstance(first, Posted) and first.origin != self.node:
            latency = self._clock.seconds() - first.time_ms / 1000
            self.stats.relay_latency.observe(max(latency, 0.0))
        if subscription is None:
            return
        for envelope in envelopes:
            if self._subscriptions.get(channel) is not subscription:
                return
            if subscription.catching_up:
                subscription.held_back.append(envelope)
            else:
                self._accept(subscription, envelope, may_catch_up=True)

    def _took_own(self, subscription: _Subscription, data: bytes) -> bool:
        """
        Whether the room's C{own} took C{data}: this node's POSTED (or batch
        of them) that come next in the room's order, the feed not catching
        up. Anything else, and what C{own} declines, is decoded as usual.
        """
        if subscription.catching_up:
            return False
        head = own_posted(data, self._origin)
        if head is None:
            return False
        epoch, first, count = head
        last = subscription.last_seq
        if epoch != subscription.epoch or last is None or first != last + 1:
            return False
        own = subscription.own
        assert own is not None
        try:
            if not own(data, first, count):
                return False
        except Exception:
            # As a handler's failure: logged, counted, and the messages dropped (not handed over twice).
            self.stats.handler_errors += 1
            _log.failure("the handler of room {room} failed", room=subscription.room)
        subscription.last_seq = first + count - 1
        self.stats.received += count
        self.stats.own_recognised += count
        return True

    def _accept(self, subscription: _Subscription, envelope: Envelope, *, may_catch_up: bool) -> None:
        """Hand C{envelope} over unless it is a POSTED handed over already; a gap in the POSTED starts a catch-up."""
        if isinstance(envelope, Posted):
            last = subscription.last_seq
            if envelope.epoch == subscription.epoch and last is not None:
                if envelope.seq <= last:
                    self.stats.duplicates += 1
                    return
                if envelope.seq > last + 1 and may_catch_up and self._log is not None:
                    subscription.held_back.append(envelope)
                    self._catch_up(subscription)
                    return
            subscription.epoch, subscription.last_seq = envelope.epoch, envelope.seq
        self._deliver(subscription, envelope)

    def _deliver(self, subscription: _Subscription, envelope: Envelope) -> None:
        try:
            subscription.handler(envelope)
        except Exception:
            self.stats.handler_errors += 1
            _log.failure("the handler of room {room} failed", room=subscription.room)

    # -- catching up from the log ----------------------------------------------------------------

    def _catch_up(self, subscription: _Subscription) -> None:
        """
        Read from the log what the room's handler has not had, hand it over,
        then what was held back. Without a sequence number to start from (the
        log could not be read when the room was subscribed, and nothing came
        since), there is nothing to read: the feed starts with the subscription.
        """
        log = self._log
        if log is None:
            return
        if subscription.last_seq is None:
            self._release(subscription)
            return
        subscription.catching_up = True
        subscription.generation += 1
        generation = subscription.generation

        def current() -> bool:
            return self._subscriptions.get(subscription.channel) is subscription and (
                subscription.generation == generation
            )

        def caught_up(read: Catchup | None) -> None:
            if current():
                self._caught_up(subscription, read)

        def failed(failure: Failure) -> None:
            if not current():
                return
            self.stats.resync_failures += 1
            _log.warn(
                "could not catch room {room} up from the log: {error}",
                room=subscription.room,
                error=failure.getErrorMessage(),
            )
            self._release(subscription)

        reading = log.posted_after(subscription.room, subscription.epoch, subscription.last_seq)
        reading.addCallbacks(caught_up, failed)

    def _caught_up(self, subscription: _Subscription, read: Catchup | None) -> None:
        if read is None or read.state.epoch != subscription.epoch:
            # The incarnation the handler knew is over, and nobody told this node.
            if subscription.epoch is not None:
                self._deliver(subscription, RoomClosed(subscription.room, subscription.epoch, "", MISSED_CLOSE))
            subscription.epoch, subscription.last_seq = (None, 0) if read is None else (read.state.epoch, 0)
        self._release(subscription, () if read is None else read.posted)

    def _release(self, subscription: _Subscription, missed: Sequence[Posted] = ()) -> None:
        """
        Hand over what the log gave (C{missed}), then what pub/sub delivered
        meanwhile (held back), each message once, in order.

        Pub/sub delivers every message published after the SUBSCRIBE was
        confirmed, without a gap: from the first one held back, F, onwards.
        The log is needed only for what came before F, so only that is taken
        from it: the log may have been read late (its connection busy) and
        have forgotten, past its ring, messages that pub/sub still delivers.
        Without any held back, everything the log gave is taken.
        """
        subscription.catching_up = False
        held, subscription.held_back = subscription.held_back, []
        first_live = next(
            (
                envelope.seq
                for envelope in held
                if isinstance(envelope, Posted) and envelope.epoch == subscription.epoch
            ),
            None,
        )
        for posted in missed:
            if self._subscriptions.get(subscription.channel) is not subscription:
                return
            if first_live is not None and posted.seq >= first_live:
                break
            if posted.seq > (subscription.last_seq or 0):
                self.stats.resynced += 1
                subscription.epoch, subscription.last_seq = posted.epoch, posted.seq
                self._deliver(subscription, posted)
        for envelope in held:
            if self._subscriptions.get(subscription.channel) is not subscription:
                return
            self._accept(subscription, envelope, may_catch_up=False)


class _BusFactory(Factory):
    """Builds the bus's subscriber protocol: raw bytes (no charset, no number conversion), Redis's password."""

    isLazy = False  # noqa: N815 (txredisapi's name, read by its protocol when AUTH fails)

    def __init__(self, bus: ClusterBus, password: str | None) -> None:
        self._bus = bus
        self._password = password

    def buildProtocol(self, addr: IAddress | None) -> Protocol:  # noqa: N802 (Twisted's name)
        protocol: Protocol = _protocol_class()(charset=None, password=self._password, convertNumbers=False)
        protocol.factory = self
        setattr(protocol, "bus", self._bus)  # noqa: B010 (an attribute of the class made at run time)
        # txredisapi's line reader calls the global reactor's callLater; the bus's clock instead.
        setattr(protocol, "callLater", self._bus._clock.callLater)  # noqa: B010
        self._bus._unusable += 1
        protocol.whenConnected().addCallback(self._bus._connection_ready)  # type: ignore[attr-defined]
        return protocol

    def stopTrying(self) -> None:  # noqa: N802 (txredisapi's name: AUTH or SELECT failed)
        _log.error("Redis refused the bus's authentication; it tries again with backoff")

    def connectionError(self, why: str) -> None:  # noqa: N802 (txredisapi's name)
        _log.error("the bus's connection to Redis failed: {why}", why=why)


_MESSAGE_HEAD = b"*3\r\n$7\r\nmessage\r\n$"
"""How a pub/sub message starts on the wire (RESP2): an array of three, the first the bulk string "message"."""


@cache
def _protocol_class() -> Any:
    """
    txredisapi's SubscriberProtocol with the bus's hooks. Made on first use:
    importing txredisapi installs the global reactor (it reads it at import
    time), which no chatd module may do on import.
    """
    import txredisapi

    class BusProtocol(txredisapi.SubscriberProtocol):
        bus: ClusterBus
        _rest: bytes | None = None

        def dataReceived(self, data: bytes, unpause: bool = False) -> None:  # noqa: N802
            # txredisapi hands the bytes after each bulk string back to itself
            # through callLater(0) (setLineMode): a reactor turn per string,
            # three per pub/sub message, most of what a message cost the node.
            # Here they are read on at once, in a loop (no recursion, however
            # many messages one read brings); and the pub/sub messages that
            # start where txredisapi's parser is between replies are read by
            # L{_messages}, without its line-by-line state machine.
            if self._between_replies():
                data = self._messages(data)
                if not data:
                    return
            super().dataReceived(data, unpause)
            while self._rest is not None:
                rest, self._rest = self._rest, None
                if self._between_replies():
                    rest = self._messages(rest)
                    if not rest:
                        continue
                super().dataReceived(rest)

        def _between_replies(self) -> bool:
            """Whether txredisapi's parser holds nothing of a reply (so the next bytes start one)."""
            multi_bulk = self.multi_bulk
            return (
                self.line_mode == 1
                and not self.bulk_length
                and multi_bulk.pending is None
                and multi_bulk.parent is None
                and not getattr(self, "_LineReceiver__buffer", b"")
            )

        def _messages(self, data: bytes) -> bytes:
            """
            Hand over the whole pub/sub messages (C{*3 $7 message $n channel
            $m data}) that C{data} starts with; the bytes from the first
            that is anything else, or incomplete, are returned for txredisapi.
            """
            at, size, head = 0, len(data), _MESSAGE_HEAD
            while data.startswith(head, at):
                channel_start = data.find(b"\r\n", at + len(head)) + 2
                if channel_start < 2:
                    break
                channel_end = channel_start + int(data[at + len(head) : channel_start - 2])
                if data[channel_end : channel_end + 3] != b"\r\n$":
                    break
                message_start = data.find(b"\r\n", channel_end + 3) + 2
                if message_start < 2:
                    break
                message_end = message_start + int(data[channel_end + 3 : message_start - 2])
                if message_end + 2 > size:
                    break
                at = message_end + 2
                self.messageReceived(None, data[channel_start:channel_end], data[message_start:message_end])
            return data[at:] if at else data

        def setLineMode(self, extra: bytes = b"") -> None:  # noqa: N802
            self.line_mode = 1
            if extra:
                self._rest = extra

        def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:  # noqa: N802
            self.bus._received(channel, message)

        def connectionLost(self, why: Failure) -> None:  # noqa: N802
            super().connectionLost(why)
            self.bus._connection_lost(self, why)

    return BusProtocol
