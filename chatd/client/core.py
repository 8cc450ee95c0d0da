"""
The chatd client's protocol logic, sans I/O: bytes and time in, actions out.

L{ClientCore} is what L{chatd.client.chat_client.ChatClient} (its Twisted
adapter) asks about everything that is not a socket, a timer or a Deferred.
Like h11, it owns no connection and reads no clock: the adapter passes the
bytes it received and the time (C{now}, seconds on any monotonic scale), and
executes the L{Action}s it gets back, in order:

 - L{SendFrame} (bytes for the TCP control connection), L{SendDatagram}
   (a sealed datagram for the server's UDP port), L{AbortControl};
 - L{Emit} (an event for the listener), L{Log};
 - L{StartTimer} (replacing a running timer of the same name) and
   L{CancelTimer}; when a timer runs out, the adapter calls L{timer_fired};
 - L{Answer} (the result or error of a request, by its id);
 - L{KeepaliveAnswered} (the server answered a keepalive: wake C{flush});
 - L{Reconnect} (wait that long, then call L{reconnect_due}), L{Connect}
   (open a new control connection for a try to come back), L{CloseControl}
   (close the control connection, and carry out the actions after it once
   it is closed), L{Shutdown} (close everything: the session is over).

Inputs: L{start} (a create or join was asked for), L{control_opened},
L{request} / L{ask_room}, L{control_received}, L{control_lost},
L{datagram_received}, L{send_message}, L{close_room}, L{flush},
L{timer_fired}, L{reconnect_due}, L{rejoin_failed} (a L{Connect} could not
connect), L{leave}.

What is here: framing (FrameDecoder), matching answers to the request,
notices to events and the member list, sealing and opening with the UDP key
(replay checks, the previous key after a rekey), the keepalive and UDP-probe
timing and path-lost reporting, the rekey decision (and its request), and
the reconnect decision (the host creates the room again, a member waits for
it until a deadline; exponential backoff, every delay jittered from an
injected random source, whether the server is out of reach or the member
waits for the host), and the rejoin sequence itself (which create or join
goes out on which connection: the host falls back to a join when its room's
name is taken, a member asks without its password first). Nothing here
imports Twisted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from random import random as _uniform

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
)
from chatd.protocol.payloads import (
    NATIVE_VERSION,
    EnteredAnswer,
    ReceivedNotice,
    read_acknowledge_payload,
    read_entered_payload,
    read_invite_payload,
    read_members_payload,
    read_notice_payload,
    read_rekey_payload,
    room_request_payload,
)
from chatd.protocol.seal import OVERHEAD, REKEY_AFTER, Channel, Direction, peek_header
from chatd.protocol.wire import Frame, FrameDecoder, Operation, State, encode_frame

EXIT_TEXT = b"/exit"
"""The message the server reads as leaving (and, from the host, as closing the room)."""
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
Each delay between reconnect tries (while the server is out of reach, and
while waiting for the host) is shortened by a random part of up to this
fraction, so that the clients of a server that restarted, who all lost their
connection at the same moment, do not all ask at the same moments.
"""
UDP_CONFIRM_WAIT = 2.0
"""Seconds a create or join (or a rejoin) waits for the server to answer the first keepalive."""
CLIENT_MAX_PAYLOAD = 1 << 16

KEEPALIVE = "keepalive"
"""The timer of the regular keepalive."""
PROBE = "probe"
"""The timer of the next keepalive sent early because the last one is still unanswered."""
REQUEST = "request"
"""The timer of the request waiting for its answer."""
CONFIRM = "confirm"
"""The timer of a rejoin's wait for the first keepalive's answer, before it says Reconnected."""

_ANSWERED_WITH_COMPLETE = frozenset(
    {Operation.CREATE, Operation.JOIN, Operation.INVITE, Operation.REKEY, Operation.MEMBERS}
)
"""Requests whose success acknowledge is followed by a complete frame."""


