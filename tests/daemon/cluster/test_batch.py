"""
Tests for chatd.daemon.cluster.batch and RoomLog.post_batch: a node's
messages of one reactor turn go to the room log in one script call, bounded
in size, one call in flight at a time, each message numbered (or refused)
on its own; against a real redis-server, the call numbers, stores and
publishes several rooms' messages at once (a POSTED_BATCH for several of a
room), what was held while Redis was away is posted in order in one call,
and members on two nodes saying many messages at once see one order, each
SENT with its own number; and the bus's reader of pub/sub messages hands
every message over once, in order, however the bytes are cut; a node knows
the batches it sent when they come back (RoomQueue.echoed).
"""

from __future__ import annotations

from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from chatd.client.events import MessageReceived, MessageStateChanged
from chatd.daemon.cluster.batch import MAX_UNECHOED, PENDING, Outgoing, PostBatcher, RoomQueue
from chatd.daemon.cluster.envelope import Kind, Posted, TemplateFramer, decode, decode_all, encode_batch, with_seq
from chatd.daemon.cluster.log import ClusterHistory, RedisUnavailableError, RoomBatch, RoomLog, StaleEpochError
from chatd.daemon.cluster.store import SharedHistory
from chatd.daemon.history import UNNUMBERED
from tests.cluster_nodes import ClusterCase
from tests.daemon.cluster.test_log import connect, subscriber
from tests.redis_server import RedisServer
from tests.waiting import CLOCK, bounded, until

EPOCH = "0123456789abcdef"
EPOCH_2 = "fedcba9876543210"


class FakeLog:
    """A RoomLog's post_batch that answers when the test says (the batcher's logic, without Redis)."""

    max_messages = 512

    def __init__(self) -> None:
        self.calls: list[tuple[list[RoomBatch], Deferred[list[int | StaleEpochError]]]] = []

    def post_batch(self, batches: list[RoomBatch]) -> Deferred[list[int | StaleEpochError]]:
        reply: Deferred[list[int | StaleEpochError]] = Deferred()
        self.calls.append((list(batches), reply))
        return reply


class Reports:
    def __init__(self) -> None:
        self.seen: list[Failure | None] = []

    def __call__(self, failure: Failure | None) -> None:
        self.seen.append(failure)


class BatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.log = FakeLog()
        self.batcher = PostBatcher(cast(RoomLog, self.log), self.clock, max_batch=64)
        self.reports = {"lobby": Reports(), "den": Reports()}
        self.queues = {
            "lobby": RoomQueue("lobby", EPOCH, "a", self.reports["lobby"]),
            "den": RoomQueue("den", EPOCH_2, "a", self.reports["den"]),
        }

    def say(self, room: str, count: int, start: int = 0) -> list[Outgoing]:
        said = [
            Outgoing(b"ann", f"{room} {start + index}".encode(), 1000 + index, "c1", start + index + 1)
            for index in range(count)
        ]
        for message in said:
            self.batcher.add(self.queues[room], message)
        return said

    def texts(self, batch: RoomBatch) -> list[bytes]:
        """The texts of a batch's framed templates, in order (through the Python model of the script)."""
        data = batch.framed
        texts, at = [], 0
        while at < len(data):
            length = int.from_bytes(data[at : at + 4], "big")
            envelope = decode(data[at + 4 : at + 4 + length])
            assert isinstance(envelope, Posted)
            self.assertEqual((envelope.room, envelope.epoch, envelope.seq), (batch.room, batch.epoch, 0))
            texts.append(envelope.text)
            at += 4 + length
        self.assertEqual(len(texts), batch.messages)
        return texts

    def test_a_turns_messages_of_every_room_go_in_one_call(self) -> None:
        lobby = self.say("lobby", 3)
        den = self.say("den", 2)
        more = self.say("lobby", 1, start=3)
        self.assertEqual(self.log.calls, [])
        self.clock.advance(0)
        self.assertEqual(len(self.log.calls), 1)
        batches, reply = self.log.calls[0]
        self.assertEqual([(batch.room, batch.messages) for batch in batches], [("lobby", 4), ("den", 2)])
        self.assertEqual(self.texts(batches[0]), [b"lobby 0", b"lobby 1", b"lobby 2", b"lobby 3"])
        self.assertEqual(self.texts(batches[1]), [b"den 0", b"den 1"])
        waiting = [message.when_numbered() for message in lobby + more + den]
        for message in lobby + more + den:
            self.assertEqual(message.seq, PENDING)
        reply.callback([11, 5])
        numbers = [self.successResultOf(each) for each in waiting]
        self.assertEqual(numbers, [11, 12, 13, 14, 5, 6])
        self.assertEqual(self.reports["lobby"].seen, [None])
        self.assertEqual(self.batcher.calls, 1)
        self.assertEqual(self.batcher.largest, 6)
        # Known already: answered at once.
        self.assertEqual(self.successResultOf(lobby[0].when_numbered()), 11)

    def test_the_bound_and_one_call_in_flight(self) -> None:
        said = self.say("lobby", 150)
        self.clock.advance(0)
        self.assertEqual([batch.messages for batch in self.log.calls[0][0]], [64])
        # Not before the first is answered, however many turns go by.
        self.clock.advance(1)
        self.assertEqual(len(self.log.calls), 1)
        later = self.say("den", 1)
        self.clock.advance(0)
        self.assertEqual(len(self.log.calls), 1)
        self.log.calls[0][1].callback([1])
        self.assertEqual(len(self.log.calls), 2, "the next call goes as soon as the answer is in")
        self.assertEqual([batch.messages for batch in self.log.calls[1][0]], [64])
        self.log.calls[1][1].callback([65])
        self.assertEqual([(batch.room, batch.messages) for batch in self.log.calls[2][0]], [("lobby", 22), ("den", 1)])
        self.assertEqual(self.texts(self.log.calls[2][0][0])[0], b"lobby 128")
        self.log.calls[2][1].callback([129, 1])
        self.assertEqual([message.seq for message in said], list(range(1, 151)))
        self.assertEqual(later[0].seq, 1)
        self.assertFalse(self.batcher.busy)
        self.assertEqual(self.batcher.largest, 64)

    def test_a_failed_call_numbers_none_and_the_next_goes(self) -> None:
        first = self.say("lobby", 2)
        self.clock.advance(0)
        second = self.say("lobby", 1, start=2)
        self.log.calls[0][1].errback(RedisUnavailableError("Redis did not answer within 2 s"))
        self.assertEqual([message.seq for message in first], [None, None])
        self.assertEqual(self.successResultOf(first[0].when_numbered()), None)
        failure = self.reports["lobby"].seen[0]
        assert failure is not None
        self.assertTrue(failure.check(RedisUnavailableError))
        self.assertEqual(len(self.log.calls), 2)
        self.log.calls[1][1].callback([1])
        self.assertEqual(second[0].seq, 1)
        self.assertEqual(self.reports["lobby"].seen[1:], [None])

    def test_a_stale_room_fails_alone(self) -> None:
        lobby = self.say("lobby", 1)
        den = self.say("den", 2)
        self.clock.advance(0)
        self.log.calls[0][1].callback([StaleEpochError("lobby", EPOCH, None), 3])
        self.assertEqual(lobby[0].seq, None)
        self.assertEqual([message.seq for message in den], [3, 4])
        failure = self.reports["lobby"].seen[0]
        assert failure is not None
        self.assertTrue(failure.check(StaleEpochError))
        self.assertEqual(self.reports["den"].seen, [None])

    def test_a_call_that_raises_at_once_numbers_none(self) -> None:
        def refuse(batches: list[RoomBatch]) -> Deferred[list[int | StaleEpochError]]:
            raise RedisUnavailableError("not connected")

        self.log.post_batch = refuse  # type: ignore[method-assign]
        said = self.say("lobby", 2)
        self.clock.advance(0)
        self.assertEqual([message.seq for message in said], [None, None])
        self.assertFalse(self.batcher.busy)

    def back(self, batch: RoomBatch, first: int) -> bytes:
        """What the log's script publishes for C{batch}, numbered from C{first} (the Python model of it)."""
        data, at = batch.framed, 0
        templates: list[bytes] = []
        while at < len(data):
            length = int.from_bytes(data[at : at + 4], "big")
            templates.append(with_seq(data[at + 4 : at + 4 + length], first + len(templates)))
            at += 4 + length
        return templates[0] if len(templates) == 1 else encode_batch(templates)

    def test_the_batches_sent_are_known_when_they_come_back_in_order(self) -> None:
        queue = self.queues["lobby"]
        first = self.say("lobby", 3)
        self.clock.advance(0)
        second = self.say("lobby", 1, start=3)
        self.log.calls[0][1].callback([1])
        [one], [two] = self.log.calls[0][0], self.log.calls[1][0]
        self.assertIsNone(queue.echoed(self.back(two, 4), 1), "not the oldest batch sent")
        # Then nothing is waited for: what comes back is decoded.
        self.assertIsNone(queue.echoed(self.back(one, 1), 3))
        third = self.say("lobby", 2, start=4)
        self.log.calls[1][1].callback([4])
        [three] = self.log.calls[2][0]
        self.assertIsNone(queue.echoed(self.back(three, 5)[:-1], 2), "damaged")
        self.assertEqual(len(queue.unechoed), 0)
        fourth = self.say("lobby", 1, start=6)
        self.log.calls[2][1].callback([5])
        [four] = self.log.calls[3][0]
        self.assertEqual(queue.echoed(self.back(four, 7), 1), fourth)
        self.assertEqual((first[0].seq, second[0].seq, third[0].seq), (1, 4, 5))

    def test_a_batch_back_before_its_answer_is_known(self) -> None:
        said = self.say("den", 2)
        self.clock.advance(0)
        [batch] = self.log.calls[0][0]
        self.assertEqual(self.queues["den"].echoed(self.back(batch, 9), 2), said)
        self.assertEqual(said[0].seq, PENDING)

    def test_a_failed_or_stale_call_is_not_waited_for(self) -> None:
        self.say("lobby", 1)
        self.say("den", 1)
        self.clock.advance(0)
        self.log.calls[0][1].callback([StaleEpochError("lobby", EPOCH, None), 3])
        self.assertEqual(len(self.queues["lobby"].unechoed), 0)
        self.assertEqual(len(self.queues["den"].unechoed), 1)
        self.say("den", 1, start=1)
        self.clock.advance(0)
        self.log.calls[1][1].errback(RedisUnavailableError("Redis did not answer within 2 s"))
        self.assertEqual(len(self.queues["den"].unechoed), 0)

    def test_what_never_comes_back_is_let_go(self) -> None:
        queue = self.queues["lobby"]
        for index in range(MAX_UNECHOED + 5):
            self.say("lobby", 1, start=index)
            self.clock.advance(0)
            self.log.calls[-1][1].callback([index + 1])
        self.assertEqual(len(queue.unechoed), MAX_UNECHOED)
        [latest] = self.log.calls[-1][0]
        self.assertIsNone(queue.echoed(self.back(latest, MAX_UNECHOED + 5), 1))
        self.assertEqual(len(queue.unechoed), 0)

    def test_a_batch_is_at_least_one(self) -> None:
        with self.assertRaises(ValueError):
            PostBatcher(cast(RoomLog, self.log), self.clock, max_batch=0)


