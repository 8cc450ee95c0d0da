"""
The room directory against a real redis-server: every operation's outcomes,
one node at a time (the races are in test_directory_races, the heartbeat and
the reap in test_directory_nodes).
"""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred

from chatd.daemon.cluster.directory import (
    InvitationOutcome,
    Keys,
    MemberOutcome,
    Removal,
    Restoration,
    RestoreOutcome,
    RoomDirectory,
    Spending,
    TakeOverOutcome,
)
from chatd.daemon.cluster.records import RoomRecord, member_entry
from chatd.daemon.history import new_epoch
from chatd.daemon.passwords import hash_password
from chatd.protocol.errors import ClusterUnavailableError
from tests.daemon.cluster.test_directory_support import PREFIX, DirectoryTestCase, member_record, room_record
from tests.waiting import bounded, sleep

KEYS = Keys(PREFIX)


class RoomTests(DirectoryTestCase):
    async def test_claim_then_read(self) -> None:
        """A claimed room reads back whole, password hash included, with its host as its one member."""
        directory = await self.directory("n1")
        room = RoomRecord("teahouse", new_epoch(), "alice", "n1", hash_password("pw", cost=2), True, 1234)
        host = member_record("alice", "n1", credential="secret")
        self.assertTrue(await directory.claim_room(room, host))
        self.assertEqual(await directory.room("teahouse"), room)
        self.assertEqual(await directory.members("teahouse"), [host])
        self.assertEqual(await directory.member("teahouse", "alice"), host)
        self.assertEqual(await directory.node_members("n1"), [("teahouse", "alice")])

    async def test_claim_taken(self) -> None:
        """A second claim of a name is refused and changes nothing, whoever makes it."""
        first, second = await self.directory("n1"), await self.directory("n2")
        room = room_record()
        self.assertTrue(await first.claim_room(room, member_record("alice", "n1")))
        self.assertFalse(await second.claim_room(room_record(host="bob", node="n2"), member_record("bob", "n2")))
        self.assertEqual(await first.room("teahouse"), room)
        self.assertEqual([m.name for m in await first.members("teahouse")], ["alice"])
        self.assertEqual(await second.node_members("n2"), [])

    async def test_claim_needs_matching_host(self) -> None:
        directory = await self.directory("n1")
        with self.assertRaises(ValueError):
            await directory.claim_room(room_record(host="alice"), member_record("bob", "n1"))
        with self.assertRaises(ValueError):
            await directory.claim_room(room_record(host="alice", node="n1"), member_record("alice", "n2"))

    async def test_no_room(self) -> None:
        directory = await self.directory("n1")
        self.assertIsNone(await directory.room("nowhere"))
        self.assertEqual(await directory.members("nowhere"), [])
        self.assertIsNone(await directory.member("nowhere", "alice"))

    async def test_release(self) -> None:
        """Release removes the room and everything under it, and names the members to tell."""
        directory = await self.directory("n1")
        room = room_record()
        await directory.claim_room(room, member_record("alice", "n1"))
        await directory.add_member("teahouse", room.epoch, member_record("bob", "n2"))
        await directory.add_invitation("teahouse", room.epoch, "token", 60, 5)
        released = await directory.release_room("teahouse", room.epoch)
        assert released is not None
        self.assertEqual((released.name, released.epoch, released.host), ("teahouse", room.epoch, "alice"))
        self.assertEqual([m.name for m in released.members], ["alice", "bob"])
        self.assertIsNone(await directory.room("teahouse"))
        self.assertEqual(await self.raw("KEYS", f"{PREFIX}:room:*"), [])
        self.assertEqual(await directory.node_members("n1"), [])
        self.assertEqual(await directory.node_members("n2"), [])
        self.assertIsNone(await directory.release_room("teahouse", room.epoch))

    async def test_release_leaves_a_newer_room_alone(self) -> None:
        """A late release of an old incarnation does not touch the new room of the same name."""
        directory = await self.directory("n1")
        old = room_record()
        await directory.claim_room(old, member_record("alice", "n1"))
        await directory.release_room("teahouse", old.epoch)
        new = room_record(host="carol", node="n2")
        await directory.claim_room(new, member_record("carol", "n2"))
        self.assertIsNone(await directory.release_room("teahouse", old.epoch))
        self.assertEqual(await directory.room("teahouse"), new)
        self.assertEqual([m.name for m in await directory.members("teahouse")], ["carol"])

    async def test_names_with_any_characters(self) -> None:
        """Room and member names with braces, colons, digits only and non-ASCII text keep their keys apart."""
        directory = await self.directory("n1")
        names = ["a}:members", "a", "{a}", "0042", "été 🍵", "3:ab"]
        for name in names:
            room = room_record(name=name, host="0042")
            self.assertTrue(await directory.claim_room(room, member_record("0042", "n1")))
            self.assertEqual(await directory.room(name), room)
        self.assertEqual(sorted(await directory.node_members("n1")), sorted((name, "0042") for name in names))
        for name in names:
            self.assertEqual([m.name for m in await directory.members(name)], ["0042"])

    async def test_index_entries_from_lua_match(self) -> None:
        """The node index entries the scripts build (take-over, release, reap) are the ones Python builds."""
        n1, n2 = await self.directory("n1"), await self.directory("n2")
        await n1.heartbeat()
        names = ["été 🍵", "3:ab", "{x}"]
        for name in names:
            room = room_record(name=name, host="ünï", node="n2")
            await n2.claim_room(room, member_record("ünï", "n2"))
            await n1.add_member(name, room.epoch, member_record("bø", "n1", credential="s"))
            await n1.add_member(name, room.epoch, member_record("çe", "n1"))
            moved = await n2.take_over_member(name, room.epoch, "bø", "s", "n2", "t")
            self.assertIs(moved.outcome, TakeOverOutcome.MOVED)
        self.assertEqual(await n1.node_members("n1"), sorted((name, "çe") for name in names))
        await n2.evict_node("n1")
        self.assertEqual(await n1.node_members("n1"), [])
        for name in names:
            self.assertEqual([m.name for m in await n2.members(name)], ["bø", "ünï"])
            found = await n2.room(name)
            assert found is not None
            await n2.release_room(name, found.epoch)
        self.assertEqual(await n2.node_members("n2"), [])


