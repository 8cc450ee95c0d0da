"""Tests for chatd.daemon.service: the service tree, its sweep, and its real start and stop."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.udp import Port as UDPPort
from twisted.logger import LogLevel, formatEvent
from twisted.web.resource import Resource
from twisted.web.server import Site

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

import chatd.daemon.service
from chatd.daemon.fastudp import HAVE_MMSG, BatchedUDPPort
from chatd.daemon.service import (
    OPEN_FILES_MARGIN,
    ListeningService,
    exit_cleanly_on_signals,
    make_service,
    raise_open_files_limit,
)
from chatd.daemon.settings import UDP_IO_CHOICES, Settings
from tests.helpers import capture_events


class ServiceTreeTests(SynchronousTestCase):
    def test_sweeper_and_stats_run_on_the_given_clock_each_at_its_interval(self) -> None:
        clock = MemoryReactorClock()
        service = make_service(Settings(sweep_interval=0.1, stats_interval=60), clock)
        sweeps: list[float] = []
        self.patch(service.server.store, "expire", lambda: sweeps.append(clock.seconds()))
        events = capture_events(self)
        for name in ("sweeper", "stats"):
            timer = service.getServiceNamed(name)
            timer.startService()
            self.addCleanup(timer.stopService)
        while clock.seconds() < 120.05:
            clock.advance(0.1)
        # Two minutes: the stats line at the start and once a minute, not ten times a second.
        self.assertEqual(len([e for e in events if e.get("event") == "stats"]), 3)
        self.assertGreater(len(sweeps), 1200)

    def test_listeners_are_listening_services(self) -> None:
        service = make_service(Settings(), MemoryReactorClock())
        for name in ("tcp", "udp"):
            self.assertIsInstance(service.getServiceNamed(name), ListeningService)

    def test_metrics_are_off_by_default(self) -> None:
        service = make_service(Settings(), MemoryReactorClock())
        self.assertNotIn("metrics", [child.name for child in service])
        self.assertIsNone(service.metrics_port)

    def test_metrics_listener_serves_a_site_on_the_metrics_interface(self) -> None:
        reactor = MemoryReactorClock()
        sites: list[tuple[CollectorRegistry, Any]] = []

        def fake_site(registry: CollectorRegistry, site_reactor: Any) -> Site:
            # The real one's resource takes the global reactor's thread pool.
            sites.append((registry, site_reactor))
            return Site(Resource())

        self.patch(chatd.daemon.service, "metrics_site", fake_site)
        service = make_service(Settings(metrics_port=9100, metrics_interface="::1"), reactor)
        self.assertEqual([child.name for child in service], ["udp", "tcp", "metrics", "sweeper", "stats", "shutdown"])
        metrics = service.getServiceNamed("metrics")
        self.assertIsInstance(metrics, ListeningService)
        self.assertEqual((reactor.tcpServers, sites), ([], []))
        metrics.startService()
        self.addCleanup(metrics.stopService)
        ((port, factory, _, interface),) = reactor.tcpServers
        self.assertEqual((port, interface), (9100, "::1"))
        self.assertIsInstance(factory, Site)
        ((registry, site_reactor),) = sites
        self.assertIs(site_reactor, reactor)
        self.assertEqual(registry.get_sample_value("chatd_rooms"), 0)
        self.assertEqual(service.metrics_port, 9100)


class _FakeRLimits:
    """The resource module's open-files calls, with a system that refuses soft limits above C{cap}."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, cap: int | None = None) -> None:
        self.limits = (soft, hard)
        self.cap = cap
        self.tried: list[int] = []

    def getrlimit(self, resource: int, /) -> tuple[int, int]:
        assert resource == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, resource: int, limits: tuple[int, int], /) -> None:
        assert resource == self.RLIMIT_NOFILE
        self.tried.append(limits[0])
        if self.cap is not None and limits[0] > self.cap:
            raise ValueError("not allowed to raise maximum limit")
        self.limits = limits


class OpenFilesLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = capture_events(self)

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def test_raises_the_soft_limit_to_the_hard_one(self) -> None:
        rlimits = _FakeRLimits(1024, 524288)
        self.assertEqual(raise_open_files_limit(10000, rlimits), 524288)
        self.assertEqual(rlimits.limits, (524288, 524288))
        (event,) = self.logged("open_files_limit")
        self.assertEqual((event["previous"], event["soft"], event["hard"]), (1024, 524288, 524288))
        self.assertEqual(self.logged("open_files_short"), [])

    def test_leaves_a_soft_limit_at_the_hard_one_alone(self) -> None:
        rlimits = _FakeRLimits(20000, 20000)
        self.assertEqual(raise_open_files_limit(10000, rlimits), 20000)
        self.assertEqual(rlimits.tried, [])
        (event,) = self.logged("open_files_limit")
        self.assertEqual((event["soft"], event["hard"]), (20000, 20000))
        self.assertNotIn("previous", event)

    def test_unlimited_hard_limit_takes_the_highest_soft_limit_allowed(self) -> None:
        # macOS: the hard limit is "unlimited", the soft one is capped lower.
        rlimits = _FakeRLimits(256, _FakeRLimits.RLIM_INFINITY, cap=10240)
        self.assertEqual(raise_open_files_limit(10000, rlimits), 10240)
        self.assertEqual(rlimits.tried, [1048576, 65536, 10240])
        self.assertEqual(self.logged("open_files_limit")[0]["hard"], -1)

    def test_warns_when_max_connections_do_not_fit(self) -> None:
        rlimits = _FakeRLimits(1024, 4096, cap=1024)
        self.assertEqual(raise_open_files_limit(10000, rlimits), 1024)
        (short,) = self.logged("open_files_short")
        self.assertEqual(
            (short["max_connections"], short["needed"], short["soft"]), (10000, 10000 + OPEN_FILES_MARGIN, 1024)
        )
        self.assertEqual(short["log_level"], LogLevel.warn)

    def test_quiet_when_max_connections_fit(self) -> None:
        raise_open_files_limit(1024 - OPEN_FILES_MARGIN, _FakeRLimits(1024, 1024))
        self.assertEqual(self.logged("open_files_short"), [])
        raise_open_files_limit(1024 - OPEN_FILES_MARGIN + 1, _FakeRLimits(1024, 1024))
        self.assertEqual(len(self.logged("open_files_short")), 1)

    def test_unlimited_soft_limit_or_no_resource_module(self) -> None:
        self.assertIsNone(raise_open_files_limit(10000, _FakeRLimits(-1, -1)))
        self.assertIsNone(raise_open_files_limit(10000, None))
        self.assertEqual(len(self.logged("open_files_limit")), 2)
        self.assertEqual(self.logged("open_files_short"), [])


