"""
chatd.client.core.ClientCore without sockets, reactor or clock: bytes and
times go in, and the tests read the actions that come out.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.trial import unittest

from chatd.client.core import (
    KEEPALIVE,
    PROBE,
    REQUEST,
    AbortControl,
    Action,
    Answer,
    CancelTimer,
    ClientCore,
    CloseControl,
    ConnectionState,
    CoreConfig,
    Emit,
    KeepaliveAnswered,
    Log,
    Membership,
    Reconnect,
    RoomInfo,
    SendDatagram,
    SendFrame,
    Shutdown,
    StartTimer,
    backoff,
)
from chatd.client.events import (
    ConnectionLost,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Reconnected,
    Reconnecting,
    RoomClosed,
    UdpPathLost,
    UdpPathRestored,
    WaitingForHost,
)
from chatd.protocol.datagrams import FrameType, encode_relay_body
from chatd.protocol.errors import (
    CertificateError,
    ClientError,
    ConnectionClosedError,
    ConnectionFailedError,
    InvalidPasswordError,
    MessageTooLongError,
    NotInRoomError,
    NotPermittedError,
    RoomExistsError,
    RoomNotFoundError,
    Status,
)
from chatd.protocol.seal import Channel, Direction
from chatd.protocol.wire import Frame, Operation, State, decode_frame, encode_frame

SERVER_UDP = ("192.0.2.1", 9002)
KEY = bytes(range(32))
KEY_ID = 7


def ack(operation: Operation, room: str = "hoge", status: int = 0, message: str = "") -> bytes:
    payload = bytes([status]) + (json.dumps({"message": message}).encode() if message else b"")
    return encode_frame(Frame(operation, State.ACKNOWLEDGE, room, payload))


def complete(operation: Operation, answer: dict[str, Any], room: str = "hoge") -> bytes:
    return encode_frame(Frame(operation, State.COMPLETE, room, json.dumps(answer).encode()))


def notice(**fields: Any) -> bytes:
    return encode_frame(Frame(Operation.NOTICE, State.COMPLETE, "hoge", json.dumps(fields).encode()))


def room_answer(
    user: str = "alice", host: bool = True, members: tuple[str, ...] = ("alice",), **extra: Any
) -> dict[str, Any]:
    return {
        "room": "hoge",
        "user": user,
        "host": host,
        "members": list(members),
        "idle_timeout": 90.0,
        "keepalive_interval": 30.0,
        "key": base64.b64encode(KEY).decode(),
        "key_id": KEY_ID,
        **extra,
    }


def of(kind: type[Any], actions: list[Action]) -> list[Any]:
    return [action for action in actions if isinstance(action, kind)]


def events(actions: list[Action]) -> list[Any]:
    return [action.event for action in of(Emit, actions)]


def fixed(*numbers: float) -> Any:
    remaining = list(numbers)

    def draw() -> float:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return draw


class _CoreTest(unittest.TestCase):
    def core(self, random: Any = None, **options: Any) -> ClientCore:
        self.server = Channel(KEY, KEY_ID, Direction.TO_CLIENT)
        return ClientCore(CoreConfig(**options), random if random is not None else fixed(0.0))

    def enter(
        self, core: ClientCore, now: float = 0.0, operation: Operation = Operation.CREATE, **answer: Any
    ) -> list[Action]:
        """Start, open, ask and answer a create (or join): the actions of the answer."""
        core.start(Membership(operation, "hoge", answer.get("user", "alice"), None, None))
        core.control_opened(SERVER_UDP)
        request, asked = core.ask_room(Membership(operation, "hoge", answer.get("user", "alice"), None, None), now)
        self.assertEqual(of(StartTimer, asked), [StartTimer(REQUEST, core.config.request_timeout)])
        self.assertEqual(decode_frame(of(SendFrame, asked)[0].data).operation, operation)
        actions = core.control_received(ack(operation) + complete(operation, room_answer(**answer)), now)
        answers = of(Answer, actions)
        self.assertEqual(len(answers), 1)
        self.assertEqual(answers[0].request, request)
        self.assertIsInstance(answers[0].result, RoomInfo)
        return actions

    def from_server(self, frame_type: FrameType, body: bytes) -> bytes:
        return self.server.seal(frame_type, body)


class ControlTests(_CoreTest):
    def test_entering(self) -> None:
        """The answer enters the room: state, members, host, a keepalive at once, and its timers."""
        core = self.core()
        actions = self.enter(core, now=5.0)
        self.assertEqual(core.state, ConnectionState.IN_ROOM)
        self.assertEqual(core.members, ("alice",))
        self.assertEqual(core.room_host, "alice")
        self.assertIn(CancelTimer(REQUEST), actions)
        self.assertIn(StartTimer(KEEPALIVE, 30.0), actions)
        self.assertIn(StartTimer(PROBE, 1.5), actions)
        (keepalive,) = of(SendDatagram, actions)
        self.assertEqual(self.server.open(keepalive.data), (FrameType.KEEPALIVE, b""))
        # The Answer comes last, after the state it reports is in place.
        self.assertIsInstance(actions[-1], Answer)

    def test_member_finds_its_host_first_in_the_list(self) -> None:
        core = self.core()
        self.enter(core, operation=Operation.JOIN, user="bob", host=False, members=("alice", "bob"))
        self.assertEqual(core.room_host, "alice")

    def test_frames_in_pieces(self) -> None:
        """Bytes split anywhere make the same frames."""
        core = self.core()
        core.start(Membership(Operation.CREATE, "hoge", "alice", None, None))
        core.control_opened(SERVER_UDP)
        request, _ = core.ask_room(Membership(Operation.CREATE, "hoge", "alice", None, None), 0.0)
        data = ack(Operation.CREATE) + complete(Operation.CREATE, room_answer())
        answers: list[Answer] = []
        for index in range(len(data)):
            answers += of(Answer, core.control_received(data[index : index + 1], 0.0))
        self.assertEqual([answer.request for answer in answers], [request])

    def test_refusal_is_the_named_error(self) -> None:
        core = self.core()
        core.start(Membership(Operation.JOIN, "hoge", "bob", "wrong", None))
        core.control_opened(SERVER_UDP)
        request, _ = core.ask_room(Membership(Operation.JOIN, "hoge", "bob", "wrong", None), 0.0)
        actions = core.control_received(
            ack(Operation.JOIN, status=Status.INVALID_PASSWORD, message="wrong password"), 0.0
        )
        (answer,) = of(Answer, actions)
        self.assertEqual(answer.request, request)
        self.assertIsInstance(answer.error, InvalidPasswordError)
        self.assertIn(CancelTimer(REQUEST), actions)
        self.assertEqual(core.state, ConnectionState.CONNECTING)

    def test_one_request_at_a_time(self) -> None:
        core = self.core()
        self.enter(core)
        core.request(core.members_request(), 0.0)
        self.assertRaises(ClientError, core.request, core.members_request(), 0.0)

    def test_request_times_out(self) -> None:
        core = self.core(request_timeout=3.0)
        self.enter(core)
        request, actions = core.request(core.members_request(), 1.0)
        self.assertIn(StartTimer(REQUEST, 3.0), actions)
        (answer,) = of(Answer, core.timer_fired(REQUEST, 4.0))
        self.assertEqual(answer.request, request)
        self.assertIsInstance(answer.error, ConnectionClosedError)
        # A late answer is nobody's.
        late = core.control_received(ack(Operation.MEMBERS), 5.0)
        self.assertEqual(of(Answer, late), [])
        self.assertEqual(len(of(Log, late)), 1)

    def test_members_answer_and_notices_keep_the_list(self) -> None:
        core = self.core()
        self.enter(core)
        request, _ = core.request(core.members_request(), 0.0)
        actions = core.control_received(
            ack(Operation.MEMBERS)
            + complete(Operation.MEMBERS, {"members": ["alice", "bob"], "host": "alice"})
            + notice(event="joined", room="hoge", user="carol", text="* carol joined"),
            0.0,
        )
        self.assertEqual(of(Answer, actions), [Answer(request, ("alice", "bob"))])
        self.assertEqual(events(actions), [MemberJoined("carol", ("alice", "bob", "carol"), "* carol joined")])
        events_left = events(core.control_received(notice(event="left", room="hoge", user="bob", text="x"), 0.0))
        self.assertEqual(events_left, [MemberLeft("bob", ("alice", "carol"), "x")])
        self.assertEqual(core.members, ("alice", "carol"))

    def test_invite(self) -> None:
        core = self.core()
        self.enter(core)
        request, _ = core.request(core.invite_request(), 0.0)
        actions = core.control_received(ack(Operation.INVITE) + complete(Operation.INVITE, {"invite": "t0k"}), 0.0)
        self.assertEqual(of(Answer, actions), [Answer(request, "t0k")])

    def test_only_the_host_invites(self) -> None:
        core = self.core()
        self.enter(core, operation=Operation.JOIN, user="bob", host=False, members=("alice", "bob"))
        self.assertRaises(NotPermittedError, core.invite_request)
        self.assertRaises(NotPermittedError, core.close_room, 0.0)

    def test_malformed_notice_or_acknowledge_is_an_unreadable_stream(self) -> None:
        """What the protocol's readers refuse is no notice and no answer: the stream is dropped."""
        core = self.core()
        self.enter(core)
        self.assertEqual(core.control_received(notice(event="joined", room="hoge", user=5), 0.0)[-1], AbortControl())
        core = self.core()
        self.enter(core)
        core.request(core.members_request(), 0.0)
        empty = encode_frame(Frame(Operation.MEMBERS, State.ACKNOWLEDGE, "hoge", b""))
        self.assertEqual(core.control_received(empty, 0.0)[-1], AbortControl())

    def test_unreadable_stream_is_aborted(self) -> None:
        core = self.core()
        self.enter(core)
        actions = core.control_received(b"\xff" * 64, 0.0)
        self.assertEqual(actions[-1], AbortControl())