class MemberTests(DirectoryTestCase):
    async def given_teahouse(self) -> None:
        self.n1 = await self.directory("n1")
        self.n2 = await self.directory("n2")
        self.teahouse = room_record()
        await self.n1.claim_room(self.teahouse, member_record("alice", "n1", credential="alice-secret"))

    async def test_add_member(self) -> None:
        await self.given_teahouse()
        bob = member_record("bob", "n2", credential="bob-secret")
        self.assertIs(await self.n2.add_member("teahouse", self.teahouse.epoch, bob), MemberOutcome.ADDED)
        self.assertEqual(await self.n1.member("teahouse", "bob"), bob)
        self.assertEqual(await self.n2.node_members("n2"), [("teahouse", "bob")])

    async def test_name_taken_across_nodes(self) -> None:
        await self.given_teahouse()
        alice_again = member_record("alice", "n2")
        self.assertIs(await self.n2.add_member("teahouse", self.teahouse.epoch, alice_again), MemberOutcome.NAME_TAKEN)
        self.assertEqual((await self.n1.member("teahouse", "alice") or alice_again).node, "n1")

    async def test_no_room_or_another_epoch(self) -> None:
        await self.given_teahouse()
        bob = member_record("bob", "n2")
        self.assertIs(await self.n2.add_member("elsewhere", self.teahouse.epoch, bob), MemberOutcome.NO_ROOM)
        self.assertIs(await self.n2.add_member("teahouse", new_epoch(), bob), MemberOutcome.NO_ROOM)
        self.assertIsNone(await self.n1.member("teahouse", "bob"))
        self.assertEqual(await self.n2.node_members("n2"), [])

    async def test_room_full(self) -> None:
        await self.given_teahouse()
        epoch = self.teahouse.epoch
        self.assertIs(await self.n2.add_member("teahouse", epoch, member_record("bob", "n2"), 2), MemberOutcome.ADDED)
        carol = member_record("carol", "n2")
        self.assertIs(await self.n2.add_member("teahouse", epoch, carol, 2), MemberOutcome.ROOM_FULL)
        self.assertIs(await self.n2.add_member("teahouse", epoch, carol), MemberOutcome.ADDED)

    async def test_remove_member(self) -> None:
        await self.given_teahouse()
        epoch = self.teahouse.epoch
        await self.n2.add_member("teahouse", epoch, member_record("bob", "n2"))
        self.assertIs(await self.n1.remove_member("teahouse", epoch, "bob", "n1"), Removal.ELSEWHERE)
        self.assertIs(await self.n2.remove_member("teahouse", new_epoch(), "bob", "n2"), Removal.NO_ROOM)
        self.assertIs(await self.n2.remove_member("teahouse", epoch, "bob", "n2"), Removal.REMOVED)
        self.assertIs(await self.n2.remove_member("teahouse", epoch, "bob", "n2"), Removal.NO_MEMBER)
        self.assertEqual([m.name for m in await self.n1.members("teahouse")], ["alice"])
        self.assertEqual(await self.n2.node_members("n2"), [])
        # The name is free again.
        self.assertIs(await self.n2.add_member("teahouse", epoch, member_record("bob", "n2")), MemberOutcome.ADDED)

    async def test_take_over(self) -> None:
        """A member resumes on another node with its credential, which is then replaced by the new one."""
        await self.given_teahouse()
        epoch = self.teahouse.epoch
        await self.n1.add_member("teahouse", epoch, member_record("bob", "n1", credential="bob-secret"))
        moved = await self.n2.take_over_member("teahouse", epoch, "bob", "bob-secret", "n2", "bob-new")
        self.assertIs(moved.outcome, TakeOverOutcome.MOVED)
        self.assertEqual(moved.previous_node, "n1")
        self.assertEqual(moved.member, member_record("bob", "n2", credential="bob-new"))
        self.assertEqual(await self.n1.member("teahouse", "bob"), moved.member)
        self.assertEqual(await self.n1.node_members("n1"), [("teahouse", "alice")])
        self.assertEqual(await self.n2.node_members("n2"), [("teahouse", "bob")])
        # bob's old node cleans up after him: he is elsewhere, so he stays.
        self.assertIs(await self.n1.remove_member("teahouse", epoch, "bob", "n1"), Removal.ELSEWHERE)
        # The old credential is spent.
        again = await self.n1.take_over_member("teahouse", epoch, "bob", "bob-secret", "n1", "x")
        self.assertIs(again.outcome, TakeOverOutcome.REFUSED)
        self.assertIsNone(again.member)
        room = await self.n1.room("teahouse")
        self.assertEqual(room, self.teahouse)

    async def test_take_over_of_the_host_moves_the_room(self) -> None:
        await self.given_teahouse()
        epoch = self.teahouse.epoch
        moved = await self.n2.take_over_member("teahouse", epoch, "alice", "alice-secret", "n2", "alice-new")
        self.assertIs(moved.outcome, TakeOverOutcome.MOVED)
        room = await self.n2.room("teahouse")
        assert room is not None
        self.assertEqual((room.host, room.host_node), ("alice", "n2"))

    async def test_take_over_refusals(self) -> None:
        await self.given_teahouse()
        epoch = self.teahouse.epoch
        await self.n1.add_member("teahouse", epoch, member_record("model", "n1", dialect="model"))

        async def outcome(room: str, epoch: str, name: str, credential: str) -> TakeOverOutcome:
            return (await self.n2.take_over_member(room, epoch, name, credential, "n2", "new")).outcome

        self.assertIs(await outcome("teahouse", epoch, "alice", "wrong"), TakeOverOutcome.REFUSED)
        self.assertIs(await outcome("teahouse", epoch, "model", ""), TakeOverOutcome.REFUSED)
        self.assertIs(await outcome("teahouse", epoch, "nobody", "x"), TakeOverOutcome.NO_MEMBER)
        self.assertIs(await outcome("teahouse", new_epoch(), "alice", "alice-secret"), TakeOverOutcome.NO_ROOM)
        self.assertIs(await outcome("elsewhere", epoch, "alice", "alice-secret"), TakeOverOutcome.NO_ROOM)
        self.assertEqual((await self.n1.member("teahouse", "alice") or member_record("x")).node, "n1")
        self.assertEqual(await self.n2.node_members("n2"), [])


