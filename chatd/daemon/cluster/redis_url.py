"""
Where Redis is (C{redis://HOST:PORT/DB}) and opening a connection to it.

L{parse_redis_url} is pure: it raises C{ValueError} with one sentence, as
the daemon's option checks do (chatd.daemon.settings), so a bad C{--redis}
becomes a usage line. L{connect} opens a txredisapi connection within a
bounded time and, when Redis cannot be reached, raises
L{ClusterUnavailableError} with one sentence that names the URL and the
reason ("connection refused", "no answer within 2 s", ...), which is what a
daemon prints before exiting non-zero.

The connection L{connect} returns reconnects by itself when Redis goes away
and comes back (txredisapi backs off up to 10 s between attempts); callers
bound each command themselves (the room directory does), since a command
issued while it is reconnecting waits for the connection.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol

from chatd.protocol.errors import ClusterUnavailableError

DEFAULT_PORT = 6379
SCHEME = "redis"


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A Redis server and database: C{redis://HOST:PORT/DB} (no password, no TLS yet)."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}://{host}:{self.port}/{self.db}"


def parse_redis_url(text: str) -> RedisURL:
    """
    C{redis://HOST[:PORT][/DB]} as a L{RedisURL}; the port defaults to 6379
    and the database to 0; an IPv6 address goes in brackets. Anything else
    (another scheme, a password, a query) raises C{ValueError} saying what.
    """
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not a Redis URL: its port is not a number from 1 to 65535") from None
    if parts.scheme != SCHEME:
        raise ValueError(f"{text!r} is not a Redis URL: it must start with redis://")
    if parts.username is not None or parts.password is not None:
        # Not echoed: the URL holds a secret, and this sentence may be logged.
        raise ValueError("a user or password in the Redis URL is not supported (redis://HOST:PORT/DB)")
    if not parts.hostname:
        raise ValueError(f"{text!r} is not a Redis URL: it names no host (redis://HOST:PORT/DB)")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} is not a Redis URL: it has a query or fragment, which chatd does not read")
    if port == 0:
        raise ValueError(f"{text!r} is not a Redis URL: its port is not a number from 1 to 65535")
    path = parts.path.removeprefix("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"{text!r} is not a Redis URL: the database after the / must be a number")
    return RedisURL(parts.hostname, DEFAULT_PORT if port is None else port, int(path) if path else 0)


def probe_redis(url: RedisURL, timeout: float) -> str | None:
    """
    Whether Redis at C{url} answers, asked before the reactor runs (blocking,
    within C{timeout} seconds in all): None when it selects the database and
    answers PING, or the one sentence saying why not, as L{connect} says it.

    The daemon asks this as it starts, so that a Redis that cannot be
    reached is one line and a non-zero exit, not a daemon that runs
    degraded from its first second.
    """
    deadline_error = f"cannot reach Redis at {url}: no answer within {timeout:g} s"
    try:
        with socket.create_connection((url.host, url.port), timeout=timeout) as probe:
            probe.sendall(b"SELECT %d\r\nPING\r\n" % url.db)
            replies = b""
            while replies.count(b"\r\n") < 2:
                received = probe.recv(512)
                if not received:
                    return f"cannot use Redis at {url}: it closed the connection"
                replies += received
    except TimeoutError:
        return deadline_error
    except socket.gaierror:
        return f"cannot reach Redis at {url}: its host name does not resolve"
    except OSError as error:
        # By errno: this module's ConnectionRefusedError is Twisted's, not the built-in one.
        if error.errno == errno.ECONNREFUSED:
            return f"cannot reach Redis at {url}: connection refused"
        return f"cannot reach Redis at {url}: {error.strerror or error}"
    selected, ponged = replies.split(b"\r\n")[:2]
    for reply in (selected, ponged):
        if reply.startswith(b"-"):
            return f"cannot use Redis at {url}: {reply[1:].decode('utf-8', 'replace')}"
    return None


class RedisConnection(Protocol):
    """
    The part of a txredisapi connection chatd uses: any command by name (its
    Deferred fires with the reply, or fails with a txredisapi error), and
    closing. txredisapi ships no types; this is where they start.
    """

    def execute_command(self, *arguments: str | int | float) -> Deferred[Any]: ...

    def disconnect(self) -> Deferred[Any]: ...


def _reason(failure: BaseException, timeout: float) -> str:
    if isinstance(failure, ConnectionRefusedError):
        return "connection refused"
    if isinstance(failure, ConnectTimeoutError | DeferredTimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(failure, DNSLookupError):
        return "its host name does not resolve"
    if isinstance(failure, ConnectError):
        return failure.osError if isinstance(failure.osError, str) and failure.osError else str(failure)
    # txredisapi's own failures (a database Redis refuses to select) start with this.
    return str(failure).removeprefix("Redis error: ")


async def connect(url: str | RedisURL, reactor: IReactorTime, timeout: float) -> RedisConnection:
    """
    A connection to Redis at C{url}, ready (its database selected) within
    C{timeout} seconds, or L{ClusterUnavailableError}: "cannot reach Redis at
    redis://127.0.0.1:6390/0: connection refused".

    C{reactor} must also provide IReactorTCP (as every real reactor does).
    One plain TCP attempt comes first, only to learn why Redis cannot be
    reached: txredisapi, asked to reconnect, retries a refused connection
    quietly for ever instead of saying so. Then the txredisapi connection,
    which reconnects after losing Redis, with txredisapi's own reply timeout
    set to C{timeout} so that a Redis that stops answering is dropped and
    reconnected rather than waited on.
    """
    where = parse_redis_url(url) if isinstance(url, str) else url
    started = reactor.seconds()
    endpoint = HostnameEndpoint(reactor, where.host, where.port, timeout=max(timeout, 0.001))
    quiet = Factory.forProtocol(TwistedProtocol)
    quiet.noisy = False  # a probe, not worth two log lines at every start
    probing: Deferred[IProtocol] = endpoint.connect(quiet)
    probing.addTimeout(timeout, reactor)
    try:
        probe = await probing
    except Exception as error:
        raise ClusterUnavailableError(f"cannot reach Redis at {where}: {_reason(error, timeout)}") from None
    transport = getattr(probe, "transport", None)
    if transport is not None:
        transport.loseConnection()

    # Imported here, not at the top: importing txredisapi installs the
    # global reactor, and the settings import this module to check --redis.
    import txredisapi

    factory = txredisapi.RedisFactory(
        f"{where.host}:{where.port}",
        where.db,
        1,
        replyTimeout=timeout,
        # Names such as "0042" must stay text: the records decode every value.
        convertNumbers=False,
    )
    factory.protocol = command_protocol()
    factory.reconnect = True
    factory.startConnecting(HostnameEndpoint(reactor, where.host, where.port, timeout=max(timeout, 0.001)))
    ready: Deferred[Any] = factory.deferred
    ready.addTimeout(max(timeout - (reactor.seconds() - started), 0.001), reactor)
    try:
        connection: RedisConnection = await ready
    except Exception as error:
        await factory.disconnect()
        raise ClusterUnavailableError(f"cannot use Redis at {where}: {_reason(error, timeout)}") from None
    return connection


@cache
def command_protocol() -> type[Any]:
    """
    txredisapi's protocol for commands, writing them faster: every message
    a node relays in a cluster room goes to Redis as part of a script call
    whose arguments txredisapi encodes one by one, each value and each
    length through a chain of type tests and bytearray extends; here, one
    formatting per argument and one join, the same bytes (a test compares
    them with txredisapi's own). Made on first use: importing txredisapi
    installs the global reactor.
    """
    import txredisapi

    class CommandProtocol(txredisapi.RedisProtocol):
        def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
            encode = self._encode_value
            parts = [b"*%d\r\n" % len(args)]
            for arg in args:
                value = arg if type(arg) is bytes else encode(arg)
                parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
            return b"".join(parts)

    return CommandProtocol
