"""
Redis stopped during a conversation, with real nodes and real clients:
creates and joins are refused at once with one clear sentence (SERVER_FULL,
cluster_unavailable), members on the same node go on chatting, nothing is
acknowledged to a delivery member that was not stored; and once Redis is
back (same port, same data), the nodes carry on by themselves: cross-node
relaying resumes, what was said meanwhile is stored (then acknowledged) and
relayed to the other nodes in order, and the departures of the outage reach
the directory and the other nodes. Native members are told the server is
degraded while Redis is away, and that it recovered; legacy members are
told nothing (their wire does not change).
"""

from __future__ import annotations

from chatd.client.events import MemberLeft, MessageStateChanged, ServerDegraded, ServerRecovered
from chatd.protocol.errors import Status
from chatd.protocol.payloads import Dialect
from tests.cluster_nodes import ClusterCase, refusal
from tests.waiting import sleep, until


class RedisOutageTests(ClusterCase):
    timeout = 90

    async def test_redis_stopped_and_back_during_a_conversation(self) -> None:
        a, b = await self.nodes("a", "b")
        ann, ann_heard = await self.native(a, "ann", create=True)
        dee, dee_heard = await self.native(a, "dee", delivery=True)
        mo = await self.legacy(a, Dialect.MODEL, "mo")
        bob, bob_heard = await self.native(b, "bob")
        cat, _ = await self.native(b, "cat")
        ann.send("before")
        await bob_heard.message("ann", "before")
        await dee_heard.message("ann", "before")
        await mo.collect(3, "mo hears of bob's and cat's joins and ann's first words")
        self.assertIn("ann: before", mo.texts)

        self.redis.stop()
        await until(lambda: not a.cluster.connected and not b.cluster.connected, "both nodes see Redis gone")
        # Creates and joins are refused at once, with the reason.
        created = await self.raw_create(a, "cy", "another")
        status, message = refusal(created)
        self.assertEqual(status, Status.SERVER_FULL)
        self.assertIn("Redis", message)
        joined = await self.raw_join(b, "dan", "lobby")
        self.assertEqual(refusal(joined)[0], Status.SERVER_FULL)
        # The members on one node go on: ann's words reach mo and its native neighbours at once.
        mo.texts.clear()
        ann.send("during")
        await mo.collect(1, "mo hears ann while Redis is away")
        self.assertEqual(mo.texts, ["ann: during"])
        # A delivery member's message is relayed here but never acknowledged while it cannot be stored.
        sent_while_away = dee.send("kept back")
        await mo.collect(2, "mo hears dee while Redis is away")
        await sleep(0.5)
        acknowledged = [e.message_id for e in dee_heard.of(MessageStateChanged) if e.state == "sent"]
        self.assertNotIn(sent_while_away, acknowledged)
        # A member leaves while Redis is away: the cluster learns it once Redis is back.
        await cat.leave()

        self.redis.restart()
        await until(lambda: a.cluster.connected and b.cluster.connected, "both nodes have Redis again", 15)
        # Cross-node relaying resumes by itself.
        ann.send("after")
        await bob_heard.message("ann", "after", timeout=10)
        bob.send("from b again")
        await ann_heard.message("bob", "from b again", timeout=10)
        # dee's message is sent again by its client, stored, and acknowledged now.
        await until(
            lambda: sent_while_away in [e.message_id for e in dee_heard.of(MessageStateChanged) if e.state == "sent"],
            "dee's kept-back message acknowledged once Redis is back",
            20,
        )
        await bob_heard.message("dee", "kept back", timeout=10)
        await sleep(0.5)
        self.assertEqual(bob_heard.messages_from("dee"), ["kept back"])
        self.assertEqual(ann_heard.messages_from("dee"), ["kept back"])
        await ann_heard.next(MemberLeft, lambda event: event.user == "cat", timeout=10)
        self.assertEqual(
            sorted(m.name for m in await a.cluster.directory.members("lobby")), ["ann", "bob", "dee", "mo"]
        )
        self.assertEqual(set(await ann.refresh_members()), {"ann", "bob", "dee", "mo"})
        # What ann said while Redis was away was held, then stored and relayed: nothing lost, in order.
        self.assertEqual(bob_heard.messages_from("ann"), ["before", "during", "after"])
        # Creates and joins work again.
        await self.native(b, "dan", "another", create=True)

    async def test_native_members_are_told_the_server_is_degraded_and_recovered(self) -> None:
        a, b = await self.nodes("a", "b")
        ann, ann_heard = await self.native(a, "ann", create=True)
        _, dee_heard = await self.native(a, "dee", delivery=True)
        mo = await self.legacy(a, Dialect.MODEL, "mo")
        _, bob_heard = await self.native(b, "bob")
        await mo.collect(1, "mo hears of bob's join")
        mo.texts.clear()

        self.redis.stop()
        for heard in (ann_heard, dee_heard, bob_heard):
            degraded = await heard.next(ServerDegraded, timeout=10)
            self.assertEqual(degraded.room, "lobby")
            degraded_text = "* the server is degraded: room lobby reaches only this server's members until it recovers"
            self.assertEqual(degraded.text, degraded_text)
        self.redis.restart()
        for heard in (ann_heard, dee_heard, bob_heard):
            recovered = await heard.next(ServerRecovered, timeout=15)
            self.assertEqual(recovered.text, "* the server has recovered: room lobby reaches every member again")
        # Told once each way.
        self.assertEqual(len(ann_heard.of(ServerDegraded)), 1)
        self.assertEqual(len(ann_heard.of(ServerRecovered)), 1)
        # The legacy wire does not change: mo is told nothing of it.
        ann.send("after")
        await mo.collect(1, "mo hears ann after the outage")
        self.assertEqual(mo.texts, ["ann: after"])
