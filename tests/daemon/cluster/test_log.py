"""
Tests for chatd.daemon.cluster.log against a real redis-server
(tests.redis_server): the room log numbers from 1 without gap or duplicate
when two nodes (two connections) post at once, publishes in that order,
keeps a bounded history whose reads follow serve_repair's rules, refuses a
stale incarnation; and ClusterHistory, the node's cache of it.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from chatd.daemon.cluster.bus_stats import BusStats
from chatd.daemon.cluster.envelope import Posted, decode, room_channel
from chatd.daemon.cluster.log import (
    ClusterHistory,
    ClusterNumberingError,
    LogState,
    RedisUnavailableError,
    RoomLog,
    StaleEpochError,
)
from chatd.daemon.history import Held, HistoryEntry, IHistory, RoomHistory, history_from, serve_repair
from chatd.protocol.delivery import SeqRange
from tests.redis_server import RedisServer
from tests.waiting import CLOCK, bounded, until

EPOCH = "0123456789abcdef"
EPOCH_2 = "fedcba9876543210"


async def connect(test: TestCase, server: RedisServer, **options: Any) -> Any:
    """A command connection to C{server}, closed by C{test}'s cleanup."""
    connection = await bounded(
        txredisapi.Connection("127.0.0.1", server.port, reconnect=False, **options), "a Redis connection"
    )
    test.addCleanup(connection.disconnect)
    return connection


