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

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IReactorUDP,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import Interface

from chatd.client.core import (
    CLIENT_MAX_PAYLOAD,
    EXIT_TEXT,
    HOST_WAIT,
    RETRY_JITTER,
    UDP_CONFIRM_WAIT,
    UDP_LOST_AFTER,
    UDP_PROBE_INTERVAL,
    UDP_PROBE_MAX_INTERVAL,
    AbortControl,
    Action,
    Answer,
    CancelTimer,
    ClientCore,
    CloseControl,
    Connect,
    ConnectionState,
    CoreConfig,
    Emit,
    KeepaliveAnswered,
    Log,
    Membership,
    Reconnect,
    RoomInfo,
    SendDatagram,
    SendFrame,
    Shutdown,
    StartTimer,
)
from chatd.client.delivery import DeliveryStats
from chatd.client.events import ChatEvent
from chatd.client.servers import DEFAULT_HOST, DEFAULT_TCP_PORT, DEFAULT_UDP_PORT, ServerAddress
from chatd.client.tls import ChatTLSCreator, TrustPolicy, explain_tls_failure, tls_endpoint
from chatd.protocol.errors import (
    ChatError,
    ConnectionClosedError,
    ConnectionFailedError,
    NotInRoomError,
)
from chatd.protocol.seal import REKEY_AFTER, Channel
from chatd.protocol.wire import Frame, Operation

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_TCP_PORT",
    "DEFAULT_UDP_PORT",
    "EXIT_TEXT",
    "HOST_WAIT",
    "RETRY_JITTER",
    "UDP_CONFIRM_WAIT",
    "UDP_LOST_AFTER",
    "UDP_PROBE_INTERVAL",
    "UDP_PROBE_MAX_INTERVAL",
    "ChatClient",
    "ConnectionState",
    "IChatListener",
    "RoomInfo",
    "ServerAddress",
]

