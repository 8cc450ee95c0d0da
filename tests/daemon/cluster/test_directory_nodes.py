"""
Node liveness against a real redis-server: heartbeats and their expiry, the
periodic heartbeat through Redis going away and coming back, and the reap of
a dead node's members (once, however many nodes reap at the same time).
Short TTLs and graces keep each test within a few seconds.
"""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred, gatherResults

from chatd.daemon.cluster.directory import Keys, Liveness, TakeOverOutcome
from chatd.daemon.cluster.records import ReapReport
from chatd.protocol.errors import ClusterUnavailableError
from tests.daemon.cluster.test_directory_support import PREFIX, DirectoryTestCase, member_record, room_record
from tests.waiting import bounded, sleep, until

KEYS = Keys(PREFIX)


class HeartbeatTests(DirectoryTestCase):
    async def test_heartbeat(self) -> None:
        """The first beat registers the node, later ones continue it; the alive key lives node_ttl."""
        directory = await self.directory("n1", node_ttl=10.0)
        self.assertFalse(await directory.is_alive("n1"))
        self.assertIs(await directory.heartbeat(), Liveness.REGISTERED)
        self.assertIs(await directory.heartbeat(), Liveness.CONTINUED)
        self.assertTrue(await directory.is_alive("n1"))
        ttl = int(await self.raw("PTTL", KEYS.node_alive("n1")))
        self.assertTrue(9_000 < ttl <= 10_000, ttl)
        self.assertEqual(await self.raw("ZRANGE", KEYS.nodes, 0, -1), ["n1"])

    async def test_alive_key_expires(self) -> None:
        directory = await self.directory("n1", node_ttl=0.2)
        await directory.heartbeat()
        self.assertTrue(await directory.is_alive("n1"))
        await sleep(0.3)
        self.assertFalse(await directory.is_alive("n1"))

    async def test_periodic_heartbeat(self) -> None:
        """start_heartbeat beats at once and every third of node_ttl; after stop_heartbeat the node expires."""
        directory = await self.directory("n1", node_ttl=0.3)
        heard: list[object] = []
        directory.start_heartbeat(heard.append)
        directory.start_heartbeat(heard.append)  # a second start changes nothing
        await until(lambda: len(heard) >= 4, "four heartbeats")
        self.assertEqual(heard[0], Liveness.REGISTERED)
        self.assertEqual(set(heard[1:]), {Liveness.CONTINUED})
        self.assertTrue(await directory.is_alive("n1"))
        await bounded(directory.stop_heartbeat(), "the heartbeat stops")
        await bounded(directory.stop_heartbeat(), "a second stop is a no-op")
        await sleep(0.4)
        self.assertFalse(await directory.is_alive("n1"))

    async def test_heartbeat_through_redis_restart(self) -> None:
        """Redis lost: the beats fail (told to the observer), and go on; Redis back: the node registers again."""
        directory = await self.directory("n1", node_ttl=0.3, timeout=0.5)
        heard: list[object] = []
        directory.start_heartbeat(heard.append)
        self.addCleanup(directory.stop_heartbeat)
        await until(lambda: Liveness.CONTINUED in heard, "a heartbeat")
        self.server.stop()
        await until(lambda: isinstance(heard[-1], ClusterUnavailableError), "a failed heartbeat")
        self.server.start()  # same port, empty: this test's server keeps no data
        count = len(heard)
        await until(lambda: Liveness.REGISTERED in heard[count:], "registered again once Redis is back", 10)
        self.assertTrue(await directory.is_alive("n1"))


