"""
A resume in a cluster, on the room store's side (RoomRegistry with the fake
claims of test_nodes_registry): the credential goes to the cluster at join,
a resume goes through IRoomClaims.take_over wherever the member is, a member
that was elsewhere arrives in its stand-in's place with its host role, and a
member that resumed elsewhere is dropped here quietly. With real nodes and
Redis: test_nodes_resume.py and tests/test_cluster_e2e.py.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.history import Duplicate, RoomHistory, Verdict
from chatd.daemon.interfaces import Replica, Resumption
from chatd.daemon.rooms import CloseReason, LeaveReason, Member, Room, RoomRegistry, credential_hash
from chatd.protocol.errors import InvalidPasswordError
from chatd.protocol.payloads import DELIVERY, Dialect, RoomRequest
from tests.daemon.cluster.test_nodes_registry import EPOCH, FakeClaims
from tests.helpers import FAST


class Observed:
    """The observer's resumes and departures, as the registry told them."""

    def __init__(self) -> None:
        self.resumed: list[tuple[Member, Member]] = []
        self.left: list[str] = []
        self.closed: list[tuple[str, CloseReason]] = []

    def member_joined(self, member: Member) -> None:
        pass

    def member_left(self, member: Member, reason: LeaveReason) -> None:
        self.left.append(member.name)

    def member_resumed(self, member: Member, previous: Member) -> None:
        self.resumed.append((member, previous))

    def room_closed(self, room: Room, members: list[Member], reason: CloseReason) -> None:
        self.closed.append((room.name, reason))


class ClusterResumeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.claims = FakeClaims()
        self.observed = Observed()
        self.store = RoomRegistry(Clock(), FAST, claims=self.claims)
        self.store.observer = self.observed  # type: ignore[assignment]
        self.claims.replicas["far"] = Replica("far", RoomHistory(epoch=EPOCH), None, False, "zed", ("zed", "amy"))

    def enter(self, deferred: Deferred[Member]) -> Member:
        return self.successResultOf(deferred)

    def test_a_joiner_is_recorded_with_its_credentials_hash(self) -> None:
        bob = self.enter(self.store.join_room("far", RoomRequest("bob"), Dialect.NATIVE))
        self.assertIsNotNone(bob.credential_hash)
        self.assertEqual(self.claims.credentials["bob"], bob.credential_hash)
        credential = bob.take_credential()
        assert credential is not None
        self.assertEqual(credential_hash(credential), bob.credential_hash)
        self.enter(self.store.join_room("far", RoomRequest("mo"), Dialect.MODEL))
        self.assertIsNone(self.claims.credentials["mo"])

    def test_the_host_from_another_node_arrives_as_host(self) -> None:
        bob = self.enter(self.store.join_room("far", RoomRequest("bob"), Dialect.NATIVE))
        room = bob.room
        zed = self.enter(self.store.join_room("far", RoomRequest("zed", resume="old-credential"), Dialect.NATIVE))
        self.assertIs(zed.room, room)
        self.assertIs(room.host, zed)
        self.assertTrue(zed.is_host)
        self.assertFalse(room.replica)
        self.assertIsNone(room.remote_host)
        self.assertNotIn("zed", room.remote_members)
        self.assertEqual(room.names(), ("zed", "amy", "bob"))
        self.assertIs(self.store.member_for_token(zed.token), zed)
        # The cluster replaced the credential with the one the member holds now.
        self.assertEqual(credential_hash(self.claims.new_credentials[-1]), zed.credential_hash)
        self.assertEqual(
            self.claims.calls[-2:], [("take_over", "far", "zed", None), ("resumed", "far", "zed", "elsewhere")]
        )
        # Told as a resume (by its stand-in), not as a join.
        ((resumed, stand_in),) = self.observed.resumed
        self.assertIs(resumed, zed)
        self.assertEqual((stand_in.name, stand_in.token), ("zed", ""))
        # Now the host is here: its leaving closes the room cluster-wide.
        self.store.leave(zed, LeaveReason.EXITED)
        self.assertEqual(self.claims.calls[-1], ("closed", "far", ("bob", "zed"), CloseReason.HOST_CLOSED))

    def test_an_observer_that_fails_undoes_an_arrival(self) -> None:
        bob = self.enter(self.store.join_room("far", RoomRequest("bob"), Dialect.NATIVE))
        self.store.bind_address(bob, ("127.0.0.1", 40000))
        room = bob.room

        def broken(member: Member, previous: Member) -> None:
            raise RuntimeError("injected")

        self.patch(self.observed, "member_resumed", broken)
        arriving = self.store.join_room("far", RoomRequest("zed", resume="old-credential"), Dialect.NATIVE)
        self.failureResultOf(arriving, RuntimeError)
        # The room is as it was: a replica, zed its host elsewhere, in its place in the list.
        self.assertTrue(room.replica)
        self.assertIsNone(room.host)
        self.assertEqual(room.remote_host, "zed")
        self.assertNotIn("zed", room.members)
        self.assertEqual(list(room.remote_members), ["zed", "amy"])
        self.assertEqual(room.names(), ("zed", "amy", "bob"))
        self.assertEqual([recipient[0] for recipient in room.recipients], [bob])
        self.assertEqual(self.claims.calls[-1], ("abandoned", "far", "zed"))
        self.patch(self.observed, "member_resumed", Observed.member_resumed.__get__(self.observed))
        zed = self.enter(self.store.join_room("far", RoomRequest("zed", resume="old-credential"), Dialect.NATIVE))
        self.assertIs(room.host, zed)

    def test_a_member_resumes_on_a_node_without_the_room(self) -> None:
        amy = self.enter(self.store.join_room("far", RoomRequest("amy", resume="c"), Dialect.NATIVE))
        room = amy.room
        self.assertEqual(self.store.rooms(), [room])
        self.assertTrue(room.replica)
        self.assertEqual(room.host_name, "zed")
        self.assertEqual(room.names(), ("zed", "amy"))
        self.assertEqual(self.store.rooms_of_origin(""), 1)

    def test_a_refused_credential_changes_nothing(self) -> None:
        self.claims.take_over_answer = fail(InvalidPasswordError("cannot resume"))
        self.failureResultOf(
            self.store.join_room("far", RoomRequest("amy", resume="used"), Dialect.NATIVE), InvalidPasswordError
        )
        self.assertEqual(self.store.rooms(), [])
        self.assertEqual(self.observed.resumed, [])

    def test_a_local_resume_goes_through_the_cluster(self) -> None:
        ann = self.enter(self.store.create_room("lobby", RoomRequest("ann"), Dialect.NATIVE))
        self.claims.take_over_answer = succeed(Resumption("here"))
        again = self.enter(self.store.join_room("lobby", RoomRequest("ann", resume="whatever"), Dialect.NATIVE))
        self.assertIsNot(again, ann)
        self.assertTrue(again.is_host)
        self.assertIsNone(self.store.member_for_token(ann.token))
        self.assertEqual(self.observed.resumed, [(again, ann)])
        self.assertEqual(credential_hash(self.claims.new_credentials[-1]), again.credential_hash)

    def test_the_duplicate_window_learns_what_the_log_holds(self) -> None:
        self.claims.take_over_answer = succeed(Resumption("elsewhere", ((7, 41, 1000), (8, 43, 1001))))
        request = RoomRequest("amy", features=frozenset({DELIVERY}), client_id="cl", resume="c")
        amy = self.enter(self.store.join_room("far", request, Dialect.NATIVE))
        self.assertEqual(self.claims.calls[-2], ("take_over", "far", "amy", "cl"))
        window = amy.window
        assert window is not None
        self.assertEqual(window.check(7), Duplicate(41, 1000))
        self.assertEqual(window.check(8), Duplicate(43, 1001))
        self.assertIs(window.check(9), Verdict.NEW)

    def test_a_member_that_resumed_elsewhere_is_dropped_quietly(self) -> None:
        ann = self.enter(self.store.create_room("lobby", RoomRequest("ann"), Dialect.NATIVE))
        bob = self.enter(self.store.join_room("lobby", RoomRequest("bob"), Dialect.NATIVE))
        room = ann.room
        self.store.moved_away(room, "bob")
        self.assertIsNone(self.store.member_for_token(bob.token))
        self.assertEqual(room.names(), ("ann", "bob"))
        self.assertIn("bob", room.remote_members)
        self.assertEqual(self.observed.left, [])
        self.assertEqual([previous for _, previous in self.observed.resumed], [bob])
        # The host moves: this node's copy is a replica, dropped here once nobody is left in it.
        self.store.moved_away(room, "ann")
        self.assertTrue(room.closed)
        self.assertEqual(self.observed.closed, [("lobby", CloseReason.NO_LOCAL_MEMBERS)])
        self.assertEqual(self.claims.calls[-1], ("closed", "lobby", (), CloseReason.NO_LOCAL_MEMBERS))
        self.assertNotIn("left", [call[0] for call in self.claims.calls])
        self.assertEqual(self.store.rooms(), [])
        self.store.expire()
        self.assertEqual(sum(self.store.stats.repaired.values()), 0)