class DatagramTests(_CoreTest):
    def test_relay_and_replay(self) -> None:
        core = self.core()
        self.enter(core)
        datagram = self.from_server(FrameType.RELAY, encode_relay_body("bob", b"hi", 1500))
        first = core.datagram_received(datagram, SERVER_UDP, 1.0)
        self.assertEqual(events(first), [MessageReceived("bob", "hi", 1.5)])
        self.assertIn(CancelTimer(PROBE), first, "the path answered: no probe")
        self.assertEqual(core.datagram_received(datagram, SERVER_UDP, 1.0), [])
        self.assertEqual(core.dropped_datagrams, 1)

    def test_other_sources_are_ignored(self) -> None:
        core = self.core()
        self.enter(core)
        datagram = self.from_server(FrameType.RELAY, encode_relay_body("bob", b"hi", 0))
        self.assertEqual(core.datagram_received(datagram, ("192.0.2.9", 9002), 1.0), [])
        self.assertEqual(core.dropped_datagrams, 0)

    def test_keepalive_answer(self) -> None:
        core = self.core()
        self.enter(core)
        self.assertFalse(core.udp_confirmed)
        actions = core.datagram_received(self.from_server(FrameType.KEEPALIVE_ACK, b""), SERVER_UDP, 0.1)
        self.assertIn(KeepaliveAnswered(), actions)
        self.assertTrue(core.udp_confirmed)

    def test_notice_over_udp_ends_the_room(self) -> None:
        core = self.core()
        self.enter(core, operation=Operation.JOIN, user="bob", host=False, members=("alice", "bob"))
        body = json.dumps({"event": "room_closed", "room": "hoge", "reason": "closed", "text": "* closed"}).encode()
        actions = core.datagram_received(self.from_server(FrameType.NOTICE, body), SERVER_UDP, 1.0)
        self.assertEqual(events(actions), [RoomClosed("hoge", "closed", "* closed")])
        self.assertEqual(core.control_lost("closed", 2.0), [CancelTimer(KEEPALIVE), Shutdown()])
        self.assertEqual(core.state, ConnectionState.CLOSED)

    def test_malformed_notice_datagram_is_dropped(self) -> None:
        core = self.core()
        self.enter(core)
        body = json.dumps({"event": "room_closed", "room": ["hoge"]}).encode()
        actions = core.datagram_received(self.from_server(FrameType.NOTICE, body), SERVER_UDP, 1.0)
        self.assertEqual(events(actions), [])
        self.assertEqual(core.dropped_datagrams, 1)
        self.assertFalse(core.room_over)

    def test_send_message(self) -> None:
        core = self.core()
        self.assertRaises(NotInRoomError, core.send_message, "hi", 0.0)
        self.enter(core)
        (sent,) = of(SendDatagram, core.send_message("hi", 0.0))
        self.assertEqual(self.server.open(sent.data), (FrameType.MESSAGE, b"hi"))
        self.assertRaises(MessageTooLongError, core.send_message, "x" * 70000, 0.0)

    def test_rekey(self) -> None:
        """Near the end of the key's counter a rekey goes out; the old key still opens late copies."""
        core = self.core(rekey_after=3)
        self.enter(core)  # one keepalive sealed
        self.assertEqual(of(SendFrame, core.send_message("one", 0.0)), [])
        actions = core.send_message("two", 0.0)
        (frame,) = of(SendFrame, actions)
        self.assertEqual(decode_frame(frame.data).operation, Operation.REKEY)
        self.assertEqual(of(SendFrame, core.send_message("three", 0.0)), [], "asked once")
        self.assertRaises(ClientError, core.request, core.members_request(), 0.0)
        late = self.from_server(FrameType.RELAY, encode_relay_body("bob", b"old", 0))
        new_key = bytes(32)
        answered = core.control_received(
            ack(Operation.REKEY) + complete(Operation.REKEY, {"key": base64.b64encode(new_key).decode(), "key_id": 8}),
            1.0,
        )
        self.assertEqual(of(Answer, answered), [], "the core's own request")
        self.assertEqual(core.channel is not None and core.channel.key_id, 8)
        self.assertEqual(events(core.datagram_received(late, SERVER_UDP, 1.0)), [MessageReceived("bob", "old", 0.0)])
        server = Channel(new_key, 8, Direction.TO_CLIENT)
        (sent,) = of(SendDatagram, core.send_message("four", 1.0))
        self.assertEqual(server.open(sent.data), (FrameType.MESSAGE, b"four"))


