"""Tests for chatd.bench.members: members that hold their connections, and what they cost."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from chatd.bench import members
from chatd.daemon.service import make_service
from chatd.daemon.settings import Settings
from tests.waiting import until


class MembersRunTests(TestCase):
    timeout = 20

    async def test_members_join_and_are_counted(self) -> None:
        service = make_service(Settings(tcp_port=0, udp_port=0, password_cost=2), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        # Blocking sockets in a thread, while the reactor serves them here.
        report = await deferToThread(members.run, "127.0.0.1", service.tcp_port, 30, 10, os.getpid(), 8, 5.0)
        self.assertEqual((report.members, report.rooms), (30, 3))
        self.assertGreater(report.joins_per_s, 0)
        self.assertIsNotNone(report.rss_per_member_bytes)
        # The run closes its connections: presence ends, so every member leaves.
        await until(lambda: service.server.store.member_count() == 0, "the members left")


class MembersPureTests(SynchronousTestCase):
    def test_rss_of_this_process(self) -> None:
        rss = members.rss_kib(os.getpid())
        assert rss is not None
        self.assertGreater(rss, 1000)
        self.assertIsNone(members.rss_kib(2**31 - 1))

    def test_arguments(self) -> None:
        self.assertEqual(members.parse_arguments(["--count", "5", "--room-size", "5"]).count, 5)
        with self.assertRaises(SystemExit):
            members.parse_arguments(["--host", "192.0.2.1"])
        with self.assertRaises(SystemExit):
            members.parse_arguments(["--count", "5", "--room-size", "6"])
