"""Tests for chatd.daemon.metrics: the collector on an in-memory server, and the real endpoint."""

from __future__ import annotations

import re
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP, IReactorUDP
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, ResponseDone
from typing_extensions import override

import chatd.daemon.metrics
from chatd.daemon.metrics import make_registry, metrics_url
from chatd.daemon.relay import LATENCY_SAMPLE_EVERY, RelayStats
from chatd.daemon.service import ChatService, make_service
from chatd.daemon.settings import Settings
from chatd.daemon.stats import TcpStats
from chatd.daemon.tcp import RoomProtocol
from chatd.protocol.datagrams import encode_legacy
from chatd.protocol.errors import Status
from chatd.protocol.wire import Frame, FrameDecoder, Operation, SizeEncoding, State
from tests.helpers import capture_events, connect, frames, make_server, request

LOOPBACK = "127.0.0.1"
DOCUMENTED = tuple(dict.fromkeys(re.findall(r"C\{(chatd_[a-z_]+)", chatd.daemon.metrics.__doc__ or "")))
"""Every metric name the module docstring documents, in its order."""
reactor: Any = _reactor


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name} {labels}"
    return found


class CollectorTests(SynchronousTestCase):
    """The collector reports the server's own counters, unchanged."""

    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server(
            message_burst=3, password_attempt_burst=3, connection_burst=5, limit_loopback=True
        )
        self.registry = make_registry(self.server)

    def enter(self, operation: Operation, payload: dict[str, str], port: int) -> bytes:
        """Create or join room hoge over a fake TCP connection; the token."""
        protocol, transport = connect(self.server, port=port)
        protocol.dataReceived(request(operation, "hoge", payload))
        answers = frames(transport)
        self.assertEqual(answers[0].payload[:1], bytes((Status.SUCCESS,)))
        return answers[1].payload

    def test_documents_at_least_the_promised_metrics(self) -> None:
        for name in (
            "chatd_rooms",
            "chatd_members",
            "chatd_tcp_connections",
            "chatd_datagrams_received_total",
            "chatd_datagrams_sent_total",
            "chatd_datagram_send_errors_total",
            "chatd_datagrams_dropped_total",
            "chatd_udp_received_bytes_total",
            "chatd_udp_sent_bytes_total",
            "chatd_relay_latency_seconds",
            "chatd_rate_limited_total",
            "chatd_joins_total",
            "chatd_password_checks_total",
            "chatd_limit_refused_total",
            "chatd_tcp_aborted_total",
            "chatd_tcp_refused_total",
            "chatd_password_hashing",
            "chatd_store_repaired_total",
        ):
            self.assertIn(name, DOCUMENTED)

    def test_idle_server_reports_zeros(self) -> None:
        for name in ("chatd_rooms", "chatd_members", "chatd_tcp_connections", "chatd_datagrams_received_total"):
            self.assertEqual(value(self.registry, name), 0)
        for reason in RelayStats.drop_reasons:
            self.assertEqual(value(self.registry, "chatd_datagrams_dropped_total", reason=reason), 0)
        for limit in ("datagrams", "connections", "password_attempts", "hashing", "hashing_per_host"):
            self.assertEqual(value(self.registry, "chatd_rate_limited_total", limit=limit), 0)
        for limit in ("rooms_per_host", "invitations"):
            self.assertEqual(value(self.registry, "chatd_limit_refused_total", limit=limit), 0)
        for reason in TcpStats.abort_reasons:
            self.assertEqual(value(self.registry, "chatd_tcp_aborted_total", reason=reason), 0)
        for reason in TcpStats.refusal_reasons:
            self.assertEqual(value(self.registry, "chatd_tcp_refused_total", reason=reason), 0)
        self.assertEqual(value(self.registry, "chatd_password_hashing"), 0)
        self.assertEqual(value(self.registry, "chatd_relay_latency_seconds_count"), 0)
        self.assertEqual(value(self.registry, "chatd_relay_latency_seconds_bucket", le="+Inf"), 0)

    def test_rooms_members_connections_joins_and_password_checks(self) -> None:
        self.enter(Operation.CREATE, {"username": "ann", "password": "secret"}, 1)
        self.enter(Operation.JOIN, {"username": "bob", "password": "secret"}, 2)
        protocol, transport = connect(self.server, port=3)
        protocol.dataReceived(request(Operation.JOIN, "hoge", {"username": "eve", "password": "guess"}))
        self.assertEqual(frames(transport)[0].payload[:1], bytes((Status.INVALID_PASSWORD,)))
        # The burst of three password attempts from 127.0.0.1 (the create, the join, the guess)
        # is spent: refused before any check.
        protocol.dataReceived(request(Operation.JOIN, "hoge", {"username": "eve", "password": "again"}))
        self.assertEqual(frames(transport)[0].payload[:1], bytes((Status.RATE_LIMITED,)))

        self.assertEqual(value(self.registry, "chatd_rooms"), 1)
        self.assertEqual(value(self.registry, "chatd_members"), 2)
        self.assertEqual(value(self.registry, "chatd_tcp_connections"), len(self.server.tcp_factory.connections))
        self.assertEqual(value(self.registry, "chatd_rooms_created_total"), 1)
        self.assertEqual(value(self.registry, "chatd_joins_total"), 1)
        self.assertEqual(value(self.registry, "chatd_password_checks_total", result="accepted"), 1)
        self.assertEqual(value(self.registry, "chatd_password_checks_total", result="refused"), 1)
        self.assertEqual(value(self.registry, "chatd_rate_limited_total", limit="password_attempts"), 1)

    def test_caps_aborts_and_repairs(self) -> None:
        self.server, self.clock, _ = make_server(max_invitations=1)
        self.registry = make_registry(self.server)
        protocol, transport = connect(self.server, port=1)
        protocol.dataReceived(request(Operation.CREATE, "hoge", {"chatd": 1, "username": "ann"}))
        for _ in range(2):
            protocol.dataReceived(request(Operation.INVITE, "hoge", b""))
        statuses = [f.payload[0] for f in frames(transport) if f.state is State.ACKNOWLEDGE]
        self.assertEqual(statuses[-1], Status.ROOM_FULL)
        self.assertEqual(value(self.registry, "chatd_limit_refused_total", limit="invitations"), 1)
        # A peer that stops reading, for longer than the send queue allows.
        protocol.pauseProducing()
        self.clock.advance(self.server.settings.send_queue_timeout + 1)
        self.assertEqual(value(self.registry, "chatd_tcp_aborted_total", reason="send_queue_timeout"), 1)
        self.server.store.stats.repaired["rooms"] += 1
        self.assertEqual(value(self.registry, "chatd_store_repaired_total", kind="rooms"), 1)

    def test_refused_frames_are_counted_by_reason(self) -> None:
        protocol, transport = connect(self.server, port=1)
        protocol.dataReceived(request(Operation.JOIN, "nowhere", {"username": "ann"}))
        self.assertEqual(frames(transport)[0].payload[:1], bytes((Status.ROOM_NOT_FOUND,)))
        # A frame whose payload is not UTF-8: refused, and the connection closed.
        protocol.dataReceived(request(Operation.CREATE, "hoge", b"\xff"))
        self.assertEqual(frames(transport)[0].payload[:1], bytes((Status.MALFORMED_REQUEST,)))
        self.assertEqual(value(self.registry, "chatd_tcp_refused_total", reason="room_not_found"), 1)
        self.assertEqual(value(self.registry, "chatd_tcp_refused_total", reason="invalid_utf8"), 1)
        self.assertEqual(self.server.tcp_factory.stats.refused_requests, {"room_not_found": 1, "invalid_utf8": 1})

    def test_connection_rate_limit_refusals(self) -> None:
        factory = self.server.tcp_factory
        built = [factory.buildProtocol(IPv4Address("TCP", LOOPBACK, port)) for port in range(7)]
        refused = sum(1 for protocol in built if not isinstance(protocol, RoomProtocol))
        self.assertEqual(refused, 2)  # a burst of 5
        self.assertEqual(value(self.registry, "chatd_rate_limited_total", limit="connections"), 2)

    def test_datagram_counters_bytes_drops_and_latency(self) -> None:
        ann = self.enter(Operation.CREATE, {"username": "ann"}, 1).decode()
        bob = self.enter(Operation.JOIN, {"username": "bob"}, 2).decode()
        # The model dialect registers its UDP port with two raw bytes.
        for member, port in (("ann", 5000), ("bob", 5001)):
            self.server.store.bind_address(self.server.store.rooms()[0].members[member], (LOOPBACK, port))
        self.udp.written.clear()
        relay = self.server.relay
        sent_before = relay.sent
        datagrams = [encode_legacy("hoge", ann, f"hello {n}") for n in range(3)]
        for datagram in datagrams:
            relay.datagramReceived(datagram, (LOOPBACK, 5000))
        others = [encode_legacy("hoge", ann, "one too many"), b"\xff"]
        for datagram in others:
            relay.datagramReceived(datagram, (LOOPBACK, 5000))
        elsewhere = encode_legacy("hoge", bob, "from elsewhere")
        relay.datagramReceived(elsewhere, (LOOPBACK, 6666))

        self.assertEqual(value(self.registry, "chatd_datagrams_received_total"), 6)
        # Three relays to bob, and ann is told (by datagram) that she was throttled.
        self.assertEqual(len(self.udp.written), 4)
        self.assertEqual(value(self.registry, "chatd_datagrams_sent_total"), sent_before + 4)
        self.assertEqual(
            value(self.registry, "chatd_udp_received_bytes_total"), sum(map(len, [*datagrams, *others, elsewhere]))
        )
        self.assertEqual(value(self.registry, "chatd_udp_sent_bytes_total"), sum(len(d) for d, _ in self.udp.written))
        self.assertEqual(value(self.registry, "chatd_datagrams_dropped_total", reason="malformed"), 1)
        self.assertEqual(value(self.registry, "chatd_datagrams_dropped_total", reason="wrong_source"), 1)
        self.assertEqual(value(self.registry, "chatd_datagrams_dropped_total", reason="rate_limited"), 1)
        self.assertEqual(value(self.registry, "chatd_rate_limited_total", limit="datagrams"), 1)
        self.assertEqual(value(self.registry, "chatd_datagram_send_errors_total"), 0)
        # Six datagrams: none timed yet.
        self.assertEqual(value(self.registry, "chatd_relay_latency_seconds_count"), 0)

    def test_latency_is_sampled(self) -> None:
        relay = self.server.relay
        # Drops are not timed: every datagram here is garbage.
        for _ in range(LATENCY_SAMPLE_EVERY):
            relay.datagramReceived(b"\xff", (LOOPBACK, 5000))
        self.assertEqual(value(self.registry, "chatd_relay_latency_seconds_count"), 0)
        relay.latency.observe(0.00002)
        relay.latency.observe(0.003)
        relay.latency.observe(7.0)
        self.assertEqual(value(self.registry, "chatd_relay_latency_seconds_count"), 3)
        self.assertEqual(value(self.registry, "chatd_relay_latency_seconds_bucket", le="2.5e-05"), 1)
        self.assertEqual(value(self.registry, "chatd_relay_latency_seconds_bucket", le="0.005"), 2)
        self.assertEqual(value(self.registry, "chatd_relay_latency_seconds_bucket", le="0.1"), 2)
        self.assertEqual(value(self.registry, "chatd_relay_latency_seconds_bucket", le="+Inf"), 3)
        self.assertAlmostEqual(value(self.registry, "chatd_relay_latency_seconds_sum"), 7.00302)

    def test_one_datagram_in_sample_every_is_timed(self) -> None:
        ann = self.enter(Operation.CREATE, {"username": "ann"}, 1).decode()
        self.server.store.bind_address(self.server.store.rooms()[0].members["ann"], (LOOPBACK, 5000))
        member = self.server.store.member_for_token(ann)
        assert member is not None
        member.rate_limit = None
        for n in range(2 * LATENCY_SAMPLE_EVERY):
            self.server.relay.datagramReceived(encode_legacy("hoge", ann, f"n{n}"), (LOOPBACK, 5000))
        self.assertEqual(self.server.relay.latency.count, 2)
        self.assertEqual(value(self.registry, "chatd_relay_latency_seconds_count"), 2)

    def test_registries_are_separate(self) -> None:
        other, _, _ = make_server()
        other.relay.datagramReceived(b"\xff", (LOOPBACK, 5000))
        self.assertEqual(value(make_registry(other), "chatd_datagrams_received_total"), 1)
        self.assertEqual(value(self.registry, "chatd_datagrams_received_total"), 0)

    def test_url(self) -> None:
        self.assertEqual(metrics_url("127.0.0.1", 9100), "http://127.0.0.1:9100/metrics")
        self.assertEqual(metrics_url("::1", 9100), "http://[::1]:9100/metrics")


