"""
Resuming end to end, with real daemons on loopback and chatd's own client.

Two single-node daemons cannot share a room, so the move of a membership is
tested within one daemon: the host's control connection is cut on its side
only (a TCP proxy drops the client's leg and keeps the daemon's open, as a
network change or a NAT that forgot the flow does), the client resumes on
the same daemon, and keeps its name, its host role and every message, each
once. The server list is tested across two daemons: the first one dead at
the start, then the one in use stopped under the client.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from typing_extensions import override

from chatd.client.events import (
    ConnectionLost,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Reconnected,
    Reconnecting,
    RoomClosed,
)
from chatd.client.servers import ServerAddress
from chatd.daemon.service import ChatService
from chatd.protocol.errors import ConnectionFailedError
from tests.client_cases import HOST, REACTOR, ClientCase, Person
from tests.waiting import bounded, client_with_servers, until


class _ServerLeg(Protocol):
    """The proxy's connection to the daemon, for one client connection."""

    def __init__(self, client: _ClientLeg) -> None:
        self.client = client
        self.closed: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        if not self.client.cut and self.client.transport is not None:
            self.client.transport.write(data)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.client.cut and self.client.transport is not None:
            self.client.transport.loseConnection()
        self.closed.callback(None)


class _ClientLeg(Protocol):
    """A client's connection to the proxy, piped to a connection of the proxy's own to the daemon."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.cut = False
        self.gone = False
        """The client's connection is closed (the daemon's leg, once made, is to be closed too unless cut)."""
        self.server: _ServerLeg | None = None
        self._waiting: list[bytes] = []

    @override
    def connectionMade(self) -> None:
        self.proxy.clients.append(self)
        endpoint = TCP4ClientEndpoint(REACTOR, HOST, self.proxy.target)
        connectProtocol(endpoint, _ServerLeg(self)).addCallback(self._connected)

    def _connected(self, server: Protocol) -> None:
        assert isinstance(server, _ServerLeg)
        self.server = server
        self.proxy.servers.append(server)
        assert server.transport is not None
        for data in self._waiting:
            server.transport.write(data)
        self._waiting = []
        if self.cut or self.gone:
            server.transport.loseConnection()

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.server is None or self.server.transport is None:
            self._waiting.append(data)
        else:
            self.server.transport.write(data)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        # Cut: the daemon's leg stays open, as if the client had only vanished.
        if not self.cut and self.server is not None and self.server.transport is not None:
            self.server.transport.loseConnection()


class TcpProxy:
    """A loopback TCP proxy to one daemon port, whose client connections can be cut on their side only."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.clients: list[_ClientLeg] = []
        self.servers: list[_ServerLeg] = []
        self.port = 0
        self._listening: IListeningPort | None = None

    @classmethod
    async def start(cls, case: ClientCase, target: int) -> TcpProxy:
        proxy = cls(target)
        factory = Factory.forProtocol(lambda: _ClientLeg(proxy))
        listening = await TCP4ServerEndpoint(REACTOR, 0, interface=HOST).listen(factory)
        proxy._listening = listening
        proxy.port = listening.getHost().port
        case.addCleanup(proxy.stop)
        return proxy

    def cut_clients(self) -> None:
        """Reset every client connection now; the daemon's legs stay open."""
        for client in self.clients:
            client.cut = True
            if ITCPTransport.providedBy(client.transport):
                ITCPTransport(client.transport).abortConnection()

    async def stop(self) -> None:
        for server in self.servers:
            if server.transport is not None:
                server.transport.loseConnection()
        if self._listening is not None:
            stopped = self._listening.stopListening()
            if stopped is not None:
                await stopped


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as borrowed:
        borrowed.bind((HOST, 0))
        port: int = borrowed.getsockname()[1]
    return port


