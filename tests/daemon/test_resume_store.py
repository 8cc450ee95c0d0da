"""
The in-memory store's side of a resume (RoomRegistry.resume_member,
take_over): a native member takes its own place back with its resume
credential, once per credential, and the old membership stops at once.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from chatd.daemon.cluster.records import new_credential as cluster_credential
from chatd.daemon.cluster.records import secret_hash
from chatd.daemon.interfaces import IRoomObserver
from chatd.daemon.rooms import CloseReason, LeaveReason, Member, Room, RoomRegistry, credential_hash, new_credential
from chatd.daemon.settings import Settings
from chatd.protocol.errors import InvalidPasswordError, RoomNotFoundError
from chatd.protocol.payloads import DELIVERY, Dialect, RoomRequest
from tests.store_checks import check_invariants, snapshot


@implementer(IRoomObserver)
class ResumeObserver:
    """Records every call, so that a resume shows as one C{resumed} and never a left and a joined."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def member_joined(self, member: Member) -> None:
        self.events.append(("joined", member.name))

    def member_left(self, member: Member, reason: LeaveReason) -> None:
        self.events.append(("left", member.name, reason.value))

    def member_resumed(self, member: Member, previous: Member) -> None:
        self.events.append(("resumed", member.name, previous.token))

    def room_closed(self, room: Room, members: list[Member], reason: CloseReason) -> None:
        self.events.append(("closed", room.name, reason.name))


def native(
    user: str, *, resume: str | None = None, password: str | None = None, client: str | None = None
) -> RoomRequest:
    return RoomRequest(user, password, None, 1, features=frozenset({DELIVERY}), client_id=client, resume=resume)


class ResumeStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.settings = Settings(password_cost=2, max_members=3)
        self.registry = RoomRegistry(self.clock, self.settings)
        self.observer = ResumeObserver()
        self.registry.observer = self.observer
        verifyObject(IRoomObserver, self.observer)
        self.host = self.successResultOf(
            self.registry.create_room("hoge", native("ann", password="pw", client="annsclient"), Dialect.NATIVE)
        )
        self.bob = self.successResultOf(
            self.registry.join_room("hoge", native("bob", password="pw", client="bobsclient"), Dialect.NATIVE)
        )
        self.observer.events.clear()

    def resume(self, user: str, credential: str | None, client: str | None = None) -> Deferred[Member]:
        return self.registry.join_room("hoge", native(user, resume=credential, client=client), Dialect.NATIVE)

    def test_native_members_get_a_credential_once(self) -> None:
        credential = self.host.take_credential()
        assert credential is not None
        self.assertEqual(len(credential), 43)
        self.assertEqual(self.host.credential_hash, credential_hash(credential))
        self.assertIsNone(self.host.take_credential(), "the store keeps only the hash once it was handed out")

    def test_legacy_members_get_none(self) -> None:
        legacy = self.successResultOf(self.registry.join_room("hoge", RoomRequest("cat", "pw"), Dialect.SEED))
        self.assertIsNone(legacy.credential)
        self.assertIsNone(legacy.credential_hash)

    def test_the_hash_is_the_cluster_directorys(self) -> None:
        """A member's hash means the same in memory and in Redis (records.secret_hash)."""
        for credential in (new_credential(), cluster_credential(), "x"):
            self.assertEqual(credential_hash(credential), secret_hash(credential))

    def test_host_resumes_its_role(self) -> None:
        credential = self.host.take_credential()
        old_token, old_key_id = self.host.token, self.host.channel.key_id if self.host.channel else 0
        resumed = self.successResultOf(self.resume("ann", credential))
        room = resumed.room
        self.assertIs(room.host, resumed)
        self.assertTrue(resumed.is_host)
        self.assertEqual(room.names(), ("ann", "bob"), "the same place in the member list")
        self.assertIsNone(self.registry.member_for_token(old_token), "the old token stops at once")
        self.assertIsNone(self.registry.member_for_key_id(old_key_id), "the old key too")
        self.assertIs(self.registry.member_for_token(resumed.token), resumed)
        self.assertNotEqual(resumed.token, old_token)
        self.assertEqual(self.observer.events, [("resumed", "ann", old_token)], "no left and joined pair")
        self.assertIn(resumed, room.delivery_members)
        self.assertNotIn(self.host, room.delivery_members)
        check_invariants(self.registry, self.settings)

    def test_a_fresh_credential_each_time(self) -> None:
        first = self.bob.take_credential()
        resumed = self.successResultOf(self.resume("bob", first))
        second = resumed.take_credential()
        assert second is not None
        self.assertNotEqual(first, second)
        again = self.successResultOf(self.resume("bob", second))
        self.assertEqual(again.room.names(), ("ann", "bob"))

    def test_a_credential_serves_once(self) -> None:
        credential = self.bob.take_credential()
        resumed = self.successResultOf(self.resume("bob", credential))
        before = snapshot(self.registry)
        error = self.failureResultOf(self.resume("bob", credential), InvalidPasswordError).value
        self.assertIn("resume credential", str(error))
        self.assertEqual(snapshot(self.registry), before, "a refused resume changes nothing")
        self.assertIs(self.registry.member_for_token(resumed.token), resumed)

    def test_wrong_credential_refused(self) -> None:
        before = snapshot(self.registry)
        self.failureResultOf(self.resume("bob", new_credential()), InvalidPasswordError)
        # Another member's credential names another member.
        self.failureResultOf(self.resume("bob", self.host.take_credential()), InvalidPasswordError)
        self.assertEqual(snapshot(self.registry), before)
        self.assertEqual(self.observer.events, [])

    def test_a_member_that_is_gone_cannot_resume(self) -> None:
        credential = self.bob.take_credential()
        self.registry.leave(self.bob, LeaveReason.LEFT)
        self.failureResultOf(self.resume("bob", credential), InvalidPasswordError)
        self.assertEqual(self.host.room.names(), ("ann",))

    def test_a_closed_room_cannot_be_resumed(self) -> None:
        credential = self.host.take_credential()
        self.registry.leave(self.host, LeaveReason.LEFT)
        self.failureResultOf(self.resume("ann", credential), RoomNotFoundError)

    def test_a_resume_needs_no_password_and_no_room_space(self) -> None:
        """The credential stands for the password, and the member takes its own place (max_members is 3)."""
        self.successResultOf(self.registry.join_room("hoge", native("cat", password="pw"), Dialect.NATIVE))
        resumed = self.successResultOf(self.resume("bob", self.bob.take_credential()))
        self.assertEqual(resumed.room.names(), ("ann", "bob", "cat"))

    def test_a_legacy_request_cannot_resume(self) -> None:
        """Only a native request carries a credential (the parser drops a legacy one's): a legacy join is a join."""
        request = RoomRequest("bob", "pw", resume=self.bob.take_credential())
        self.failureResultOf(self.registry.join_room("hoge", request, Dialect.SEED))
        self.assertIs(self.host.room.members["bob"], self.bob)

    def test_same_client_id_keeps_its_duplicate_window(self) -> None:
        window = self.bob.window
        assert window is not None
        window.record(7, 1, 1000)
        resumed = self.successResultOf(self.resume("bob", self.bob.take_credential(), client="bobsclient"))
        self.assertIs(resumed.window, window, "the same (user name, client id): the same window")
        self.assertIsNone(self.bob.window)
        self.assertEqual(resumed.window_key, ("bob", "bobsclient"))

    def test_rate_limit_carries_over(self) -> None:
        limit = self.bob.rate_limit
        resumed = self.successResultOf(self.resume("bob", self.bob.take_credential()))
        self.assertIs(resumed.rate_limit, limit, "a resume is no way to a fresh allowance")

    def test_old_membership_leaving_later_changes_nothing(self) -> None:
        """The old connection closes after the take-over: its leave is of a member that is no longer live."""
        resumed = self.successResultOf(self.resume("ann", self.host.take_credential()))
        self.registry.leave(self.host, LeaveReason.LEFT)
        self.assertFalse(resumed.room.closed)
        self.assertIs(resumed.room.host, resumed)
        self.registry.expire()
        self.assertEqual(dict(self.registry.stats.repaired), {})
        check_invariants(self.registry, self.settings)

    def test_an_observer_that_fails_undoes_the_take_over(self) -> None:
        credential = self.host.take_credential()
        before = snapshot(self.registry)

        def broken(member: Member, previous: Member) -> None:
            raise RuntimeError("injected")

        self.patch(self.observer, "member_resumed", broken)
        self.failureResultOf(self.resume("ann", credential), RuntimeError)
        self.assertEqual(snapshot(self.registry), before, "the old membership stands")
        self.assertIs(self.host.room.host, self.host)
        check_invariants(self.registry, self.settings)
        self.patch(self.observer, "member_resumed", ResumeObserver.member_resumed.__get__(self.observer))
        self.assertTrue(self.successResultOf(self.resume("ann", credential)).is_host, "its credential still good")