# -- what the client knows -----------------------------------------------------


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
class Membership:
    """What the client asked for, so it can ask again after a reconnect."""

    operation: Operation
    room: str
    user: str
    password: str | None
    invite: str | None
    native_only: bool = False
    """A create of a room only native clients may join (docs/protocol.md 4.8; over TLS only)."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """The client's tunables (ChatClient's keyword arguments of the same names)."""

    request_timeout: float = 10.0
    reconnect: bool = True
    first_retry_delay: float = 0.5
    max_retry_delay: float = 30.0
    rekey_after: int = REKEY_AFTER
    host_wait: float = HOST_WAIT
    retry_jitter: float = RETRY_JITTER
    udp_probe_interval: float = UDP_PROBE_INTERVAL
    udp_lost_after: float = UDP_LOST_AFTER
    udp_confirm_wait: float = UDP_CONFIRM_WAIT


# -- actions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendFrame:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendDatagram:
    data: bytes


@dataclass(frozen=True, slots=True)
class Emit:
    event: ChatEvent


@dataclass(frozen=True, slots=True)
class StartTimer:
    name: str
    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Answer:
    """The end of request C{request}: its C{result} (see L{ClientCore.request}), or C{error}."""

    request: int
    result: object = None
    error: ChatError | None = None


@dataclass(frozen=True, slots=True)
class KeepaliveAnswered:
    pass


@dataclass(frozen=True, slots=True)
class AbortControl:
    """The server's stream is unreadable: drop the control connection at once."""


@dataclass(frozen=True, slots=True)
class CloseControl:
    """Close the control connection; the actions after this one are carried out once it is closed."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Wait C{delay} seconds, then call L{ClientCore.reconnect_due} (unless the session ended meanwhile)."""

    delay: float


@dataclass(frozen=True, slots=True)
class Connect:
    """
    Open a new control connection (and the UDP port, if it is not open yet),
    then report it with L{ClientCore.control_opened}, or the failure (a
    ChatError) with L{ClientCore.rejoin_failed}.
    """


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The session is over: stop every timer and close both sockets."""


@dataclass(frozen=True, slots=True)
class Log:
    level: str
    """'info', 'warn' or 'error'."""
    message: str


Action = (
    SendFrame
    | SendDatagram
    | Emit
    | StartTimer
    | CancelTimer
    | Answer
    | KeepaliveAnswered
    | AbortControl
    | CloseControl
    | Reconnect
    | Connect
    | Shutdown
    | Log
)


# -- pure helpers ---------------------------------------------------------------------


def backoff(
    attempt: int,
    first: float,
    cap: float,
    jitter: float = 0.0,
    random: Callable[[], float] | None = None,
) -> float:
    """
    Exponential backoff: C{first} doubled for each attempt after the first,
    at most C{cap}; shortened by up to the fraction C{jitter} of itself,
    drawn from C{random} (uniform in [0, 1)), when both are given, and then
    rounded to the hundredth of a second (so that "reconnecting in 0.43 s"
    reads well); a delay under 0.01 s is not rounded away to nothing.
    """
    delay = min(cap, first * 2.0 ** (attempt - 1))
    if jitter and random is not None:
        jittered = delay * (1.0 - jitter * random())
        delay = max(round(jittered, 2), min(delay, 0.01))
    return delay


def room_request(wanted: Membership) -> Frame:
    """The create or join request (docs/protocol.md section 4.1) for C{wanted}."""
    native_only = wanted.native_only and wanted.operation is Operation.CREATE
    payload = room_request_payload(wanted.user, wanted.password, wanted.invite, native_only, NATIVE_VERSION)
    return Frame(wanted.operation, State.REQUEST, wanted.room, payload)


def channel_from(key: tuple[bytes, int], rekey_after: int) -> Channel:
    """Our side of the UDP key the server handed out (create, join, rekey)."""
    secret, key_id = key
    try:
        return Channel(secret, key_id, Direction.TO_SERVER, rekey_after=rekey_after)
    except (ValueError, TypeError) as error:
        raise MalformedFrameError(f"the server's key is unusable: {error}") from None


class _Purpose(Enum):
    """Who asked, and so where a request's answer goes."""

    CALLER = "caller"
    """The adapter's caller: the answer is an L{Answer} action."""
    REKEY = "rekey"
    """The core, for a fresh UDP key: no Answer; a failure is logged."""
    REJOIN = "rejoin"
    """The core, coming back after the connection was lost: no Answer; the rejoin sequence goes on."""


class RejoinStep(Enum):
    """Where a try to come back to the room is (L{ClientCore.reconnect_due})."""

    CREATE = "create"
    """The host creates its room again."""
    PROBE = "probe"
    """A member joins without its password first (see L{ClientCore.rejoin_probe})."""
    JOIN = "join"
    """The room asked for the password: the member joins with it, on the same connection."""
    CONFIRM = "confirm"
    """In the room again: waiting, briefly, for the first keepalive's answer before saying so."""