class PostBatchTests(TestCase):
    """RoomLog.post_batch against a real redis-server."""

    async def test_several_rooms_numbered_stored_and_published_in_one_call(self) -> None:
        server = RedisServer.start_for(self)
        connection = await connect(self, server, charset=None, convertNumbers=False)
        log = RoomLog(connection, clock=CLOCK, max_messages=4)
        await log.begin("lobby", EPOCH)
        await log.begin("den", EPOCH_2)
        await log.post("lobby", EPOCH, b"ann", b"first", 1, "a")
        lobby_feed = await subscriber(self, server, b"chatd:room:lobby")
        den_feed = await subscriber(self, server, b"chatd:room:den")
        lobby = TemplateFramer("lobby", EPOCH, "a")
        den = TemplateFramer("den", EPOCH_2, "b")
        texts = [f"m{index}".encode() for index in range(6)]
        batches = [
            RoomBatch("lobby", EPOCH, b"".join(lobby.frame(10, b"ann", text, "c1", 7) for text in texts), 6),
            RoomBatch("den", EPOCH_2, den.frame(20, b"bob", b"alone", "", 0), 1),
            RoomBatch("gone", EPOCH, lobby.frame(30, b"cy", b"nowhere", "", 0), 1),
        ]
        round_trips = log.stats.round_trips
        answers = await bounded(log.post_batch(batches), "the batch is posted")
        self.assertEqual(log.stats.round_trips, round_trips + 1)
        self.assertEqual(answers[:2], [2, 1])
        stale = answers[2]
        assert isinstance(stale, StaleEpochError)
        self.assertIsNone(stale.current)
        # Stored one by one (the ring keeps the last 4), read back as any message.
        held = await log.range("lobby", EPOCH, 1, 100)
        self.assertEqual(
            [(entry.seq, entry.text) for entry in held.entries], list(zip(range(4, 8), texts[2:], strict=True))
        )
        # Published: one POSTED_BATCH for the six, one POSTED for the one.
        await until(lambda: bool(lobby_feed.received and den_feed.received), "both channels carry the batch")
        self.assertEqual(len(lobby_feed.received), 1)
        self.assertEqual(lobby_feed.received[0][1], Kind.POSTED_BATCH.value)
        published = decode_all(lobby_feed.received[0])
        self.assertEqual(
            [(p.seq, p.text, p.client, p.message_id) for p in published if isinstance(p, Posted)],
            [(seq, text, "c1", 7) for seq, text in zip(range(2, 8), texts, strict=True)],
        )
        self.assertEqual(decode(den_feed.received[0]), Posted("den", EPOCH_2, 1, 20, b"bob", b"alone", "b"))


