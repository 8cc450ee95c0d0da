"""
Back-pressure on the TCP port: a peer that does not read is not read either,
and is aborted once send_queue bytes wait for it or it has not read for
send_queue_timeout seconds; a handshake that stalls, or a close that does not
finish, is aborted too. And the per-address limits on password requests.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import replace
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorSSL, IReactorTCP, ISystemHandle, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from typing_extensions import override

from chatd.daemon.controller import ChatServer
from chatd.daemon.server_tls import load_server_certificate
from chatd.daemon.settings import Settings
from chatd.daemon.stats import AbortReason
from chatd.daemon.tcp import RoomProtocol
from chatd.protocol.certificates import make_self_signed
from chatd.protocol.errors import Status
from chatd.protocol.wire import Operation, SizeEncoding
from tests.helpers import FAST, ManualRunner, capture_events, connect, frames, make_server, request
from tests.tcp_cases import answered, check_invariants, status_of
from tests.waiting import CLOCK, bounded, until

ASCII = SizeEncoding.ASCII
OUTSIDER = "192.0.2.9"


class SendQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = capture_events(self)

    def serve(self, **overrides: Any) -> None:
        self.server, self.clock, self.udp = make_server(**overrides)
        self.factory = self.server.tcp_factory

    def host(self) -> tuple[RoomProtocol, StringTransport]:
        protocol, transport = connect(self.server)
        protocol.dataReceived(request(Operation.CREATE, "hoge", "ann", ASCII))
        frames(transport)
        return protocol, transport

    def aborted_events(self) -> list[Any]:
        return [event for event in self.events if event.get("event") == "aborted"]

    def test_registered_as_streaming_producer(self) -> None:
        self.serve()
        protocol, transport = connect(self.server)
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)

    def test_paused_peer_is_not_read_and_requests_wait(self) -> None:
        self.serve()
        protocol, transport = self.host()
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        protocol.dataReceived(request(Operation.INVITE, "hoge", "", ASCII) * 3)
        self.assertEqual(transport.value(), b"")
        # A waiting whole frame is not a stalled one: no frame timeout.
        self.clock.advance(self.server.settings.send_queue_timeout - 0.5)
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(answered(self, [Operation.INVITE] * 3, transport), [Status.SUCCESS] * 3)
        self.clock.advance(100)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.factory.stats.aborted, {})

    def test_over_send_queue_is_aborted(self) -> None:
        """Joins in the room make the server write notices to a host that does not read."""
        self.serve(send_queue=1024, send_queue_timeout=1e6)
        protocol, transport = self.host()
        protocol.pauseProducing()
        joiners = 0
        while not transport.disconnected:
            self.assertLess(joiners, 100)
            guest, _ = connect(self.server, port=41000 + joiners)
            guest.dataReceived(request(Operation.JOIN, "hoge", f"user{joiners}", ASCII))
            joiners += 1
            # Each its own notice, however joins are coalesced.
            self.clock.advance(2)
        self.assertLessEqual(len(transport.value()), 1024)
        self.assertGreater(len(transport.value()), 1024 - 100)
        self.assertEqual(self.factory.stats.aborted, {AbortReason.SEND_QUEUE: 1})
        (event,) = self.aborted_events()
        self.assertEqual((event["reason"], event["peer"]), ("send_queue", "127.0.0.1"))
        # The transport calls connectionLost soon after: the host leaves, its room closes.
        protocol.connectionLost()
        self.assertEqual(self.server.store.rooms(), [])

    def test_paused_longer_than_send_queue_timeout_is_aborted(self) -> None:
        self.serve(send_queue_timeout=5.0)
        protocol, transport = self.host()
        protocol.pauseProducing()
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.factory.stats.aborted, {AbortReason.SEND_QUEUE_TIMEOUT: 1})
        self.assertEqual(len(self.aborted_events()), 1)
        protocol.connectionLost()
        self.assertEqual(self.server.store.rooms(), [])

    def test_resumed_in_time_is_not_aborted(self) -> None:
        self.serve(send_queue_timeout=5.0)
        protocol, transport = self.host()
        for _ in range(3):
            protocol.pauseProducing()
            self.clock.advance(4)
            protocol.resumeProducing()
        self.clock.advance(10)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.factory.stats.aborted, {})

    def test_handshake_timeout_aborts(self) -> None:
        self.serve()
        _, transport = connect(self.server)
        self.clock.advance(self.server.settings.handshake_timeout)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.factory.stats.aborted, {AbortReason.HANDSHAKE_TIMEOUT: 1})
        (event,) = self.aborted_events()
        self.assertEqual(event["reason"], "handshake_timeout")

    def test_close_that_never_flushes_is_aborted(self) -> None:
        """The model dialect's close after its port: the peer does not take it."""
        self.serve(send_queue_timeout=5.0)
        self.host()
        bob, transport = connect(self.server, port=40001)
        bob.dataReceived(request(Operation.JOIN, "hoge", {"username": "bob"}) + b"\x13\x89")
        self.assertTrue(transport.disconnecting)
        # Unregistered first: a transport with a (paused) producer never finishes a close.
        self.assertIsNone(transport.producer)
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.factory.stats.aborted, {AbortReason.CLOSE_TIMEOUT: 1})
        bob.connectionLost()
        self.assertEqual(self.server.store.rooms()[0].names(), ("ann", "bob"))

    def test_close_that_flushes_is_not_aborted(self) -> None:
        self.serve()
        protocol, transport = self.host()
        protocol.close()
        protocol.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(transport.disconnected)
        self.assertEqual(self.factory.stats.aborted, {})

    def test_transport_without_abort_is_closed(self) -> None:
        """A transport that is not ITCPTransport (none of Twisted's streams) is closed instead."""
        self.serve()
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert isinstance(protocol, RoomProtocol)
        transport = StringTransport()
        self.assertFalse(ITCPTransport.providedBy(transport))
        protocol.makeConnection(transport)
        protocol.abort()
        self.assertTrue(transport.disconnecting)


class PasswordRequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server(password_attempt_burst=2)
        self.factory = self.server.tcp_factory
        self.runner = ManualRunner()
        self.server.store._run_hash = self.runner  # type: ignore[attr-defined]

    def ask(self, host: str, port: int, operation: Operation, room: str, **fields: Any) -> StringTransport:
        protocol, transport = connect(self.server, host=host, port=port)
        protocol.dataReceived(request(operation, room, {"username": f"u{port}", "chatd": 1, **fields}))
        return transport

    def test_create_with_password_is_a_password_attempt(self) -> None:
        for port in (1, 2):
            transport = self.ask(OUTSIDER, port, Operation.CREATE, f"room{port}", password="pw")
            self.runner.release()
            self.assertEqual(status_of(frames(transport)[0]), Status.SUCCESS)
        transport = self.ask(OUTSIDER, 3, Operation.CREATE, "room3", password="pw")
        self.assertEqual(status_of(frames(transport)[0]), Status.RATE_LIMITED)
        self.assertEqual(self.runner.pending, [])
        self.assertEqual(self.factory.stats.rate_limited["password_attempts"], 1)
        # Without a password a create costs no attempt.
        transport = self.ask(OUTSIDER, 4, Operation.CREATE, "room4")
        self.assertEqual(status_of(frames(transport)[0]), Status.SUCCESS)

    def test_one_password_request_at_a_time_per_address(self) -> None:
        first = self.ask(OUTSIDER, 1, Operation.CREATE, "vault", password="pw")
        self.assertEqual(self.factory.hashing_in_progress(OUTSIDER), 1)
        second = self.ask(OUTSIDER, 2, Operation.CREATE, "other", password="pw")
        (ack,) = frames(second)
        self.assertEqual(status_of(ack), Status.RATE_LIMITED)
        self.assertIn(b"password request in progress", ack.payload)
        self.assertEqual(self.factory.stats.rate_limited["hashing_per_host"], 1)
        # Refused before it is charged: the address still has its attempt.
        self.assertEqual(self.factory.stats.rate_limited["password_attempts"], 0)
        # Another address is not held up, nor is a request without a password.
        self.ask("192.0.2.10", 3, Operation.CREATE, "elsewhere", password="pw")
        self.assertEqual(len(self.runner.pending), 2)
        self.assertEqual(status_of(frames(self.ask(OUTSIDER, 4, Operation.CREATE, "open"))[0]), Status.SUCCESS)
        self.runner.release()
        self.assertEqual(status_of(frames(first)[0]), Status.SUCCESS)
        self.assertEqual(self.factory.hashing_in_progress(OUTSIDER), 0)
        # A failed check frees the address too.
        guess = self.ask(OUTSIDER, 5, Operation.JOIN, "vault", password="wrong")
        self.assertEqual(self.factory.hashing_in_progress(OUTSIDER), 1)
        self.runner.release()
        self.runner.release()
        self.assertEqual(status_of(frames(guess)[0]), Status.INVALID_PASSWORD)
        self.assertEqual(self.factory.hashing_in_progress(OUTSIDER), 0)

    def test_closing_the_connection_does_not_free_the_address(self) -> None:
        """The hash runs on in its thread: the address is busy until it is done."""
        protocol, _ = connect(self.server, host=OUTSIDER, port=1)
        protocol.dataReceived(request(Operation.CREATE, "vault", {"username": "ann", "password": "pw"}))
        protocol.connectionLost()
        self.assertEqual(status_of(frames(self.ask(OUTSIDER, 2, Operation.CREATE, "b", password="pw"))[0]), 6)
        self.runner.release()
        self.assertEqual(self.factory.hashing_in_progress(OUTSIDER), 0)
        self.assertEqual(self.server.store.rooms(), [])

    def test_loopback_is_exempt(self) -> None:
        for port in (1, 2, 3):
            self.ask("127.0.0.1", port, Operation.CREATE, f"room{port}", password="pw")
        self.assertEqual(len(self.runner.pending), 3)
        self.assertEqual(self.factory.stats.rate_limited["hashing_per_host"], 0)

    def test_loopback_can_be_limited_too(self) -> None:
        self.server, self.clock, self.udp = make_server(limit_loopback=True)
        self.factory = self.server.tcp_factory
        self.server.store._run_hash = self.runner  # type: ignore[attr-defined]
        self.ask("127.0.0.1", 1, Operation.CREATE, "room1", password="pw")
        second = self.ask("127.0.0.1", 2, Operation.CREATE, "room2", password="pw")
        self.assertEqual(status_of(frames(second)[0]), Status.RATE_LIMITED)
        self.assertEqual(self.factory.stats.rate_limited["hashing_per_host"], 1)


