"""
Resuming in the client core, without sockets: the credential kept from each
answer, a resume first when the connection is lost, today's rejoin sequence
when it is refused, and the server list (round-robin, one server per try).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.client.core import (
    CONFIRM,
    KEEPALIVE,
    AbortControl,
    Action,
    ClientCore,
    CloseControl,
    Connect,
    ConnectionState,
    CoreConfig,
    Emit,
    Membership,
    Reconnect,
    RejoinStep,
)
from chatd.client.events import Reconnected, Reconnecting
from chatd.client.servers import ServerAddress, ServerList, ServerSpecError, parse_server
from chatd.protocol.errors import ConnectionFailedError, Status
from chatd.protocol.wire import Operation
from tests.client.test_core import SERVER_UDP, ack, complete, events, fixed, notice, room_answer
from tests.client.test_core_rejoin import sent_request

A = ServerAddress("127.0.0.1", 7001, 7002)
B = ServerAddress("127.0.0.1", 7011, 7012)
C = ServerAddress("::1", 7021, 7022)
FIRST = "Aq3Lx0aVb8Wn2Rt6Kc1Mz5Pd9Hs4Jf7Ue0Go3Ni8Bw2"
SECOND = "Bq3Lx0aVb8Wn2Rt6Kc1Mz5Pd9Hs4Jf7Ue0Go3Ni8Bw2"


class ServerSpecTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_server("example.org", 9001, 9002), ServerAddress("example.org", 9001, 9002))
        self.assertEqual(parse_server("example.org:7001", 9001, 9002), ServerAddress("example.org", 7001, 9002))
        self.assertEqual(parse_server("10.0.0.1:7001:7002", 9001, 9002), ServerAddress("10.0.0.1", 7001, 7002))
        self.assertEqual(parse_server("[::1]:7001:7002", 9001, 9002), ServerAddress("::1", 7001, 7002))
        self.assertEqual(parse_server("[::1]", 9001, 9002), ServerAddress("::1", 9001, 9002))
        self.assertEqual(parse_server("fe80::1:2:3", 9001, 9002), ServerAddress("fe80::1:2:3", 9001, 9002))

    def test_refused(self) -> None:
        for spec in ("", ":7001", "h:0", "h:70000", "h:x", "h:1:2:3", "[::1", "[::1]7001", "[]:1"):
            self.assertRaises(ServerSpecError, parse_server, spec, 9001, 9002)

    def test_labels(self) -> None:
        self.assertEqual(A.label, "127.0.0.1:7001")
        self.assertEqual(C.label, "[::1]:7021")

    @given(st.lists(st.sampled_from([A, B, C]), min_size=1), st.integers(0, 20))
    def test_round_robin(self, servers: list[ServerAddress], steps: int) -> None:
        listed = ServerList(servers)
        unique = list(dict.fromkeys(servers))
        self.assertEqual(list(listed.servers), unique)
        for step in range(steps):
            self.assertEqual(listed.current, unique[step % len(unique)])
            listed.advance()
        listed.restart()
        self.assertEqual(listed.current, unique[0])

    def test_at_least_one(self) -> None:
        self.assertRaises(ValueError, ServerList, [])


class ResumeCoreTests(SynchronousTestCase):
    def entered(
        self, operation: Operation = Operation.CREATE, user: str = "alice", password: str | None = None, **options: Any
    ) -> ClientCore:
        """A core in room 'hoge' on server A of three, holding credential FIRST, then cut off."""
        core = ClientCore(CoreConfig(**options), fixed(0.0), (A, B, C))
        wanted = Membership(operation, "hoge", user, password, None)
        core.start(wanted)
        core.control_opened(SERVER_UDP)
        core.ask_room(wanted, 0.0)
        host = operation is Operation.CREATE
        answer = room_answer(user=user, host=host, members=("alice",) if host else ("alice", user), resume=FIRST)
        core.control_received(ack(operation) + complete(operation, answer), 0.0)
        self.assertEqual(core.resume_credential, FIRST)
        self.lost = core.control_lost("Connection was closed cleanly.", 10.0)
        return core

    def test_lost_says_it_resumes_on_the_same_server_first(self) -> None:
        core = self.entered()
        self.assertEqual(events(self.lost)[1], Reconnecting(1, 0.5, resuming=True))
        self.assertEqual(events(self.lost)[1].server, "127.0.0.1:7001")
        self.assertEqual(core.reconnect_due(10.5), [Connect()])
        self.assertEqual((core.rejoin, core.servers.current), (RejoinStep.RESUME, A))

    def test_host_resumes_with_a_join(self) -> None:
        core = self.entered(password="unused")
        core.reconnect_due(10.5)
        opened = core.control_opened(SERVER_UDP)
        self.assertEqual(
            sent_request(opened), (Operation.JOIN, {"chatd": 1, "username": "alice", "resume": FIRST}), "no password"
        )
        answer = room_answer(host=True, members=("alice", "bob"), resume=SECOND)
        entered = core.control_received(ack(Operation.JOIN) + complete(Operation.JOIN, answer), 11.0)
        self.assertEqual(core.state, ConnectionState.IN_ROOM)
        self.assertEqual(core.resume_credential, SECOND, "single use: the next one is the answer's")
        self.assertTrue(core.resumed)
        self.assertEqual(core.room_host, "alice")
        self.assertEqual(events(entered), [])
        said = core.timer_fired(CONFIRM, 13.0)
        self.assertEqual(said, [Emit(Reconnected("hoge", ("alice", "bob"), "alice", resumed=True))])
        self.assertEqual(events(said)[0].server, "127.0.0.1:7001")

    def test_with_the_delivery_feature(self) -> None:
        core = self.entered(delivery=True)
        core.reconnect_due(10.5)
        _, request = sent_request(core.control_opened(SERVER_UDP))
        self.assertEqual(request["resume"], FIRST)
        self.assertEqual(request["client"], core.client_id, "the same client id: the same duplicate window")
        self.assertEqual(request["features"], ["delivery"])

    def test_refused_resume_falls_back_on_the_same_connection(self) -> None:
        """The host's credential is refused: it creates the room again, as before resuming existed."""
        core = self.entered(password="pw")
        core.reconnect_due(10.5)
        core.control_opened(SERVER_UDP)
        refused = core.control_received(ack(Operation.JOIN, status=Status.INVALID_PASSWORD, message="no"), 11.0)
        self.assertNotIn(CloseControl(), refused)
        self.assertEqual(sent_request(refused), (Operation.CREATE, {"chatd": 1, "username": "alice", "password": "pw"}))
        self.assertIsNone(core.resume_credential, "worth nothing now")
        self.assertEqual(core.rejoin, RejoinStep.CREATE)
        answer = room_answer(resume=SECOND)
        core.control_received(ack(Operation.CREATE) + complete(Operation.CREATE, answer), 11.1)
        self.assertFalse(core.resumed)
        self.assertEqual(core.timer_fired(CONFIRM, 13.0), [Emit(Reconnected("hoge", ("alice",), "alice"))])

    def test_member_falls_back_to_its_probe_when_the_room_is_gone(self) -> None:
        core = self.entered(Operation.JOIN, "bob")
        core.reconnect_due(10.5)
        core.control_opened(SERVER_UDP)
        refused = core.control_received(ack(Operation.JOIN, status=Status.ROOM_NOT_FOUND, message="gone"), 11.0)
        self.assertEqual(sent_request(refused), (Operation.JOIN, {"chatd": 1, "username": "bob"}))
        self.assertEqual(core.rejoin, RejoinStep.PROBE)

    def test_a_busy_server_keeps_the_credential(self) -> None:
        """SERVER_FULL (a degraded cluster, say): a failed try, the credential kept for the next server."""
        core = self.entered()
        core.reconnect_due(10.5)
        core.control_opened(SERVER_UDP)
        refused = core.control_received(ack(Operation.JOIN, status=Status.SERVER_FULL, message="busy"), 11.0)
        self.assertIn(CloseControl(), refused)
        self.assertIsInstance(refused[-1], Reconnect)
        self.assertEqual(core.resume_credential, FIRST)
        (retry,) = [event for event in events(refused) if isinstance(event, Reconnecting)]
        self.assertEqual((retry.server, retry.resuming), ("127.0.0.1:7011", True))
        self.assertEqual(core.servers.current, B)

    def test_a_dead_server_passes_to_the_next_round_robin(self) -> None:
        core = self.entered()
        tried = []
        for attempt in range(4):
            core.reconnect_due(11.0 + attempt)
            tried.append(core.servers.current)
            failed = core.rejoin_failed(ConnectionFailedError("refused"), 11.0 + attempt)
            self.assertIsInstance(failed[-1], Reconnect)
        self.assertEqual(tried, [A, B, C, A])
        self.assertEqual(core.resume_credential, FIRST, "unreachable servers spend nothing")

    def test_entry_tries_every_server_once(self) -> None:
        core = ClientCore(CoreConfig(), fixed(0.0), (A, B, C))
        core.start(Membership(Operation.JOIN, "hoge", "bob", None, None))
        self.assertEqual(core.servers.current, A)
        self.assertEqual(core.entry_failed(), B)
        self.assertEqual(core.entry_failed(), C)
        self.assertIsNone(core.entry_failed(), "every server tried")
        core.leave()
        core.start(Membership(Operation.JOIN, "hoge", "bob", None, None))
        self.assertEqual(core.servers.current, A, "a new session starts on the first again")

    def test_an_older_server_gives_no_credential(self) -> None:
        """No "resume" in the answer: the try is today's rejoin (the host creates again)."""
        core = ClientCore(CoreConfig(), fixed(0.0), (A,))
        wanted = Membership(Operation.CREATE, "hoge", "alice", None, None)
        core.start(wanted)
        core.control_opened(SERVER_UDP)
        core.ask_room(wanted, 0.0)
        core.control_received(ack(Operation.CREATE) + complete(Operation.CREATE, room_answer()), 0.0)
        lost = core.control_lost("gone", 1.0)
        self.assertEqual(events(lost)[1], Reconnecting(1, 0.5, resuming=False))
        core.reconnect_due(1.5)
        self.assertEqual(core.rejoin, RejoinStep.CREATE)


