"""
chatd.bench.impair, the UDP impairment proxy: driven on a Clock with fake UDP
ports (every decision, count and delay exactly, since the dice are seeded),
then for real on loopback (IPv4 and IPv6) through the reactor, and its command
line as a subprocess with plain sockets. Every real wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import DeferredQueue
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from chatd.bench import impair
from chatd.bench.impair import (
    BOTH,
    Direction,
    Impairment,
    ImpairmentProxy,
    Passing,
    drop_every,
)

Address = tuple[str, int]
UPSTREAM: Address = ("127.0.0.1", 9002)
ALICE: Address = ("127.0.0.1", 50001)
BOB: Address = ("127.0.0.1", 50002)
REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0
"""Seconds any single real network wait may take before the test fails."""


# -- a fake network -------------------------------------------------------------


@implementer(IUDPTransport, IListeningPort)
class FakePort:
    """A UDP port of L{FakeReactor}: what it writes goes to the reactor's log of sent datagrams."""

    def __init__(self, reactor: FakeReactor, protocol: DatagramProtocol, interface: str, number: int) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.interface = interface
        self.number = number
        self.closed = False

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        assert not self.closed
        assert addr is not None, "the proxy's sockets are not connected"
        self.reactor.sent.append((self.number, addr, packet))

    def connect(self, host: str, port: int) -> None:
        raise AssertionError("the proxy's sockets are not connected")

    def getHost(self) -> IPv4Address:  # noqa: N802 (Twisted's name)
        return IPv4Address("UDP", self.interface, self.number)

    def stopListening(self) -> None:  # noqa: N802 (Twisted's name)
        self.closed = True

    def startListening(self) -> None:  # noqa: N802 (Twisted's name)
        pass

    def setBroadcastAllowed(self, enabled: bool) -> None:  # noqa: N802 (Twisted's name)
        pass

    def getBroadcastAllowed(self) -> bool:  # noqa: N802 (Twisted's name)
        return False

    def deliver(self, data: bytes, source: Address) -> None:
        """A datagram arrives on this port."""
        self.protocol.datagramReceived(data, source)


@implementer(IReactorUDP)
class FakeReactor(Clock):
    """A Clock whose listenUDP hands out L{FakePort}s numbered from 40000 and logs what they send."""

    def __init__(self, failing: bool = False) -> None:
        super().__init__()
        self.ports: list[FakePort] = []
        self.sent: list[tuple[int, Address, bytes]] = []
        """(the sending port's number, the destination, the datagram), in order."""
        self.failing = failing

    def listenUDP(  # noqa: N802 (Twisted's name)
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,  # noqa: N803 (Twisted's name)
    ) -> FakePort:
        if self.failing and self.ports:
            raise OSError(24, "Too many open files")
        fake = FakePort(self, protocol, interface, port or 40000 + len(self.ports))
        self.ports.append(fake)
        protocol.makeConnection(fake)
        return fake

    def take(self) -> list[tuple[int, Address, bytes]]:
        sent, self.sent = self.sent, []
        return sent


class Rig:
    """A proxy on a FakeReactor, listening; helpers to send through it either way."""

    def __init__(self, **options: Any) -> None:
        self.reactor = FakeReactor(failing=options.pop("failing", False))
        self.proxy = ImpairmentProxy(self.reactor, upstream=UPSTREAM, **options)
        self.port = self.proxy.listen()
        self.listener = self.reactor.ports[0]

    def from_client(self, data: bytes, client: Address = ALICE) -> None:
        self.listener.deliver(data, client)

    def upstream_of(self, client: Address) -> FakePort:
        ports = [p for p in self.reactor.ports[1:] if cast(Any, p.protocol).client == client]
        assert len(ports) == 1, ports
        return ports[0]

    def from_server(self, data: bytes, client: Address = ALICE) -> None:
        self.upstream_of(client).deliver(data, UPSTREAM)

    def payloads(self) -> list[bytes]:
        return [data for _port, _to, data in self.reactor.take()]


def numbered(count: int) -> Iterator[bytes]:
    return (b"%05d" % n for n in range(count))


# -- on a clock -----------------------------------------------------------------


