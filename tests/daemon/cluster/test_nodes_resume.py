"""
A member resuming on another node, with real nodes against a real
redis-server and chatd's own client given the list of servers: the node it
left is alive (the client's connection was cut on its side only, by a
loopback proxy, and the proxy refuses new connections, so the client moves
to the next server). The host keeps its name, its role, the room and every
message, each once; the node it left drops its copy quietly and closes its
old connection; nobody is told anything. The node dying under it (SIGKILL):
tests/test_cluster_e2e.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from chatd.client.chat_client import ChatClient
from chatd.client.events import (
    ConnectionLost,
    Reconnected,
    RoomClosed,
)
from chatd.client.servers import ServerAddress
from chatd.daemon.history import Duplicate
from chatd.daemon.rooms import Room
from chatd.protocol.datagrams import FrameType
from tests.cluster_nodes import HOST, ClusterCase, TestNode
from tests.test_resume_e2e import TcpProxy
from tests.waiting import Recorder, bounded, client_with_servers, sleep, until


class RefusingProxy(TcpProxy):
    """The test_resume_e2e proxy, which can also stop taking new connections (its daemon's legs stay open)."""

    async def refuse_new(self) -> None:
        listening = self._listening
        self._listening = None
        if listening is not None:
            stopped = listening.stopListening()
            if isinstance(stopped, Deferred):
                await stopped


def lobby(node: TestNode) -> Room:
    (room,) = [room for room in node.server.store.rooms() if room.name == "lobby"]
    return room


class ResumeAcrossNodesTests(ClusterCase):
    timeout = 60

    def client_of(self, servers: list[ServerAddress], name: str) -> tuple[ChatClient, Recorder]:
        return client_with_servers(self, servers, name)

    async def host_behind_proxy(self, a: TestNode, b: TestNode) -> tuple[RefusingProxy, ChatClient, Recorder]:
        """ann, who created lobby on node a through a proxy that can refuse her, with node b as her next server."""
        proxy = await RefusingProxy.start(self, a.tcp_port)  # type: ignore[arg-type]
        assert isinstance(proxy, RefusingProxy)
        on_b = ServerAddress(HOST, b.tcp_port, b.udp_port)
        ann, ann_heard = self.client_of([ServerAddress(HOST, proxy.port, a.udp_port), on_b], "ann")
        await bounded(ann.create("lobby", "ann"), "ann creates lobby on node a")
        await until(lambda: ann.udp_confirmed, "node a answers ann's keepalive")
        return proxy, ann, ann_heard

    async def test_the_host_resumes_on_another_node_while_the_first_lives(self) -> None:
        a, b = await self.nodes("a", "b")
        proxy, ann, ann_heard = await self.host_behind_proxy(a, b)
        bob, bob_heard = await self.native(b, "bob", delivery=True)
        _cy, cy_heard = await self.native(a, "cy", delivery=True)
        await until(lambda: ann.members == ("ann", "bob", "cy"), "ann hears of bob and cy")
        sent = [ann.send(f"a{number}") for number in range(3)]
        assert all(message_id is not None for message_id in sent)
        for number in range(3):
            bob.send(f"b{number}")
        await until(lambda: len(ann_heard.messages_from("bob")) == 3, "ann hears bob's first three")
        await until(lambda: len(bob_heard.messages_from("ann")) == 3, "bob hears ann's first three")
        await until(lambda: not ann._core._delivery.outbox.unacknowledged, "ann's three acknowledged")
        epoch = lobby(a).history.epoch
        # The log carries ann's client id and message ids, for the node she will resume on.
        catchup = await bounded(a.cluster.log.posted_after("lobby", epoch, 0), "the room's log")
        assert catchup is not None
        tagged = [(p.client, p.message_id) for p in catchup.posted if p.name == b"ann"]
        self.assertEqual(tagged, [(ann._core.client_id, message_id) for message_id in sent])

        heard_before = {heard.name: len(heard.events) for heard in (bob_heard, cy_heard)}
        await proxy.refuse_new()
        proxy.cut_clients()
        await ann_heard.next(ConnectionLost)
        for number in range(3, 6):
            bob.send(f"b{number}")
        ann.send("typed while away")
        back = await ann_heard.next(Reconnected, timeout=10)
        self.assertTrue(back.resumed, back)
        self.assertTrue(back.as_host, back)
        self.assertEqual(back.server, ServerAddress(HOST, b.tcp_port, b.udp_port).label)

        # Node b serves the room now, ann its host; the same incarnation.
        room_b = lobby(b)
        self.assertEqual(room_b.history.epoch, epoch)
        self.assertFalse(room_b.replica)
        self.assertIsNotNone(room_b.host)
        assert room_b.host is not None
        self.assertEqual(room_b.host.name, "ann")
        # What ann's client posted on node a is known to her window on node b.
        window = room_b.host.window
        assert window is not None
        for message_id in sent:
            assert message_id is not None
            self.assertIsInstance(window.check(message_id), Duplicate)
        record = await bounded(Deferred.fromCoroutine(b.cluster.directory.room("lobby")), "the room's record")
        assert record is not None
        self.assertEqual((record.host, record.host_node, record.epoch), ("ann", "b", epoch))
        member = await bounded(Deferred.fromCoroutine(b.cluster.directory.member("lobby", "ann")), "ann's record")
        assert member is not None
        self.assertEqual(member.node, "b")
        # Node a dropped its copy quietly: the old connection closed, ann a stand-in, its room a replica.
        await bounded(proxy.servers[0].closed, "node a closes ann's old connection")
        room_a = lobby(a)
        await until(lambda: "ann" in room_a.remote_members, "node a lists ann elsewhere")
        self.assertTrue(room_a.replica)
        self.assertEqual(room_a.host_name, "ann")
        self.assertEqual(set(room_a.members), {"cy"})

        await until(lambda: len(ann_heard.messages_from("bob")) == 6, "ann hears what bob said while she was away")
        await until(lambda: "typed while away" in bob_heard.messages_from("ann"), "bob hears what ann typed")
        ann.send("back")
        bob.send("welcome back")
        await bob_heard.message("ann", "back")
        await cy_heard.message("ann", "back")
        await ann_heard.message("bob", "welcome back")
        await until(lambda: not ann._core._delivery.outbox.unacknowledged, "everything ann said acknowledged")
        expected_from_ann = ["a0", "a1", "a2", "typed while away", "back"]
        self.assertEqual(bob_heard.messages_from("ann"), expected_from_ann)
        await until(lambda: cy_heard.messages_from("ann") == expected_from_ann, "cy hears ann's every message")
        self.assertEqual(ann_heard.messages_from("bob"), [f"b{number}" for number in range(6)] + ["welcome back"])
        for heard in (ann_heard, bob_heard, cy_heard):
            self.assertEqual(
                heard.seqs(), sorted(set(heard.seqs())), f"{heard.name} saw a message twice or out of order"
            )
        # For bob and cy nobody came or went.
        for heard in (bob_heard, cy_heard):
            self.assertEqual(heard.comings_and_goings(heard_before[heard.name]), [], heard.name)
        self.assertEqual(bob.members, ("ann", "bob", "cy"))

        # The host is on node b now: her leaving closes the room everywhere.
        await ann.leave()
        await cy_heard.next(RoomClosed)
        await bob_heard.next(RoomClosed)
        self.assertIsNone(await bounded(Deferred.fromCoroutine(b.cluster.directory.room("lobby")), "the room"))

    async def test_a_used_credential_is_refused_on_every_node(self) -> None:
        a, b = await self.nodes("a", "b")
        ann, _ = await self.native(a, "ann", create=True, delivery=True)
        credential = ann._core.resume_credential
        assert credential is not None
        first = await self.raw_join(b, "ann", "lobby", resume=credential)
        self.assertEqual(first.payload[:1], b"\x00", "the first resume, on node b, is taken")
        again = await self.raw_join(a, "ann", "lobby", resume=credential)
        self.assertEqual(again.payload[:1], b"\x03", "the same credential again, on node a, is refused")

    async def test_what_the_old_node_stored_but_never_acknowledged_is_not_relayed_twice(self) -> None:
        """
        Node a stores ann's messages in the room log (bob hears them) but
        her SENTs are lost with her connection: her client sends them again
        after resuming on node b, which knows them from the log and answers
        SENT with their numbers instead of relaying them a second time.
        """
        a, b = await self.nodes("a", "b")
        proxy, ann, ann_heard = await self.host_behind_proxy(a, b)
        _bob, bob_heard = await self.native(b, "bob", delivery=True)
        await until(lambda: ann.members == ("ann", "bob"), "ann hears of bob")
        delivery = a.server.relay.delivery
        send = delivery.send

        def no_sent(member: Any, frame_type: FrameType, body: bytes) -> None:
            if frame_type is not FrameType.SENT:
                send(member, frame_type, body)

        delivery.send = no_sent  # type: ignore[method-assign]
        for number in range(3):
            ann.send(f"lost ack {number}")
        await until(lambda: len(bob_heard.messages_from("ann")) == 3, "bob hears ann's three")
        self.assertEqual(ann._core._delivery.outbox.unacknowledged, 3)

        await proxy.refuse_new()
        proxy.cut_clients()
        back = await ann_heard.next(Reconnected, timeout=10)
        self.assertTrue(back.resumed, back)
        await until(lambda: not ann._core._delivery.outbox.unacknowledged, "ann's three acknowledged by node b")
        ann.send("after")
        await bob_heard.message("ann", "after")
        await sleep(0.3)
        self.assertEqual(bob_heard.messages_from("ann"), ["lost ack 0", "lost ack 1", "lost ack 2", "after"])
        self.assertEqual(bob_heard.seqs(), sorted(set(bob_heard.seqs())))
        self.assertGreaterEqual(b.server.relay.stats.delivery.duplicates, 3)