class UdpPathTests(_CoreTest):
    def test_lost_and_restored(self) -> None:
        """Unanswered keepalives: probes every 1.5 s, lost after 4 s, slower probes, restored by any answer."""
        core = self.core()
        self.enter(core)
        self.assertEqual(events(core.timer_fired(PROBE, 1.5)), [])
        self.assertEqual(events(core.timer_fired(PROBE, 3.0)), [])
        actions = core.timer_fired(PROBE, 4.5)
        self.assertEqual(events(actions), [UdpPathLost(4.5)])
        self.assertTrue(core.udp_lost)
        self.assertEqual(len(of(SendDatagram, actions)), 1)
        delays = []
        now = 4.5
        for _ in range(6):
            (timer,) = of(StartTimer, actions)
            delays.append(timer.delay)
            now += timer.delay
            actions = core.timer_fired(PROBE, now)
            self.assertEqual(events(actions), [], "reported once")
        self.assertEqual(delays, [3.0, 6.0, 10.0, 10.0, 10.0, 10.0])
        restored = core.datagram_received(self.from_server(FrameType.KEEPALIVE_ACK, b""), SERVER_UDP, now)
        self.assertEqual(events(restored), [UdpPathRestored()])
        self.assertIn(CancelTimer(PROBE), restored)

    def test_answered_keepalive_stops_the_probe(self) -> None:
        core = self.core()
        self.enter(core)
        core.datagram_received(self.from_server(FrameType.KEEPALIVE_ACK, b""), SERVER_UDP, 0.1)
        self.assertEqual(core.timer_fired(PROBE, 1.5), [], "no probe was running")
        actions = core.timer_fired(KEEPALIVE, 30.0)
        self.assertIn(StartTimer(KEEPALIVE, 30.0), actions)
        self.assertIn(StartTimer(PROBE, 1.5), actions)
        self.assertEqual(len(of(SendDatagram, actions)), 1)

    def test_keepalives_keep_their_schedule(self) -> None:
        """As LoopingCall: a late keepalive does not push the next ones back."""
        core = self.core()
        self.enter(core, now=0.0)
        self.assertIn(StartTimer(KEEPALIVE, 28.0), core.timer_fired(KEEPALIVE, 32.0))
        self.assertIn(StartTimer(KEEPALIVE, 5.0), core.timer_fired(KEEPALIVE, 85.0))

    def test_connection_lost_stops_probing(self) -> None:
        core = self.core(reconnect=False)
        self.enter(core)
        actions = core.control_lost("gone", 1.0)
        self.assertEqual(
            actions,
            [CancelTimer(KEEPALIVE), CancelTimer(PROBE), Emit(ConnectionLost("gone", False)), Shutdown()],
        )
        self.assertEqual(core.timer_fired(PROBE, 1.5), [])


