"""
Reliable delivery on the TCP side (chatd.daemon.tcp): the create/join answer's
DeliveryStart, operation 8 both ways and its refusals, on real RoomProtocols.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon import rooms
from chatd.daemon.history import RoomHistory
from chatd.daemon.rooms import Member
from chatd.daemon.tcp import RoomProtocol
from chatd.protocol.datagrams import FrameType, encode_legacy
from chatd.protocol.delivery import decode_latest, decode_posted, decode_sent, encode_range, encode_send
from chatd.protocol.payloads import DELIVERY
from chatd.protocol.seal import Channel, Direction
from chatd.protocol.wire import Frame, Operation, SizeEncoding, State, encode_frame
from tests.helpers import connect, frames, make_server, request

ANN = ("127.0.0.1", 5000)


class Client:
    """One connection's client: its protocol, transport, answer and key."""

    def __init__(self, protocol: RoomProtocol, transport: StringTransport, answer: dict[str, Any]) -> None:
        self.protocol = protocol
        self.transport = transport
        self.answer = answer
        self.channel = Channel(base64.b64decode(answer["key"]), answer["key_id"], Direction.TO_SERVER)

    @property
    def member(self) -> Member:
        member = self.protocol.member
        assert member is not None
        return member

    def tunnel(self, frame_type: FrameType, body: bytes = b"", room: str = "hoge") -> None:
        self.protocol.dataReceived(
            encode_frame(Frame(Operation.DATAGRAM, State.REQUEST, room, self.channel.seal(frame_type, body)))
        )

    def tunnelled(self) -> list[tuple[int, bytes]]:
        """The operation 8 frames the server sent, opened (and forgotten); any other frame fails."""
        got = []
        for frame in frames(self.transport):
            assert (frame.operation, frame.state, frame.room) == (Operation.DATAGRAM, State.COMPLETE, "hoge"), frame
            got.append(self.channel.open(frame.payload))
        return got


class DeliveryTcpCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server(history_on_join=2)
        self.ports = iter(range(41000, 42000))

    def enter(self, user: str, *, features: list[str] | None = None, client: str | None = None) -> Client:
        protocol, transport = connect(self.server, port=next(self.ports))
        payload: dict[str, Any] = {"chatd": 1, "username": user}
        if features is not None:
            payload["features"] = features
        if client is not None:
            payload["client"] = client
        operation = Operation.JOIN if self.server.store.rooms() else Operation.CREATE
        protocol.dataReceived(request(operation, "hoge", payload))
        ack, complete = frames(transport)
        self.assertEqual(ack.payload, b"\x00")
        return Client(protocol, transport, json.loads(complete.payload))


class EnteringTests(DeliveryTcpCase):
    def test_the_answer_carries_where_the_member_starts(self) -> None:
        ann = self.enter("ann", features=[DELIVERY, "unknown"])
        self.assertEqual(ann.answer["features"], [DELIVERY])
        history = ann.member.room.history
        self.assertEqual(ann.answer["delivery"], {"epoch": history.epoch, "seq": 0, "history_from": 1})
        self.assertTrue(ann.member.delivery)
        for message_id in range(1, 6):
            ann.tunnel(FrameType.SEND, encode_send(message_id, "x"))
        bob = self.enter("bob", features=[DELIVERY])
        # --history-on-join 2: the last two of five.
        self.assertEqual(bob.answer["delivery"], {"epoch": history.epoch, "seq": 5, "history_from": 4})

    def test_without_the_feature_the_answer_is_as_before(self) -> None:
        pat = self.enter("pat")
        self.assertNotIn("features", pat.answer)
        self.assertNotIn("delivery", pat.answer)
        self.assertFalse(pat.member.delivery)
        self.assertEqual(
            list(pat.answer),
            [
                "chatd",
                "token",
                "key",
                "key_id",
                "room",
                "user",
                "host",
                "members",
                "idle_timeout",
                "keepalive_interval",
                # Every native answer's, feature or not (docs/protocol.md 4.2).
                "resume",
            ],
        )

    def test_the_user_name_and_client_id_key_the_window(self) -> None:
        ann = self.enter("ann", features=[DELIVERY], client="phone")
        self.assertEqual(ann.member.window_key, ("ann", "phone"))
        pat = self.enter("pat", features=[DELIVERY])
        self.assertIs(pat.member.window_key, pat.member)


