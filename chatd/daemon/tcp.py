"""
The TCP side: the room protocol, one RoomProtocol per connection.

The 32-byte header is the framing (chatd.protocol.wire). A connection creates or joins
one room; the dialect is detected from its first request and every answer
uses that request's size encoding and payload form. For the seed and native
dialects the open connection is the member's presence; the model dialect
sends its UDP port as 2 raw bytes and the server then closes the connection,
as that dialect expects.

Each connection is a streaming producer on its transport (Twisted's producer
API, both ways): the transport pauses it when its send buffer is full, and it
pauses the transport's reading while a request is in flight or its answers
cannot be sent. A peer that does not read is aborted once
Settings.send_queue bytes wait for it, or once it has not read for
Settings.send_queue_timeout seconds; so is a close that does not finish in
that time. The frames of one connection are handled in a loop, never by
recursion, however many arrive in one chunk.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, TypeVar

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from chatd.daemon.interfaces import IMemberConnection, IRoomStore
from chatd.daemon.logs import CountedWarnings
from chatd.daemon.ratelimit import KeyedLimiter, is_loopback
from chatd.daemon.rooms import LeaveReason, Member
from chatd.daemon.settings import Settings
from chatd.daemon.stats import AbortReason, TcpStats
from chatd.protocol.errors import (
    HashingBusyError,
    MalformedFrameError,
    NotPermittedError,
    ProtocolError,
    RateLimitedError,
    RequestTimeoutError,
    ServerFullError,
    Status,
    UnknownOperationError,
)
from chatd.protocol.payloads import (
    Dialect,
    Notice,
    acknowledge_payload,
    entered_payload,
    error_payload,
    invite_payload,
    legacy_secret_payload,
    loggable_payload,
    members_payload,
    parse_port,
    read_room_request,
    rekey_payload,
)
from chatd.protocol.wire import (
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    Operation,
    PortBytes,
    SizeEncoding,
    State,
    encode_frame,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import ITransport


_T = TypeVar("_T")


def _host_of(address: IAddress) -> str:
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host
    return str(address)


@implementer(IMemberConnection, IPushProducer)
class RoomProtocol(Protocol):
    _log = Logger()

    def __init__(self, factory: RoomFactory) -> None:
        self._factory = factory
        self._store = factory.store
        self._clock = factory.clock
        self._settings = factory.settings
        self._decoder = FrameDecoder(self._settings.max_payload)
        self.member: Member | None = None
        self.dialect: Dialect | None = None
        self.peer_host = ""
        self._encoding = SizeEncoding.BINARY
        self._busy = False
        """A create or join is in flight; later frames wait for its answer."""
        self._processing = False
        """
        L{_process}'s loop is running: a create or join answered at once,
        inside it, lets the loop go on instead of starting another (one
        stack level per pipelined request would end in RecursionError).
        """
        self._write_paused = False
        """The transport's send buffer is full: it has paused us (IPushProducer)."""
        self._reading_paused = False
        """We have paused the transport's reading (busy, or the peer does not read)."""
        self._registered = False
        """We are the transport's producer (until a close unregisters us)."""
        self.queued_bytes = 0
        """Bytes written since the transport paused us: what the peer has not taken."""
        self._closing = False
        self._aborted = False
        self._lost = False
        self._handshake_timer: IDelayedCall | None = None
        self._frame_timer: IDelayedCall | None = None
        self._send_queue_timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._close_waiters: list[Deferred[None]] = []

    # -- connection life ----------------------------------------------------

    @property
    def secure(self) -> bool:
        """Whether this connection runs over TLS (the daemon's TLS port)."""
        return ISSLTransport.providedBy(self.transport)

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer_host = _host_of(self.transport.getPeer())
        self._factory.connection_opened(self)
        consumer = IConsumer(self.transport, None)
        if consumer is not None:
            # Streaming: the transport tells us when its buffer is full and
            # when it has drained (pauseProducing, resumeProducing).
            consumer.registerProducer(self, True)
            self._registered = True
        self._handshake_timer = self._clock.callLater(self._settings.handshake_timeout, self._handshake_expired)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._closing = True
        self._cancel_timers()
        self._factory.connection_closed(self)
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        member = self.member
        if member is None:
            return
        member.connection = None
        if member.dialect is Dialect.MODEL and member.address is not None:
            # The model dialect closes TCP after registering; it stays a member.
            return
        self._store.leave(member, LeaveReason.LEFT)

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._decoder.feed(data)
        self._process()

    def _process(self) -> None:
        """
        Handle every whole frame buffered, in order, until one must wait: a
        create or join in flight, a peer that does not read, or a close.
        """
        if self._processing:
            # Called back from inside the loop below (an answer that came at
            # once): the loop goes on by itself.
            return
        self._processing = True
        try:
            self._process_frames()
        finally:
            self._processing = False
        self._update_reading()
        self._watch_partial_frame()

    def _process_frames(self) -> None:
        while not self._busy and not self._closing and not self._write_paused:
            try:
                item = self._decoder.next()
            except ProtocolError as error:
                self._refuse(error, self._decoder.pending_operation)
                break
            if item is None:
                break
            try:
                if isinstance(item, PortBytes):
                    self._register_port(item.port)
                else:
                    self._handle(item)
            except ProtocolError as error:
                if isinstance(item, PortBytes):
                    self._refuse(error, Operation.UNKNOWN)
                else:
                    self._refuse(error, item.operation, item.room)
            except Exception:
                # A bug of ours: this peer is told and dropped, the others go on.
                self._log.failure("while handling a request from {peer}", peer=self.peer_host)
                self._acknowledge(Operation.UNKNOWN, Status.INTERNAL_ERROR, "", "internal error")
                self._close()

    # -- requests -----------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        self._encoding = frame.encoding
        self._log_frame("received", frame)
        if frame.state is not State.REQUEST:
            raise UnknownOperationError(f"state {frame.state.name} is not a request")
        if frame.operation in (Operation.CREATE, Operation.JOIN):
            self._enter(frame)
        elif frame.operation is Operation.REGISTER_UDP:
            member = self._member_for(frame)
            if member.channel is not None:
                # Its address is learned only from an authenticated datagram.
                raise NotPermittedError("native clients register with their first sealed datagram")
            self._store.bind_address(member, (self.peer_host, parse_port(frame.payload)))
            self._acknowledge(frame.operation, Status.SUCCESS, frame.room)
        elif frame.operation is Operation.REKEY:
            member = self._member_for(frame)
            channel = self._store.rekey(member)
            self._acknowledge(frame.operation, Status.SUCCESS, frame.room)
            payload = rekey_payload(channel.key, channel.key_id)
            self._send(Frame(Operation.REKEY, State.COMPLETE, member.room.name, payload, self._encoding))
        elif frame.operation is Operation.MEMBERS:
            member = self._member_for(frame)
            if member.dialect is not Dialect.NATIVE:
                # Legacy clients read only the notice texts; they have no use for it.
                raise NotPermittedError("only native clients can ask for the member list")
            room = member.room
            self._acknowledge(frame.operation, Status.SUCCESS, frame.room)
            payload = members_payload(room.names(), room.host.name if room.host is not None else None)
            self._send(Frame(Operation.MEMBERS, State.COMPLETE, room.name, payload, self._encoding))
        elif frame.operation is Operation.INVITE:
            member = self._member_for(frame)
            if not member.is_host:
                raise NotPermittedError("only the host can invite")
            invite = self._store.mint_invitation(member)
            self._acknowledge(frame.operation, Status.SUCCESS, frame.room)
            payload = invite_payload(invite, self._settings.invite_ttl, member.dialect)
            self._send(Frame(Operation.INVITE, State.COMPLETE, member.room.name, payload, self._encoding))
            self._log.info("{user} invited someone to {room}", event="invited", user=member.name, room=member.room.name)
        else:
            raise UnknownOperationError(f"operation {frame.operation.name} is not a request")

    def _member_for(self, frame: Frame) -> Member:
        if self.member is None:
            raise NotPermittedError("create or join a room first")
        if frame.room and frame.room != self.member.room.name:
            raise NotPermittedError("that is not your room")
        self._store.touch(self.member)
        return self.member

    def _enter(self, frame: Frame) -> None:
        if self.member is not None:
            raise NotPermittedError("this connection is already in a room")
        # Parsed once; the dialect first, so that even a refusal is worded
        # for this client.
        parsed = read_room_request(frame.payload, self._settings.max_user_name)
        if parsed.native:
            self.dialect = Dialect.NATIVE
        elif frame.encoding is SizeEncoding.ASCII:
            self.dialect = Dialect.SEED
        else:
            self.dialect = Dialect.MODEL
        if self.dialect is not Dialect.NATIVE and not self._settings.legacy:
            raise NotPermittedError("this server serves native clients only: legacy dialects are turned off")
        request = parsed.request()
        if frame.operation is Operation.CREATE and request.native_only and not self.secure:
            raise NotPermittedError("a native-only room can only be created over TLS")
        # A password costs an scrypt run, to set it (create) or to check it
        # (join): from one address, few at once and few a minute.
        hashing = bool(request.password)
        if hashing and not self._factory.may_hash(self.peer_host):
            self._factory.stats.rate_limited["hashing_per_host"] += 1
            raise HashingBusyError(f"{self.peer_host} already has a password request in progress; try again")
        attempt = hashing or (frame.operation is Operation.JOIN and bool(request.invite))
        # Charged before the check, so that parallel guesses are counted too.
        if attempt and not self._factory.password_attempts.take(self.peer_host):
            self._factory.stats.rate_limited["password_attempts"] += 1
            wait = self._factory.password_attempts.wait_time(self.peer_host)
            raise RateLimitedError(f"too many password attempts from {self.peer_host}; try again in {wait:.0f} s")
        if hashing:
            self._factory.hashing_started(self.peer_host)
        if frame.operation is Operation.CREATE:
            entered = self._store.create_room(frame.room, request, self.dialect, origin=self.peer_host)
        else:
            entered = self._store.join_room(frame.room, request, self.dialect)
        if hashing:
            # However it ends, and even if this connection has gone: the
            # hash ran until now.
            entered.addBoth(self._factory.hashing_finished, self.peer_host)
        self._busy = True
        entered.addCallbacks(self._entered, self._not_entered, errbackArgs=(frame.operation, frame.room))
        entered.addErrback(lambda failure: self._log.failure("while answering a create or join", failure))

    def _entered(self, member: Member) -> None:
        self._busy = False
        if self._closing:
            # Closed while the request was in flight (handshake timeout): the
            # peer is going, so it never becomes a member.
            self._store.leave(member, LeaveReason.LEFT)
            return
        self.member = member
        if member.is_host:
            self._factory.stats.rooms_created += 1
        else:
            self._factory.stats.joins += 1
        # A model client is not done until its port arrives: its handshake
        # timer runs on.
        if member.dialect is not Dialect.MODEL:
            self._cancel_timer(self._handshake_timer)
            self._handshake_timer = None
        room = member.room
        operation = Operation.CREATE if member.is_host else Operation.JOIN
        self._acknowledge(operation, Status.SUCCESS, room.name)
        self._send(Frame(operation, State.COMPLETE, room.name, self._complete_payload(member), self._encoding))
        if member.dialect is Dialect.MODEL:
            self._decoder.expect_port()
        else:
            member.connection = self
        self._log.info(
            "{user} {event} {room} ({dialect} dialect)",
            event="created" if member.is_host else "joined",
            user=member.name,
            room=room.name,
            dialect=member.dialect.value,
            peer=self.peer_host,
        )
        self._process()

    def _complete_payload(self, member: Member) -> bytes:
        if member.dialect is not Dialect.NATIVE:
            return legacy_secret_payload(member.token)
        assert member.channel is not None
        return entered_payload(
            token=member.token,
            key=member.channel.key,
            key_id=member.channel.key_id,
            room=member.room.name,
            user=member.name,
            host=member.is_host,
            members=member.room.names(),
            idle_timeout=self._settings.idle_timeout,
            keepalive_interval=self._settings.keepalive_interval,
        )

    def _not_entered(self, failure: Failure, operation: Operation, room: str) -> None:
        self._busy = False
        if self._lost:
            return
        error = failure.value
        if isinstance(error, ProtocolError):
            self._log.info(
                "refused {operation} from {peer}: {reason}",
                event="refused",
                operation=operation.name.lower(),
                peer=self.peer_host,
                reason=error.reason,
            )
            self._refuse(error, operation, room)
        else:
            self._log.failure("while creating or joining", failure)
            self._acknowledge(operation, Status.INTERNAL_ERROR, "", "internal error")
            self._close()
        self._process()

    def _register_port(self, port: int) -> None:
        member = self.member
        assert member is not None
        if port == 0:
            raise MalformedFrameError("UDP port 0")
        self._store.bind_address(member, (self.peer_host, port))
        self._log.info(
            "{user} registered UDP port {port}", event="registered", user=member.name, port=port, peer=self.peer_host
        )
        # The model handshake is over: its clients wait for us to close.
        self._close()

    # -- answers ------------------------------------------------------------

    def _refuse(self, error: ProtocolError, operation: Operation, room: str = "") -> None:
        # Every refusal counted, as dropped datagrams are: a peer sending
        # garbage frames shows in the metrics, not only in the log.
        self._factory.stats.refused_requests[error.reason] += 1
        if self._decoder.encoding_hint is not None and self.dialect is None:
            self._encoding = self._decoder.encoding_hint
        payload = error_payload(error, self.dialect or Dialect.MODEL)
        self._send(Frame(operation, State.ACKNOWLEDGE, room, payload, self._encoding))
        if error.closes:
            self._log.info(
                "closing connection from {peer}: {reason}", event="closing", peer=self.peer_host, reason=error.reason
            )
            self._close()

    def _acknowledge(self, operation: Operation, status: Status, room: str, message: str = "") -> None:
        payload = acknowledge_payload(status, self.dialect or Dialect.MODEL, message)
        self._send(Frame(operation, State.ACKNOWLEDGE, room, payload, self._encoding))

    def _send(self, frame: Frame, encoded: bytes | None = None) -> None:
        if self._lost or self._aborted:
            return
        assert self.transport is not None
        self._log_frame("sent", frame)
        data = encode_frame(frame) if encoded is None else encoded
        if self._write_paused:
            # The transport buffers it (beyond its own buffer size) for a
            # peer that is not reading: bounded here.
            self.queued_bytes += len(data)
            if self.queued_bytes > self._settings.send_queue:
                self._abort_for(AbortReason.SEND_QUEUE)
                return
        self.transport.write(data)

    def _log_frame(self, direction: str, frame: Frame) -> None:
        if not self._settings.log_frames:
            return
        self._log.debug(
            "{direction} frame: operation={operation} state={state} room={room!r}"
            " payload_size={payload_size} ({encoding}) payload={payload} header={header}",
            direction=direction,
            peer=self.peer_host,
            operation=frame.operation.name,
            state=frame.state.name,
            room=frame.room,
            payload_size=len(frame.payload),
            encoding=frame.encoding.value,
            payload=loggable_payload(frame.payload, secret=frame.state is State.COMPLETE),
            header=encode_frame(frame)[:HEADER_SIZE].hex(),
        )

    # -- IMemberConnection --------------------------------------------------

    def send_notice(self, notice: Notice) -> None:
        member = self.member
        if member is None:
            return
        key = (member.name == notice.user, member.dialect, self._encoding)
        framed = notice.frames.get(key)
        if framed is None:
            payload = notice.encode_for(member.name, member.dialect)
            frame = Frame(Operation.NOTICE, State.COMPLETE, notice.room, payload, self._encoding)
            framed = notice.frames[key] = (frame, encode_frame(frame))
        self._send(*framed)

    def close(self) -> None:
        self._close()

    def abort(self) -> None:
        """Close at once, dropping what was not yet sent."""
        if self._lost or self._aborted:
            return
        self._aborted = self._closing = True
        self._cancel_timers()
        transport = self.transport
        assert transport is not None
        # TCP transports can abort, and TLS ones too: the TLS port's
        # transports are TCP ones that declare ISSLTransport, which extends
        # ITCPTransport (a TLSMemoryBIOProtocol declares what it wraps).
        if ITCPTransport.providedBy(transport):
            ITCPTransport(transport).abortConnection()
        else:
            # A transport that cannot abort (none of Twisted's streams).
            transport.loseConnection()

    def _abort_for(self, reason: str) -> None:
        """Abort because a limit was hit: logged and counted by C{reason} (an L{AbortReason})."""
        if self._lost or self._aborted:
            return
        self._factory.stats.aborted[reason] += 1
        self._log.info(
            "aborting connection from {peer}: {reason}",
            event="aborted",
            peer=self.peer_host,
            reason=reason,
            queued_bytes=self.queued_bytes,
        )
        self.abort()

    def when_closed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self._lost:
            waiter.callback(None)
        else:
            self._close_waiters.append(waiter)
        return waiter

    def _close(self) -> None:
        """Close once what was sent is flushed; abort if that takes too long."""
        if self._closing:
            return
        self._closing = True
        self._cancel_timers()
        assert self.transport is not None
        if self._registered:
            # A transport with a producer registered does not finish closing
            # (TCP when the producer is paused, TLS at all): nothing more is
            # produced anyway.
            self._registered = False
            IConsumer(self.transport).unregisterProducer()
        self._close_timer = self._clock.callLater(
            self._settings.send_queue_timeout, self._abort_for, AbortReason.CLOSE_TIMEOUT
        )
        self.transport.loseConnection()

    # -- IPushProducer: the transport's send buffer -------------------------

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer's spelling
        """The transport's send buffer is full: the peer is not reading fast enough."""
        if self._write_paused or self._closing:
            return
        self._write_paused = True
        self.queued_bytes = 0
        self._send_queue_timer = self._clock.callLater(
            self._settings.send_queue_timeout, self._abort_for, AbortReason.SEND_QUEUE_TIMEOUT
        )
        self._update_reading()
        # A frame waiting here waits for the peer, not for its own bytes.
        self._watch_partial_frame()

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer's spelling
        """The transport has sent what it held: read and answer again."""
        if not self._write_paused:
            return
        self._write_paused = False
        self.queued_bytes = 0
        self._cancel_timer(self._send_queue_timer)
        self._send_queue_timer = None
        if not self._closing:
            self._process()

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer's spelling
        """The connection is going (connectionLost follows): nothing more is sent."""
        self._closing = True
        self._registered = False
        self._cancel_timers()

    def _update_reading(self) -> None:
        """Read from the peer only while its requests can be answered."""
        wanted = self._busy or self._write_paused
        # The transport produces what the peer sends (TCP and TLS do).
        producer = IPushProducer(self.transport, None)
        # Once closing, the transport reads no more by itself: resuming an
        # aborted one would only wake the reactor for nothing.
        if wanted == self._reading_paused or self._closing or producer is None:
            return
        self._reading_paused = wanted
        if wanted:
            producer.pauseProducing()
        else:
            producer.resumeProducing()

    # -- timers -------------------------------------------------------------

    def _watch_partial_frame(self) -> None:
        """
        Start the frame timer when a frame begins; it is not reset by more
        bytes, so a peer dribbling one byte at a time still runs out of time.
        """
        waiting = self._decoder.buffered > 0 and not self._busy and not self._closing and not self._write_paused
        if waiting and self._frame_timer is None:
            self._frame_timer = self._clock.callLater(self._settings.frame_timeout, self._frame_expired)
        elif not waiting and self._frame_timer is not None:
            self._cancel_timer(self._frame_timer)
            self._frame_timer = None

    def _frame_expired(self) -> None:
        self._frame_timer = None
        error = RequestTimeoutError(f"a frame was not finished within {self._settings.frame_timeout:g} s")
        if self._decoder.buffered >= HEADER_SIZE:
            self._refuse(error, self._decoder.pending_operation)
        else:
            self._log.info(
                "closing connection from {peer}: {reason}", event="closing", peer=self.peer_host, reason=error.reason
            )
            self._close()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        # Even with a request in flight: a create or join that takes this
        # long has gone wrong, and _entered copes with a closed connection.
        # Aborted, not closed: a peer that stalls its handshake may well not
        # read either, and a close would wait for it.
        if self.member is None or (self.member.address is None and self.member.dialect is Dialect.MODEL):
            self._abort_for(AbortReason.HANDSHAKE_TIMEOUT)

    def _cancel_timers(self) -> None:
        for timer in (self._handshake_timer, self._frame_timer, self._send_queue_timer, self._close_timer):
            self._cancel_timer(timer)
        self._handshake_timer = self._frame_timer = self._send_queue_timer = self._close_timer = None

    @staticmethod
    def _cancel_timer(timer: IDelayedCall | None) -> None:
        if timer is not None and timer.active():
            timer.cancel()