class _Inbox(DatagramProtocol):
    def __init__(self) -> None:
        self.queue: DeferredQueue[bytes] = DeferredQueue()

    @override
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.queue.put(datagram)


class _ModelHandshake(Protocol):
    """One model-dialect create or join: read the token, send the UDP port, wait for the close."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder(1 << 20)
        self.frames: DeferredQueue[Frame] = DeferredQueue()
        self.closed: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self._decoder.feed(data)
        while (item := self._decoder.next()) is not None:
            assert isinstance(item, Frame)
            self.frames.put(item)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


class _Body(Protocol):
    """Collects a response body; C{done} fires with it when the response is over."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class EndpointTests(TestCase):
    """The real service, with metrics_port=0, on the real reactor and loopback."""

    timeout = 20

    def start(self) -> ChatService:
        settings = Settings(tcp_port=0, udp_port=0, metrics_port=0, password_cost=2, message_burst=1000)
        service = make_service(settings, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def fetch(self, service: ChatService, path: str = "/metrics") -> tuple[int, str]:
        agent = Agent(reactor)
        response = await agent.request(b"GET", f"http://{LOOPBACK}:{service.metrics_port}{path}".encode("ascii"))
        # Not readBody: it warns about the proxy transport the response hands it.
        body = _Body()
        response.deliverBody(body)
        return response.code, (await body.done).decode("utf-8")

    def listen_udp(self) -> tuple[_Inbox, int]:
        inbox = _Inbox()
        port = cast(IReactorUDP, reactor).listenUDP(0, inbox, interface=LOOPBACK, maxPacketSize=8192)
        self.addCleanup(port.stopListening)
        return inbox, port.getHost().port  # type: ignore[attr-defined]

    async def enter(self, service: ChatService, operation: Operation, user: str, udp_port: int) -> str:
        handshake = _ModelHandshake()
        endpoint = TCP4ClientEndpoint(cast(IReactorTCP, reactor), LOOPBACK, service.tcp_port)
        await connectProtocol(endpoint, handshake)
        assert handshake.transport is not None
        handshake.transport.write(request(operation, "hoge", {"username": user}, SizeEncoding.BINARY))
        acknowledge = await handshake.frames.get()
        self.assertEqual((acknowledge.state, acknowledge.payload), (State.ACKNOWLEDGE, bytes((Status.SUCCESS,))))
        complete = await handshake.frames.get()
        self.assertIs(complete.state, State.COMPLETE)
        handshake.transport.write(udp_port.to_bytes(2, "big"))
        await handshake.closed
        return complete.payload.decode("ascii")

    async def test_serves_every_documented_metric(self) -> None:
        events = capture_events(self)
        service = self.start()
        port = service.metrics_port
        assert port is not None
        self.assertNotEqual(port, 0)
        (logged,) = [e for e in events if e.get("event") == "metrics"]
        self.assertEqual(logged["url"], f"http://127.0.0.1:{port}/metrics")
        code, text = await self.fetch(service)
        self.assertEqual(code, 200)
        for name in DOCUMENTED:
            self.assertIn(f"# TYPE {name} ", text)
        self.assertEqual(scrape(text)[("chatd_rooms", frozenset())], 0)

    async def test_other_paths_are_not_found(self) -> None:
        service = self.start()
        code, _ = await self.fetch(service, "/")
        self.assertEqual(code, 404)

    async def test_counters_move_with_traffic(self) -> None:
        service = self.start()
        ann_inbox, ann_port = self.listen_udp()
        bob_inbox, bob_port = self.listen_udp()
        ann = await self.enter(service, Operation.CREATE, "ann", ann_port)
        await self.enter(service, Operation.JOIN, "bob", bob_port)
        await ann_inbox.queue.get()  # ann, without TCP now, is told of bob by datagram
        _, text = await self.fetch(service)
        before = scrape(text)

        server_address = (LOOPBACK, service.udp_port)
        sender = ann_inbox.transport
        assert sender is not None
        sent: list[bytes] = []
        relayed: list[bytes] = []
        messages = [f"message {n}" for n in range(2 * LATENCY_SAMPLE_EVERY)]
        # Garbage first: datagrams from one socket arrive in order, so once a
        # later relay arrives the garbage has been counted too.
        sender.write(b"\xff", server_address)
        sent.append(b"\xff")
        for message in messages:
            datagram = encode_legacy("hoge", ann, message)
            sender.write(datagram, server_address)
            sent.append(datagram)
            relayed.append(await bob_inbox.queue.get())
        self.assertEqual(relayed[-1], f"ann: {messages[-1]}".encode())

        _, text = await self.fetch(service)
        after = scrape(text)

        def moved(name: str, **labels: str) -> float:
            key = (name, frozenset(labels.items()))
            return after[key] - before[key]

        self.assertEqual(moved("chatd_datagrams_received_total"), len(sent))
        self.assertEqual(moved("chatd_udp_received_bytes_total"), sum(map(len, sent)))
        self.assertEqual(moved("chatd_datagrams_sent_total"), len(relayed))
        self.assertEqual(moved("chatd_udp_sent_bytes_total"), sum(map(len, relayed)))
        self.assertEqual(moved("chatd_datagrams_dropped_total", reason="malformed"), 1)
        self.assertEqual(moved("chatd_datagram_send_errors_total"), 0)
        self.assertGreater(after[("chatd_relay_latency_seconds_count", frozenset())], 0)
        self.assertGreater(after[("chatd_relay_latency_seconds_sum", frozenset())], 0)
        self.assertEqual(after[("chatd_rooms", frozenset())], 1)
        self.assertEqual(after[("chatd_members", frozenset())], 2)
        self.assertEqual(after[("chatd_rooms_created_total", frozenset())], 1)
        self.assertEqual(after[("chatd_joins_total", frozenset())], 1)
