"""
A UDP impairment proxy: it sits between clients and a daemon's UDP port and
loses, duplicates, delays, reorders or blocks datagrams, separately in each
direction, so that the reliable delivery of docs/reliability.md can be tested
end to end against the real daemon on loopback, and measured by the lossy
benchmark.

    python -m chatd.bench.impair --listen 127.0.0.1:0 --upstream 127.0.0.1:9002 \\
        --loss 0.1 --reorder-ms 30 --duplicate 0.01 --seed 1

prints the port it listens on (one line), relays until SIGINT or SIGTERM, then
prints its counters as one JSON object. SIGUSR1 blocks both directions (UDP
blocked, as on some networks), SIGUSR2 lifts the block; each says on stderr
C{blocked <counters as JSON>} or C{unblocked <counters>} once it took effect.

Clients send to the proxy's port. For each client address the proxy opens one
upstream UDP socket toward the daemon: the daemon sees one source per client
(as it would without the proxy), and what the daemon sends to that socket is
for that client and no one else; anything from another source is dropped and
counted as a stray. The sockets are not connected: on Linux an ICMP port
unreachable (the daemon not up yet, or restarting) makes a connected socket
report an error, on which Twisted's epoll reactor closes the port for good.
The table of clients is bounded (L{MAX_CLIENTS}): a datagram from one client
too many is dropped and counted.

Every random decision comes from a C{random.Random} seeded from the proxy's
seed and the direction, and the n-th datagram of a direction always meets the
same dice whatever the settings and whatever happens in the other direction:
a run is reproducible, and turning one impairment up does not reshuffle the
others.

C{chatd.bench} may import nothing of chatd outside itself (an import-linter
contract), so this module is self-contained: Twisted and the standard library.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from types import FrameType
from typing import Final, Literal

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorThreads,
    IReactorTime,
    IReactorUDP,
    IUDPTransport,
)
from twisted.internet.protocol import DatagramProtocol

from chatd.bench.arguments import non_negative

PROG: Final = "python -m chatd.bench.impair"
MAX_CLIENTS: Final = 1024
"""Client addresses the proxy keeps an upstream socket for, at most."""
MAX_DATAGRAM: Final = 65535
"""Largest datagram read: the proxy passes any size on, the daemon decides what it accepts."""

Address = tuple[str, int]


class Direction(StrEnum):
    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"


BOTH: Final = "both"


@dataclass(frozen=True)
class Passing:
    """A datagram as the drop predicate sees it."""

    direction: Direction
    client: Address
    """The client's address, whichever the direction."""
    number: int
    """1-based: the how-manieth datagram received in this direction, over all clients."""
    client_number: int
    """1-based: the how-manieth datagram of this client received in this direction."""
    data: bytes


DropPredicate = Callable[[Passing], bool]


@dataclass(frozen=True)
class Impairment:
    """What happens to the datagrams of one direction. All probabilities are in [0, 1]."""

    loss: float = 0.0
    """Probability that a datagram is dropped."""
    duplicate: float = 0.0
    """Probability that a datagram is sent twice (each copy delayed on its own)."""
    latency_ms: float = 0.0
    """Fixed delay of every datagram."""
    reorder_ms: float = 0.0
    """A held-back datagram waits uniform(0, reorder_ms) more, so later ones can overtake it."""
    reorder: float = 1.0
    """Probability that a datagram is held back (when reorder_ms is not 0)."""
    drop: DropPredicate | None = None
    """Drops exactly the datagrams for which it answers True (before the random loss)."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability, not {value!r}")
        for name in ("latency_ms", "reorder_ms"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ValueError(f"{name} must not be negative, not {value!r}")


def drop_every(n: int) -> DropPredicate:
    """Drops the n-th, 2n-th, ... datagram of the direction exactly (n=2: every second one)."""
    if n < 1:
        raise ValueError(f"drop_every needs a positive period, not {n}")
    return lambda passing: passing.number % n == 0


@dataclass
class Counters:
    """
    One direction's counts. Each received datagram is either dropped, or sent
    once or (duplicated) twice, or still held back: after stop() (which drops
    what is held back), received + duplicated == forwarded + dropped + send_errors.
    """

    received: int = 0
    forwarded: int = 0
    """Datagrams sent on, duplicates included."""
    dropped: int = 0
    """All drops: the ones below, random loss, and what stop() found still held back."""
    blocked: int = 0
    """Dropped because the direction was blocked (on arrival or when due to leave)."""
    filtered: int = 0
    """Dropped by the drop predicate."""
    refused: int = 0
    """Dropped because the client table was full (to_server only)."""
    duplicated: int = 0
    reordered: int = 0
    """Copies held back by a random extra delay (reorder_ms)."""
    send_errors: int = 0


@dataclass
class _Dice:
    """The random numbers one datagram meets, always all drawn, in this order."""

    loss: float
    duplicate: float
    hold: tuple[float, float]
    """Whether each of the (at most two) copies is held back ..."""
    extra: tuple[float, float]
    """... and for how long, as a fraction of reorder_ms."""

    @classmethod
    def roll(cls, rng: random.Random) -> _Dice:
        loss, duplicate, hold0, extra0, hold1, extra1 = (rng.random() for _ in range(6))
        return cls(loss, duplicate, (hold0, hold1), (extra0, extra1))


@dataclass
class _Way:
    """A direction's settings, dice, switch and counters."""

    direction: Direction
    impairment: Impairment
    rng: random.Random
    counters: Counters = field(default_factory=Counters)
    blocked: bool = False


