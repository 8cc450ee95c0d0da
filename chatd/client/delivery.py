"""
Reliable delivery, the client's sending side (docs/reliability.md, section 4):
the round-trip estimator, the outbox of acknowledged sends, the UDP/TCP path
decision and the counters /stats shows. The receiving side, the timeline, is
in chatd.client.timeline.

Sans-IO: plain objects that take the time (float seconds, any monotonic clock)
as input and return what to do. They open no socket, start no timer and log
nothing, so that the core drives them with one timer (C{next_deadline}) and
the tests drive them with a simulated clock.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from chatd.protocol.delivery import MAX_NATIVE_DATAGRAM, SEQ_MAX, Sent


@dataclass(slots=True)
class DeliveryStats:
    """
    A member's own delivery counts, for /stats. One instance is shared by the
    outbox, the timeline and the path monitor of a client, and lives as long
    as the client (across reconnections), as the outbox does.
    """

    retransmissions: int = 0
    """SENDs sent again: timer expiries, /retry and resending after a rejoin (not the first sends)."""
    repaired: int = 0
    """Messages that arrived after a REPAIR asked for them: the gaps repaired, in messages."""
    duplicates: int = 0
    """POSTED messages dropped because they were already shown or already waiting."""
    missed: int = 0
    """Messages reported as "N messages missed" (GONE: older than the room's history)."""
    path: str = "UDP"
    """The path messages take: "UDP" or "TCP"."""


class RttEstimator:
    """
    RFC 6298's retransmission timer: SRTT and RTTVAR from round-trip samples,
    RTO = SRTT + 4 * RTTVAR, clamped to [MIN_RTO, MAX_RTO], INITIAL_RTO before
    any sample. One instance serves the outbox (when to send again), the
    timeline (when to ask again for a gap) and the path monitor (samples from
    keepalive answers).
    """

    INITIAL_RTO = 1.0
    MIN_RTO = 0.2
    """RFC 6298 says 1 s; 0.2 s is what Linux's TCP uses, for a chat where a second's wait shows."""
    MAX_RTO = 10.0
    ALPHA = 1 / 8
    BETA = 1 / 4
    MIN_REORDER_DELAY = 0.02
    """The least wait before asking for a gap: shorter than that, reordering looks like loss."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar: float | None = None

    def sample(self, rtt: float) -> None:
        """One round trip, in seconds. Negative samples (a clock step) count as 0."""
        rtt = max(rtt, 0.0)
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            # RTTVAR first, with the old SRTT: the order RFC 6298 (2.3) gives.
            self.rttvar = (1 - self.BETA) * self.rttvar + self.BETA * abs(self.srtt - rtt)
            self.srtt = (1 - self.ALPHA) * self.srtt + self.ALPHA * rtt

    @property
    def rto(self) -> float:
        if self.srtt is None or self.rttvar is None:
            return self.INITIAL_RTO
        return min(max(self.srtt + 4 * self.rttvar, self.MIN_RTO), self.MAX_RTO)

    @property
    def reorder_delay(self) -> float:
        """
        How long a gap may be reordering before it is asked for: SRTT / 2, at
        least MIN_REORDER_DELAY. Before any sample, a tenth of the initial RTO
        (0.1 s): short enough that a lost message at the start is not
        noticeably late, long enough for common reordering.
        """
        if self.srtt is None:
            return self.INITIAL_RTO / 10
        return max(self.srtt / 2, self.MIN_REORDER_DELAY)

    def backed_off(self, sends: int) -> float:
        """The wait after a message's C{sends}-th send: the RTO doubled at each retransmission, at most MAX_RTO."""
        return min(self.rto * (1 << min(sends - 1, 16)), self.MAX_RTO)


class MessageState(Enum):
    """A sent message's state, as the user sees it."""

    SENDING = "sending"
    SENT = "sent"
    NOT_DELIVERED = "not delivered"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A SEND to put on the wire now."""

    message_id: int
    text: str


@dataclass(frozen=True, slots=True)
class MessageSent:
    """The server acknowledged a message: it got room number C{seq} at C{time_ms} (server clock, ms)."""

    message_id: int
    seq: int
    time_ms: int
    state: MessageState = MessageState.SENT


@dataclass(frozen=True, slots=True)
class MessageFailed:
    """The outbox gave up on a message (8 sends or 30 s): it is not delivered until /retry."""

    message_id: int
    text: str
    state: MessageState = MessageState.NOT_DELIVERED


@dataclass(frozen=True, slots=True)
class OutboxDue:
    """What the outbox's timer produced: SENDs to put on the wire, and messages given up."""

    sends: tuple[Outgoing, ...] = ()
    failed: tuple[MessageFailed, ...] = ()


@dataclass(slots=True)
class _Message:
    message_id: int
    text: str
    state: MessageState = MessageState.SENDING
    in_flight: bool = False
    sends: int = 0
    """Sends in the current attempt (reset by retry and resend_all)."""
    total_sends: int = 0
    """Sends ever: Karn's rule takes an RTT sample only from a message sent exactly once."""
    started: float = 0.0
    """When the current attempt's first send went: the 30 s give-up counts from it."""
    last_sent: float = 0.0
    deadline: float = 0.0


class Outbox:
    """
    The messages this client sent and their acknowledgements (SEND / SENT).

    Message ids go from 1, one per new message, for the life of the object:
    the core keeps one outbox across reconnections, so that a message sent
    again after a rejoin keeps its id and the server's duplicate window
    recognises it. At most MAX_IN_FLIGHT messages are unacknowledged on the
    wire; the others wait in id order (state C{sending} too). Acknowledged
    messages are forgotten (the event told the UI), so memory holds only the
    unacknowledged, the waiting and the failed.
    """

    MAX_IN_FLIGHT = 32
    MAX_SENDS = 8
    GIVE_UP_AFTER = 30.0

    def __init__(self, rtt: RttEstimator | None = None, stats: DeliveryStats | None = None) -> None:
        self.rtt = rtt if rtt is not None else RttEstimator()
        self.stats = stats if stats is not None else DeliveryStats()
        self._next_id = 1
        self._messages: dict[int, _Message] = {}
        """Every message not acknowledged: in flight, waiting, or failed."""
        self._waiting: list[int] = []
        """A heap of ids waiting for a place in flight: the oldest first, retried ones included."""
        self._in_flight: dict[int, _Message] = {}

    # What the UI reads.

    def state(self, message_id: int) -> MessageState | None:
        """C{sending} or C{not delivered}; None once acknowledged (the MessageSent said so) or unknown."""
        message = self._messages.get(message_id)
        return message.state if message is not None else None

    def text(self, message_id: int) -> str | None:
        """The text of a message not acknowledged yet (for the events that name it); None otherwise."""
        message = self._messages.get(message_id)
        return message.text if message is not None else None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def failed(self) -> list[int]:
        return sorted(m.message_id for m in self._messages.values() if m.state is MessageState.NOT_DELIVERED)

    @property
    def unacknowledged(self) -> int:
        """Messages not acknowledged and not given up: in flight or waiting."""
        return sum(1 for m in self._messages.values() if m.state is MessageState.SENDING)

    # What the core feeds.

    def post(self, text: str) -> int:
        """A new message from the user: its id. It goes on the wire at the next C{due}."""
        message_id = self._next_id
        if message_id > SEQ_MAX:
            raise OverflowError("message ids exhausted")
        self._next_id += 1
        self._messages[message_id] = _Message(message_id, text)
        heapq.heappush(self._waiting, message_id)
        return message_id

    def acknowledged(self, sent: Sent, now: float) -> MessageSent | None:
        """
        A SENT: the message becomes C{sent}, with its room number and server
        time. None for a SENT of a message already acknowledged (a duplicate:
        the server answers every copy of a SEND) or never sent by this outbox.
        A message given up on is acknowledged all the same: the server did get
        it, and the user should know.
        """
        message = self._messages.pop(sent.message_id, None)
        if message is None:
            return None
        if message.in_flight:
            del self._in_flight[message.message_id]
            # Karn's rule: a SENT for a message sent more than once may answer any of its copies.
            if message.total_sends == 1:
                self.rtt.sample(now - message.last_sent)
        elif message.state is MessageState.SENDING:
            # Waiting (after retry or resend_all) but acknowledged from an earlier attempt.
            self._waiting.remove(message.message_id)
            heapq.heapify(self._waiting)
        return MessageSent(sent.message_id, sent.seq, sent.time_ms)

    def due(self, now: float) -> OutboxDue:
        """
        Call when C{next_deadline} has come (or after C{post}, C{retry},
        C{resend_all}, C{acknowledged}): the SENDs to put on the wire now, and
        the messages given up, oldest first.
        """
        sends: list[Outgoing] = []
        failed: list[MessageFailed] = []
        for message in sorted(self._in_flight.values(), key=lambda m: m.message_id):
            if message.deadline > now:
                continue
            if message.sends >= self.MAX_SENDS or now >= message.started + self.GIVE_UP_AFTER:
                del self._in_flight[message.message_id]
                message.in_flight = False
                message.state = MessageState.NOT_DELIVERED
                failed.append(MessageFailed(message.message_id, message.text))
                continue
            self.stats.retransmissions += 1
            self._send(message, now)
            sends.append(Outgoing(message.message_id, message.text))
        # Places freed by failures go to the waiting, in the same call.
        while self._waiting and len(self._in_flight) < self.MAX_IN_FLIGHT:
            message = self._messages[heapq.heappop(self._waiting)]
            if message.total_sends:
                # Sent before (retry, resend_all): a retransmission all the same.
                self.stats.retransmissions += 1
            message.in_flight = True
            message.sends = 0
            message.started = now
            self._in_flight[message.message_id] = message
            self._send(message, now)
            sends.append(Outgoing(message.message_id, message.text))
        return OutboxDue(tuple(sends), tuple(failed))

    def _send(self, message: _Message, now: float) -> None:
        message.sends += 1
        message.total_sends += 1
        message.last_sent = now
        message.deadline = min(now + self.rtt.backed_off(message.sends), message.started + self.GIVE_UP_AFTER)

    def next_deadline(self) -> float | None:
        """
        When C{due} has something to do next; None when nothing is in flight
        or waiting. 0.0 (a time already past) when messages wait for a place
        that is free: call C{due} at once.
        """
        if self._waiting and len(self._in_flight) < self.MAX_IN_FLIGHT:
            return 0.0
        return min((m.deadline for m in self._in_flight.values()), default=None)

    def unacknowledged_since(self) -> float | None:
        """When the oldest message in flight was first sent in its attempt; None when none is in flight."""
        return min((m.started for m in self._in_flight.values()), default=None)

    def retry(self) -> list[int]:
        """/retry: the failed messages wait to be sent again under their own ids (C{sending}); their ids."""
        ids = self.failed
        for message_id in ids:
            message = self._messages[message_id]
            message.state = MessageState.SENDING
            heapq.heappush(self._waiting, message_id)
        return ids

    def resend_all(self) -> list[int]:
        """
        After a rejoin: every message in flight goes again at the next C{due},
        under its id, with a fresh attempt (8 sends, 30 s), since the earlier
        sends went to a connection that is gone. Failed messages stay failed
        (/retry). The ids sent again.
        """
        ids = sorted(self._in_flight)
        for message in self._in_flight.values():
            message.in_flight = False
            message.sends = 0
            heapq.heappush(self._waiting, message.message_id)
        self._in_flight.clear()
        return ids

    def abandon(self) -> list[tuple[int, str]]:
        """
        Forget every message not acknowledged (the membership they were for
        is over: a new room, or a server that no longer grants the
        feature). The ids and texts of those that were still C{sending}.
        Ids go on from where they were, so that none is reused under the
        same client id.
        """
        sending = [(m.message_id, m.text) for m in self._messages.values() if m.state is MessageState.SENDING]
        self._messages.clear()
        self._waiting.clear()
        self._in_flight.clear()
        return sorted(sending)

    def __iter__(self) -> Iterator[tuple[int, MessageState]]:
        """Every message not acknowledged, with its state, in id order."""
        for message_id in sorted(self._messages):
            yield message_id, self._messages[message_id].state


class Path(Enum):
    """How sealed frames go between the client and the server."""

    UDP = "UDP"
    TCP = "TCP"
    """Inside operation 8 frames on the control connection."""


UDP_BLOCKED = "UDP blocked: messages go over TCP"
UDP_WORKS = "UDP works again: messages go over UDP"


@dataclass(frozen=True, slots=True)
class PathChanged:
    """The path changed: C{message} is the sentence to show."""

    path: Path
    message: str


@dataclass(frozen=True, slots=True)
class PathActions:
    """What the path monitor wants done now."""

    changed: PathChanged | None = None
    keepalive: Path | None = None
    """Send a KEEPALIVE now by this path: it moves the server's path too. Already counted as sent."""
    probe: bool = False
    """Send a PROBE by UDP now. Already counted as sent."""


class PathMonitor:
    """
    The UDP/TCP decision of docs/reliability.md, section 4. The core keeps its
    own keepalive schedule and asks C{keepalive} which path each keepalive
    takes; it reports every KEEPALIVE_ACK with the transport it came by, and
    runs C{poll} at C{next_deadline}.

    To TCP: no KEEPALIVE_ACK by UDP within FIRST_ANSWER_WAIT of the first
    keepalive, or MISSES_FOR_TCP keepalives in a row unanswered (a keepalive
    is unanswered when the next one goes out with no UDP answer in between).
    A SENT by UDP answers too (L{round_trip}): it proves both directions as
    well as a KEEPALIVE_ACK does, so a lossy but working path, where a chatting
    client gets many SENTs and few keepalive answers, is not taken for a
    blocked one. Three misses in a row: at 20 % loss each way a keepalive's
    round trip fails 36 % of the time, and two in a row (13 %) happened often
    enough in the simulation to send working clients to TCP.
    And, while chatting: a message sent SEND_WAIT ago and still not
    acknowledged, with nothing at all heard by UDP since it went (L{heard}):
    keepalives come every 30 s by default, so three misses would take a
    minute and a half, while a conversation's own silence tells in seconds.
    On TCP: a PROBE by UDP after PROBE_FIRST, the wait doubling to PROBE_MAX.
    Back to UDP: any KEEPALIVE_ACK by UDP (a probe's answer, or a late
    keepalive's).
    """

    FIRST_ANSWER_WAIT = 3.0
    SEND_WAIT = 3.0
    MISSES_FOR_TCP = 3
    PROBE_FIRST = 5.0
    PROBE_MAX = 30.0

    def __init__(self, rtt: RttEstimator | None = None, stats: DeliveryStats | None = None) -> None:
        self.rtt = rtt if rtt is not None else RttEstimator()
        self.stats = stats if stats is not None else DeliveryStats()
        self.path = Path.UDP
        self.stats.path = self.path.value
        self._first_deadline: float | None = None
        """While waiting for the first keepalive's answer: when the path goes to TCP without one."""
        self._answered_once = False
        self._unanswered = False
        """Whether the last keepalive by UDP has had no answer by UDP yet."""
        self._misses = 0
        self._heard_at = -math.inf
        """When a frame last came from the server by UDP."""
        self._probe_at: float | None = None
        self._probe_wait = self.PROBE_FIRST
        # Per transport: how many keepalives or probes are unanswered, and when
        # the only one went (an RTT sample; None when several: ambiguous).
        self._udp_sent: float | None = None
        self._udp_outstanding = 0
        self._tcp_sent: float | None = None
        self._tcp_outstanding = 0

    def via_tcp(self, frame_size: int) -> bool:
        """Whether a sealed frame of C{frame_size} bytes goes over the control connection (operation 8)."""
        return self.path is Path.TCP or frame_size > MAX_NATIVE_DATAGRAM

    def keepalive(self, now: float) -> PathActions:
        """
        The core sends a keepalive now: C{keepalive} says by which path, and
        C{changed} is set when this keepalive is the one that finds UDP blocked.
        """
        changed = None
        if self.path is Path.UDP:
            if self._unanswered and self._answered_once:
                self._misses += 1
            if self._misses >= self.MISSES_FOR_TCP:
                changed = self._to_tcp(now)
            else:
                if not self._answered_once and self._first_deadline is None:
                    self._first_deadline = now + self.FIRST_ANSWER_WAIT
                self._unanswered = True
        self._sent(self.path, now)
        return PathActions(changed=changed, keepalive=self.path)

    def _sent(self, path: Path, now: float) -> None:
        if path is Path.UDP:
            self._udp_outstanding += 1
            self._udp_sent = now if self._udp_outstanding == 1 else None
        else:
            self._tcp_outstanding += 1
            self._tcp_sent = now if self._tcp_outstanding == 1 else None

    def keepalive_ack(self, now: float, by_udp: bool) -> PathActions:
        """A KEEPALIVE_ACK came, by UDP or inside operation 8."""
        # An RTT sample only when one request was outstanding on that transport (Karn's rule, for keepalives).
        if by_udp:
            if self._udp_sent is not None:
                self.rtt.sample(now - self._udp_sent)
            self._udp_sent, self._udp_outstanding = None, 0
        else:
            if self._tcp_sent is not None:
                self.rtt.sample(now - self._tcp_sent)
            self._tcp_sent, self._tcp_outstanding = None, 0
            return PathActions()
        self._answered_once = True
        self._first_deadline = None
        self._unanswered = False
        self._misses = 0
        if self.path is Path.UDP:
            return PathActions()
        # Back to UDP: a KEEPALIVE by UDP moves the server's path back too.
        self.path = Path.UDP
        self.stats.path = Path.UDP.value
        self._probe_at = None
        self._unanswered = True
        self._sent(Path.UDP, now)
        return PathActions(changed=PathChanged(Path.UDP, UDP_WORKS), keepalive=Path.UDP)

    def heard(self, now: float) -> None:
        """A frame came from the server by UDP (any frame: it shows that this direction works)."""
        self._heard_at = now

    def sends_unanswered(self, now: float, since: float | None) -> PathActions:
        """
        The outbox's oldest message in flight went out at C{since} (None:
        nothing in flight). On UDP, and nothing heard by UDP since then for
        SEND_WAIT: UDP is blocked.
        """
        if self.path is not Path.UDP or since is None or self._heard_at >= since or now < since + self.SEND_WAIT:
            return PathActions()
        changed = self._to_tcp(now)
        self._sent(Path.TCP, now)
        return PathActions(changed=changed, keepalive=Path.TCP)

    def send_deadline(self, since: float | None) -> float | None:
        """When L{sends_unanswered} would find UDP blocked, if nothing is heard by then."""
        if self.path is not Path.UDP or since is None or self._heard_at >= since:
            return None
        return since + self.SEND_WAIT

    def round_trip(self) -> None:
        """A SENT came by UDP: UDP works both ways, as a KEEPALIVE_ACK says (the outbox takes its RTT sample)."""
        if self.path is Path.UDP:
            self._answered_once = True
            self._first_deadline = None
            self._unanswered = False
            self._misses = 0

    def poll(self, now: float) -> PathActions:
        """Call at C{next_deadline}: the first answer's wait ran out, or a probe is due."""
        if self._first_deadline is not None and now >= self._first_deadline:
            changed = self._to_tcp(now)
            self._sent(Path.TCP, now)
            return PathActions(changed=changed, keepalive=Path.TCP)
        if self._probe_at is not None and now >= self._probe_at:
            self._probe_wait = min(self._probe_wait * 2, self.PROBE_MAX)
            self._probe_at = now + self._probe_wait
            self._sent(Path.UDP, now)
            return PathActions(probe=True)
        return PathActions()

    def _to_tcp(self, now: float) -> PathChanged:
        self.path = Path.TCP
        self.stats.path = Path.TCP.value
        self._first_deadline = None
        self._misses = 0
        self._unanswered = False
        self._probe_wait = self.PROBE_FIRST
        self._probe_at = now + self.PROBE_FIRST
        return PathChanged(Path.TCP, UDP_BLOCKED)

    def next_deadline(self) -> float | None:
        """When C{poll} has something to do; None when nothing is pending."""
        return self._first_deadline if self.path is Path.UDP else self._probe_at
