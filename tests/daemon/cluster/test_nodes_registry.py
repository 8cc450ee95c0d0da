"""
The room store's side of the cluster seam (IRoomClaims), without Redis: a
RoomRegistry with a fake of the claims whose answers the test holds, so that
every path (a claim refused, a replica made, two joins of one replica in
parallel, a replica dropped, repaired or closed, invitations) is driven
exactly. The claims on Redis are tested with real nodes (test_nodes*.py).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from chatd.daemon.history import IHistory, RoomHistory
from chatd.daemon.interfaces import IRoomClaims, Replica, Resumption
from chatd.daemon.rooms import CloseReason, LeaveReason, Member, Room, RoomRegistry
from chatd.protocol.errors import (
    ClusterUnavailableError,
    InvalidInvitationError,
    RoomExistsError,
    RoomNotFoundError,
    Status,
    UsernameTakenError,
)
from chatd.protocol.payloads import Dialect, RoomRequest
from tests.helpers import FAST

EPOCH = "0123456789abcdef"


@implementer(IRoomClaims)
class FakeClaims:
    """What the registry told the cluster, and the cluster's answers, held by the test."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.claim_answer: Deferred[None] = succeed(None)
        self.replicas: dict[str, Replica] = {}
        self.admit_answers: list[Deferred[None]] = []
        self.spend_answer: Deferred[None] = succeed(None)
        self.available = True
        self.credentials: dict[str, str | None] = {}
        """The credential hash each admitted member was recorded with."""
        self.take_over_answer: Deferred[Resumption] = succeed(Resumption("elsewhere"))
        self.new_credentials: list[str] = []

    def new_history(self, name: str) -> IHistory:
        return RoomHistory(epoch=EPOCH)

    def claim(self, room: Room, host: Member) -> Deferred[None]:
        self.calls.append(("claim", room.name, host.name))
        return self.claim_answer

    def find(self, name: str) -> Deferred[Replica | None]:
        self.calls.append(("find", name))
        return succeed(self.replicas.get(name))

    def admit(
        self, room: Room, request: RoomRequest, dialect: Dialect, credential_hash: str | None = None
    ) -> Deferred[None]:
        self.calls.append(("admit", room.name, request.username))
        self.credentials[request.username] = credential_hash
        return self.admit_answers.pop(0) if self.admit_answers else succeed(None)

    def take_over(
        self, room: Room, name: str, credential: str, new_credential: str, client: str | None
    ) -> Deferred[Resumption]:
        self.calls.append(("take_over", room.name, name, client))
        self.new_credentials.append(new_credential)
        return self.take_over_answer

    def resumed(self, member: Member, previous_node: str) -> None:
        self.calls.append(("resumed", member.room.name, member.name, previous_node))

    def spend_invitation(self, room: Room, invite: str) -> Deferred[None]:
        self.calls.append(("spend", room.name, invite))
        return self.spend_answer

    def check_available(self) -> None:
        if not self.available:
            raise ClusterUnavailableError("Redis is away")

    def invitation_minted(self, room: Room, invite: str, ttl: float) -> None:
        self.calls.append(("minted", room.name, invite))

    def entered(self, member: Member) -> None:
        self.calls.append(("entered", member.room.name, member.name))

    def abandoned(self, room: Room, name: str) -> None:
        self.calls.append(("abandoned", room.name, name))

    def member_left(self, member: Member, reason: LeaveReason) -> None:
        self.calls.append(("left", member.room.name, member.name, reason))

    def room_closed(self, room: Room, members: list[Member], reason: CloseReason) -> None:
        self.calls.append(("closed", room.name, tuple(member.name for member in members), reason))


def request(name: str, **options: Any) -> RoomRequest:
    return RoomRequest(name, **options)


class ClaimsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.claims = FakeClaims()
        self.store = RoomRegistry(self.clock, FAST, claims=self.claims)
        self.claims.replicas["far"] = Replica("far", RoomHistory(epoch=EPOCH), None, False, "zed", ("zed",))

    def enter(self, deferred: Deferred[Member]) -> Member:
        return self.successResultOf(deferred)

    def test_the_fake_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IRoomClaims, self.claims))

    def test_a_create_claims_the_name_before_it_commits(self) -> None:
        self.claims.claim_answer = Deferred()
        creating = self.store.create_room("lobby", request("ann"), Dialect.NATIVE, origin="10.0.0.1")
        self.assertNoResult(creating)
        self.assertEqual(self.store.rooms(), [])
        self.assertIsNone(self.store.member_for_token_bytes(b"x"))
        self.claims.claim_answer.callback(None)
        host = self.enter(creating)
        self.assertEqual(self.store.rooms(), [host.room])
        self.assertEqual(self.claims.calls, [("claim", "lobby", "ann"), ("entered", "lobby", "ann")])

    def test_a_claim_refused_leaves_nothing_behind(self) -> None:
        for error in (RoomExistsError("room 'lobby' exists"), ClusterUnavailableError("Redis is away")):
            self.claims.claim_answer = Deferred()
            creating = self.store.create_room("lobby", request("ann"), Dialect.NATIVE, origin="10.0.0.1")
            self.claims.claim_answer.errback(error)
            self.assertIs(self.failureResultOf(creating, type(error)).value, error)
            self.assertEqual(self.store.rooms(), [])
            self.assertEqual(self.store.member_count(), 0)
            self.assertEqual(self.store.rooms_of_origin("10.0.0.1"), 0)
        self.assertEqual(ClusterUnavailableError.status, Status.SERVER_FULL)
        self.assertNotIn("abandoned", [call[0] for call in self.claims.calls])

    def test_a_join_of_a_room_held_elsewhere_makes_a_replica(self) -> None:
        bob = self.enter(self.store.join_room("far", request("bob"), Dialect.NATIVE))
        room = bob.room
        self.assertTrue(room.replica)
        self.assertEqual(room.history.epoch, EPOCH)
        self.assertEqual(self.store.rooms(), [room])
        self.assertEqual(room.names(), ("zed", "bob"))
        self.assertEqual(room.host_name, "zed")
        self.assertFalse(bob.is_host)
        self.assertEqual(self.claims.calls, [("find", "far"), ("admit", "far", "bob"), ("entered", "far", "bob")])

    def test_an_unknown_room_is_not_found(self) -> None:
        self.failureResultOf(self.store.join_room("nowhere", request("bob"), Dialect.NATIVE), RoomNotFoundError)
        self.assertEqual(self.store.rooms(), [])

    def test_a_name_taken_cluster_wide_leaves_no_replica(self) -> None:
        admitting: Deferred[None] = Deferred()
        self.claims.admit_answers.append(admitting)
        joining = self.store.join_room("far", request("zed"), Dialect.NATIVE)
        admitting.errback(UsernameTakenError("'zed' is already in room 'far'"))
        self.failureResultOf(joining, UsernameTakenError)
        self.assertEqual(self.store.rooms(), [])
        self.assertEqual(self.store.member_count(), 0)

    def test_two_joins_of_one_replica_at_once_share_it(self) -> None:
        first: Deferred[None] = Deferred()
        second: Deferred[None] = Deferred()
        self.claims.admit_answers += [first, second]
        bob_joining = self.store.join_room("far", request("bob"), Dialect.NATIVE)
        cy_joining = self.store.join_room("far", request("cy"), Dialect.SEED)
        second.callback(None)
        first.callback(None)
        cy, bob = self.enter(cy_joining), self.enter(bob_joining)
        self.assertIs(bob.room, cy.room)
        self.assertEqual(self.store.rooms(), [bob.room])
        self.assertEqual(set(bob.room.members), {"bob", "cy"})

    def test_the_sweep_keeps_a_replica_without_a_host_here(self) -> None:
        bob = self.enter(self.store.join_room("far", request("bob"), Dialect.NATIVE))
        self.store.expire()
        self.assertEqual(self.store.rooms(), [bob.room])
        self.assertEqual(sum(self.store.stats.repaired.values()), 0)

    def test_the_last_member_here_leaving_drops_the_replica_only_here(self) -> None:
        bob = self.enter(self.store.join_room("far", request("bob"), Dialect.NATIVE))
        cy = self.enter(self.store.join_room("far", request("cy"), Dialect.NATIVE))
        room = bob.room
        self.store.leave(bob, LeaveReason.LEFT)
        self.assertEqual(self.store.rooms(), [room])
        self.store.leave(cy, LeaveReason.TIMED_OUT)
        self.assertEqual(self.store.rooms(), [])
        self.assertTrue(room.closed)
        self.assertEqual(
            self.claims.calls[-3:],
            [
                ("left", "far", "bob", LeaveReason.LEFT),
                ("left", "far", "cy", LeaveReason.TIMED_OUT),
                ("closed", "far", (), CloseReason.NO_LOCAL_MEMBERS),
            ],
        )
        self.assertEqual(self.store.rooms_of_origin(""), 0)
        self.store.expire()
        self.assertEqual(sum(self.store.stats.repaired.values()), 0)

    def test_the_hosts_leave_closes_its_room_cluster_wide(self) -> None:
        ann = self.enter(self.store.create_room("lobby", request("ann"), Dialect.NATIVE))
        bob = self.enter(self.store.join_room("lobby", request("bob"), Dialect.NATIVE))
        self.store.leave(ann, LeaveReason.EXITED)
        self.assertEqual(self.claims.calls[-1], ("closed", "lobby", ("ann", "bob"), CloseReason.HOST_CLOSED))
        self.assertIsNone(self.store.member_for_token(bob.token))

    def test_invitations_are_recorded_and_spent_cluster_wide(self) -> None:
        ann = self.enter(self.store.create_room("lobby", request("ann", password="pw"), Dialect.NATIVE))
        invite = self.store.mint_invitation(ann)
        self.assertEqual(self.claims.calls[-1], ("minted", "lobby", invite))
        bob = self.enter(self.store.join_room("lobby", request("bob", invite=invite), Dialect.NATIVE))
        self.assertEqual(self.claims.calls[-3], ("spend", "lobby", invite))
        # Spent on the node that minted it: its own index forgets it too.
        self.assertEqual(bob.room.invitations, {})
        self.claims.spend_answer = Deferred()
        joining = self.store.join_room("lobby", request("cy", invite=invite), Dialect.NATIVE)
        self.claims.spend_answer.errback(InvalidInvitationError("the invitation is not valid for this room"))
        self.failureResultOf(joining, InvalidInvitationError)

    def test_no_invitation_while_the_cluster_is_away(self) -> None:
        ann = self.enter(self.store.create_room("lobby", request("ann"), Dialect.NATIVE))
        self.claims.available = False
        self.assertRaises(ClusterUnavailableError, self.store.mint_invitation, ann)
        self.assertEqual(ann.room.invitations, {})