class PlainRelayTests(SynchronousTestCase):
    def test_listen(self) -> None:
        rig = Rig()
        self.assertEqual(rig.port, 40000)
        self.assertEqual(rig.listener.interface, "127.0.0.1")
        self.assertRaises(RuntimeError, rig.proxy.listen)

    def test_both_ways_unimpaired(self) -> None:
        """Each client gets its own upstream socket toward the daemon; replies go back to that client."""
        rig = Rig()
        rig.from_client(b"hello", ALICE)
        [(alice_port, to, data)] = rig.reactor.take()
        self.assertEqual((to, data), (UPSTREAM, b"hello"))
        self.assertEqual(rig.upstream_of(ALICE).number, alice_port)
        self.assertEqual(rig.upstream_of(ALICE).interface, "0.0.0.0")
        rig.from_server(b"welcome", ALICE)
        self.assertEqual(rig.reactor.take(), [(rig.port, ALICE, b"welcome")])
        counters = rig.proxy.counters(Direction.TO_SERVER)
        self.assertEqual((counters.received, counters.forwarded, counters.dropped), (1, 1, 0))
        self.assertEqual(rig.proxy.counters(Direction.TO_CLIENT).forwarded, 1)

    def test_replies_map_to_the_right_client(self) -> None:
        rig = Rig()
        for _ in range(3):
            rig.from_client(b"a", ALICE)
            rig.from_client(b"b", BOB)
        sources = {(port, data) for port, _to, data in rig.reactor.take()}
        alice, bob = rig.upstream_of(ALICE), rig.upstream_of(BOB)
        self.assertEqual(sources, {(alice.number, b"a"), (bob.number, b"b")})
        self.assertEqual(rig.proxy.clients, 2)
        rig.from_server(b"for bob", BOB)
        rig.from_server(b"for alice", ALICE)
        rig.from_server(b"bob again", BOB)
        self.assertEqual(
            rig.reactor.take(),
            [(rig.port, BOB, b"for bob"), (rig.port, ALICE, b"for alice"), (rig.port, BOB, b"bob again")],
        )

    def test_ipv6_upstream(self) -> None:
        """The upstream sockets bind to the daemon's family; the host is normalised, as the kernel writes it."""
        reactor = FakeReactor()
        proxy = ImpairmentProxy(reactor, upstream=("0:0::1", 9002))
        proxy.listen(0, "::1")
        reactor.ports[0].deliver(b"x", ("::1", 50000, 0, 0))  # type: ignore[arg-type] # IPv6 addresses have 4 parts
        self.assertEqual(reactor.sent[-1], (reactor.ports[1].number, ("::1", 9002), b"x"))
        self.assertEqual(reactor.ports[1].interface, "::")
        self.assertEqual(proxy.clients, 1)
        reactor.ports[1].deliver(b"y", ("::1", 9002))
        self.assertEqual(reactor.sent[-1], (reactor.ports[0].number, ("::1", 50000), b"y"))

    def test_strays(self) -> None:
        """Only the daemon's datagrams are replies; anything else reaching an upstream socket is dropped."""
        rig = Rig()
        rig.from_client(b"x")
        rig.reactor.take()
        rig.upstream_of(ALICE).deliver(b"not the daemon", ("127.0.0.1", 9003))
        rig.upstream_of(ALICE).deliver(b"nor this", ("127.0.0.2", 9002))
        self.assertEqual(rig.reactor.take(), [])
        self.assertEqual(rig.proxy.stats()["strays"], 2)
        self.assertEqual(rig.proxy.counters(Direction.TO_CLIENT).received, 0)

    def test_upstream_must_be_an_address(self) -> None:
        self.assertRaises(ValueError, ImpairmentProxy, FakeReactor(), upstream=("localhost", 9002))

    def test_send_error_is_counted(self) -> None:
        rig = Rig()
        rig.from_client(b"x")

        def refuse(packet: bytes, addr: Address | None = None) -> None:
            raise OSError(90, "Message too long")

        rig.upstream_of(ALICE).write = refuse  # type: ignore[method-assign]
        rig.from_client(b"y")
        counters = rig.proxy.counters(Direction.TO_SERVER)
        self.assertEqual((counters.received, counters.forwarded, counters.send_errors), (2, 1, 1))


