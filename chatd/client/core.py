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

The core is made of parts, each a module of its own:

 - chatd.client.actions: the values and actions above, the tunables, and
   the bookkeeping of timers;
 - chatd.client.requests: framing, one request at a time, and its answer
   matched and read (refusals as the errors that name them);
 - chatd.client.udp_path: the UDP key (replay checks, the previous key
   after a rekey), sealing and opening, the keepalive and UDP-probe timing
   and path-lost reporting;
 - chatd.client.reliable: the "delivery" feature (docs/reliability.md):
   acknowledged sends, the room's order and repairs, the TCP fallback
   (operation 8), with its one timer;
 - chatd.client.reconnect: the rejoin sequence (the host creates the room
   again and falls back to a join when its name is taken; a member asks
   without its password first) and the retry policy (exponential backoff,
   every delay jittered from an injected random source; a member waits for
   its host until a deadline).

What is here: what the parts' results mean for the membership (entering,
the member list and host, notices to events, the rekey decision, when to
reconnect), and the order of things. Nothing here imports Twisted.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from random import random as _uniform

from chatd.client.actions import (
    CONFIRM,
    DELIVERY,
    HOST_WAIT,
    KEEPALIVE,
    PROBE,
    REQUEST,
    RETRY_JITTER,
    UDP_CONFIRM_WAIT,
    UDP_LOST_AFTER,
    UDP_PROBE_INTERVAL,
    AbortControl,
    Action,
    Answer,
    CancelTimer,
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
    Timers,
)
from chatd.client.delivery import DeliveryStats
from chatd.client.events import (
    ConnectionLost,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Reconnected,
    RemovedForInactivity,
    RoomClosed,
    event_from_notice,
)
from chatd.client.reconnect import (
    GiveUp,
    Reconnection,
    RejoinStep,
    backoff,
    create_again,
    join_again,
    probe,
    request_for,
    step_after,
)
from chatd.client.reliable import DeliverySession, OverTcp, by_udp
from chatd.client.requests import CLIENT_MAX_PAYLOAD, Failed, Outcome, Purpose, Requests, room_request
from chatd.client.servers import DEFAULT_SERVER, ServerAddress, ServerList
from chatd.client.udp_path import UDP_PROBE_MAX_INTERVAL, UdpPath, channel_from, message_body
from chatd.protocol.datagrams import FrameType, decode_relay_body
from chatd.protocol.errors import (
    CertificateError,
    ChatError,
    ClientError,
    ConnectionClosedError,
    InvalidPasswordError,
    NotInRoomError,
    NotPermittedError,
    ProtocolError,
    RoomNotFoundError,
)
from chatd.protocol.payloads import DELIVERY as DELIVERY_FEATURE
from chatd.protocol.payloads import EnteredAnswer, ReceivedNotice, read_notice_payload
from chatd.protocol.seal import Channel
from chatd.protocol.wire import Frame, Operation, State, encode_frame

__all__ = [
    "CLIENT_MAX_PAYLOAD",
    "CONFIRM",
    "EXIT_TEXT",
    "HOST_WAIT",
    "KEEPALIVE",
    "PROBE",
    "REQUEST",
    "RETRY_JITTER",
    "UDP_CONFIRM_WAIT",
    "UDP_LOST_AFTER",
    "UDP_PROBE_INTERVAL",
    "UDP_PROBE_MAX_INTERVAL",
    "AbortControl",
    "Action",
    "Answer",
    "CancelTimer",
    "ClientCore",
    "CloseControl",
    "Connect",
    "ConnectionState",
    "CoreConfig",
    "Emit",
    "KeepaliveAnswered",
    "Log",
    "Membership",
    "Reconnect",
    "RejoinStep",
    "RoomInfo",
    "SendDatagram",
    "SendFrame",
    "Shutdown",
    "StartTimer",
    "backoff",
    "room_request",
]