class PeerThatNeverReadsTests(TestCase):
    """A real socket on 127.0.0.1, the real reactor: a client that writes requests and never reads."""

    SETTINGS = replace(FAST, send_queue=64 * 1024, send_queue_timeout=0.5, max_invitations=10**6)
    REQUESTS = 20_000

    async def test_aborted_in_time_with_bounded_buffering(self) -> None:
        events = capture_events(self)
        server = ChatServer(CLOCK, self.SETTINGS)
        factory = server.tcp_factory
        port = IReactorTCP(_reactor).listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(client.close)
        # Small kernel buffers, so that the server's own buffer fills soon.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        client.connect(("127.0.0.1", address.port))
        client.setblocking(False)
        await until(lambda: len(factory.connections) == 1, "the server accepts the connection")
        (protocol,) = factory.connections
        assert protocol.transport is not None
        handle = ISystemHandle(protocol.transport).getHandle()
        assert isinstance(handle, socket.socket)
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pending = request(Operation.CREATE, "flood", {"username": "ann", "chatd": 1}) + (
            request(Operation.REKEY, "flood") + request(Operation.INVITE, "flood")
        ) * (self.REQUESTS // 2)
        most_queued = 0
        started = time.monotonic()

        def aborted() -> bool:
            nonlocal pending, most_queued
            most_queued = max(most_queued, protocol.queued_bytes)
            try:
                while pending:
                    pending = pending[client.send(pending[:65536]) :]
            except (BlockingIOError, ConnectionError):
                pass
            return bool(factory.stats.aborted) and not factory.connections

        await until(aborted, "the server aborts a peer that never reads")
        elapsed = time.monotonic() - started
        self.assertEqual(factory.stats.aborted, {AbortReason.SEND_QUEUE_TIMEOUT: 1})
        self.assertLess(elapsed, 0.5 + 2.0)
        (event,) = [event for event in events if event.get("event") == "aborted"]
        self.assertLessEqual(max(most_queued, event["queued_bytes"]), self.SETTINGS.send_queue)
        # The member left as on any disconnect: its room is gone.
        self.assertEqual(server.store.rooms(), [])
        check_invariants(self, server.store)
        with self.assertRaises((ConnectionError, BlockingIOError)):
            # Reset: what the server had queued was dropped, not sent.
            while client.recv(65536):
                pass
            raise ConnectionResetError


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        settings = Settings()
        self.assertEqual(
            (settings.send_queue, settings.send_queue_timeout, settings.max_hashing_per_host), (256 * 1024, 5.0, 1)
        )


class _Collector(Protocol):
    """A client that sends one request, keeps what it hears, and tells when the server hangs up."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.first)

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class TLSCloseTests(TestCase):
    """Over TLS, a producer left registered would keep a close from ever finishing."""

    def server_options(self) -> CertificateOptions:
        """The daemon's own TLS options, for a fresh self-signed certificate."""
        directory = tempfile.mkdtemp(prefix="chatd-tls-")
        self.addCleanup(shutil.rmtree, directory, True)
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        cert_pem, key_pem = make_self_signed()
        with open(cert_path, "wb") as cert_file:
            cert_file.write(cert_pem)
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as key_file:
            key_file.write(key_pem)
        return load_server_certificate(cert_path, key_path).options

    async def test_server_close_over_tls_finishes(self) -> None:
        server = ChatServer(CLOCK, replace(FAST, send_queue_timeout=3.0))
        factory = server.tcp_factory
        port = IReactorSSL(_reactor).listenSSL(0, factory, self.server_options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        client = _Collector(request(Operation.CREATE, "secure", {"username": "ann", "chatd": 1}))
        # The server's certificate is not checked: this test is about closing.
        endpoint = SSL4ClientEndpoint(_reactor, "127.0.0.1", address.port, CertificateOptions())
        await bounded(connectProtocol(endpoint, client), "the client connects over TLS")
        await until(lambda: server.store.member_count() == 1, "the host enters over TLS")
        (protocol,) = factory.connections
        self.assertTrue(protocol.secure)
        self.assertTrue(ITCPTransport.providedBy(protocol.transport))
        protocol.close()
        await bounded(client.lost, "the server's close reaches the client", timeout=2.0)
        await until(lambda: not factory.connections, "the server's side is closed too", timeout=2.0)
        self.assertEqual(factory.stats.aborted, {})
        self.assertEqual(server.store.rooms(), [])
