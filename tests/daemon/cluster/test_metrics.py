"""A node's cluster metrics (chatd.daemon.cluster.metrics), scraped from a daemon built with --redis."""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred

import chatd.daemon.cluster.metrics
from tests.cluster_nodes import ClusterCase
from tests.daemon.test_metrics import scrape
from tests.waiting import bounded, until
from tests.web.test_web_metrics import scraped

DOCUMENTED = tuple(dict.fromkeys(re.findall(r"C\{(chatd_[a-z_]+)", chatd.daemon.cluster.metrics.__doc__ or "")))


class ClusterMetricsTests(ClusterCase):
    async def test_a_node_reports_its_standing_and_its_redis_traffic(self) -> None:
        self.assertGreaterEqual(len(DOCUMENTED), 12)
        a = await self.service_node("a", metrics_port=0)
        b = await self.service_node("b")
        assert a.daemon is not None
        port = a.daemon.metrics_port
        assert port is not None
        ann, ann_heard = await self.native(a, "ann", create=True, delivery=True)
        bob, bob_heard = await self.native(b, "bob", delivery=True)
        bob.send("counted on a's bus")
        await ann_heard.message("bob", "counted on a's bus")
        # ann's message comes back to a: known from its bytes.
        ann.send("back to a")
        await bob_heard.message("ann", "back to a")
        await until(lambda: a.cluster.log.stats.own_recognised == 1, "a knows its own message back")
        text = await scraped(port)
        for name in DOCUMENTED:
            self.assertIn(f"# TYPE {name} ", text)
        samples = scrape(text)
        self.assertEqual(samples[("chatd_cluster_redis_up", frozenset())], 1)
        self.assertGreaterEqual(samples[("chatd_cluster_registrations_total", frozenset())], 1)
        self.assertGreaterEqual(samples[("chatd_cluster_received_total", frozenset())], 2)
        self.assertEqual(samples[("chatd_cluster_own_recognised_total", frozenset())], 1)
        self.assertGreater(samples[("chatd_cluster_redis_round_trips_total", frozenset({("result", "ok")}))], 0)
        # bob's message came from node b: a's cross-node latency histogram has it.
        self.assertGreaterEqual(samples[("chatd_cluster_relay_latency_seconds_count", frozenset())], 1)
        await bounded(Deferred.fromCoroutine(a.stop()), "node a stops")