class ImpairmentTests(SynchronousTestCase):
    def test_loss_rate_and_reproducibility(self) -> None:
        """10,000 datagrams at 10 %: the exact count for seed 1, within 4 sigma of 1,000 for any seed."""
        drops = []
        for seed in (1, 1, 2):
            rig = Rig(seed=seed, to_server=Impairment(loss=0.1))
            for data in numbered(10_000):
                rig.from_client(data)
            passed = rig.payloads()
            counters = rig.proxy.counters(Direction.TO_SERVER)
            self.assertEqual(counters.received, 10_000)
            self.assertEqual(counters.dropped + counters.forwarded, 10_000)
            self.assertEqual(len(passed), counters.forwarded)
            self.assertEqual(passed, sorted(passed))
            # Binomial(10,000, 0.1): sigma = 30.
            self.assertTrue(880 <= counters.dropped <= 1120, counters.dropped)
            drops.append(set(numbered(10_000)) - set(passed))
        self.assertEqual(drops[0], drops[1])
        self.assertNotEqual(drops[0], drops[2])
        self.assertEqual(len(drops[0]), 1014)

    def test_loss_in_one_direction_only(self) -> None:
        rig = Rig(seed=3, to_client=Impairment(loss=1.0))
        rig.from_client(b"up")
        rig.from_server(b"down")
        self.assertEqual(rig.payloads(), [b"up"])
        self.assertEqual(rig.proxy.counters(Direction.TO_CLIENT).dropped, 1)

    def test_duplicates(self) -> None:
        rig = Rig(seed=5, to_client=Impairment(duplicate=0.2))
        rig.from_client(b"open")
        rig.reactor.take()
        for data in numbered(5_000):
            rig.from_server(data)
        passed = rig.payloads()
        counters = rig.proxy.counters(Direction.TO_CLIENT)
        # Binomial(5,000, 0.2): sigma = 28.3.
        self.assertTrue(887 <= counters.duplicated <= 1113, counters.duplicated)
        self.assertEqual(counters.duplicated, 985)
        self.assertEqual(counters.forwarded, 5_000 + counters.duplicated)
        self.assertEqual(len(passed), counters.forwarded)
        # Without delay, a duplicate follows its original at once.
        self.assertEqual(sorted(set(passed)), list(numbered(5_000)))
        self.assertEqual(passed, sorted(passed))
        self.assertEqual(sum(1 for a, b in itertools.pairwise(passed) if a == b), counters.duplicated)

    def test_latency(self) -> None:
        rig = Rig(to_server=Impairment(latency_ms=50))
        rig.from_client(b"slow")
        rig.reactor.advance(0.049)
        self.assertEqual(rig.payloads(), [])
        self.assertEqual(rig.proxy.stats()["held"], 1)
        rig.reactor.advance(0.001)
        self.assertEqual(rig.payloads(), [b"slow"])
        self.assertEqual(rig.proxy.counters(Direction.TO_SERVER).reordered, 0)

    def test_reorder_really_reorders(self) -> None:
        """One datagram a millisecond, each held back up to 30 ms: all arrive, late, and out of order."""
        rig = Rig(seed=7, to_server=Impairment(reorder_ms=30))
        sent = list(numbered(200))
        for data in sent:
            rig.from_client(data)
            rig.reactor.advance(0.001)
        rig.reactor.advance(0.030)
        passed = rig.payloads()
        self.assertEqual(sorted(passed), sent)
        self.assertNotEqual(passed, sent)
        overtaken = sum(1 for a, b in itertools.pairwise(passed) if a > b)
        self.assertEqual(overtaken, 86)
        counters = rig.proxy.counters(Direction.TO_SERVER)
        self.assertEqual((counters.reordered, counters.forwarded, rig.proxy.stats()["held"]), (200, 200, 0))

    def test_reorder_probability(self) -> None:
        rig = Rig(seed=7, to_server=Impairment(reorder_ms=30, reorder=0.25))
        for data in numbered(4_000):
            rig.from_client(data)
        counters = rig.proxy.counters(Direction.TO_SERVER)
        # Binomial(4,000, 0.25): sigma = 27.4.
        self.assertTrue(890 <= counters.reordered <= 1110, counters.reordered)
        self.assertEqual(len(rig.payloads()), 4_000 - counters.reordered)
        rig.reactor.advance(0.030)
        self.assertEqual(len(rig.payloads()), counters.reordered)

    def test_dice_do_not_depend_on_the_other_settings(self) -> None:
        """The same datagrams are lost with or without duplication, and whatever the other direction carries."""

        def lost(duplicate: float, replies: bool) -> set[bytes]:
            rig = Rig(seed=11, to_server=Impairment(loss=0.3, duplicate=duplicate))
            for data in numbered(500):
                rig.from_client(data)
                if replies:
                    rig.from_server(b"reply")
            return set(numbered(500)) - set(rig.payloads())

        self.assertEqual(lost(0.0, False), lost(0.5, True))

    def test_drop_every_second_reply_exactly(self) -> None:
        rig = Rig(to_client=Impairment(drop=drop_every(2)))
        rig.from_client(b"open")
        rig.reactor.take()
        for data in numbered(10):
            rig.from_server(data)
        self.assertEqual(rig.payloads(), [b"00000", b"00002", b"00004", b"00006", b"00008"])
        counters = rig.proxy.counters(Direction.TO_CLIENT)
        self.assertEqual((counters.filtered, counters.dropped, counters.forwarded), (5, 5, 5))

    def test_predicate_sees_the_datagram(self) -> None:
        seen: list[Passing] = []

        def record(passing: Passing) -> bool:
            seen.append(passing)
            return passing.data == b"drop me"

        rig = Rig(to_server=Impairment(drop=record))
        rig.from_client(b"a", ALICE)
        rig.from_client(b"drop me", BOB)
        rig.from_client(b"c", ALICE)
        self.assertEqual(rig.payloads(), [b"a", b"c"])
        self.assertEqual(
            seen,
            [
                Passing(Direction.TO_SERVER, ALICE, 1, 1, b"a"),
                Passing(Direction.TO_SERVER, BOB, 2, 1, b"drop me"),
                Passing(Direction.TO_SERVER, ALICE, 3, 2, b"c"),
            ],
        )

    def test_invalid_settings(self) -> None:
        self.assertRaises(ValueError, Impairment, loss=1.5)
        self.assertRaises(ValueError, Impairment, duplicate=-0.1)
        self.assertRaises(ValueError, Impairment, latency_ms=-1)
        self.assertRaises(ValueError, drop_every, 0)


