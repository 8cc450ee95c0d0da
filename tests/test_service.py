"""Tests for chatd.service: the service tree, its sweep, and its real start and stop."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from chatd.service import ListeningService, exit_cleanly_on_signals, make_service
from chatd.settings import Settings
from tests.helpers import capture_events


class ServiceTreeTests(SynchronousTestCase):
    def test_sweeper_runs_on_the_given_clock(self) -> None:
        clock = MemoryReactorClock()
        service = make_service(Settings(sweep_interval=20), clock)
        events = capture_events(self)
        sweeper = service.getServiceNamed("sweeper")
        sweeper.startService()
        self.addCleanup(sweeper.stopService)
        clock.advance(20)
        clock.advance(20)
        self.assertEqual(len([e for e in events if e.get("event") == "stats"]), 3)

    def test_listeners_are_listening_services(self) -> None:
        service = make_service(Settings(), MemoryReactorClock())
        for name in ("tcp", "udp"):
            self.assertIsInstance(service.getServiceNamed(name), ListeningService)


class RealStartStopTests(TestCase):
    timeout = 10

    async def test_ports_are_free_again_after_stop(self) -> None:
        service = make_service(Settings(tcp_port=0, udp_port=0, password_cost=2), reactor)
        service.startService()
        tcp_port, udp_port = service.tcp_port, service.udp_port
        self.assertNotEqual(tcp_port, 0)
        await service.stopService()
        again = make_service(Settings(tcp_port=tcp_port, udp_port=udp_port, password_cost=2), reactor)
        again.startService()
        self.assertEqual((again.tcp_port, again.udp_port), (tcp_port, udp_port))
        await again.stopService()

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
