"""
A state machine against RoomRegistry: random sequences of every operation,
with password work that fails, or finishes later in any order, and failures
injected in the middle of creates and joins; after every step the indexes
must agree with each other (tests/store_checks.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.daemon.interfaces import IRoomObserver
from chatd.daemon.rooms import CloseReason, LeaveReason, Member, Room, RoomRegistry
from chatd.daemon.settings import Settings
from chatd.protocol.errors import ProtocolError
from chatd.protocol.payloads import Dialect, RoomRequest
from tests.store_checks import check_invariants, live_members, snapshot

SETTINGS = Settings(
    password_cost=2,
    max_rooms=5,
    max_members=4,
    max_invitations=3,
    max_rooms_per_host=2,
    max_hashing=2,
    idle_timeout=300.0,
    invite_ttl=100.0,
)
ROOM_NAMES = ("a", "b", "c")
USER_NAMES = ("ann", "bob", "cat", "dan", "eve")
ORIGINS = ("", "127.0.0.1", "::1", "192.0.2.1", "192.0.2.2")
FAILURE_POINTS = ("token", "key_id", "register", "observer_joined", "observer_other")


class InjectedError(Exception):
    """A failure the machine puts in the middle of an operation."""


class HashFailedError(Exception):
    """The password runner's work failed (a thread died, say)."""


class ControlledRunner:
    """Password work that runs at once, raises at once, or waits to be finished (or failed) later."""

    def __init__(self) -> None:
        self.mode = "inline"
        self.pending: list[tuple[Deferred[Any], Callable[[], Any]]] = []

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        if self.mode == "raise":
            raise HashFailedError("the runner is broken")
        if self.mode == "inline":
            return succeed(work())
        if self.mode == "fail":
            return fail(HashFailedError("the hash failed"))
        waiting: Deferred[Any] = Deferred()
        self.pending.append((waiting, work))
        return waiting

    def finish(self, index: int, failing: bool) -> None:
        waiting, work = self.pending.pop(index % len(self.pending))
        if failing:
            waiting.errback(HashFailedError("the hash failed later"))
        else:
            waiting.callback(work())


@implementer(IRoomObserver)
class FailingObserver:
    """Records nothing; raises once when told to, as a buggy notifier would."""

    def __init__(self) -> None:
        self.fail_joined = False
        self.fail_other = False

    def member_joined(self, member: Member) -> None:
        if self.fail_joined:
            self.fail_joined = False
            raise InjectedError("observer failed on join")

    def member_left(self, member: Member, reason: LeaveReason) -> None:
        self._other()

    def member_resumed(self, member: Member, previous: Member) -> None:
        self._other()

    def room_closed(self, room: Room, members: list[Member], reason: CloseReason) -> None:
        self._other()

    def _other(self) -> None:
        if self.fail_other:
            self.fail_other = False
            raise InjectedError("observer failed on a departure")


class FailingRegistry(RoomRegistry):
    """A RoomRegistry whose steps can be told to fail once."""

    armed: set[str]

    def _trip(self, point: str) -> None:
        if point in self.armed:
            self.armed.discard(point)
            raise InjectedError(point)

    def _fresh_token(self) -> str:
        self._trip("token")
        return super()._fresh_token()

    def _fresh_key_id(self) -> int:
        self._trip("key_id")
        return super()._fresh_key_id()

    def _register_member(self, member: Member) -> None:
        # Half of the work done, then the failure: the worst place for it.
        super()._register_member(member)
        self._trip("register")


EXPECTED_FAILURES = (ProtocolError, InjectedError, HashFailedError, CancelledError)