class BlockTests(SynchronousTestCase):
    def test_block_and_unblock_one_direction(self) -> None:
        rig = Rig()
        rig.from_client(b"join")
        rig.proxy.block(Direction.TO_CLIENT, True)
        self.assertTrue(rig.proxy.is_blocked(Direction.TO_CLIENT))
        self.assertFalse(rig.proxy.is_blocked(Direction.TO_SERVER))
        rig.from_server(b"lost")
        rig.from_client(b"still up")
        self.assertEqual(rig.payloads(), [b"join", b"still up"])
        rig.proxy.block(Direction.TO_CLIENT, False)
        rig.from_server(b"back")
        self.assertEqual(rig.payloads(), [b"back"])
        counters = rig.proxy.counters(Direction.TO_CLIENT)
        self.assertEqual((counters.received, counters.blocked, counters.dropped, counters.forwarded), (2, 1, 1, 1))

    def test_block_both(self) -> None:
        rig = Rig()
        rig.from_client(b"join")
        rig.proxy.block(BOTH, True)
        rig.from_client(b"x")
        rig.from_server(b"y")
        self.assertEqual(rig.payloads(), [b"join"])
        rig.proxy.block(BOTH, False)
        rig.from_client(b"x")
        rig.from_server(b"y")
        self.assertEqual(rig.payloads(), [b"x", b"y"])

    def test_block_drops_what_is_held_back(self) -> None:
        rig = Rig(to_server=Impairment(latency_ms=10))
        rig.from_client(b"in flight")
        rig.proxy.block(Direction.TO_SERVER, True)
        rig.reactor.advance(0.010)
        self.assertEqual(rig.payloads(), [])
        counters = rig.proxy.counters(Direction.TO_SERVER)
        self.assertEqual((counters.blocked, counters.dropped, counters.forwarded), (1, 1, 0))


class ClientTableTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        rig = Rig(max_clients=3)
        clients = [("127.0.0.1", 50000 + n) for n in range(4)]
        for client in clients:
            rig.from_client(b"hi", client)
        self.assertEqual(rig.proxy.clients, 3)
        self.assertEqual(len(rig.reactor.ports), 4)
        self.assertEqual(len(rig.payloads()), 3)
        rig.from_client(b"again", clients[3])
        rig.from_client(b"known", clients[0])
        self.assertEqual(rig.payloads(), [b"known"])
        counters = rig.proxy.counters(Direction.TO_SERVER)
        self.assertEqual((counters.received, counters.refused, counters.dropped, counters.forwarded), (6, 2, 2, 4))

    def test_default_bound(self) -> None:
        rig = Rig()
        for n in range(impair.MAX_CLIENTS + 5):
            rig.from_client(b"hi", ("127.0.0.1", 20000 + n))
        self.assertEqual(rig.proxy.clients, 1024)
        self.assertEqual(rig.proxy.counters(Direction.TO_SERVER).refused, 5)

    def test_no_socket_left_counts_as_refused(self) -> None:
        rig = Rig(failing=True)
        rig.from_client(b"hi")
        self.assertEqual(rig.proxy.clients, 0)
        self.assertEqual(rig.proxy.counters(Direction.TO_SERVER).refused, 1)


class StopTests(SynchronousTestCase):
    def test_stop_closes_everything_and_balances_the_counts(self) -> None:
        rig = Rig(seed=2, to_server=Impairment(loss=0.2, duplicate=0.2, reorder_ms=20))
        for n, data in enumerate(numbered(300)):
            rig.from_client(data, ("127.0.0.1", 50000 + n % 4))
            rig.reactor.advance(0.001)
        stopped = rig.proxy.stop()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertTrue(all(port.closed for port in rig.reactor.ports))
        self.assertEqual(rig.reactor.getDelayedCalls(), [])
        stats = rig.proxy.stats()
        counters = stats["to_server"]
        assert isinstance(counters, dict)
        self.assertEqual(
            counters["received"] + counters["duplicated"],
            counters["forwarded"] + counters["dropped"] + counters["send_errors"],
        )
        self.assertEqual(stats["held"], 0)
        self.assertEqual(json.loads(json.dumps(stats)), stats)
        # Nothing is relayed once stopped.
        rig.listener.deliver(b"late", ALICE)
        self.assertEqual(rig.proxy.counters(Direction.TO_SERVER).received, 300)


class CommandLineTests(SynchronousTestCase):
    def test_host_port(self) -> None:
        self.assertEqual(impair.host_port("127.0.0.1:0"), ("127.0.0.1", 0))
        self.assertEqual(impair.host_port("[::1]:9002"), ("::1", 9002))
        for bad in ("9002", "127.0.0.1:", ":9002", "127.0.0.1:70000", "127.0.0.1:x"):
            self.assertRaises(argparse.ArgumentTypeError, impair.host_port, bad)

    def test_impairments(self) -> None:
        arguments = impair.make_parser().parse_args(
            [
                *("--upstream", "127.0.0.1:9002", "--loss", "0.1", "--reorder-ms", "30", "--duplicate", "0.01"),
                *("--seed", "1", "--to-client-loss", "0.5", "--to-client-drop-every", "2"),
                *("--to-server-latency-ms", "5"),
            ]
        )
        self.assertEqual((arguments.upstream, arguments.listen, arguments.seed), (UPSTREAM, ("127.0.0.1", 0), 1))
        up = impair.impairment_of(arguments, Direction.TO_SERVER)
        self.assertEqual(up, Impairment(loss=0.1, duplicate=0.01, reorder_ms=30, latency_ms=5))
        down = impair.impairment_of(arguments, Direction.TO_CLIENT)
        self.assertEqual((down.loss, down.duplicate, down.reorder_ms, down.latency_ms), (0.5, 0.01, 30, 0))
        assert down.drop is not None
        self.assertEqual([down.drop(Passing(Direction.TO_CLIENT, ALICE, n, n, b"")) for n in (1, 2)], [False, True])

    def test_bad_values(self) -> None:
        parser = impair.make_parser()
        for bad in ("--loss 2", "--reorder-ms -1", "--to-server-drop-every 0", "--max-clients 0", "--listen x"):
            with contextlib.redirect_stderr(io.StringIO()):
                self.assertRaises(SystemExit, parser.parse_args, [*bad.split(), "--upstream", "127.0.0.1:1"])