class _ClientSide(DatagramProtocol):
    """The port clients send to."""

    def __init__(self, proxy: ImpairmentProxy) -> None:
        self.proxy = proxy

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:  # noqa: N802 (Twisted's name)
        self.proxy._from_client(datagram, (addr[0], addr[1]))


class _Upstream(DatagramProtocol):
    """One client's socket toward the daemon: what the daemon sends to it is that client's."""

    def __init__(self, proxy: ImpairmentProxy, client: Address) -> None:
        self.proxy = proxy
        self.client = client
        self.sent = 0
        self.received = 0

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:  # noqa: N802 (Twisted's name)
        self.proxy._from_server(datagram, (addr[0], addr[1]), self)


class ImpairmentProxy:
    """
    The proxy. C{reactor} must provide IReactorTime and IReactorUDP (a real
    reactor, or in tests a Clock that also fakes listenUDP). C{upstream} is the
    daemon's UDP address, with an IP address (not a name): replies are
    recognised by their source, as the kernel writes it.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        upstream: Address,
        seed: int = 0,
        to_server: Impairment | None = None,
        to_client: Impairment | None = None,
        max_clients: int = MAX_CLIENTS,
        upstream_interface: str | None = None,
    ) -> None:
        host = str(ipaddress.ip_address(upstream[0]))
        self._clock = reactor
        self._udp = IReactorUDP(reactor)
        self.upstream: Address = (host, upstream[1])
        # The upstream sockets bind to the daemon's own family; the wildcard
        # lets the kernel pick the source address a route to the daemon has.
        default_interface = "::" if ":" in host else "0.0.0.0"
        self._upstream_interface = default_interface if upstream_interface is None else upstream_interface
        self.max_clients = max_clients
        self.seed = seed
        # One generator per direction (str seeds hash deterministically): one
        # direction's traffic never shifts the other's draws.
        self._ways = {
            direction: _Way(direction, impairment or Impairment(), random.Random(f"{seed}:{direction.value}"))
            for direction, impairment in ((Direction.TO_SERVER, to_server), (Direction.TO_CLIENT, to_client))
        }
        self._clients: dict[Address, _Upstream] = {}
        self.strays = 0
        """Datagrams on an upstream socket from anyone but the daemon: dropped, counted in no direction."""
        self._upstream_ports: list[IListeningPort] = []
        self._listener: IListeningPort | None = None
        self._client_side = _ClientSide(self)
        self._held: dict[int, tuple[IDelayedCall, _Way]] = {}
        self._next_held = 0
        self._stopped = False

    # -- the API --------------------------------------------------------------

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> int:
        """Start listening for clients; the actual port (an ephemeral one for 0)."""
        if self._listener is not None:
            raise RuntimeError("the proxy is listening already")
        self._listener = self._udp.listenUDP(port, self._client_side, interface, MAX_DATAGRAM)
        address = self._listener.getHost()
        assert isinstance(address, IPv4Address | IPv6Address)
        return address.port

    def block(self, direction: Direction | Literal["both"], on: bool = True) -> None:
        """Drop everything in that direction (or both) from now on, or no longer."""
        for way in self._select(direction):
            way.blocked = on

    def is_blocked(self, direction: Direction) -> bool:
        return self._ways[Direction(direction)].blocked

    def counters(self, direction: Direction) -> Counters:
        return self._ways[Direction(direction)].counters

    @property
    def clients(self) -> int:
        return len(self._clients)

    def stats(self) -> dict[str, object]:
        """Everything counted, ready for JSON."""
        return {
            "seed": self.seed,
            "clients": len(self._clients),
            "strays": self.strays,
            "held": len(self._held),
            **{direction.value: asdict(way.counters) for direction, way in self._ways.items()},
        }

    def stop(self) -> Deferred[None]:
        """Stop listening, close every upstream socket, drop what is held back; fires when all ports are closed."""
        self._stopped = True
        for call, way in self._held.values():
            call.cancel()
            way.counters.dropped += 1
        self._held.clear()
        ports = self._upstream_ports + ([self._listener] if self._listener is not None else [])
        self._upstream_ports = []
        self._listener = None
        closing = [maybeDeferred(port.stopListening) for port in ports]
        done: Deferred[None] = gatherResults(closing).addCallback(lambda _: None)
        return done

    # -- the relay ------------------------------------------------------------

    def _select(self, direction: Direction | Literal["both"]) -> list[_Way]:
        if direction == BOTH:
            return list(self._ways.values())
        return [self._ways[Direction(direction)]]

    def _from_client(self, data: bytes, client: Address) -> None:
        if self._stopped:
            return
        way = self._ways[Direction.TO_SERVER]
        upstream = self._clients.get(client)
        if upstream is None and len(self._clients) < self.max_clients:
            upstream = self._open(client)
        if upstream is None:
            way.counters.received += 1
            # A refused datagram still uses up its dice: the next ones meet the same as ever.
            _Dice.roll(way.rng)
            way.counters.refused += 1
            way.counters.dropped += 1
            return
        upstream.sent += 1
        copies = self._decide(way, client, upstream.sent, data)
        target = upstream
        self._send_copies(way, copies, lambda: self._to_server(target, data))

    def _from_server(self, data: bytes, source: Address, upstream: _Upstream) -> None:
        if self._stopped:
            return
        if source != self.upstream:
            self.strays += 1
            return
        way = self._ways[Direction.TO_CLIENT]
        upstream.received += 1
        copies = self._decide(way, upstream.client, upstream.received, data)
        client = upstream.client
        self._send_copies(way, copies, lambda: self._to_client(client, data))

    def _open(self, client: Address) -> _Upstream | None:
        upstream = _Upstream(self, client)
        try:
            port = self._udp.listenUDP(0, upstream, self._upstream_interface, MAX_DATAGRAM)
        except OSError:
            # Out of descriptors or ports: as good as a full table.
            return None
        self._upstream_ports.append(port)
        self._clients[client] = upstream
        return upstream

    def _decide(self, way: _Way, client: Address, client_number: int, data: bytes) -> list[float]:
        """
        Count the datagram in and roll its dice; the delay of each copy to send
        (none if it is dropped). The dice are rolled first, whatever the outcome,
        so that the n-th datagram of a direction always meets the same ones.
        """
        counters, impairment = way.counters, way.impairment
        counters.received += 1
        dice = _Dice.roll(way.rng)
        if way.blocked:
            counters.blocked += 1
            counters.dropped += 1
            return []
        predicate = impairment.drop
        if predicate is not None and predicate(Passing(way.direction, client, counters.received, client_number, data)):
            counters.filtered += 1
            counters.dropped += 1
            return []
        if dice.loss < impairment.loss:
            counters.dropped += 1
            return []
        copies = 2 if dice.duplicate < impairment.duplicate else 1
        if copies == 2:
            counters.duplicated += 1
        delays = []
        for copy in range(copies):
            delay = impairment.latency_ms
            if impairment.reorder_ms > 0 and dice.hold[copy] < impairment.reorder:
                counters.reordered += 1
                delay += dice.extra[copy] * impairment.reorder_ms
            delays.append(delay / 1000.0)
        return delays

    def _send_copies(self, way: _Way, delays: list[float], send: Callable[[], None]) -> None:
        for delay in delays:
            if delay <= 0:
                # No delay: sent at once, so an unimpaired direction keeps its order exactly.
                self._leave(way, send)
            else:
                self._hold(way, delay, send)

    def _hold(self, way: _Way, delay: float, send: Callable[[], None]) -> None:
        key = self._next_held
        self._next_held += 1

        def due() -> None:
            del self._held[key]
            self._leave(way, send)

        self._held[key] = (self._clock.callLater(delay, due), way)

    def _leave(self, way: _Way, send: Callable[[], None]) -> None:
        # A block also stops what was held back when it was switched on: once
        # blocked, nothing at all gets through, as on a network that blocks UDP.
        if way.blocked:
            way.counters.blocked += 1
            way.counters.dropped += 1
            return
        try:
            send()
        except OSError:
            # EMSGSIZE, ENOBUFS...: lost, as the network would lose it.
            way.counters.send_errors += 1
            return
        way.counters.forwarded += 1

    def _to_server(self, upstream: _Upstream, data: bytes) -> None:
        transport = upstream.transport
        assert transport is not None
        IUDPTransport(transport).write(data, self.upstream)

    def _to_client(self, client: Address, data: bytes) -> None:
        transport = self._client_side.transport
        assert transport is not None
        IUDPTransport(transport).write(data, client)


# -- the command line ---------------------------------------------------------


def host_port(text: str) -> Address:
    """C{HOST:PORT} or C{[V6]:PORT}; a host name is resolved to its first address."""
    host, separator, port_text = text.rpartition(":")
    if not separator or not port_text.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"{text} is not HOST:PORT")
    port = int(port_text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0])
        except OSError as error:
            raise argparse.ArgumentTypeError(f"cannot resolve {host}: {error}") from error
    return host, port


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def positive_period(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


_SETTINGS: Final = (
    ("loss", probability, "probability that a datagram is dropped"),
    ("duplicate", probability, "probability that a datagram is sent twice"),
    ("latency-ms", non_negative, "fixed delay of every datagram, ms"),
    ("reorder-ms", non_negative, "a held-back datagram waits uniform(0, this) more ms"),
    ("reorder", probability, "probability that a datagram is held back (when --reorder-ms)"),
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A UDP impairment proxy between clients and a daemon's UDP port.",
        epilog="Prints the port it listens on, runs until SIGINT or SIGTERM, then prints its counters as JSON. "
        "SIGUSR1 blocks both directions, SIGUSR2 lifts the block.",
    )
    parser.add_argument("--listen", type=host_port, default=("127.0.0.1", 0), help="HOST:PORT for clients (0: any)")
    parser.add_argument("--upstream", type=host_port, required=True, help="the daemon's UDP HOST:PORT")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random decision (0)")
    parser.add_argument("--max-clients", type=positive_period, default=MAX_CLIENTS, help=f"({MAX_CLIENTS})")
    for name, kind, text in _SETTINGS:
        parser.add_argument(f"--{name}", type=kind, default=None, help=f"{text}, both directions")
    for direction in Direction:
        flag = direction.value.replace("_", "-")
        for name, kind, text in _SETTINGS:
            parser.add_argument(f"--{flag}-{name}", type=kind, default=None, help=f"{text}, {direction.value} only")
        parser.add_argument(
            f"--{flag}-drop-every",
            type=positive_period,
            default=None,
            help=f"drop every N-th {direction.value} datagram",
        )
    return parser


def impairment_of(arguments: argparse.Namespace, direction: Direction) -> Impairment:
    """The direction's own settings, else the shared ones, else the defaults."""
    values: dict[str, float] = {}
    for name, _kind, _text in _SETTINGS:
        attribute = name.replace("-", "_")
        own = getattr(arguments, f"{direction.value}_{attribute}")
        shared = getattr(arguments, attribute)
        value = own if own is not None else shared
        if value is not None:
            values[attribute] = value
    period = getattr(arguments, f"{direction.value}_drop_every")
    return Impairment(**values, drop=drop_every(period) if period is not None else None)


