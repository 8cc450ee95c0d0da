"""
The counters of the TCP side (L{TcpStats}) and of the room store
(L{StoreStats}), as C{RelayStats} (chatd.daemon.relay) holds the UDP side's;
and the L{LatencyHistogram} that the relay and a cluster node's bus
(chatd.daemon.cluster.bus_stats) keep their latencies in.

Each is owned by what updates it: the RoomFactory's C{stats} (its
connections update it too), the IRoomStore's C{stats}. The C{stats} log line
and the metrics endpoint read these objects and nothing else of the factory
or the store's internals. Each also owns the list of labels its counters can
have, so that a reader can report every label from the start, at 0 until it
happens, without a list of its own to keep in step.

The metrics endpoint reads them from another thread: they hold only ints and
Counters, which a reader copies in one step (safe under the GIL).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import ClassVar

from chatd.protocol.errors import (
    FrameTooLargeError,
    HashingBusyError,
    InvalidInvitationError,
    InvalidNameError,
    InvalidPasswordError,
    InvalidUTF8Error,
    MalformedFrameError,
    NotPermittedError,
    ProtocolError,
    RateLimitedError,
    RequestTimeoutError,
    RoomExistsError,
    RoomFullError,
    RoomNotFoundError,
    ServerFullError,
    TooManyInvitationsError,
    TooManyRoomsError,
    UnknownOperationError,
    UnsupportedVersionError,
    UsernameTakenError,
)


class AbortReason:
    """Why a connection was aborted: the keys of L{TcpStats.aborted}."""

    SEND_QUEUE = "send_queue"
    """More than Settings.send_queue bytes waited for a peer that does not read."""
    SEND_QUEUE_TIMEOUT = "send_queue_timeout"
    """The peer did not read for Settings.send_queue_timeout seconds."""
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    """No room (or, model dialect, no UDP port) within Settings.handshake_timeout."""
    CLOSE_TIMEOUT = "close_timeout"
    """A close did not finish within Settings.send_queue_timeout."""


TCP_REFUSAL_ERRORS: tuple[type[ProtocolError], ...] = (
    MalformedFrameError,
    FrameTooLargeError,
    InvalidUTF8Error,
    UnknownOperationError,
    InvalidNameError,
    UnsupportedVersionError,
    RoomExistsError,
    RoomNotFoundError,
    InvalidPasswordError,
    InvalidInvitationError,
    UsernameTakenError,
    ServerFullError,
    TooManyRoomsError,
    RoomFullError,
    TooManyInvitationsError,
    NotPermittedError,
    RequestTimeoutError,
    RateLimitedError,
    HashingBusyError,
)
"""
Every error a TCP frame can be answered with: raised by the frame decoder
(malformed, too large, invalid UTF-8, unknown operation, timed out), by the
connection's own checks and limits, or by the store.
"""


def _every(labels: tuple[str, ...], counts: Counter[str]) -> dict[str, int]:
    """Each label of C{labels}, in that order, with its count in C{counts} (0 until it happens)."""
    # Copied in one step: the metrics endpoint reads while the reactor counts.
    copied = dict(counts)
    return {label: copied.get(label, 0) for label in labels}


class TcpStats:
    """
    The TCP side's counters, updated by the RoomFactory and its connections
    (TCP and TLS alike), read by the stats log line and the metrics endpoint.
    """

    __slots__ = ("aborted", "connections", "joins", "rate_limited", "refused_requests", "rooms_created")

    abort_reasons: ClassVar[tuple[str, ...]] = (
        AbortReason.SEND_QUEUE,
        AbortReason.SEND_QUEUE_TIMEOUT,
        AbortReason.HANDSHAKE_TIMEOUT,
        AbortReason.CLOSE_TIMEOUT,
    )
    """Every reason in L{aborted}'s counts, now or later."""
    refusal_reasons: ClassVar[tuple[str, ...]] = tuple(error.reason for error in TCP_REFUSAL_ERRORS)
    """Every reason in L{refused_requests}' counts, now or later."""
    rate_limits: ClassVar[tuple[str, ...]] = ("connections", "password_attempts", "hashing_per_host")
    """Every limit in L{rate_limited}'s counts, now or later."""

    def __init__(self) -> None:
        self.connections = 0
        """TCP (and TLS) connections open now: a gauge, kept equal to the factory's set of them."""
        self.rooms_created = 0
        """Rooms created over the factory's connections."""
        self.joins = 0
        """Existing rooms joined over the factory's connections."""
        self.rate_limited: Counter[str] = Counter()
        """
        Requests refused as RATE_LIMITED, by limit (one of L{rate_limits}):
        new connections per address, password attempts per address, and
        password hashes already running for one address.
        """
        self.aborted: Counter[str] = Counter()
        """Connections aborted over a limit, by L{AbortReason} (one of L{abort_reasons})."""
        self.refused_requests: Counter[str] = Counter()
        """
        Frames answered with a refusal (a non-zero status), by the reason of
        the error (one of L{refusal_reasons}): malformed frames, and requests refused.
        """

    def rate_limited_by_limit(self) -> dict[str, int]:
        """Every limit of L{rate_limits}, with its count (0 until it happens)."""
        return _every(self.rate_limits, self.rate_limited)


