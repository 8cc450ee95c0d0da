"""
redis:// URLs, and connecting: a real redis-server, a port where nothing
listens, a server that never answers; the command connection writes every
command as txredisapi would, byte for byte.
"""

from __future__ import annotations

import socket
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from chatd.daemon.cluster.redis_url import RedisURL, command_protocol, connect, parse_redis_url
from chatd.protocol.errors import ClusterUnavailableError
from tests.redis_server import RedisServer
from tests.waiting import CLOCK, bounded


class ParseTests(SynchronousTestCase):
    def test_valid(self) -> None:
        cases = {
            "redis://127.0.0.1:6390/0": RedisURL("127.0.0.1", 6390, 0),
            "redis://localhost": RedisURL("localhost", 6379, 0),
            "redis://localhost/": RedisURL("localhost", 6379, 0),
            "redis://redis.example:7000/15": RedisURL("redis.example", 7000, 15),
            "redis://[::1]:6379/2": RedisURL("::1", 6379, 2),
        }
        for text, expected in cases.items():
            self.assertEqual(parse_redis_url(text), expected, text)

    def test_str(self) -> None:
        self.assertEqual(str(RedisURL("127.0.0.1", 6390, 0)), "redis://127.0.0.1:6390/0")
        self.assertEqual(str(RedisURL("::1")), "redis://[::1]:6379/0")
        for url in ("redis://127.0.0.1:6390/3", "redis://[::1]:6379/0"):
            self.assertEqual(str(parse_redis_url(url)), url)

    def test_invalid(self) -> None:
        cases = {
            "http://localhost:6379/0": "must start with redis://",
            "localhost:6379": "must start with redis://",
            "redis://": "names no host",
            "redis://:6379/0": "names no host",
            "redis://localhost:port/0": "port is not a number",
            "redis://localhost:70000/0": "port is not a number",
            "redis://localhost:0/0": "port is not a number",
            "redis://localhost:6379/db1": "database after the / must be a number",
            "redis://localhost:6379/0/1": "database after the / must be a number",
            "redis://user:secret@localhost/0": "password in the Redis URL is not supported",
            "redis://localhost/0?timeout=1": "query or fragment",
        }
        for text, expected in cases.items():
            with self.assertRaises(ValueError, msg=text) as raised:
                parse_redis_url(text)
            message = str(raised.exception)
            self.assertIn(expected, message, text)
            self.assertEqual(message.count("\n"), 0)
            self.assertNotIn("secret", message)  # a password is never echoed into a log line


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


arguments = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=50),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(max_size=20).map(bytearray),
)


class CommandTests(SynchronousTestCase):
    @given(st.lists(arguments, min_size=1, max_size=12))
    def test_every_command_is_written_as_txredisapi_writes_it(self, args: list[Any]) -> None:
        import txredisapi

        ours = command_protocol()(charset="utf-8", convertNumbers=False)
        theirs = txredisapi.RedisProtocol(charset="utf-8", convertNumbers=False)
        self.assertEqual(ours._build_command(*args), theirs._build_command(*args))


class ConnectTests(TestCase):
    async def test_connects(self) -> None:
        server = RedisServer.start_for(self, persistent=False)
        redis = await bounded(ensureDeferred(connect(server.url, CLOCK, 5.0)), "connected")
        self.addCleanup(redis.disconnect)
        self.assertIsInstance(cast(Any, redis)._factory.pool[0], command_protocol())
        self.assertEqual(await bounded(redis.execute_command("PING"), "PONG"), "PONG")
        # Numbers stay text: the records decode every value themselves.
        await redis.execute_command("SET", "k", "0042")
        self.assertEqual(await redis.execute_command("GET", "k"), "0042")

    async def test_selects_the_database(self) -> None:
        server = RedisServer.start_for(self, persistent=False)
        redis = await bounded(ensureDeferred(connect(f"{server.url[:-2]}/3", CLOCK, 5.0)), "connected")
        self.addCleanup(redis.disconnect)
        await redis.execute_command("SET", "in-three", "1")
        other = await bounded(ensureDeferred(connect(server.url, CLOCK, 5.0)), "connected")
        self.addCleanup(other.disconnect)
        self.assertIsNone(await other.execute_command("GET", "in-three"))

    async def test_refused(self) -> None:
        """Nothing listening: one sentence naming the URL and the reason, well within the timeout."""
        port = _unused_port()
        started = CLOCK.seconds()
        with self.assertRaises(ClusterUnavailableError) as raised:
            await bounded(ensureDeferred(connect(f"redis://127.0.0.1:{port}/0", CLOCK, 2.0)), "refused", 4)
        self.assertEqual(str(raised.exception), f"cannot reach Redis at redis://127.0.0.1:{port}/0: connection refused")
        self.assertLess(CLOCK.seconds() - started, 2.0)

    async def test_no_answer(self) -> None:
        """A server that accepts but never answers (not Redis, or hung): refused after the timeout."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = CLOCK.seconds()
        with self.assertRaises(ClusterUnavailableError) as raised:
            await bounded(ensureDeferred(connect(f"redis://127.0.0.1:{port}/0", CLOCK, 0.5)), "gives up", 4)
        self.assertEqual(
            str(raised.exception), f"cannot use Redis at redis://127.0.0.1:{port}/0: no answer within 0.5 s"
        )
        self.assertLess(CLOCK.seconds() - started, 2.0)

    async def test_bad_database(self) -> None:
        """A database Redis does not have is refused in one sentence, not retried for ever."""
        server = RedisServer.start_for(self, persistent=False)
        failing: Deferred[Any] = ensureDeferred(connect(f"{server.url[:-2]}/99", CLOCK, 2.0))
        with self.assertRaises(ClusterUnavailableError) as raised:
            await bounded(failing, "refused", 4)
        message = str(raised.exception)
        self.assertTrue(message.startswith(f"cannot use Redis at {server.url[:-2]}/99: "), message)
        self.assertIn("dbid=99", message)
        self.assertNotIn("\n", message)
