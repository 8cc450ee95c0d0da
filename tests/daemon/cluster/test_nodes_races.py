"""
The races the cluster store settles through Redis, with real nodes and real
clients: the same room name created on two nodes at once (every request sent
before any answer) has exactly one winner, every time; an invitation
presented on two nodes at once is spent exactly once; a read of the member
list answered after a newer notice does not undo that notice.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults

from chatd.client.events import MemberJoined, MemberLeft
from chatd.daemon.cluster.records import MemberRecord
from chatd.protocol.errors import Status
from chatd.protocol.payloads import Dialect
from chatd.protocol.wire import Frame, Operation
from tests.cluster_nodes import ClusterCase, TestNode, refusal
from tests.loopback_clients import ChatClient as RawClient
from tests.waiting import bounded, sleep, until

ROUNDS = 20


class RaceTests(ClusterCase):
    timeout = 120

    async def opened(self, node: TestNode, name: str) -> RawClient:
        client = RawClient(Dialect.NATIVE, name, "127.0.0.1", node.tcp_port, node.udp_port)
        await client.open()
        self.addCleanup(client.close)
        return client

    async def test_the_same_name_created_on_two_nodes_at_once_has_one_winner(self) -> None:
        a, b, c = await self.nodes("a", "b", "c")
        for round_number in range(ROUNDS):
            room = f"race{round_number % 3}"
            clients = [await self.opened(node, f"u{index}") for index, node in enumerate((a, b, c))]
            # Every create goes out before any answer is read.
            for client in clients:
                client.request(Operation.CREATE, room)
            answers: list[Frame] = await bounded(
                gatherResults([client.tcp.next_frame() for client in clients]), f"round {round_number}'s answers"
            )
            statuses = [refusal(answer)[0] for answer in answers]
            self.assertEqual(statuses.count(Status.SUCCESS), 1, f"round {round_number}: {statuses}")
            self.assertEqual(statuses.count(Status.ROOM_EXISTS), 2, f"round {round_number}: {statuses}")
            winner = statuses.index(Status.SUCCESS)
            record = await a.cluster.directory.room(room)
            assert record is not None
            self.assertEqual((record.host, record.host_node), (f"u{winner}", "abc"[winner]))
            # The host goes: the room closes cluster-wide and the name is free for the next round.
            for client in clients:
                await client.close()
            await until(lambda: not any(n.server.store.rooms() for n in (a, b, c)), "the room closes")
            await self.until_released(a, room)

    async def until_released(self, node: TestNode, room: str) -> None:
        for _ in range(200):
            if await node.cluster.directory.room(room) is None:
                return
            await bounded(node.cluster.claims.settle(), "the release")
        self.fail(f"room {room} was never released")

    async def test_an_invitation_spent_on_two_nodes_at_once_is_spent_once(self) -> None:
        a, b, c = await self.nodes("a", "b", "c")
        ann, _ = await self.native(a, "ann", "vault", create=True, password="secret")
        for round_number in range(ROUNDS):
            invite = await bounded(ann.invite(), "an invitation")
            # Recorded cluster-wide before it is handed over (the host copies it to someone).
            await bounded(a.cluster.claims.settle(), "the invitation recorded")
            clients = [await self.opened(node, f"g{round_number}{node.name}") for node in (b, c)]
            for client in clients:
                client.request(Operation.JOIN, "vault", invite=invite)
            answers: list[Frame] = await bounded(
                gatherResults([client.tcp.next_frame() for client in clients]), f"round {round_number}'s answers"
            )
            statuses = [refusal(answer)[0] for answer in answers]
            self.assertEqual(sorted(statuses), [Status.SUCCESS, Status.INVALID_INVITATION], f"{statuses}")
            for client in clients:
                await client.close()
        # Neither node holds more than the host's room now; the directory has the host alone.
        await until(lambda: not b.server.store.rooms() and not c.server.store.rooms(), "b and c drop their replicas")
        await bounded(gatherResults([b.cluster.claims.settle(), c.cluster.claims.settle()]), "the departures")
        self.assertEqual([m.name for m in await a.cluster.directory.members("vault")], ["ann"])

    async def test_a_member_list_read_older_than_a_notice_does_not_undo_it(self) -> None:
        a, b = await self.nodes("a", "b")
        ann, ann_heard = await self.native(a, "ann", create=True)
        cat, _ = await self.native(b, "cat")
        await ann_heard.next(MemberJoined, lambda event: event.user == "cat")
        [room] = a.server.store.rooms()
        # The read of the member list (after Redis came back) is answered as
        # of before cat left; cat's leaving reaches a over the bus meanwhile.
        stale = await a.cluster.directory.members("lobby")
        answer: Deferred[list[MemberRecord]] = Deferred()
        self.patch(a.cluster.directory, "members", lambda name: answer)
        refreshing = Deferred.fromCoroutine(a.cluster.refresh_members(room))
        await cat.leave()
        await ann_heard.next(MemberLeft, lambda event: event.user == "cat")
        answer.callback(stale)
        await bounded(refreshing, "the read")
        self.assertNotIn("cat", list(room.remote_members))
        await sleep(0.2)
        self.assertEqual([event.user for event in ann_heard.of(MemberJoined)], ["cat"])
        self.assertEqual(set(await ann.refresh_members()), {"ann"})