class RoomFactory(ServerFactory):
    """Builds a RoomProtocol per connection, within the connection limits."""

    noisy = False
    _log = Logger()

    def __init__(self, store: IRoomStore, clock: IReactorTime, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.connections: set[RoomProtocol] = set()
        self._per_host: Counter[str] = Counter()
        self.stats = TcpStats()
        """What this factory and its connections count; the stats log line and the metrics read it."""
        self._hashing: Counter[str] = Counter()
        """Creates and joins carrying a password in the store's hands, by address."""
        self.refused = RefusedConnections(clock)
        exempt = None if settings.limit_loopback else is_loopback
        self._hashing_exempt = exempt
        self.new_connections: KeyedLimiter[str] = KeyedLimiter(
            settings.connections_per_s, settings.connection_burst, clock, exempt=exempt
        )
        self.password_attempts: KeyedLimiter[str] = KeyedLimiter(
            settings.password_attempts_per_min / 60, settings.password_attempt_burst, clock, exempt=exempt
        )

    @override
    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        host = _host_of(addr) if addr is not None else ""
        if len(self.connections) >= self.settings.max_connections:
            return self._refuse(ServerFullError("the server holds its limit of connections"), host)
        if self._per_host[host] >= self.settings.max_connections_per_host:
            return self._refuse(ServerFullError(f"{host} holds its limit of connections"), host)
        if not self.new_connections.take(host):
            self.stats.rate_limited["connections"] += 1
            return self._refuse(RateLimitedError(f"{host} opens connections too fast"), host)
        return RoomProtocol(self)

    def _refuse(self, error: ProtocolError, host: str) -> _Refusal:
        self.refused.record(error.reason, peer=host)
        return _Refusal(error)

    def prune(self) -> None:
        """Forget per-address limits that carry no information any more (from the sweep)."""
        self.new_connections.prune()
        self.password_attempts.prune()

    def may_hash(self, host: str) -> bool:
        """Whether C{host} may have one more password hashed now (--max-hashing-per-host)."""
        if self._hashing_exempt is not None and self._hashing_exempt(host):
            return True
        return self._hashing[host] < self.settings.max_hashing_per_host

    def hashing_started(self, host: str) -> None:
        self._hashing[host] += 1

    def hashing_finished(self, result: _T, host: str) -> _T:
        """A callback and errback: passes C{result} on."""
        self._hashing[host] -= 1
        if not self._hashing[host]:
            del self._hashing[host]
        return result

    def hashing_in_progress(self, host: str) -> int:
        """Creates and joins with a password from C{host} that the store has not answered yet."""
        return self._hashing[host]

    def connection_opened(self, protocol: RoomProtocol) -> None:
        self.connections.add(protocol)
        self.stats.connections = len(self.connections)
        self._per_host[protocol.peer_host] += 1

    def connection_closed(self, protocol: RoomProtocol) -> None:
        if protocol in self.connections:
            self.connections.remove(protocol)
            self.stats.connections = len(self.connections)
            self._per_host[protocol.peer_host] -= 1
            if not self._per_host[protocol.peer_host]:
                del self._per_host[protocol.peer_host]


class RefusedConnections(CountedWarnings):
    """Connections refused over a limit, by reason, with a bounded rate of warnings."""

    format = "refused a connection from {peer}: {reason}{since}"
    since_format = " ({suppressed} more were refused for this reason since the last warning)"
    event = "refused_connection"


class _Refusal(Protocol):
    """Says why at once, in the binary size encoding, and hangs up."""

    def __init__(self, error: ProtocolError) -> None:
        self._error = error

    @override
    def connectionMade(self) -> None:
        transport: ITransport | None = self.transport
        assert transport is not None
        refusal = Frame(Operation.UNKNOWN, State.ACKNOWLEDGE, "", bytes((self._error.status,)))
        transport.write(encode_frame(refusal))
        transport.loseConnection()
