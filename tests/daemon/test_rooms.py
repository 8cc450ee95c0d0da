"""Tests for chatd.daemon.rooms: the in-memory room registry, driven by a Clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from chatd.daemon import rooms
from chatd.daemon.interfaces import IRoomObserver, IRoomStore
from chatd.daemon.passwords import PasswordHash
from chatd.daemon.rooms import TOKEN_BYTES, CloseReason, LeaveReason, Member, Room, RoomRegistry, new_token, run_inline
from chatd.daemon.settings import Settings
from chatd.protocol.errors import (
    HashingBusyError,
    InvalidInvitationError,
    InvalidNameError,
    InvalidPasswordError,
    NotPermittedError,
    ProtocolError,
    RoomExistsError,
    RoomFullError,
    RoomNotFoundError,
    ServerFullError,
    Status,
    TooManyInvitationsError,
    TooManyRoomsError,
    UsernameTakenError,
)
from chatd.protocol.payloads import Dialect, RoomRequest
from chatd.protocol.seal import new_key_id
from tests.helpers import ManualRunner
from tests.store_checks import check_invariants, snapshot


@implementer(IRoomObserver)
class RecordingObserver:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def member_joined(self, member: Member) -> None:
        self.events.append(("joined", member.room.name, member.name))

    def member_left(self, member: Member, reason: LeaveReason) -> None:
        self.events.append(("left", member.room.name, member.name, reason.value))

    def member_resumed(self, member: Member, previous: Member) -> None:
        self.events.append(("resumed", member.room.name, member.name))

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


class InjectedError(Exception):
    """A failure a test puts in the middle of an operation."""


def raise_injected(*args: object, **kwargs: object) -> NoReturn:
    raise InjectedError("injected")


class LimitTestCase(SynchronousTestCase):
    """A registry with small limits, a held-back hash runner and a recording observer."""

    settings = Settings(password_cost=2, max_rooms=20, max_invitations=3, max_rooms_per_host=2, max_hashing=2)

    def setUp(self) -> None:
        self.clock = Clock()
        self.runner = ManualRunner()
        self.observer = RecordingObserver()
        self.registry = RoomRegistry(self.clock, self.settings, run_inline, self.observer)

    def create(
        self, room: str, origin: str = "", password: str | None = None, dialect: Dialect = Dialect.MODEL
    ) -> Deferred[Member]:
        return self.registry.create_room(room, RoomRequest("ann", password), dialect, origin=origin)

    def refused(self, deferred: Deferred[Member], error: type[ProtocolError]) -> ProtocolError:
        failure = self.failureResultOf(deferred, error)
        assert isinstance(failure.value, ProtocolError)
        return failure.value

    def check(self) -> None:
        check_invariants(self.registry, self.settings)


class InvitationLimitTests(LimitTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.host = self.successResultOf(self.create("hoge", password="pw"))

    def fill(self) -> list[str]:
        return [self.registry.mint_invitation(self.host) for _ in range(self.settings.max_invitations)]

    def test_refused_at_the_limit_as_room_full(self) -> None:
        self.fill()
        with self.assertRaises(TooManyInvitationsError) as raised:
            self.registry.mint_invitation(self.host)
        self.assertEqual(raised.exception.status, Status.ROOM_FULL)
        self.assertIn("3 live invitations", str(raised.exception))
        self.assertEqual(self.registry.stats.refused["invitations"], 1)
        self.assertEqual(len(self.host.room.invitations), 3)
        self.check()

    def test_a_spent_invitation_frees_a_place(self) -> None:
        invites = self.fill()
        joined = self.registry.join_room("hoge", RoomRequest("bob", invite=invites[0]), Dialect.SEED)
        self.successResultOf(joined)
        self.registry.mint_invitation(self.host)
        self.assertRaises(TooManyInvitationsError, self.registry.mint_invitation, self.host)
        self.check()

    def test_expired_invitations_free_their_places_without_a_sweep(self) -> None:
        self.fill()
        self.clock.advance(self.settings.invite_ttl + 1)
        fresh = self.registry.mint_invitation(self.host)
        self.assertEqual(list(self.host.room.invitations), [fresh])
        self.assertEqual(self.registry.stats.refused["invitations"], 0)
        self.check()

    def test_invitations_go_with_their_room(self) -> None:
        self.fill()
        self.registry.leave(self.host, LeaveReason.LEFT)
        self.assertEqual(self.registry._invitations, {})
        self.assertEqual(self.host.room.invitations, {})

    def test_only_a_live_member_invites(self) -> None:
        self.registry.leave(self.host, LeaveReason.LEFT)
        self.assertRaises(NotPermittedError, self.registry.mint_invitation, self.host)
        self.assertEqual(self.host.room.invitations, {})


class RoomsPerHostTests(LimitTestCase):
    def fill(self, origin: str = "192.0.2.7") -> list[Member]:
        return [
            self.successResultOf(self.create(f"{origin} {i}", origin)) for i in range(self.settings.max_rooms_per_host)
        ]

    def test_refused_at_the_limit_as_server_full(self) -> None:
        self.fill()
        error = self.refused(self.create("one more", "192.0.2.7"), TooManyRoomsError)
        self.assertEqual(error.status, Status.SERVER_FULL)
        self.assertIn("192.0.2.7", str(error))
        self.assertIn("limit of 2", str(error))
        self.assertEqual(self.registry.stats.refused["rooms_per_host"], 1)
        self.assertEqual(self.registry.rooms_of_origin("192.0.2.7"), 2)
        self.check()

    def test_refused_before_any_hashing(self) -> None:
        self.fill()
        self.registry._run_hash = self.runner
        self.refused(self.create("one more", "192.0.2.7", password="pw"), TooManyRoomsError)
        self.assertEqual(self.runner.pending, [])
        self.assertEqual(self.registry.stats.hashing_in_flight, 0)

    def test_other_addresses_are_not_affected(self) -> None:
        self.fill()
        self.successResultOf(self.create("elsewhere", "192.0.2.8"))
        self.assertEqual(self.registry.rooms_of_origin("192.0.2.8"), 1)

    def test_creates_in_progress_count(self) -> None:
        self.registry._run_hash = self.runner
        first = self.create("a", "192.0.2.7", password="pw")
        second = self.create("b", "192.0.2.7", password="pw")
        self.refused(self.create("c", "192.0.2.7"), TooManyRoomsError)
        self.runner.release()
        self.runner.release()
        self.successResultOf(first)
        self.successResultOf(second)
        self.check()

    def test_a_failed_create_gives_its_place_back(self) -> None:
        self.registry._run_hash = self.runner
        first = self.create("a", "192.0.2.7", password="pw")
        self.runner.pending.pop().errback(InjectedError())
        self.failureResultOf(first, InjectedError)
        self.assertEqual(self.registry.rooms_of_origin("192.0.2.7"), 0)
        self.fill()

    def test_every_way_a_room_closes_frees_its_place(self) -> None:
        origin = "192.0.2.7"
        ways: list[Callable[[Member], None]] = [
            lambda host: self.registry.leave(host, LeaveReason.LEFT),
            lambda host: self.registry.close_room(host.room, CloseReason.SERVER_STOPPING),
            lambda host: self.registry.close_room(host.room, CloseReason.HOST_LEFT),
        ]
        for way in ways:
            hosts = self.fill(origin)
            way(hosts[0])
            self.assertEqual(self.registry.rooms_of_origin(origin), 1)
            self.successResultOf(self.create("again", origin))
            self.registry.close_room(hosts[1].room, CloseReason.HOST_LEFT)
            self.registry.close_room(self.registry._rooms["again"], CloseReason.HOST_LEFT)
            self.assertEqual(self.registry.rooms_of_origin(origin), 0)
            self.check()

    def test_a_timed_out_room_frees_its_place(self) -> None:
        self.fill()
        self.clock.advance(self.settings.idle_timeout + 1)
        self.registry.expire()
        self.assertEqual(self.registry.rooms_of_origin("192.0.2.7"), 0)
        self.assertEqual(self.registry._rooms_by_origin, Counter())
        self.fill()

    def test_a_repaired_room_frees_its_place(self) -> None:
        hosts = self.fill()
        hosts[0].room.host = None
        self.registry.expire()
        self.assertEqual(self.registry.stats.repaired["rooms"], 1)
        self.assertEqual(self.registry.rooms_of_origin("192.0.2.7"), 1)
        self.check()

    def test_loopback_and_empty_origins_are_exempt(self) -> None:
        for origin in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", ""):
            for i in range(self.settings.max_rooms_per_host + 2):
                self.successResultOf(self.create(f"{origin}/{i}", origin))
            self.assertEqual(self.registry.rooms_of_origin(origin), 4)
        self.assertEqual(self.registry.stats.refused["rooms_per_host"], 0)
        self.check()

    def test_limit_loopback_limits_loopback_but_not_tools(self) -> None:
        self.registry = RoomRegistry(self.clock, replace(self.settings, limit_loopback=True))
        for origin in ("127.0.0.1", "::1"):
            self.fill(origin)
            self.refused(self.create(f"{origin} more", origin), TooManyRoomsError)
        for i in range(self.settings.max_rooms_per_host + 2):
            self.successResultOf(self.create(f"tool {i}", ""))
        self.assertEqual(self.registry.stats.refused["rooms_per_host"], 2)


class HashingLimitTests(LimitTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.locked = self.successResultOf(self.create("locked", password="pw")).room
        self.registry._run_hash = self.runner

    def join(self, user: str, password: str = "pw") -> Deferred[Member]:
        return self.registry.join_room("locked", RoomRequest(user, password), Dialect.SEED)

    def test_refused_when_full_without_hashing(self) -> None:
        creating = self.create("a", password="pw")
        joining = self.join("bob")
        self.assertEqual(self.registry.stats.hashing_in_flight, 2)
        before = snapshot(self.registry)
        error = self.refused(self.create("b", password="pw"), HashingBusyError)
        self.assertEqual(error.status, Status.RATE_LIMITED)
        self.assertIn("too many passwords", str(error))
        self.refused(self.join("cat"), HashingBusyError)
        self.assertEqual(self.registry.stats.refused["hashing"], 2)
        self.assertEqual(len(self.runner.pending), 2)
        self.assertEqual(snapshot(self.registry), before)
        # Work without a password is not held up.
        self.successResultOf(self.create("open"))
        self.runner.release()
        self.runner.release()
        self.successResultOf(creating)
        self.successResultOf(joining)
        self.assertEqual(self.registry.stats.hashing_in_flight, 0)
        self.check()

    def test_a_finished_hash_frees_a_place(self) -> None:
        creating = self.create("a", password="pw")
        joining = self.join("bob", "wrong")
        self.refused(self.create("b", password="pw"), HashingBusyError)
        self.runner.release()
        self.runner.release()
        self.successResultOf(creating)
        self.refused(joining, InvalidPasswordError)
        self.assertEqual(self.registry.stats.hashing_in_flight, 0)
        third = self.create("b", password="pw")
        self.assertEqual(self.registry.stats.hashing_in_flight, 1)
        self.runner.release()
        self.successResultOf(third)

    def test_a_failed_hash_frees_its_place(self) -> None:
        creating = self.create("a", password="pw")
        self.runner.pending.pop().errback(InjectedError())
        self.failureResultOf(creating, InjectedError)
        self.assertEqual(self.registry.stats.hashing_in_flight, 0)

    def test_a_runner_that_raises_frees_its_place(self) -> None:
        self.registry._run_hash = raise_injected
        self.failureResultOf(self.join("bob"), InjectedError)
        self.assertEqual(self.registry.stats.hashing_in_flight, 0)

    def test_a_cancelled_request_stays_counted_until_its_hash_is_done(self) -> None:
        # The peer went away, but the thread is still hashing and holding memory.
        creating = self.create("a", password="pw")
        creating.cancel()
        self.failureResultOf(creating, CancelledError)
        self.assertEqual(self.registry.rooms(), [self.locked])
        self.assertEqual(self.registry.stats.hashing_in_flight, 1)
        self.runner.release()
        self.assertEqual(self.registry.stats.hashing_in_flight, 0)
        self.assertEqual(self.registry.rooms(), [self.locked])
        self.check()


class AtomicCreateTests(LimitTestCase):
    """A create that fails at any point leaves the store exactly as it was."""

    origin = "192.0.2.7"

    def setUp(self) -> None:
        super().setUp()
        self.before = snapshot(self.registry)

    def check_untouched(self) -> None:
        self.assertEqual(snapshot(self.registry), self.before)
        self.assertEqual(self.registry.rooms(), [])
        self.assertEqual(self.registry.member_count(), 0)
        self.assertEqual(self.registry.rooms_of_origin(self.origin), 0)
        self.assertEqual(self.registry.stats.hashing_in_flight, 0)
        self.check()
        # The name and the origin's places are free again.
        self.registry._run_hash = run_inline
        for i in range(self.settings.max_rooms_per_host):
            self.successResultOf(self.create(f"hoge{i or ''}", self.origin, password="pw", dialect=Dialect.NATIVE))

    def test_hash_runner_raising(self) -> None:
        self.registry._run_hash = raise_injected
        self.failureResultOf(self.create("hoge", self.origin, password="pw"), InjectedError)
        self.check_untouched()

    def test_hash_failing_later(self) -> None:
        self.registry._run_hash = self.runner
        creating = self.create("hoge", self.origin, password="pw")
        self.refused(self.create("hoge", "192.0.2.8"), RoomExistsError)
        self.runner.pending.pop().errback(InjectedError())
        self.failureResultOf(creating, InjectedError)
        self.check_untouched()

    def test_token_generation_raising(self) -> None:
        self.patch(rooms, "new_token", raise_injected)
        self.failureResultOf(self.create("hoge", self.origin), InjectedError)
        self.patch(rooms, "new_token", new_token)
        self.check_untouched()

    def test_key_generation_raising(self) -> None:
        self.patch(rooms, "new_key_id", raise_injected)
        self.failureResultOf(self.create("hoge", self.origin, dialect=Dialect.NATIVE), InjectedError)
        self.patch(rooms, "new_key_id", new_key_id)
        self.check_untouched()

    def test_registration_raising_half_way(self) -> None:
        register = self.registry._register_member

        def register_then_fail(member: Member) -> None:
            register(member)
            raise RecursionError("maximum recursion depth exceeded")

        self.patch(self.registry, "_register_member", register_then_fail)
        self.failureResultOf(self.create("hoge", self.origin, dialect=Dialect.NATIVE), RecursionError)
        self.patch(self.registry, "_register_member", register)
        self.check_untouched()

    def test_new_member_raising(self) -> None:
        self.patch(self.registry, "_new_member", raise_injected)
        self.failureResultOf(self.create("hoge", self.origin), InjectedError)
        self.patch(self.registry, "_new_member", RoomRegistry._new_member.__get__(self.registry))
        self.check_untouched()

    def test_hashing_busy(self) -> None:
        self.registry = RoomRegistry(self.clock, replace(self.settings, max_hashing=0))
        self.before = snapshot(self.registry)
        self.refused(self.create("hoge", self.origin, password="pw"), HashingBusyError)
        self.assertEqual(snapshot(self.registry), self.before)
        self.assertEqual(self.registry.rooms_of_origin(self.origin), 0)

    def test_many_failures_never_fill_the_server(self) -> None:
        # The attack of issue 9: each failed create used to leave a hostless room.
        self.patch(rooms, "new_token", raise_injected)
        for i in range(self.settings.max_rooms + 5):
            self.failureResultOf(self.create(f"r{i}", f"192.0.2.{i}"), InjectedError)
        self.patch(rooms, "new_token", new_token)
        self.check_untouched()


class AtomicJoinTests(LimitTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.host = self.successResultOf(self.create("hoge", password="pw", dialect=Dialect.NATIVE))
        self.registry.bind_address(self.host, ("192.0.2.1", 4000))
        self.invite = self.registry.mint_invitation(self.host)
        self.before = snapshot(self.registry)

    def join(self, **request: Any) -> Deferred[Member]:
        return self.registry.join_room("hoge", RoomRequest("bob", **request), Dialect.NATIVE)

    def check_untouched(self) -> None:
        self.assertEqual(snapshot(self.registry), self.before)
        self.assertEqual(self.host.room.names(), ("ann",))
        self.check()

    def test_observer_raising(self) -> None:
        self.patch(self.observer, "member_joined", raise_injected)
        self.failureResultOf(self.join(password="pw"), InjectedError)
        self.check_untouched()

    def test_observer_raising_gives_the_invitation_back(self) -> None:
        self.patch(self.observer, "member_joined", raise_injected)
        self.failureResultOf(self.join(invite=self.invite), InjectedError)
        self.check_untouched()
        self.patch(self.observer, "member_joined", RecordingObserver.member_joined.__get__(self.observer))
        self.assertEqual(self.successResultOf(self.join(invite=self.invite)).name, "bob")
        self.assertEqual(self.host.room.invitations, {})

    def test_registration_raising_half_way(self) -> None:
        register = self.registry._register_member

        def register_then_fail(member: Member) -> None:
            register(member)
            raise InjectedError()

        self.patch(self.registry, "_register_member", register_then_fail)
        self.failureResultOf(self.join(password="pw"), InjectedError)
        self.check_untouched()

    def test_key_generation_raising(self) -> None:
        self.patch(rooms, "new_key_id", raise_injected)
        self.failureResultOf(self.join(password="pw"), InjectedError)
        self.check_untouched()

    def test_check_failing_later(self) -> None:
        self.registry._run_hash = self.runner
        joining = self.join(password="pw")
        self.runner.pending.pop().errback(InjectedError())
        self.failureResultOf(joining, InjectedError)
        self.check_untouched()


class RepairTests(LimitTestCase):
    """expire() removes what a bug left behind, and counts it."""

    def setUp(self) -> None:
        super().setUp()
        self.host = self.successResultOf(self.create("hoge", "192.0.2.7", dialect=Dialect.NATIVE))
        self.bob = self.successResultOf(self.registry.join_room("hoge", RoomRequest("bob", version=1), Dialect.NATIVE))
        self.registry.mint_invitation(self.host)

    def check_repaired(self, **counts: int) -> None:
        self.registry.expire()
        self.assertEqual(dict(self.registry.stats.repaired), counts)
        self.check()
        self.assertEqual(self.registry.rooms_of_origin("192.0.2.7"), 0)
        self.assertEqual(self.registry.member_count(), 0)
        self.assertEqual(self.registry._invitations, {})
        self.assertEqual(self.registry._by_key_id, {})
        self.successResultOf(self.create("hoge", "192.0.2.7"))

    def test_a_healthy_store_needs_no_repair(self) -> None:
        self.registry.expire()
        self.assertEqual(self.registry.stats.repaired, Counter())

    def test_room_without_host(self) -> None:
        self.host.room.host = None
        self.check_repaired(rooms=1)
        self.assertEqual(self.observer.events[-1], ("closed", "hoge", "ann", "bob", "BROKEN"))

    def test_room_whose_host_is_not_a_member(self) -> None:
        del self.host.room.members["ann"]
        self.check_repaired(rooms=1, members=1)

    def test_room_whose_host_holds_no_token(self) -> None:
        del self.registry._by_token[self.host.token]
        self.check_repaired(rooms=1, members=1)

    def test_member_of_a_closed_room(self) -> None:
        room = self.host.room
        # As if a close had forgotten the room but not its members.
        room.closed = True
        del self.registry._rooms["hoge"]
        self.registry._rooms_by_origin.clear()
        self.registry.expire()
        self.assertEqual(self.registry.stats.repaired["members"], 2)
        self.assertEqual(self.registry.stats.repaired["invitations"], 1)
        self.assertIsNone(self.registry.member_for_token(self.bob.token))
        self.assertIn(("left", "hoge", "bob", "left"), self.observer.events)
        self.check()

    def test_room_with_a_host_from_elsewhere(self) -> None:
        other = self.successResultOf(self.create("other"))
        self.host.room.host = other
        self.registry.expire()
        self.assertEqual(self.registry.stats.repaired["rooms"], 1)
        self.assertEqual([room.name for room in self.registry.rooms()], ["other"])
        self.check()

    def test_drifted_origin_counts_are_recounted(self) -> None:
        self.registry._rooms_by_origin["192.0.2.99"] = 5
        self.registry.expire()
        self.assertEqual(self.registry.stats.repaired["origins"], 1)
        self.assertEqual(self.registry.rooms_of_origin("192.0.2.99"), 0)
        self.check()
