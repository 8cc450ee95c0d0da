"""
The "delivery" feature in chatd.client.core.ClientCore (chatd.client.reliable),
without sockets: the core's actions are opened as the server would open
them, and the server's frames are sealed and handed to the core, by UDP or
inside operation 8 (docs/reliability.md section 4, docs/protocol.md 7.6).
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.client.actions import DELIVERY
from chatd.client.core import (
    DELIVERY_KEEPALIVE,
    KEEPALIVE,
    PROBE,
    Action,
    ClientCore,
    ConnectionState,
    Membership,
    SendDatagram,
    SendFrame,
    StartTimer,
)
from chatd.client.delivery import UDP_BLOCKED, UDP_WORKS, Outbox, PathMonitor, RttEstimator
from chatd.client.events import (
    DeliveryPathChanged,
    MessageReceived,
    MessagesMissed,
    MessageStateChanged,
    RoomRecreated,
    UdpPathLost,
    UdpPathRestored,
)
from chatd.protocol.datagrams import FrameType
from chatd.protocol.delivery import (
    MAX_NATIVE_DATAGRAM,
    Send,
    SeqRange,
    decode_range,
    decode_send,
    encode_latest,
    encode_posted,
    encode_range,
    encode_sent,
)
from chatd.protocol.errors import MessageTooLongError
from chatd.protocol.seal import Channel, Direction
from chatd.protocol.wire import Frame, Operation, State, decode_frame, encode_frame
from tests.client.test_core import KEY, KEY_ID, SERVER_UDP, _CoreTest, ack, complete, events, of, room_answer

EPOCH = "0123456789abcdef"
URL_SAFE = set(string.ascii_letters + string.digits + "-_")


def grant(seq: int = 0, history_from: int | None = None, epoch: str = EPOCH) -> dict[str, Any]:
    """The answer's members for a granted feature (docs/protocol.md 4.2)."""
    start = {"epoch": epoch, "seq": seq, "history_from": seq + 1 if history_from is None else history_from}
    return {"features": ["delivery"], "delivery": start}


def request_payload(actions: list[Action]) -> dict[str, Any]:
    (sent,) = of(SendFrame, actions)
    return dict(json.loads(decode_frame(sent.data).payload))


class _DeliveryTest(_CoreTest):
    def delivering(self, seq: int = 0, history_from: int | None = None, **options: Any) -> ClientCore:
        """A core with the feature granted, in room 'hoge' as alice (the host); its first keepalive read."""
        core = self.core(delivery=True, **options)
        self.entered = self.enter(core, **grant(seq, history_from))
        self.assertTrue(core.delivery)
        return core

    def wire(self, actions: list[Action]) -> list[tuple[str, FrameType, bytes]]:
        """What the core put on the wire, opened as the server opens it: (transport, frame type, body)."""
        sent: list[tuple[str, FrameType, bytes]] = []
        for action in actions:
            if isinstance(action, SendDatagram):
                self.assertLessEqual(len(action.data), MAX_NATIVE_DATAGRAM, "no datagram over 1200 bytes")
                frame_type, body = self.server.open(action.data)
                sent.append(("udp", FrameType(frame_type), body))
            elif isinstance(action, SendFrame):
                frame = decode_frame(action.data, 1 << 16)
                if frame.operation is not Operation.DATAGRAM:
                    continue
                self.assertEqual((frame.state, frame.room), (State.REQUEST, "hoge"))
                frame_type, body = self.server.open(frame.payload)
                sent.append(("tcp", FrameType(frame_type), body))
        return sent

    def kinds(self, actions: list[Action]) -> list[tuple[str, FrameType]]:
        return [(transport, kind) for transport, kind, _ in self.wire(actions)]

    def udp(self, core: ClientCore, frame_type: FrameType, body: bytes, now: float) -> list[Action]:
        return core.datagram_received(self.from_server(frame_type, body), SERVER_UDP, now)

    def tcp(self, core: ClientCore, frame_type: FrameType, body: bytes, now: float) -> list[Action]:
        frame = Frame(Operation.DATAGRAM, State.COMPLETE, "hoge", self.from_server(frame_type, body))
        return core.control_received(encode_frame(frame), now)

    def posted(self, core: ClientCore, seq: int, now: float, sender: str = "bob", text: str | None = None) -> Any:
        body = encode_posted(seq, seq * 1000, sender, text if text is not None else f"m{seq}")
        return self.udp(core, FrameType.POSTED, body, now)

    def delivery_timer(self, actions: list[Action]) -> float | None:
        """The delay of the last DELIVERY timer started among C{actions}, if any."""
        delays = [a.delay for a in of(StartTimer, actions) if a.name == DELIVERY]
        return delays[-1] if delays else None