class TunnelTests(DeliveryTcpCase):
    def test_a_keepalive_over_tcp_is_answered_over_tcp_and_moves_the_path(self) -> None:
        ann = self.enter("ann", features=[DELIVERY])
        ann.tunnel(FrameType.KEEPALIVE)
        self.assertEqual([(k, decode_latest(b)) for k, b in ann.tunnelled()], [(FrameType.KEEPALIVE_ACK, 0)])
        self.assertTrue(ann.member.on_tcp)
        self.assertFalse(ann.transport.disconnecting)
        self.assertEqual(self.server.relay.stats.delivery.tunneled_in, 1)

    def test_a_send_over_tcp_is_relayed_and_acknowledged_over_tcp(self) -> None:
        ann = self.enter("ann", features=[DELIVERY])
        bob = self.enter("bob", features=[DELIVERY])
        frames(ann.transport)  # bob's join notice
        bob.tunnel(FrameType.KEEPALIVE)
        bob.tunnelled()
        ann.tunnel(FrameType.KEEPALIVE)
        ann.tunnelled()
        ann.tunnel(FrameType.SEND, encode_send(1, "hello"))
        ((kind, body),) = ann.tunnelled()
        self.assertEqual((kind, decode_sent(body).seq), (FrameType.SENT, 1))
        ((kind, body),) = bob.tunnelled()
        self.assertEqual((kind, decode_posted(body).text), (FrameType.POSTED, "hello"))
        self.assertEqual(self.udp.written, [])

    def test_a_long_message_reaches_a_udp_member_over_tcp(self) -> None:
        ann = self.enter("ann", features=[DELIVERY])
        bob = self.enter("bob", features=[DELIVERY])
        frames(ann.transport)
        self.server.relay.datagramReceived(bob.channel.seal(FrameType.KEEPALIVE, b""), ANN)
        self.udp.written.clear()
        text = "é" * 1000
        ann.tunnel(FrameType.SEND, encode_send(1, text))
        ((kind, body),) = bob.tunnelled()
        self.assertEqual((kind, decode_posted(body).text), (FrameType.POSTED, text))
        self.assertFalse(bob.member.on_tcp)
        self.assertEqual(self.udp.written, [])

    def test_a_forgery_is_dropped_without_closing(self) -> None:
        ann = self.enter("ann", features=[DELIVERY])
        sealed = bytearray(ann.channel.seal(FrameType.KEEPALIVE, b""))
        sealed[20] ^= 0xFF
        ann.protocol.dataReceived(encode_frame(Frame(Operation.DATAGRAM, State.REQUEST, "hoge", bytes(sealed))))
        self.assertEqual(frames(ann.transport), [])
        self.assertFalse(ann.transport.disconnecting)
        self.assertEqual(self.server.relay.drops.counts["unauthenticated"], 1)
        # And the connection goes on: a real keepalive is answered.
        ann.tunnel(FrameType.KEEPALIVE)
        self.assertEqual(len(ann.tunnelled()), 1)

    def test_another_members_frame_is_dropped_without_closing(self) -> None:
        ann = self.enter("ann", features=[DELIVERY])
        bob = self.enter("bob", features=[DELIVERY])
        frames(ann.transport)
        sealed = bob.channel.seal(FrameType.SEND, encode_send(1, "as bob"))
        ann.protocol.dataReceived(encode_frame(Frame(Operation.DATAGRAM, State.REQUEST, "hoge", sealed)))
        self.assertEqual((frames(ann.transport), frames(bob.transport)), ([], []))
        self.assertEqual(self.server.relay.drops.counts["wrong_source"], 1)
        self.assertFalse(ann.transport.disconnecting)
        self.assertEqual(bob.member.room.history.latest, 0)

    def test_a_legacy_datagram_inside_is_malformed(self) -> None:
        ann = self.enter("ann", features=[DELIVERY])
        ann.protocol.dataReceived(
            encode_frame(
                Frame(Operation.DATAGRAM, State.REQUEST, "hoge", encode_legacy("hoge", ann.member.token, "hi"))
            )
        )
        self.assertEqual(frames(ann.transport), [])
        self.assertEqual(self.server.relay.drops.counts["malformed"], 1)


class RefusalTests(DeliveryTcpCase):
    def assert_refused(self, transport: StringTransport) -> None:
        (refusal,) = frames(transport)
        self.assertEqual(
            (refusal.operation, refusal.state, refusal.payload[:1]), (Operation.DATAGRAM, State.ACKNOWLEDGE, b"\x09")
        )
        self.assertFalse(transport.disconnecting)

    def test_a_member_without_the_feature_is_refused(self) -> None:
        pat = self.enter("pat")
        pat.tunnel(FrameType.KEEPALIVE)
        self.assert_refused(pat.transport)
        self.assertEqual(self.server.relay.stats.delivery.tunneled_in, 0)

    def test_a_connection_in_no_room_is_refused(self) -> None:
        protocol, transport = connect(self.server, port=7)
        protocol.dataReceived(request(Operation.DATAGRAM, "hoge", b"\x00" * 32))
        self.assert_refused(transport)
        protocol.connectionLost()

    def test_a_legacy_member_is_refused(self) -> None:
        protocol, transport = connect(self.server, port=8)
        protocol.dataReceived(request(Operation.CREATE, "hoge", "sam", SizeEncoding.ASCII))
        frames(transport)
        protocol.dataReceived(request(Operation.DATAGRAM, "hoge", b"\x00" * 32, SizeEncoding.ASCII))
        self.assert_refused(transport)

    def test_another_room_is_refused(self) -> None:
        ann = self.enter("ann", features=[DELIVERY])
        ann.tunnel(FrameType.KEEPALIVE, room="other")
        self.assert_refused(ann.transport)


