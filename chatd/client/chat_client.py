"""
The chatd client library: the one piece of client code that knows the wire.

It speaks the native protocol: a TCP control connection held open for the
whole session (its presence), and UDP for messages, with keepalives so that a
member who only reads is not dropped. Results come back as Deferreds (use
them with C{await} in an C{async def}); everything the server says on its own
arrives at an L{IChatListener} as a typed event from chatd.client.events. When the
connection is lost, the client retries with exponential backoff and rejoins
the same room under the same name, and says so through events.

    client = ChatClient(reactor, "127.0.0.1", listener=my_listener)
    await client.join("hoge", "alice", password="secret")
    client.send("hello")
    await client.leave()

Refusals raise the error class that names the status (RoomExistsError,
InvalidPasswordError, ...; see chatd.protocol.errors), never a bare number.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IReactorUDP,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import Interface

from chatd.client.events import (
    ChatEvent,
    ConnectionLost,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Reconnected,
    Reconnecting,
    RemovedForInactivity,
    RoomClosed,
    UdpPathLost,
    UdpPathRestored,
    WaitingForHost,
    event_from_notice,
)
from chatd.client.tls import ChatTLSCreator, TrustPolicy, explain_tls_failure, tls_endpoint
from chatd.protocol.datagrams import MAX_DATAGRAM, FrameType, check_relay_size, decode_relay_body
from chatd.protocol.errors import (
    CertificateError,
    ChatError,
    ClientError,
    ConnectionClosedError,
    ConnectionFailedError,
    FrameTooLargeError,
    InvalidPasswordError,
    MalformedFrameError,
    MessageTooLongError,
    NotInRoomError,
    NotPermittedError,
    ProtocolError,
    RoomExistsError,
    RoomNotFoundError,
    error_for_status,
)
from chatd.protocol.payloads import NATIVE_VERSION, decode_json
from chatd.protocol.seal import OVERHEAD, REKEY_AFTER, Channel, Direction, peek_header
from chatd.protocol.wire import Frame, FrameDecoder, Operation, State, encode_frame

EXIT_TEXT = b"/exit"
"""The message the server reads as leaving (and, from the host, as closing the room)."""
UDP_CONFIRM_WAIT = 2.0
"""Seconds a create or join waits for the server to answer the first keepalive."""
UDP_PROBE_INTERVAL = 1.5
"""
Seconds after an unanswered keepalive before another goes out. The server
answers at once, so an answer that late is one that is not coming; probing
this much sooner than the keepalive interval (30 s) is what lets a dead UDP
path be reported within seconds rather than at the next keepalive.
"""
UDP_PROBE_MAX_INTERVAL = 10.0
"""The slowest probing gets (doubling from UDP_PROBE_INTERVAL) once the path is reported lost."""
UDP_LOST_AFTER = 4.0
"""Seconds of unanswered keepalives (about three of them) before the path is reported lost."""
HOST_WAIT = 120.0
"""
Seconds a member waits, after a server restart, for the room's host to
create the room again before it gives up.
"""
RETRY_JITTER = 0.2
"""
Each delay between tries while waiting for the host is shortened by a random
part of up to this fraction, so that the members of a room the restart
emptied, who all lost their connection at the same moment, do not all ask
at the same moments.
"""
DEFAULT_HOST = "127.0.0.1"
DEFAULT_TCP_PORT = 9001
DEFAULT_UDP_PORT = 9002
_CLIENT_MAX_PAYLOAD = 1 << 16


_ANSWERED_WITH_COMPLETE = frozenset(
    {Operation.CREATE, Operation.JOIN, Operation.INVITE, Operation.REKEY, Operation.MEMBERS}
)
"""Requests whose success acknowledge is followed by a complete frame."""


class IChatListener(Interface):
    """Told everything the client hears, as typed events (chatd.client.events)."""

    def chat_event(event: ChatEvent) -> None:  # noqa: N805 - zope declares methods without self
        """Called on the reactor thread, once per event, in order."""


class ConnectionState(Enum):
    IDLE = "not connected"
    CONNECTING = "connecting"
    IN_ROOM = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """What the server said on entering a room."""

    room: str
    user: str
    host: bool
    members: tuple[str, ...]
    idle_timeout: float
    keepalive_interval: float


@dataclass(frozen=True, slots=True)
class _Membership:
    """What the client asked for, so it can ask again after a reconnect."""

    operation: Operation
    room: str
    user: str
    password: str | None
    invite: str | None
    native_only: bool = False
    """A create of a room only native clients may join (docs/protocol.md 4.8; over TLS only)."""


@dataclass(slots=True)
class _Request:
    operation: Operation
    answered: Deferred[list[Frame]]
    frames: list[Frame]


def _host_of(address: IAddress) -> str:
    assert isinstance(address, IPv4Address | IPv6Address)
    return address.host


class _ControlConnection(Protocol):
    """The TCP control connection: frames in, frames out."""

    def __init__(self, client: ChatClient) -> None:
        self._client = client
        self._decoder = FrameDecoder(_CLIENT_MAX_PAYLOAD)
        self.lost: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self._decoder.feed(data)
        try:
            while (item := self._decoder.next()) is not None:
                assert isinstance(item, Frame)
                self._client._frame_received(item)
        except ProtocolError as error:
            # The server's stream is unreadable: nothing more on it can be trusted.
            self._client._log.error("unreadable frame from the server: {error}", error=str(error))
            self.abort()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._client._control_lost(self, reason)
        self.lost.callback(None)

    def send(self, frame: Frame) -> None:
        assert self.transport is not None
        self.transport.write(encode_frame(frame))

    def close(self) -> Deferred[None]:
        assert self.transport is not None
        self.transport.loseConnection()
        return self.lost

    def abort(self) -> None:
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()


class _Datagrams(DatagramProtocol):
    noisy = False

    def __init__(self, client: ChatClient) -> None:
        self._client = client

    @override
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._client._datagram_received(datagram, (addr[0], addr[1]))


class ChatClient:
    """One person in one room of one chatd server."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str = DEFAULT_HOST,
        tcp_port: int = DEFAULT_TCP_PORT,
        udp_port: int = DEFAULT_UDP_PORT,
        listener: IChatListener | None = None,
        *,
        request_timeout: float = 10.0,
        reconnect: bool = True,
        first_retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        tls: TrustPolicy | None = None,
        rekey_after: int = REKEY_AFTER,
        host_wait: float = HOST_WAIT,
        retry_jitter: float = RETRY_JITTER,
        jitter_source: Callable[[], float] = random.random,
        udp_probe_interval: float = UDP_PROBE_INTERVAL,
        udp_lost_after: float = UDP_LOST_AFTER,
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self.host = host
        self.tcp_port = tcp_port
        self.udp_port = udp_port
        self.listener = listener
        self._request_timeout = request_timeout
        self._reconnect = reconnect
        self._first_retry_delay = first_retry_delay
        self._max_retry_delay = max_retry_delay
        self._host_wait = host_wait
        self._retry_jitter = retry_jitter
        self._jitter_source = jitter_source
        """Uniform in [0, 1): random.random, or a test's fixed numbers."""
        self._udp_probe_interval = udp_probe_interval
        self._udp_lost_after = udp_lost_after
        self.tls = tls
        """How to trust the server when tcp_port is its TLS port; None for plain TCP."""
        self._rekey_after = rekey_after
        self.newly_pinned: str | None = None
        """The certificate fingerprint pinned on this first use, for the user interface to show."""
        self.dropped_datagrams = 0
        """Datagrams that did not authenticate, were replayed, or could not be read."""

        self.state = ConnectionState.IDLE
        self.info: RoomInfo | None = None
        self.members: tuple[str, ...] = ()
        self.room_host: str | None = None
        """
        The user name of the room's host (this client's own when it hosts), or
        None before entering. Not C{host}: that is the server's address.
        """
        self.udp_confirmed = False
        """The server has answered a keepalive: datagrams get through both ways."""
        self.udp_lost = False
        """
        Keepalives went unanswered and L{UdpPathLost} was emitted; cleared,
        with L{UdpPathRestored}, when a datagram from the server arrives.
        """

        self._wanted: _Membership | None = None
        self._control: _ControlConnection | None = None
        self._udp: IListeningPort | None = None
        self._datagrams = _Datagrams(self)
        self._server_udp: tuple[str, int] | None = None
        self._channel: Channel | None = None
        self._previous_channel: Channel | None = None
        """The key before a rekey: the server's copies sealed under it may still arrive."""
        self._rekeying = False
        self._udp_waiters: list[Deferred[None]] = []
        self._tls_creator: ChatTLSCreator | None = None
        self._request: _Request | None = None
        self._keepalive: LoopingCall | None = None
        self._probe: IDelayedCall | None = None
        """The next keepalive sent early because the last one is still unanswered."""
        self._unanswered_since: float | None = None
        """When the oldest keepalive not answered yet went out; None when all were answered."""
        self._probes_sent = 0
        self._heard_at = 0.0
        """When the last authenticated datagram from the server arrived (or the room was entered)."""
        self._retry: Deferred[None] | None = None
        self._room_over = False
        self._leaving = False

    # -- entering a room ----------------------------------------------------

    def create(
        self, room: str, user: str, password: str | None = None, *, native_only: bool = False
    ) -> Deferred[RoomInfo]:
        """
        Create C{room} and become its host. C{native_only} makes a room only
        native clients can join, so that all of its datagrams are sealed; the
        server allows it over its TLS port only (docs/protocol.md section 4.8).
        """
        wanted = _Membership(Operation.CREATE, room, user, password, None, native_only)
        return Deferred.fromCoroutine(self._start(wanted))

    def join(self, room: str, user: str, password: str | None = None, invite: str | None = None) -> Deferred[RoomInfo]:
        """Join C{room}, with its password or an invitation token if it needs one."""
        return Deferred.fromCoroutine(self._start(_Membership(Operation.JOIN, room, user, password, invite)))

    async def _start(self, wanted: _Membership) -> RoomInfo:
        if self.state in (ConnectionState.CONNECTING, ConnectionState.IN_ROOM, ConnectionState.RECONNECTING):
            raise ClientError("this client is already in a room; leave it first")
        self._wanted = wanted
        self._room_over = self._leaving = False
        self.udp_lost = False
        self.room_host = None
        self.state = ConnectionState.CONNECTING
        try:
            return await self._enter(wanted)
        except BaseException:
            self.state = ConnectionState.IDLE
            await self._shut(close_udp=True)
            raise

    async def _enter(self, wanted: _Membership) -> RoomInfo:
        control = await self._connect()
        await self._listen_udp(control)
        return await self._in_room(await self._ask(_room_request(wanted)))

    async def _enter_as_member(self, wanted: _Membership) -> RoomInfo:
        """
        Join again after the connection was lost, asking first without the
        password: a join that carries a password spends one of the few
        attempts a minute the server allows an address (docs/protocol.md
        section 5.1), and a member waiting for its host to reopen the room
        asks again and again, from the same address as the host's create
        (which spends one too). Without the password, a room that is not back
        yet costs nothing; a password room answers "invalid password" at
        once, without hashing, and the real join follows on the same
        connection (that refusal does not close it).
        """
        control = await self._connect()
        await self._listen_udp(control)
        probe = _Membership(Operation.JOIN, wanted.room, wanted.user, None, None)
        try:
            frames = await self._ask(_room_request(probe))
        except InvalidPasswordError:
            if wanted.password is None:
                raise
            frames = await self._ask(_room_request(wanted))
        return await self._in_room(frames)

    async def _in_room(self, frames: list[Frame]) -> RoomInfo:
        """Take the create or join answer, start the keepalives, and wait (briefly) for UDP."""
        if self._tls_creator is not None and self._tls_creator.newly_pinned:
            self.newly_pinned = self._tls_creator.newly_pinned
        answer = decode_json(frames[-1].payload)
        self.info = RoomInfo(
            room=str(answer["room"]),
            user=str(answer["user"]),
            host=bool(answer["host"]),
            members=tuple(str(name) for name in answer["members"]),
            idle_timeout=float(answer["idle_timeout"]),
            keepalive_interval=float(answer["keepalive_interval"]),
        )
        self._channel = _channel_from(answer, self._rekey_after)
        self._previous_channel = None
        self.members = self.info.members
        # The join answer names no host, but lists the members in the order
        # they entered, host first (docs/protocol.md section 4.2), and a room
        # never outlives its host (section 6.4).
        self.room_host = self.info.user if self.info.host else (self.members[0] if self.members else None)
        self.udp_confirmed = False
        self._heard_at = self._clock.seconds()
        self._unanswered_since = None
        self._probes_sent = 0
        self.state = ConnectionState.IN_ROOM
        self._keepalive = LoopingCall(self._send_keepalive)
        self._keepalive.clock = self._clock
        # At once: the first datagram is what registers our UDP address.
        self._keepalive.start(self.info.keepalive_interval, now=True)
        # Entered means messages can flow both ways, so wait (briefly) for the
        # server to answer that keepalive; a blocked UDP path only delays it.
        await self._udp_answer(UDP_CONFIRM_WAIT)
        return self.info

    async def _connect(self) -> _ControlConnection:
        endpoint: IStreamClientEndpoint
        if self.tls is not None:
            endpoint, self._tls_creator = tls_endpoint(self._reactor, self.host, self.tcp_port, self.tls)
        else:
            endpoint = HostnameEndpoint(self._reactor, self.host, self.tcp_port, timeout=self._request_timeout)
        try:
            control = await connectProtocol(endpoint, _ControlConnection(self))
        except (ConnectError, DNSLookupError, OSError) as error:
            raise ConnectionFailedError(
                f"cannot reach chatd at {self.host} port {self.tcp_port}: {error.__class__.__name__} ({_reason(error)})"
            ) from None
        assert isinstance(control, _ControlConnection)
        if self._leaving:
            # leave() was called while the connection was being made.
            await control.close()
            raise ConnectionClosedError("left before the connection was made")
        self._control = control
        return control

    async def _listen_udp(self, control: _ControlConnection) -> None:
        assert control.transport is not None
        server_host = _host_of(control.transport.getPeer())
        self._server_udp = (server_host, self.udp_port)
        if self._udp is None:
            # The TCP connection's own local address: the same family, and the
            # source address the server knows us by.
            local = _host_of(control.transport.getHost())
            self._udp = IReactorUDP(self._reactor).listenUDP(0, self._datagrams, local, _CLIENT_MAX_PAYLOAD)

    def _ask(self, frame: Frame) -> Deferred[list[Frame]]:
        """Send a request; fire with its acknowledge (and complete) frames."""
        if self._control is None:
            raise NotInRoomError("not connected")
        if self._request is not None:
            raise ClientError("another request is waiting for its answer")
        answered: Deferred[list[Frame]] = Deferred()
        self._request = _Request(frame.operation, answered, [])
        self._control.send(frame)

        def finished(result: object) -> object:
            self._request = None
            if isinstance(result, Failure) and result.check(TimeoutError, CancelledError):
                return Failure(ConnectionClosedError("the server did not answer in time"))
            return result

        answered.addTimeout(self._request_timeout, self._clock)
        answered.addBoth(finished)
        return answered

    # -- what the server sends ----------------------------------------------

    def _frame_received(self, frame: Frame) -> None:
        if frame.operation is Operation.NOTICE:
            self._notice(decode_json(frame.payload))
            return
        request = self._request
        if request is None:
            self._log.warn("unexpected frame from the server: {operation}", operation=frame.operation.name)
            return
        request.frames.append(frame)
        if frame.state is State.ACKNOWLEDGE:
            status = frame.payload[0] if frame.payload else -1
            if status != 0:
                message = ""
                if len(frame.payload) > 1:
                    message = str(decode_json(frame.payload[1:]).get("message", ""))
                request.answered.errback(error_for_status(status, message))
            elif request.operation not in _ANSWERED_WITH_COMPLETE:
                # These answer with a complete frame after the acknowledge; the others end here.
                request.answered.callback(request.frames)
        elif frame.state is State.COMPLETE:
            request.answered.callback(request.frames)

    def _notice(self, notice: dict[str, Any]) -> None:
        me = self.info.user if self.info is not None else ""
        # Notices carry the change, not the list: we keep the list ourselves.
        event = event_from_notice(notice, me, self.members)
        if event is None:
            return
        if isinstance(event, MemberJoined | MemberLeft):
            self.members = event.members
        elif isinstance(event, RoomClosed | RemovedForInactivity):
            self._room_over = True
        self._emit(event)

    def _datagram_received(self, datagram: bytes, source: tuple[str, int]) -> None:
        current = self._channel
        if source != self._server_udp or current is None:
            return
        try:
            header = peek_header(datagram)
            previous = self._previous_channel
            channel = previous if previous is not None and header.key_id == previous.key_id else current
            frame_type, body = channel.open(datagram, header)
            if channel is current:
                self._previous_channel = None
            self._udp_heard()
            if frame_type == FrameType.RELAY:
                relayed = decode_relay_body(body)
                self._emit(MessageReceived(relayed.sender, relayed.text, relayed.timestamp_ms / 1000))
            elif frame_type == FrameType.NOTICE:
                self._notice(decode_json(body))
            elif frame_type == FrameType.KEEPALIVE_ACK:
                self.udp_confirmed = True
                waiters, self._udp_waiters = self._udp_waiters, []
                for waiter in waiters:
                    waiter.callback(None)
        except ProtocolError:
            # Forged, replayed, damaged, or under a key just replaced: dropped,
            # as the server drops such datagrams, and never answered.
            self.dropped_datagrams += 1

    def _emit(self, event: ChatEvent) -> None:
        if self.listener is not None:
            self.listener.chat_event(event)

    # -- sending --------------------------------------------------------------

    def send(self, text: str) -> None:
        """Send a chat message to the room. Raises NotInRoomError or MessageTooLongError."""
        if self.state is not ConnectionState.IN_ROOM or self.info is None:
            raise NotInRoomError("not in a room" if self.state is not ConnectionState.RECONNECTING else "reconnecting")
        body = text.encode("utf-8")
        try:
            check_relay_size(self.info.user, body)
        except FrameTooLargeError:
            raise MessageTooLongError(f"a message of {len(body)} bytes is too long to relay") from None
        # Our own sealed datagram must fit as well.
        if OVERHEAD + len(body) > MAX_DATAGRAM:
            raise MessageTooLongError(f"a message of {len(body)} bytes is too long to send")
        self._send_datagram(FrameType.MESSAGE, body)

    def flush(self, timeout: float = 2.0) -> Deferred[None]:
        """
        Fire once everything sent so far has reached the server: a keepalive
        goes out, and the server answers datagrams in order, so its answer
        comes after every earlier message was relayed. Fires anyway after
        C{timeout} seconds (UDP may lose either datagram).
        """
        self._send_keepalive()
        return Deferred.fromCoroutine(self._udp_answer(timeout))

    async def _udp_answer(self, timeout: float) -> None:
        answered: Deferred[None] = Deferred()
        self._udp_waiters.append(answered)
        answered.addTimeout(timeout, self._clock, onTimeoutCancel=lambda *_: None)
        await answered
        if answered in self._udp_waiters:
            self._udp_waiters.remove(answered)

    def _send_keepalive(self) -> None:
        if self.state is ConnectionState.IN_ROOM:
            # Counted as unanswered before it goes, in case the answer is quick.
            if self._unanswered_since is None:
                self._unanswered_since = self._clock.seconds()
            if self._probe is None:
                self._probe = self._clock.callLater(self._probe_delay(), self._probe_udp)
        self._send_datagram(FrameType.KEEPALIVE, b"")

    def _probe_delay(self) -> float:
        """
        Seconds before the next early keepalive: the probe interval while in
        doubt; once the path is reported lost, doubling up to a bound, so a
        path that stays dead costs few datagrams and one that comes back is
        noticed within UDP_PROBE_MAX_INTERVAL.
        """
        if not self.udp_lost:
            return self._udp_probe_interval
        slower = self._udp_probe_interval * 2.0 ** max(0, self._probes_sent - 2)
        return min(slower, max(UDP_PROBE_MAX_INTERVAL, self._udp_probe_interval))

    def _probe_udp(self) -> None:
        """A keepalive is still unanswered: say so once it has been too long, and try again."""
        self._probe = None
        if self.state is not ConnectionState.IN_ROOM or self._unanswered_since is None:
            return
        now = self._clock.seconds()
        if not self.udp_lost and now - self._unanswered_since >= self._udp_lost_after:
            self.udp_lost = True
            self._emit(UdpPathLost(round(now - self._heard_at, 3)))
        self._probes_sent += 1
        self._send_keepalive()

    def _udp_heard(self) -> None:
        """An authenticated datagram from the server arrived: the path works (again)."""
        self._heard_at = self._clock.seconds()
        self._unanswered_since = None
        self._probes_sent = 0
        self._cancel_probe()
        if self.udp_lost:
            self.udp_lost = False
            self._emit(UdpPathRestored())

    def _cancel_probe(self) -> None:
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None

    def _send_datagram(self, frame_type: FrameType, body: bytes) -> None:
        transport = self._datagrams.transport
        channel = self._channel
        if self._udp is None or self._server_udp is None or transport is None or channel is None:
            return
        data = channel.seal(frame_type, body)
        try:
            transport.write(data, self._server_udp)
        except OSError as error:
            # A lost datagram, as UDP may lose any; the keepalive tries again.
            self._log.warn("could not send a datagram: {error}", error=str(error))
        if channel.needs_rekey and not self._rekeying and self._request is None:
            self._rekeying = True
            Deferred.fromCoroutine(self._rekey()).addErrback(
                lambda failure: self._log.warn(
                    "could not replace the UDP key: {error}", error=failure.getErrorMessage()
                )
            )

    async def _rekey(self) -> None:
        """Ask for a fresh key before the counter runs out; the server stops accepting the old one."""
        try:
            assert self.info is not None
            frames = await self._ask(Frame(Operation.REKEY, State.REQUEST, self.info.room, b""))
            self._previous_channel = self._channel
            self._channel = _channel_from(decode_json(frames[-1].payload), self._rekey_after)
        finally:
            self._rekeying = False

    def invite(self) -> Deferred[str]:
        """Mint a single-use invitation token (the host only)."""
        return Deferred.fromCoroutine(self._invite())

    async def _invite(self) -> str:
        if self.state is not ConnectionState.IN_ROOM or self.info is None:
            raise NotInRoomError("not in a room")
        if not self.info.host:
            raise NotPermittedError("only the host can invite")
        frames = await self._ask(Frame(Operation.INVITE, State.REQUEST, self.info.room, b""))
        return str(decode_json(frames[-1].payload)["invite"])

    def refresh_members(self) -> Deferred[tuple[str, ...]]:
        """
        Ask the server who is in the room (operation 7), and keep its answer
        as L{members}. The list is kept up to date from notices anyway; this
        is for a client that doubts its own (a user's explicit question).
        """
        return Deferred.fromCoroutine(self._refresh_members())

    async def _refresh_members(self) -> tuple[str, ...]:
        if self.state is not ConnectionState.IN_ROOM or self.info is None:
            raise NotInRoomError("not in a room")
        frames = await self._ask(Frame(Operation.MEMBERS, State.REQUEST, self.info.room, b""))
        answer = decode_json(frames[-1].payload)
        listed = answer.get("members")
        if not isinstance(listed, list):
            raise MalformedFrameError("the member list has no 'members' array")
        self.members = tuple(str(name) for name in listed)
        host = answer.get("host")
        if isinstance(host, str):
            self.room_host = host
        return self.members

    # -- leaving and losing ---------------------------------------------------

    def close_room(self) -> Deferred[None]:
        """
        As the host, close the room for everyone, then leave. The others are
        told "the host closed the room" rather than "the host left": the
        server reads a host's C{/exit} message as closing the room on purpose
        (docs/protocol.md section 6.4). Should that datagram be lost, the
        closed connection still closes the room, as "the host left".
        Raises NotInRoomError when not in a room, NotPermittedError when not its host.
        """
        if self.state is not ConnectionState.IN_ROOM or self.info is None:
            raise NotInRoomError("not in a room")
        if self.room_host != self.info.user:
            raise NotPermittedError("only the room's host can close it")
        self._send_datagram(FrameType.MESSAGE, EXIT_TEXT)
        return self.leave()

    def leave(self) -> Deferred[None]:
        """
        Leave the room and close both sockets. For the host this closes the
        room for everyone (the server's rule: the host's presence is the room's).
        """
        return Deferred.fromCoroutine(self._leave())

    async def _leave(self) -> None:
        self._leaving = True
        self.state = ConnectionState.CLOSED
        await self._shut(close_udp=True)

    async def _shut(self, close_udp: bool) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        self._cancel_probe()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        control, self._control = self._control, None
        if control is not None and control.transport is not None:
            await control.close()
        if close_udp and self._udp is not None:
            udp, self._udp = self._udp, None
            stopped = udp.stopListening()
            if stopped is not None:
                await stopped

    def _control_lost(self, control: _ControlConnection, reason: Failure) -> None:
        refusal = explain_tls_failure(reason, self._tls_creator) if self.tls is not None else None
        if self._request is not None:
            self._request.answered.errback(refusal or ConnectionClosedError("the server closed the connection"))
        if control is not self._control:
            return
        self._control = None
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        # Unanswered keepalives say nothing about UDP while TCP is down too;
        # a path reported lost stays so until a datagram arrives again.
        self._cancel_probe()
        self._unanswered_since = None
        if self._leaving or self.state is not ConnectionState.IN_ROOM:
            return
        if self._room_over or isinstance(refusal, CertificateError):
            # The room ended (closed by its host, or we were removed), or the
            # server is not the one we trust: there is nothing to come back to.
            self.state = ConnectionState.CLOSED
            Deferred.fromCoroutine(self._shut(close_udp=True))
            return
        will_reconnect = self._reconnect
        self.state = ConnectionState.RECONNECTING if will_reconnect else ConnectionState.CLOSED
        self._emit(ConnectionLost(reason.getErrorMessage(), will_reconnect))
        if will_reconnect:
            Deferred.fromCoroutine(self._reconnect_loop()).addErrback(
                lambda failure: self._log.failure("while reconnecting", failure)
            )
        else:
            Deferred.fromCoroutine(self._shut(close_udp=True))

    async def _reconnect_loop(self) -> None:
        """
        Try again and again to come back to the room, with exponential
        backoff and jitter. After a server restart the room is gone; only its
        host may create it again (a member that did would become the host of
        the old host's room). So a member that finds no room waits for the
        host: it keeps asking, and says so with L{WaitingForHost} before each
        try, until the room is back or L{HOST_WAIT} seconds have passed.
        """
        attempt = 0
        waiting_since: float | None = None
        """When this member first found the room gone; None while the server is out of reach."""
        tries_waiting = 0
        while self._reconnecting():
            attempt += 1
            if waiting_since is None:
                delay = self._backoff(attempt)
                self._emit(Reconnecting(attempt, delay))
            else:
                # The server is back: the backoff that grew while it was down
                # starts again, so that a host's return is noticed soon.
                tries_waiting += 1
                gives_up_in = max(0.0, waiting_since + self._host_wait - self._clock.seconds())
                jittered = self._backoff(tries_waiting) * (1.0 - self._retry_jitter * self._jitter_source())
                delay = min(jittered, gives_up_in)
                assert self._wanted is not None
                self._emit(WaitingForHost(self._wanted.room, self.room_host, attempt, delay, gives_up_in))
            self._retry = deferLater(self._clock, delay, lambda: None)
            try:
                await self._retry
            except CancelledError:
                return
            self._retry = None
            if not self._reconnecting():
                return
            try:
                info = await self._rejoin()
            except CertificateError as error:
                # The server is not the one we trust (its certificate changed,
                # or someone is in the middle): retrying cannot help. Stop, and
                # say why, as _control_lost does for an open connection.
                self._log.warn("reconnect attempt {attempt} refused: {error}", attempt=attempt, error=str(error))
                await self._give_up(str(error))
                return
            except RoomNotFoundError:
                now = self._clock.seconds()
                if waiting_since is None:
                    waiting_since, tries_waiting = now, 0
                elif now >= waiting_since + self._host_wait:
                    await self._give_up(self._host_did_not_return())
                    return
                await self._close_control()
                continue
            except InvalidPasswordError as error:
                if self._wanted is not None and self._wanted.invite is not None:
                    # The invitation was spent on the first join and the room
                    # has a password: no number of tries can get back in.
                    await self._give_up(
                        f"room {self._wanted.room} needs its password, and the invitation was used up"
                        " on the first join; ask its host for a new one"
                    )
                    return
                self._log.info("reconnect attempt {attempt} failed: {error}", attempt=attempt, error=str(error))
                await self._close_control()
                continue
            except (ConnectionFailedError, ConnectionClosedError) as error:
                # The server is out of reach again: that is not the host's delay.
                self._log.info("reconnect attempt {attempt} failed: {error}", attempt=attempt, error=str(error))
                waiting_since = None
                await self._close_control()
                continue
            except ChatError as error:
                self._log.info("reconnect attempt {attempt} failed: {error}", attempt=attempt, error=str(error))
                await self._close_control()
                continue
            self._emit(Reconnected(info.room, info.members, self.room_host))
            return

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff from the first retry delay, capped."""
        return min(self._max_retry_delay, self._first_retry_delay * 2.0 ** (attempt - 1))

    def _host_did_not_return(self) -> str:
        assert self._wanted is not None
        host = self.room_host if self.room_host is not None else "its host"
        return (
            f"room {self._wanted.room} is gone since the server restarted, and {host}"
            f" did not reopen it within {self._host_wait:g} s"
        )

    async def _give_up(self, reason: str) -> None:
        self.state = ConnectionState.CLOSED
        self._emit(ConnectionLost(reason, will_reconnect=False))
        await self._shut(close_udp=True)

    async def _close_control(self) -> None:
        if self._control is not None:
            await self._control.close()

    def _reconnecting(self) -> bool:
        # A method, not an inline test: the state changes across awaits.
        return self.state is ConnectionState.RECONNECTING

    async def _rejoin(self) -> RoomInfo:
        """
        Enter the same room under the same name. After a server restart the
        room is gone, and only the member that hosted it creates it again,
        with the same password (and native-only again if it was): the others
        join, and find no room (RoomNotFoundError) until the host is back.
        If the host finds the name taken (by a client that is not this
        library, or a stranger) it joins that room as a member.
        """
        wanted = self._wanted
        assert wanted is not None
        was_host = self.info.host if self.info is not None else wanted.operation is Operation.CREATE
        self.state = ConnectionState.CONNECTING
        try:
            if not was_host:
                # An invitation was spent on the first join: a member who came
                # in by one can only come back to a room without a password.
                return await self._enter_as_member(
                    _Membership(Operation.JOIN, wanted.room, wanted.user, wanted.password, None)
                )
            try:
                return await self._enter(replace(wanted, operation=Operation.CREATE, invite=None))
            except RoomExistsError:
                await self._close_control()
                return await self._enter_as_member(
                    _Membership(Operation.JOIN, wanted.room, wanted.user, wanted.password, None)
                )
        finally:
            if self.state is ConnectionState.CONNECTING:
                self.state = ConnectionState.RECONNECTING


def _room_request(wanted: _Membership) -> Frame:
    """The create or join request (docs/protocol.md section 4.1) for C{wanted}."""
    payload: dict[str, Any] = {"chatd": NATIVE_VERSION, "username": wanted.user}
    if wanted.password:
        payload["password"] = wanted.password
    if wanted.invite:
        payload["invite"] = wanted.invite
    if wanted.native_only and wanted.operation is Operation.CREATE:
        payload["native_only"] = True
    return Frame(wanted.operation, State.REQUEST, wanted.room, json.dumps(payload).encode("utf-8"))


def _channel_from(answer: dict[str, Any], rekey_after: int) -> Channel:
    """The UDP key the server handed out in a complete frame (create, join, rekey)."""
    try:
        key = base64.b64decode(str(answer["key"]), validate=True)
        return Channel(key, int(answer["key_id"]), Direction.TO_SERVER, rekey_after=rekey_after)
    except (KeyError, ValueError, TypeError) as error:
        raise MalformedFrameError(f"the server's key is unusable: {error}") from None


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__
