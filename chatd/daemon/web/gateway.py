"""
The browser's side of the daemon: a WebSocket gateway (autobahn on Twisted).

Each WebSocket is one L{BrowserProtocol}: it creates or joins one room
through the same store as the TCP side, as a member of its own kind
(Dialect.WEB), and is then that member's L{IMemberConnection} (notices,
close) and L{IMessageStream} (every message the relay numbers in the room,
in room order). What it says goes through the relay's message path
(C{relay_message}): the same size check, the same per-member rate limit, the
same numbering, so it has a sequence number and is in the history, and every
other member hears it in its own dialect. The page's messages are
chatd.daemon.web.messages's; docs/web.md describes them.

The limits are the TCP side's (docs/security.md): a WebSocket counts
against --max-connections together with the TCP connections, against
--max-connections-per-host among the browser connections of its address,
and takes a token of the same per-address bucket of new connections
(--connections-per-s); a create or join with a password takes one of the
same per-address password attempts and counts as one of the address's
password hashes (the TCP factory's limiters, shared). The Origin header must
be this site's own, or one of --web-origin. Messages and frames are bounded
(L{MAX_BROWSER_MESSAGE}); what waits for a page that does not read is
bounded as for a TCP peer (--send-queue, --send-queue-timeout: L{SendQueue});
a page that does not answer the server's pings (a dead browser) is dropped
after a keepalive interval.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IAddress, IConsumer, IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from chatd.daemon.history import history_from
from chatd.daemon.interfaces import IMemberConnection, IMessageStream, IRoomStore
from chatd.daemon.relay import RelayProtocol
from chatd.daemon.rooms import LeaveReason, Member
from chatd.daemon.settings import Settings
from chatd.daemon.tcp_factory import RoomFactory
from chatd.daemon.web import messages
from chatd.daemon.web.origins import host_of, origin_allowed
from chatd.daemon.web.send_queue import SendQueue
from chatd.protocol.errors import (
    HashingBusyError,
    InvalidUTF8Error,
    NotPermittedError,
    ProtocolError,
    RateLimitedError,
    ServerFullError,
)
from chatd.protocol.payloads import Dialect, Notice, NoticeKind, RoomRequest, validate_user_name

MAX_BROWSER_MESSAGE = 64 * 1024
"""
The largest WebSocket message, and frame, a page may send, in bytes: a say
of the longest text the relay takes (4 KiB of UTF-8), even with every
character escaped in JSON (six bytes each), fits; anything larger is refused
by autobahn before it is buffered whole (close code 1009).
"""
AUTOBAHN_TIMER_GRAIN = 2.0
"""
The shortest timeout given to autobahn: its timers (txaio's batched timer)
truncate each deadline to the whole second, so a timeout under a second can
fire at once, and one of 2 s fires after 1 to 2 s.
"""
WEBSOCKET_PATH = b"ws"
"""The WebSocket's path on the site: C{/ws}."""
CLOSE_NORMAL = 1000
"""The room is over for this page (it left, or the room closed): the page does not reconnect."""
# What the gateway closes with otherwise: autobahn lets an application send
# 1000 or 3000 to 4999 only, so these are the standard codes plus 3000.
CLOSE_UNSUPPORTED = 4003
"""A binary message: the page speaks text (as 1003)."""
CLOSE_POLICY = 4008
"""A message that could not be read, or no room entered in time (as 1008)."""
CLOSE_INTERNAL = 4011
"""A bug of ours (as 1011)."""
_MEMBERSHIP_NOTICES = (NoticeKind.MEMBER_JOINED, NoticeKind.MEMBER_LEFT, NoticeKind.TIMED_OUT)
"""The notices after which the member list is pushed again."""


class WebGateway(WebSocketServerFactory):
    """
    Builds a L{BrowserProtocol} per WebSocket, within the connection limits,
    and holds what they share: the store, the relay, the TCP factory (whose
    per-address limiters and connection count are shared with it), the
    settings and the counters.
    """

    noisy = False
    _chat_log = Logger()

    def __init__(
        self,
        store: IRoomStore,
        relay: RelayProtocol,
        tcp: RoomFactory,
        clock: IReactorTime,
        settings: Settings,
        *,
        secure: bool = False,
        reactor: Any = None,
    ) -> None:
        super().__init__(server="chatd", reactor=reactor)
        self.store = store
        self.relay = relay
        self.tcp = tcp
        self.clock = clock
        self.settings = settings
        self.secure = secure
        """Whether the site is served over TLS: the page's own origin is then https."""
        self.extra_origins = frozenset(origin.lower().rstrip("/") for origin in settings.web_origins())
        self.connections: set[BrowserProtocol] = set()
        self._per_host: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        """WebSockets refused before they opened (origin, limits), and requests refused after, by reason."""
        self.aborted: Counter[str] = Counter()
        """Connections reset by the gateway, by reason: "send_queue", "send_queue_timeout"."""
        interval = settings.keepalive_interval
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_BROWSER_MESSAGE,
            maxMessagePayloadSize=MAX_BROWSER_MESSAGE,
            # The server pings; a browser answers by itself, from any tab.
            # An answer is activity (the idle timeout), and no answer within
            # an interval drops the connection: a dead page (or network)
            # holds its member, and what is queued for it, that long at most.
            autoPingInterval=interval,
            autoPingTimeout=max(interval, AUTOBAHN_TIMER_GRAIN),
            openHandshakeTimeout=max(settings.handshake_timeout, AUTOBAHN_TIMER_GRAIN),
            closeHandshakeTimeout=1,
        )

    @override
    def buildProtocol(self, addr: IAddress | None) -> BrowserProtocol:
        protocol = BrowserProtocol(self)
        protocol.factory = self
        return protocol

    # -- the limits -----------------------------------------------------------

    def admit(self, protocol: BrowserProtocol, request: ConnectionRequest) -> None:
        """
        Count C{protocol} in, or raise ConnectionDeny: an origin that is not
        allowed (403), or a connection over the limits (503 full, 429 too fast).
        """
        host = protocol.peer_host
        if not origin_allowed(request.origin, request.headers.get("host", ""), self.secure, self.extra_origins):
            self._deny("origin", host)
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "this page's origin may not open a chat connection")
        settings = self.settings
        if len(self.connections) + len(self.tcp.connections) >= settings.max_connections:
            self._deny(ServerFullError.reason, host)
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "the server holds its limit of connections")
        if self._per_host[host] >= settings.max_connections_per_host:
            self._deny(ServerFullError.reason, host)
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, f"{host} holds its limit of connections")
        if not self.tcp.new_connections.take(host):
            self.tcp.stats.rate_limited["connections"] += 1
            self._deny(RateLimitedError.reason, host)
            raise ConnectionDeny(429, f"{host} opens connections too fast")
        self.connections.add(protocol)
        self._per_host[host] += 1

    def _deny(self, reason: str, host: str) -> None:
        self.refused[reason] += 1
        self._chat_log.info("refused a browser from {peer}: {reason}", event="web_refused", peer=host, reason=reason)

    def released(self, protocol: BrowserProtocol) -> None:
        """C{protocol}'s connection is gone: it no longer counts (a no-op for one never admitted)."""
        if protocol not in self.connections:
            return
        self.connections.remove(protocol)
        host = protocol.peer_host
        self._per_host[host] -= 1
        if not self._per_host[host]:
            del self._per_host[host]

    def connections_from(self, host: str) -> int:
        return self._per_host.get(host, 0)