# -- for real, on loopback ---------------------------------------------------------


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class Echo(DatagramProtocol):
    """The 'daemon': sends every datagram back where it came from."""

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802 (Twisted's name)
        assert self.transport is not None
        self.transport.write(datagram, addr)


class Receiver(DatagramProtocol):
    def __init__(self) -> None:
        self.queue: DeferredQueue[bytes] = DeferredQueue()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802 (Twisted's name)
        self.queue.put(datagram)


def port_of(listening: IListeningPort) -> int:
    address = listening.getHost()
    assert isinstance(address, IPv4Address | IPv6Address)
    return address.port


async def until(clock: IReactorTime, condition: Callable[[], bool]) -> None:
    """Let the reactor run until the condition holds, for WAIT seconds at most."""
    deadline = clock.seconds() + WAIT
    while not condition():
        if clock.seconds() > deadline:
            raise TimeoutError("the condition never held")
        await deferLater(clock, 0.005)


class LoopbackTests(TestCase):
    """The proxy on the real reactor, between an echo server and a client, on ephemeral loopback ports."""

    host = "127.0.0.1"
    timeout = 10

    def setUp(self) -> None:
        if self.host == "::1" and not has_ipv6_loopback():
            self.skipTest("no IPv6 loopback")

    async def test_echo_through_the_proxy(self) -> None:
        from twisted.internet import reactor

        udp = cast(IReactorUDP, reactor)
        clock = cast(IReactorTime, reactor)
        server = udp.listenUDP(0, Echo(), self.host, 2048)
        self.addCleanup(server.stopListening)
        proxy = ImpairmentProxy(
            reactor,
            upstream=(self.host, port_of(server)),
            seed=1,
            to_server=Impairment(latency_ms=5),
            to_client=Impairment(drop=drop_every(2)),
        )
        proxy_port = proxy.listen(0, self.host)
        self.addCleanup(proxy.stop)
        receiver = Receiver()
        client = udp.listenUDP(0, receiver, self.host, 2048)
        self.addCleanup(client.stopListening)
        assert receiver.transport is not None
        for data in numbered(10):
            receiver.transport.write(data, (self.host, proxy_port))
        # Every second echo is dropped on its way back, exactly.
        got = [await receiver.queue.get().addTimeout(WAIT, clock) for _ in range(5)]
        self.assertEqual(sorted(got), [b"00000", b"00002", b"00004", b"00006", b"00008"])
        # UDP blocked, then restored.
        up, down = proxy.counters(Direction.TO_SERVER), proxy.counters(Direction.TO_CLIENT)
        proxy.block(Direction.TO_SERVER, True)
        receiver.transport.write(b"blocked", (self.host, proxy_port))
        await until(clock, lambda: up.received == 11)
        proxy.block(Direction.TO_SERVER, False)
        receiver.transport.write(b"open1", (self.host, proxy_port))
        receiver.transport.write(b"open2", (self.host, proxy_port))
        self.assertEqual(await receiver.queue.get().addTimeout(WAIT, clock), b"open1")
        self.assertEqual((up.received, up.forwarded, up.blocked), (13, 12, 1))
        self.assertEqual((down.received, down.filtered), (12, 6))
        self.assertEqual(proxy.clients, 1)
        self.assertEqual(receiver.queue.pending, [])
        await proxy.stop()

    async def test_daemon_not_up_yet(self) -> None:
        """
        Datagrams to a port nobody listens on yet bring ICMP port unreachable back:
        the client's upstream socket survives it, and works once the daemon is up.
        """
        from twisted.internet import reactor

        udp = cast(IReactorUDP, reactor)
        clock = cast(IReactorTime, reactor)
        with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((self.host, 0))
            daemon_port = probe.getsockname()[1]
        proxy = ImpairmentProxy(reactor, upstream=(self.host, daemon_port))
        proxy_port = proxy.listen(0, self.host)
        self.addCleanup(proxy.stop)
        receiver = Receiver()
        client = udp.listenUDP(0, receiver, self.host, 2048)
        self.addCleanup(client.stopListening)
        assert receiver.transport is not None
        for _ in range(3):
            receiver.transport.write(b"anyone?", (self.host, proxy_port))
            await deferLater(clock, 0.01)
        await until(clock, lambda: proxy.counters(Direction.TO_SERVER).forwarded == 3)
        server = udp.listenUDP(daemon_port, Echo(), self.host, 2048)
        self.addCleanup(server.stopListening)
        receiver.transport.write(b"there you are", (self.host, proxy_port))
        self.assertEqual(await receiver.queue.get().addTimeout(WAIT, clock), b"there you are")
        self.assertEqual(proxy.clients, 1)


class LoopbackIPv6Tests(LoopbackTests):
    host = "::1"


class CommandLineLoopbackTests(SynchronousTestCase):
    """C{python -m chatd.bench.impair} as a subprocess, with two plain blocking sockets, each wait bounded."""

    def test_run_block_and_stop(self) -> None:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        ):
            server.bind(("127.0.0.1", 0))
            client.bind(("127.0.0.1", 0))
            server.settimeout(WAIT)
            client.settimeout(WAIT)
            upstream = f"127.0.0.1:{server.getsockname()[1]}"
            process = subprocess.Popen(
                [sys.executable, "-m", "chatd.bench.impair", "--upstream", upstream, "--seed", "1"],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            self.addCleanup(self._reap, process)
            assert process.stdout is not None
            port = int(self._line(process))
            client.sendto(b"ping", ("127.0.0.1", port))
            data, proxy_side = server.recvfrom(2048)
            self.assertEqual(data, b"ping")
            server.sendto(b"pong", proxy_side)
            self.assertEqual(client.recvfrom(2048), (b"pong", ("127.0.0.1", port)))
            # SIGUSR1 blocks both directions, and says so on stderr once done, with the counters.
            process.send_signal(signal.SIGUSR1)
            self.assertEqual(self._line(process, process.stderr).split()[0], "blocked")
            client.sendto(b"blocked", ("127.0.0.1", port))
            # Signal again until the proxy has read that datagram (blocking twice changes nothing),
            # so that it cannot come through after the block is lifted.
            deadline = time.monotonic() + WAIT
            while True:
                process.send_signal(signal.SIGUSR1)
                word, counters = self._line(process, process.stderr).split(" ", 1)
                if json.loads(counters)["to_server"]["received"] == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            self.assertEqual((word, json.loads(counters)["to_server"]["blocked"]), ("blocked", 1))
            process.send_signal(signal.SIGUSR2)
            self.assertEqual(self._line(process, process.stderr).split()[0], "unblocked")
            client.sendto(b"open", ("127.0.0.1", port))
            self.assertEqual(server.recvfrom(2048)[0], b"open")
            process.send_signal(signal.SIGTERM)
            stats = json.loads(self._line(process))
            self.assertEqual(process.wait(timeout=WAIT), 0)
        self.assertEqual(stats["clients"], 1)
        self.assertEqual(
            {key: stats["to_server"][key] for key in ("received", "forwarded", "blocked")},
            {"received": 3, "forwarded": 2, "blocked": 1},
        )
        self.assertEqual(stats["to_client"]["forwarded"], 1)

    def _line(self, process: subprocess.Popen[bytes], stream: IO[bytes] | None = None) -> str:
        """One line of the process's stdout (or of that stream), within WAIT seconds."""
        stream = stream if stream is not None else process.stdout
        assert stream is not None
        readable, _, _ = select.select([stream], [], [], WAIT)
        if not readable:
            self.fail("no line from the proxy within the wait")
        # A line is written whole and flushed at once: readline cannot stall once some of it is there.
        line = stream.readline()
        if not line.endswith(b"\n"):
            self.fail(f"the proxy ended: {line!r}")
        return line.decode().strip()

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WAIT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