class Subscriber(txredisapi.SubscriberProtocol):
    """A bare subscriber (not the bus) that records what a channel carries, to check the log's publishes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[bytes] = []

    def messageReceived(self, pattern: Any, channel: Any, message: bytes) -> None:  # noqa: N802
        self.received.append(message)


async def subscriber(test: TestCase, server: RedisServer, channel: bytes) -> Subscriber:
    factory = txredisapi.SubscriberFactory()
    factory.protocol = Subscriber
    factory.charset = None
    factory.convertNumbers = False
    factory.reconnect = False
    factory.startConnecting(txredisapi._makeEndpoint("127.0.0.1", server.port))
    handler = await bounded(factory.deferred, "a subscriber connection")
    test.addCleanup(handler.disconnect)
    protocol: Subscriber = factory.pool[0]
    await bounded(protocol.subscribe([channel]), "SUBSCRIBE")
    return protocol


class RoomLogTests(TestCase):
    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return ensureDeferred(self.start())

    async def start(self) -> None:
        self.server = RedisServer.start_for(self, persistent=False)
        self.stats = BusStats()
        # Two nodes: different connections, and the two ways a connection may decode replies.
        self.node_a = RoomLog(await connect(self, self.server), clock=CLOCK, stats=self.stats, max_messages=20)
        raw = await connect(self, self.server, charset=None, convertNumbers=False)
        self.node_b = RoomLog(raw, clock=CLOCK, max_messages=20)

    def post(self, log: RoomLog, text: str, room: str = "lobby", epoch: str = EPOCH) -> Deferred[int]:
        return log.post(room, epoch, b"ann", text.encode(), 1_000 + len(text), "node-a")

    async def test_numbers_from_1_and_reads_back_every_field(self) -> None:
        self.assertTrue(await bounded(self.node_a.begin("lobby", EPOCH), "begin"))
        self.assertFalse(await bounded(self.node_b.begin("lobby", EPOCH), "begin again"))
        self.assertEqual(await bounded(self.node_a.latest("lobby"), "latest"), LogState(EPOCH, 0, 1))
        first = await bounded(self.node_a.post("lobby", EPOCH, b"ann", b"hi", 5, "node-a"), "post")
        second = await bounded(
            self.node_b.post("lobby", EPOCH, b"bob", "h\xe9".encode(), 6, "node-b", client="c1", message_id=9), "post"
        )
        self.assertEqual((first, second), (1, 2))
        held = await bounded(self.node_a.range("lobby", EPOCH, 1, 5), "range")
        self.assertEqual(held, Held([HistoryEntry(1, 5, b"ann", b"hi"), HistoryEntry(2, 6, b"bob", "hé".encode())], 1))
        catchup = await bounded(self.node_b.posted_after("lobby", EPOCH, 1), "posted_after")
        assert catchup is not None
        self.assertEqual(catchup.state, LogState(EPOCH, 2, 1))
        self.assertEqual(catchup.posted, [Posted("lobby", EPOCH, 2, 6, b"bob", "hé".encode(), "node-b", "c1", 9)])
        self.assertEqual(self.stats.publishes, 1)
        self.assertGreaterEqual(self.stats.round_trips, 4)
        self.assertEqual(self.stats.round_trip_latency.count, self.stats.round_trips)

    async def test_two_nodes_posting_at_once_get_1_to_n_and_publish_in_that_order(self) -> None:
        listener = await subscriber(self, self.server, room_channel("chatd", "lobby"))
        await bounded(self.node_a.begin("lobby", EPOCH), "begin")
        # Every post issued before any answer: the two connections' scripts interleave in Redis.
        posts = []
        for index in range(200):
            posts.append(self.post(self.node_a, f"a{index}"))
            posts.append(self.post(self.node_b, f"b{index}"))
        seqs: list[int] = await bounded(gatherResults(posts), "400 posts")
        self.assertEqual(sorted(seqs), list(range(1, 401)))
        # Each node's own posts are numbered in the order it sent them.
        self.assertEqual(seqs[0::2], sorted(seqs[0::2]))
        self.assertEqual(seqs[1::2], sorted(seqs[1::2]))
        await until(lambda: len(listener.received) == 400, f"the 400 publishes, not {len(listener.received)}")
        published = [decode(data) for data in listener.received]
        self.assertEqual([message.seq for message in published if isinstance(message, Posted)], list(range(1, 401)))
        by_text = {message.text: message.seq for message in published if isinstance(message, Posted)}
        self.assertEqual(by_text, {f"{'ab'[index % 2]}{index // 2}".encode(): seq for index, seq in enumerate(seqs)})

    async def test_the_history_is_bounded_and_repairs_as_in_memory(self) -> None:
        await bounded(self.node_a.begin("lobby", EPOCH), "begin")
        memory = RoomHistory(max_messages=20, max_bytes=1 << 20, epoch=EPOCH)
        for index in range(1, 51):
            text = f"m{index}"
            await bounded(self.post(self.node_a, text), "post")
            memory.append(b"ann", text.encode(), 1_000 + len(text))
        self.assertEqual(await bounded(self.node_b.latest("lobby"), "latest"), LogState(EPOCH, 50, 31))
        held = await bounded(self.node_b.range("lobby", EPOCH, 1, 100), "range")
        self.assertEqual(held, memory.range(1, 100))
        self.assertEqual([entry.seq for entry in held.entries], list(range(31, 51)))
        self.assertEqual(await bounded(self.node_b.range("lobby", EPOCH, 40, 39), "empty range"), Held([], 31))
        cache = await bounded(ClusterHistory.load(self.node_b, "lobby", EPOCH, 20, 1 << 20), "the cache")
        for first, last in ((1, 10), (1, 40), (25, 35), (31, 31), (45, 60), (51, 80), (1, 200)):
            self.assertEqual(serve_repair(cache, first, last), serve_repair(memory, first, last), (first, last))
        self.assertEqual(history_from(cache, 5), history_from(memory, 5))
        tail = await bounded(self.node_b.tail("lobby", 3), "tail")
        assert tail is not None
        self.assertEqual([entry.seq for entry in tail.held.entries], [48, 49, 50])

    async def test_a_stale_incarnation_is_refused(self) -> None:
        await bounded(self.node_a.begin("lobby", EPOCH), "begin")
        await bounded(self.post(self.node_a, "old"), "post")
        # The room closed and was made again: a new incarnation, numbering from 1 again.
        self.assertTrue(await bounded(self.node_b.begin("lobby", EPOCH_2), "begin anew"))
        self.assertEqual(await bounded(self.post(self.node_b, "new", epoch=EPOCH_2), "post"), 1)
        with self.assertRaises(StaleEpochError) as caught:
            await bounded(self.post(self.node_a, "late"), "a stale post")
        self.assertIn(EPOCH_2, str(caught.exception))
        self.assertEqual(caught.exception.current, EPOCH_2)
        with self.assertRaises(StaleEpochError):
            await bounded(self.node_a.range("lobby", EPOCH, 1, 5), "a stale read")
        self.assertEqual(self.stats.stale_epochs, 2)
        # The resync of a node that missed the change is given the new incarnation's messages.
        catchup = await bounded(self.node_a.posted_after("lobby", EPOCH, 1), "posted_after a change")
        assert catchup is not None
        self.assertEqual(catchup.state.epoch, EPOCH_2)
        self.assertEqual([message.text for message in catchup.posted], [b"new"])

    async def test_delete_removes_only_its_incarnation(self) -> None:
        await bounded(self.node_a.begin("lobby", EPOCH_2), "begin")
        await bounded(self.post(self.node_a, "kept", epoch=EPOCH_2), "post")
        self.assertFalse(await bounded(self.node_b.delete("lobby", EPOCH), "delete an old incarnation"))
        self.assertEqual(await bounded(self.node_b.latest("lobby"), "latest"), LogState(EPOCH_2, 1, 1))
        self.assertTrue(await bounded(self.node_b.delete("lobby", EPOCH_2), "delete"))
        state = await bounded(self.node_b.latest("lobby"), "latest")
        tail = await bounded(self.node_b.tail("lobby", 5), "tail")
        catchup = await bounded(self.node_b.posted_after("lobby", EPOCH_2, 0), "posted_after")
        self.assertEqual((state, tail, catchup), (None, None, None))
        with self.assertRaises(StaleEpochError) as caught:
            await bounded(self.post(self.node_a, "after the close", epoch=EPOCH_2), "a post after the close")
        self.assertIsNone(caught.exception.current)
        self.assertIn("closed", str(caught.exception))

    async def test_rooms_are_apart(self) -> None:
        await bounded(gatherResults([self.node_a.begin("one", EPOCH), self.node_a.begin("two", EPOCH)]), "begin")
        await bounded(self.post(self.node_a, "x", room="one"), "post")
        self.assertEqual(await bounded(self.post(self.node_a, "y", room="two"), "post"), 1)

    async def test_idle_expiry_is_set_on_the_keys(self) -> None:
        connection = await connect(self, self.server, charset=None, convertNumbers=False)
        log = RoomLog(connection, clock=CLOCK, idle_expiry=60)
        await bounded(log.begin("lobby", EPOCH), "begin")
        await bounded(log.post("lobby", EPOCH, b"a", b"b", 1, "n"), "post")
        for key in log.keys("lobby"):
            self.assertGreater(await bounded(connection.execute_command("PTTL", key), "PTTL"), 50_000)

    async def test_redis_gone_is_redis_unavailable(self) -> None:
        connection = await connect(self, self.server)
        log = RoomLog(connection, clock=CLOCK, command_timeout=1.0)
        self.server.stop()
        await until(lambda: not connection._factory.pool, "the connection's loss")
        with self.assertRaises(RedisUnavailableError):
            await bounded(log.latest("lobby"), "a read with Redis gone")
        self.assertEqual(log.stats.round_trip_errors, 1)


class ClusterHistoryTests(SynchronousTestCase):
    def message(self, seq: int, epoch: str = EPOCH) -> Posted:
        return Posted("lobby", epoch, seq, seq * 10, b"ann", f"m{seq}".encode(), "node-a")

    def test_it_is_an_ihistory_that_does_not_number(self) -> None:
        cache = ClusterHistory(EPOCH)
        verifyObject(IHistory, cache)
        with self.assertRaises(ClusterNumberingError):
            cache.append(b"ann", b"x", 1)

    def test_fed_in_order_it_holds_what_the_memory_ring_holds(self) -> None:
        cache = ClusterHistory(EPOCH, max_messages=5, max_bytes=1000)
        memory = RoomHistory(5, 1000, EPOCH)
        for seq in range(1, 13):
            self.assertTrue(cache.receive(self.message(seq)))
            memory.append(b"ann", f"m{seq}".encode(), seq * 10)
        self.assertEqual((cache.latest, cache.oldest, cache.message_count), (12, 8, 5))
        self.assertEqual(cache.byte_count, memory.byte_count)
        self.assertEqual(cache.range(1, 20), memory.range(1, 20))

    def test_duplicates_and_other_incarnations_are_ignored(self) -> None:
        cache = ClusterHistory(EPOCH)
        cache.receive(self.message(1))
        self.assertFalse(cache.receive(self.message(1)))
        self.assertFalse(cache.receive(self.message(2, EPOCH_2)))
        self.assertEqual(cache.latest, 1)

    def test_a_gap_starts_the_ring_again(self) -> None:
        cache = ClusterHistory(EPOCH)
        cache.receive(self.message(1))
        cache.receive(self.message(5))
        self.assertEqual((cache.oldest, cache.latest, cache.gaps), (5, 5, 1))
        self.assertEqual(serve_repair(cache, 1, 5).gone, SeqRange(1, 4))
