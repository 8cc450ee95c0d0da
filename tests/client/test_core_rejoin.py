"""
The rejoin sequence of chatd.client.core.ClientCore, without sockets: after
the connection is lost, which requests go out on which connection, and what
each answer leads to (the host creates its room again and falls back to a
join when the name is taken; a member joins without its password first).

tests/client/test_client_reconnect.py checks the same through ChatClient
against a scripted server; these read the core's actions one by one.
"""

from __future__ import annotations

import json
from typing import Any

from chatd.client.core import (
    CONFIRM,
    REQUEST,
    UDP_CONFIRM_WAIT,
    Action,
    Answer,
    CancelTimer,
    ClientCore,
    CloseControl,
    Connect,
    ConnectionState,
    Emit,
    KeepaliveAnswered,
    Log,
    Membership,
    Reconnect,
    RejoinStep,
    SendFrame,
    Shutdown,
    StartTimer,
)
from chatd.client.events import ConnectionLost, Reconnected, Reconnecting, WaitingForHost
from chatd.protocol.datagrams import FrameType
from chatd.protocol.errors import CertificateError, ConnectionFailedError, Status
from chatd.protocol.wire import Frame, Operation, State, decode_frame, encode_frame
from tests.client.test_core import SERVER_UDP, _CoreTest, ack, complete, events, of, room_answer


def sent_request(actions: list[Action]) -> tuple[Operation, dict[str, Any]]:
    """The one create or join request among C{actions}: its operation and JSON payload."""
    (sent,) = of(SendFrame, actions)
    frame = decode_frame(sent.data)
    assert isinstance(frame, Frame)
    return frame.operation, json.loads(frame.payload)


