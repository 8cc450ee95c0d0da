"""
A node's cluster metrics, read at scrape time (registered beside
chatd.daemon.metrics' when both --redis and --metrics-port are on): its
standing (ClusterStats: Redis reachable, heartbeats, reaps) and its Redis
traffic (the room log's and the bus's BusStats). The names are stable:

  - C{chatd_cluster_redis_up} (gauge): 1 while the node's last heartbeat reached Redis, else 0.
  - C{chatd_cluster_heartbeat_failures_total} (counter): heartbeats that did not reach Redis.
  - C{chatd_cluster_registrations_total} (counter): heartbeats that found the node unregistered
    (its first, and each after Redis lost it).
  - C{chatd_cluster_reaped_members_total}, C{chatd_cluster_reaped_rooms_total} (counters):
    members and rooms of dead nodes this node's reaper removed.
  - C{chatd_cluster_published_total} (counter): envelopes published (messages by the
    room log's post, notices by the bus).
  - C{chatd_cluster_received_total} (counter): envelopes received on the bus from any node.
  - C{chatd_cluster_own_recognised_total} (counter): of those, this node's own messages known
    from their bytes (the batch it sent) instead of decoded.
  - C{chatd_cluster_bus_dropped_total{reason}} (counter): received and dropped: C{undecodable},
    C{handler_failed}, C{duplicate} (a catch-up's overlap).
  - C{chatd_cluster_resynced_total} (counter): messages read back from the log after a gap or an outage.
  - C{chatd_cluster_bus_reconnects_total} (counter): times the bus got Redis back and subscribed again.
  - C{chatd_cluster_redis_round_trips_total{result}} (counter): Redis commands answered (C{ok}) or
    failed (C{failed}), by the log and the bus.
  - C{chatd_cluster_redis_round_trip_seconds} (histogram): a command's sending to its answer.
  - C{chatd_cluster_relay_latency_seconds} (histogram): a message's time at its origin node to its
    arrival on this node's bus (cross-node latency; as good as the nodes' clocks agree).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from chatd.daemon.cluster.service import ClusterService
from chatd.daemon.stats import LatencyHistogram
from chatd.protocol.errors import ClusterUnavailableError

Metric = GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily


def _histogram(name: str, documentation: str, histogram: LatencyHistogram) -> HistogramMetricFamily:
    buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.sum)


class ClusterCollector(Collector):
    """Reads a L{ClusterService}'s counters, and its node's bus counters once it has them, at each scrape."""

    def __init__(self, service: ClusterService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        stats = self._service.stats
        yield GaugeMetricFamily(
            "chatd_cluster_redis_up", "1 while the last heartbeat reached Redis.", value=int(stats.redis_up)
        )
        for name, documentation, value in (
            ("chatd_cluster_heartbeat_failures", "Heartbeats that did not reach Redis.", stats.heartbeat_failures),
            ("chatd_cluster_registrations", "Heartbeats that found the node unregistered.", stats.registrations),
            ("chatd_cluster_reaped_members", "Members of dead nodes removed by this reaper.", stats.reaped_members),
            ("chatd_cluster_reaped_rooms", "Rooms of dead nodes released by this reaper.", stats.reaped_rooms),
        ):
            yield CounterMetricFamily(name, documentation, value=value)
        node = self._service.cluster_node
        try:
            bus = node.log.stats if node is not None else None
        except ClusterUnavailableError:
            bus = None  # Not connected yet: the bus's counters are not there to read.
        if bus is None:
            return
        yield CounterMetricFamily("chatd_cluster_published", "Envelopes published.", value=bus.publishes)
        yield CounterMetricFamily("chatd_cluster_received", "Envelopes received on the bus.", value=bus.received)
        yield CounterMetricFamily(
            "chatd_cluster_own_recognised",
            "This node's own messages back on the bus, known from their bytes instead of decoded.",
            value=bus.own_recognised,
        )
        dropped = CounterMetricFamily("chatd_cluster_bus_dropped", "Envelopes received and dropped.", labels=["reason"])
        for reason, count in (
            ("undecodable", bus.decode_errors),
            ("handler_failed", bus.handler_errors),
            ("duplicate", bus.duplicates),
        ):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily(
            "chatd_cluster_resynced", "Messages read back from the log after a gap or an outage.", value=bus.resynced
        )
        yield CounterMetricFamily("chatd_cluster_bus_reconnects", "Times the bus got Redis back.", value=bus.reconnects)
        trips = CounterMetricFamily("chatd_cluster_redis_round_trips", "Redis commands, by result.", labels=["result"])
        trips.add_metric(["ok"], bus.round_trips)
        trips.add_metric(["failed"], bus.round_trip_errors)
        yield trips
        yield _histogram(
            "chatd_cluster_redis_round_trip_seconds",
            "Seconds from a Redis command to its answer.",
            bus.round_trip_latency,
        )
        yield _histogram(
            "chatd_cluster_relay_latency_seconds",
            "Seconds from a message's time at its origin node to its arrival here (other nodes' messages).",
            bus.relay_latency,
        )