class ReconnectTests(_CoreTest):
    def lose(self, core: ClientCore, now: float = 10.0) -> list[Action]:
        actions = core.control_lost("Connection was closed cleanly.", now)
        self.assertEqual(core.state, ConnectionState.RECONNECTING)
        return actions

    def test_backoff(self) -> None:
        self.assertEqual([backoff(n, 0.5, 4.0) for n in range(1, 6)], [0.5, 1.0, 2.0, 4.0, 4.0])
        self.assertEqual(backoff(3, 1.0, 8.0, 0.2, fixed(0.5)), 3.6)
        self.assertEqual(backoff(3, 1.0, 8.0, 0.0, fixed(0.5)), 4.0)
        # Jittered delays are rounded to the hundredth of a second (0.5 * 0.926 = 0.463)...
        self.assertEqual(backoff(1, 0.5, 4.0, 0.2, fixed(0.37)), 0.46)
        # ... but one under 0.01 s is not rounded away to nothing.
        self.assertEqual(backoff(1, 0.004, 4.0, 0.2, fixed(0.5)), 0.004)

    def test_plain_backoff_is_jittered(self) -> None:
        """
        While the server is out of reach: doubling from the first delay, each
        shortened by up to 20 % at random ('reconnecting in 0.41 s').
        """
        core = self.core(random=fixed(0.9, 0.5, 0.25, 0.0, 1.0), first_retry_delay=0.5, max_retry_delay=2.0)
        self.enter(core)
        actions = self.lose(core)
        self.assertEqual(actions[-3:], [Emit(ConnectionLost("Connection was closed cleanly.", True)), *actions[-2:]])
        # 0.5 s less 0.9 of 20 %: 0.41 s.
        self.assertEqual(actions[-2:], [Emit(Reconnecting(1, 0.41)), Reconnect(0.41)])
        delays: list[float] = []
        for _ in range(4):
            failed = core.rejoin_failed(ConnectionFailedError("refused"), 11.0)
            self.assertEqual(failed[1], CloseControl())
            (event,) = events(failed)
            self.assertEqual(event, Reconnecting(len(delays) + 2, of(Reconnect, failed)[0].delay))
            delays.append(of(Reconnect, failed)[0].delay)
        # 1.0, 2.0, 2.0, 2.0 less 10 %, 5 %, 0 %, 20 %.
        self.assertEqual(delays, [0.9, 1.9, 2.0, 1.6])

    def test_plain_backoff_without_jitter(self) -> None:
        """retry_jitter 0 gives the bare doubling, whatever the random source says."""
        core = self.core(random=fixed(0.9), first_retry_delay=0.5, max_retry_delay=2.0, retry_jitter=0.0)
        self.enter(core)
        self.assertEqual(self.lose(core)[-1], Reconnect(0.5))
        delays = [of(Reconnect, core.rejoin_failed(ConnectionFailedError("refused"), 11.0))[0].delay for _ in range(3)]
        self.assertEqual(delays, [1.0, 2.0, 2.0])

    def test_clients_with_different_draws_come_back_at_different_times(self) -> None:
        """The point of the jitter: clients that lost the server together do not all try again together."""
        delays = []
        for draw in (0.1, 0.6):
            core = self.core(random=fixed(draw), first_retry_delay=0.5, max_retry_delay=30.0)
            self.enter(core)
            tries = of(Reconnect, self.lose(core))
            tries += [of(Reconnect, core.rejoin_failed(ConnectionFailedError("refused"), 11.0))[0] for _ in range(2)]
            delays.append([action.delay for action in tries])
        self.assertEqual(delays, [[0.49, 0.98, 1.96], [0.44, 0.88, 1.76]])

    def test_host_creates_member_joins(self) -> None:
        host = self.core()
        self.enter(host)
        self.assertTrue(host.rejoin_as_host())
        self.assertEqual(host.rejoin_create().operation, Operation.CREATE)
        member = self.core()
        self.enter(member, operation=Operation.JOIN, user="bob", host=False, members=("alice", "bob"))
        self.assertFalse(member.rejoin_as_host())
        self.assertEqual(member.rejoin_membership(), Membership(Operation.JOIN, "hoge", "bob", None, None))

    def test_member_waits_for_the_host_then_gives_up(self) -> None:
        """No room: WaitingForHost with restarted, jittered backoff, until host_wait has passed."""
        # The first draw is the plain backoff's, when the connection is lost (0: 1 s).
        core = self.core(
            random=fixed(0.0, 0.5, 0.25, 1.0, 0.0), first_retry_delay=1.0, max_retry_delay=8.0, host_wait=10.0
        )
        self.enter(core, operation=Operation.JOIN, user="bob", host=False, members=("alice", "bob"))
        self.lose(core, now=0.0)
        waits = []
        now = 1.0
        while True:
            actions = core.rejoin_failed(RoomNotFoundError("no room"), now)
            if Shutdown() in actions:
                break
            (event,) = events(actions)
            assert isinstance(event, WaitingForHost)
            self.assertEqual((event.room, event.host), ("hoge", "alice"))
            waits.append((event.attempt, round(event.delay, 6), round(event.gives_up_in, 6)))
            now += event.delay
        self.assertEqual(waits, [(2, 0.9, 10.0), (3, 1.9, 9.1), (4, 3.2, 7.2), (5, 4.0, 4.0)])
        (lost,) = events(actions)
        self.assertEqual(
            lost,
            ConnectionLost(
                "room hoge is gone since the server restarted, and alice did not reopen it within 10 s", False
            ),
        )
        self.assertEqual(core.state, ConnectionState.CLOSED)

    def test_server_gone_again_resets_the_wait(self) -> None:
        core = self.core(first_retry_delay=1.0, host_wait=10.0)
        self.enter(core, operation=Operation.JOIN, user="bob", host=False, members=("alice", "bob"))
        self.lose(core, now=0.0)
        core.rejoin_failed(RoomNotFoundError("no room"), 1.0)
        self.assertEqual(events(core.rejoin_failed(ConnectionFailedError("down"), 2.0)), [Reconnecting(3, 4.0)])
        # Found again much later: a fresh deadline, not the old one.
        actions = core.rejoin_failed(RoomNotFoundError("no room"), 30.0)
        self.assertIsInstance(events(actions)[0], WaitingForHost)

    def test_spent_invitation_gives_up(self) -> None:
        core = self.core()
        core.start(Membership(Operation.JOIN, "hoge", "bob", None, "t0k"))
        core.control_opened(SERVER_UDP)
        core.ask_room(Membership(Operation.JOIN, "hoge", "bob", None, "t0k"), 0.0)
        core.control_received(
            ack(Operation.JOIN)
            + complete(Operation.JOIN, room_answer(user="bob", host=False, members=("alice", "bob"))),
            0.0,
        )
        self.lose(core)
        actions = core.rejoin_failed(InvalidPasswordError("password"), 11.0)
        self.assertEqual(actions[-1], Shutdown())
        self.assertIn("the invitation was used up", events(actions)[0].reason)

    def test_certificate_refusal_gives_up(self) -> None:
        core = self.core()
        self.enter(core)
        self.lose(core)
        actions = core.rejoin_failed(CertificateError("changed"), 11.0)
        self.assertEqual(events(actions), [ConnectionLost("changed", False)])
        self.assertEqual(actions[-1], Shutdown())

    def test_certificate_refusal_on_the_open_connection(self) -> None:
        core = self.core()
        self.enter(core)
        actions = core.control_lost("tls", 1.0, refusal=CertificateError("changed"))
        self.assertEqual(actions[-1], Shutdown())
        self.assertEqual(events(actions), [])

    def test_other_refusals_retry(self) -> None:
        core = self.core()
        self.enter(core)
        self.lose(core)
        actions = core.rejoin_failed(RoomExistsError("taken"), 11.0)
        self.assertEqual(of(Reconnect, actions), [Reconnect(1.0)])

    def test_rejoined(self) -> None:
        core = self.core()
        self.enter(core)
        self.lose(core)
        self.enter_again(core)
        self.assertEqual(core.rejoined(), [Emit(Reconnected("hoge", ("alice",), "alice"))])

    def enter_again(self, core: ClientCore) -> None:
        core.control_opened(SERVER_UDP)
        core.ask_room(core.rejoin_create(), 12.0)
        core.control_received(ack(Operation.CREATE) + complete(Operation.CREATE, room_answer()), 12.0)
        self.assertEqual(core.state, ConnectionState.IN_ROOM)

    def test_pending_request_fails_with_the_connection(self) -> None:
        core = self.core()
        self.enter(core)
        request, _ = core.request(core.members_request(), 0.0)
        actions = self.lose(core)
        self.assertIsInstance(actions[1], Answer)
        self.assertEqual(of(Answer, actions)[0].request, request)

    def test_leaving_is_not_lost(self) -> None:
        core = self.core()
        self.enter(core)
        core.leave()
        self.assertEqual(core.control_lost("closed", 1.0), [])
        self.assertEqual(core.state, ConnectionState.CLOSED)
