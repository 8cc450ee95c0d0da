"""
The directory's races, through two or three connections standing for nodes:
every request of a round is written to Redis before any answer is awaited,
and exactly one of the contenders must win each time.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults

from chatd.daemon.cluster.directory import MemberOutcome, RoomDirectory, Spending, TakeOverOutcome
from tests.daemon.cluster.test_directory_support import DirectoryTestCase, member_record, room_record
from tests.waiting import bounded

ROUNDS = 200
T = TypeVar("T")


async def all_at_once(what: str, coroutines: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Start every coroutine (each writes its command at once), then wait for all the answers."""
    started: list[Deferred[T]] = [ensureDeferred(coroutine) for coroutine in coroutines]
    return await bounded(gatherResults(started, consumeErrors=True), what, 20)


class RaceTests(DirectoryTestCase):
    async def nodes(self, count: int) -> list[RoomDirectory]:
        return [await self.directory(f"n{index}") for index in range(1, count + 1)]

    async def test_same_room_claimed_by_two_nodes(self) -> None:
        """The same room name claimed from two nodes at once, 200 times: exactly one claim wins each time."""
        n1, n2 = await self.nodes(2)
        claims = []
        for round_ in range(ROUNDS):
            name = f"room{round_}"
            one = n1.claim_room(room_record(name, "alice", "n1"), member_record("alice", "n1"))
            two = n2.claim_room(room_record(name, "bob", "n2"), member_record("bob", "n2"))
            claims += [one, two] if round_ % 2 else [two, one]
        won = await all_at_once("every claim answered", claims)
        for round_ in range(ROUNDS):
            pair = won[2 * round_ : 2 * round_ + 2]
            self.assertEqual(sorted(pair), [False, True], f"round {round_}")
        # The winner is the host, and the only member, of its room; the loser holds nothing.
        rooms = await all_at_once("rooms read", [n1.room(f"room{r}") for r in range(ROUNDS)])
        members = await all_at_once("members read", [n1.members(f"room{r}") for r in range(ROUNDS)])
        for room, its_members in zip(rooms, members, strict=True):
            assert room is not None
            self.assertEqual([(m.name, m.node) for m in its_members], [(room.host, room.host_node)])
        held = len(await n1.node_members("n1")) + len(await n2.node_members("n2"))
        self.assertEqual(held, ROUNDS)

    async def test_same_member_name_from_two_nodes(self) -> None:
        """One user name joining one room from two nodes at once: exactly one is added, each round."""
        n1, n2 = await self.nodes(2)
        room = room_record()
        await n1.claim_room(room, member_record("alice", "n1"))
        joins = []
        for round_ in range(ROUNDS):
            joins.append(n1.add_member("teahouse", room.epoch, member_record(f"user{round_}", "n1")))
            joins.append(n2.add_member("teahouse", room.epoch, member_record(f"user{round_}", "n2")))
        outcomes = await all_at_once("every join answered", joins)
        for round_ in range(ROUNDS):
            pair = outcomes[2 * round_ : 2 * round_ + 2]
            self.assertEqual(sorted(o.value for o in pair), ["added", "taken"], f"round {round_}")
        self.assertEqual(len(await n1.members("teahouse")), ROUNDS + 1)
        self.assertEqual(outcomes.count(MemberOutcome.ADDED), ROUNDS)

    async def test_invitation_spent_on_two_nodes(self) -> None:
        """An invitation spent from two nodes at once, 200 times: exactly one spends it each time."""
        n1, n2 = await self.nodes(2)
        room = room_record()
        await n1.claim_room(room, member_record("alice", "n1"))
        await all_at_once(
            "invitations added",
            [n1.add_invitation("teahouse", room.epoch, f"token{r}", 60, ROUNDS) for r in range(ROUNDS)],
        )
        spends = []
        for round_ in range(ROUNDS):
            spends.append(n1.spend_invitation("teahouse", room.epoch, f"token{round_}"))
            spends.append(n2.spend_invitation("teahouse", room.epoch, f"token{round_}"))
        outcomes = await all_at_once("every spend answered", spends)
        for round_ in range(ROUNDS):
            pair = outcomes[2 * round_ : 2 * round_ + 2]
            self.assertEqual(sorted(o.value for o in pair), ["invalid", "spent"], f"round {round_}")
        self.assertEqual(outcomes.count(Spending.SPENT), ROUNDS)

    async def test_concurrent_take_overs(self) -> None:
        """A member taken over from two nodes at once with the same credential: exactly one wins, each time."""
        n1, n2, n3 = await self.nodes(3)
        room = room_record()
        await n1.claim_room(room, member_record("alice", "n1"))
        await all_at_once(
            "members added",
            [n1.add_member("teahouse", room.epoch, member_record(f"m{r}", "n1", f"secret{r}")) for r in range(ROUNDS)],
        )
        takes = []
        for round_ in range(ROUNDS):
            name, secret = f"m{round_}", f"secret{round_}"
            takes.append(n2.take_over_member("teahouse", room.epoch, name, secret, "n2", f"{secret}-n2"))
            takes.append(n3.take_over_member("teahouse", room.epoch, name, secret, "n3", f"{secret}-n3"))
        outcomes = await all_at_once("every take-over answered", takes)
        members = {m.name: m for m in await n1.members("teahouse")}
        for round_ in range(ROUNDS):
            pair = outcomes[2 * round_ : 2 * round_ + 2]
            self.assertEqual(sorted(t.outcome.value for t in pair), ["moved", "refused"], f"round {round_}")
            winner = next(t for t in pair if t.outcome is TakeOverOutcome.MOVED)
            assert winner.member is not None
            self.assertEqual(winner.previous_node, "n1")
            self.assertEqual(members[f"m{round_}"], winner.member)
        index = len(await n2.node_members("n2")) + len(await n3.node_members("n3"))
        self.assertEqual(index, ROUNDS)
        self.assertEqual(await n1.node_members("n1"), [("teahouse", "alice")])
