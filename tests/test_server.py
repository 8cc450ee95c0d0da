"""Tests for chatd.server: notices, the sweep, and a clean stop."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from chatd.interfaces import IMemberConnection, IRoomObserver
from chatd.payloads import Dialect, RoomRequest
from chatd.wire import Operation, SizeEncoding
from tests.helpers import capture_events, connect, frames, make_server, request

ASCII = SizeEncoding.ASCII


class ChatServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server()

    def test_interfaces(self) -> None:
        verifyObject(IRoomObserver, self.server)
        protocol, _ = connect(self.server)
        verifyObject(IMemberConnection, protocol)

    def test_stop_tells_everyone_and_closes_connections(self) -> None:
        host, host_transport = connect(self.server, port=1)
        host.dataReceived(request(Operation.CREATE, "hoge", "ann", ASCII))
        model = self.successResultOf(self.server.store.join_room("hoge", RoomRequest("bob"), Dialect.MODEL))
        self.server.store.bind_address(model, ("127.0.0.1", 5001))
        idle, idle_transport = connect(self.server, port=2)
        frames(host_transport)
        self.udp.written.clear()

        stopped = self.server.stop()
        (notice,) = frames(host_transport)
        self.assertEqual(notice.payload, b"* the server is shutting down; room hoge is closed")
        self.assertEqual(
            self.udp.written, [(b"* the server is shutting down; room hoge is closed", ("127.0.0.1", 5001))]
        )
        self.assertTrue(host_transport.disconnecting)
        self.assertTrue(idle_transport.disconnecting)
        self.assertEqual(self.server.store.rooms(), [])
        self.assertNoResult(stopped)
        host.connectionLost()
        self.assertNoResult(stopped)
        idle.connectionLost()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_aborts_connections_that_do_not_close(self) -> None:
        protocol, transport = connect(self.server)
        stopped = self.server.stop()
        self.clock.advance(self.server.settings.shutdown_grace)
        self.assertTrue(transport.disconnected)  # what StringTransport.abortConnection sets
        protocol.connectionLost()
        self.successResultOf(stopped)

    def test_stop_with_nothing_open(self) -> None:
        self.successResultOf(self.server.stop())

    def test_sweep_logs_stats(self) -> None:
        events = capture_events(self)
        self.server.relay.datagramReceived(b"\xff", ("127.0.0.1", 9))
        self.server.sweep()
        (stats,) = [e for e in events if e.get("event") == "stats"]
        self.assertEqual((stats["rooms"], stats["datagrams_in"], stats["dropped"]), (0, 1, 1))
        self.assertEqual(stats["dropped_malformed"], 1)
        self.assertEqual((stats["bytes_in"], stats["bytes_out"]), (1, 0))
        self.assertEqual(stats["rate_limited"], 0)
        for limit in ("datagrams", "connections", "password_attempts"):
            self.assertEqual(stats[f"rate_limited_{limit}"], 0)

    def test_rate_limit_hits(self) -> None:
        server, _, _ = make_server(connection_burst=1, limit_loopback=True)
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        server.tcp_factory.buildProtocol(peer)
        server.tcp_factory.buildProtocol(peer)
        self.assertEqual(server.rate_limit_hits(), {"datagrams": 0, "connections": 1, "password_attempts": 0})

    def test_sweep_never_raises(self) -> None:
        def broken() -> None:
            raise RuntimeError("boom")

        self.server.store.expire = broken  # type: ignore[method-assign]
        self.server.sweep()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
