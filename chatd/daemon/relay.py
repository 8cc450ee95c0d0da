"""
The UDP side: the relay DatagramProtocol.

Every datagram is decoded, checked against the member its token names (room,
registered source address) and relayed to the room's other members, each in
its own dialect. Anything wrong is dropped and counted by reason, with a
rate-limited warning, so a flood of garbage costs a counter increment and
never a log line per datagram.

A sealed datagram's key id is in clear, so anyone who sees one can forge
datagrams under it, and each would cost a decryption. A datagram from its
member's registered address is always opened (that is the traffic); from
anywhere else (a first registration, a roaming member, a forger) it is
opened only while neither its key id nor its source host has failed
authentication more than C{auth_failure_burst} times, refilled at
C{auth_failures_per_s}: past that it is dropped unopened
(C{auth_failures_limited}), as cheaply as garbage.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from time import perf_counter
from typing import ClassVar, TypeVar

from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import IReactorTime, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from typing_extensions import override
from zope.interface import implementer

from chatd.daemon.delivery import DeliveryRelay
from chatd.daemon.fanout import fanout_transport
from chatd.daemon.interfaces import (
    IDatagramNotices,
    IFanout,
    IFanoutTransport,
    IRelayObserver,
    IRoomStore,
    ITunnelledDatagrams,
)
from chatd.daemon.logs import CountedWarnings
from chatd.daemon.ratelimit import KeyedLimiter, MemberRateLimit
from chatd.daemon.rooms import LeaveReason, Member, Recipient, Room
from chatd.daemon.settings import Settings
from chatd.daemon.sockaddr import Address
from chatd.daemon.stats import DeliveryStats, LatencyHistogram
from chatd.protocol.datagrams import (
    CLIENT_FRAME_TYPES,
    DELIVERY_CLIENT_FRAME_TYPES,
    MAX_DATAGRAM,
    RELAY_OVERHEAD,
    FrameType,
    LegacyDatagram,
    check_relay_size,
    decode_datagram,
    pack_relay_body,
)
from chatd.protocol.errors import (
    AuthenticationFailedError,
    ForgeryLimitedError,
    FrameTooLargeError,
    InvalidUTF8Error,
    MalformedFrameError,
    ProtocolError,
    RateLimitedError,
    ReplayedError,
    UnknownKeyError,
    UnknownTokenError,
    UnregisteredError,
    UnsupportedVersionError,
    WrongRoomError,
    WrongSourceError,
)
from chatd.protocol.payloads import Dialect, Notice, decode_text
from chatd.protocol.seal import OVERHEAD, REJECT_AFTER, SEALED_MARKER, SEALED_VERSION, Channel, SealedHeader

# Enum members the datagram path compares with or sends, read from the
# module: in Python 3.11 reading a member from its class costs about 65 ns
# (the enum's descriptor), against 10 for a module name, on every datagram.
_NATIVE = Dialect.NATIVE
_MESSAGE = FrameType.MESSAGE
_RELAY = FrameType.RELAY

EXIT_COMMAND = b"/exit"
_EXIT_STARTS = (b"/", b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c")
"""
How a message that is C{/exit} once stripped can start (the slash, or what
bytes.strip removes): every other message is told apart by one startswith,
instead of a substring search through all of it.
"""
ACTION_PREFIX = b"/me "
"""
A message starting with this is an action (chatd.client.events.ACTION_PREFIX):
legacy recipients, whose clients show text as it comes, get it as
C{* <name> <action>}, as chatd's own clients show it; native recipients get
the text as sent and render it themselves.
"""
LATENCY_SAMPLE_EVERY = 16
"""One received datagram in this many (a power of 2) has its handling timed."""
LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
"""Upper bounds, in seconds, of the relay latency histogram's buckets (one more holds the rest)."""
_SAMPLE_MASK = LATENCY_SAMPLE_EVERY - 1
_NOT_REFUSED = -math.inf
"""The end of the refusal of a key id or host that is not refused: before any time a clock can tell."""

