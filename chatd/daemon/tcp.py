"""
The TCP side: the room protocol, one RoomProtocol per connection.

The 32-byte header is the framing (chatd.protocol.wire). A connection creates or joins
one room; the dialect is detected from its first request and every answer
uses that request's size encoding and payload form. For the seed and native
dialects the open connection is the member's presence; the model dialect
sends its UDP port as 2 raw bytes and the server then closes the connection,
as that dialect expects. The frames of one connection are handled in a loop,
never by recursion, however many arrive in one chunk.

Here are the requests and their answers. What is about bytes and time (the
transport's producer, the send queue, the handshake, partial-frame and close
timers) is RoomProtocol's base, chatd.daemon.tcp_flow.FlowControlledProtocol;
the factory that builds RoomProtocols within the connection limits is
chatd.daemon.tcp_factory.RoomFactory. The classes that log stay in this
module, so that their events keep their namespaces (chatd.daemon.tcp.RoomProtocol,
chatd.daemon.tcp.RefusedConnections).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from chatd.daemon.history import history_from
from chatd.daemon.interfaces import IMemberConnection
from chatd.daemon.logs import CountedWarnings
from chatd.daemon.rooms import LeaveReason, Member
from chatd.daemon.tcp_flow import FlowControlledProtocol
from chatd.protocol.errors import (
    HashingBusyError,
    MalformedFrameError,
    NotPermittedError,
    ProtocolError,
    RateLimitedError,
    Status,
    UnknownOperationError,
)
from chatd.protocol.payloads import (
    DeliveryStart,
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
from chatd.protocol.wire import HEADER_SIZE, Frame, Operation, PortBytes, SizeEncoding, State, encode_frame

if TYPE_CHECKING:
    from chatd.daemon.tcp_factory import RoomFactory


def host_of(address: IAddress) -> str:
    """The host of a connection's address: what the per-address limits count by."""
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host
    return str(address)