class RequestTests(_DeliveryTest):
    def test_asks_for_the_feature_with_its_client_id(self) -> None:
        core = self.core(delivery=True)
        wanted = Membership(Operation.CREATE, "hoge", "alice", None, None)
        core.start(wanted)
        core.control_opened(SERVER_UDP)
        payload = request_payload(core.ask_room(wanted, 0.0)[1])
        self.assertEqual(payload["features"], ["delivery"])
        self.assertEqual(payload["client"], core.client_id)
        self.assertEqual(len(core.client_id), 16)
        self.assertLessEqual(set(core.client_id), URL_SAFE)
        self.assertNotEqual(core.client_id, self.core(delivery=True).client_id, "random per core")

    def test_off_by_default(self) -> None:
        core = self.core()
        wanted = Membership(Operation.CREATE, "hoge", "alice", None, None)
        core.start(wanted)
        core.control_opened(SERVER_UDP)
        self.assertEqual(request_payload(core.ask_room(wanted, 0.0)[1]), {"chatd": 1, "username": "alice"})

    def test_a_grant_not_asked_for_is_not_taken(self) -> None:
        core = self.core()
        self.enter(core, **grant())
        self.assertFalse(core.delivery)
        self.assertIsNone(core.delivery_stats)

    def test_without_the_grant_as_before(self) -> None:
        core = self.core(delivery=True)
        self.enter(core)
        self.assertFalse(core.delivery)
        self.assertIsNone(core.delivery_path)
        message_id, actions = core.post("hi", 0.0)
        self.assertIsNone(message_id)
        self.assertEqual(self.kinds(actions), [("udp", FrameType.MESSAGE)])
        self.assertEqual(core.retry(0.0), ([], []))


