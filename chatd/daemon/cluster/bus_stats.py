"""
The counters of a node's Redis side, for the Prometheus endpoint
(chatd.daemon.metrics reads them at scrape time, as it reads RelayStats):
what the bus published and received, what it could not decode, its
reconnections, and every Redis round trip with its latency, as the room log
and the bus measure them. Plain counters: no I/O, no clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatd.daemon.stats import LatencyHistogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""
Upper bounds, in seconds, of the latency histograms' buckets (Prometheus's
C{le}): from half a millisecond (a round trip to a Redis on the same host)
to seconds (a Redis that is struggling); anything slower lands in +Inf.
"""


@dataclass(slots=True)
class BusStats:
    """
    A node's counters for its room log and its bus. One object may serve
    both (the node passes the same one to each), so that a scrape reads one.
    """

    publishes: int = 0
    """Envelopes published: notices by the bus, messages by the log's post (one PUBLISH each, inside the script)."""
    received: int = 0
    """Envelopes received on the bus and decoded (or, this node's own, known from their bytes)."""
    own_recognised: int = 0
    """This node's own messages back on the bus known from their bytes, not decoded (bus.ClusterBus._took_own)."""
    decode_errors: int = 0
    """Messages received that were not envelopes this node reads: dropped."""
    handler_errors: int = 0
    """Envelopes whose handler raised: logged, and the bus went on."""
    duplicates: int = 0
    """POSTED envelopes dropped because the room's handler already had their sequence number (a resync's overlap)."""
    resynced: int = 0
    """POSTED envelopes read back from the log after a gap or a reconnection, and handed over."""
    resync_failures: int = 0
    """Resyncs that could not read the log (Redis went away again): retried at the next reconnection."""
    disconnects: int = 0
    """Times the bus lost its Redis connection."""
    reconnects: int = 0
    """Times the bus got its connection back, and re-subscribed."""
    stale_epochs: int = 0
    """Posts and reads the log refused because the room's incarnation had changed."""
    round_trips: int = 0
    """Redis commands (or scripts) answered, over the log and the bus."""
    round_trip_errors: int = 0
    """Redis commands that failed (refused, or the connection lost)."""
    round_trip_latency: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(LATENCY_BUCKETS))
    """Seconds from a command's sending to its answer."""
    relay_latency: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(LATENCY_BUCKETS))
    """
    Seconds from a message's time at its origin node to its arrival on this
    node's bus, for messages from other nodes: the cross-node latency (as good
    as the nodes' clocks agree).
    """

    def round_trip(self, seconds: float, *, failed: bool = False) -> None:
        """One Redis round trip that took C{seconds}."""
        if failed:
            self.round_trip_errors += 1
            return
        self.round_trips += 1
        self.round_trip_latency.observe(seconds)