class HeldTests(TestCase):
    async def test_what_was_held_while_redis_was_away_is_posted_in_order_in_one_call(self) -> None:
        server = RedisServer.start_for(self)
        connection = await connect(self, server, charset=None, convertNumbers=False)
        log = RoomLog(connection, clock=CLOCK)
        await log.begin("lobby", EPOCH)
        batcher = PostBatcher(log, CLOCK)
        connected = [False]
        history = SharedHistory(ClusterHistory(EPOCH), log, "lobby", "a", lambda: connected[0], 3, batcher=batcher)
        waiting = []
        for index in range(4):
            history.tag_next("c1", index + 1)
            self.assertEqual(history.append(b"dee", f"held {index}".encode(), 1000), UNNUMBERED)
            waiting.append(history.when_numbered())
        # Past max_held (3): refused at once, never stored.
        self.assertIsNone(self.successResultOf(waiting[3]))
        self.assertEqual(batcher.calls, 0)
        for each in waiting[:3]:
            self.assertNoResult(each)
        connected[0] = True
        history.post_held()
        history.append(b"dee", b"after", 1001)
        after = history.when_numbered()
        numbers = [await bounded(each, "a held message is numbered") for each in [*waiting[:3], after]]
        self.assertEqual(numbers, [1, 2, 3, 4])
        self.assertEqual(batcher.calls, 1)
        held = await log.posted_after("lobby", EPOCH, 0)
        assert held is not None
        self.assertEqual(
            [(p.text, p.message_id) for p in held.posted],
            [(b"held 0", 1), (b"held 1", 2), (b"held 2", 3), (b"after", 0)],
        )


def sent(heard: Any) -> dict[int, int]:
    """A delivery client's acknowledged messages: message id -> the seq its SENT gave."""
    return {
        event.message_id: event.seq
        for event in heard.of(MessageStateChanged)
        if event.state == "sent" and event.seq is not None
    }


