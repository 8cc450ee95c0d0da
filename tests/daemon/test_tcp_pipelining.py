"""
Pipelined requests: thousands in one chunk, in every dialect, are answered
one by one in order, without recursion (one stack level per request used to
end in RecursionError after about 160), and the store stays consistent.
While the store has a request (a password being hashed), the connection
stops reading; the frames that wait are handled in order once it answers.
"""

from __future__ import annotations

import json

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.tcp import RoomProtocol
from chatd.protocol.errors import Status
from chatd.protocol.wire import Operation, SizeEncoding, State
from tests.helpers import ManualRunner, capture_events, connect, frames, make_server, request
from tests.tcp_cases import Pipeline, answered, answers, check_invariants, check_tokens, one

ASCII = SizeEncoding.ASCII
MANY = 2000
"""Over ten times what used to exhaust the stack."""


class PipeliningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server()
        self.store = self.server.store
        self.events = capture_events(self)
        self.tokens: list[str] = []

    def tearDown(self) -> None:
        # No "Unhandled error in Deferred", no RecursionError, nothing logged as a failure.
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([event for event in self.events if "log_failure" in event], [])
        check_invariants(self, self.store)
        check_tokens(self, self.store, self.tokens)

    def send(self, pipeline: Pipeline, port: int) -> tuple[RoomProtocol, StringTransport, list[Status]]:
        """A new connection writes all of C{pipeline} at once; its answers, checked in order."""
        protocol, transport = connect(self.server, port=port)
        protocol.dataReceived(pipeline.data)
        replies = frames(transport, clear=False)
        self.tokens += [
            json.loads(reply.payload)["token"] if reply.payload.startswith(b"{") else reply.payload.decode()
            for reply in replies
            if reply.state is State.COMPLETE and reply.operation in (Operation.CREATE, Operation.JOIN)
        ]
        return protocol, transport, answered(self, pipeline.operations, transport)

    def test_seed(self) -> None:
        misses = one(Operation.JOIN, "nowhere", "ann", ASCII) * (MANY // 2)
        create = one(Operation.CREATE, "seeds", "ann", ASCII)
        member_requests = (
            one(Operation.INVITE, "seeds", "", ASCII)
            + one(Operation.REGISTER_UDP, "seeds", "5000", ASCII)
            + one(Operation.REKEY, "seeds", "", ASCII)
            + one(Operation.CREATE, "other", "ann", ASCII)
            + one(Operation.JOIN, "seeds", "ann", ASCII)
        ) * (MANY // 10)
        host, host_transport, statuses = self.send(misses + create + member_requests, port=40000)
        self.assertEqual(len(statuses), MANY + 1)
        self.assertEqual(set(statuses[: MANY // 2]), {Status.ROOM_NOT_FOUND})
        self.assertEqual(statuses[MANY // 2], Status.SUCCESS)
        invites, registers, rekeys, creates, joins = (statuses[MANY // 2 + 1 + i :: 5] for i in range(5))
        # Success, or the room's limit of live invitations where there is one.
        self.assertLessEqual(set(invites), {Status.SUCCESS, Status.ROOM_FULL})
        self.assertEqual(invites[0], Status.SUCCESS)
        self.assertEqual(set(registers), {Status.SUCCESS})
        self.assertEqual(set(rekeys), {Status.NOT_PERMITTED})
        self.assertEqual(set(creates) | set(joins), {Status.NOT_PERMITTED})
        self.assertFalse(host_transport.disconnecting)
        self.assertEqual(host_transport.producerState, "producing")

        retries = one(Operation.CREATE, "seeds", "bob", ASCII) * (MANY // 2)
        join = one(Operation.JOIN, "seeds", "bob", ASCII)
        guest_requests = (
            one(Operation.INVITE, "seeds", "", ASCII) + one(Operation.REGISTER_UDP, "", "5001", ASCII)
        ) * (MANY // 4)
        _, guest_transport, statuses = self.send(retries + join + guest_requests, port=40001)
        self.assertEqual(set(statuses[: MANY // 2]), {Status.ROOM_EXISTS})
        self.assertEqual(statuses[MANY // 2], Status.SUCCESS)
        self.assertEqual(set(statuses[MANY // 2 + 1 :: 2]), {Status.NOT_PERMITTED})
        self.assertEqual(set(statuses[MANY // 2 + 2 :: 2]), {Status.SUCCESS})
        self.assertEqual(self.store.rooms()[0].names(), ("ann", "bob"))
        check_invariants(self, self.store)

        host.connectionLost()
        self.assertTrue(guest_transport.disconnecting)
        self.assertEqual(self.store.rooms(), [])

    def test_native(self) -> None:
        native = {"chatd": 1}
        misses = one(Operation.JOIN, "nowhere", {"username": "ann", **native}) * (MANY // 4)
        create = one(Operation.CREATE, "natives", {"username": "ann", "password": "pw", **native})
        host_requests = (
            one(Operation.INVITE, "natives")
            + one(Operation.REKEY, "natives")
            + one(Operation.REGISTER_UDP, "natives", "5000")
            + one(Operation.JOIN, "natives", {"username": "ann", **native})
        ) * (MANY // 4)
        host, _, statuses = self.send(misses + create + host_requests, port=40000)
        self.assertEqual(len(statuses), MANY // 4 + 1 + MANY)
        self.assertEqual(set(statuses[: MANY // 4]), {Status.ROOM_NOT_FOUND})
        self.assertEqual(statuses[MANY // 4], Status.SUCCESS)
        invites, rekeys, registers, joins = (statuses[MANY // 4 + 1 + i :: 4] for i in range(4))
        self.assertLessEqual(set(invites), {Status.SUCCESS, Status.ROOM_FULL})
        self.assertEqual(set(rekeys), {Status.SUCCESS})
        self.assertEqual(set(registers) | set(joins), {Status.NOT_PERMITTED})

        # Wrong passwords by the thousand, each hashed (inline), then the right one.
        guesses = one(Operation.JOIN, "natives", {"username": "bob", "password": "wrong", **native}) * (MANY // 2)
        join = one(Operation.JOIN, "natives", {"username": "bob", "password": "pw", **native})
        rekeys_after = one(Operation.REKEY, "natives") * (MANY // 2)
        _, _, statuses = self.send(guesses + join + rekeys_after, port=40001)
        self.assertEqual(set(statuses[: MANY // 2]), {Status.INVALID_PASSWORD})
        self.assertEqual(set(statuses[MANY // 2 :]), {Status.SUCCESS})
        self.assertEqual(self.server.tcp_factory.hashing_in_progress("127.0.0.1"), 0)
        check_invariants(self, self.store)
        host.connectionLost()
        self.assertEqual(self.store.rooms(), [])

    def test_model(self) -> None:
        """The model dialect's handshake ends with its port; the server then closes, and reads no further."""
        self.send(one(Operation.CREATE, "models", {"username": "ann"}), port=40000)
        misses = one(Operation.JOIN, "nowhere", {"username": "bob"}) * (MANY // 2)
        taken = one(Operation.CREATE, "models", {"username": "bob"}) * (MANY // 2)
        join = one(Operation.JOIN, "models", {"username": "bob"})
        port = b"\x13\x89"
        after = one(Operation.INVITE, "models") * 100
        protocol, transport = connect(self.server, port=40001)
        protocol.dataReceived(misses.data + taken.data + join.data + port + after.data)
        replies = frames(transport)
        self.tokens += [reply.payload.decode() for reply in replies if reply.state is State.COMPLETE]
        statuses = answers(self, (misses + taken + join).operations, replies)
        self.assertEqual(set(statuses[: MANY // 2]), {Status.ROOM_NOT_FOUND})
        self.assertEqual(set(statuses[MANY // 2 : MANY]), {Status.ROOM_EXISTS})
        self.assertEqual(statuses[MANY], Status.SUCCESS)
        self.assertTrue(transport.disconnecting)
        bob = self.store.rooms()[0].members["bob"]
        self.assertEqual(bob.address, ("127.0.0.1", 5001))
        protocol.connectionLost()
        self.assertIs(self.store.member_for_token(bob.token), bob)


class SlowStoreTests(SynchronousTestCase):
    """The store answers later (a password hashed in a thread): the connection waits, not reading."""

    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server()
        self.store = self.server.store
        host, _ = connect(self.server)
        host.dataReceived(request(Operation.CREATE, "slow", {"username": "ann", "password": "pw", "chatd": 1}))
        self.runner = ManualRunner()
        self.store._run_hash = self.runner  # type: ignore[attr-defined]

    def tearDown(self) -> None:
        self.assertEqual(self.flushLoggedErrors(), [])
        check_invariants(self, self.store)

    def test_frames_wait_paused_and_are_answered_in_order(self) -> None:
        native = {"chatd": 1}
        pipeline = (
            one(Operation.JOIN, "slow", {"username": "bob", "password": "pw", **native})
            + one(Operation.INVITE, "slow")
            + one(Operation.REKEY, "slow") * 3
        )
        bob, transport = connect(self.server, port=40001)
        bob.dataReceived(pipeline.data)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(self.runner.pending), 1)
        self.runner.release()
        self.assertEqual(transport.producerState, "producing")
        statuses = answered(self, pipeline.operations, transport)
        self.assertEqual(statuses, [Status.SUCCESS, Status.NOT_PERMITTED] + [Status.SUCCESS] * 3)

    def test_each_waiting_request_pauses_again(self) -> None:
        guesses = 200
        native = {"chatd": 1}
        pipeline = one(Operation.JOIN, "slow", {"username": "bob", "password": "wrong", **native}) * guesses + one(
            Operation.JOIN, "slow", {"username": "bob", "password": "pw", **native}
        )
        bob, transport = connect(self.server, port=40001)
        bob.dataReceived(pipeline.data + one(Operation.REKEY, "slow").data)
        for _ in range(guesses):
            self.assertEqual(transport.producerState, "paused")
            self.runner.release()
        self.assertEqual(transport.producerState, "paused")
        self.runner.release()
        self.assertEqual(self.runner.pending, [])
        self.assertEqual(transport.producerState, "producing")
        statuses = answered(self, (*pipeline.operations, Operation.REKEY), transport)
        self.assertEqual(statuses, [Status.INVALID_PASSWORD] * guesses + [Status.SUCCESS, Status.SUCCESS])
        self.assertEqual(self.server.tcp_factory.hashing_in_progress("127.0.0.1"), 0)

    def test_connection_lost_while_waiting(self) -> None:
        """The answer comes after the peer has gone: it never becomes a member (and nothing is written)."""
        bob, transport = connect(self.server, port=40001)
        bob.dataReceived(
            request(Operation.JOIN, "slow", {"username": "bob", "password": "pw"}) + request(Operation.INVITE, "slow")
        )
        bob.connectionLost()
        self.runner.release()
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.store.rooms()[0].names(), ("ann",))
