"""
chatd.client.chat_client's reconnect policy and UDP-path reporting, on a task.Clock
against the scripted server of tests/fake_chatd.py: who may create the room
again after a restart, how a member waits for its host (backoff, jitter,
deadline), and when a silent UDP path is reported and cleared.

tests/client/test_client_restart.py checks the same against a real daemon killed
and restarted; these check the timings exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from chatd.client.chat_client import UDP_CONFIRM_WAIT, ChatClient, ConnectionState, IChatListener, RoomInfo
from chatd.client.events import (
    ChatEvent,
    ConnectionLost,
    Reconnected,
    Reconnecting,
    UdpPathLost,
    UdpPathRestored,
    WaitingForHost,
)
from chatd.protocol.wire import Operation
from tests.fake_chatd import LATENCY, SERVER, TCP_PORT, UDP_PORT, FakeChatd

E = TypeVar("E")
T = TypeVar("T")


@implementer(IChatListener)
class Heard:
    def __init__(self) -> None:
        self.events: list[ChatEvent] = []

    def chat_event(self, event: ChatEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]


def result_of(deferred: Deferred[T]) -> T:
    """The result a Deferred already has (the fake server answers TCP at once)."""
    results: list[T | Failure] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert not isinstance(result, Failure)
    return result


def waits(heard: Heard) -> list[tuple[int, float, float]]:
    """Each WaitingForHost heard: attempt, delay and seconds left, rounded past the clock's float noise."""
    return [(wait.attempt, round(wait.delay, 6), round(wait.gives_up_in, 6)) for wait in heard.of(WaitingForHost)]


def fixed(*numbers: float) -> Iterator[float]:
    """A jitter source that gives C{numbers}, then repeats the last one."""
    return itertools.chain(numbers, itertools.repeat(numbers[-1]))