class RestoreTests(DirectoryTestCase):
    async def test_after_redis_lost_everything(self) -> None:
        """Each node writes back what it holds; the first recreates the room, the others add their members."""
        n1, n2 = await self.directory("n1"), await self.directory("n2")
        room = room_record(host="alice", node="n1")
        alice, bob, carol = (
            member_record("alice", "n1", "a"),
            member_record("bob", "n2", "b"),
            member_record("carol", "n2"),
        )
        await n1.claim_room(room, alice)
        await n2.add_member("teahouse", room.epoch, bob)
        await n2.add_member("teahouse", room.epoch, carol)
        await self.raw("FLUSHALL")

        second = await n2.restore_room(room, [bob, carol])
        first = await n1.restore_room(room, [alice])

        self.assertEqual(second, Restoration(RestoreOutcome.RECREATED))
        self.assertEqual(first, Restoration(RestoreOutcome.KEPT))
        self.assertEqual(await n1.room("teahouse"), room)
        self.assertEqual(await n1.members("teahouse"), [alice, bob, carol])
        self.assertEqual(await n1.node_members("n1"), [("teahouse", "alice")])
        self.assertEqual(await n1.node_members("n2"), [("teahouse", "bob"), ("teahouse", "carol")])
        self.assertEqual(await n1.restore_room(room, [alice]), Restoration(RestoreOutcome.KEPT))

    async def test_conflicts(self) -> None:
        """A newer room of the name is left alone; a name taken meanwhile on another node is reported."""
        n1, n2 = await self.directory("n1"), await self.directory("n2")
        old = room_record()
        newer = room_record(host="dave", node="n2")
        await n2.claim_room(newer, member_record("dave", "n2"))
        self.assertEqual(
            await n1.restore_room(old, [member_record("alice", "n1")]), Restoration(RestoreOutcome.CONFLICT)
        )
        self.assertEqual([m.name for m in await n1.members("teahouse")], ["dave"])
        restored = await n1.restore_room(newer, [member_record("dave", "n1"), member_record("erin", "n1")])
        self.assertEqual(restored, Restoration(RestoreOutcome.KEPT, ("dave",)))
        self.assertEqual([(m.name, m.node) for m in await n1.members("teahouse")], [("dave", "n2"), ("erin", "n1")])