def run(arguments: argparse.Namespace) -> int:
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    proxy = ImpairmentProxy(
        reactor,
        upstream=arguments.upstream,
        seed=arguments.seed,
        to_server=impairment_of(arguments, Direction.TO_SERVER),
        to_client=impairment_of(arguments, Direction.TO_CLIENT),
        max_clients=arguments.max_clients,
    )
    host, port = arguments.listen
    try:
        actual = proxy.listen(port, host)
    except CannotListenError as error:
        print(f"{PROG}: cannot listen on {host}:{port}: {error}", file=sys.stderr)
        return 2

    threads = IReactorThreads(reactor)

    def flip(on: bool) -> None:
        proxy.block(BOTH, on)
        # Said on stderr with the counters so far: whoever sent the signal learns when it took
        # effect, and what had passed by then.
        print(f"{'blocked' if on else 'unblocked'} {json.dumps(proxy.stats(), sort_keys=True)}", file=sys.stderr)
        sys.stderr.flush()

    def switch(on: bool) -> Callable[[int, FrameType | None], None]:
        # The block is flipped from the reactor's thread: a signal handler only schedules it.
        return lambda _signum, _frame: threads.callFromThread(flip, on)

    # A shell starts background jobs with SIGINT ignored, and Twisted only takes SIGINT over from
    # Python's default handler: restore it, so that SIGINT stops the proxy however it was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGUSR1, switch(True))
    signal.signal(signal.SIGUSR2, switch(False))
    print(actual, flush=True)
    # Twisted's reactor installs the SIGINT and SIGTERM handlers that stop it.
    reactor.run()
    proxy.stop()
    print(json.dumps(proxy.stats(), sort_keys=True), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(make_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
