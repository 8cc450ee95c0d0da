"""
The TCP side's factory: a RoomProtocol (chatd.daemon.tcp) per connection,
within the connection limits, and what the daemon limits per address across
connections.

A connection over a limit (--max-connections, --max-connections-per-host,
--connections-per-s) is answered at once with a refusal frame in the binary
size encoding and closed (L{_Refusal}), each refusal counted and warned about
at a bounded rate (RefusedConnections). The factory also holds the
per-address limiters of password attempts and of password hashes running,
which its connections consult before handing a password to the store, and
the TCP side's counters (L{RoomFactory.stats}).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, TypeVar

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from typing_extensions import override

from chatd.daemon.interfaces import IRoomStore, ITunnelledDatagrams
from chatd.daemon.ratelimit import KeyedLimiter, is_loopback
from chatd.daemon.settings import Settings
from chatd.daemon.stats import TcpStats
from chatd.daemon.tcp import RefusedConnections, RoomProtocol, host_of
from chatd.protocol.errors import ProtocolError, RateLimitedError, ServerFullError
from chatd.protocol.wire import Frame, Operation, State, encode_frame

if TYPE_CHECKING:
    from twisted.internet.interfaces import ITransport


_T = TypeVar("_T")


class RoomFactory(ServerFactory):
    """Builds a RoomProtocol per connection, within the connection limits."""

    noisy = False
    _log = Logger()

    def __init__(
        self,
        store: IRoomStore,
        clock: IReactorTime,
        settings: Settings,
        tunnel: ITunnelledDatagrams | None = None,
    ) -> None:
        self.store = store
        self.tunnel = tunnel
        """
        Where operation 8 frames go (the relay, given by the controller);
        None refuses them all (a factory without a relay, in tools and tests).
        """
        self.clock = clock
        self.settings = settings
        self.connections: set[RoomProtocol] = set()
        self._per_host: Counter[str] = Counter()
        self.stats = TcpStats()
        """What this factory and its connections count; the stats log line and the metrics read it."""
        self._hashing: Counter[str] = Counter()
        """Creates and joins carrying a password in the store's hands, by address."""
        self.refused = RefusedConnections(clock)
        exempt = None if settings.limit_loopback else is_loopback
        self._hashing_exempt = exempt
        self.new_connections: KeyedLimiter[str] = KeyedLimiter(
            settings.connections_per_s, settings.connection_burst, clock, exempt=exempt
        )
        self.password_attempts: KeyedLimiter[str] = KeyedLimiter(
            settings.password_attempts_per_min / 60, settings.password_attempt_burst, clock, exempt=exempt
        )

    @override
    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        host = host_of(addr) if addr is not None else ""
        if len(self.connections) >= self.settings.max_connections:
            return self._refuse(ServerFullError("the server holds its limit of connections"), host)
        if self._per_host[host] >= self.settings.max_connections_per_host:
            return self._refuse(ServerFullError(f"{host} holds its limit of connections"), host)
        if not self.new_connections.take(host):
            self.stats.rate_limited["connections"] += 1
            return self._refuse(RateLimitedError(f"{host} opens connections too fast"), host)
        return RoomProtocol(self)

    def _refuse(self, error: ProtocolError, host: str) -> _Refusal:
        self.refused.record(error.reason, peer=host)
        return _Refusal(error)

    def prune(self) -> None:
        """Forget per-address limits that carry no information any more (from the sweep)."""
        self.new_connections.prune()
        self.password_attempts.prune()

    def may_hash(self, host: str) -> bool:
        """Whether C{host} may have one more password hashed now (--max-hashing-per-host)."""
        if self._hashing_exempt is not None and self._hashing_exempt(host):
            return True
        return self._hashing[host] < self.settings.max_hashing_per_host

    def hashing_started(self, host: str) -> None:
        self._hashing[host] += 1

    def hashing_finished(self, result: _T, host: str) -> _T:
        """A callback and errback: passes C{result} on."""
        self._hashing[host] -= 1
        if not self._hashing[host]:
            del self._hashing[host]
        return result

    def hashing_in_progress(self, host: str) -> int:
        """Creates and joins with a password from C{host} that the store has not answered yet."""
        return self._hashing[host]

    def connection_opened(self, protocol: RoomProtocol) -> None:
        self.connections.add(protocol)
        self.stats.connections = len(self.connections)
        self._per_host[protocol.peer_host] += 1

    def connection_closed(self, protocol: RoomProtocol) -> None:
        if protocol in self.connections:
            self.connections.remove(protocol)
            self.stats.connections = len(self.connections)
            self._per_host[protocol.peer_host] -= 1
            if not self._per_host[protocol.peer_host]:
                del self._per_host[protocol.peer_host]


class _Refusal(Protocol):
    """Says why at once, in the binary size encoding, and hangs up."""

    def __init__(self, error: ProtocolError) -> None:
        self._error = error

    @override
    def connectionMade(self) -> None:
        transport: ITransport | None = self.transport
        assert transport is not None
        refusal = Frame(Operation.UNKNOWN, State.ACKNOWLEDGE, "", bytes((self._error.status,)))
        transport.write(encode_frame(refusal))
        transport.loseConnection()
