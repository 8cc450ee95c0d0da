"""
chatd.client.chat_client reports a dead UDP path: a real chatd on loopback, and between
it and the client a small UDP relay that the test can tell to drop every
datagram, as a firewall would. The exact probe timings are in
tests/client/test_client_reconnect.py; here the probing is made faster so each
test takes a couple of seconds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import DatagramProtocol
from typing_extensions import override

import chatd.client.chat_client
from chatd.client.chat_client import ConnectionState
from chatd.client.events import MessageReceived, UdpPathLost, UdpPathRestored
from tests.client_cases import HOST, REACTOR, ClientCase, Person
from tests.waiting import bounded, sleep, until

PROBE_INTERVAL = 0.2
LOST_AFTER = 0.5
"""Probe every 0.2 s while in doubt; report after 0.5 s unanswered."""


class _Side(DatagramProtocol):
    noisy = False

    def __init__(self, relay: UdpRelay, from_client: bool) -> None:
        self._relay = relay
        self._from_client = from_client

    @override
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._relay.received(datagram, (addr[0], addr[1]), self._from_client)


class UdpRelay:
    """
    Listens where the client sends its datagrams and passes them to the
    server, and the server's answers back, unless L{dropping}: then both
    ways are lost. The client sees its answers come from the relay's port,
    which is the one it was given as the server's.
    """

    def __init__(self, server_port: int) -> None:
        self.dropping = False
        self._server = (HOST, server_port)
        self._client: tuple[str, int] | None = None
        self._facing_client = REACTOR.listenUDP(0, _Side(self, True), HOST)
        self._facing_server = REACTOR.listenUDP(0, _Side(self, False), HOST)
        self.port: int = self._facing_client.getHost().port

    def received(self, datagram: bytes, source: tuple[str, int], from_client: bool) -> None:
        if self.dropping:
            return
        if from_client:
            self._client = source
            self._facing_server.write(datagram, self._server)
        elif self._client is not None:
            self._facing_client.write(datagram, self._client)

    async def close(self) -> None:
        for port in (self._facing_client, self._facing_server):
            await port.stopListening()


class UdpPathTests(ClientCase):
    timeout = 10

    async def behind_relay(self, name: str, *, create: bool) -> tuple[Person, UdpRelay]:
        service = self.serve()
        relay = UdpRelay(service.udp_port)
        self.addCleanup(relay.close)
        person = self.person(service, name, udp_probe_interval=PROBE_INTERVAL, udp_lost_after=LOST_AFTER)
        person.client.udp_port = relay.port
        entering = person.client.create("lobby", name) if create else person.client.join("lobby", name)
        await bounded(entering, f"{name} enters lobby")
        return person, relay

    async def test_lost_and_restored(self) -> None:
        """Datagrams stop both ways: reported within a second, once; and back when they flow again."""
        alice, relay = await self.behind_relay("alice", create=True)
        self.assertTrue(alice.client.udp_confirmed)
        relay.dropping = True
        alice.client.flush(0.1)  # a keepalive now, rather than at the server's 30 s interval
        lost = await alice.heard.next(UdpPathLost, timeout=2.0)
        self.assertGreaterEqual(lost.silent_for, LOST_AFTER)
        self.assertTrue(alice.client.udp_lost)
        self.assertEqual(alice.client.state, ConnectionState.IN_ROOM, "the room is not left over it")
        await sleep(1.0)
        self.assertEqual(alice.heard.of(UdpPathLost), [lost], "one report per outage")
        relay.dropping = False
        await alice.heard.next(UdpPathRestored, timeout=3.0)
        self.assertFalse(alice.client.udp_lost)
        self.assertEqual(alice.heard.events, [lost, UdpPathRestored()])

    async def test_blocked_from_the_start(self) -> None:
        """Nothing gets through at all: the join still succeeds, and says at once that UDP is dead."""
        self.patch(chatd.client.chat_client, "UDP_CONFIRM_WAIT", 0.3)
        service = self.serve()
        alice = await self.enter(service, "alice", create=True)
        relay = UdpRelay(service.udp_port)
        self.addCleanup(relay.close)
        relay.dropping = True
        bob = self.person(service, "bob", udp_probe_interval=PROBE_INTERVAL, udp_lost_after=LOST_AFTER)
        bob.client.udp_port = relay.port
        info = await bounded(bob.client.join("lobby", "bob"), "bob joins, with UDP blocked")
        self.assertEqual(info.members, ("alice", "bob"))
        self.assertFalse(bob.client.udp_confirmed)
        await bob.heard.next(UdpPathLost, timeout=2.0)
        relay.dropping = False
        await bob.heard.next(UdpPathRestored, timeout=3.0)
        # Now the server knows bob's address, and relays to him.
        await until(lambda: bob.client.udp_confirmed, "bob's keepalive is answered")
        alice.client.send("can you hear me now?")
        self.assertEqual((await bob.heard.next(MessageReceived)).text, "can you hear me now?")