class ReapTests(DirectoryTestCase):
    async def test_reap_a_dead_node(self) -> None:
        """
        n1 dies. Its members are removed unless they resumed elsewhere; the room
        it hosted is released, naming the members to tell; n2's room stays.
        """
        n1 = await self.directory("n1")
        n2 = await self.directory("n2")
        teahouse, garden = room_record("teahouse", "alice", "n1"), room_record("garden", "dave", "n2")
        await n1.heartbeat()
        await n1.claim_room(teahouse, member_record("alice", "n1"))
        await n2.add_member("teahouse", teahouse.epoch, member_record("bob", "n2"))
        await n1.add_member("teahouse", teahouse.epoch, member_record("carol", "n1"))
        await n2.claim_room(garden, member_record("dave", "n2"))
        await n1.add_member("garden", garden.epoch, member_record("erin", "n1"))
        await n1.add_member("garden", garden.epoch, member_record("frank", "n1", credential="frank-secret"))
        await sleep(0.3)
        await n2.heartbeat()
        self.assertEqual(await n2.reap(grace=10), ReapReport())  # nobody silent for 10 s
        moved = await n2.take_over_member("garden", garden.epoch, "frank", "frank-secret", "n2", "new")
        self.assertIs(moved.outcome, TakeOverOutcome.MOVED)

        report = await n2.reap(grace=0.2)

        self.assertEqual(report.nodes, ("n1",))
        self.assertEqual([(r.name, r.epoch, r.host) for r in report.rooms], [("teahouse", teahouse.epoch, "alice")])
        reaped = {(m.room, m.name, m.was_host) for m in report.members}
        self.assertIn(("teahouse", "alice", True), reaped)
        self.assertIn(("garden", "erin", False), reaped)
        self.assertTrue(all(m.node == "n1" for m in report.members))
        # carol (n1) went with alice's room: reported once, as reaped or as one of the room's members.
        told = {m.name for m in report.rooms[0].members}
        self.assertIn("bob", told)
        self.assertEqual(("teahouse", "carol", False) in reaped, "carol" not in told)
        self.assertIsNone(await n2.room("teahouse"))
        self.assertEqual([m.name for m in await n2.members("garden")], ["dave", "frank"])
        self.assertEqual(await n2.node_members("n1"), [])
        self.assertEqual(await n2.node_members("n2"), [("garden", "dave"), ("garden", "frank")])
        self.assertEqual(await self.raw("ZRANGE", KEYS.nodes, 0, -1), ["n2"])
        # Reaped once: a second reap finds nothing.
        self.assertEqual(await n2.reap(grace=0.2), ReapReport())
        # n1 comes back: it learns it was forgotten.
        self.assertIs(await n1.heartbeat(), Liveness.REGISTERED)

    async def test_two_reapers_report_once(self) -> None:
        """Two nodes reaping the same dead nodes at once: every member is reported exactly once."""
        reapers = [await self.directory("r1"), await self.directory("r2")]
        shared = [room_record(f"shared{index}", "keeper", "r1") for index in range(5)]
        for room in shared:
            await reapers[0].claim_room(room, member_record("keeper", "r1"))
        expected = set()
        for index in range(3):
            node = await self.directory(f"dead{index}")
            await node.heartbeat()
            await node.claim_room(room_record(f"room{index}", "host", node.node), member_record("host", node.node))
            expected.add((f"room{index}", "host"))
            for other in range(150):
                room, name = shared[other % 5], f"{node.node}-{other}"
                await node.add_member(room.name, room.epoch, member_record(name, node.node))
                expected.add((room.name, name))
        await sleep(0.3)
        for reaper in reapers:
            await reaper.heartbeat()

        reports = await bounded(
            gatherResults([ensureDeferred(reaper.reap(grace=0.2, batch=7)) for reaper in reapers]), "both reaps"
        )

        members = [(m.room, m.name) for report in reports for m in report.members]
        rooms = [r.name for report in reports for r in report.rooms]
        self.assertEqual(len(members), len(set(members)), "a member reported twice")
        self.assertEqual(sorted(rooms), ["room0", "room1", "room2"])
        self.assertEqual(set(members), expected)
        self.assertEqual(sorted(n for report in reports for n in report.nodes), ["dead0", "dead1", "dead2"])
        for index in range(5):
            self.assertEqual([m.name for m in await reapers[0].members(f"shared{index}")], ["keeper"])
        self.assertEqual(await self.raw("ZRANGE", KEYS.nodes, 0, -1), ["r1", "r2"])

    async def test_evict_node(self) -> None:
        """A node restarting under its old name evicts what its previous life left in Redis."""
        n1, n2 = await self.directory("n1"), await self.directory("n2")
        room = room_record("teahouse", "bob", "n2")
        await n1.heartbeat()
        await n2.claim_room(room, member_record("bob", "n2"))
        await n1.add_member("teahouse", room.epoch, member_record("alice", "n1"))
        self.assertEqual(await n1.node_members("n1"), [("teahouse", "alice")])
        report = await n1.evict_node("n1")
        self.assertEqual([(m.room, m.name) for m in report.members], [("teahouse", "alice")])
        self.assertEqual(report.rooms, ())
        self.assertEqual([m.name for m in await n1.members("teahouse")], ["bob"])
        self.assertEqual(await n1.evict_node("n1"), ReapReport(nodes=("n1",)))