class NodesBatchTests(ClusterCase):
    async def test_many_messages_at_once_from_two_nodes_one_order_each_sent_its_own_seq(self) -> None:
        a, b = await self.nodes("a", "b")
        ann, ann_heard = await self.native(a, "ann", create=True, delivery=True)
        dee, dee_heard = await self.native(b, "dee", delivery=True)
        _nat, nat_heard = await self.native(b, "nat", delivery=True)
        count = 24
        ann_ids = [ann.send(f"ann {index}") for index in range(count)]
        dee_ids = [dee.send(f"dee {index}") for index in range(count)]
        await until(lambda: len(sent(ann_heard)) == count and len(sent(dee_heard)) == count, "every SENT", 20)
        ann_seqs, dee_seqs = sent(ann_heard), sent(dee_heard)
        self.assertEqual(sorted(ann_seqs), sorted(i for i in ann_ids if i is not None))
        every = list(ann_seqs.values()) + list(dee_seqs.values())
        self.assertEqual(sorted(every), list(range(1, 2 * count + 1)), "each SENT its own number, none twice")
        # Each sender's messages numbered in the order it said them.
        self.assertEqual([ann_seqs[i] for i in ann_ids if i is not None], sorted(ann_seqs.values()))
        self.assertEqual([dee_seqs[i] for i in dee_ids if i is not None], sorted(dee_seqs.values()))

        def shown(heard: Any) -> list[tuple[int | None, str]]:
            return [(e.seq, e.text) for e in heard.of(MessageReceived) if not e.history]

        await until(lambda: len(shown(nat_heard)) == 2 * count, "nat hears everyone")
        await until(lambda: len(shown(ann_heard)) == count, "ann hears dee")
        # One order: nat (on b) saw every message under the number its sender's SENT gave.
        by_text = {text: seq for seq, text in shown(nat_heard)}
        for index, message_id in enumerate(ann_ids):
            assert message_id is not None
            self.assertEqual(by_text[f"ann {index}"], ann_seqs[message_id])
        self.assertEqual([seq for seq, _ in shown(nat_heard)], list(range(1, 2 * count + 1)))
        self.assertEqual([seq for seq, _ in shown(ann_heard)], sorted(dee_seqs.values()))
        # And the nodes did batch: fewer calls than messages.
        batchers = [node.cluster.claims.batcher for node in (a, b)]
        self.assertLess(sum(each.calls for each in batchers), 2 * count)
        self.assertGreater(max(each.largest for each in batchers), 1)


class _RecordingBus:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, bytes]] = []

    def _received(self, channel: bytes, data: bytes) -> None:
        self.got.append((channel, data))


def _message(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(data), data)


class BusReaderTests(SynchronousTestCase):
    """The bus's own reading of pub/sub messages, however the bytes are cut, and around other replies."""

    @given(st.lists(st.binary(max_size=300), min_size=1, max_size=12), st.lists(st.integers(1, 4000), max_size=30))
    def test_every_message_once_in_order_however_cut(self, payloads: list[bytes], cuts: list[int]) -> None:
        from chatd.daemon.cluster.bus import _protocol_class

        protocol = _protocol_class()(charset=None, convertNumbers=False)
        bus = _RecordingBus()
        protocol.bus = bus
        stream = b"".join(
            (_message(b"chatd:room:lobby", payload) if index % 3 else b"*3\r\n$9\r\nsubscribe\r\n$3\r\nden\r\n:2\r\n")
            + _message(b"chatd:room:den", payload)
            for index, payload in enumerate(payloads)
        )
        at = 0
        for cut in sorted(set(cuts)):
            if at < cut < len(stream):
                protocol.dataReceived(stream[at:cut])
                at = cut
        protocol.dataReceived(stream[at:])
        expected = []
        for index, payload in enumerate(payloads):
            if index % 3:
                expected.append((b"chatd:room:lobby", payload))
            expected.append((b"chatd:room:den", payload))
        self.assertEqual(bus.got, expected)
