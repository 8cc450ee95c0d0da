"""
Prometheus metrics: an optional HTTP endpoint on its own port.

Off unless C{--metrics-port} is given, and on loopback unless
C{--metrics-interface} says otherwise: the numbers tell an onlooker how busy
the server is. C{GET /metrics} on that port answers in Prometheus' text
format, from prometheus-client's Twisted resource, with a registry of its
own (never the process-wide default one, so that tests and several services
in one process do not clash).

The values are read at scrape time by L{ChatCollector} from the three
objects that hold the server's counters: the relay's C{RelayStats} (the UDP
side), the TCP factory's C{TcpStats} and the store's C{StoreStats}
(chatd.daemon.stats), each of which owns the lists of the labels reported
from the first scrape on, at 0; the rooms and members open are the store's
own counts (C{IRoomStore.rooms}, C{member_count}). Nothing is done per
datagram for the metrics but two byte counts and, on one datagram in
L{LATENCY_SAMPLE_EVERY}, two C{time.perf_counter} calls. The names are
stable; dashboards may rely on them:

  - C{chatd_rooms} (gauge): rooms open.
  - C{chatd_members} (gauge): members in all rooms.
  - C{chatd_tcp_connections} (gauge): TCP (and TLS) connections open.
  - C{chatd_datagrams_received_total} (counter): UDP datagrams received.
  - C{chatd_datagrams_sent_total} (counter): UDP datagrams sent: relayed
    messages, notices and keepalive acknowledgements.
  - C{chatd_datagram_send_errors_total} (counter): datagrams that could not
    be sent (the socket refused, or a spent key).
  - C{chatd_datagrams_dropped_total{reason}} (counter): datagrams received and
    dropped, by reason (C{malformed}, C{unknown_token}, C{rate_limited}, ...:
    the C{reason} of chatd.protocol.errors; every reason the UDP side can drop for,
    C{RelayStats.drop_reasons}, is reported from the start, at 0).
  - C{chatd_udp_received_bytes_total} (counter): bytes of every datagram received.
  - C{chatd_udp_sent_bytes_total} (counter): bytes of every datagram sent.
  - C{chatd_relay_latency_seconds} (histogram): seconds from a datagram's
    arrival to the end of its fan-out to the room, for one datagram in 16
    (a sample; dropped datagrams are not timed).
  - C{chatd_rate_limited_total{limit}} (counter): what a rate limit turned
    away: C{datagrams} (a member's messages or bytes per second; dropped),
    C{connections} (new TCP connections per address) and
    C{password_attempts} (creates and joins with a password, joins with an
    invitation, per address), C{hashing} (password hashes already running in
    the daemon) and C{hashing_per_host} (already running for one address),
    all but the first refused with RATE_LIMITED.
  - C{chatd_limit_refused_total{limit}} (counter): requests refused by a
    cap on what one peer may hold: C{rooms_per_host} (SERVER_FULL) and
    C{invitations} (live invitations of one room; ROOM_FULL).
  - C{chatd_tcp_aborted_total{reason}} (counter): TCP connections reset by
    the daemon: C{send_queue} and C{send_queue_timeout} (a peer that does not
    read what it is sent), C{handshake_timeout}, C{close_timeout}.
  - C{chatd_tcp_refused_total{reason}} (counter): TCP frames answered
    with a refusal, by the reason of chatd.protocol.errors: malformed frames
    (C{malformed}, C{too_large}, C{invalid_utf8}, C{unknown_operation},
    C{timed_out}) and refused requests (C{room_exists}, C{invalid_password},
    C{not_permitted}, ...); every reason (C{TcpStats.refusal_reasons}) is
    reported from the start, at 0.
  - C{chatd_password_hashing} (gauge): password hashes running now.
  - C{chatd_store_repaired_total{kind}} (counter): what the sweep found half
    done and removed (a bug of chatd's whenever it is not 0): C{rooms},
    C{members}, C{key_ids}, C{invitations}, C{origins}.
  - C{chatd_rooms_created_total} (counter): rooms created.
  - C{chatd_joins_total} (counter): joins of existing rooms.
  - C{chatd_password_checks_total{result}} (counter): join passwords checked
    (each an scrypt run on the thread pool), C{accepted} or C{refused}.
  - C{chatd_delivery_duplicates_total} (counter): SENDs seen again (reliable
    delivery, docs/reliability.md): answered with their SENT again, or
    dropped when older than the duplicate window.
  - C{chatd_delivery_repaired_total} (counter): messages sent again as
    POSTED for REPAIR requests.
  - C{chatd_delivery_gone_total} (counter): GONE frames sent (parts of
    REPAIR requests older than the history).
  - C{chatd_history_messages} and C{chatd_history_bytes} (gauges): messages,
    and bytes of names and texts, held by every room's history together.
  - C{chatd_members_on_tcp} (gauge): members with the delivery feature whose
    path is TCP (their last keepalive came inside an operation 8 frame).
  - C{chatd_tunneled_frames_total{direction}} (counter): sealed frames
    carried over TCP as operation 8 frames: C{in} from members (dropped ones
    included), C{out} to them.

Besides these, the registry holds prometheus-client's standard C{process_*}
metrics (CPU seconds, resident memory, open and maximum file descriptors)
where the platform has C{/proc}.

The resource answers on the reactor's thread pool, so L{ChatCollector} reads
the server's counters from another thread: it only reads, and copies every
dict in one step, which is safe under the GIL; a scrape may see one
datagram's counters half updated, nothing worse.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from typing_extensions import override

from chatd.daemon.controller import ChatServer
from chatd.daemon.relay import LATENCY_SAMPLE_EVERY
from chatd.daemon.stats import StoreStats

METRICS_PATH = b"metrics"


class ChatCollector:
    """A prometheus-client collector that reads a ChatServer's counters at scrape time."""

    def __init__(self, server: ChatServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        relay = server.relay.stats
        tcp = server.tcp_factory.stats
        store: StoreStats = server.store.stats
        yield GaugeMetricFamily("chatd_rooms", "Rooms open.", value=len(server.store.rooms()))
        yield GaugeMetricFamily("chatd_members", "Members in all rooms.", value=server.store.member_count())
        yield GaugeMetricFamily("chatd_tcp_connections", "TCP (and TLS) connections open.", value=tcp.connections)
        yield CounterMetricFamily("chatd_datagrams_received", "UDP datagrams received.", value=relay.received)
        yield CounterMetricFamily(
            "chatd_datagrams_sent",
            "UDP datagrams sent: relayed messages, notices and keepalive acknowledgements.",
            value=relay.sent,
        )
        yield CounterMetricFamily(
            "chatd_datagram_send_errors", "UDP datagrams that could not be sent.", value=relay.send_errors
        )
        yield _by_label(
            "chatd_datagrams_dropped", "UDP datagrams dropped, by reason.", "reason", relay.dropped_by_reason()
        )
        yield CounterMetricFamily(
            "chatd_udp_received_bytes", "Bytes of the UDP datagrams received.", value=relay.received_bytes
        )
        yield CounterMetricFamily("chatd_udp_sent_bytes", "Bytes of the UDP datagrams sent.", value=relay.sent_bytes)
        yield self._latency()
        yield _by_label(
            "chatd_rate_limited",
            "What a rate limit turned away: datagrams (dropped), connections and password_attempts (refused).",
            "limit",
            server.rate_limit_hits(),
        )
        yield _by_label(
            "chatd_limit_refused",
            "Requests refused by a cap on what one peer may hold, by limit.",
            "limit",
            server.limit_refusals(),
        )
        yield _by_label(
            "chatd_tcp_aborted",
            "TCP connections reset by the daemon, by reason.",
            "reason",
            tcp.aborted,
            tcp.abort_reasons,
        )
        yield _by_label(
            "chatd_tcp_refused",
            "TCP frames answered with a refusal, by reason.",
            "reason",
            tcp.refused_requests,
            tcp.refusal_reasons,
        )
        yield GaugeMetricFamily("chatd_password_hashing", "Password hashes running now.", value=store.hashing_in_flight)
        yield _by_label(
            "chatd_store_repaired",
            "What the sweep found half done and removed, by kind: a bug of chatd's whenever it is not 0.",
            "kind",
            store.repaired,
        )
        yield CounterMetricFamily("chatd_rooms_created", "Rooms created.", value=tcp.rooms_created)
        yield CounterMetricFamily("chatd_joins", "Joins of existing rooms.", value=tcp.joins)
        yield _by_label(
            "chatd_password_checks",
            "Join passwords checked (scrypt), by result.",
            "result",
            store.password_checks,
            store.password_check_results,
        )
        yield from self._delivery()

    def _delivery(self) -> Iterator[Metric]:
        delivery = self._server.relay.stats.delivery
        gauges = self._server.delivery_gauges()
        yield CounterMetricFamily(
            "chatd_delivery_duplicates", "SENDs seen again (reliable delivery).", value=delivery.duplicates
        )
        yield CounterMetricFamily(
            "chatd_delivery_repaired", "Messages sent again for REPAIR requests.", value=delivery.repaired
        )
        yield CounterMetricFamily(
            "chatd_delivery_gone", "GONE frames sent: repairs older than the history.", value=delivery.gone
        )
        yield GaugeMetricFamily(
            "chatd_history_messages", "Messages held by the rooms' histories.", value=gauges.history_messages
        )
        yield GaugeMetricFamily(
            "chatd_history_bytes", "Bytes of names and texts held by the rooms' histories.", value=gauges.history_bytes
        )
        yield GaugeMetricFamily(
            "chatd_members_on_tcp", "Members whose path is TCP (reliable delivery).", value=gauges.members_on_tcp
        )
        yield _by_label(
            "chatd_tunneled_frames",
            "Sealed frames carried over TCP as operation 8 frames, by direction.",
            "direction",
            {"in": delivery.tunneled_in, "out": delivery.tunneled_out},
        )

    def _latency(self) -> HistogramMetricFamily:
        histogram = self._server.relay.stats.latency
        buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
        return HistogramMetricFamily(
            "chatd_relay_latency_seconds",
            f"Seconds from a datagram's arrival to the end of its fan-out; sampled: one datagram in"
            f" {LATENCY_SAMPLE_EVERY} is timed, and dropped ones are not.",
            buckets=buckets,
            sum_value=histogram.sum,
        )


def _by_label(
    name: str, documentation: str, label: str, counts: Mapping[str, int], known: Iterable[str] = ()
) -> CounterMetricFamily:
    """
    One counter family from C{counts}, a sample per label value, sorted; the
    C{known} values are reported from the first scrape on, at 0 until they
    happen. C{counts} is copied in one step (the collector runs on the thread
    pool while the reactor updates it).
    """
    family = CounterMetricFamily(name, documentation, labels=[label])
    values = dict.fromkeys(known, 0)
    values.update(dict(counts))
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


def make_registry(server: ChatServer) -> CollectorRegistry:
    """A registry of C{server}'s metrics and the process' own, for this server alone."""
    registry = CollectorRegistry()
    registry.register(ChatCollector(server))
    ProcessCollector(registry=registry)
    return registry


class _Root(Resource):
    """Only C{/metrics} is there; anything else is a plain 404."""

    @override
    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return notFound()


class MetricsSite(Site):
    """A Site that writes no access log line per scrape."""

    noisy = False

    @override
    def log(self, request: Request) -> None:
        pass


def metrics_site(registry: CollectorRegistry, reactor: Any) -> Site:
    """
    The web site of the endpoint: C{/metrics}, and 404 for anything else.

    prometheus-client's resource runs on the global reactor's thread pool,
    so it is imported (and the reactor with it) only when the endpoint starts.
    """
    from prometheus_client.twisted import MetricsResource

    root = _Root()
    root.putChild(METRICS_PATH, MetricsResource(registry))
    return MetricsSite(root, reactor=reactor)


def metrics_url(interface: str, port: int) -> str:
    host = f"[{interface}]" if ":" in interface else interface
    return f"http://{host}:{port}/{METRICS_PATH.decode('ascii')}"