class InvitationTests(DirectoryTestCase):
    async def test_spent_once(self) -> None:
        directory = await self.directory("n1")
        room = room_record()
        await directory.claim_room(room, member_record("alice"))
        self.assertIs(await directory.add_invitation("teahouse", room.epoch, "tok", 60, 5), InvitationOutcome.ADDED)
        self.assertIs(await directory.spend_invitation("teahouse", room.epoch, "tok"), Spending.SPENT)
        self.assertIs(await directory.spend_invitation("teahouse", room.epoch, "tok"), Spending.INVALID)

    async def test_only_hashes_in_redis(self) -> None:
        directory = await self.directory("n1")
        room = room_record()
        await directory.claim_room(room, member_record("alice", credential="alice-secret"))
        await directory.add_invitation("teahouse", room.epoch, "the-token", 60, 5)
        dump = repr(await self.raw("ZRANGE", KEYS.invitations("teahouse"), 0, -1))
        dump += repr(await self.raw("HGETALL", KEYS.members("teahouse")))
        self.assertNotIn("the-token", dump)
        self.assertNotIn("alice-secret", dump)

    async def test_other_room_or_epoch(self) -> None:
        """A token tried in another room, or against another incarnation, is refused and not spent."""
        directory = await self.directory("n1")
        room, other = room_record(), room_record(name="other")
        await directory.claim_room(room, member_record("alice"))
        await directory.claim_room(other, member_record("alice"))
        await directory.add_invitation("teahouse", room.epoch, "tok", 60, 5)
        self.assertIs(await directory.spend_invitation("other", other.epoch, "tok"), Spending.INVALID)
        self.assertIs(await directory.spend_invitation("teahouse", other.epoch, "tok"), Spending.NO_ROOM)
        self.assertIs(await directory.add_invitation("gone", room.epoch, "x", 60, 5), InvitationOutcome.NO_ROOM)
        self.assertIs(await directory.spend_invitation("teahouse", room.epoch, "tok"), Spending.SPENT)

    async def test_max_live(self) -> None:
        """Past max_live live invitations, adding is refused; spent and expired ones stop counting."""
        directory = await self.directory("n1")
        room = room_record()
        await directory.claim_room(room, member_record("alice"))
        epoch = room.epoch
        self.assertIs(await directory.add_invitation("teahouse", epoch, "a", 60, 2), InvitationOutcome.ADDED)
        self.assertIs(await directory.add_invitation("teahouse", epoch, "b", 0.05, 2), InvitationOutcome.ADDED)
        self.assertIs(await directory.add_invitation("teahouse", epoch, "c", 60, 2), InvitationOutcome.TOO_MANY)
        await directory.spend_invitation("teahouse", epoch, "a")
        self.assertIs(await directory.add_invitation("teahouse", epoch, "c", 60, 2), InvitationOutcome.ADDED)
        await sleep(0.1)
        self.assertIs(await directory.add_invitation("teahouse", epoch, "d", 60, 2), InvitationOutcome.ADDED)
        self.assertIs(await directory.add_invitation("teahouse", epoch, "e", 60, 2), InvitationOutcome.TOO_MANY)

    async def test_expired_never_spends(self) -> None:
        directory = await self.directory("n1")
        room = room_record()
        await directory.claim_room(room, member_record("alice"))
        await directory.add_invitation("teahouse", room.epoch, "tok", 0.05, 5)
        await directory.add_invitation("teahouse", room.epoch, "keeps-the-set", 60, 5)
        await directory.add_invitation("teahouse", room.epoch, "alone", 0.05, 5)
        await sleep(0.1)
        self.assertIs(await directory.spend_invitation("teahouse", room.epoch, "tok"), Spending.EXPIRED)
        self.assertIs(await directory.spend_invitation("teahouse", room.epoch, "tok"), Spending.INVALID)
        await directory.spend_invitation("teahouse", room.epoch, "keeps-the-set")
        await directory.spend_invitation("teahouse", room.epoch, "alone")
        self.assertIs(await directory.spend_invitation("teahouse", room.epoch, "alone"), Spending.INVALID)

    async def test_expired_with_its_set(self) -> None:
        """When every invitation has expired, Redis drops the set itself: nothing left to spend."""
        directory = await self.directory("n1")
        room = room_record()
        await directory.claim_room(room, member_record("alice"))
        await directory.add_invitation("teahouse", room.epoch, "tok", 0.05, 5)
        await sleep(0.1)
        self.assertIs(await directory.spend_invitation("teahouse", room.epoch, "tok"), Spending.INVALID)
        self.assertEqual(await self.raw("EXISTS", KEYS.invitations("teahouse")), 0)

    async def test_invitations_key_expires(self) -> None:
        """The invitations set lives as long as its longest-lived invitation."""
        directory = await self.directory("n1")
        room = room_record()
        await directory.claim_room(room, member_record("alice"))
        await directory.add_invitation("teahouse", room.epoch, "long", 60, 5)
        await directory.add_invitation("teahouse", room.epoch, "short", 1, 5)
        ttl = await self.raw("PTTL", KEYS.invitations("teahouse"))
        self.assertGreater(int(ttl), 59_000)
        self.assertLessEqual(int(ttl), 60_000)

    async def test_arguments(self) -> None:
        directory = await self.directory("n1")
        with self.assertRaises(ValueError):
            await directory.add_invitation("teahouse", new_epoch(), "t", 0, 5)
        with self.assertRaises(ValueError):
            await directory.add_invitation("teahouse", new_epoch(), "t", 1, 0)