class _FakeServerTest(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = FakeChatd(self)
        self.clock = self.server.reactor

    def client(self, jitter: Iterator[float] | None = None, **options: Any) -> tuple[ChatClient, Heard]:
        heard = Heard()
        numbers = jitter if jitter is not None else fixed(0.0)
        client = ChatClient(
            self.clock, SERVER, TCP_PORT, UDP_PORT, heard, jitter_source=lambda: next(numbers), **options
        )
        return client, heard

    def entered(self, entering: Deferred[RoomInfo]) -> RoomInfo:
        """Let the first keepalive's answer arrive, and the create or join end."""
        self.clock.advance(LATENCY)
        return result_of(entering)

    def room_of_two(self, **bob_options: Any) -> tuple[ChatClient, Heard, ChatClient, Heard]:
        """alice hosts 'hoge' (password 'pw'); bob is in it. alice retries every 10 s."""
        alice, alice_heard = self.client(first_retry_delay=10.0, max_retry_delay=10.0)
        self.entered(alice.create("hoge", "alice", "pw"))
        options = {"first_retry_delay": 1.0, "max_retry_delay": 8.0, **bob_options}
        bob, bob_heard = self.client(**options)
        self.entered(bob.join("hoge", "bob", "pw"))
        self.assertEqual((bob.room_host, alice.room_host), ("alice", "alice"))
        return alice, alice_heard, bob, bob_heard

    def requests_by(self, user: str) -> list[tuple[Operation, str | None]]:
        """Each create and join C{user} sent, with the password it carried."""
        return [
            (operation, payload.get("password"))
            for operation, _, payload in self.server.requests[2:]
            if payload["username"] == user
        ]


class ReconnectPolicyTests(_FakeServerTest):
    def test_member_waits_for_the_host_and_never_creates(self) -> None:
        """
        The member is back first: it finds no room and waits (WaitingForHost
        before each try, with backoff restarted and jitter), asking without
        its password; the host's create brings the room back, and the member
        joins it, both told who hosts it.
        """
        # bob's first two draws (0) leave his plain backoff whole while the server is down.
        alice, alice_heard, bob, bob_heard = self.room_of_two(jitter=fixed(0.0, 0.0, 0.5, 0.25, 1.0, 0.0))
        self.server.crash()  # at 0.02 s
        self.assertEqual(bob_heard.of(Reconnecting), [Reconnecting(1, 1.0)])
        self.assertEqual(alice_heard.of(Reconnecting), [Reconnecting(1, 10.0)])
        self.clock.advance(1.0)  # bob's first try: nobody listens
        self.assertEqual(bob_heard.of(Reconnecting)[1:], [Reconnecting(2, 2.0)])
        self.server.start()
        self.clock.advance(2.0)  # bob's second try: the server is back, the room is not
        self.assertEqual(bob.state, ConnectionState.RECONNECTING)
        self.clock.advance(0.9)
        self.clock.advance(1.9)
        self.clock.advance(3.2)  # 9.02 s
        # The backoff starts again from the first delay; jitter takes off 10 %, 5 %, 20 %, 0 %.
        self.assertEqual(waits(bob_heard), [(3, 0.9, 120.0), (4, 1.9, 119.1), (5, 3.2, 117.2), (6, 8.0, 114.0)])
        self.assertEqual({wait.host for wait in bob_heard.of(WaitingForHost)}, {"alice"})
        self.assertEqual(self.server.rooms, {}, "bob did not create the room")
        # Waiting costs no password attempt: bob asks without it until the room is back.
        self.assertEqual(self.requests_by("bob"), [(Operation.JOIN, None)] * 4)

        self.clock.advance(1.0)  # alice's first try, at 10.02 s
        self.clock.advance(LATENCY)  # (Clock.advance runs what it schedules meanwhile from its end)
        self.assertEqual(alice_heard.events[-1], Reconnected("hoge", ("alice",), "alice"))
        self.assertEqual(self.requests_by("alice"), [(Operation.CREATE, "pw")])
        self.assertTrue(alice.info is not None and alice.info.host)
        self.clock.advance(7.0)  # bob's next try, at 17.02 s
        self.clock.advance(LATENCY)
        self.assertEqual(bob_heard.events[-1], Reconnected("hoge", ("alice", "bob"), "alice"))
        self.assertEqual(self.requests_by("bob")[-2:], [(Operation.JOIN, None), (Operation.JOIN, "pw")])
        self.assertEqual(bob.state, ConnectionState.IN_ROOM)
        self.assertEqual((bob.room_host, bob.info is not None and bob.info.host), ("alice", False))
        self.assertEqual(result_of(alice.invite()), "t0ken")
        self.assertEqual(result_of(bob.refresh_members()), ("alice", "bob"))
        self.assertEqual(bob.room_host, "alice")

    def test_member_gives_up_at_the_deadline(self) -> None:
        """The host never comes back: the member stops when the wait is over, and says why."""
        alice, _, bob, bob_heard = self.room_of_two(host_wait=10.0)
        self.server.crash()
        alice.leave()  # gone for good
        self.server.start()
        self.clock.pump([0.5] * 40)
        # Tries at 1, 2, 4, 8 and 11 s: the last delay is cut to end at the deadline.
        self.assertEqual(waits(bob_heard), [(2, 1.0, 10.0), (3, 2.0, 9.0), (4, 4.0, 7.0), (5, 3.0, 3.0)])
        self.assertEqual(
            bob_heard.events[-1],
            ConnectionLost(
                "room hoge is gone since the server restarted, and alice did not reopen it within 10 s",
                will_reconnect=False,
            ),
        )
        self.assertEqual(bob.state, ConnectionState.CLOSED)
        self.assertEqual(self.server.rooms, {})
        self.assertFalse(self.server.udp_ports[1].listening)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.requests_by("bob"), [(Operation.JOIN, None)] * 5)

    def test_the_host_recreates_the_room_as_it_was(self) -> None:
        """The host comes back first, and makes the room again: same password, native-only again."""
        alice, alice_heard = self.client()
        self.entered(alice.create("hoge", "alice", "pw", native_only=True))
        self.assertEqual(
            self.server.requests[0][2], {"chatd": 1, "username": "alice", "password": "pw", "native_only": True}
        )
        self.server.crash()
        self.server.start()
        self.clock.advance(0.5)
        self.clock.advance(LATENCY)
        self.assertEqual(alice_heard.events[-1], Reconnected("hoge", ("alice",), "alice"))
        self.assertEqual(self.server.requests[1][:2], (Operation.CREATE, "hoge"))
        self.assertTrue(self.server.rooms["hoge"].native_only)
        self.assertEqual(self.server.rooms["hoge"].password, "pw")

    def test_native_only_is_sent_on_create_only(self) -> None:
        alice, _ = self.client()
        self.entered(alice.create("hoge", "alice"))
        bob, _ = self.client()
        self.entered(bob.join("hoge", "bob"))
        self.assertEqual(
            [payload for _, _, payload in self.server.requests],
            [
                {"chatd": 1, "username": "alice"},
                {"chatd": 1, "username": "bob"},
            ],
        )

    def test_a_host_that_finds_its_room_taken_joins_it(self) -> None:
        """Someone else made a room of that name first: the old host can only be a member of it."""
        alice, alice_heard = self.client()
        self.entered(alice.create("hoge", "alice"))
        self.server.crash()
        self.server.start()
        carol, _ = self.client()
        self.entered(carol.create("hoge", "carol"))
        self.clock.advance(0.5)
        self.clock.advance(LATENCY)
        self.assertEqual(alice_heard.events[-1], Reconnected("hoge", ("carol", "alice"), "carol"))
        self.assertEqual(alice.room_host, "carol")
        self.assertFalse(alice.info is not None and alice.info.host)

    def test_an_invited_member_cannot_come_back_to_a_password_room(self) -> None:
        alice, _ = self.client(first_retry_delay=1.0)
        self.entered(alice.create("hoge", "alice", "pw"))
        bob, bob_heard = self.client(first_retry_delay=2.0)
        self.server.rooms["hoge"].password = None  # as if bob's invitation had let him in
        self.entered(bob.join("hoge", "bob", invite="t0ken"))
        self.server.crash()
        self.server.start()
        self.clock.advance(2.0)
        self.assertEqual(bob.state, ConnectionState.CLOSED)
        lost = bob_heard.events[-1]
        assert isinstance(lost, ConnectionLost)
        self.assertFalse(lost.will_reconnect)
        self.assertIn("the invitation was used up", lost.reason)

    def test_plain_backoff_while_the_server_is_down(self) -> None:
        """Each delay doubles up to the cap, shortened by the jitter (draws of 0.5: 10 %)."""
        alice, heard = self.client(jitter=fixed(0.5), first_retry_delay=1.0, max_retry_delay=4.0)
        self.entered(alice.create("hoge", "alice"))
        self.server.crash()
        self.clock.pump([0.1] * 150)
        self.assertEqual(
            [(retry.attempt, retry.delay) for retry in heard.of(Reconnecting)][:5],
            [(1, 0.9), (2, 1.8), (3, 3.6), (4, 3.6), (5, 3.6)],
        )
        self.assertEqual(heard.of(WaitingForHost), [])

    def test_clients_of_a_crashed_server_do_not_all_come_back_together(self) -> None:
        """
        The point of the jitter: two clients that lost the server in the same
        instant, with different random draws, wait different times, and so
        try again at different moments.
        """
        alice, alice_heard = self.client(jitter=fixed(0.1), first_retry_delay=1.0, max_retry_delay=4.0)
        self.entered(alice.create("hoge", "alice"))
        bob, bob_heard = self.client(jitter=fixed(0.9), first_retry_delay=1.0, max_retry_delay=4.0)
        self.entered(bob.join("hoge", "bob"))
        self.server.crash()
        self.assertEqual(alice_heard.of(Reconnecting), [Reconnecting(1, 0.98)])
        self.assertEqual(bob_heard.of(Reconnecting), [Reconnecting(1, 0.82)])
        # Each failed try is followed by the next Reconnecting: bob tried at
        # 0.82 s, alice not yet.
        self.clock.pump([0.01] * 85)
        self.assertEqual((len(alice_heard.of(Reconnecting)), len(bob_heard.of(Reconnecting))), (1, 2))
        self.clock.pump([0.01] * 15)  # 1 s: alice tried at 0.98 s
        self.assertEqual((len(alice_heard.of(Reconnecting)), len(bob_heard.of(Reconnecting))), (2, 2))
        self.clock.pump([0.01] * 500)
        alice_delays = [retry.delay for retry in alice_heard.of(Reconnecting)][:3]
        bob_delays = [retry.delay for retry in bob_heard.of(Reconnecting)][:3]
        self.assertEqual(alice_delays, [0.98, 1.96, 3.92])
        self.assertEqual(bob_delays, [0.82, 1.64, 3.28])


