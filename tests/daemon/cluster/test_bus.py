"""
Tests for chatd.daemon.cluster.bus against a real redis-server: two nodes
(each its command connection, room log and bus) get every message of a
room in room order; unsubscribing stops the feed; envelopes that do not
decode and handlers that raise are counted, not raised; Redis stopped and
started again: the bus says it is down, then up, subscribes again by
itself, and what was posted while a node's bus was away is caught up from
the log, once each and in order; a node's own messages are offered to the
room's own handler undecoded when they come next in order.
"""

from __future__ import annotations

import signal
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import provider

from chatd.daemon.cluster.bus import MISSED_CLOSE, ClusterBus
from chatd.daemon.cluster.envelope import (
    Envelope,
    Notice,
    NoticeKind,
    Posted,
    RoomClosed,
    decode,
    posted_template,
    room_channel,
    with_seq,
)
from chatd.daemon.cluster.log import ClusterHistory, RedisUnavailableError, RoomLog
from chatd.daemon.history import Held, RoomHistory, serve_repair
from tests.redis_server import RedisServer, _free_port
from tests.waiting import CLOCK, bounded, sleep, until

EPOCH = "0123456789abcdef"
EPOCH_2 = "fedcba9876543210"
FAST: dict[str, Any] = {"min_delay": 0.05, "max_delay": 0.3, "ping_interval": 1.0}


class Node:
    """One chatd node's Redis side: a command connection, its room log, its bus; what each room was handed."""

    def __init__(self, name: str, connection: Any, bus_options: dict[str, Any], server: RedisServer) -> None:
        self.name = name
        self.connection = connection
        self.log = RoomLog(connection, clock=CLOCK, max_messages=100)
        endpoint = TCP4ClientEndpoint(CLOCK, "127.0.0.1", server.port)
        self.bus = ClusterBus(endpoint, clock=CLOCK, redis=connection, log=self.log, node=name, **bus_options)
        self.heard: dict[str, list[Envelope]] = {}
        self.states: list[bool] = []
        self.bus.add_listener(self.states.append)

    def handler(self, room: str) -> Any:
        heard = self.heard.setdefault(room, [])
        return heard.append

    def posted(self, room: str = "lobby") -> list[int]:
        return [envelope.seq for envelope in self.heard.get(room, []) if isinstance(envelope, Posted)]

    def texts(self, room: str = "lobby") -> list[bytes]:
        return [envelope.text for envelope in self.heard.get(room, []) if isinstance(envelope, Posted)]

    def post(self, text: str, room: str = "lobby", epoch: str = EPOCH) -> Deferred[int]:
        return self.log.post(room, epoch, self.name.encode(), text.encode(), int(CLOCK.seconds() * 1000), self.name)

    async def subscribe(self, room: str = "lobby", **options: Any) -> None:
        await bounded(self.bus.subscribe(room, self.handler(room), **options), f"{self.name} subscribes to {room}")


def RoomHistoryOf(held: Held) -> RoomHistory:  # noqa: N802 (reads as the class it makes)
    """A memory ring holding exactly C{held}, to compare repairs with."""
    history = RoomHistory(max_messages=max(1, len(held.entries)), epoch=EPOCH)
    history.latest = held.oldest - 1
    for entry in held.entries:
        history.append(entry.name, entry.text, entry.time_ms)
    return history