DROP_ERRORS: tuple[type[ProtocolError], ...] = (
    MalformedFrameError,
    FrameTooLargeError,
    InvalidUTF8Error,
    UnsupportedVersionError,
    UnknownTokenError,
    WrongRoomError,
    WrongSourceError,
    UnregisteredError,
    UnknownKeyError,
    AuthenticationFailedError,
    ForgeryLimitedError,
    ReplayedError,
    RateLimitedError,
)
"""
Every error the relay drops a datagram for: raised by the datagram decoder
and the sealing (malformed, too large, invalid UTF-8, unsupported version,
failed authentication, replayed) or by the relay's own checks and limits.
"""


class DropCounter(CountedWarnings):
    """Dropped datagrams by reason, with a bounded rate of warnings naming the source."""

    format = "dropped a datagram from {source_host}:{source_port}: {reason}{since}"
    since_format = " ({suppressed} more were dropped for this reason since the last warning)"
    event = "dropped"

    def drop(self, reason: str, source: Address) -> None:
        self.record(reason, source_host=source[0], source_port=source[1])


class RelayStats:
    """
    The relay's counters, updated by the relay (and corrected by the port's
    refused-sends reports) and read by the stats log line and the metrics
    endpoint. It owns the list of reasons a datagram can be dropped for
    (L{drop_reasons}, from L{DROP_ERRORS}), so a reader can report each
    of them before it first happens.
    """

    __slots__ = ("delivery", "drops", "latency", "received", "received_bytes", "send_errors", "sent", "sent_bytes")

    drop_reasons: ClassVar[tuple[str, ...]] = tuple(error.reason for error in DROP_ERRORS)
    """Every reason in L{drops}' counts, now or later."""

    def __init__(self, clock: IReactorTime) -> None:
        self.received = 0
        """Datagrams received, dropped ones included."""
        self.received_bytes = 0
        self.sent = 0
        """Datagrams sent: relayed copies, notices and keepalive acknowledgements."""
        self.sent_bytes = 0
        self.send_errors = 0
        """Datagrams that could not be sent: refused by the socket, a port already closed, or a spent key."""
        self.drops = DropCounter(clock)
        """Datagrams dropped, by reason (one of L{drop_reasons})."""
        self.latency = LatencyHistogram(LATENCY_BUCKETS)
        """Seconds from arrival to the end of the fan-out, for one datagram in LATENCY_SAMPLE_EVERY."""
        self.delivery = DeliveryStats()
        """Reliable delivery's counters: duplicates, repairs, GONEs, operation 8 frames in and out."""

    def dropped_by_reason(self) -> dict[str, int]:
        """Every reason of L{drop_reasons}, with its count (0 until it happens)."""
        counts = dict.fromkeys(self.drop_reasons, 0)
        counts.update(self.drops.counts)
        return counts

    def sends_refused(self, count: int, size: int) -> None:
        """
        The batching port's report (registered with
        L{IFanoutTransport.report_refused_sends}): C{count} datagrams of
        C{size} bytes in all, counted as sent when they were queued, were
        refused by the kernel when the batch went out.
        """
        self.sent -= count
        self.sent_bytes -= size
        self.send_errors += count


class RoomFanout:
    """
    A room's recipients prepared for relaying, from one value of
    C{Room.recipients} (the registry replaces that tuple on every change of
    membership or address, so identity tells whether this is current).

    Legacy members all get the same bytes, so they form one fan-out
    (L{IFanoutTransport.fanout}: on the batching port, addresses encoded
    once and no Python work per copy; on Twisted's stock port, a write per
    address). Native members get a copy sealed under each one's own key, so
    they stay a list.
    """

    def __init__(self, recipients: tuple[Recipient, ...], transport: IFanoutTransport) -> None:
        self.recipients = recipients
        self.transport = transport
        legacy = [(member, address) for member, address, sealed in recipients if not sealed]
        self.legacy_index = {member: i for i, (member, _) in enumerate(legacy)}
        """Each legacy recipient's place in the fan-out: the one skipped when it is the sender."""
        self.legacy: IFanout | None = None
        if legacy:
            self.legacy = transport.fanout([address for _, address in legacy])
        self.sealed = tuple((member, address) for member, address, sealed in recipients if sealed)


