"""
Several chatd nodes of one cluster on the test's reactor, against a real
redis-server (tests.redis_server): each a ChatServer with its own Redis
connections (a command connection for the directory and the log, the bus's
subscriber connection), its relay on a real UDP port and its TCP factory on
a real TCP port, both on loopback. Clients of every dialect: chatd's own
client library (native, with or without reliable delivery) and the raw
legacy clients of tests.loopback_clients (model, seed).

    class MyTests(ClusterCase):
        async def test_something(self) -> None:
            a, b = await self.nodes("a", "b")
            ann = await self.native(a, "ann", create=True)
            bob = await self.native(b, "bob")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from chatd.client.chat_client import ChatClient
from chatd.daemon.cluster.bus import ClusterBus
from chatd.daemon.cluster.directory import RoomDirectory
from chatd.daemon.cluster.log import RoomLog
from chatd.daemon.cluster.node import ClusterNode
from chatd.daemon.cluster.redis_url import RedisConnection, connect
from chatd.daemon.controller import ChatServer
from chatd.daemon.service import ChatService, make_service
from chatd.daemon.settings import Settings
from chatd.protocol.payloads import Dialect
from chatd.protocol.wire import Frame, Operation, State
from tests.loopback_clients import ChatClient as RawClient
from tests.redis_server import RedisServer
from tests.waiting import CLOCK, WAIT, Recorder, bounded, until

REACTOR: Any = _reactor
HOST = "127.0.0.1"
SETTINGS = Settings(password_cost=2, presence_interval=0.05, keepalive_interval=1.0)
"""Cheap scrypt, short presence windows, keepalives every second: tests check logic, not pacing."""
BUS_OPTIONS: dict[str, Any] = {"min_delay": 0.05, "max_delay": 0.3, "ping_interval": 0.5, "command_timeout": 2.0}
"""The bus's reconnection quickened for the tests."""


@dataclass
class TestNode:
    """One node: its ChatServer, its cluster node, its ports and its command connection."""

    __test__: ClassVar[bool] = False
    """Not a test class (pytest would try to collect it by its name)."""

    name: str
    server: ChatServer
    cluster: ClusterNode
    connection: RedisConnection | None
    """Its command connection (None for a daemon's node: its ClusterService holds it)."""
    tcp_port: int
    udp_port: int
    ports: list[Any] = field(default_factory=list)
    daemon: ChatService | None = None
    """The daemon's service tree, for a node built as the daemon builds it (L{ClusterCase.service_node})."""
    stopped: bool = False

    async def stop(self) -> None:
        """Stop as a node stops: the server (its rooms closed), the cluster's writes, the ports."""
        if self.stopped:
            return
        self.stopped = True
        if self.daemon is not None:
            await bounded(self.daemon.stopService(), f"node {self.name}'s daemon stops")
            return
        await bounded(self.server.stop(), f"node {self.name}'s server stops")
        await bounded(Deferred.fromCoroutine(self.cluster.stop()), f"node {self.name}'s cluster side stops")
        for port in self.ports:
            await bounded(Deferred.fromCoroutine(_stop_listening(port)), f"node {self.name}'s port closes")


async def _stop_listening(port: Any) -> None:
    await port.stopListening()


@dataclass
class Legacy:
    """A legacy (model or seed) member: the raw client and the texts it received by UDP."""

    client: RawClient
    texts: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.client.say(text)

    async def collect(self, count: int, what: str, timeout: float = WAIT) -> list[str]:
        """Read datagrams until C{count} texts (messages or notices) are held; all of them."""
        while len(self.texts) < count:
            data, _ = await bounded(self.client.udp.next_datagram(timeout), f"{self.client.name}: {what}", timeout)
            self.texts.append(data.decode("utf-8"))
        return self.texts