class ReceivingTests(_DeliveryTest):
    def test_history_on_join(self) -> None:
        """The history offered (history_from..seq) is asked for at once, after the keepalive, and shown as history."""
        core = self.delivering(seq=5, history_from=3)
        wire = self.wire(self.entered)
        self.assertEqual([kind for _, kind, _ in wire], [FrameType.KEEPALIVE, FrameType.REPAIR])
        self.assertEqual(decode_range(wire[1][2]), SeqRange(3, 5))
        shown = []
        for seq in (4, 3, 5):
            shown += events(self.posted(core, seq, 0.1))
        self.assertEqual(shown, [MessageReceived("bob", f"m{seq}", float(seq), seq, history=True) for seq in (3, 4, 5)])
        after = events(self.posted(core, 6, 0.2))
        self.assertEqual(after, [MessageReceived("bob", "m6", 6.0, 6, history=False)])

    def test_gap_is_repaired(self) -> None:
        core = self.delivering()
        self.assertEqual(len(events(self.posted(core, 1, 0.1))), 1)
        later = self.posted(core, 3, 0.2)
        self.assertEqual(events(later), [], "3 waits for 2")
        delay = self.delivery_timer(later)
        assert delay is not None
        self.assertAlmostEqual(delay, RttEstimator().reorder_delay)
        repair = self.wire(core.timer_fired(DELIVERY, 0.2 + delay))
        self.assertEqual([(kind, decode_range(body)) for _, kind, body in repair], [(FrameType.REPAIR, SeqRange(2, 2))])
        self.assertEqual([e.seq for e in events(self.posted(core, 2, 0.5))], [2, 3])
        stats = core.delivery_stats
        assert stats is not None
        self.assertEqual(stats.repaired, 1)

    def test_gone_is_missed(self) -> None:
        core = self.delivering(seq=10, history_from=1)
        shown = events(self.udp(core, FrameType.GONE, encode_range(1, 7), 0.1))
        self.assertEqual(shown, [MessagesMissed(1, 7, "7 messages missed")])
        self.assertEqual([e.seq for e in events(self.posted(core, 8, 0.1))], [8])

    def test_tail_loss_found_by_keepalive_answer(self) -> None:
        core = self.delivering()
        self.posted(core, 1, 0.1)
        answered = self.udp(core, FrameType.KEEPALIVE_ACK, encode_latest(2), 0.2)
        delay = self.delivery_timer(answered)
        assert delay is not None
        repair = self.wire(core.timer_fired(DELIVERY, 0.2 + delay))
        self.assertEqual([decode_range(body) for _, _, body in repair], [SeqRange(2, 2)])

    def test_duplicates_dropped(self) -> None:
        core = self.delivering()
        self.assertEqual(len(events(self.posted(core, 1, 0.1))), 1)
        self.assertEqual(events(self.posted(core, 1, 0.1)), [], "a second copy (another counter)")
        stats = core.delivery_stats
        assert stats is not None
        self.assertEqual(stats.duplicates, 1)

    def test_own_messages_fill_their_place(self) -> None:
        core = self.delivering()
        message_id, _ = core.post("mine", 0.0)
        assert message_id is not None
        self.assertEqual(events(self.posted(core, 2, 0.1)), [])
        sent = self.udp(core, FrameType.SENT, encode_sent(message_id, 1, 1000), 0.1)
        self.assertEqual(
            events(sent),
            [MessageStateChanged(message_id, "mine", "sent", 1), MessageReceived("bob", "m2", 2.0, 2)],
        )

    def test_over_operation_8(self) -> None:
        """A sealed frame inside operation 8 is read as a datagram, under the same replay window."""
        core = self.delivering()
        sealed = self.from_server(FrameType.POSTED, encode_posted(1, 1000, "bob", "via tcp"))
        frame = encode_frame(Frame(Operation.DATAGRAM, State.COMPLETE, "hoge", sealed))
        self.assertEqual(events(core.control_received(frame, 0.1)), [MessageReceived("bob", "via tcp", 1.0, 1)])
        self.assertEqual(core.datagram_received(sealed, SERVER_UDP, 0.1), [], "the same frame by UDP: a replay")
        self.assertEqual(core.dropped_datagrams, 1)

    def test_operation_8_refusal_is_no_answer(self) -> None:
        core = self.delivering()
        core.request(core.members_request(), 0.1)
        refusal = encode_frame(Frame(Operation.DATAGRAM, State.ACKNOWLEDGE, "hoge", bytes([9])))
        self.assertEqual([type(a).__name__ for a in core.control_received(refusal, 0.2)], ["Log"])
        self.assertIsNotNone(core._requests.pending, "the waiting request still waits")