class RegistryMachine(RuleBasedStateMachine):
    @initialize(limit_loopback=st.booleans())
    def start(self, limit_loopback: bool) -> None:
        self.settings = Settings(**{**_fields(SETTINGS), "limit_loopback": limit_loopback})
        self.clock = Clock()
        self.runner = ControlledRunner()
        self.observer = FailingObserver()
        self.registry = FailingRegistry(self.clock, self.settings, self.runner, self.observer)
        self.registry.armed = set()
        self.members: list[Member] = []
        self.rooms_seen: list[Room] = []
        self.invitations: list[str] = []
        self.requests: list[Deferred[Member]] = []
        self.unexpected: list[Failure] = []
        self.repairs_caused = 0

    # -- requests -----------------------------------------------------------

    def _track(self, deferred: Deferred[Member]) -> list[Member | Failure]:
        """Follow a request; the list gets its outcome once it has one."""
        outcome: list[Member | Failure] = []

        def entered(member: Member) -> None:
            outcome.append(member)
            self.members.append(member)
            if member.room not in self.rooms_seen:
                self.rooms_seen.append(member.room)

        def refused(failure: Failure) -> None:
            outcome.append(failure)
            if not failure.check(*EXPECTED_FAILURES):
                self.unexpected.append(failure)

        self.requests.append(deferred)
        deferred.addCallbacks(entered, refused)
        return outcome

    def _settle(self, outcome: list[Member | Failure], before: dict[str, Any], may_change: bool) -> None:
        """A request refused at once must have changed nothing (counters of refusals aside)."""
        if outcome and isinstance(outcome[0], Failure) and not may_change:
            assert snapshot(self.registry) == before, outcome[0]

    @rule(
        name=st.sampled_from(ROOM_NAMES),
        user=st.sampled_from(USER_NAMES),
        locked=st.booleans(),
        origin=st.sampled_from(ORIGINS),
        native=st.booleans(),
    )
    def create(self, name: str, user: str, locked: bool, origin: str, native: bool) -> None:
        before = snapshot(self.registry)
        request = RoomRequest(user, f"pw-{name}" if locked else None)
        dialect = Dialect.NATIVE if native else Dialect.MODEL
        created = self._track(self.registry.create_room(name, request, dialect, origin=origin))
        self._settle(created, before, may_change=False)

    @rule(
        name=st.sampled_from(ROOM_NAMES),
        user=st.sampled_from(USER_NAMES),
        how=st.sampled_from(("password", "password", "wrong", "none", "invitation", "invitation")),
        pick=st.integers(0, 100),
        native=st.booleans(),
    )
    def join(self, name: str, user: str, how: str, pick: int, native: bool) -> None:
        before = snapshot(self.registry)
        invite = self.invitations[pick % len(self.invitations)] if how == "invitation" and self.invitations else None
        password = {"password": f"pw-{name}", "wrong": "nope"}.get(how)
        dialect = Dialect.NATIVE if native else Dialect.SEED
        joined = self._track(self.registry.join_room(name, RoomRequest(user, password, invite), dialect))
        # Trying an invitation spends it, even when the join is refused for it.
        self._settle(joined, before, may_change=invite is not None)

    @precondition(lambda self: self.requests)
    @rule(pick=st.integers(0, 100))
    def cancel_request(self, pick: int) -> None:
        # The peer went away while its password was being hashed.
        self.requests[pick % len(self.requests)].cancel()

    @precondition(lambda self: self.runner.pending)
    @rule(pick=st.integers(0, 100), failing=st.booleans())
    def finish_hash(self, pick: int, failing: bool) -> None:
        self.runner.finish(pick, failing)

    @rule(mode=st.sampled_from(("inline", "later", "later", "raise", "fail")))
    def runner_mode(self, mode: str) -> None:
        self.runner.mode = mode

    @rule(point=st.sampled_from(FAILURE_POINTS))
    def arm_failure(self, point: str) -> None:
        if point == "observer_joined":
            self.observer.fail_joined = True
        elif point == "observer_other":
            self.observer.fail_other = True
        else:
            self.registry.armed.add(point)

    # -- members ------------------------------------------------------------

    def _member(self, pick: int) -> Member:
        return self.members[pick % len(self.members)]

    def _departure(self, action: Callable[[], object]) -> None:
        # An observer that fails on a departure fails the call, after the
        # store has done its part.
        with contextlib.suppress(InjectedError):
            action()

    @precondition(lambda self: self.members)
    @rule(pick=st.integers(0, 100), timed_out=st.booleans())
    def leave(self, pick: int, timed_out: bool) -> None:
        reason = LeaveReason.TIMED_OUT if timed_out else LeaveReason.LEFT
        self._departure(lambda: self.registry.leave(self._member(pick), reason))

    @precondition(lambda self: self.members)
    @rule(pick=st.integers(0, 100), reason=st.sampled_from(CloseReason))
    def close_room(self, pick: int, reason: CloseReason) -> None:
        self._departure(lambda: self.registry.close_room(self._member(pick).room, reason))

    @precondition(lambda self: self.members)
    @rule(pick=st.integers(0, 100))
    def mint_invitation(self, pick: int) -> None:
        with contextlib.suppress(ProtocolError, InjectedError):
            self.invitations.append(self.registry.mint_invitation(self._member(pick)))

    @precondition(lambda self: self.members)
    @rule(pick=st.integers(0, 100), confirm=st.booleans())
    def rekey(self, pick: int, confirm: bool) -> None:
        member = self._member(pick)
        try:
            self.registry.rekey(member)
        except (ProtocolError, InjectedError):
            return
        if confirm:
            self.registry.confirm_key(member)

    @precondition(lambda self: self.members)
    @rule(pick=st.integers(0, 100), port=st.integers(1, 3))
    def bind_address(self, pick: int, port: int) -> None:
        self.registry.bind_address(self._member(pick), ("192.0.2.50", port))

    @precondition(lambda self: self.members)
    @rule(pick=st.integers(0, 100))
    def touch(self, pick: int) -> None:
        self.registry.touch(self._member(pick))

    @rule(seconds=st.sampled_from((0.0, 50.0, 101.0, 301.0)))
    def expire(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._departure(self.registry.expire)

    @precondition(lambda self: self.registry.rooms())
    @rule(pick=st.integers(0, 100))
    def break_and_repair(self, pick: int) -> None:
        # As the bug of issue 9 did: a room left without a host. The next
        # sweep must remove it and say so.
        rooms = self.registry.rooms()
        rooms[pick % len(rooms)].host = None
        self.observer.fail_other = False
        self.registry.expire()
        self.repairs_caused += 1

    # -- invariants ---------------------------------------------------------

    @invariant()
    def indexes_agree(self) -> None:
        check_invariants(self.registry, self.settings, self.rooms_seen)

    @invariant()
    def hashing_counts_unfinished_work(self) -> None:
        assert self.registry.stats.hashing_in_flight == len(self.runner.pending)

    @invariant()
    def every_member_was_told_it_entered(self) -> None:
        # A request that failed must not have left its member behind.
        handed_out = {id(member) for member in self.members}
        strays = [member.name for member in live_members(self.registry) if id(member) not in handed_out]
        assert not strays, strays

    @invariant()
    def only_expected_failures(self) -> None:
        assert not self.unexpected, [failure.getTraceback() for failure in self.unexpected]

    @invariant()
    def repairs_only_for_what_was_broken(self) -> None:
        assert self.registry.stats.repaired["rooms"] == self.repairs_caused, dict(self.registry.stats.repaired)
        assert set(self.registry.stats.repaired) <= {"rooms"}, dict(self.registry.stats.repaired)

    def teardown(self) -> None:
        # Whatever is still waiting finishes, and leaves everything consistent.
        while getattr(self, "runner", None) and self.runner.pending:
            self.runner.finish(0, failing=False)
            check_invariants(self.registry, self.settings, self.rooms_seen)
        if hasattr(self, "registry"):
            assert self.registry.stats.hashing_in_flight == 0


def _fields(value: Settings) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__dataclass_fields__}


RegistryMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class RegistryMachineTests(RegistryMachine.TestCase):  # type: ignore[misc,valid-type]
    """The state machine as a unittest TestCase, for trial and pytest alike."""

    def test_random_sequences(self) -> None:
        # trial collects test_* methods only; hypothesis's TestCase names its one runTest.
        self.runTest()