_Key = TypeVar("_Key", int, str)
"""What the authentication-failure limiters are keyed by: a key id, or a source host."""


def _refuse_if_limited(limiter: KeyedLimiter[_Key], refused_until: dict[_Key, float], key: _Key, now: float) -> None:
    """
    Raise ForgeryLimitedError if C{key} has no authentication failure left,
    noting until when, so that the datagrams after it are refused without
    asking the limiter. At most as many notes as the limiter holds buckets.
    """
    wait = limiter.wait_time(key)
    if wait > 0:
        if len(refused_until) < limiter.max_keys:
            refused_until[key] = now + wait
        raise ForgeryLimitedError("too many authentication failures for this key id or from this address")


def _channel_for(member: Member, key_id: int) -> Channel:
    """C{member}'s key with C{key_id}: its current one, or the one before its last rekey."""
    current = member.channel
    if current is not None and key_id == current.key_id:
        return current
    previous = member.previous_channel
    if previous is None or previous.key_id != key_id:
        raise UnknownKeyError("no member holds this key")
    return previous


def _forget_ended(refused_until: dict[_Key, float], now: float, longest: float) -> None:
    # A deadline further off than any refusal lasts is a wall clock that
    # stepped back: the limiters count that as no time, and decide afresh.
    ended = [key for key, until in refused_until.items() if not 0 < until - now <= longest]
    for key in ended:
        del refused_until[key]