class UdpPathTests(_FakeServerTest):
    def test_unanswered_keepalives_are_reported_once(self) -> None:
        """
        Keepalives go unanswered: probes every 1.5 s, UdpPathLost once after
        4 s of silence, probing slower (at most every 10 s) while it lasts,
        and UdpPathRestored with the first answer.
        """
        alice, heard = self.client()
        self.entered(alice.create("hoge", "alice"))
        self.assertTrue(alice.udp_confirmed)
        self.server.udp_answers = False
        self.clock.advance(30.0 - LATENCY)  # the regular keepalive
        sent = self.server.keepalives
        self.clock.pump([0.5] * 8)
        self.assertEqual(heard.events, [], "3 s unanswered: still in doubt")
        self.assertEqual(self.server.keepalives, sent + 2)
        self.clock.pump([0.5] * 3)
        self.assertEqual(heard.events, [UdpPathLost(34.5 - LATENCY)])
        self.assertTrue(alice.udp_lost)
        sent = self.server.keepalives
        self.clock.pump([1.0] * 120)
        self.assertEqual(heard.events, [UdpPathLost(34.5 - LATENCY)], "one report per outage")
        self.assertLessEqual(self.server.keepalives - sent, 120 // 10 + 120 // 30 + 3, "probing slows down")
        self.assertEqual(alice.state, ConnectionState.IN_ROOM)
        self.server.udp_answers = True
        self.clock.pump([1.0] * 10 + [LATENCY])
        self.assertEqual(heard.events[1:], [UdpPathRestored()])
        self.assertFalse(alice.udp_lost)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "only the regular keepalive is due")

    def test_blocked_udp_does_not_stop_a_join(self) -> None:
        """No UDP answer at all: the create still ends (after its short wait), and the loss is told."""
        self.server.udp_answers = False
        alice, heard = self.client()
        entering = alice.create("hoge", "alice")
        self.assertFalse(entering.called)
        self.clock.pump([UDP_CONFIRM_WAIT / 4] * 4)
        self.assertEqual(result_of(entering).room, "hoge")
        self.assertFalse(alice.udp_confirmed)
        self.assertEqual(heard.events, [])
        self.clock.pump([0.5] * 5)
        self.assertEqual(heard.events, [UdpPathLost(4.5)])

    def test_leaving_stops_the_probes(self) -> None:
        self.server.udp_answers = False
        alice, _ = self.client()
        entering = alice.create("hoge", "alice")
        self.clock.advance(UDP_CONFIRM_WAIT)
        result_of(entering)
        alice.leave()
        self.assertEqual(self.clock.getDelayedCalls(), [])