@implementer(IMemberConnection)
class RoomProtocol(FlowControlledProtocol):
    _log = Logger()

    def __init__(self, factory: RoomFactory) -> None:
        super().__init__(factory.clock, factory.settings, factory.stats)
        self._factory = factory
        self._store = factory.store
        self.member: Member | None = None
        self.dialect: Dialect | None = None
        self.peer_port = 0
        """The peer's TCP port (0 when its address has none): the drop counters name operation 8's source by it."""
        self._encoding = SizeEncoding.BINARY
        self._processing = False
        """
        L{_process}'s loop is running: a create or join answered at once,
        inside it, lets the loop go on instead of starting another (one
        stack level per pipelined request would end in RecursionError).
        """

    # -- connection life ----------------------------------------------------

    @property
    def secure(self) -> bool:
        """Whether this connection runs over TLS (the daemon's TLS port)."""
        return ISSLTransport.providedBy(self.transport)

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.peer_host = host_of(peer)
        if isinstance(peer, IPv4Address | IPv6Address):
            self.peer_port = peer.port
        self._factory.connection_opened(self)
        self._start_flow()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_flow()
        self._factory.connection_closed(self)
        self._notify_closed()
        member = self.member
        if member is None:
            return
        member.connection = None
        if member.dialect is Dialect.MODEL and member.address is not None:
            # The model dialect closes TCP after registering; it stays a member.
            return
        self._store.leave(member, LeaveReason.LEFT)

    @override
    def _handshake_pending(self) -> bool:
        # A model client is not done until its UDP port arrives.
        return self.member is None or (self.member.address is None and self.member.dialect is Dialect.MODEL)

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._decoder.feed(data)
        self._process()

    @override
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
            payload = members_payload(room.names(), room.host_name)
            self._send(Frame(Operation.MEMBERS, State.COMPLETE, room.name, payload, self._encoding))
        elif frame.operation is Operation.DATAGRAM:
            self._tunnelled(frame)
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

    def _tunnelled(self, frame: Frame) -> None:
        """
        Operation 8: a sealed frame carried instead of a datagram, from a
        member with the "delivery" feature. Handed to the relay, which
        checks it as a datagram; never acknowledged (a datagram is not),
        and what the relay drops never closes the connection.
        """
        member = self.member
        tunnel = self._factory.tunnel
        if member is None or not member.delivery or tunnel is None:
            raise NotPermittedError("only a member with the delivery feature can send operation 8")
        if frame.room and frame.room != member.room.name:
            raise NotPermittedError("that is not your room")
        tunnel.tunnelled(member, frame.payload, (self.peer_host, self.peer_port))

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
        # A resume's credential stands for the password (256 random bits,
        # checked by one hash, nothing to guess): no scrypt run, no attempt.
        resuming = frame.operation is Operation.JOIN and request.resume is not None
        # A password costs an scrypt run, to set it (create) or to check it
        # (join): from one address, few at once and few a minute.
        hashing = bool(request.password) and not resuming
        if hashing and not self._factory.may_hash(self.peer_host):
            self._stats.rate_limited["hashing_per_host"] += 1
            raise HashingBusyError(f"{self.peer_host} already has a password request in progress; try again")
        attempt = hashing or (frame.operation is Operation.JOIN and bool(request.invite) and not resuming)
        # Charged before the check, so that parallel guesses are counted too.
        if attempt and not self._factory.password_attempts.take(self.peer_host):
            self._stats.rate_limited["password_attempts"] += 1
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
        entered.addCallbacks(
            self._entered,
            self._not_entered,
            callbackArgs=(frame.operation, resuming),
            errbackArgs=(frame.operation, frame.room),
        )
        entered.addErrback(lambda failure: self._log.failure("while answering a create or join", failure))

    def _entered(self, member: Member, operation: Operation, resumed: bool) -> None:
        self._busy = False
        if self._closing:
            # Closed while the request was in flight (handshake timeout): the
            # peer is going, so it never becomes a member.
            self._store.leave(member, LeaveReason.LEFT)
            return
        self.member = member
        if operation is Operation.CREATE:
            self._stats.rooms_created += 1
        else:
            self._stats.joins += 1
        # A model client is not done until its port arrives: its handshake
        # timer runs on.
        if member.dialect is not Dialect.MODEL:
            self._handshake_done()
        room = member.room
        # The request's own operation: a host that resumed did so by a join.
        self._acknowledge(operation, Status.SUCCESS, room.name)
        self._send(Frame(operation, State.COMPLETE, room.name, self._complete_payload(member), self._encoding))
        if member.dialect is Dialect.MODEL:
            self._decoder.expect_port()
        else:
            member.connection = self
        self._log.info(
            "{user} {event} {room} ({dialect} dialect)",
            event="resumed" if resumed else "created" if operation is Operation.CREATE else "joined",
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
            delivery=self._delivery_start(member) if member.delivery else None,
            resume=member.take_credential(),
        )

    def _delivery_start(self, member: Member) -> DeliveryStart:
        """Where a delivery member starts: the room's epoch, latest number, and the history it is offered."""
        history = member.room.history
        return DeliveryStart(history.epoch, history.latest, history_from(history, self._settings.history_on_join))

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

    @override
    def _refuse(self, error: ProtocolError, operation: Operation, room: str = "") -> None:
        # Every refusal counted, as dropped datagrams are: a peer sending
        # garbage frames shows in the metrics, not only in the log.
        self._stats.refused_requests[error.reason] += 1
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
        self._log_frame("sent", frame)
        self._write(encode_frame(frame) if encoded is None else encoded)

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

    def send_datagram(self, sealed: bytes) -> bool:
        member = self.member
        if member is None or self._closing or self._lost or self._aborted:
            return False
        # The same path as notices: flow-controlled, bounded by the send queue.
        self._send(Frame(Operation.DATAGRAM, State.COMPLETE, member.room.name, sealed, self._encoding))
        return True

    def close(self) -> None:
        self._close()


class RefusedConnections(CountedWarnings):
    """Connections refused over a limit (RoomFactory), by reason, with a bounded rate of warnings."""

    format = "refused a connection from {peer}: {reason}{since}"
    since_format = " ({suppressed} more were refused for this reason since the last warning)"
    event = "refused_connection"