_STAYING = frozenset({ConnectionState.IN_ROOM, ConnectionState.RECONNECTING, ConnectionState.CONNECTING})
"""The states of a membership that goes on: in the room, or on the way back to it."""

EXIT_TEXT = b"/exit"
"""The message the server reads as leaving (and, from the host, as closing the room)."""


DELIVERY_KEEPALIVE = 10.0
"""With reliable delivery, the longest wait between keepalives (docs/reliability.md, 4), whatever the server asks."""


class ClientCore:
    """One person in one room of one chatd server, without the I/O."""

    def __init__(
        self,
        config: CoreConfig | None = None,
        random: Callable[[], float] | None = None,
        servers: Iterable[ServerAddress] = (DEFAULT_SERVER,),
    ) -> None:
        self.config = config or CoreConfig()
        self.servers = ServerList(servers)
        """
        The servers this client may use, and the one in use
        (chatd.client.servers): a session enters on the first that answers;
        a try to come back goes to the same one first, then round-robin.
        """
        self._entry_failures = 0
        """Servers that could not be reached by the first create or join of this session."""
        self.resume_credential: str | None = None
        """
        The resume credential of the last create or join answer (the
        server's, single use), which a try to come back shows first to take
        this membership back (docs/protocol.md 4.1); None without one.
        """
        self.resumed = False
        """The last entry into the room was a resume (the same place, the host role kept)."""
        self._last_heard = 0.0
        """When the server was last heard from: a frame on the control connection, or an authentic datagram."""
        self.state = ConnectionState.IDLE
        self.info: RoomInfo | None = None
        self.members: tuple[str, ...] = ()
        self.room_host: str | None = None
        self.wanted: Membership | None = None
        self.room_over = False
        self.leaving = False
        self.rejoin: RejoinStep | None = None
        """Where the current try to come back is; None when none is under way."""
        self._rekeying = False
        self._timers = Timers()
        self._requests = Requests(self.config, self._timers)
        self._path = UdpPath(self.config, self._timers, self._send_datagram, self._in_room)
        # Uniform in [0, 1): random.random, or a test's fixed numbers.
        self._reconnection = Reconnection(self.config, random if random is not None else _uniform)
        self.client_id = secrets.token_urlsafe(12)
        """
        This client's own id (16 URL-safe characters), sent with every create
        and join for the "delivery" feature: the same across reconnections,
        so that the server knows a message sent again after a rejoin.
        """
        self._delivery = DeliverySession(self._timers, self._transmit)

    # -- what the parts know, read through -----------------------------------------------

    @property
    def server_udp(self) -> tuple[str, int] | None:
        return self._path.server_udp

    @property
    def channel(self) -> Channel | None:
        return self._path.channel

    @property
    def udp_confirmed(self) -> bool:
        return self._path.confirmed

    @property
    def udp_lost(self) -> bool:
        return self._path.lost

    @property
    def dropped_datagrams(self) -> int:
        return self._path.dropped

    @property
    def delivery(self) -> bool:
        """The server granted the "delivery" feature for the current membership."""
        return self._delivery.granted

    @property
    def delivery_stats(self) -> DeliveryStats | None:
        """The delivery counts (for /stats) while the feature is granted; None otherwise."""
        return self._delivery.stats if self._delivery.granted else None

    @property
    def delivery_path(self) -> str | None:
        """C{"udp"} or C{"tcp"}: the way messages go, while the feature is granted; None otherwise."""
        return self._delivery.path

    @property
    def reconnecting(self) -> bool:
        return self.state is ConnectionState.RECONNECTING

    def _in_room(self) -> bool:
        return self.state is ConnectionState.IN_ROOM

    def timer_fired(self, name: str, now: float) -> list[Action]:
        """Timer C{name} ran out (the adapter forgets it; so does the core)."""
        if not self._timers.fired(name):
            return []
        if name == KEEPALIVE:
            return [*self._server_silent(now), *self._path.keepalive_due(now)]
        if name == PROBE:
            return self._path.probe_due(now)
        if name == REQUEST:
            return self._ended(self._requests.fail(ConnectionClosedError("the server did not answer in time")), now)
        if name == CONFIRM:
            return self._rejoin_confirmed()
        if name == DELIVERY:
            return self._delivery.timer_fired(now)
        return []

    # -- entering ----------------------------------------------------------------------

    def start(self, wanted: Membership) -> None:
        """A create or join is asked for. Raises ClientError when already in (or entering) a room."""
        if self.state in (ConnectionState.CONNECTING, ConnectionState.IN_ROOM, ConnectionState.RECONNECTING):
            raise ClientError("this client is already in a room; leave it first")
        self.wanted = wanted
        self.servers.restart()
        self._entry_failures = 0
        self.resume_credential = None
        self.resumed = False
        self.room_over = self.leaving = False
        self._path.lost = False
        self.room_host = None
        self._reconnection.reset()
        self.rejoin = None
        self._delivery.reset()
        self.state = ConnectionState.CONNECTING

    def entry_failed(self) -> ServerAddress | None:
        """
        The first create or join of the session could not reach the server
        in use: the next server to try, in the order given, or None when
        every one has been tried.
        """
        self._entry_failures += 1
        if self._entry_failures >= len(self.servers):
            return None
        return self.servers.advance()

    def control_opened(self, server_udp: tuple[str, int]) -> list[Action]:
        """
        A new control connection is up; datagrams are to and from
        C{server_udp}. During a try to come back (L{Connect}), the core asks
        for the room at once; otherwise the adapter's caller asks.
        """
        self._requests.new_stream()
        self._path.server_udp = server_udp
        if self.state is ConnectionState.CONNECTING and self.rejoin in (
            RejoinStep.RESUME,
            RejoinStep.CREATE,
            RejoinStep.PROBE,
        ):
            return self._ask_rejoin(self.rejoin)
        return []

    def request(self, frame: Frame, now: float) -> tuple[int, list[Action]]:
        """
        Send a request; its L{Answer} comes later with the same id. Its
        result: the L{RoomInfo} for a create or join (the core has entered the
        room by then), the member tuple for MEMBERS, the token for INVITE, and
        the answer's frames otherwise. Raises ClientError while another waits.
        """
        return self._requests.ask(frame, Purpose.CALLER)

    def ask_room(self, wanted: Membership, now: float) -> tuple[int, list[Action]]:
        """Send the create or join request for C{wanted}."""
        return self.request(self.room_frame(wanted), now)

    def room_frame(self, wanted: Membership, resume: str | None = None) -> Frame:
        """
        The create or join request for C{wanted}: asking for the "delivery"
        feature, unless configured not to; with the resume credential
        C{resume}, if given (a resume).
        """
        if not self.config.delivery:
            return room_request(wanted, resume=resume)
        return room_request(wanted, (DELIVERY_FEATURE,), self.client_id, resume)

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
        return self._requests.cancel(request)

    # -- the control connection -------------------------------------------------------

    def _server_silent(self, now: float) -> list[Action]:
        """
        The node stopped answering (with the feature, keepalives are answered
        on one path or the other): drop the control connection, so that the
        client comes back, resuming, there or on the next server, rather
        than wait for TCP to notice, which can take many minutes.
        """
        silent_after = self.config.server_silent_after
        if not (self._delivery.granted and self._in_room() and silent_after > 0):
            return []
        if now - self._last_heard < silent_after:
            return []
        return [
            Log("warn", f"nothing from the server for {now - self._last_heard:.0f} s: reconnecting"),
            AbortControl(),
        ]

    def control_received(self, data: bytes, now: float) -> list[Action]:
        """Bytes from the control connection."""
        self._last_heard = now
        actions: list[Action] = []
        try:
            for frame in self._requests.frames(data):
                actions += self._frame_received(frame, now)
        except ProtocolError as error:
            # The server's stream is unreadable: nothing more on it can be trusted.
            actions += [Log("error", f"unreadable frame from the server: {error}"), AbortControl()]
        return actions

    def _frame_received(self, frame: Frame, now: float) -> list[Action]:
        if frame.operation is Operation.NOTICE:
            return self._notice(read_notice_payload(frame.payload))
        if frame.operation is Operation.DATAGRAM:
            # Never a request's answer: a sealed frame, or the refusal of one of ours.
            return self._tunneled(frame, now)
        if self._requests.pending is None:
            return [Log("warn", f"unexpected frame from the server: {frame.operation.name}")]
        return self._ended(self._requests.received(frame), now)

    def _ended(self, outcome: Outcome | None, now: float) -> list[Action]:
        """A request ended (or None: it goes on): tell whoever asked, and act on its answer."""
        if outcome is None:
            return []
        actions = self._timers.cancel(REQUEST)
        if isinstance(outcome, Failed):
            return [*actions, *self._failed(outcome, now)]
        pending, answer = outcome.pending, outcome.answer
        try:
            if pending.operation is Operation.REKEY:
                self._rekeying = False
                assert isinstance(answer, tuple)
                self._path.rekeyed(answer)
                return actions
            if isinstance(answer, EnteredAnswer):
                resumed = pending.purpose is Purpose.REJOIN and self.rejoin is RejoinStep.RESUME
                info, entered = self._entered(answer, now)
                if pending.purpose is Purpose.REJOIN:
                    self.resumed = resumed
                    return [*actions, *entered, *self._rejoin_entered()]
                return [*actions, *entered, Answer(pending.request, info)]
        except ProtocolError as error:
            return [*actions, *self._failed(Failed(pending, error), now)]
        if pending.operation is Operation.MEMBERS:
            assert isinstance(answer, tuple)
            members, host = answer
            self.members = members
            if host is not None:
                self.room_host = host
            answer = self.members
        return [*actions, Answer(pending.request, answer)]

    def _failed(self, failed: Failed, now: float) -> list[Action]:
        """A request failed (refused, unreadable, unanswered): tell whoever asked."""
        if failed.pending.purpose is Purpose.REKEY:
            self._rekeying = False
            return [Log("warn", f"could not replace the UDP key: {failed.error}")]
        if failed.pending.purpose is Purpose.REJOIN:
            return self._rejoin_refused(failed.error, now)
        return [Answer(failed.pending.request, error=failed.error)]

    def _entered(self, answer: EnteredAnswer, now: float) -> tuple[RoomInfo, list[Action]]:
        """Take the create or join answer, and start the keepalives."""
        # First, as it may raise: an unusable key enters no room.
        channel = channel_from((answer.key, answer.key_id), self.config.rekey_after)
        info = RoomInfo(
            room=answer.room,
            user=answer.user,
            host=answer.host,
            members=answer.members,
            idle_timeout=answer.idle_timeout,
            keepalive_interval=answer.keepalive_interval,
        )
        self.info = info
        self.members = info.members
        # Single use: each answer brings the one for the next resume.
        self.resume_credential = answer.resume
        # The join answer names no host, but lists the members in the order
        # they entered, host first (docs/protocol.md section 4.2), and a room
        # never outlives its host (section 6.4).
        self.room_host = info.user if info.host else (self.members[0] if self.members else None)
        self.state = ConnectionState.IN_ROOM
        grant = answer.delivery if self.config.delivery else None
        actions = self._delivery.entered(grant, info.room, info.user, now)
        # With the feature, the path monitor tells of the path (DeliveryPathChanged), not UdpPath.
        self._path.reports = not self._delivery.granted
        interval = info.keepalive_interval
        if self._delivery.granted:
            # A member that only listens learns that UDP is blocked from its
            # keepalives alone: every DELIVERY_KEEPALIVE seconds at most, so
            # it finds out in seconds, not in the minute and a half that three
            # misses at the server's 30 s would take.
            interval = min(interval, DELIVERY_KEEPALIVE)
        actions += self._path.entered(channel, interval, now)
        return info, [*actions, *self._delivery.work(now)]

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
        error = refusal or ConnectionClosedError("the server closed the connection")
        actions = self._ended(self._requests.fail(error), now)
        if not current:
            return actions
        if self.rejoin is RejoinStep.CONFIRM:
            # Back in the room, and out again before it was said: no Reconnected.
            self.rejoin = None
            actions += self._timers.cancel(CONFIRM)
        actions += [*self._path.stop(), *self._delivery.stop()]
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
        self._reconnection.reset()
        assert self.wanted is not None
        # The same server first: it may only have dropped the connection.
        next_try = self._reconnection.next_try(now, *self._where(), *self._next_target())
        return [*actions, Emit(ConnectionLost(reason, True)), *next_try]

    def _where(self) -> tuple[str, str | None]:
        """The room to come back to, and its host (if known), for the events that tell of a wait."""
        assert self.wanted is not None
        return self.wanted.room, self.room_host

    def _next_target(self) -> tuple[str, bool]:
        """The server the next try goes to (its label), and whether it resumes first: for the events that say so."""
        return self.servers.current.label, self.resume_credential is not None

    # -- reconnecting ---------------------------------------------------------------------

    def rejoin_as_host(self) -> bool:
        """
        After a server restart the room is gone, and only the member that
        hosted it creates it again (with the same password, and native-only
        again if it was); the others join and find no room until it is back.
        """
        assert self.wanted is not None
        return self.info.host if self.info is not None else self.wanted.operation is Operation.CREATE

    def rejoin_membership(self) -> Membership:
        """What a member asks for again (L{chatd.client.reconnect.join_again})."""
        assert self.wanted is not None
        return join_again(self.wanted)

    def rejoin_create(self) -> Membership:
        """What the host asks for again (L{chatd.client.reconnect.create_again})."""
        assert self.wanted is not None
        return create_again(self.wanted)

    def rejoin_probe(self) -> Membership:
        """What a member asks for first, without its password (L{chatd.client.reconnect.probe})."""
        assert self.wanted is not None
        return probe(self.wanted)

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
        self.rejoin = RejoinStep.RESUME if self.resume_credential is not None else self._rejoin_anew()
        return [Connect()]

    def _rejoin_anew(self) -> RejoinStep:
        """The first step of a try that does not resume: the host creates the room again, a member probes."""
        return RejoinStep.CREATE if self.rejoin_as_host() else RejoinStep.PROBE

    def _ask_rejoin(self, step: RejoinStep) -> list[Action]:
        assert self.wanted is not None
        self.rejoin = step
        resume = self.resume_credential if step is RejoinStep.RESUME else None
        frame = self.room_frame(request_for(step, self.wanted), resume)
        _, actions = self._requests.ask(frame, Purpose.REJOIN)
        return actions

    def _rejoin_refused(self, error: ChatError, now: float) -> list[Action]:
        """The server refused (or did not answer) a rejoin's create or join: the next step, or the next try."""
        assert self.wanted is not None and self.rejoin is not None
        if self.rejoin is RejoinStep.RESUME and isinstance(error, InvalidPasswordError | RoomNotFoundError):
            # The credential was refused (used, or our membership is gone),
            # or the room is: it is worth nothing now. The try goes on as
            # one without it, on this connection (neither refusal closes it).
            # Any other refusal (a busy or degraded server) keeps it for the next try.
            self.resume_credential = None
            anew = self._rejoin_anew()
            return [Log("info", f"could not resume: {error}; entering the room anew"), *self._ask_rejoin(anew)]
        step = step_after(self.rejoin, error, self.wanted)
        if step is RejoinStep.PROBE:
            # From the host's create, whose room name is taken: a new connection.
            self.rejoin = step
            return [CloseControl(), Connect()]
        if step is not None:
            return self._ask_rejoin(step)
        return self.rejoin_failed(error, now)

    def _rejoin_entered(self) -> list[Action]:
        """
        In the room again (the keepalives started): wait, briefly, for the
        server to answer the first keepalive before saying so, as a create
        or join does; a blocked UDP path only delays it.
        """
        self.rejoin = RejoinStep.CONFIRM
        return [self._timers.start(CONFIRM, self.config.udp_confirm_wait)]

    def _rejoin_confirmed(self) -> list[Action]:
        """The first keepalive was answered, or the wait for it ran out: the room is entered again."""
        if self.rejoin is not RejoinStep.CONFIRM:
            return []
        self.rejoin = None
        return [*self._timers.cancel(CONFIRM), *self.rejoined()]

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
        assert self.wanted is not None
        # One server per try: the next try goes to the next in the list.
        self.servers.advance()
        verdict = self._reconnection.failed(error, now, self.wanted, self.room_host, *self._next_target())
        if isinstance(verdict, GiveUp):
            self.state = ConnectionState.CLOSED
            return [*verdict.logged, Emit(ConnectionLost(verdict.reason, will_reconnect=False)), Shutdown()]
        return verdict

    def rejoined(self) -> list[Action]:
        """The room was entered again: resumed, or entered anew."""
        assert self.info is not None
        server, as_host = self.servers.current.label, self.room_host == self.info.user
        return [Emit(Reconnected(self.info.room, self.info.members, self.room_host, server, self.resumed, as_host))]

    # -- leaving ------------------------------------------------------------------------------

    def leave(self) -> list[Action]:
        """Leaving (or closed): stop everything that would send."""
        self.leaving = True
        self.state = ConnectionState.CLOSED
        return self.stop()

    def stop(self) -> list[Action]:
        """Stop the keepalives, and a rejoin's wait for UDP (the sockets are closing)."""
        self.rejoin = None
        return [*self._path.stop(), *self._delivery.stop(), *self._timers.cancel(CONFIRM)]

    def close_room(self, now: float) -> list[Action]:
        """The host's C{/exit}; raises NotInRoomError, or NotPermittedError when not the host."""
        if self.state is not ConnectionState.IN_ROOM or self.info is None:
            raise NotInRoomError("not in a room")
        if self.room_host != self.info.user:
            raise NotPermittedError("only the room's host can close it")
        return self._send_datagram(FrameType.MESSAGE, EXIT_TEXT, now)

    # -- UDP -------------------------------------------------------------------------------------

    def send_message(self, text: str, now: float) -> list[Action]:
        """A chat message to the room (L{post} without its id). Raises NotInRoomError or MessageTooLongError."""
        return self.post(text, now)[1]

    def post(self, text: str, now: float) -> tuple[int | None, list[Action]]:
        """
        A chat message to the room: its id with the "delivery" feature (its
        states come as MessageStateChanged), None without. With the feature
        a message typed while reconnecting waits, C{sending}, for the rejoin.
        Raises NotInRoomError or MessageTooLongError.
        """
        # Granted is of this membership (start() forgets it), so CONNECTING here is a try to come back.
        if self._delivery.granted and self.info is not None and self.state in _STAYING:
            message_body(self.info.user, text)
            return self._delivery.post(text, now)
        if self.state is not ConnectionState.IN_ROOM or self.info is None:
            raise NotInRoomError("not in a room" if self.state is not ConnectionState.RECONNECTING else "reconnecting")
        return None, self._send_datagram(FrameType.MESSAGE, message_body(self.info.user, text), now)

    def retry(self, now: float) -> tuple[list[int], list[Action]]:
        """/retry: the messages not delivered are sent again under their ids (none without the feature)."""
        if not self._delivery.granted:
            return [], []
        return self._delivery.retry(now)

    def flush(self, now: float) -> list[Action]:
        """A keepalive now, whose answer (L{KeepaliveAnswered}) comes after everything sent before."""
        return self._path.send_keepalive(now)

    def _send_datagram(self, frame_type: FrameType, body: bytes, now: float) -> list[Action]:
        """A frame of the core's own: by UDP, or, with the feature, the way the path monitor says."""
        if self._delivery.granted:
            return self._delivery.send_frame(frame_type, body, now)
        return self._transmit(frame_type, body, by_udp, now)

    def _transmit(self, frame_type: FrameType, body: bytes, tcp: OverTcp, now: float) -> list[Action]:
        """
        Seal a frame and send it: as an operation 8 frame on the control
        connection when C{tcp} says so for its sealed size (the "delivery"
        feature's TCP path, and frames over MAX_NATIVE_DATAGRAM), by UDP
        otherwise. Nothing without a server address or a key.
        """
        channel = self._path.channel
        if self._path.server_udp is None or channel is None:
            return []
        data = channel.seal(frame_type, body)
        actions: list[Action]
        if tcp(len(data)) and self.info is not None:
            actions = [SendFrame(encode_frame(Frame(Operation.DATAGRAM, State.REQUEST, self.info.room, data)))]
        else:
            actions = [SendDatagram(data)]
        if not channel.needs_rekey:
            return actions
        if not self._rekeying and self._requests.pending is None and self.info is not None:
            # Ask for a fresh key before the counter runs out; the server stops accepting the old one.
            self._rekeying = True
            frame = Frame(Operation.REKEY, State.REQUEST, self.info.room, b"")
            actions += self._requests.ask(frame, Purpose.REKEY)[1]
        return actions

    def datagram_received(self, data: bytes, source: tuple[str, int], now: float) -> list[Action]:
        """A datagram on the client's UDP port, from C{source}."""
        opened = self._path.open(data, source, now)
        if opened is None:
            return []
        frame_type, body, actions = opened
        return [*actions, *self._sealed(frame_type, body, now, udp=True)]

    def _tunneled(self, frame: Frame, now: float) -> list[Action]:
        """
        An operation 8 frame from the server: a sealed frame that came over
        the control connection (the TCP path, or too large for UDP), opened
        and read exactly as a datagram. An acknowledge is the server refusing
        one of ours (the feature was not granted): nothing to answer.
        """
        if frame.state is not State.COMPLETE:
            return [Log("warn", "the server refused a frame sent over the control connection")]
        if not self._delivery.granted:
            return [Log("warn", "a sealed frame over the control connection, without the delivery feature")]
        opened = self._path.open_tunneled(frame.payload)
        if opened is None:
            return []
        return self._sealed(*opened, now, udp=False)

    def _sealed(self, frame_type: int, body: bytes, now: float, *, udp: bool) -> list[Action]:
        """An authenticated frame from the server, by UDP or (C{udp} False) inside operation 8."""
        self._last_heard = now
        actions: list[Action] = []
        try:
            if self._delivery.granted:
                actions += self._delivery.received(frame_type, body, now, udp=udp)
            if frame_type == FrameType.RELAY:
                relayed = decode_relay_body(body)
                actions.append(Emit(MessageReceived(relayed.sender, relayed.text, relayed.timestamp_ms / 1000)))
            elif frame_type == FrameType.NOTICE:
                actions += self._notice(read_notice_payload(body))
            elif frame_type == FrameType.KEEPALIVE_ACK:
                if udp:
                    self._path.confirmed = True
                else:
                    actions += self._path.answered_over_tcp()
                actions.append(KeepaliveAnswered())
                actions += self._rejoin_confirmed()
        except ProtocolError:
            # Authentic, but unreadable: dropped, as the server drops such datagrams.
            self._path.dropped += 1
        return actions