class BusTests(TestCase):
    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        self.server = RedisServer.start_for(self)
        return ensureDeferred(self.start())

    async def start(self) -> None:
        self.a = await self.node("a")
        self.b = await self.node("b")
        await bounded(self.a.log.begin("lobby", EPOCH), "the room's log")

    async def node(self, name: str, **bus_options: Any) -> Node:
        connection = await bounded(txredisapi.Connection("127.0.0.1", self.server.port), f"{name}'s connection")
        # txredisapi's own reconnection, quickened for the tests (1 s at first, by default).
        connection._factory.initialDelay = 0.05
        connection._factory.maxDelay = 0.3
        self.addCleanup(connection.disconnect)
        node = Node(name, connection, {**FAST, **bus_options}, self.server)
        node.bus.startService()
        self.addCleanup(node.bus.stopService)
        await bounded(node.bus.when_connected(), f"{name}'s bus connects")
        return node

    async def test_two_nodes_get_every_post_in_order(self) -> None:
        await self.a.subscribe()
        await self.b.subscribe()
        posts = []
        for index in range(150):
            posts.append(self.a.post(f"a{index}"))
            posts.append(self.b.post(f"b{index}"))
        await bounded(gatherResults(posts), "300 posts")
        expected = list(range(1, 301))
        await until(
            lambda: self.a.posted() == expected and self.b.posted() == expected,
            "300 messages at each node",
        )
        self.assertEqual(self.a.heard["lobby"], self.b.heard["lobby"])
        notice = Notice("lobby", EPOCH, NoticeKind.JOINED, "cy", "a", members=("ann", "cy"), host="ann")
        self.assertEqual(await bounded(self.a.bus.publish("lobby", notice), "a notice"), 2)
        await until(lambda: self.b.heard["lobby"][-1] == notice, "the notice at b")
        self.assertEqual(self.b.bus.stats.received, 301)
        self.assertEqual(self.b.bus.stats.relay_latency.count, 150)
        self.assertTrue(self.a.bus.connected)
        self.assertEqual(self.a.bus.subscribed(), ["lobby"])

    async def test_unsubscribe_stops_the_feed(self) -> None:
        await self.a.subscribe()
        await self.b.subscribe()
        await bounded(self.a.post("both"), "a post")
        await until(lambda: self.b.posted() == [1], "b hears the first")
        await bounded(self.b.bus.unsubscribe("lobby"), "b unsubscribes")
        self.assertEqual(self.b.bus.subscribed(), [])
        for index in range(5):
            await bounded(self.a.post(f"after {index}"), "a post")
        await until(lambda: self.a.posted() == [1, 2, 3, 4, 5, 6], "a hears them all")
        await sleep(0.1)
        self.assertEqual(self.b.posted(), [1])
        # Subscribed again: the feed starts from the subscription.
        await self.b.subscribe()
        await bounded(self.a.post("again"), "a post")
        await until(lambda: self.b.posted() == [1, 7], "b hears the one after it subscribed again")

    async def test_what_is_not_an_envelope_is_dropped_and_counted(self) -> None:
        await self.b.subscribe()
        await bounded(self.a.connection.publish(room_channel("chatd", "lobby"), b"\x07junk"), "junk")
        await bounded(self.a.post("fine"), "a post")
        await until(lambda: self.b.posted() == [1], "the message after the junk")
        self.assertEqual(self.b.bus.stats.decode_errors, 1)
        self.assertEqual(len(self.b.heard["lobby"]), 1)

    async def test_a_handler_that_raises_is_counted_and_the_feed_goes_on(self) -> None:
        heard: list[Envelope] = []

        def handler(envelope: Envelope) -> None:
            heard.append(envelope)
            if len(heard) == 1:
                raise ZeroDivisionError("the handler's bug")

        await bounded(self.b.bus.subscribe("lobby", handler), "subscribe")
        await bounded(gatherResults([self.a.post("one"), self.a.post("two")]), "two posts")
        await until(lambda: len(heard) == 2, "both handed over")
        self.assertEqual(self.b.bus.stats.handler_errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    async def test_subscribing_since_a_loaded_cache_hands_over_what_came_after(self) -> None:
        for index in range(10):
            await bounded(self.a.post(f"m{index}"), "a post")
        cache = RoomHistory(epoch=EPOCH)
        for index in range(4):
            cache.append(b"a", f"m{index}".encode(), 0)
        await self.b.subscribe(epoch=EPOCH, since=cache.latest)
        await until(lambda: self.b.posted() == list(range(5, 11)), "5..10 from the log")
        await bounded(self.a.post("live"), "a post")
        await until(lambda: self.b.posted() == list(range(5, 12)), "then 11, live")
        self.assertEqual(self.b.bus.stats.resynced, 6)

    async def test_a_node_away_catches_up_from_the_log(self) -> None:
        away = await self.node("c", min_delay=0.5, max_delay=0.5)
        await self.a.subscribe()
        await away.subscribe()
        await bounded(self.a.post("before"), "a post")
        await until(lambda: away.posted() == [1], "c hears the first")
        resynced = away.bus.stats.resynced  # (its subscription's catch-up may have read the first from the log)
        away.bus._protocol.transport.abortConnection()
        await until(lambda: away.states == [True, False], "c's bus says it is down")
        # Posted while c's bus is away (it waits 0.5 s before reconnecting).
        await bounded(gatherResults([self.a.post(f"missed {index}") for index in range(20)]), "20 posts")
        await until(lambda: away.states == [True, False, True], "c's bus says it is back")
        await bounded(self.a.post("after"), "a post")
        expected = list(range(1, 23))
        await until(lambda: away.posted() == expected, f"c has 1..22 once each, in order: {away.posted()}")
        self.assertEqual(away.heard["lobby"], self.a.heard["lobby"])
        # The 20 from the log, and the one after too if the log was read after it was posted.
        self.assertIn(away.bus.stats.resynced - resynced, (20, 21))
        self.assertEqual((away.bus.stats.disconnects, away.bus.stats.reconnects), (1, 1))

    async def test_a_cache_fed_by_the_bus_holds_what_the_log_holds(self) -> None:
        """The integration the log's module describes: load, subscribe since, feed; through an outage."""
        for index in range(30):
            await bounded(self.a.post(f"early {index}"), "a post")
        node = await self.node("c", min_delay=0.3, max_delay=0.3)
        cache = await bounded(ClusterHistory.load(node.log, "lobby", EPOCH, max_messages=100), "the cache")
        self.assertEqual(cache.latest, 30)
        # Posted between the load and the subscription: the subscription's catch-up brings them.
        posting = gatherResults([self.a.post(f"racing {index}") for index in range(20)])

        def feed(envelope: Envelope) -> None:
            if isinstance(envelope, Posted):
                cache.receive(envelope)

        await bounded(node.bus.subscribe("lobby", feed, epoch=EPOCH, since=cache.latest), "subscribe since")
        await bounded(posting, "20 posts")
        # (Had c not had 31..50 before going away, the 100 posts would push some out of the log: a gap.)
        await until(lambda: cache.latest == 50, "c's cache at 50")
        node.bus._protocol.transport.abortConnection()
        await bounded(gatherResults([self.a.post(f"away {index}") for index in range(100)]), "100 posts")
        await until(lambda: node.bus.connected and cache.latest == 150, f"the cache at 150: {cache!r}")
        held = await bounded(self.b.log.range("lobby", EPOCH, 1, 150), "the log")
        self.assertEqual(cache.range(1, 150), held)
        self.assertEqual((cache.oldest, cache.gaps), (51, 0))
        self.assertEqual(serve_repair(cache, 1, 200), serve_repair(RoomHistoryOf(held), 1, 200))

    async def test_a_room_closed_while_away_is_handed_over_closed(self) -> None:
        away = await self.node("c", min_delay=0.5, max_delay=0.5)
        await away.subscribe()
        await bounded(self.a.post("first"), "a post")
        await until(lambda: away.posted() == [1], "c hears the first")
        away.bus._protocol.transport.abortConnection()
        await until(lambda: away.states == [True, False], "c's bus says it is down")
        # Closed and made again while c is away.
        await bounded(self.a.log.delete("lobby", EPOCH), "the close")
        await bounded(self.a.log.begin("lobby", EPOCH_2), "the room made again")
        await bounded(self.a.post("new", epoch=EPOCH_2), "a post")
        await until(lambda: len(away.heard["lobby"]) == 3, f"c hears the close and the new one: {away.heard}")
        closed, new = away.heard["lobby"][1:]
        self.assertEqual(closed, RoomClosed("lobby", EPOCH, "", MISSED_CLOSE))
        assert isinstance(new, Posted)
        self.assertEqual((new.epoch, new.seq, new.text), (EPOCH_2, 1, b"new"))

    async def test_a_gap_in_the_live_feed_is_filled_from_the_log(self) -> None:
        await self.b.subscribe()
        for index in range(3):
            await bounded(self.a.post(f"m{index}"), "a post")
        await until(lambda: self.b.posted() == [1, 2, 3], "b hears 1..3")
        # (Its subscription's own catch-up may have read some of them from the log: counted from here.)
        resynced = self.b.bus.stats.resynced
        # 4 and 5 are numbered and kept but their publishes are lost (as a subscriber dropped by Redis would lose them).
        meta, entries = self.a.log.keys("lobby")
        for seq in (4, 5):
            self.assertEqual(
                await bounded(self.a.connection.execute_command("HINCRBY", meta, "seq", 1), "HINCRBY"), seq
            )
            template = posted_template(Posted("lobby", EPOCH, 0, 0, b"a", f"lost {seq}".encode(), "a"))
            await bounded(
                self.a.connection.execute_command("XADD", entries, f"{seq}-0", "e", with_seq(template, seq)), "XADD"
            )
        await bounded(self.a.post("6"), "a post")
        await until(lambda: self.b.posted() == [1, 2, 3, 4, 5, 6], f"b fills the gap in order: {self.b.posted()}")
        self.assertEqual(self.b.texts()[3:5], [b"lost 4", b"lost 5"])
        self.assertEqual(self.b.bus.stats.resynced - resynced, 2)

    async def test_a_redis_that_stops_answering_is_dropped_and_found_again(self) -> None:
        hung = await self.node("c", ping_interval=0.2, command_timeout=0.3)
        await hung.subscribe()
        process = self.server._process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            await until(lambda: hung.states == [True, False], "the PING unanswered drops the connection")
        finally:
            process.send_signal(signal.SIGCONT)
        await until(lambda: hung.states == [True, False, True], "the bus is back")
        await bounded(self.a.post("after"), "a post", 5.0)
        await until(lambda: hung.posted() == [1], "c hears it")

    async def test_redis_stopped_and_started_again(self) -> None:
        warnings: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            if event.get("log_namespace") == "chatd.daemon.cluster.bus" and event["log_level"] == LogLevel.warn:
                warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await self.a.subscribe()
        await self.b.subscribe()
        await bounded(self.a.post("before"), "a post")
        await until(lambda: self.b.posted() == [1], "b hears the first")
        self.server.stop()
        await until(lambda: self.a.states == self.b.states == [True, False], "both buses say they are down")
        self.assertFalse(self.a.bus.connected)
        with self.assertRaises(RedisUnavailableError):
            await bounded(self.a.bus.when_connected(timeout=0.2), "the bus waiting for Redis")
        # A post while Redis is away fails within the log's bound; it is not sent once Redis is back.
        impatient = RoomLog(self.a.connection, clock=CLOCK, command_timeout=0.2)
        with self.assertRaises(RedisUnavailableError):
            await bounded(impatient.post("lobby", EPOCH, b"a", b"lost", 0, "a"), "a post with Redis away")
        self.server.start()
        await until(lambda: self.a.states == self.b.states == [True, False, True], "both buses are back")
        self.assertEqual(self.a.bus.subscribed(), ["lobby"])
        # The log survived the restart (Redis's append-only file): numbering goes on.
        self.assertEqual(await bounded(self.b.post("after", epoch=EPOCH), "a post after the restart", 5.0), 2)
        await bounded(self.a.post("and another"), "a post")
        await until(lambda: self.a.posted() == [1, 2, 3] and self.b.posted() == [1, 2, 3], "both hear 1..3")
        self.assertEqual(len([event for event in warnings if "Redis lost" in event["log_format"]]), 2)
        self.assertEqual(self.b.bus.stats.reconnects, 1)

    async def test_unreachable_redis_is_refused_within_the_timeout(self) -> None:
        endpoint = TCP4ClientEndpoint(CLOCK, "127.0.0.1", _free_port())
        bus = ClusterBus(endpoint, clock=CLOCK, **FAST)
        bus.startService()
        self.addCleanup(bus.stopService)
        with self.assertRaises(RedisUnavailableError) as caught:
            await bounded(bus.when_connected(timeout=0.3), "the refusal", 2.0)
        self.assertIn("0.3 s", str(caught.exception))
        self.assertFalse(bus.connected)

    async def test_a_nodes_own_messages_are_offered_undecoded_when_next_in_order(self) -> None:
        offered: list[tuple[bytes, int, int]] = []
        take = [True]

        def own(data: bytes, first: int, count: int) -> bool:
            offered.append((data, first, count))
            return take[0]

        await self.a.subscribe(own=own)
        # b's first message: a's subscription has caught up (what comes while it does is decoded).
        await bounded(self.b.post("hello"), "b's post")
        await until(lambda: self.a.posted() == [1], "a hears b's first message")
        await bounded(self.a.post("mine"), "a's post")
        await bounded(self.b.post("theirs"), "b's post")
        await until(lambda: self.a.posted() == [1, 3], f"a hears b's message: {self.a.posted()}")
        # Its own was offered and taken: handed to nobody else, but counted and in the room's order.
        self.assertEqual([(first, count) for _, first, count in offered], [(2, 1)])
        mine = decode(offered[0][0])
        assert isinstance(mine, Posted)
        self.assertEqual((mine.seq, mine.name, mine.text, mine.origin), (2, b"a", b"mine", "a"))
        self.assertEqual(self.a.bus.stats.received, 3)
        # Declined: decoded and handed over as any other.
        take[0] = False
        await bounded(self.a.post("declined"), "a's post")
        await until(lambda: self.a.posted() == [1, 3, 4], "a's declined message handed over")
        self.assertEqual(self.a.texts(), [b"hello", b"theirs", b"declined"])
        # Not next in order (a gap: 5 is lost): not offered; the catch-up hands 5 and 6 over decoded.
        take[0] = True
        meta, entries = self.a.log.keys("lobby")
        await bounded(self.a.connection.execute_command("HINCRBY", meta, "seq", 1), "HINCRBY")
        template = posted_template(Posted("lobby", EPOCH, 0, 0, b"a", b"lost", "a"))
        await bounded(self.a.connection.execute_command("XADD", entries, "5-0", "e", with_seq(template, 5)), "XADD")
        await bounded(self.a.post("after the gap"), "a's post")
        await until(lambda: self.a.posted() == [1, 3, 4, 5, 6], f"a fills the gap: {self.a.posted()}")
        self.assertEqual([(first, count) for _, first, count in offered], [(2, 1), (4, 1)])

    async def test_an_own_handler_that_raises_is_counted_and_nothing_is_handed_over_twice(self) -> None:
        def own(data: bytes, first: int, count: int) -> bool:
            raise RuntimeError("boom")

        await self.a.subscribe(own=own)
        await bounded(self.b.post("hello"), "b's post")
        await until(lambda: self.a.posted() == [1], "a hears b's first message")
        await bounded(self.a.post("mine"), "a's post")
        await bounded(self.b.post("theirs"), "b's post")
        await until(lambda: self.a.posted() == [1, 3], "a hears b's message")
        self.assertEqual(self.a.bus.stats.handler_errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