class RejoinTests(_CoreTest):
    def entered(
        self,
        operation: Operation = Operation.CREATE,
        user: str = "alice",
        password: str | None = None,
        invite: str | None = None,
        native_only: bool = False,
        **options: Any,
    ) -> ClientCore:
        """A core in room 'hoge' (as host for a create), then cut off: it waits for its first try."""
        core = self.core(**options)
        wanted = Membership(operation, "hoge", user, password, invite, native_only)
        core.start(wanted)
        core.control_opened(SERVER_UDP)
        core.ask_room(wanted, 0.0)
        host = operation is Operation.CREATE
        members = ("alice",) if host else ("alice", user)
        core.control_received(
            ack(operation) + complete(operation, room_answer(user=user, host=host, members=members)), 0.0
        )
        lost = core.control_lost("Connection was closed cleanly.", 10.0)
        self.assertIsInstance(lost[-1], Reconnect)
        self.assertEqual(core.state, ConnectionState.RECONNECTING)
        return core

    def answer(self, core: ClientCore, operation: Operation, now: float = 11.0, **answer: Any) -> list[Action]:
        return core.control_received(ack(operation) + complete(operation, room_answer(**answer)), now)

    def refuse(self, core: ClientCore, operation: Operation, status: Status, now: float = 11.0) -> list[Action]:
        return core.control_received(ack(operation, status=status, message=status.text), now)

    def test_host_creates_again_then_waits_for_udp(self) -> None:
        core = self.entered(password="pw", native_only=True)
        self.assertEqual(core.reconnect_due(11.0), [Connect()])
        self.assertEqual((core.state, core.rejoin), (ConnectionState.CONNECTING, RejoinStep.CREATE))
        opened = core.control_opened(SERVER_UDP)
        self.assertEqual(opened[0], StartTimer(REQUEST, core.config.request_timeout))
        self.assertEqual(
            sent_request(opened),
            (Operation.CREATE, {"chatd": 1, "username": "alice", "password": "pw", "native_only": True}),
        )
        entered = self.answer(core, Operation.CREATE)
        self.assertEqual(core.state, ConnectionState.IN_ROOM)
        self.assertEqual(of(Answer, entered), [], "the core's own request")
        self.assertEqual(events(entered), [], "not said before UDP answers, or the wait ends")
        self.assertEqual(entered[-1], StartTimer(CONFIRM, UDP_CONFIRM_WAIT))
        self.assertEqual(core.rejoin, RejoinStep.CONFIRM)
        answered = core.datagram_received(self.from_server(FrameType.KEEPALIVE_ACK, b""), SERVER_UDP, 11.1)
        self.assertEqual(
            answered[-3:],
            [KeepaliveAnswered(), CancelTimer(CONFIRM), Emit(Reconnected("hoge", ("alice",), "alice"))],
        )
        self.assertIsNone(core.rejoin)
        later = core.datagram_received(self.from_server(FrameType.KEEPALIVE_ACK, b""), SERVER_UDP, 11.2)
        self.assertEqual(events(later), [], "said once")

    def test_reconnected_when_the_udp_wait_runs_out(self) -> None:
        """A blocked UDP path only delays Reconnected (the UDP path reports tell the rest)."""
        core = self.entered(udp_confirm_wait=0.5)
        core.reconnect_due(11.0)
        core.control_opened(SERVER_UDP)
        self.assertEqual(self.answer(core, Operation.CREATE)[-1], StartTimer(CONFIRM, 0.5))
        self.assertEqual(core.timer_fired(CONFIRM, 11.5), [Emit(Reconnected("hoge", ("alice",), "alice"))])
        self.assertEqual(core.timer_fired(CONFIRM, 12.0), [])

    def test_host_finds_its_room_name_taken_and_joins(self) -> None:
        """RoomExists on the create: close, connect anew, and join as a member (without the password first)."""
        core = self.entered(password="pw")
        core.reconnect_due(11.0)
        core.control_opened(SERVER_UDP)
        refused = self.refuse(core, Operation.CREATE, Status.ROOM_EXISTS)
        self.assertEqual(refused, [CancelTimer(REQUEST), CloseControl(), Connect()])
        self.assertEqual((core.state, core.rejoin), (ConnectionState.CONNECTING, RejoinStep.PROBE))
        # The connection it closes is lost: nothing to tell, nothing to retry.
        self.assertEqual(core.control_lost("Connection was closed cleanly.", 11.0), [])
        opened = core.control_opened(SERVER_UDP)
        self.assertEqual(sent_request(opened), (Operation.JOIN, {"chatd": 1, "username": "alice"}))
        refused = self.refuse(core, Operation.JOIN, Status.INVALID_PASSWORD)
        self.assertEqual(sent_request(refused), (Operation.JOIN, {"chatd": 1, "username": "alice", "password": "pw"}))
        self.assertNotIn(CloseControl(), refused, "the same connection")
        entered = self.answer(core, Operation.JOIN, host=False, members=("mallory", "alice"))
        self.assertEqual(entered[-1], StartTimer(CONFIRM, UDP_CONFIRM_WAIT))
        self.assertEqual(core.timer_fired(CONFIRM, 13.0), [Emit(Reconnected("hoge", ("mallory", "alice"), "mallory"))])

    def test_member_asks_without_its_password_first(self) -> None:
        core = self.entered(Operation.JOIN, "bob", password="pw")
        self.assertEqual(core.reconnect_due(11.0), [Connect()])
        self.assertEqual(core.rejoin, RejoinStep.PROBE)
        opened = core.control_opened(SERVER_UDP)
        self.assertEqual(sent_request(opened), (Operation.JOIN, {"chatd": 1, "username": "bob"}))
        # A room that is not back yet costs no password attempt.
        refused = self.refuse(core, Operation.JOIN, Status.ROOM_NOT_FOUND)
        self.assertEqual(refused[:2], [CancelTimer(REQUEST), CloseControl()])
        (waiting,) = events(refused)
        self.assertIsInstance(waiting, WaitingForHost)
        self.assertEqual(refused[-1], Reconnect(waiting.delay))
        self.assertEqual((core.state, core.rejoin), (ConnectionState.RECONNECTING, None))
        # The next try: the password room answers "invalid password" to the probe, then the real join.
        core.reconnect_due(12.0)
        core.control_opened(SERVER_UDP)
        refused = self.refuse(core, Operation.JOIN, Status.INVALID_PASSWORD, now=12.0)
        self.assertEqual(sent_request(refused), (Operation.JOIN, {"chatd": 1, "username": "bob", "password": "pw"}))
        self.assertEqual(core.rejoin, RejoinStep.JOIN)
        self.answer(core, Operation.JOIN, now=12.0, user="bob", host=False, members=("alice", "bob"))
        self.assertEqual(core.rejoin, RejoinStep.CONFIRM)

    def test_member_without_a_password_is_refused(self) -> None:
        """No password to add: the refusal of the probe is the try's end; another follows."""
        core = self.entered(Operation.JOIN, "bob")
        core.reconnect_due(11.0)
        core.control_opened(SERVER_UDP)
        refused = self.refuse(core, Operation.JOIN, Status.INVALID_PASSWORD)
        self.assertEqual(of(SendFrame, refused), [])
        self.assertEqual(of(Log, refused)[0].level, "info")
        self.assertEqual(refused[-2:], [Emit(Reconnecting(2, 1.0)), Reconnect(1.0)])

    def test_spent_invitation_gives_up(self) -> None:
        core = self.entered(Operation.JOIN, "bob", invite="t0k")
        core.reconnect_due(11.0)
        opened = core.control_opened(SERVER_UDP)
        self.assertEqual(sent_request(opened), (Operation.JOIN, {"chatd": 1, "username": "bob"}))
        refused = self.refuse(core, Operation.JOIN, Status.INVALID_PASSWORD)
        self.assertEqual(refused[-1], Shutdown())
        (lost,) = events(refused)
        assert isinstance(lost, ConnectionLost)
        self.assertIn("the invitation was used up", lost.reason)
        self.assertEqual(core.state, ConnectionState.CLOSED)

    def test_server_out_of_reach(self) -> None:
        """The adapter could not connect: the try failed; back off and try again."""
        core = self.entered(first_retry_delay=1.0)
        core.reconnect_due(11.0)
        failed = core.rejoin_failed(ConnectionFailedError("refused"), 11.0)
        self.assertEqual(failed[1:], [CloseControl(), Emit(Reconnecting(2, 2.0)), Reconnect(2.0)])
        self.assertEqual((core.state, core.rejoin), (ConnectionState.RECONNECTING, None))

    def test_connection_lost_while_asking(self) -> None:
        core = self.entered()
        core.reconnect_due(11.0)
        core.control_opened(SERVER_UDP)
        lost = core.control_lost("Connection to the other side was lost.", 11.5)
        self.assertEqual(lost[0], CancelTimer(REQUEST))
        self.assertIn("the server closed the connection", of(Log, lost)[0].message)
        self.assertEqual(lost[-1], Reconnect(1.0))
        self.assertEqual(core.state, ConnectionState.RECONNECTING)

    def test_unanswered_request(self) -> None:
        core = self.entered()
        core.reconnect_due(11.0)
        core.control_opened(SERVER_UDP)
        timed_out = core.timer_fired(REQUEST, 21.0)
        self.assertIn("did not answer in time", of(Log, timed_out)[0].message)
        self.assertEqual(timed_out[-1], Reconnect(1.0))

    def test_unusable_answer(self) -> None:
        core = self.entered()
        core.reconnect_due(11.0)
        core.control_opened(SERVER_UDP)
        broken = encode_frame(Frame(Operation.CREATE, State.COMPLETE, "hoge", b'{"chatd": 1}'))
        failed = core.control_received(ack(Operation.CREATE) + broken, 11.0)
        self.assertEqual(failed[-1], Reconnect(1.0))
        self.assertEqual(core.state, ConnectionState.RECONNECTING)

    def test_certificate_refusal_gives_up(self) -> None:
        core = self.entered()
        core.reconnect_due(11.0)
        core.control_opened(SERVER_UDP)
        refused = core.control_lost("tls", 11.0, refusal=CertificateError("changed"))
        self.assertEqual(refused[-2:], [Emit(ConnectionLost("changed", False)), Shutdown()])

    def test_lost_again_before_reconnected_was_said(self) -> None:
        core = self.entered()
        core.reconnect_due(11.0)
        core.control_opened(SERVER_UDP)
        self.answer(core, Operation.CREATE)
        lost = core.control_lost("Connection was closed cleanly.", 11.5)
        self.assertIn(CancelTimer(CONFIRM), lost)
        self.assertNotIn(Reconnected, [type(event) for event in events(lost)])
        self.assertEqual((core.state, core.rejoin), (ConnectionState.RECONNECTING, None))
        self.assertEqual(core.timer_fired(CONFIRM, 13.0), [])

    def test_leaving_ends_the_sequence(self) -> None:
        core = self.entered()
        core.leave()
        self.assertEqual(core.reconnect_due(11.0), [])
        core = self.entered()
        core.reconnect_due(11.0)
        core.leave()
        self.assertEqual(core.rejoin_failed(ConnectionFailedError("left"), 11.0), [])
        self.assertEqual(core.state, ConnectionState.CLOSED)

    def test_leaving_while_waiting_for_udp(self) -> None:
        core = self.entered()
        core.reconnect_due(11.0)
        core.control_opened(SERVER_UDP)
        self.answer(core, Operation.CREATE)
        self.assertIn(CancelTimer(CONFIRM), core.leave())
        self.assertIsNone(core.rejoin)

    def test_nothing_is_due_unless_reconnecting(self) -> None:
        core = self.core()
        self.assertEqual(core.reconnect_due(0.0), [])
        self.assertEqual(core.control_opened(SERVER_UDP), [])