class StoreStats:
    """
    The room store's counters, updated by the store (an IRoomStore's
    C{stats}), read by the sweep's repair report, the stats log line and the
    metrics endpoint.
    """

    __slots__ = ("hashing_in_flight", "password_checks", "refused", "repaired")

    password_check_results: ClassVar[tuple[str, ...]] = ("accepted", "refused")
    """Every result in L{password_checks}' counts, now or later."""
    caps: ClassVar[tuple[str, ...]] = ("rooms_per_host", "invitations")
    """The limits of L{refused} that cap what one peer may hold (the other one, "hashing", is a rate limit)."""

    def __init__(self) -> None:
        self.hashing_in_flight = 0
        """
        Password hashes and checks (create and join) handed to the hash
        runner and not finished: at most max_hashing, each holding scrypt's
        memory while it runs. A gauge, and the count that limit is checked against.
        """
        self.password_checks: Counter[str] = Counter()
        """Join passwords checked (each an scrypt run), by result (one of L{password_check_results})."""
        self.refused: Counter[str] = Counter()
        """
        Requests refused by a limit of the store: "hashing" (max_hashing
        hashes in flight: RATE_LIMITED), "rooms_per_host" (the origin holds
        max_rooms_per_host open rooms: SERVER_FULL), "invitations" (the room
        holds max_invitations live invitations: ROOM_FULL).
        """
        self.repaired: Counter[str] = Counter()
        """
        What the store's expiry found broken and removed, by kind, each a
        bug to log: "rooms" (open without a live host among its members),
        "members" (holding a token without being in an open room, or listed
        by a room without a live token), "key_ids" and "invitations"
        (pointing at no live member or open room), "origins" (per-origin
        room counts that had drifted from the open rooms, recounted).
        """

    def refused_by_cap(self) -> dict[str, int]:
        """Every limit of L{caps}, with its count (0 until it happens)."""
        return _every(self.caps, self.refused)


class DeliveryStats:
    """
    The counters of reliable delivery (docs/reliability.md, 7), updated by
    the relay's delivery side (chatd.daemon.delivery) and held by the
    relay's C{RelayStats}; read by the stats log line and the metrics
    endpoint. The gauges (history sizes, members on TCP) are not here: they
    are read from the rooms when asked for (C{ChatServer.delivery_gauges}).
    """

    __slots__ = ("duplicates", "gone", "repaired", "tunneled_in", "tunneled_out")

    def __init__(self) -> None:
        self.duplicates = 0
        """SENDs seen again: answered with the SENT again, or, below the duplicate window, dropped."""
        self.repaired = 0
        """Messages sent again as POSTED for REPAIR requests."""
        self.gone = 0
        """GONE frames sent: parts of REPAIR requests older than the history."""
        self.tunneled_in = 0
        """Operation 8 frames received from members (each a sealed frame), dropped ones included."""
        self.tunneled_out = 0
        """Sealed frames sent to members as operation 8 frames (their path is TCP, or the frame is over 1,200 bytes)."""


class LatencyHistogram:
    """
    Seconds, in fixed buckets: what a metrics endpoint turns into a
    Prometheus histogram at scrape time.

    C{counts[i]} holds the observations at most C{bounds[i]} and above the
    bound before it; the last holds those above every bound. Not cumulative,
    so an observation is one bisection and one list increment.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        """The sum of the observations, in seconds."""

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(le, observations at most le) for each bucket, +Inf last (as float('inf')): what a scrape exposes."""
        running = 0
        result: list[tuple[float, int]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result
