"""
A whole cluster stopped (as SIGTERM stops a daemon) and started again under
the same node names and ports, against the same redis-server: the rooms
survive. Members are told the server is shutting down, their clients
resume once a node is back, in the same room under the same epoch, with
the history and the host role; a member that does not come back is removed
after the grace period. Nodes built as the daemon builds them
(ClusterCase.service_node), chatd's own client.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from chatd.client.chat_client import ChatClient
from chatd.client.events import (
    ConnectionLost,
    MemberLeft,
    MessageReceived,
    Reconnected,
    RoomClosed,
    RoomRecreated,
    ServerStopping,
)
from chatd.client.servers import ServerAddress
from tests.cluster_nodes import HOST, ClusterCase, TestNode
from tests.loopback_clients import free_ports
from tests.waiting import Recorder, bounded, client_with_servers, sleep, until

GRACE = 5.0
"""
The reaper's grace period, shortened: a member that has not resumed by then
is removed. Longer than a heartbeat's interval (a third of 10 s), or live
nodes would look dead.
"""


class RestartTests(ClusterCase):
    timeout = 60

    def client_of(
        self, servers: list[ServerAddress], name: str, *, reconnect: bool = True
    ) -> tuple[ChatClient, Recorder]:
        return client_with_servers(self, servers, name, reconnect=reconnect)

    async def start(self, name: str, ports: tuple[int, int]) -> TestNode:
        return await self.service_node(name, tcp_port=ports[0], udp_port=ports[1], reap_grace=GRACE)

    async def test_a_restarted_cluster_brings_its_rooms_back(self) -> None:
        ports_a, ports_b = free_ports(), free_ports()
        a, b = await self.start("a", ports_a), await self.start("b", ports_b)
        on_a, on_b = ServerAddress(HOST, *ports_a), ServerAddress(HOST, *ports_b)
        ann, ann_heard = self.client_of([on_a, on_b], "ann")
        await bounded(ann.create("lobby", "ann"), "ann creates lobby on node a")
        bob, bob_heard = self.client_of([on_b, on_a], "bob")
        await bounded(bob.join("lobby", "bob"), "bob joins on node b")
        # cy will not come back: no reconnection.
        cy, _ = self.client_of([on_a], "cy", reconnect=False)
        await bounded(cy.join("lobby", "cy"), "cy joins on node a")
        await until(lambda: ann.members == ("ann", "bob", "cy"), "ann hears of bob and cy")
        ann.send("before 1")
        bob.send("before 2")
        await ann_heard.message("bob", "before 2")
        await bob_heard.message("ann", "before 1")
        await until(lambda: not ann._core._delivery.outbox.unacknowledged, "ann's message acknowledged")
        before = await a.cluster.directory.room("lobby")
        assert before is not None

        await a.stop()
        await b.stop()
        await ann_heard.next(ServerStopping)
        await bob_heard.next(ServerStopping)
        await ann_heard.next(ConnectionLost)
        # The room, its members and its log stay in Redis.
        a = await self.start("a", ports_a)
        self.assertEqual(await a.cluster.directory.room("lobby"), before)
        names = [member.name for member in await a.cluster.directory.members("lobby")]
        self.assertEqual(names, ["ann", "bob", "cy"])
        b = await self.start("b", ports_b)

        back = await ann_heard.next(Reconnected, timeout=10)
        self.assertTrue(back.resumed, back)
        self.assertTrue(back.as_host, back)
        back_b = await bob_heard.next(Reconnected, timeout=10)
        self.assertTrue(back_b.resumed, back_b)
        self.assertEqual(ann_heard.of(RoomRecreated), [])
        self.assertEqual(bob_heard.of(RoomRecreated), [])
        ann.send("after 1")
        bob.send("after 2")
        await bob_heard.message("ann", "after 1")
        await ann_heard.message("bob", "after 2")
        (room,) = [room for room in a.server.store.rooms() if room.name == "lobby"]
        self.assertEqual(room.history.epoch, before.epoch)
        self.assertEqual(room.host.name if room.host is not None else None, "ann")
        # The history went on: numbers after the restart follow those before it.
        for heard in (ann_heard, bob_heard):
            seqs = [event.seq for event in heard.of(MessageReceived) if event.seq is not None]
            self.assertEqual(seqs, sorted(set(seqs)), heard.name)
        self.assertEqual(ann_heard.messages_from("bob"), ["before 2", "after 2"])
        self.assertEqual(bob_heard.messages_from("ann"), ["before 1", "after 1"])

        # cy did not come back: removed after the grace period, and the others told.
        left = await ann_heard.next(MemberLeft, lambda event: event.user == "cy", timeout=GRACE + 10)
        self.assertEqual(left.members, ("ann", "bob"))
        await bob_heard.next(MemberLeft, lambda event: event.user == "cy", timeout=10)
        names = [member.name for member in await a.cluster.directory.members("lobby")]
        self.assertEqual(names, ["ann", "bob"])
        self.assertEqual(ann_heard.of(RoomClosed) + bob_heard.of(RoomClosed), [])
        await sleep(0.2)
        self.assertIsNotNone(await bounded(Deferred.fromCoroutine(b.cluster.directory.room("lobby")), "the room"))

    async def test_a_host_that_does_not_come_back_closes_its_room_after_the_grace(self) -> None:
        ports_a, ports_b = free_ports(), free_ports()
        a = await self.start("a", ports_a)
        await self.start("b", ports_b)
        ann, _ = self.client_of([ServerAddress(HOST, *ports_a)], "ann", reconnect=False)
        await bounded(ann.create("lobby", "ann"), "ann creates lobby on node a")
        bob, bob_heard = self.client_of([ServerAddress(HOST, *ports_b)], "bob")
        await bounded(bob.join("lobby", "bob"), "bob joins on node b")
        await a.stop()
        a = await self.start("a", ports_a)
        closed = await bob_heard.next(RoomClosed, timeout=GRACE + 10)
        self.assertEqual(closed.reason, "the host's server stopped")
        self.assertIsNone(await a.cluster.directory.room("lobby"))