_LEVELS = {"info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


class IChatListener(Interface):
    """Told everything the client hears, as typed events (chatd.client.events)."""

    def chat_event(event: ChatEvent) -> None:  # noqa: N805 - zope declares methods without self
        """Called on the reactor thread, once per event, in order."""


def _host_of(address: IAddress) -> str:
    assert isinstance(address, IPv4Address | IPv6Address)
    return address.host


class _ControlConnection(Protocol):
    """The TCP control connection: bytes in (to the core), bytes out."""

    def __init__(self, client: ChatClient) -> None:
        self._client = client
        self.lost: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self._client._control_received(self, data)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._client._control_lost(self, reason)
        self.lost.callback(None)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> Deferred[None]:
        assert self.transport is not None
        self.transport.loseConnection()
        return self.lost

    def abort(self) -> None:
        # As the daemon's RoomProtocol.abort: TCP transports can abort, TLS
        # ones too (ISSLTransport extends ITCPTransport); by interface, not getattr.
        if ITCPTransport.providedBy(self.transport):
            ITCPTransport(self.transport).abortConnection()
        elif self.transport is not None:
            self.transport.loseConnection()


class _Datagrams(DatagramProtocol):
    noisy = False

    def __init__(self, client: ChatClient) -> None:
        self._client = client

    @override
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._client._datagram_received(datagram, (addr[0], addr[1]))


class ChatClient:
    """
    One person in one room of one chatd server: the Twisted adapter of
    L{ClientCore}. It owns the sockets, the timers and the Deferreds, feeds the
    core what arrives (with the reactor's time), and carries out the actions
    the core returns; the protocol's decisions are the core's.
    """

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
        delivery: bool = False,
        servers: Sequence[ServerAddress] = (),
        server_silent_after: float = 30.0,
    ) -> None:
        """
        C{host}, C{tcp_port} and C{udp_port} name the server; or C{servers}
        names several (the nodes of a cluster), and then those three are
        not used. The client enters on the first server that answers, in
        that order; when its connection is lost it comes back (resuming its
        membership when the server gave it a credential) to the same server
        first, then to the next, round-robin. Over TLS (C{tls}), each
        server's TCP port is its TLS port, trusted by the same policy. With
        reliable delivery, a server that answers nothing for
        C{server_silent_after} seconds is taken for dead (0: never).
        """
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self.listener = listener
        self._request_timeout = request_timeout
        self.tls = tls
        """How to trust the server when tcp_port is its TLS port; None for plain TCP."""
        self.newly_pinned: str | None = None
        """The certificate fingerprint pinned on this first use, for the user interface to show."""
        config = CoreConfig(
            request_timeout=request_timeout,
            reconnect=reconnect,
            first_retry_delay=first_retry_delay,
            max_retry_delay=max_retry_delay,
            rekey_after=rekey_after,
            host_wait=host_wait,
            retry_jitter=retry_jitter,
            udp_probe_interval=udp_probe_interval,
            udp_lost_after=udp_lost_after,
            server_silent_after=server_silent_after,
            # Read here, not in the core: a test may change this module's value.
            udp_confirm_wait=UDP_CONFIRM_WAIT,
            delivery=delivery,
        )
        self._core = ClientCore(config, jitter_source, servers or (ServerAddress(host, tcp_port, udp_port),))
        self._control: _ControlConnection | None = None
        self._udp: IListeningPort | None = None
        self._datagrams = _Datagrams(self)
        self._tls_creator: ChatTLSCreator | None = None
        self._timers: dict[str, IDelayedCall] = {}
        self._answers: dict[int, Deferred[object]] = {}
        self._udp_waiters: list[Deferred[None]] = []
        self._retry: IDelayedCall | None = None
        self._shutdowns = 0
        """How many times the sockets were shut: a batch of actions decided before the last one is not carried out."""

    # -- what the core knows, read through ----------------------------------------

    @property
    def server(self) -> ServerAddress:
        """The server in use (or tried next, while reconnecting)."""
        return self._core.servers.current

    @property
    def servers(self) -> tuple[ServerAddress, ...]:
        """Every server this client may use, in the order given."""
        return self._core.servers.servers

    @property
    def host(self) -> str:
        """The address or name of the server in use (set: that server is to be reached there)."""
        return self.server.host

    @host.setter
    def host(self, value: str) -> None:
        self._core.servers.replace_current(replace(self.server, host=value))

    @property
    def tcp_port(self) -> int:
        """The TCP (or TLS) port of the server in use (settable, as L{host})."""
        return self.server.tcp_port

    @tcp_port.setter
    def tcp_port(self, value: int) -> None:
        self._core.servers.replace_current(replace(self.server, tcp_port=value))

    @property
    def udp_port(self) -> int:
        """The UDP port of the server in use (settable, as L{host})."""
        return self.server.udp_port

    @udp_port.setter
    def udp_port(self, value: int) -> None:
        self._core.servers.replace_current(replace(self.server, udp_port=value))

    @property
    def resumed(self) -> bool:
        """The last entry into the room was a resume: the same place, the host role kept, nobody told."""
        return self._core.resumed

    @property
    def state(self) -> ConnectionState:
        return self._core.state

    @state.setter
    def state(self, value: ConnectionState) -> None:
        self._core.state = value

    @property
    def info(self) -> RoomInfo | None:
        return self._core.info

    @info.setter
    def info(self, value: RoomInfo | None) -> None:
        self._core.info = value

    @property
    def members(self) -> tuple[str, ...]:
        return self._core.members

    @members.setter
    def members(self, value: tuple[str, ...]) -> None:
        self._core.members = value

    @property
    def room_host(self) -> str | None:
        """
        The user name of the room's host (this client's own when it hosts), or
        None before entering. Not C{host}: that is the server's address.
        """
        return self._core.room_host

    @room_host.setter
    def room_host(self, value: str | None) -> None:
        self._core.room_host = value

    @property
    def udp_confirmed(self) -> bool:
        """The server has answered a keepalive: datagrams get through both ways."""
        return self._core.udp_confirmed

    @property
    def udp_lost(self) -> bool:
        """
        Keepalives went unanswered and L{UdpPathLost} was emitted; cleared,
        with L{UdpPathRestored}, when a datagram from the server arrives.
        """
        return self._core.udp_lost

    @property
    def dropped_datagrams(self) -> int:
        """Datagrams that did not authenticate, were replayed, or could not be read."""
        return self._core.dropped_datagrams

    @property
    def delivery(self) -> bool:
        """
        The server granted the "delivery" feature (docs/reliability.md) for
        this membership: L{send} returns message ids, whose states come as
        MessageStateChanged events; messages arrive in room order, with their
        sequence numbers; DeliveryPathChanged replaces UdpPathLost and
        UdpPathRestored. Asked for only when the client was made with
        C{delivery=True}.
        """
        return self._core.delivery

    @property
    def delivery_stats(self) -> DeliveryStats | None:
        """
        The member's own delivery counts (retransmissions, repaired,
        duplicates, missed, path), for /stats; None without the feature.
        """
        return self._core.delivery_stats

    @property
    def delivery_path(self) -> str | None:
        """C{"udp"} or C{"tcp"}: the way messages go with the feature; None without it."""
        return self._core.delivery_path

    @property
    def _channel(self) -> Channel | None:
        return self._core.channel

    @property
    def _server_udp(self) -> tuple[str, int] | None:
        return self._core.server_udp

    # -- carrying out the core's actions ------------------------------------------

    def _run(self, actions: list[Action], shutdowns: int | None = None) -> None:
        """
        Carry out the core's actions in order. An event or an answer calls
        out (the listener, a Deferred's callbacks), and what it calls may
        leave or shut this client at once: the rest of the batch was decided
        for a session that is over, so it stops there (C{shutdowns} is the
        count it was decided under, for a batch carried out later).
        """
        if shutdowns is None:
            shutdowns = self._shutdowns
        for index, action in enumerate(actions):
            if self._shutdowns != shutdowns:
                return
            if isinstance(action, Emit):
                if self.listener is not None:
                    self.listener.chat_event(action.event)
            elif isinstance(action, SendDatagram):
                self._write_datagram(action.data)
            elif isinstance(action, SendFrame):
                if self._control is not None:
                    self._control.write(action.data)
            elif isinstance(action, StartTimer):
                self._cancel_timer(action.name)
                self._timers[action.name] = self._clock.callLater(action.delay, self._timer_fired, action.name)
            elif isinstance(action, CancelTimer):
                self._cancel_timer(action.name)
            elif isinstance(action, Answer):
                answered = self._answers.pop(action.request, None)
                if answered is not None:
                    if action.error is not None:
                        answered.errback(action.error)
                    else:
                        answered.callback(action.result)
            elif isinstance(action, KeepaliveAnswered):
                waiters, self._udp_waiters = self._udp_waiters, []
                for waiter in waiters:
                    waiter.callback(None)
            elif isinstance(action, AbortControl):
                if self._control is not None:
                    self._control.abort()
            elif isinstance(action, Log):
                self._log.emit(_LEVELS[action.level], "{message}", message=action.message)
            elif isinstance(action, Shutdown):
                Deferred.fromCoroutine(self._shut(close_udp=True))
                # The core's own decision, with the rest of this batch: that rest still goes.
                shutdowns = self._shutdowns
            elif isinstance(action, Reconnect):
                self._cancel_retry()
                self._retry = self._clock.callLater(action.delay, self._reconnect_due)
            elif isinstance(action, Connect):
                Deferred.fromCoroutine(self._reconnect()).addErrback(
                    lambda failure: self._log.failure("while reconnecting", failure)
                )
            elif isinstance(action, CloseControl) and self._control is not None:
                # What follows (a new connection, the wait before one) comes
                # once this one is closed, and the core has heard so.
                rest = actions[index + 1 :]
                self._control.close().addCallback(self._run_after, rest, shutdowns)
                return

    def _run_after(self, _: object, actions: list[Action], shutdowns: int) -> None:
        self._run(actions, shutdowns)

    def _timer_fired(self, name: str) -> None:
        self._timers.pop(name, None)
        self._run(self._core.timer_fired(name, self._clock.seconds()))

    def _cancel_timer(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _write_datagram(self, data: bytes) -> None:
        transport = self._datagrams.transport
        server = self._core.server_udp
        if self._udp is None or server is None or transport is None:
            return
        try:
            transport.write(data, server)
        except OSError as error:
            # A lost datagram, as UDP may lose any; the keepalive tries again.
            self._log.warn("could not send a datagram: {error}", error=str(error))

    # -- entering a room ----------------------------------------------------

    def create(
        self, room: str, user: str, password: str | None = None, *, native_only: bool = False
    ) -> Deferred[RoomInfo]:
        """
        Create C{room} and become its host. C{native_only} makes a room only
        native clients can join, so that all of its datagrams are sealed; the
        server allows it over its TLS port only (docs/protocol.md section 4.8).
        """
        wanted = Membership(Operation.CREATE, room, user, password, None, native_only)
        return Deferred.fromCoroutine(self._start(wanted))

    def join(self, room: str, user: str, password: str | None = None, invite: str | None = None) -> Deferred[RoomInfo]:
        """Join C{room}, with its password or an invitation token if it needs one."""
        return Deferred.fromCoroutine(self._start(Membership(Operation.JOIN, room, user, password, invite)))

    async def _start(self, wanted: Membership) -> RoomInfo:
        self._core.start(wanted)
        try:
            return await self._enter(wanted)
        except BaseException:
            self._core.state = ConnectionState.IDLE
            await self._shut(close_udp=True)
            raise

    async def _enter(self, wanted: Membership) -> RoomInfo:
        control = await self._connect_to_any()
        self._run(self._opened(control))
        info = await self._ask_room(wanted)
        # Entered means messages can flow both ways, so wait (briefly) for the
        # server to answer that keepalive; a blocked UDP path only delays it.
        await self._udp_answer(self._core.config.udp_confirm_wait)
        return info

    async def _connect_to_any(self) -> _ControlConnection:
        """
        A control connection to the first server that answers, in the order
        given; the first server's failure when none does.
        """
        first: ConnectionFailedError | None = None
        while True:
            try:
                return await self._connect(self.server)
            except ConnectionFailedError as error:
                first = first or error
                if self._core.entry_failed() is None:
                    raise first from None
                self._log.info("{error}; trying {server}", error=str(error), server=self.server.label)

    async def _reconnect(self) -> None:
        """
        The core's L{Connect}: a new control connection, to the server the
        core has in use, for its try to come back, which it carries on.
        """
        try:
            control = await self._connect(self.server)
        except ChatError as error:
            self._run(self._core.rejoin_failed(error, self._clock.seconds()))
            return
        self._run(self._opened(control))

    def _reconnect_due(self) -> None:
        self._retry = None
        self._run(self._core.reconnect_due(self._clock.seconds()))

    def _cancel_retry(self) -> None:
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()

    async def _connect(self, server: ServerAddress) -> _ControlConnection:
        endpoint: IStreamClientEndpoint
        if self.tls is not None:
            endpoint, self._tls_creator = tls_endpoint(self._reactor, server.host, server.tcp_port, self.tls)
        else:
            endpoint = HostnameEndpoint(self._reactor, server.host, server.tcp_port, timeout=self._request_timeout)
        try:
            control = await connectProtocol(endpoint, _ControlConnection(self))
        except (ConnectError, DNSLookupError, OSError) as error:
            raise ConnectionFailedError(
                f"cannot reach chatd at {server.host} port {server.tcp_port}:"
                f" {error.__class__.__name__} ({_reason(error)})"
            ) from None
        assert isinstance(control, _ControlConnection)
        if self._core.leaving:
            # leave() was called while the connection was being made.
            await control.close()
            raise ConnectionClosedError("left before the connection was made")
        self._control = control
        return control

    def _opened(self, control: _ControlConnection) -> list[Action]:
        """The UDP port listens (opened on the first connection); the core is told of the new connection."""
        assert control.transport is not None
        server_host = _host_of(control.transport.getPeer())
        if self._udp is None:
            # The TCP connection's own local address: the same family, and the
            # source address the server knows us by.
            local = _host_of(control.transport.getHost())
            self._udp = IReactorUDP(self._reactor).listenUDP(0, self._datagrams, local, CLIENT_MAX_PAYLOAD)
        return self._core.control_opened((server_host, self.udp_port))

    async def _ask_room(self, wanted: Membership) -> RoomInfo:
        return cast(RoomInfo, await self._ask(self._core.room_frame(wanted)))

    def _ask(self, frame: Frame) -> Deferred[object]:
        """Send a request; fire with its result (see ClientCore.request)."""
        if self._control is None:
            raise NotInRoomError("not connected")
        request, actions = self._core.request(frame, self._clock.seconds())

        def cancelled(_: Deferred[object]) -> None:
            self._answers.pop(request, None)
            self._run(self._core.cancel_request(request))

        answered: Deferred[object] = Deferred(cancelled)

        def finished(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                return Failure(ConnectionClosedError("the server did not answer in time"))
            return failure

        answered.addErrback(finished)
        self._answers[request] = answered
        self._run(actions)
        return answered

    # -- what the server sends ----------------------------------------------

    def _control_received(self, control: _ControlConnection, data: bytes) -> None:
        if control is self._control:
            self._run(self._core.control_received(data, self._clock.seconds()))
            if self._core.state is ConnectionState.IN_ROOM:
                self._note_pin()

    def _note_pin(self) -> None:
        """In the room (first or again) over TLS: the certificate pinned on this first use, if it was."""
        if self._tls_creator is not None and self._tls_creator.newly_pinned:
            self.newly_pinned = self._tls_creator.newly_pinned

    def _datagram_received(self, datagram: bytes, source: tuple[str, int]) -> None:
        self._run(self._core.datagram_received(datagram, source, self._clock.seconds()))

    # -- sending --------------------------------------------------------------

    def send(self, text: str) -> int | None:
        """
        Send a chat message to the room. With the "delivery" feature: its
        message id, under which MessageStateChanged tells its states
        (sending, sent, not delivered); while reconnecting it waits to be
        sent on the rejoin. Without: None. Raises NotInRoomError or
        MessageTooLongError.
        """
        message_id, actions = self._core.post(text, self._clock.seconds())
        self._run(actions)
        return message_id

    def retry(self) -> list[int]:
        """/retry: send again, under their own ids, the messages not delivered (with the feature); their ids."""
        ids, actions = self._core.retry(self._clock.seconds())
        self._run(actions)
        return ids

    def flush(self, timeout: float = 2.0) -> Deferred[None]:
        """
        Fire once everything sent so far has reached the server: a keepalive
        goes out, and the server answers datagrams in order, so its answer
        comes after every earlier message was relayed. Fires anyway after
        C{timeout} seconds (UDP may lose either datagram).
        """
        self._run(self._core.flush(self._clock.seconds()))
        return Deferred.fromCoroutine(self._udp_answer(timeout))

    async def _udp_answer(self, timeout: float) -> None:
        answered: Deferred[None] = Deferred()
        self._udp_waiters.append(answered)
        answered.addTimeout(timeout, self._clock, onTimeoutCancel=lambda *_: None)
        await answered
        if answered in self._udp_waiters:
            self._udp_waiters.remove(answered)

    def invite(self) -> Deferred[str]:
        """Mint a single-use invitation token (the host only)."""
        return Deferred.fromCoroutine(self._invite())

    async def _invite(self) -> str:
        return cast(str, await self._ask(self._core.invite_request()))

    def refresh_members(self) -> Deferred[tuple[str, ...]]:
        """
        Ask the server who is in the room (operation 7), and keep its answer
        as L{members}. The list is kept up to date from notices anyway; this
        is for a client that doubts its own (a user's explicit question).
        """
        return Deferred.fromCoroutine(self._refresh_members())

    async def _refresh_members(self) -> tuple[str, ...]:
        return cast(tuple[str, ...], await self._ask(self._core.members_request()))

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
        self._run(self._core.close_room(self._clock.seconds()))
        return self.leave()

    def leave(self) -> Deferred[None]:
        """
        Leave the room and close both sockets. For the host this closes the
        room for everyone (the server's rule: the host's presence is the room's).
        """
        return Deferred.fromCoroutine(self._leave())

    async def _leave(self) -> None:
        self._run(self._core.leave())
        await self._shut(close_udp=True)

    async def _shut(self, close_udp: bool) -> None:
        # First: any batch of actions still being carried out (this shut came
        # from a listener it called) stops before its next action.
        self._shutdowns += 1
        self._run(self._core.stop())
        self._cancel_retry()
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
        current = control is self._control
        if current:
            self._control = None
        now = self._clock.seconds()
        self._run(self._core.control_lost(reason.getErrorMessage(), now, current=current, refusal=refusal))


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__
