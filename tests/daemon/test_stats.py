"""
chatd.daemon.stats: the TCP side's and the store's counters, each owned by
what updates it, and the only things the metrics and the stats line read of them.
"""

from __future__ import annotations

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from chatd.daemon.interfaces import IRoomStore
from chatd.daemon.metrics import make_registry
from chatd.daemon.stats import TCP_REFUSAL_ERRORS, AbortReason, StoreStats, TcpStats
from chatd.protocol.errors import ProtocolError
from chatd.protocol.payloads import Dialect, RoomRequest
from chatd.protocol.wire import Operation
from tests.helpers import capture_events, connect, make_server, request


class LabelTests(SynchronousTestCase):
    """Each stats object owns the labels its readers report from the start."""

    def test_every_abort_reason_is_listed(self) -> None:
        reasons = {value for name, value in vars(AbortReason).items() if name.isupper()}
        self.assertEqual(set(TcpStats.abort_reasons), reasons)
        self.assertEqual(len(TcpStats.abort_reasons), len(reasons))

    def test_refusal_reasons_are_the_errors_reasons_once_each(self) -> None:
        self.assertEqual(TcpStats.refusal_reasons, tuple(error.reason for error in TCP_REFUSAL_ERRORS))
        self.assertEqual(len(set(TcpStats.refusal_reasons)), len(TcpStats.refusal_reasons))
        for error in TCP_REFUSAL_ERRORS:
            self.assertTrue(issubclass(error, ProtocolError))

    def test_rate_limited_by_limit_lists_every_limit_and_nothing_else(self) -> None:
        stats = TcpStats()
        self.assertEqual(
            stats.rate_limited_by_limit(), {"connections": 0, "password_attempts": 0, "hashing_per_host": 0}
        )
        stats.rate_limited["password_attempts"] += 2
        stats.rate_limited["not_a_limit"] += 1
        self.assertEqual(
            stats.rate_limited_by_limit(), {"connections": 0, "password_attempts": 2, "hashing_per_host": 0}
        )

    def test_refused_by_cap_leaves_out_the_hashing_rate_limit(self) -> None:
        stats = StoreStats()
        self.assertEqual(stats.refused_by_cap(), {"rooms_per_host": 0, "invitations": 0})
        stats.refused["hashing"] += 1
        stats.refused["invitations"] += 3
        self.assertEqual(stats.refused_by_cap(), {"rooms_per_host": 0, "invitations": 3})


class OwnershipTests(SynchronousTestCase):
    """The factory and the store each own one stats object, reached by a named attribute."""

    def setUp(self) -> None:
        self.server, self.clock, _ = make_server()

    def test_the_store_declares_its_stats(self) -> None:
        self.assertIn("stats", IRoomStore.names())
        verifyObject(IRoomStore, self.server.store)
        self.assertIsInstance(self.server.store.stats, StoreStats)
        self.assertIsInstance(self.server.tcp_factory.stats, TcpStats)

    def test_connections_gauge_follows_the_open_connections(self) -> None:
        stats = self.server.tcp_factory.stats
        first, _ = connect(self.server, port=1)
        second, _ = connect(self.server, port=2)
        self.assertEqual(stats.connections, 2)
        first.connectionLost()
        self.assertEqual(stats.connections, len(self.server.tcp_factory.connections))
        self.assertEqual(stats.connections, 1)
        # Told twice of one loss (as a close and its connectionLost may): counted once.
        first.connectionLost()
        second.connectionLost()
        self.assertEqual(stats.connections, 0)

    def test_creates_and_joins_are_counted_in_the_factory_stats(self) -> None:
        host, _ = connect(self.server, port=1)
        host.dataReceived(request(Operation.CREATE, "hoge", {"username": "ann"}))
        guest, _ = connect(self.server, port=2)
        guest.dataReceived(request(Operation.JOIN, "hoge", {"username": "bob"}))
        stats = self.server.tcp_factory.stats
        self.assertEqual((stats.rooms_created, stats.joins), (1, 1))

    def test_password_hashing_is_counted_in_the_store_stats(self) -> None:
        store = self.server.store
        self.successResultOf(store.create_room("hoge", RoomRequest("ann", password="pw"), Dialect.SEED))
        self.failureResultOf(store.join_room("hoge", RoomRequest("bob", password="wrong"), Dialect.SEED))
        self.assertEqual(store.stats.password_checks, Counter(refused=1))
        self.assertEqual(store.stats.hashing_in_flight, 0)


class ReadersTests(SynchronousTestCase):
    """The metrics and the stats line read the stats objects, whatever else the factory or store hold."""

    def setUp(self) -> None:
        self.server, self.clock, _ = make_server()
        self.registry = make_registry(self.server)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_metrics_read_the_stats_objects(self) -> None:
        tcp = self.server.tcp_factory.stats
        store: StoreStats = self.server.store.stats
        tcp.connections = 3
        tcp.rooms_created = 4
        tcp.joins = 5
        tcp.aborted[AbortReason.CLOSE_TIMEOUT] = 6
        tcp.refused_requests["room_exists"] = 7
        tcp.rate_limited["hashing_per_host"] = 8
        store.hashing_in_flight = 9
        store.password_checks["accepted"] = 10
        store.refused["rooms_per_host"] = 11
        store.refused["hashing"] = 12
        store.repaired["origins"] = 13
        self.assertEqual(self.metric("chatd_tcp_connections"), 3)
        self.assertEqual(self.metric("chatd_rooms_created_total"), 4)
        self.assertEqual(self.metric("chatd_joins_total"), 5)
        self.assertEqual(self.metric("chatd_tcp_aborted_total", reason="close_timeout"), 6)
        self.assertEqual(self.metric("chatd_tcp_refused_total", reason="room_exists"), 7)
        self.assertEqual(self.metric("chatd_rate_limited_total", limit="hashing_per_host"), 8)
        self.assertEqual(self.metric("chatd_password_hashing"), 9)
        self.assertEqual(self.metric("chatd_password_checks_total", result="accepted"), 10)
        self.assertEqual(self.metric("chatd_password_checks_total", result="refused"), 0)
        self.assertEqual(self.metric("chatd_limit_refused_total", limit="rooms_per_host"), 11)
        self.assertEqual(self.metric("chatd_rate_limited_total", limit="hashing"), 12)
        self.assertEqual(self.metric("chatd_store_repaired_total", kind="origins"), 13)
        # A repair kind is reported once it happens, not from the start.
        self.assertIsNone(self.metric("chatd_store_repaired_total", kind="rooms"))

    def test_stats_line_reads_the_stats_objects(self) -> None:
        events = capture_events(self)
        tcp = self.server.tcp_factory.stats
        tcp.connections = 2
        tcp.aborted[AbortReason.SEND_QUEUE] = 1
        tcp.refused_requests["not_permitted"] = 3
        tcp.rate_limited["connections"] = 4
        self.server.store.stats.refused["invitations"] = 5
        self.server.log_stats()
        (stats,) = [e for e in events if e.get("event") == "stats"]
        self.assertEqual(stats["connections"], 2)
        self.assertEqual(stats["aborted_send_queue"], 1)
        self.assertEqual((stats["refused_frames"], stats["refused_frames_not_permitted"]), (3, 3))
        self.assertEqual((stats["rate_limited"], stats["rate_limited_connections"]), (4, 4))
        self.assertEqual(stats["refused_invitations"], 5)