@dataclass(slots=True)
class _Pending:
    request: int
    operation: Operation
    purpose: _Purpose
    frames: list[Frame] = field(default_factory=list)


class ClientCore:
    """One person in one room of one chatd server, without the I/O."""

    def __init__(self, config: CoreConfig | None = None, random: Callable[[], float] | None = None) -> None:
        self.config = config or CoreConfig()
        self._random: Callable[[], float] = random if random is not None else _uniform
        """Uniform in [0, 1): random.random, or a test's fixed numbers."""
        self.state = ConnectionState.IDLE
        self.info: RoomInfo | None = None
        self.members: tuple[str, ...] = ()
        self.room_host: str | None = None
        self.udp_confirmed = False
        self.udp_lost = False
        self.dropped_datagrams = 0
        self.wanted: Membership | None = None
        self.room_over = False
        self.leaving = False
        self.server_udp: tuple[str, int] | None = None
        self.channel: Channel | None = None
        self.previous_channel: Channel | None = None
        """The key before a rekey: the server's copies sealed under it may still arrive."""
        self._rekeying = False
        self._decoder = FrameDecoder(CLIENT_MAX_PAYLOAD)
        self._pending: _Pending | None = None
        self._requests = 0
        self._timers: set[str] = set()
        self._keepalive_started = 0.0
        self._keepalives = 0
        self._unanswered_since: float | None = None
        """When the oldest keepalive not answered yet went out; None when all were answered."""
        self._probes_sent = 0
        self._heard_at = 0.0
        """When the last authenticated datagram from the server arrived (or the room was entered)."""
        self._attempt = 0
        self._waiting_since: float | None = None
        """When this member first found the room gone; None while the server is out of reach."""
        self._tries_waiting = 0
        self.rejoin: RejoinStep | None = None
        """Where the current try to come back is; None when none is under way."""

    # -- timers --------------------------------------------------------------------

    def _start_timer(self, name: str, delay: float) -> StartTimer:
        self._timers.add(name)
        return StartTimer(name, delay)

    def _cancel_timer(self, name: str) -> list[Action]:
        if name not in self._timers:
            return []
        self._timers.discard(name)
        return [CancelTimer(name)]

    def timer_fired(self, name: str, now: float) -> list[Action]:
        """Timer C{name} ran out (the adapter forgets it; so does the core)."""
        if name not in self._timers:
            return []
        self._timers.discard(name)
        if name == KEEPALIVE:
            return self._keepalive_due(now)
        if name == PROBE:
            return self._probe_due(now)
        if name == REQUEST:
            return self._fail_request(ConnectionClosedError("the server did not answer in time"), now)
        if name == CONFIRM:
            return self._rejoin_confirmed()
        return []

    # -- entering ----------------------------------------------------------------------

    def start(self, wanted: Membership) -> None:
        """A create or join is asked for. Raises ClientError when already in (or entering) a room."""
        if self.state in (ConnectionState.CONNECTING, ConnectionState.IN_ROOM, ConnectionState.RECONNECTING):
            raise ClientError("this client is already in a room; leave it first")
        self.wanted = wanted
        self.room_over = self.leaving = False
        self.udp_lost = False
        self.room_host = None
        self._attempt = 0
        self._waiting_since = None
        self._tries_waiting = 0
        self.rejoin = None
        self.state = ConnectionState.CONNECTING

    def control_opened(self, server_udp: tuple[str, int]) -> list[Action]:
        """
        A new control connection is up; datagrams are to and from
        C{server_udp}. During a try to come back (L{Connect}), the core asks
        for the room at once; otherwise the adapter's caller asks.
        """
        self._decoder = FrameDecoder(CLIENT_MAX_PAYLOAD)
        self.server_udp = server_udp
        if self.state is ConnectionState.CONNECTING and self.rejoin in (RejoinStep.CREATE, RejoinStep.PROBE):
            return self._ask_rejoin(self.rejoin)
        return []

    def request(self, frame: Frame, now: float) -> tuple[int, list[Action]]:
        """
        Send a request; its L{Answer} comes later with the same id. Its
        result: the L{RoomInfo} for a create or join (the core has entered the
        room by then), the member tuple for MEMBERS, the token for INVITE, and
        the answer's frames otherwise. Raises ClientError while another waits.
        """
        if self._pending is not None:
            raise ClientError("another request is waiting for its answer")
        return self._ask(frame, _Purpose.CALLER)

    def _ask(self, frame: Frame, purpose: _Purpose) -> tuple[int, list[Action]]:
        self._requests += 1
        self._pending = _Pending(self._requests, frame.operation, purpose)
        # The timer first: the answer may come before the adapter's next action.
        return self._requests, [
            self._start_timer(REQUEST, self.config.request_timeout),
            SendFrame(encode_frame(frame)),
        ]

    def ask_room(self, wanted: Membership, now: float) -> tuple[int, list[Action]]:
        """Send the create or join request for C{wanted}."""
        return self.request(room_request(wanted), now)

    def invite_request(self) -> Frame:
        """The invite request; raises NotInRoomError or NotPermittedError."""
        if self.state is not ConnectionState.IN_ROOM or self.info is None:
            raise NotInRoomError("not in a room")
        if not self.info.host:
            raise NotPermittedError("only the host can invite")
        return Frame(Operation.INVITE, State.REQUEST, self.info.room, b"")

    def members_request(self) -> Frame:
        """The member-list request; raises NotInRoomError."""
        if self.state is not ConnectionState.IN_ROOM or self.info is None:
            raise NotInRoomError("not in a room")
        return Frame(Operation.MEMBERS, State.REQUEST, self.info.room, b"")

    def cancel_request(self, request: int) -> list[Action]:
        """The caller gave up on request C{request}: its answer, should it come, is ignored."""
        if self._pending is None or self._pending.request != request:
            return []
        self._pending = None
        return self._cancel_timer(REQUEST)

    # -- the control connection -------------------------------------------------------

    def control_received(self, data: bytes, now: float) -> list[Action]:
        """Bytes from the control connection."""
        self._decoder.feed(data)
        actions: list[Action] = []
        try:
            while (item := self._decoder.next()) is not None:
                assert isinstance(item, Frame)
                actions += self._frame_received(item, now)
        except ProtocolError as error:
            # The server's stream is unreadable: nothing more on it can be trusted.
            actions += [Log("error", f"unreadable frame from the server: {error}"), AbortControl()]
        return actions

    def _frame_received(self, frame: Frame, now: float) -> list[Action]:
        if frame.operation is Operation.NOTICE:
            return self._notice(read_notice_payload(frame.payload))
        pending = self._pending
        if pending is None:
            return [Log("warn", f"unexpected frame from the server: {frame.operation.name}")]
        pending.frames.append(frame)
        if frame.state is State.ACKNOWLEDGE:
            refusal = read_acknowledge_payload(frame.payload).refusal
            if refusal is not None:
                return self._fail_request(refusal, now)
            if pending.operation not in _ANSWERED_WITH_COMPLETE:
                # These answer with a complete frame after the acknowledge; the others end here.
                return self._finish_request(now)
        elif frame.state is State.COMPLETE:
            return self._finish_request(now)
        return []

    def _fail_request(self, error: ChatError, now: float) -> list[Action]:
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        return [*self._cancel_timer(REQUEST), *self._failed(pending, error, now)]

    def _failed(self, pending: _Pending, error: ChatError, now: float) -> list[Action]:
        """Request C{pending} failed (refused, unreadable, unanswered): tell whoever asked."""
        if pending.purpose is _Purpose.REKEY:
            self._rekeying = False
            return [Log("warn", f"could not replace the UDP key: {error}")]
        if pending.purpose is _Purpose.REJOIN:
            return self._rejoin_refused(error, now)
        return [Answer(pending.request, error=error)]

    def _finish_request(self, now: float) -> list[Action]:
        pending, self._pending = self._pending, None
        assert pending is not None
        actions = self._cancel_timer(REQUEST)
        frames = pending.frames
        try:
            if pending.operation is Operation.REKEY:
                self._rekeying = False
                self.previous_channel = self.channel
                self.channel = channel_from(read_rekey_payload(frames[-1].payload), self.config.rekey_after)
                return actions
            result: object = frames
            if pending.operation in (Operation.CREATE, Operation.JOIN):
                info, entered = self._entered(read_entered_payload(frames[-1].payload), now)
                actions += entered
                if pending.purpose is _Purpose.REJOIN:
                    return [*actions, *self._rejoin_entered()]
                result = info
            elif pending.operation is Operation.MEMBERS:
                result = self._members_answered(*read_members_payload(frames[-1].payload))
            elif pending.operation is Operation.INVITE:
                result = read_invite_payload(frames[-1].payload)
        except ProtocolError as error:
            return [*actions, *self._failed(pending, error, now)]
        except (KeyError, TypeError, ValueError) as error:
            return [*actions, *self._failed(pending, MalformedFrameError(f"unusable answer: {error}"), now)]
        return [*actions, Answer(pending.request, result)]

    def _entered(self, answer: EnteredAnswer, now: float) -> tuple[RoomInfo, list[Action]]:
        """Take the create or join answer, and start the keepalives."""
        info = RoomInfo(
            room=answer.room,
            user=answer.user,
            host=answer.host,
            members=answer.members,
            idle_timeout=answer.idle_timeout,
            keepalive_interval=answer.keepalive_interval,
        )
        self.channel = channel_from((answer.key, answer.key_id), self.config.rekey_after)
        self.info = info
        self.previous_channel = None
        self.members = info.members
        # The join answer names no host, but lists the members in the order
        # they entered, host first (docs/protocol.md section 4.2), and a room
        # never outlives its host (section 6.4).
        self.room_host = info.user if info.host else (self.members[0] if self.members else None)
        self.udp_confirmed = False
        self._heard_at = now
        self._unanswered_since = None
        self._probes_sent = 0
        self.state = ConnectionState.IN_ROOM
        self._keepalive_started = now
        self._keepalives = 0
        # At once: the first datagram is what registers our UDP address.
        return info, self._keepalive_due(now)

    def _members_answered(self, members: tuple[str, ...], host: str | None) -> tuple[str, ...]:
        self.members = members
        if host is not None:
            self.room_host = host
        return self.members

    def _notice(self, notice: ReceivedNotice) -> list[Action]:
        me = self.info.user if self.info is not None else ""
        # Notices carry the change, not the list: we keep the list ourselves.
        event = event_from_notice(notice, me, self.members)
        if event is None:
            return []
        if isinstance(event, MemberJoined | MemberLeft):
            self.members = event.members
        elif isinstance(event, RoomClosed | RemovedForInactivity):
            self.room_over = True
        return [Emit(event)]

    def control_lost(
        self, reason: str, now: float, *, current: bool = True, refusal: ChatError | None = None
    ) -> list[Action]:
        """
        A control connection closed, for C{reason} (its words); C{refusal} is
        the TLS failure that explains it, if any. C{current} is False for an
        earlier connection (only its request, if any, fails).
        """
        actions = self._fail_request(refusal or ConnectionClosedError("the server closed the connection"), now)
        if not current:
            return actions
        if self.rejoin is RejoinStep.CONFIRM:
            # Back in the room, and out again before it was said: no Reconnected.
            self.rejoin = None
            actions += self._cancel_timer(CONFIRM)
        # Unanswered keepalives say nothing about UDP while TCP is down too;
        # a path reported lost stays so until a datagram arrives again.
        actions += self._stop_keepalives()
        if self.leaving or self.state is not ConnectionState.IN_ROOM:
            return actions
        if self.room_over or isinstance(refusal, CertificateError):
            # The room ended (closed by its host, or we were removed), or the
            # server is not the one we trust: there is nothing to come back to.
            self.state = ConnectionState.CLOSED
            return [*actions, Shutdown()]
        if not self.config.reconnect:
            self.state = ConnectionState.CLOSED
            return [*actions, Emit(ConnectionLost(reason, False)), Shutdown()]
        self.state = ConnectionState.RECONNECTING
        self._attempt = 0
        self._waiting_since = None
        self._tries_waiting = 0
        return [*actions, Emit(ConnectionLost(reason, True)), *self._next_try(now)]

    def _stop_keepalives(self) -> list[Action]:
        self._unanswered_since = None
        return [*self._cancel_timer(KEEPALIVE), *self._cancel_timer(PROBE)]

    # -- reconnecting ---------------------------------------------------------------------

    @property
    def reconnecting(self) -> bool:
        return self.state is ConnectionState.RECONNECTING

    def rejoin_as_host(self) -> bool:
        """
        After a server restart the room is gone, and only the member that
        hosted it creates it again (with the same password, and native-only
        again if it was); the others join and find no room until it is back.
        """
        wanted = self.wanted
        assert wanted is not None
        return self.info.host if self.info is not None else wanted.operation is Operation.CREATE

    def rejoin_membership(self) -> Membership:
        """
        What a member asks for again. An invitation was spent on the first
        join: a member who came in by one can only come back to a room
        without a password.
        """
        wanted = self.wanted
        assert wanted is not None
        return Membership(Operation.JOIN, wanted.room, wanted.user, wanted.password, None)

    def rejoin_create(self) -> Membership:
        """What the host asks for again: the same room, created anew."""
        wanted = self.wanted
        assert wanted is not None
        return Membership(Operation.CREATE, wanted.room, wanted.user, wanted.password, None, wanted.native_only)

    def rejoin_probe(self) -> Membership:
        """
        What a member asks for first when it comes back: its join without
        the password. A join that carries a password spends one of the few
        attempts a minute the server allows an address (docs/protocol.md
        section 5.1), and a member waiting for its host to reopen the room
        asks again and again, from the same address as the host's create
        (which spends one too). Without the password, a room that is not back
        yet costs nothing; a password room answers "invalid password" at
        once, without hashing, and the real join follows on the same
        connection (that refusal does not close it).
        """
        wanted = self.rejoin_membership()
        return Membership(Operation.JOIN, wanted.room, wanted.user, None, None)

    def reconnect_due(self, now: float) -> list[Action]:
        """
        The wait of a L{Reconnect} ran out: try to come back. The host
        creates the room again; a member joins (L{rejoin_probe}), and finds
        no room (RoomNotFoundError) until the host is back. The request goes
        out once the connection asked for (L{Connect}) is open.
        """
        if not self.reconnecting:
            return []
        self.state = ConnectionState.CONNECTING
        self.rejoin = RejoinStep.CREATE if self.rejoin_as_host() else RejoinStep.PROBE
        return [Connect()]

    def _ask_rejoin(self, step: RejoinStep) -> list[Action]:
        self.rejoin = step
        if step is RejoinStep.CREATE:
            wanted = self.rejoin_create()
        elif step is RejoinStep.PROBE:
            wanted = self.rejoin_probe()
        else:
            wanted = self.rejoin_membership()
        _, actions = self._ask(room_request(wanted), _Purpose.REJOIN)
        return actions

    def _rejoin_refused(self, error: ChatError, now: float) -> list[Action]:
        """The server refused (or did not answer) a rejoin's create or join: the next step, or the next try."""
        step = self.rejoin
        if step is RejoinStep.CREATE and isinstance(error, RoomExistsError):
            # The host finds its room's name taken (by a client that is not
            # this library, or a stranger): it joins that room as a member,
            # on a new connection.
            self.rejoin = RejoinStep.PROBE
            return [CloseControl(), Connect()]
        wanted = self.wanted
        has_password = wanted is not None and wanted.password is not None
        if step is RejoinStep.PROBE and isinstance(error, InvalidPasswordError) and has_password:
            return self._ask_rejoin(RejoinStep.JOIN)
        return self.rejoin_failed(error, now)

    def _rejoin_entered(self) -> list[Action]:
        """
        In the room again (the keepalives started): wait, briefly, for the
        server to answer the first keepalive before saying so, as a create
        or join does; a blocked UDP path only delays it.
        """
        self.rejoin = RejoinStep.CONFIRM
        return [self._start_timer(CONFIRM, self.config.udp_confirm_wait)]

    def _rejoin_confirmed(self) -> list[Action]:
        """The first keepalive was answered, or the wait for it ran out: the room is entered again."""
        if self.rejoin is not RejoinStep.CONFIRM:
            return []
        self.rejoin = None
        return [*self._cancel_timer(CONFIRM), *self.rejoined()]

    def _next_try(self, now: float) -> list[Action]:
        """The wait before the next try, and the event that says so."""
        self._attempt += 1
        config = self.config
        if self._waiting_since is None:
            # Jittered too: every client of a restarted server lost it at the
            # same moment, and should not all come back in the same instant.
            delay = backoff(
                self._attempt, config.first_retry_delay, config.max_retry_delay, config.retry_jitter, self._random
            )
            return [Emit(Reconnecting(self._attempt, delay)), Reconnect(delay)]
        # The server is back: the backoff that grew while it was down starts
        # again, so that a host's return is noticed soon.
        self._tries_waiting += 1
        gives_up_in = max(0.0, self._waiting_since + config.host_wait - now)
        jittered = backoff(
            self._tries_waiting, config.first_retry_delay, config.max_retry_delay, config.retry_jitter, self._random
        )
        delay = min(jittered, gives_up_in)
        assert self.wanted is not None
        event = WaitingForHost(self.wanted.room, self.room_host, self._attempt, delay, gives_up_in)
        return [Emit(event), Reconnect(delay)]

    def rejoin_failed(self, error: ChatError, now: float) -> list[Action]:
        """
        A try to come back failed with C{error} (the adapter's L{Connect}
        could not connect, or the server refused). Either give up (the
        actions end with L{Shutdown}) or close the control connection and try
        again (they end with L{Reconnect}).
        """
        if self.rejoin is not None:
            self.rejoin = None
            if self.state is ConnectionState.CONNECTING:
                self.state = ConnectionState.RECONNECTING
        if not self.reconnecting:
            return []
        attempt = self._attempt
        if isinstance(error, CertificateError):
            # The server is not the one we trust (its certificate changed, or
            # someone is in the middle): retrying cannot help.
            return [Log("warn", f"reconnect attempt {attempt} refused: {error}"), *self._give_up(str(error))]
        if isinstance(error, RoomNotFoundError):
            if self._waiting_since is None:
                self._waiting_since, self._tries_waiting = now, 0
            elif now >= self._waiting_since + self.config.host_wait:
                return self._give_up(self._host_did_not_return())
            return [CloseControl(), *self._next_try(now)]
        if isinstance(error, InvalidPasswordError) and self.wanted is not None and self.wanted.invite is not None:
            # The invitation was spent on the first join and the room has a
            # password: no number of tries can get back in.
            return self._give_up(
                f"room {self.wanted.room} needs its password, and the invitation was used up"
                " on the first join; ask its host for a new one"
            )
        if isinstance(error, ConnectionFailedError | ConnectionClosedError):
            # The server is out of reach again: that is not the host's delay.
            self._waiting_since = None
        return [Log("info", f"reconnect attempt {attempt} failed: {error}"), CloseControl(), *self._next_try(now)]

    def rejoined(self) -> list[Action]:
        """The room was entered again."""
        assert self.info is not None
        return [Emit(Reconnected(self.info.room, self.info.members, self.room_host))]

    def _host_did_not_return(self) -> str:
        assert self.wanted is not None
        host = self.room_host if self.room_host is not None else "its host"
        return (
            f"room {self.wanted.room} is gone since the server restarted, and {host}"
            f" did not reopen it within {self.config.host_wait:g} s"
        )

    def _give_up(self, reason: str) -> list[Action]:
        self.state = ConnectionState.CLOSED
        return [Emit(ConnectionLost(reason, will_reconnect=False)), Shutdown()]

    # -- leaving ------------------------------------------------------------------------------

    def leave(self) -> list[Action]:
        """Leaving (or closed): stop everything that would send."""
        self.leaving = True
        self.state = ConnectionState.CLOSED
        return self.stop()

    def stop(self) -> list[Action]:
        """Stop the keepalives, and a rejoin's wait for UDP (the sockets are closing)."""
        self.rejoin = None
        return [*self._stop_keepalives(), *self._cancel_timer(CONFIRM)]

    def close_room(self, now: float) -> list[Action]:
        """The host's C{/exit}; raises NotInRoomError, or NotPermittedError when not the host."""
        if self.state is not ConnectionState.IN_ROOM or self.info is None:
            raise NotInRoomError("not in a room")
        if self.room_host != self.info.user:
            raise NotPermittedError("only the room's host can close it")
        return self._send_datagram(FrameType.MESSAGE, EXIT_TEXT, now)

    # -- UDP -------------------------------------------------------------------------------------

    def send_message(self, text: str, now: float) -> list[Action]:
        """A chat message to the room. Raises NotInRoomError or MessageTooLongError."""
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
        return self._send_datagram(FrameType.MESSAGE, body, now)

    def flush(self, now: float) -> list[Action]:
        """A keepalive now, whose answer (L{KeepaliveAnswered}) comes after everything sent before."""
        return self._send_keepalive(now)

    def _send_datagram(self, frame_type: FrameType, body: bytes, now: float) -> list[Action]:
        channel = self.channel
        if self.server_udp is None or channel is None:
            return []
        actions: list[Action] = [SendDatagram(channel.seal(frame_type, body))]
        if channel.needs_rekey and not self._rekeying and self._pending is None and self.info is not None:
            # Ask for a fresh key before the counter runs out; the server stops accepting the old one.
            self._rekeying = True
            _, asked = self._ask(Frame(Operation.REKEY, State.REQUEST, self.info.room, b""), _Purpose.REKEY)
            actions += asked
        return actions

    def _keepalive_due(self, now: float) -> list[Action]:
        """The regular keepalive, and the timer of the next (on the schedule it started on, as LoopingCall)."""
        assert self.info is not None
        interval = self.info.keepalive_interval
        self._keepalives = max(self._keepalives + 1, int((now - self._keepalive_started) / interval) + 1)
        next_at = self._keepalive_started + self._keepalives * interval
        return [*self._send_keepalive(now), self._start_timer(KEEPALIVE, max(0.0, next_at - now))]

    def _send_keepalive(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.state is ConnectionState.IN_ROOM:
            # Counted as unanswered before it goes, in case the answer is quick.
            if self._unanswered_since is None:
                self._unanswered_since = now
            if PROBE not in self._timers:
                actions.append(self._start_timer(PROBE, self._probe_delay()))
        return [*actions, *self._send_datagram(FrameType.KEEPALIVE, b"", now)]

    def _probe_delay(self) -> float:
        """
        Seconds before the next early keepalive: the probe interval while in
        doubt; once the path is reported lost, doubling up to a bound, so a
        path that stays dead costs few datagrams and one that comes back is
        noticed within UDP_PROBE_MAX_INTERVAL.
        """
        interval = self.config.udp_probe_interval
        if not self.udp_lost:
            return interval
        slower = interval * 2.0 ** max(0, self._probes_sent - 2)
        return min(slower, max(UDP_PROBE_MAX_INTERVAL, interval))

    def _probe_due(self, now: float) -> list[Action]:
        """A keepalive is still unanswered: say so once it has been too long, and try again."""
        if self.state is not ConnectionState.IN_ROOM or self._unanswered_since is None:
            return []
        actions: list[Action] = []
        if not self.udp_lost and now - self._unanswered_since >= self.config.udp_lost_after:
            self.udp_lost = True
            actions.append(Emit(UdpPathLost(round(now - self._heard_at, 3))))
        self._probes_sent += 1
        return [*actions, *self._send_keepalive(now)]

    def datagram_received(self, data: bytes, source: tuple[str, int], now: float) -> list[Action]:
        """A datagram on the client's UDP port, from C{source}."""
        current = self.channel
        if source != self.server_udp or current is None:
            return []
        actions: list[Action] = []
        try:
            header = peek_header(data)
            previous = self.previous_channel
            channel = previous if previous is not None and header.key_id == previous.key_id else current
            frame_type, body = channel.open(data, header)
            if channel is current:
                self.previous_channel = None
            actions += self._udp_heard(now)
            if frame_type == FrameType.RELAY:
                relayed = decode_relay_body(body)
                actions.append(Emit(MessageReceived(relayed.sender, relayed.text, relayed.timestamp_ms / 1000)))
            elif frame_type == FrameType.NOTICE:
                actions += self._notice(read_notice_payload(body))
            elif frame_type == FrameType.KEEPALIVE_ACK:
                self.udp_confirmed = True
                actions.append(KeepaliveAnswered())
                actions += self._rejoin_confirmed()
        except ProtocolError:
            # Forged, replayed, damaged, or under a key just replaced: dropped,
            # as the server drops such datagrams, and never answered.
            self.dropped_datagrams += 1
        return actions

    def _udp_heard(self, now: float) -> list[Action]:
        """An authenticated datagram from the server arrived: the path works (again)."""
        self._heard_at = now
        self._unanswered_since = None
        self._probes_sent = 0
        actions = self._cancel_timer(PROBE)
        if self.udp_lost:
            self.udp_lost = False
            actions.append(Emit(UdpPathRestored()))
        return actions
