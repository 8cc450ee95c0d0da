"""
Several chatd nodes serving one room through a real redis-server
(chatd.daemon.cluster.node and store): members on different nodes in every
dialect get every message once and in room order, the same sequence numbers
everywhere for delivery members; joins, leaves and the member list are
cluster-wide; the host's leave closes the room on every node; a node that
stops leaves its rooms and members in the cluster; each node's cache of the
room log, its own messages included, is the log's.
"""

from __future__ import annotations

from collections.abc import Callable

from chatd.client.events import MemberJoined, MemberLeft, MessageReceived, RoomClosed, ServerStopping
from chatd.protocol.payloads import MODEL_ROOM_CLOSED, Dialect
from tests.cluster_nodes import ClusterCase, TestNode
from tests.waiting import Recorder, bounded, sleep, until


def shown(heard: Recorder) -> list[tuple[str, str]]:
    """The messages a native member was shown (its history on entering aside), as (sender, text)."""
    return [(event.sender, event.text) for event in heard.of(MessageReceived) if not event.history]


def seqs(heard: Recorder) -> list[int | None]:
    return [event.seq for event in heard.of(MessageReceived) if not event.history]


def heard_all(heard: Recorder, count: int) -> Callable[[], bool]:
    return lambda: len(shown(heard)) == count


def holds_nothing(node: TestNode) -> Callable[[], bool]:
    return lambda: node.server.store.rooms() == [] and node.cluster.watched() == []


