"""The browser gateway's metrics (chatd.daemon.web.metrics), served by the real endpoint beside the daemon's."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

import chatd.daemon.web.metrics
from chatd.daemon.service import make_service
from chatd.daemon.settings import Settings
from tests.daemon.test_metrics import scrape
from tests.waiting import bounded

DOCUMENTED = tuple(dict.fromkeys(re.findall(r"C\{(chatd_[a-z_]+)", chatd.daemon.web.metrics.__doc__ or "")))


async def scraped(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body: bytes = response.read()
            return body.decode("utf-8")

    return await bounded(deferToThread(get), "a scrape of /metrics")


class WebMetricsTests(TestCase):
    timeout = 20

    async def test_the_gateway_is_counted_at_each_scrape(self) -> None:
        self.assertEqual(len(DOCUMENTED), 3)
        settings = Settings(tcp_port=0, udp_port=0, metrics_port=0, web_port=0, password_cost=2)
        service = make_service(settings, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        gateway = service.web
        assert gateway is not None
        port = service.metrics_port
        assert port is not None
        text = await scraped(port)
        for name in DOCUMENTED:
            self.assertIn(f"# TYPE {name} ", text)
        self.assertEqual(scrape(text)[("chatd_web_connections", frozenset())], 0)
        # What the gateway counts is what the next scrape says.
        gateway.refused.update(Counter({"origin": 2}))
        gateway.aborted["send_queue"] += 1
        samples = scrape(await scraped(port))
        self.assertEqual(samples[("chatd_web_refused_total", frozenset({("reason", "origin")}))], 2)
        self.assertEqual(samples[("chatd_web_aborted_total", frozenset({("reason", "send_queue")}))], 1)