class SilentServerTests(SynchronousTestCase):
    """With reliable delivery, a node that answers nothing is taken for dead: the connection is dropped."""

    def in_room(self, **options: Any) -> ClientCore:
        core = ClientCore(CoreConfig(delivery=True, **options), fixed(0.0), (A, B))
        wanted = Membership(Operation.JOIN, "hoge", "bob", None, None)
        core.start(wanted)
        core.control_opened(SERVER_UDP)
        core.ask_room(wanted, 0.0)
        start = {"epoch": "0123456789abcdef", "seq": 0, "history_from": 1}
        answer = room_answer(user="bob", host=False, members=("alice", "bob"), features=["delivery"], delivery=start)
        core.control_received(ack(Operation.JOIN) + complete(Operation.JOIN, answer), 0.0)
        self.assertTrue(core.delivery)
        return core

    def fire_keepalive(self, core: ClientCore, now: float) -> list[Action]:
        core._timers.start(KEEPALIVE, 1.0)
        return core.timer_fired(KEEPALIVE, now)

    def test_silence_drops_the_connection(self) -> None:
        core = self.in_room()
        self.assertNotIn(AbortControl(), self.fire_keepalive(core, 29.0))
        self.assertIn(AbortControl(), self.fire_keepalive(core, 30.5))
        lost = core.control_lost("aborted", 30.5)
        self.assertEqual(core.state, ConnectionState.RECONNECTING)
        self.assertIsInstance(lost[-1], Reconnect)

    def test_anything_heard_keeps_it(self) -> None:
        core = self.in_room()
        core.control_received(notice(event="joined", room="hoge", user="carol", text="* carol joined hoge"), 25.0)
        self.assertNotIn(AbortControl(), self.fire_keepalive(core, 40.0))
        self.assertIn(AbortControl(), self.fire_keepalive(core, 55.0))

    def test_zero_never_drops_it(self) -> None:
        core = self.in_room(server_silent_after=0.0)
        self.assertNotIn(AbortControl(), self.fire_keepalive(core, 1000.0))

    def test_not_without_the_feature(self) -> None:
        """Without it a quiet room on a blocked UDP path hears nothing for long, and is not dead for that."""
        core = ClientCore(CoreConfig(), fixed(0.0), (A,))
        wanted = Membership(Operation.JOIN, "hoge", "bob", None, None)
        core.start(wanted)
        core.control_opened(SERVER_UDP)
        core.ask_room(wanted, 0.0)
        core.control_received(ack(Operation.JOIN) + complete(Operation.JOIN, room_answer(user="bob", host=False)), 0.0)
        self.assertNotIn(AbortControl(), self.fire_keepalive(core, 1000.0))