class NodesTests(ClusterCase):
    async def test_native_members_on_two_nodes_hear_each_other(self) -> None:
        a, b = await self.nodes("a", "b")
        ann, ann_heard = await self.native(a, "ann", create=True)
        bob, bob_heard = await self.native(b, "bob")
        self.assertEqual(set(bob.members), {"ann", "bob"})
        await ann_heard.next(MemberJoined, lambda event: event.user == "bob")
        ann.send("hello from a")
        await bob_heard.message("ann", "hello from a")
        bob.send("hello from b")
        await ann_heard.message("bob", "hello from b")
        self.assertEqual(shown(ann_heard), [("bob", "hello from b")])
        self.assertEqual(shown(bob_heard), [("ann", "hello from a")])

    async def test_every_dialect_everyone_gets_everything_once_in_room_order(self) -> None:
        a, b = await self.nodes("a", "b")
        ann, ann_heard = await self.native(a, "ann", create=True, delivery=True)
        dee, dee_heard = await self.native(b, "dee", delivery=True)
        nat, nat_heard = await self.native(b, "nat")
        # Node a learns of b's joins from the bus, after their answers: until it has, a member joining
        # on a would be told of them too (docs/cluster.md 5). mo is to hear of sid's join alone.
        await until(lambda: len(ann_heard.of(MemberJoined)) == 2, "a knows of dee and nat")
        mo = await self.legacy(a, Dialect.MODEL, "mo")
        sid = await self.legacy(b, Dialect.SEED, "sid")
        # The notices of the joins, before any message.
        await until(lambda: len(ann_heard.of(MemberJoined)) == 4, "ann hears of four joins")
        await until(lambda: len(dee_heard.of(MemberJoined)) == 3, "dee hears of three joins")
        await mo.collect(1, "mo hears of sid's join")
        self.assertIn("sid", mo.texts[0])
        mo.texts.clear()
        senders = {"ann": ann.send, "dee": dee.send, "nat": nat.send, "mo": mo.say, "sid": sid.say}
        rounds = 5
        for index in range(rounds):
            for name, send in senders.items():
                send(f"{name} {index}")
        total = rounds * len(senders)
        natives = {"ann": ann_heard, "dee": dee_heard, "nat": nat_heard}
        for name, heard in natives.items():
            await until(heard_all(heard, total - rounds), f"{name} hears all the others")
        await mo.collect(total - rounds, "mo hears all the others")
        await sid.collect(total - rounds, "sid hears all the others")
        expected = {name: [f"{name} {index}" for index in range(rounds)] for name in senders}
        for name, heard in natives.items():
            got = shown(heard)
            self.assertEqual(len(got), len(set(got)), f"{name} heard something twice")
            for sender in senders:
                if sender != name:
                    self.assertEqual(
                        [text for who, text in got if who == sender], expected[sender], f"{name} from {sender}"
                    )
        for legacy, name in ((mo, "mo"), (sid, "sid")):
            for sender in senders:
                if sender != name:
                    texts = [text.split(": ", 1)[1] for text in legacy.texts if text.startswith(f"{sender}: ")]
                    self.assertEqual(texts, expected[sender], f"{name} from {sender}")
        # The delivery members saw one room order, numbered by the log: the same seqs for the same messages.
        await until(lambda: len(shown(ann_heard)) == total - rounds, "ann")
        ann_seq = {text: seq for (_, text), seq in zip(shown(ann_heard), seqs(ann_heard), strict=True)}
        dee_seq = {text: seq for (_, text), seq in zip(shown(dee_heard), seqs(dee_heard), strict=True)}
        common = set(ann_seq) & set(dee_seq)
        self.assertEqual(len(common), total - 2 * rounds)
        for text in common:
            self.assertEqual(ann_seq[text], dee_seq[text], text)
        self.assertEqual(seqs(ann_heard), sorted(seqs(ann_heard)))
        self.assertEqual(seqs(dee_heard), sorted(seqs(dee_heard)))
        all_seqs = set(ann_seq.values()) | set(dee_seq.values())
        self.assertEqual(all_seqs, set(range(1, total + 1)))

    async def test_member_lists_and_notices_are_cluster_wide(self) -> None:
        a, b, c = await self.nodes("a", "b", "c")
        ann, ann_heard = await self.native(a, "ann", create=True)
        bob, bob_heard = await self.native(b, "bob")
        cat, _cat_heard = await self.native(c, "cat")
        self.assertEqual(set(cat.members), {"ann", "bob", "cat"})
        self.assertEqual(cat.room_host, "ann")
        await until(lambda: [e.user for e in ann_heard.of(MemberJoined)] == ["bob", "cat"], "ann hears bob and cat")
        await until(lambda: [e.user for e in bob_heard.of(MemberJoined)] == ["cat"], "bob hears cat")
        listed = await bob.refresh_members()
        self.assertEqual(set(listed), {"ann", "bob", "cat"})
        await cat.leave()
        await until(lambda: [e.user for e in ann_heard.of(MemberLeft)] == ["cat"], "ann hears cat leave")
        await until(lambda: [e.user for e in bob_heard.of(MemberLeft)] == ["cat"], "bob hears cat leave")
        self.assertEqual(set(await ann.refresh_members()), {"ann", "bob"})
        # c had nobody left in the room: it dropped its replica and stopped following the room.
        await until(lambda: c.cluster.watched() == [], "c stops following lobby")
        self.assertEqual(c.server.store.rooms(), [])
        self.assertEqual(sorted(m.name for m in await a.cluster.directory.members("lobby")), ["ann", "bob"])

    async def test_the_hosts_leave_closes_the_room_on_every_node(self) -> None:
        a, b, c = await self.nodes("a", "b", "c")
        ann, _ = await self.native(a, "ann", create=True)
        _bob, bob_heard = await self.native(b, "bob")
        _cat, cat_heard = await self.native(c, "cat", delivery=True)
        mo = await self.legacy(c, Dialect.MODEL, "mo")
        await ann.leave()
        closed_bob = await bob_heard.next(RoomClosed)
        closed_cat = await cat_heard.next(RoomClosed)
        self.assertEqual(closed_bob.reason, "the host left")
        self.assertEqual(closed_cat.room, "lobby")
        (told,) = await mo.collect(1, "mo is told the room closed")
        self.assertEqual(told, MODEL_ROOM_CLOSED)
        for node in (a, b, c):
            await until(holds_nothing(node), f"node {node.name} holds and follows no room")
        self.assertIsNone(await a.cluster.directory.room("lobby"))
        # The name is free again, cluster-wide.
        await self.native(b, "bob2", "lobby", create=True)

    async def test_a_stopping_node_leaves_its_rooms_and_members_in_the_cluster(self) -> None:
        a, b = await self.nodes("a", "b")
        ann, ann_heard = await self.native(a, "ann", "north", create=True)
        _, bob_heard = await self.native(b, "bob", "north")
        cy, _ = await self.native(b, "cy", "south", create=True)
        _, dee_heard = await self.native(a, "dee", "south")
        await until(lambda: a.cluster.following("south") and b.cluster.following("north"), "a and b follow")
        cy.send("bye")
        await dee_heard.message("cy", "bye")
        await b.stop()
        # b's members are told the server is stopping; nobody else is told anything:
        # b's rooms and members stay in Redis, for b's members to resume (docs/cluster.md).
        await bob_heard.next(ServerStopping)
        await sleep(0.5)
        self.assertEqual(dee_heard.of(RoomClosed), [])
        self.assertEqual(ann_heard.of(MemberLeft), [])
        record = await a.cluster.directory.room("south")
        self.assertEqual((record.host, record.host_node) if record is not None else None, ("cy", "b"))
        self.assertEqual([m.name for m in await a.cluster.directory.members("north")], ["ann", "bob"])
        self.assertEqual(set(await ann.refresh_members()), {"ann", "bob"})

    async def test_a_dead_nodes_members_and_rooms_reaped_are_told_everywhere(self) -> None:
        a, b = await self.nodes("a", "b")
        ann, ann_heard = await self.native(a, "ann", "north", create=True)
        await self.native(b, "bob", "north")
        await self.native(b, "cy", "south", create=True)
        _, dee_heard = await self.native(a, "dee", "south")
        await until(lambda: a.cluster.following("south"), "a follows south")
        # b dies as far as Redis can tell: it writes nothing more (its bus is gone, so its writes are held).
        assert b.cluster.bus is not None
        await bounded(b.cluster.bus.stopService(), "b's bus stops")
        report = await a.cluster.directory.evict_node("b")
        self.assertEqual([member.name for member in report.members if not member.was_host], ["bob"])
        self.assertEqual([room.name for room in report.rooms], ["south"])
        await a.cluster.announce_reaped(report)
        await ann_heard.next(MemberLeft, lambda event: event.user == "bob")
        closed = await dee_heard.next(RoomClosed)
        self.assertEqual((closed.room, closed.reason), ("south", "the host's server stopped"))
        self.assertEqual(await ann.refresh_members(), ("ann",))
        await until(lambda: [room.name for room in a.server.store.rooms()] == ["north"], "a holds north alone")

    async def test_nodes_wired_as_the_daemon_wires_them(self) -> None:
        # ClusterService's connection, directory and heartbeat; the node started on them.
        a = await self.service_node("a")
        b = await self.service_node("b")
        ann, ann_heard = await self.native(a, "ann", create=True, delivery=True)
        bob, bob_heard = await self.native(b, "bob", delivery=True)
        ann.send("over the service's connection")
        await bob_heard.message("ann", "over the service's connection")
        bob.send("and back")
        received = await ann_heard.message("bob", "and back")
        self.assertEqual(received.seq, 2)

    async def test_each_nodes_cache_of_the_log_holds_every_message_its_own_included(self) -> None:
        # A node takes its own messages back from what it sent (not decoded): its cache must be the log's.
        a, b = await self.nodes("a", "b")
        ann, _ = await self.native(a, "ann", create=True, delivery=True)
        _, bob_heard = await self.native(b, "bob")
        mo = await self.legacy(a, Dialect.MODEL, "mo")
        for index in range(20):
            ann.send(f"ann {index}")
            mo.say(f"mo {index}")
        await until(lambda: len(shown(bob_heard)) == 40, "bob hears all 40")
        [room_a], [room_b] = a.server.store.rooms(), b.server.store.rooms()
        await until(lambda: room_a.history.latest == room_b.history.latest == 40, "both caches at 40")
        held_a, held_b = room_a.history.range(1, 40), room_b.history.range(1, 40)
        self.assertEqual(held_a, held_b)
        self.assertEqual([entry.seq for entry in held_a.entries], list(range(1, 41)))
        texts = [entry.text.decode() for entry in held_a.entries]
        self.assertEqual([text for text in texts if text.startswith("ann")], [f"ann {i}" for i in range(20)])
        self.assertEqual([text for text in texts if text.startswith("mo")], [f"mo {i}" for i in range(20)])
        logged = await a.cluster.log.range("lobby", room_a.history.epoch, 1, 40)
        self.assertEqual(logged, held_a)
        # A member joining on a is shown them from there, as the log has them.
        _, cy_heard = await self.native(a, "cy", delivery=True)
        await until(lambda: len([e for e in cy_heard.of(MessageReceived) if e.history]) > 0, "cy's history")
        history = [(e.sender, e.text) for e in cy_heard.of(MessageReceived) if e.history]
        held = [(entry.name.decode(), entry.text.decode()) for entry in held_a.entries]
        self.assertEqual(history, held[-len(history) :])