class SendingTests(_DeliveryTest):
    def test_retransmitted_until_sent(self) -> None:
        core = self.delivering()
        message_id, actions = core.post("hello", 0.0)
        self.assertEqual(message_id, 1)
        self.assertEqual(events(actions), [MessageStateChanged(1, "hello", "sending")])
        self.assertEqual(self.wire(actions), [("udp", FrameType.SEND, (1).to_bytes(8, "big") + b"hello")])
        self.assertEqual(self.delivery_timer(actions), RttEstimator.INITIAL_RTO)
        again = self.wire(core.timer_fired(DELIVERY, 1.0))
        self.assertEqual([decode_send(body) for _, _, body in again], [Send(1, "hello")])
        sent = self.udp(core, FrameType.SENT, encode_sent(1, 1, 1500), 1.1)
        self.assertEqual(events(sent), [MessageStateChanged(1, "hello", "sent", 1)])
        self.assertEqual(events(self.udp(core, FrameType.SENT, encode_sent(1, 1, 1500), 1.2)), [], "said once")
        stats = core.delivery_stats
        assert stats is not None
        self.assertEqual(stats.retransmissions, 1)

    def test_give_up_and_retry(self) -> None:
        core = self.delivering()
        self.udp(core, FrameType.KEEPALIVE_ACK, encode_latest(0), 0.0)
        actions = core.post("lost", 0.0)[1]
        now, sends, failed = 0.0, 0, []
        for _ in range(20):
            sends += len([kind for _, kind in self.kinds(actions) if kind is FrameType.SEND])
            failed += [e for e in events(actions) if isinstance(e, MessageStateChanged) and e.state != "sending"]
            if failed:
                break
            delay = self.delivery_timer(actions)
            assert delay is not None
            now += delay
            actions = core.timer_fired(DELIVERY, now)
        self.assertEqual(failed, [MessageStateChanged(1, "lost", "not delivered")])
        self.assertEqual(sends, Outbox.MAX_SENDS)
        ids, retried = core.retry(now)
        self.assertEqual(ids, [1])
        self.assertEqual(events(retried), [MessageStateChanged(1, "lost", "sending")])
        resent = [decode_send(body) for _, kind, body in self.wire(retried) if kind is FrameType.SEND]
        self.assertEqual(resent, [Send(1, "lost")])

    def test_long_message_over_tcp(self) -> None:
        core = self.delivering()
        text = "x" * (MAX_NATIVE_DATAGRAM - 40 + 1)
        self.assertEqual(self.kinds(core.post(text, 0.0)[1]), [("tcp", FrameType.SEND)])
        self.assertEqual(self.kinds(core.post(text[:-1], 0.0)[1]), [("udp", FrameType.SEND)], "1200 bytes: UDP")
        self.assertEqual(core.delivery_path, "udp", "the path did not change")

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, 4200), st.sampled_from(["a", "é", "日", "😀"]))
    def test_no_datagram_over_1200_bytes(self, size: int, letter: str) -> None:
        """Whatever the text's size up to the relay's limit: a SEND frame that would be over 1200 bytes goes by TCP."""
        self.server = Channel(KEY, KEY_ID, Direction.TO_CLIENT)
        core = self.core(delivery=True)
        self.enter(core, **grant())
        text = letter * (size // len(letter.encode()))
        try:
            actions = core.post(text, 0.0)[1]
        except MessageTooLongError:
            self.assertGreater(len(text.encode()) + len("alice") + 41, 4096)
            return
        (sent,) = self.wire(actions)  # checks every datagram's size
        self.assertEqual(sent[0], "tcp" if len(text.encode()) + 40 > MAX_NATIVE_DATAGRAM else "udp")


class PathTests(_DeliveryTest):
    def test_to_tcp_when_the_first_keepalive_is_not_answered(self) -> None:
        core = self.delivering()
        self.assertEqual(self.delivery_timer(self.entered), PathMonitor.FIRST_ANSWER_WAIT)
        heard: list[Any] = []
        early = core.timer_fired(PROBE, 1.5)
        self.assertEqual(self.kinds(early), [("udp", FrameType.KEEPALIVE)])
        switched = core.timer_fired(DELIVERY, 3.0)
        heard += events(switched)
        self.assertEqual(heard, [DeliveryPathChanged("tcp", UDP_BLOCKED)])
        self.assertEqual(self.kinds(switched), [("tcp", FrameType.KEEPALIVE)])
        self.assertEqual(core.delivery_path, "tcp")
        # Everything goes over TCP now; no UdpPathLost ever (the path monitor tells).
        self.assertEqual(self.kinds(core.post("hi", 3.1)[1]), [("tcp", FrameType.SEND)])
        answered = self.tcp(core, FrameType.KEEPALIVE_ACK, encode_latest(0), 3.2)
        self.assertEqual(events(answered), [])
        self.assertEqual(core.timer_fired(PROBE, 4.5), [], "answered over TCP: no early keepalive")
        acknowledged = self.tcp(core, FrameType.SENT, encode_sent(1, 1, 3200), 3.3)
        self.assertEqual(self.delivery_timer(acknowledged), 8.0 - 3.3, "a probe 5 s after the switch")
        probe = core.timer_fired(DELIVERY, 8.0)
        self.assertEqual(self.kinds(probe), [("udp", FrameType.PROBE)])
        back = self.udp(core, FrameType.KEEPALIVE_ACK, encode_latest(0), 8.1)
        self.assertEqual(events(back), [DeliveryPathChanged("udp", UDP_WORKS)])
        self.assertEqual(self.kinds(back), [("udp", FrameType.KEEPALIVE)], "moves the server's path back")
        self.assertEqual(self.kinds(core.post("again", 8.2)[1]), [("udp", FrameType.SEND)])
        self.assertEqual(core.delivery_path, "udp")

    def test_to_tcp_when_keepalives_go_unanswered_later(self) -> None:
        core = self.delivering()
        self.udp(core, FrameType.KEEPALIVE_ACK, encode_latest(0), 0.1)
        heard: list[Any] = []
        kinds: list[tuple[str, FrameType]] = []
        actions = core.timer_fired(KEEPALIVE, 30.0)
        for now in (30.0, 31.5, 33.0, 34.5, 36.0):
            if now > 30.0:
                actions = core.timer_fired(PROBE, now)
            heard += events(actions)
            kinds += self.kinds(actions)
            if heard:
                break
        self.assertEqual(heard, [DeliveryPathChanged("tcp", UDP_BLOCKED)])
        self.assertNotIn(UdpPathLost, [type(e) for e in heard])
        self.assertEqual(kinds[-1], ("tcp", FrameType.KEEPALIVE))
        self.assertEqual(kinds[:-1], [("udp", FrameType.KEEPALIVE)] * (len(kinds) - 1))

    def test_keepalives_every_ten_seconds_at_most(self) -> None:
        # The server asks for 30 s (room_answer's keepalive_interval); a listener must find a blocked path sooner.
        core = self.delivering()
        answered = self.udp(core, FrameType.KEEPALIVE_ACK, encode_latest(0), 0.1)
        keepalive = [a for a in [*self.entered, *answered] if isinstance(a, StartTimer) and a.name == KEEPALIVE]
        self.assertTrue(keepalive)
        self.assertLessEqual(keepalive[-1].delay, DELIVERY_KEEPALIVE)
        self.assertEqual(self.kinds(core.timer_fired(KEEPALIVE, DELIVERY_KEEPALIVE)), [("udp", FrameType.KEEPALIVE)])

    def test_to_tcp_when_a_message_goes_unanswered(self) -> None:
        core = self.delivering()
        self.udp(core, FrameType.KEEPALIVE_ACK, encode_latest(0), 0.1)
        _, posted = core.post("anyone?", 5.0)
        self.assertEqual(self.kinds(posted), [("udp", FrameType.SEND)])
        # Retransmissions by UDP, nothing heard: at 3 s the path is judged blocked.
        heard: list[Any] = []
        kinds: list[tuple[str, FrameType]] = []
        now = 5.0
        while not heard and now < 9.0:
            now = round(now + 0.1, 1)
            actions = core.timer_fired(DELIVERY, now)
            heard += events(actions)
            kinds += self.kinds(actions)
        self.assertEqual(heard, [DeliveryPathChanged("tcp", UDP_BLOCKED)])
        self.assertEqual(now, 8.0)
        # The keepalive that moves the server's path, and the message again at once, over TCP.
        self.assertEqual(kinds[-2:], [("tcp", FrameType.KEEPALIVE), ("tcp", FrameType.SEND)])

    def test_no_udp_path_events_with_the_feature(self) -> None:
        core = self.delivering()
        heard: list[Any] = []
        for now in (1.5, 3.0, 4.5, 6.0, 7.5):
            heard += events(core.timer_fired(PROBE, now))
        heard += events(self.udp(core, FrameType.KEEPALIVE_ACK, encode_latest(0), 8.0))
        self.assertFalse([e for e in heard if isinstance(e, UdpPathLost | UdpPathRestored)])


class RejoinTests(_DeliveryTest):
    def rejoin(self, core: ClientCore, now: float, away: str | None = None, **answer: Any) -> list[Action]:
        """
        Lose the connection, come back (a create again, as the host) under a
        new key: the answer's actions. C{away}: a message typed meanwhile.
        """
        core.control_lost("gone", now)
        self.assertEqual(core.state, ConnectionState.RECONNECTING)
        if away is not None:
            message_id, waiting = core.post(away, now)
            self.assertIsNotNone(message_id)
            self.assertEqual(self.wire(waiting), [], "it waits for the rejoin")
        core.reconnect_due(now + 1)
        asked = core.control_opened(SERVER_UDP)
        self.assertEqual(request_payload(asked)["client"], core.client_id, "the same id across reconnections")
        self.server = Channel(KEY, KEY_ID + 1, Direction.TO_CLIENT)
        return core.control_received(
            ack(Operation.CREATE) + complete(Operation.CREATE, room_answer(key_id=KEY_ID + 1, **answer)), now + 1
        )

    def test_resume_and_resend(self) -> None:
        core = self.delivering()
        self.posted(core, 1, 0.1)
        core.post("unacknowledged", 0.2)
        back = self.rejoin(core, 5.0, "typed while away", **grant(seq=4))
        wire = self.wire(back)
        self.assertEqual(
            [(kind, decode_send(body) if kind is FrameType.SEND else decode_range(body)) for _, kind, body in wire[1:]],
            [
                (FrameType.SEND, Send(1, "unacknowledged")),
                (FrameType.SEND, Send(2, "typed while away")),
                (FrameType.REPAIR, SeqRange(2, 4)),
            ],
        )
        self.assertEqual(wire[0][1], FrameType.KEEPALIVE)
        shown = events(self.posted(core, 2, 7.0)) + events(self.posted(core, 3, 7.0))
        self.assertEqual([(e.seq, e.history) for e in shown], [(2, False), (3, False)])

    def test_on_tcp_the_rejoin_keeps_the_path(self) -> None:
        """Back on a new connection, a member on TCP moves the server's path there with its first keepalive."""
        core = self.delivering()
        core.timer_fired(DELIVERY, 3.0)
        self.assertEqual(core.delivery_path, "tcp")
        back = self.rejoin(core, 5.0, **grant())
        self.assertEqual(self.kinds(back)[0], ("tcp", FrameType.KEEPALIVE))
        self.assertEqual(events(back), [], "no path change to tell")

    def test_udp_judged_afresh_after_a_rejoin(self) -> None:
        """On UDP, the wait for the first answer starts again with the new membership, not before the loss."""
        core = self.delivering()
        back = self.rejoin(core, 5.0, **grant())
        self.assertEqual(self.kinds(back), [("udp", FrameType.KEEPALIVE)])
        self.assertEqual(self.delivery_timer(back), PathMonitor.FIRST_ANSWER_WAIT)

    def test_room_created_again(self) -> None:
        core = self.delivering()
        self.posted(core, 1, 0.1)
        back = self.rejoin(core, 5.0, **grant(seq=0, epoch="fedcba9876543210"))
        self.assertIn(RoomRecreated("hoge", "the room was created again; earlier messages are gone"), events(back))
        self.assertEqual(events(self.posted(core, 1, 7.0)), [MessageReceived("bob", "m1", 1.0, 1)])

    def test_a_new_membership_starts_afresh(self) -> None:
        core = self.delivering()
        core.post("never acknowledged", 0.1)
        core.leave()
        self.server = Channel(KEY, KEY_ID, Direction.TO_CLIENT)
        self.enter(core, **grant(seq=3, history_from=4))
        message_id, actions = core.post("next", 1.0)
        self.assertEqual(message_id, 2, "ids go on: the server may remember this client's window")
        self.assertEqual([decode_send(b) for _, k, b in self.wire(actions) if k is FrameType.SEND], [Send(2, "next")])