class ResumeOnOneDaemonTests(ClientCase):
    timeout = 30

    def client_of(self, servers: list[ServerAddress], name: str, **options: Any) -> Person:
        options = {"max_retry_delay": 0.5, **options}
        return Person(*client_with_servers(self, servers, name, **options))

    async def test_host_resumes_after_its_connection_is_cut(self) -> None:
        service = self.serve()
        proxy = await TcpProxy.start(self, service.tcp_port)
        through_proxy = ServerAddress(HOST, proxy.port, service.udp_port)
        alice = self.client_of([through_proxy], "alice")
        await bounded(alice.client.create("lobby", "alice", "sesame"), "alice creates lobby")
        bob = await self.enter(service, "bob", password="sesame", delivery=True)
        await until(lambda: alice.client.udp_confirmed, "alice's keepalive answered")
        for number in range(3):
            alice.client.send(f"a{number}")
            bob.client.send(f"b{number}")
        await until(lambda: len(alice.heard.messages_from("bob")) == 3, "alice hears bob's first three")
        await until(lambda: len(bob.heard.messages_from("alice")) == 3, "bob hears alice's first three")
        await until(lambda: not alice.client._core._delivery.outbox.unacknowledged, "alice's three acknowledged")
        store = service.server.store
        (room,) = store.rooms()
        epoch, old = room.history.epoch, room.members["alice"]

        proxy.cut_clients()
        await alice.heard.next(ConnectionLost)
        # While alice is away (the daemon still holds her connection): bob talks, she types.
        for number in range(3, 6):
            bob.client.send(f"b{number}")
        alice.client.send("typed while away")
        back = await alice.heard.next(Reconnected)
        self.assertTrue(back.resumed, back)
        self.assertTrue(back.as_host, back)
        self.assertEqual(back.server, f"{HOST}:{proxy.port}")
        self.assertEqual(back.members, ("alice", "bob"))
        retry = alice.heard.of(Reconnecting)[0]
        self.assertTrue(retry.resuming)

        # The same room, the same epoch, alice its host under a new token; the old one is gone.
        (same,) = store.rooms()
        self.assertIs(same, room)
        self.assertEqual(room.history.epoch, epoch)
        self.assertIsNot(room.host, old)
        self.assertEqual(room.host.name if room.host is not None else None, "alice")
        self.assertIsNone(store.member_for_token(old.token))
        # The daemon closed the leg it still held for the old membership.
        await bounded(proxy.servers[0].closed, "the daemon closes alice's old connection")
        self.assertTrue(alice.client.info is not None and alice.client.info.host)

        await until(lambda: len(alice.heard.messages_from("bob")) == 6, "alice hears what bob said while she was away")
        await until(lambda: "typed while away" in bob.heard.messages_from("alice"), "bob hears what alice typed")
        alice.client.send("back")
        bob.client.send("welcome back")
        await bob.heard.message("alice", "back")
        await alice.heard.message("bob", "welcome back")

        # Each message once, in room order: nothing lost, nothing shown twice.
        self.assertEqual(alice.heard.messages_from("bob"), [f"b{number}" for number in range(6)] + ["welcome back"])
        self.assertEqual(bob.heard.messages_from("alice"), ["a0", "a1", "a2", "typed while away", "back"])
        for person in (alice, bob):
            seqs = [event.seq for event in person.heard.of(MessageReceived) if event.seq is not None]
            self.assertEqual(seqs, sorted(set(seqs)), f"{person.heard.name} saw a message twice or out of order")
        # For bob nobody came or went.
        self.assertEqual([e for e in bob.heard.events if isinstance(e, MemberJoined | MemberLeft | RoomClosed)], [])
        self.assertEqual(bob.client.members, ("alice", "bob"))

    async def test_a_member_whose_connection_closed_enters_anew(self) -> None:
        """
        A connection the daemon saw close is a departure, as before: the
        resume is refused, and the client joins again (a new membership).
        """
        service = self.serve()
        await self.enter(service, "alice", create=True, delivery=True)
        bob = await self.enter(service, "bob", delivery=True)
        control = bob.client._control
        assert control is not None
        control.abort()
        back = await bob.heard.next(Reconnected)
        self.assertFalse(back.resumed)
        self.assertEqual(back.members, ("alice", "bob"))


class ServerListTests(ClientCase):
    timeout = 30

    def client_of(self, servers: list[ServerAddress], name: str) -> Person:
        return Person(*client_with_servers(self, servers, name))

    def address(self, service: ChatService) -> ServerAddress:
        return ServerAddress(HOST, service.tcp_port, service.udp_port)

    async def test_the_first_server_dead_the_client_enters_on_the_second(self) -> None:
        service = self.serve()
        dead = ServerAddress(HOST, closed_port(), closed_port())
        alice = self.client_of([dead, self.address(service)], "alice")
        info = await bounded(alice.client.create("lobby", "alice"), "alice creates lobby on the second server")
        self.assertTrue(info.host)
        self.assertEqual(alice.client.server, self.address(service))
        self.assertEqual([room.name for room in service.server.store.rooms()], ["lobby"])

    async def test_every_server_dead(self) -> None:
        dead = [ServerAddress(HOST, closed_port(), 9), ServerAddress(HOST, closed_port(), 9)]
        alice = self.client_of(dead, "alice")
        error = await self.refused(alice.client.create("lobby", "alice"), ConnectionFailedError)
        self.assertIn(str(dead[0].tcp_port), str(error), "the first server's failure is the one told")

    async def test_the_server_in_use_stops_and_the_client_moves_to_the_next(self) -> None:
        first, second = self.serve(), self.serve()
        first_address, second_address = self.address(first), self.address(second)
        alice = self.client_of([first_address, second_address], "alice")
        await bounded(alice.client.create("lobby", "alice"), "alice creates lobby on the first server")
        await bounded(first.stopService(), "the first server stops")
        back = await alice.heard.next(Reconnected)
        # The second daemon does not know the room: the resume is refused, and the host makes it again there.
        self.assertEqual(back.server, second_address.label)
        self.assertFalse(back.resumed)
        self.assertEqual(alice.client.server, second_address)
        self.assertEqual([room.name for room in second.server.store.rooms()], ["lobby"])
        tries = alice.heard.of(Reconnecting)
        self.assertEqual(tries[0].server, first_address.label, "the same server first")
        self.assertTrue(tries[0].resuming)
        self.assertIn(second_address.label, [retry.server for retry in tries[1:]])