@implementer(IDatagramNotices, ITunnelledDatagrams)
class RelayProtocol(DatagramProtocol):
    """
    The relay. It sends through its transport as an L{IFanoutTransport}
    (Twisted's stock port adapted, see L{fanout_transport}), counts in its
    L{RelayStats}, tells its L{IRelayObserver} of members sending too fast,
    and sends the notices the controller hands it (L{IDatagramNotices}).
    Members with the "delivery" feature are served by its L{DeliveryRelay}
    (chatd.daemon.delivery), which also gets the sealed frames their
    control connections carry (L{ITunnelledDatagrams}).
    """

    noisy = False
    _log = Logger()

    def __init__(self, store: IRoomStore, clock: IReactorTime, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self._store = store
        self._member_for_token_bytes: Callable[[bytes], Member | None] = store.member_for_token_bytes
        self._clock = clock
        self._seconds = clock.seconds
        """The clock, read once per datagram on the message path (activity, rate limit and the history's time)."""
        self.observer: IRelayObserver | None = None
        """Told (at most every few seconds per member) when a member sends too fast."""
        self.stats = RelayStats(clock)
        """What the relay counts; the stats log line and the metrics read it."""
        self.drops = self.stats.drops
        self._port: IFanoutTransport | None = None
        """The transport, as the relay sends through it; None while there is none (closed)."""
        self._fanouts: dict[Room, RoomFanout] = {}
        """Each room's recipients prepared for sending, rebuilt when Room.recipients changes."""
        self.delivery = DeliveryRelay(self, self.stats.delivery)
        """What members with the "delivery" feature send and are sent."""
        # Authentication failures of sealed datagrams from anywhere but the
        # member's registered address, per key id and per source host; see
        # _open_from_elsewhere. Loopback is not exempt (unlike the TCP
        # limits): a legitimate client never fails authentication, so an
        # exemption would spare no one and would let anything local, a UDP
        # proxy in front of the daemon included, cost decryptions unbounded.
        rate, burst = settings.auth_failures_per_s, settings.auth_failure_burst
        self._failures_by_key: KeyedLimiter[int] = KeyedLimiter(rate, burst, clock)
        self._failures_by_host: KeyedLimiter[str] = KeyedLimiter(rate, burst, clock)
        # When each refusal ends, known when it starts: nothing is charged
        # while refused and buckets refill at a fixed rate (only a limiter
        # full of busy buckets makes it an estimate). Refusing a flood is
        # then one clock read and a dict look-up, not the limiters' calls,
        # and while any refusal is on, datagramReceived looks before the
        # decoder (_refused_forgery): measured, 1.1 us a refused forgery
        # against 1.5 for garbage and 5.9 for a forgery that is decrypted.
        self._key_refused_until: dict[int, float] = {}
        self._host_refused_until: dict[str, float] = {}
        self._longest_refusal = burst / rate
        """No refusal lasts longer; a deadline further off means the clock stepped back."""

    @override
    def makeConnection(self, transport: IUDPTransport) -> None:
        port = fanout_transport(transport)
        port.report_refused_sends(self.stats.sends_refused)
        self._port = port
        super().makeConnection(transport)

    @override
    def doStop(self) -> None:
        super().doStop()
        self._port = None

    # Read-only views of the counters, which live in L{stats}.

    @property
    def received(self) -> int:
        return self.stats.received

    @property
    def received_bytes(self) -> int:
        return self.stats.received_bytes

    @property
    def sent(self) -> int:
        return self.stats.sent

    @property
    def sent_bytes(self) -> int:
        return self.stats.sent_bytes

    @property
    def send_errors(self) -> int:
        return self.stats.send_errors

    @property
    def latency(self) -> LatencyHistogram:
        return self.stats.latency

    @override
    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        stats = self.stats
        received = stats.received = stats.received + 1
        stats.received_bytes += len(datagram)
        # Timing every datagram would cost more than the counters: a sample will do.
        started = None if received & _SAMPLE_MASK else perf_counter()
        # Ports hand over (host, port) for IPv4 and (host, port, flow, scope)
        # for IPv6: members are bound to the first two.
        source = addr if len(addr) == 2 else (addr[0], addr[1])
        try:
            if (self._key_refused_until or self._host_refused_until) and self._refused_forgery(datagram, source):
                # A flood of forgeries being refused: dropped here, before
                # the decoder, the header object and an exception, so that
                # it costs about what garbage costs.
                self.drops.drop(ForgeryLimitedError.reason, source)
                return
            if not self._fast_legacy(datagram, source):
                decoded = decode_datagram(datagram)
                if isinstance(decoded, SealedHeader):
                    self._native(datagram, decoded, source)
                else:
                    self._legacy(decoded, source)
        except ProtocolError as error:
            self.drops.drop(error.reason, source)
        except Exception:
            self._log.failure("while handling a datagram from {source_host}", source_host=source[0])
        else:
            if started is not None:
                stats.latency.observe(perf_counter() - started)

    def _fast_legacy(self, datagram: bytes, source: Address) -> bool:
        """
        Relay a well-formed legacy datagram from its registered member and
        return True; return False, having changed nothing, for anything else.

        The common case costs one dict look-up on the token's bytes and no
        decoding of room or token: bytes equal to a live member's token and
        to its room's name are valid UTF-8 because those names are. Whatever
        does not match exactly goes through the full decoder (L{_legacy}),
        which finds the reason it is dropped, so the checks and the drop
        counters are the same on both paths.
        """
        size = len(datagram)
        if size < 2 or size > MAX_DATAGRAM:
            return False
        room_size = datagram[0]
        token_start = 2 + room_size
        message_start = token_start + datagram[1]
        if room_size == 0 or message_start > size or message_start == token_start:
            return False
        member = self._member_for_token_bytes(datagram[token_start:message_start])
        if (
            member is None
            or member.channel is not None
            or member.dialect is _NATIVE
            or member.address != source
            or member.room.name_bytes != datagram[2:token_start]
        ):
            return False
        message = datagram[message_start:]
        if not message.isascii():
            try:
                message.decode("utf-8")
            except UnicodeDecodeError:
                return False
        # Activity, the rate limit and the history's time share one clock
        # read (the store's touch would be a second read and a call).
        now = member.last_active = self._seconds()
        self._message(member, message, now)
        return True

    def _legacy(self, datagram: LegacyDatagram, source: Address) -> None:
        member = self._store.member_for_token(datagram.token)
        if member is None or member.dialect is _NATIVE:
            # A native member's token is not accepted in the legacy form, so
            # that the native protocol's sealing cannot be bypassed.
            raise UnknownTokenError("no legacy member holds this token")
        if member.room.name != datagram.room:
            raise WrongRoomError("the token belongs to another room")
        if member.address is None:
            raise UnregisteredError("the member has not registered a UDP port")
        if member.address != source:
            raise WrongSourceError("the token is bound to another address")
        now = member.last_active = self._seconds()
        self._message(member, datagram.message, now)

    def _native(self, datagram: bytes, header: SealedHeader, source: Address) -> None:
        member = self._store.member_for_key_id(header.key_id)
        if member is None:
            raise UnknownKeyError("no member holds this key")
        # No decryption is spent on an unknown key, so nothing is charged to
        # the source: a spoofer naming random key ids could otherwise use up
        # the allowance of any host it spoofs, without knowing a live key.
        channel = _channel_for(member, header.key_id)
        from_registered = member.address == source
        if from_registered:
            # The member's own path, the one that carries the traffic: never
            # refused by the limits below. (Whoever can spoof this exact
            # address and port can still cost a decryption per datagram.)
            frame_type, body = channel.open(datagram, header)
        else:
            frame_type, body = self._open_from_elsewhere(channel, datagram, header, source)
        self._authenticated(member, channel, frame_type)
        if not from_registered:
            # Learned, or changed (roaming), only from an authenticated datagram.
            self._store.bind_address(member, source)
        now = member.last_active = self._seconds()
        if member.delivery:
            self.delivery.received(member, frame_type, body, source)
        elif frame_type == _MESSAGE:
            decode_text(body, "message")
            self._message(member, body, now)
        else:
            self._within_limit(member, 0)
            # Sealed like the keepalive, with an empty body: never larger than it.
            self._send_sealed(member, FrameType.KEEPALIVE_ACK, b"")

    def _authenticated(self, member: Member, channel: Channel, frame_type: int) -> None:
        """
        A frame of C{member}'s opened under C{channel}: confirm a new key,
        and refuse the frame types its client may not send, before the
        address is learned from it or it counts as activity.
        """
        if channel is member.channel and member.previous_channel is not None:
            self._store.confirm_key(member)
        allowed = DELIVERY_CLIENT_FRAME_TYPES if member.delivery else CLIENT_FRAME_TYPES
        if frame_type not in allowed:
            raise MalformedFrameError(f"frame type {frame_type} is not sent by this client")

    def tunnelled(self, member: Member, data: bytes, peer: Address) -> None:
        """
        A sealed frame from C{member}'s control connection (operation 8,
        L{ITunnelledDatagrams}): checked as a datagram is, except that
        instead of a source address its key must be C{member}'s own. No
        address is learned from it. Dropped and counted like a datagram,
        never raised, so the connection stays open.
        """
        self.stats.delivery.tunneled_in += 1
        try:
            decoded = decode_datagram(data)
            if not isinstance(decoded, SealedHeader):
                raise MalformedFrameError("an operation 8 payload is a sealed frame")
            if self._store.member_for_key_id(decoded.key_id) is not member:
                # Another member's key (or none): this connection speaks for its own member only.
                raise WrongSourceError("sealed under a key that is not this connection's member's")
            channel = _channel_for(member, decoded.key_id)
            frame_type, body = channel.open(data, decoded)
            self._authenticated(member, channel, frame_type)
            member.last_active = self._seconds()
            self.delivery.received(member, frame_type, body, None)
        except ProtocolError as error:
            self.drops.drop(error.reason, peer)
        except Exception:
            self._log.failure("while handling an operation 8 frame from {source_host}", source_host=peer[0])

    def _refused_forgery(self, datagram: bytes, source: Address) -> bool:
        """
        Whether C{datagram} is a well-formed sealed frame that
        L{_open_from_elsewhere} would refuse now: it names a live key id,
        does not come from that member's registered address, and that key id
        or its source host is being refused. The same checks, in the same
        order, as the full path (L{decode_datagram}, L{_native}), only
        without building anything; anything else goes the full way.
        """
        if (
            len(datagram) < OVERHEAD
            or datagram[0] != SEALED_MARKER
            or datagram[1] != SEALED_VERSION
            or datagram[2] != 0
        ):
            return False
        key_id = int.from_bytes(datagram[3:7], "big")
        member = self._store.member_for_key_id(key_id)
        if member is None or member.address == source:
            return False
        return self._refusing(key_id, source[0], self._clock.seconds())

    def _refusing(self, key_id: int, host: str, now: float) -> bool:
        """Whether a refusal noted for this key id or this source host is still on."""
        return (
            self._key_refused_until.get(key_id, _NOT_REFUSED) > now
            or self._host_refused_until.get(host, _NOT_REFUSED) > now
        )

    def _open_from_elsewhere(
        self, channel: Channel, datagram: bytes, header: SealedHeader, source: Address
    ) -> tuple[int, bytes]:
        """
        Open a sealed datagram that does not come from its member's
        registered address: a first registration, a roaming member, or a
        forgery under a key id seen on the wire.

        The key id is in clear, so forging under a live one costs the
        attacker nothing and would cost the daemon a decryption each. Past
        C{auth_failure_burst} failures (refilled at C{auth_failures_per_s})
        for this key id, or from this source host, such datagrams are
        dropped before decrypting, about as cheaply as garbage. The test
        only looks (C{wait_time}, and the end of a refusal it noted); a
        token is taken for a failure alone, so a member that authenticates
        is never charged.
        """
        key_id, host = header.key_id, source[0]
        now = self._clock.seconds()
        if self._refusing(key_id, host, now):
            raise ForgeryLimitedError("too many authentication failures for this key id or from this address")
        _refuse_if_limited(self._failures_by_key, self._key_refused_until, key_id, now)
        _refuse_if_limited(self._failures_by_host, self._host_refused_until, host, now)
        try:
            return channel.open(datagram, header)
        except AuthenticationFailedError:
            self._failures_by_key.take(key_id)
            self._failures_by_host.take(host)
            raise

    def prune(self) -> int:
        """
        Forget the authentication-failure buckets that have refilled (they
        carry no debt) and the refusals that have ended; O(n), for the
        periodic sweep. Returns how many buckets were forgotten.
        """
        now = self._clock.seconds()
        _forget_ended(self._key_refused_until, now, self._longest_refusal)
        _forget_ended(self._host_refused_until, now, self._longest_refusal)
        return self._failures_by_key.prune() + self._failures_by_host.prune()

    def _message(self, sender: Member, message: bytes, now: float) -> tuple[int, int] | None:
        """
        Relay a message from any dialect, received at C{now} (the clock, in
        seconds): check it, number it in its room's history (one time for
        every copy, and the SENT), then fan it out. Returns its sequence
        number and time in milliseconds; None for C{/exit}.
        """
        if message.startswith(_EXIT_STARTS) and message.strip() == EXIT_COMMAND:
            # The host's /exit closes the room on purpose; anyone else's is leaving it.
            self._store.leave(sender, LeaveReason.EXITED)
            return None
        size = len(message)
        if len(sender.name_bytes) + size + RELAY_OVERHEAD > MAX_DATAGRAM:
            check_relay_size(sender.name, message)
        limit = sender.rate_limit
        if limit is not None and not limit.allow(size, now):
            self._throttle(sender, limit)
        room = sender.room
        # Numbered before any copy goes, so every member sees one order.
        time_ms = int(now * 1000)
        seq = room.history.append(sender.name_bytes, message, time_ms)
        if room.delivery_members:
            self.delivery.fan_out(room.delivery_members, sender, seq, time_ms, message)
        if room.streamed_members and seq:
            # Browsers, over their WebSocket (IMessageStream): in room order too
            # (a cluster room's, once its log numbered it: relay_posted).
            for member in room.streamed_members:
                stream = member.stream
                if member is not sender and stream is not None:
                    stream.send_message(sender, seq, time_ms, message)
        transport = self._port
        stats = self.stats
        if transport is None:
            # The port is closed (shutting down): nothing can be sent any more.
            stats.send_errors += sum(1 for member, _, _ in room.recipients if member is not sender)
            return seq, time_ms
        fanout = self._fanouts.get(room)
        if fanout is None or fanout.recipients is not room.recipients or fanout.transport is not transport:
            fanout = self._fanouts[room] = RoomFanout(room.recipients, transport)
        sent = sent_bytes = errors = 0
        if fanout.legacy is not None:
            if message.startswith(ACTION_PREFIX):
                # Shorter than the usual copy, so the size check above holds.
                legacy = sender.action_prefix + message[len(ACTION_PREFIX) :]
            else:
                legacy = sender.prefix + message
            skip = fanout.legacy_index.get(sender, -1)
            # Every legacy copy is the same bytes: one call for them all.
            failed = fanout.legacy.send(legacy, skip)
            sent = len(fanout.legacy_index) - (skip >= 0) - failed
            sent_bytes = sent * len(legacy)
            errors = failed
        if fanout.sealed:
            native = pack_relay_body(sender.name_bytes, message, time_ms)
            write = transport.write
            for member, address in fanout.sealed:
                if member is sender:
                    continue
                channel = member.channel
                assert channel is not None
                if channel.sent >= REJECT_AFTER:
                    # The key is spent and the client has not asked for a new one.
                    errors += 1
                    continue
                # Re-sealed for each recipient, under its own key and counter.
                data = channel.seal(_RELAY, native)
                # One recipient's failure (gone interface, oversized, wrong
                # family) must not cost the others their copy.
                try:
                    write(data, address)
                except (OSError, MessageLengthError, InvalidAddressError):
                    errors += 1
                else:
                    sent += 1
                    sent_bytes += len(data)
        stats.sent += sent
        stats.sent_bytes += sent_bytes
        if errors:
            stats.send_errors += errors
        return seq, time_ms

    # -- what the delivery side uses (chatd.daemon.delivery.RelayHost) --------

    def relay_message(self, sender: Member, message: bytes) -> tuple[int, int] | None:
        return self._message(sender, message, sender.last_active)

    def charge(self, member: Member, size: int) -> None:
        self._within_limit(member, size)

    # -- what a cluster's node uses (chatd.daemon.cluster) -----------------------

    def relay_posted(
        self, room: Room, name: bytes, message: bytes, seq: int, time_ms: int, *, relayed_here: bool
    ) -> None:
        """
        A message of C{room} that the cluster's room log numbered, to this
        node's members of it: its delivery members get it as POSTED with
        C{seq}, but the sender if it is here; the others in their dialects,
        as L{_message} sends them, unless C{relayed_here} (the sender is
        here, and L{_message} sent their copies at once). Never on the
        single-node path: a node without a cluster never calls it.
        """
        if relayed_here and not room.delivery_members and not room.streamed_members:
            # Everyone here had it on the fast path: this node's own message, back from the cluster.
            return
        sender = room.members.get(name.decode("utf-8", "replace")) if relayed_here else None
        if room.delivery_members:
            self.delivery.fan_out(room.delivery_members, sender, seq, time_ms, message, name)
        if room.streamed_members:
            speaker = (
                sender
                or room.remote_members.get(name.decode("utf-8", "replace"))
                or Member(name.decode("utf-8", "replace"), "", room, _NATIVE, 0.0)
            )
            for member in room.streamed_members:
                stream = member.stream
                if member is not sender and stream is not None:
                    stream.send_message(speaker, seq, time_ms, message)
        if relayed_here or not room.recipients:
            return
        transport = self._port
        stats = self.stats
        if transport is None:
            stats.send_errors += len(room.recipients)
            return
        fanout = self._fanouts.get(room)
        if fanout is None or fanout.recipients is not room.recipients or fanout.transport is not transport:
            fanout = self._fanouts[room] = RoomFanout(room.recipients, transport)
        if fanout.legacy is not None:
            if message.startswith(ACTION_PREFIX):
                legacy = b"* " + name + b" " + message[len(ACTION_PREFIX) :]
            else:
                legacy = name + b": " + message
            failed = fanout.legacy.send(legacy, -1)
            sent = len(fanout.legacy_index) - failed
            stats.sent += sent
            stats.sent_bytes += sent * len(legacy)
            stats.send_errors += failed
        if fanout.sealed:
            native = pack_relay_body(name, message, time_ms)
            for member, _ in fanout.sealed:
                self._send_sealed(member, _RELAY, native)

    def send_udp(self, address: Address, data: bytes) -> None:
        self._send(address, data)

    def send_error(self) -> None:
        self.stats.send_errors += 1

    def forget_room(self, room: Room) -> None:
        """Drop what was prepared for relaying in C{room} (it is closed)."""
        self._fanouts.pop(room, None)

    def _throttle(self, member: Member, limit: MemberRateLimit) -> None:
        if self.observer is not None and limit.should_warn():
            self.observer.member_throttled(member)
        raise RateLimitedError("the member is sending too fast")

    def _within_limit(self, member: Member, size: int) -> None:
        limit = member.rate_limit
        if limit is None or limit.allow(size):
            return
        self._throttle(member, limit)

    def send_notice(self, member: Member, notice: Notice) -> None:
        """Tell a member without a TCP connection, as a datagram (L{IDatagramNotices})."""
        if member.address is None:
            return
        body = notice.encode_for(member.name, member.dialect)
        if member.channel is not None:
            self._send_sealed(member, FrameType.NOTICE, body)
        else:
            self._send(member.address, body)

    def _send_sealed(self, member: Member, frame_type: FrameType, body: bytes) -> None:
        if member.delivery:
            # Along its path, and never a datagram over 1,200 bytes.
            self.delivery.send(member, frame_type, body)
            return
        assert member.address is not None
        data = self.seal_for(member, frame_type, body)
        if data is not None:
            self._send(member.address, data)

    def seal_for(self, member: Member, frame_type: FrameType, body: bytes) -> bytes | None:
        """
        C{body} sealed under C{member}'s key with the server's next counter;
        None, counted as a send error, when the key is spent (its counter at
        REJECT_AFTER) and the client has not asked for a new one.
        """
        channel = member.channel
        assert channel is not None
        if channel.sent >= REJECT_AFTER:
            self.stats.send_errors += 1
            return None
        return channel.seal(frame_type, body)

    def _send(self, address: Address, data: bytes) -> None:
        # One recipient's failure (gone interface, oversized, wrong family)
        # must not cost the others their copy.
        stats = self.stats
        if self._port is None:
            # The port is closed (shutting down): nothing can be sent any more.
            stats.send_errors += 1
            return
        try:
            self._port.write(data, address)
        except (OSError, MessageLengthError, InvalidAddressError):
            stats.send_errors += 1
        else:
            stats.sent += 1
            stats.sent_bytes += len(data)
