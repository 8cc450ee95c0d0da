"""Tests for chatd.rooms: the in-memory room registry, driven by a Clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from chatd.errors import (
    InvalidInvitationError,
    InvalidNameError,
    InvalidPasswordError,
    NotPermittedError,
    ProtocolError,
    RoomExistsError,
    RoomFullError,
    RoomNotFoundError,
    ServerFullError,
    UsernameTakenError,
)
from chatd.interfaces import IRoomObserver, IRoomStore
from chatd.passwords import PasswordHash
from chatd.payloads import Dialect, RoomRequest
from chatd.rooms import TOKEN_BYTES, CloseReason, LeaveReason, Member, Room, RoomRegistry
from chatd.settings import Settings
from tests.helpers import ManualRunner


@implementer(IRoomObserver)
class RecordingObserver:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def member_joined(self, member: Member) -> None:
        self.events.append(("joined", member.room.name, member.name))

    def member_left(self, member: Member, reason: LeaveReason) -> None:
        self.events.append(("left", member.room.name, member.name, reason.value))

    def room_closed(self, room: Room, members: list[Member], reason: CloseReason) -> None:
        self.events.append(("closed", room.name, *sorted(m.name for m in members), reason.name))


class RegistryTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.observer = RecordingObserver()
        self.registry = RoomRegistry(self.clock, Settings(password_cost=2, max_rooms=3, max_members=3))
        self.registry.observer = self.observer

    def result(self, deferred: Deferred[Member]) -> Member:
        return self.successResultOf(deferred)

    def refused(self, deferred: Deferred[Member], error: type[ProtocolError]) -> ProtocolError:
        failure = self.failureResultOf(deferred, error)
        assert isinstance(failure.value, ProtocolError)
        return failure.value

    def create(self, room: str = "hoge", user: str = "ann", password: str | None = None) -> Member:
        return self.result(self.registry.create_room(room, RoomRequest(user, password), Dialect.MODEL))

    def join(
        self, room: str = "hoge", user: str = "bob", password: str | None = None, invite: str | None = None
    ) -> Deferred[Member]:
        return self.registry.join_room(room, RoomRequest(user, password, invite), Dialect.SEED)


class CreateTests(RegistryTestCase):
    def test_creator_is_host(self) -> None:
        host = self.create()
        self.assertTrue(host.is_host)
        self.assertEqual(host.room.names(), ("ann",))
        self.assertIs(self.registry.member_for_token(host.token), host)
        self.assertEqual([room.name for room in self.registry.rooms()], ["hoge"])
        verifyObject(IRoomStore, self.registry)

    def test_token_is_128_bits_of_url_safe_text(self) -> None:
        tokens = {self.create(room=f"r{i}").token for i in range(3)}
        self.assertEqual(len(tokens), 3)
        for token in tokens:
            self.assertGreaterEqual(len(token) * 6, TOKEN_BYTES * 8)
            self.assertTrue(token.isascii())

    def test_room_name_must_be_unique(self) -> None:
        self.create()
        self.refused(self.registry.create_room("hoge", RoomRequest("cat"), Dialect.MODEL), RoomExistsError)

    def test_invalid_room_name(self) -> None:
        for name in ("", " x", "a\x00b", "x" * 65):
            self.refused(self.registry.create_room(name, RoomRequest("ann"), Dialect.MODEL), InvalidNameError)

    def test_room_limit(self) -> None:
        for i in range(3):
            self.create(room=f"r{i}")
        self.refused(self.registry.create_room("r3", RoomRequest("ann"), Dialect.MODEL), ServerFullError)

    def test_password_is_stored_only_as_hash(self) -> None:
        host = self.create(password="s3cret")
        stored = host.room.password_hash
        assert stored is not None
        self.assertIsInstance(stored, PasswordHash)
        self.assertNotIn(b"s3cret", stored.key + stored.salt)

    def test_no_password_work_without_password(self) -> None:
        calls: list[object] = []

        def counting_runner(work: object) -> Deferred[object]:
            calls.append(work)
            return succeed(work())  # type: ignore[operator]

        registry = RoomRegistry(self.clock, Settings(password_cost=2), counting_runner)
        self.successResultOf(registry.create_room("a", RoomRequest("ann"), Dialect.MODEL))
        self.successResultOf(registry.join_room("a", RoomRequest("bob"), Dialect.MODEL))
        self.assertEqual(calls, [])
        self.successResultOf(registry.create_room("b", RoomRequest("ann", "pw"), Dialect.MODEL))
        self.assertEqual(len(calls), 1)

    def test_name_reserved_while_hashing(self) -> None:
        runner = ManualRunner()
        registry = RoomRegistry(self.clock, Settings(password_cost=2), runner)
        first = registry.create_room("hoge", RoomRequest("ann", "pw"), Dialect.MODEL)
        second = registry.create_room("hoge", RoomRequest("bob", "pw"), Dialect.MODEL)
        self.failureResultOf(second, RoomExistsError)
        self.assertNoResult(first)
        runner.release()
        self.assertEqual(self.successResultOf(first).name, "ann")


class JoinTests(RegistryTestCase):
    def test_join_tells_others(self) -> None:
        self.create()
        bob = self.result(self.join())
        self.assertFalse(bob.is_host)
        self.assertEqual(bob.room.names(), ("ann", "bob"))
        self.assertEqual(self.observer.events, [("joined", "hoge", "bob")])

    def test_room_not_found(self) -> None:
        self.refused(self.join(), RoomNotFoundError)

    def test_duplicate_name(self) -> None:
        self.create()
        self.refused(self.join(user="ann"), UsernameTakenError)

    def test_room_full(self) -> None:
        self.create()
        self.result(self.join(user="b"))
        self.result(self.join(user="c"))
        self.refused(self.join(user="d"), RoomFullError)

    def test_password(self) -> None:
        self.create(password="pw")
        self.refused(self.join(), InvalidPasswordError)
        self.refused(self.join(password="wrong"), InvalidPasswordError)
        self.assertEqual(self.result(self.join(password="pw")).name, "bob")

    def test_password_ignored_for_open_room(self) -> None:
        self.create()
        self.result(self.join(password="anything"))

    def test_room_closed_while_password_checked(self) -> None:
        runner = ManualRunner()
        registry = RoomRegistry(self.clock, Settings(password_cost=2))
        host = self.successResultOf(registry.create_room("hoge", RoomRequest("ann", "pw"), Dialect.MODEL))
        registry._run_hash = runner
        joining = registry.join_room("hoge", RoomRequest("bob", "pw"), Dialect.MODEL)
        registry.leave(host, LeaveReason.LEFT)
        runner.release()
        self.failureResultOf(joining, RoomNotFoundError)


class InvitationTests(RegistryTestCase):
    def test_invitation_skips_password_once(self) -> None:
        host = self.create(password="pw")
        invite = self.registry.mint_invitation(host)
        self.assertEqual(self.result(self.join(invite=invite)).name, "bob")
        self.refused(self.join(user="cat", invite=invite), InvalidInvitationError)

    def test_invitation_is_for_its_room_only(self) -> None:
        host = self.create(password="pw")
        self.create(room="other", user="zed")
        invite = self.registry.mint_invitation(host)
        self.refused(self.join(room="other", invite=invite), InvalidInvitationError)
        # Not spent by the wrong room: it still works in its own, once.
        self.result(self.join(invite=invite))

    def test_invitation_tried_elsewhere_still_expires_cleanly(self) -> None:
        host = self.create()
        zed = self.create(room="other", user="zed")
        invite = self.registry.mint_invitation(host)
        self.refused(self.join(room="other", invite=invite), InvalidInvitationError)
        self.clock.advance(Settings().invite_ttl + 1)
        self.registry.touch(host)
        self.registry.touch(zed)
        self.registry.expire()
        self.assertEqual(host.room.invitations, {})

    def test_invitation_expires(self) -> None:
        host = self.create(password="pw")
        invite = self.registry.mint_invitation(host)
        self.clock.advance(Settings().invite_ttl + 1)
        self.refused(self.join(invite=invite), InvalidInvitationError)

    def test_stale_invitations_are_swept(self) -> None:
        host = self.create()
        self.registry.mint_invitation(host)
        self.clock.advance(Settings().invite_ttl + 1)
        host.last_active = self.clock.seconds()
        self.registry.expire()
        self.assertEqual(host.room.invitations, {})

    def test_invitation_dies_with_room(self) -> None:
        host = self.create()
        invite = self.registry.mint_invitation(host)
        self.registry.leave(host, LeaveReason.LEFT)
        self.create(user="new host")
        self.refused(self.join(invite=invite), InvalidInvitationError)


class DepartureTests(RegistryTestCase):
    def test_member_leaves(self) -> None:
        self.create()
        bob = self.result(self.join())
        self.registry.leave(bob, LeaveReason.LEFT)
        self.assertIsNone(self.registry.member_for_token(bob.token))
        self.assertEqual(self.registry.rooms()[0].names(), ("ann",))
        self.assertEqual(self.observer.events[-1], ("left", "hoge", "bob", "left"))

    def test_leaving_twice_is_harmless(self) -> None:
        self.create()
        bob = self.result(self.join())
        self.registry.leave(bob, LeaveReason.LEFT)
        self.registry.leave(bob, LeaveReason.LEFT)
        self.assertEqual(len(self.observer.events), 2)

    def test_host_leaving_closes_room(self) -> None:
        host = self.create()
        bob = self.result(self.join())
        self.registry.leave(host, LeaveReason.LEFT)
        self.assertEqual(self.registry.rooms(), [])
        self.assertIsNone(self.registry.member_for_token(bob.token))
        self.assertIsNone(self.registry.member_for_token(host.token))
        self.assertEqual(self.observer.events[-1], ("closed", "hoge", "ann", "bob", "HOST_LEFT"))
        self.assertTrue(host.room.closed)

    def test_idle_member_times_out(self) -> None:
        self.create()
        bob = self.result(self.join())
        ann = self.registry.rooms()[0].members["ann"]
        self.clock.advance(200)
        self.registry.touch(ann)
        self.clock.advance(100)
        self.registry.expire()
        self.assertIsNotNone(self.registry.member_for_token(bob.token))
        self.clock.advance(1)
        self.registry.expire()
        self.assertIsNone(self.registry.member_for_token(bob.token))
        self.assertEqual(self.observer.events[-1], ("left", "hoge", "bob", "timed_out"))

    def test_idle_host_closes_room(self) -> None:
        self.create()
        self.clock.advance(301)
        self.registry.expire()
        self.assertEqual(self.registry.rooms(), [])
        self.assertEqual(self.observer.events[-1], ("closed", "hoge", "ann", "HOST_TIMED_OUT"))

    def test_token_of_closed_room_stops_working(self) -> None:
        host = self.create()
        self.registry.close_room(host.room, CloseReason.SERVER_STOPPING)
        self.registry.close_room(host.room, CloseReason.SERVER_STOPPING)
        self.assertIsNone(self.registry.member_for_token(host.token))
        self.assertEqual(self.registry.member_count(), 0)
        self.assertEqual(len(self.observer.events), 1)

    def test_bind_address(self) -> None:
        host = self.create()
        self.registry.bind_address(host, ("127.0.0.1", 5000))
        self.assertEqual(host.address, ("127.0.0.1", 5000))


class NativeOnlyTests(RegistryTestCase):
    def test_native_only_room_refuses_legacy_members(self) -> None:
        request = RoomRequest("ann", version=1, native_only=True)
        host = self.result(self.registry.create_room("safe", request, Dialect.NATIVE))
        self.assertTrue(host.room.native_only)
        self.refused(self.join(room="safe"), NotPermittedError)
        native = self.registry.join_room("safe", RoomRequest("bob", version=1), Dialect.NATIVE)
        self.assertEqual(self.result(native).name, "bob")

    def test_only_native_clients_create_native_only_rooms(self) -> None:
        request = RoomRequest("ann", native_only=True)
        self.refused(self.registry.create_room("safe", request, Dialect.SEED), NotPermittedError)

    def test_members_get_a_rate_limit(self) -> None:
        host = self.create()
        assert host.rate_limit is not None
        self.assertTrue(host.rate_limit.allow(10))


class PasswordWorkTests(RegistryTestCase):
    def test_missing_password_is_refused_without_hashing(self) -> None:
        runner = ManualRunner()
        self.create(password="pw")
        self.registry._run_hash = runner
        self.refused(self.join(), InvalidPasswordError)
        self.assertEqual(runner.pending, [])