class RealStartStopTests(TestCase):
    timeout = 10

    async def test_ports_are_free_again_after_stop(self) -> None:
        for udp_io in UDP_IO_CHOICES if HAVE_MMSG else ("twisted",):
            service = make_service(Settings(tcp_port=0, udp_port=0, password_cost=2, udp_io=udp_io), reactor)
            service.startService()
            tcp_port, udp_port = service.tcp_port, service.udp_port
            self.assertNotEqual(tcp_port, 0)
            await service.stopService()
            again = make_service(Settings(tcp_port=tcp_port, udp_port=udp_port, password_cost=2), reactor)
            again.startService()
            self.assertEqual((again.tcp_port, again.udp_port), (tcp_port, udp_port))
            await again.stopService()

    async def test_udp_io_picks_the_port(self) -> None:
        for udp_io, kind in (("batched", BatchedUDPPort), ("twisted", UDPPort)):
            if udp_io == "batched" and not HAVE_MMSG:
                continue
            service = make_service(Settings(tcp_port=0, udp_port=0, password_cost=2, udp_io=udp_io), reactor)
            service.startService()
            listener = service.getServiceNamed("udp")
            assert isinstance(listener, ListeningService)
            self.assertIsInstance(listener.port, kind)
            self.assertNotEqual(service.udp_port, 0)
            await service.stopService()

    async def test_start_raises_and_logs_the_open_files_limit(self) -> None:
        events = capture_events(self)
        service = make_service(Settings(tcp_port=0, udp_port=0, password_cost=2), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        names = [e.get("event") for e in events]
        self.assertIn("open_files_limit", names)
        self.assertLess(names.index("open_files_limit"), names.index("listening"))
        if resource is not None:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if hard != resource.RLIM_INFINITY:
                self.assertEqual(soft, hard)

    async def test_taken_port_fails_start(self) -> None:
        taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        service = make_service(Settings(tcp_port=taken.getsockname()[1], udp_port=0), reactor)
        from twisted.internet.error import CannotListenError

        self.assertRaises(CannotListenError, service.startService)
        # The UDP listener started before the TCP one failed: stop what did start.
        await service.stopService()


class _SignalReactor:
    def __init__(self) -> None:
        self.stops = 0

    def callFromThread(self, work: Callable[[], None]) -> None:  # noqa: N802 - the reactor's spelling
        work()

    def stop(self) -> None:
        self.stops += 1


class ExitSignalTests(SynchronousTestCase):
    def test_sigterm_and_sigint_stop_the_reactor_once(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        fake = _SignalReactor()
        exit_cleanly_on_signals(fake)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        self.assertEqual(fake.stops, 1)


class LegacyExposureTests(SynchronousTestCase):
    def warnings_for(self, **settings: Any) -> list[str]:
        events = capture_events(self)
        make_service(Settings(**settings), MemoryReactorClock()).warn_if_legacy_exposed()
        return [e["event"] for e in events if e.get("event") == "legacy_exposed"]

    def test_warns_when_legacy_is_served_beyond_loopback(self) -> None:
        self.assertEqual(self.warnings_for(interface="0.0.0.0"), ["legacy_exposed"])
        self.assertEqual(self.warnings_for(interface="2001:db8::1"), ["legacy_exposed"])

    def test_quiet_on_loopback_or_without_legacy(self) -> None:
        self.assertEqual(self.warnings_for(interface="127.0.0.1"), [])
        self.assertEqual(self.warnings_for(interface="::1"), [])
        self.assertEqual(self.warnings_for(interface="0.0.0.0", legacy=False), [])


class MetricsExposureTests(TestCase):
    timeout = 10

    def warnings_for(self, **settings: Any) -> list[dict[str, Any]]:
        events = capture_events(self)
        make_service(Settings(**settings), MemoryReactorClock()).warn_if_metrics_exposed()
        return [e for e in events if e.get("event") == "metrics_exposed"]

    def test_warns_when_metrics_are_served_beyond_loopback(self) -> None:
        for interface in ("0.0.0.0", "::", "192.0.2.7", ""):
            (warning,) = self.warnings_for(metrics_port=9100, metrics_interface=interface)
            self.assertEqual(warning["log_level"], LogLevel.warn)
            text = formatEvent(warning)
            self.assertIn("/metrics tells anyone who can reach it", text)
            self.assertIn("bind it to loopback", text)
            self.assertIn("firewall it", text)

    def test_quiet_on_loopback_or_when_off(self) -> None:
        self.assertEqual(self.warnings_for(metrics_port=9100, metrics_interface="127.0.0.1"), [])
        self.assertEqual(self.warnings_for(metrics_port=9100, metrics_interface="::1"), [])
        self.assertEqual(self.warnings_for(metrics_port=None, metrics_interface="0.0.0.0"), [])

    async def test_start_up_warns(self) -> None:
        # A real start on loopback ports, with the endpoint's interface taken
        # for a public one: what matters is that starting says it, once.
        self.patch(chatd.daemon.service, "is_loopback", lambda host: False)
        events = capture_events(self)
        settings = Settings(tcp_port=0, udp_port=0, metrics_port=0, password_cost=2)
        service = make_service(settings, reactor)
        service.startService()
        await service.stopService()
        self.assertEqual([e["event"] for e in events if e.get("event") == "metrics_exposed"], ["metrics_exposed"])