class UnavailableTests(DirectoryTestCase):
    async def test_redis_gone(self) -> None:
        """With Redis stopped, every operation fails within the timeout with one clear error."""
        directory = await self.directory("n1", timeout=0.5)
        self.server.stop()
        with self.assertRaises(ClusterUnavailableError) as raised:
            await bounded(ensureDeferred(directory.room("teahouse")), "the directory gives up", 3)
        self.assertIn("Redis", str(raised.exception))
        with self.assertRaises(ClusterUnavailableError):
            await bounded(ensureDeferred(directory.claim_room(room_record(), member_record("alice"))), "gives up", 3)

    async def test_scripts_reloaded_after_flush(self) -> None:
        """Redis forgetting its scripts (a restart, SCRIPT FLUSH) costs one EVAL, not an error."""
        directory = await self.directory("n1")
        room = room_record()
        await directory.claim_room(room, member_record("alice"))
        await self.raw("SCRIPT", "FLUSH")
        self.assertIs(await directory.add_member("teahouse", room.epoch, member_record("bob")), MemberOutcome.ADDED)

    async def test_malformed_room(self) -> None:
        """A room hash that is not what the directory writes is refused with a sentence that names it."""
        directory = await self.directory("n1")
        await self.raw("HSET", KEYS.room("teahouse"), "name", "teahouse", "epoch", "nothex")
        with self.assertRaises(ClusterUnavailableError) as raised:
            await directory.room("teahouse")
        self.assertIn("teahouse", str(raised.exception))

    async def test_prefixes_apart(self) -> None:
        """Two prefixes in one Redis are two directories."""
        one = await self.directory("n1", prefix="one")
        two = await self.directory("n1", prefix="two")
        self.assertTrue(await one.claim_room(room_record(), member_record("alice")))
        self.assertTrue(await two.claim_room(room_record(), member_record("alice")))
        self.assertEqual(await one.node_members("n1"), [("teahouse", "alice")])
        keys = sorted(await self.raw("KEYS", "*"))
        self.assertTrue(all(key.startswith(("one:", "two:")) for key in keys), keys)

    def test_constructor_checks(self) -> None:
        with self.assertRaises(ValueError):
            RoomDirectory(None, "", None)  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            RoomDirectory(None, "n1", None, node_ttl=0)  # type: ignore[arg-type]

    def test_entry_form(self) -> None:
        self.assertEqual(member_entry("été", "bob"), "5:étébob")