@implementer(IMemberConnection, IMessageStream)
class BrowserProtocol(WebSocketServerProtocol):
    """One page's WebSocket: one member, once it has entered a room."""

    _chat_log = Logger()

    def __init__(self, gateway: WebGateway) -> None:
        super().__init__()
        self._gateway = gateway
        self.peer_host = ""
        self.member: Member | None = None
        self._entering = False
        """A create or join is in the store's hands (a password being hashed)."""
        self._gone = False
        """The connection is closing or lost: nothing more is sent, and a late entry is undone."""
        self._handshake_timer: IDelayedCall | None = None
        self._send_queue = SendQueue(self, gateway.clock, gateway.settings)
        self._aborted = False

    # -- connection life ------------------------------------------------------

    @override
    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.peer_host = host_of(transport.getPeer())
        # The transport was twisted.web's, whose HTTP channel is still its
        # producer: the send queue watches it from now on (see SendQueue).
        consumer = cast(IConsumer, transport)
        consumer.unregisterProducer()
        consumer.registerProducer(self._send_queue, True)
        super().connectionMade()

    @override
    def onConnect(self, request: ConnectionRequest) -> None:
        self._gateway.admit(self, request)

    @override
    def onOpen(self) -> None:
        # As on TCP: a connection that enters no room is not kept.
        self._handshake_timer = self._gateway.clock.callLater(
            self._gateway.settings.handshake_timeout, self._handshake_expired
        )

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self.member is None:
            self._close(CLOSE_POLICY, "no room entered in time")

    @override
    def onPong(self, payload: bytes) -> None:
        # The browser answered a ping: it is there, as a keepalive says on UDP.
        if self.member is not None:
            self._gateway.store.touch(self.member)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._gone = True
        self._send_queue.stop()
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self._gateway.released(self)
        member, self.member = self.member, None
        if member is not None:
            member.stream = None
            member.connection = None
            self._gateway.store.leave(member, LeaveReason.LEFT)

    # -- requests -------------------------------------------------------------

    @override
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._gone:
            return
        if isBinary:
            self._close(CLOSE_UNSUPPORTED, "text messages only")
            return
        say_id: int | None = None
        try:
            # autobahn has checked that a text message is UTF-8.
            request = messages.read_request(payload.decode("utf-8"))
            if isinstance(request, messages.Say):
                say_id = request.id
            self._handle(request)
        except ProtocolError as error:
            self._refuse(error, say_id)
        except Exception:
            # A bug of ours: this page is told and dropped, the others go on.
            self._chat_log.failure("while handling a message from {peer}", peer=self.peer_host)
            self._close(CLOSE_INTERNAL, "internal error")

    def _handle(self, request: messages.Request) -> None:
        if isinstance(request, messages.Say):
            self._say(request)
        elif isinstance(request, messages.Enter):
            self._enter(request)
        elif isinstance(request, messages.Members):
            member = self._in_room()
            self._to_page(self._members(member))
        elif isinstance(request, messages.Invite):
            member = self._in_room()
            if not member.is_host:
                raise NotPermittedError("only the host can invite")
            invite = self._gateway.store.mint_invitation(member)
            self._to_page(messages.invitation_message(invite, self._gateway.settings.invite_ttl))
            self._chat_log.info(
                "{user} invited someone to {room}", event="invited", user=member.name, room=member.room.name
            )
        else:
            # Leave: the store tells everyone, and the controller hangs up on us.
            self._gateway.store.leave(self._in_room(), LeaveReason.EXITED)

    def _in_room(self) -> Member:
        if self.member is None:
            raise NotPermittedError("create or join a room first")
        self._gateway.store.touch(self.member)
        return self.member

    def _say(self, say: messages.Say) -> None:
        member = self._in_room()
        try:
            text = say.text.encode("utf-8")
        except UnicodeEncodeError:
            # JSON can escape a lone surrogate, which no UTF-8 can carry.
            raise InvalidUTF8Error("the message is not valid Unicode") from None
        numbered = self._gateway.relay.relay_message(member, text)
        if numbered is not None:
            seq, time_ms = numbered
            self._to_page(messages.sent_message(say.id, seq, time_ms))
        # None: it was /exit, and the member has left.

    def _enter(self, enter: messages.Enter) -> None:
        if self.member is not None or self._entering:
            raise NotPermittedError("this connection is already in a room")
        gateway = self._gateway
        settings = gateway.settings
        limits = gateway.tcp
        request = RoomRequest(
            validate_user_name(enter.name, settings.max_user_name), password=enter.password, invite=enter.invite
        )
        host = self.peer_host
        # As a TCP create or join: a password costs an scrypt run, so few at
        # once and few a minute from one address, counted with the TCP side's.
        hashing = bool(request.password)
        if hashing and not limits.may_hash(host):
            limits.stats.rate_limited["hashing_per_host"] += 1
            raise HashingBusyError(f"{host} already has a password request in progress; try again")
        attempt = hashing or (not enter.create and bool(request.invite))
        if attempt and not limits.password_attempts.take(host):
            limits.stats.rate_limited["password_attempts"] += 1
            wait = limits.password_attempts.wait_time(host)
            raise RateLimitedError(f"too many password attempts from {host}; try again in {wait:.0f} s")
        if hashing:
            limits.hashing_started(host)
        if enter.create:
            entered = gateway.store.create_room(enter.room, request, Dialect.WEB, origin=host)
        else:
            entered = gateway.store.join_room(enter.room, request, Dialect.WEB)
        if hashing:
            entered.addBoth(limits.hashing_finished, host)
        self._entering = True
        entered.addCallbacks(self._entered, self._not_entered)
        entered.addErrback(lambda failure: self._chat_log.failure("while answering a create or join", failure))

    def _entered(self, member: Member) -> None:
        self._entering = False
        if self._gone:
            # The page went away while its password was checked.
            self._gateway.store.leave(member, LeaveReason.LEFT)
            return
        self.member = member
        member.connection = self
        member.stream = self
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        room = member.room
        history = room.history
        latest: int = history.latest
        first = history_from(history, self._gateway.settings.history_on_join)
        held = history.range(first, latest).entries if first <= latest else ()
        self._to_page(
            messages.entered_message(
                room=room.name,
                name=member.name,
                created=member.is_host,
                host=room.host.name if room.host is not None else None,
                members=room.names(),
                epoch=str(history.epoch),
                latest=latest,
                history=[
                    messages.chat_message(entry.seq, entry.time_ms, _text(entry.name), _text(entry.text), history=True)
                    for entry in held
                ],
                idle_timeout=self._gateway.settings.idle_timeout,
            )
        )
        self._chat_log.info(
            "{user} {event} {room} (web dialect)",
            event="created" if member.is_host else "joined",
            user=member.name,
            room=room.name,
            dialect=Dialect.WEB.value,
            peer=self.peer_host,
        )

    def _not_entered(self, failure: Failure) -> None:
        self._entering = False
        if self._gone:
            return
        error = failure.value
        if isinstance(error, ProtocolError):
            self._refuse(error)
        else:
            self._chat_log.failure("while creating or joining", failure)
            self._close(CLOSE_INTERNAL, "internal error")

    def _refuse(self, error: ProtocolError, say_id: int | None = None) -> None:
        self._gateway.refused[error.reason] += 1
        self._to_page(messages.refused_message(error, say_id))
        # A say that was refused (too long, too fast) leaves the page's
        # framing intact: only a message that could not be read closes it.
        if error.closes and say_id is None:
            self._close(CLOSE_POLICY, error.reason)

    # -- what the page is sent ------------------------------------------------

    def _members(self, member: Member) -> dict[str, Any]:
        room = member.room
        return messages.members_message(room.names(), room.host.name if room.host is not None else None)

    def _to_page(self, message: dict[str, Any]) -> None:
        # Closing (the page's close frame came first) is as good as gone:
        # autobahn refuses to send then, and a notice or a message must
        # never raise into the relay or the controller.
        if self._gone or self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        data = messages.encode(message)
        if not self._send_queue.admit(len(data)):
            return
        self.sendMessage(data, isBinary=False)

    def abort(self, reason: str) -> None:
        """Reset the connection at once (a page that does not read): its member leaves, as on any disconnect."""
        if self._aborted:
            return
        self._aborted = self._gone = True
        self._gateway.aborted[reason] += 1
        self._chat_log.info(
            "dropping a browser from {peer}: {reason}", event="web_aborted", peer=self.peer_host, reason=reason
        )
        self.dropConnection(abort=True)

    def _close(self, code: int, reason: str) -> None:
        if self._gone:
            return
        self._gone = True
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendClose(code, reason or None)
        # Otherwise it is closing or closed already: autobahn finishes that.

    # -- IMessageStream -------------------------------------------------------

    def send_message(self, sender: Member, seq: int, time_ms: int, message: bytes) -> None:
        self._to_page(messages.chat_message(seq, time_ms, sender.name, _text(message)))

    # -- IMemberConnection ----------------------------------------------------

    def send_notice(self, notice: Notice) -> None:
        member = self.member
        if member is None:
            return
        self._to_page(messages.notice_message(notice.kind, notice.text_for(member.name), notice.user, notice.reason))
        if notice.kind in _MEMBERSHIP_NOTICES and not member.room.closed:
            self._to_page(self._members(member))

    def send_datagram(self, sealed: bytes) -> bool:
        # A browser member has no "delivery" feature: nothing is ever tunnelled to it.
        return False

    def close(self) -> None:
        member = self.member
        if member is not None:
            # The store is done with it (it left, or its room closed): no more messages.
            member.stream = None
        self._close(CLOSE_NORMAL, "")


def _text(data: bytes) -> str:
    """Relayed bytes as text: the relay takes UTF-8 only, so the replacement never shows in practice."""
    return data.decode("utf-8", "replace")