class ClusterCase(unittest.TestCase):
    """A redis-server and nodes against it, every one stopped at cleanup (the nodes first)."""

    timeout = 60

    def setUp(self) -> None:
        self.redis = RedisServer.start_for(self)

    async def service_node(self, name: str, *, reap_grace: float | None = None, **overrides: Any) -> TestNode:
        """
        A node as the daemon builds it (make_service with --redis and --node):
        ClusterService (its connection, directory, heartbeat and reaper)
        starting the ClusterNode the ChatServer was built with, the ports
        (free ones unless C{tcp_port} and C{udp_port} say), the shutdown
        hook. Stopped as twistd stops it. C{reap_grace}: the grace period
        of the reaper and of the node's previous life, shortened.
        """
        settings = replace(
            SETTINGS, **{"tcp_port": 0, "udp_port": 0, "redis": self.redis.url, "node": name, **overrides}
        )
        daemon = make_service(settings, REACTOR)
        cluster = daemon.cluster
        assert cluster is not None and cluster.cluster_node is not None
        if reap_grace is not None:
            cluster.reap_grace = reap_grace
        daemon.startService()
        node = TestNode(
            name, daemon.server, cluster.cluster_node, None, daemon.tcp_port, daemon.udp_port, daemon=daemon
        )
        self.addCleanup(node.stop)
        await bounded(cluster.ready, f"node {name}'s cluster service")
        return node

    async def node(self, name: str, **overrides: Any) -> TestNode:
        """A started node called C{name}, stopped at cleanup."""
        settings = replace(SETTINGS, **overrides)
        connection = await bounded(Deferred.fromCoroutine(connect(self.redis.url, REACTOR, 2.0)), "a Redis connection")
        # txredisapi's own reconnection, quickened for the tests (1 s at first, by default).
        factory = getattr(connection, "_factory", None)
        if factory is not None:
            factory.initialDelay = 0.05
            factory.maxDelay = 0.3
        self.addCleanup(connection.disconnect)
        directory = RoomDirectory(connection, name, CLOCK, timeout=2.0)
        log = RoomLog(connection, clock=CLOCK, max_messages=settings.history_messages)
        endpoint = TCP4ClientEndpoint(CLOCK, HOST, self.redis.port)
        bus = ClusterBus(endpoint, clock=CLOCK, redis=connection, log=log, node=name, **BUS_OPTIONS)
        cluster = ClusterNode(name, clock=CLOCK, settings=settings, directory=directory, log=log, bus=bus)
        server = ChatServer(CLOCK, settings, cluster=cluster)
        udp = REACTOR.listenUDP(0, server.relay, interface=HOST)
        tcp = REACTOR.listenTCP(0, server.tcp_factory, interface=HOST)
        node = TestNode(name, server, cluster, connection, tcp.getHost().port, udp.getHost().port, [udp, tcp])
        self.addCleanup(node.stop)
        await bounded(Deferred.fromCoroutine(cluster.start()), f"node {name} starts")
        # A node beats before it adds members, or nobody could reap them (the service's timer does it after).
        await bounded(Deferred.fromCoroutine(directory.heartbeat()), f"node {name}'s first heartbeat")
        return node

    async def nodes(self, *names: str, **overrides: Any) -> list[TestNode]:
        return [await self.node(name, **overrides) for name in names]

    # -- native members: chatd's client library ----------------------------------------

    def person(self, node: TestNode, name: str, *, delivery: bool = False) -> tuple[ChatClient, Recorder]:
        heard = Recorder(name)
        client = ChatClient(
            REACTOR,
            HOST,
            node.tcp_port,
            node.udp_port,
            heard,
            request_timeout=WAIT,
            reconnect=False,
            delivery=delivery,
        )
        self.addCleanup(client.leave)
        return client, heard

    async def native(
        self,
        node: TestNode,
        name: str,
        room: str = "lobby",
        *,
        create: bool = False,
        delivery: bool = False,
        password: str | None = None,
        invite: str | None = None,
    ) -> tuple[ChatClient, Recorder]:
        """A native member of C{room} on C{node} whose keepalive the node answered (it knows the UDP address)."""
        client, heard = self.person(node, name, delivery=delivery)
        entering = client.create(room, name, password) if create else client.join(room, name, password, invite)
        await bounded(entering, f"{name} enters {room} on node {node.name}")
        self.assertEqual(client.delivery, delivery, f"{name}'s reliable delivery")
        await until(lambda: client.udp_confirmed, f"node {node.name} answers {name}'s keepalive")
        return client, heard

    # -- legacy members -----------------------------------------------------------------------

    async def legacy(self, node: TestNode, dialect: Dialect, name: str, room: str = "lobby") -> Legacy:
        """A model or seed member that joined C{room} on C{node} and registered its UDP port."""
        client = RawClient(dialect, name, HOST, node.tcp_port, node.udp_port)
        await client.open()
        self.addCleanup(client.close)
        client.request(Operation.JOIN, room)
        acknowledge = await bounded(client.tcp.next_frame(), f"{name}'s join acknowledged")
        self.assertEqual(acknowledge.payload[:1], b"\x00", f"{name}'s join: {acknowledge!r}")
        complete = await bounded(client.tcp.next_frame(), f"{name}'s token")
        client.token = complete.payload.decode("utf-8")
        if dialect is Dialect.MODEL:
            client.send_port()
        else:
            client.send_register()
            registered = await bounded(client.tcp.next_frame(), f"{name}'s port registered")
            self.assertEqual(registered.payload[:1], b"\x00")
        await until(lambda: _registered(node, room, name), f"{name}'s UDP port known to node {node.name}")
        return Legacy(client)

    async def raw_join(self, node: TestNode, name: str, room: str, **extra: Any) -> Frame:
        """A native join's acknowledge frame, by a raw client (what a refused join is told)."""
        client = RawClient(Dialect.NATIVE, name, HOST, node.tcp_port, node.udp_port)
        await client.open()
        self.addCleanup(client.close)
        client.request(Operation.JOIN, room, **extra)
        return await bounded(client.tcp.next_frame(), f"{name}'s join answered")

    async def raw_create(self, node: TestNode, name: str, room: str) -> Frame:
        """A native create's acknowledge frame, by a raw client whose connection stays open."""
        client = RawClient(Dialect.NATIVE, name, HOST, node.tcp_port, node.udp_port)
        await client.open()
        self.addCleanup(client.close)
        client.request(Operation.CREATE, room)
        return await bounded(client.tcp.next_frame(), f"{name}'s create answered")


def _registered(node: TestNode, room: str, name: str) -> bool:
    for open_room in node.server.store.rooms():
        if open_room.name == room:
            member = open_room.members.get(name)
            return member is not None and member.address is not None
    return False


def refusal(frame: Frame) -> tuple[int, str]:
    """An acknowledge's status and, for a native client, the message of its JSON detail."""
    assert frame.state is State.ACKNOWLEDGE, frame
    detail = frame.payload[1:]
    message = str(json.loads(detail).get("message", "")) if detail.startswith(b"{") else ""
    return frame.payload[0], message
