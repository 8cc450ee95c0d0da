"""
The browser gateway's Prometheus metrics, read at scrape time from its
counters (registered beside chatd.daemon.metrics' when both --web-port and
--metrics-port are on):

  - C{chatd_web_connections} (gauge): browser WebSockets open.
  - C{chatd_web_refused_total{reason}} (counter): WebSockets refused before
    they opened (C{origin}, connection limits) and requests refused after,
    by reason.
  - C{chatd_web_aborted_total{reason}} (counter): browsers dropped by the
    daemon (a page that does not read, an unreadable message, ...), by reason.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from chatd.daemon.web.gateway import WebGateway


class WebCollector(Collector):
    """Reads a L{WebGateway}'s counters at each scrape."""

    def __init__(self, gateway: WebGateway) -> None:
        self._gateway = gateway

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        gateway = self._gateway
        yield GaugeMetricFamily("chatd_web_connections", "Browser WebSockets open.", value=len(gateway.connections))
        for name, documentation, counts in (
            ("chatd_web_refused", "Browser WebSockets and requests refused, by reason.", gateway.refused),
            ("chatd_web_aborted", "Browsers dropped by the daemon, by reason.", gateway.aborted),
        ):
            family = CounterMetricFamily(name, documentation, labels=["reason"])
            for reason, count in sorted(counts.items()):
                family.add_metric([reason], count)
            yield family