class ClosedConnectionTests(DeliveryTcpCase):
    def test_a_closing_connection_sends_nothing_more(self) -> None:
        ann = self.enter("ann", features=[DELIVERY])
        ann.protocol.close()
        self.assertFalse(ann.protocol.send_datagram(b"\x00" * 32))


class ExampleTests(SynchronousTestCase):
    def test_the_bytes_of_the_example(self) -> None:
        """docs/protocol.md section 8.12, byte for byte."""
        keys = iter([bytes(range(0x20, 0x40)), bytes(range(0x40, 0x60))])
        key_ids = iter([0x0A0B0C0D, 0x01020304])
        tokens = iter(["q7Rt2WmZ4xPa9LkD3vBn0A", "Hc5Ue8Jf1Ys6Gd0Tw3Mb7Q"])
        self.patch(rooms, "new_key", lambda: next(keys))
        self.patch(rooms, "new_key_id", lambda: next(key_ids))
        self.patch(rooms, "new_token", lambda: next(tokens))
        server, clock, udp = make_server(history_messages=3)
        self.patch(server.store, "_new_history", lambda: RoomHistory(3, 262144, epoch="5eed0c0ffee0d00d"))
        clock.advance(1767225600.5)
        answers: list[tuple[RoomProtocol, StringTransport, dict[str, Any]]] = []
        for port, payload in (
            (41001, {"chatd": 1, "username": "ann", "features": ["delivery"], "client": "ann-laptop"}),
            (41002, {"chatd": 1, "username": "bob", "features": ["delivery"]}),
        ):
            protocol, transport = connect(server, port=port)
            protocol.dataReceived(request(Operation.JOIN if answers else Operation.CREATE, "hoge", payload))
            answers.append((protocol, transport, json.loads(frames(transport)[1].payload)))
        bob_protocol, bob_transport, bob_answer = answers[1]
        self.assertEqual(bob_answer["delivery"], {"epoch": "5eed0c0ffee0d00d", "seq": 0, "history_from": 1})
        ann = Channel(bytes(range(0x20, 0x40)), 0x0A0B0C0D, Direction.TO_SERVER)
        bob = Channel(bytes(range(0x40, 0x60)), 0x01020304, Direction.TO_SERVER)
        ann_at, bob_at = ("127.0.0.1", 50001), ("127.0.0.1", 50002)
        relay = server.relay
        relay.datagramReceived(ann.seal(FrameType.KEEPALIVE, b""), ann_at)
        relay.datagramReceived(bob.seal(FrameType.KEEPALIVE, b""), bob_at)
        udp.written.clear()
        send = ann.seal(FrameType.SEND, encode_send(1, "hi"))
        self.assertEqual(
            send.hex(), "0001000a0b0c0d00000000000000015557dab61605c70ebb689dd415cc9bc7fba6eb8ce00dcba57de06c"
        )
        relay.datagramReceived(send, ann_at)
        self.assertEqual(
            sorted((address, data.hex()) for data, address in udp.written),
            [
                (
                    ann_at,
                    "0001000a0b0c0d0000000000000001145af5ccdc7f57e00ffe952bc040a098e7117815c5dd76bd6a23e336272c50f10f9295ad1e24550b79",
                ),
                (
                    bob_at,
                    "0001000102030400000000000000014a812fd6cfe41d27b9f565beceb442a4abe52867f4af8c7ce64627f916813f8c3ca2611fa13358",
                ),
            ],
        )
        udp.written.clear()
        relay.datagramReceived(bob.seal(FrameType.KEEPALIVE, b""), bob_at)
        self.assertEqual(
            [data.hex() for data, _ in udp.written],
            ["0001000102030400000000000000026edc6e672c176c18c8e9529a4ce6fd4b5b3720c8fc4773faf4"],
        )
        for message_id, text in ((2, "two"), (3, "three"), (4, "four")):
            relay.datagramReceived(ann.seal(FrameType.SEND, encode_send(message_id, text)), ann_at)
        udp.written.clear()
        repair = bob.seal(FrameType.REPAIR, encode_range(1, 4))
        self.assertEqual(
            repair.hex(),
            "0001000102030400000000000000022c97d02d043362f0730c50a64b55ed20e2f5132ee00a9ea9c0a3170260ecbc9b42",
        )
        relay.datagramReceived(repair, bob_at)
        self.assertEqual(
            udp.written[0][0].hex(),
            "000100010203040000000000000006a581998aa202517752eea9aacc6614e15ee24baaa15eb607174aae08a1c8fe107e",
        )
        tunnelled = encode_frame(Frame(Operation.DATAGRAM, State.REQUEST, "hoge", bob.seal(FrameType.KEEPALIVE, b"")))
        self.assertEqual(
            tunnelled.hex(),
            "0408000000000000000000000000000000000000000000000000000000000020686f6765000100010203040000000000000003951405158b8a9c26f3749959843493430c",
        )
        frames(bob_transport)
        bob_protocol.dataReceived(tunnelled)
        self.assertEqual(
            bob_transport.value().hex(),
            "0408020000000000000000000000000000000000000000000000000000000028686f676500010001020304000000000000000a9a1354e8ae335125eb321a4f77882161ba78970f3d1cf746ff",
        )
