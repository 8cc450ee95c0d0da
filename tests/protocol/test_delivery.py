"""Tests for chatd.protocol.delivery and the "delivery" feature's request and answer members."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.protocol import delivery
from chatd.protocol.datagrams import CLIENT_FRAME_TYPES, DELIVERY_CLIENT_FRAME_TYPES, FrameType
from chatd.protocol.delivery import (
    MAX_NATIVE_DATAGRAM,
    POSTED_OVERHEAD,
    SEND_OVERHEAD,
    SEQ_MAX,
    Posted,
    Send,
    Sent,
    SeqRange,
    decode_latest,
    decode_posted,
    decode_range,
    decode_send,
    decode_sent,
    encode_latest,
    encode_posted,
    encode_range,
    encode_send,
    encode_sent,
    fits_datagram,
    pack_posted,
    send_text,
)
from chatd.protocol.errors import InvalidUTF8Error, MalformedFrameError
from chatd.protocol.payloads import (
    DELIVERY,
    DeliveryStart,
    entered_payload,
    parse_room_request,
    read_entered_payload,
    room_request_payload,
)
from chatd.protocol.seal import OVERHEAD, Direction, Sealer

ids = st.integers(min_value=1, max_value=SEQ_MAX)
texts = st.text(max_size=300)


class BodyTests(SynchronousTestCase):
    def test_send_bytes(self) -> None:
        self.assertEqual(encode_send(1, "hi"), b"\x00" * 7 + b"\x01hi")
        self.assertEqual(decode_send(b"\x00" * 7 + b"\x01hi"), Send(1, "hi"))
        self.assertEqual(send_text(b"\x00" * 7 + b"\x01hi"), b"hi")
        self.assertEqual(decode_send(b"\x00" * 7 + b"\x02"), Send(2, ""))

    def test_sent_bytes(self) -> None:
        body = encode_sent(3, 258, 1_700_000_000_000)
        self.assertEqual(body, bytes.fromhex("000000000000000300000000000001020000018bcfe56800"))
        self.assertEqual(decode_sent(body), Sent(3, 258, 1_700_000_000_000))

    def test_posted_bytes(self) -> None:
        body = encode_posted(5, 1000, "ann", "こんにちは")
        self.assertEqual(body[:17], bytes.fromhex("000000000000000500000000000003e803"))
        self.assertEqual(body[17:20], b"ann")
        self.assertEqual(decode_posted(body), Posted(5, 1000, "ann", "こんにちは"))
        self.assertEqual(pack_posted(5, 1000, b"ann", "こんにちは".encode()), body)

    def test_range_and_latest(self) -> None:
        self.assertEqual(encode_range(1, 64), bytes.fromhex("00000000000000010000000000000040"))
        self.assertEqual(decode_range(encode_range(7, 7)), SeqRange(7, 7))
        self.assertEqual(len(SeqRange(7, 10)), 4)
        self.assertEqual(encode_latest(0), b"\x00" * 8)
        self.assertEqual(decode_latest(encode_latest(99)), 99)
        # A plain native server's KEEPALIVE_ACK is empty: no sequence number known.
        self.assertEqual(decode_latest(b""), 0)

    @given(ids, texts)
    def test_send_round_trip(self, message_id: int, text: str) -> None:
        self.assertEqual(decode_send(encode_send(message_id, text)), Send(message_id, text))

    @given(ids, ids, st.integers(min_value=0, max_value=SEQ_MAX))
    def test_sent_round_trip(self, message_id: int, seq: int, time_ms: int) -> None:
        self.assertEqual(decode_sent(encode_sent(message_id, seq, time_ms)), Sent(message_id, seq, time_ms))

    @given(ids, st.integers(min_value=0, max_value=SEQ_MAX), st.text(min_size=1, max_size=32), texts)
    def test_posted_round_trip(self, seq: int, time_ms: int, sender: str, text: str) -> None:
        body = encode_posted(seq, time_ms, sender, text)
        self.assertEqual(decode_posted(body), Posted(seq, time_ms, sender, text))

    @given(ids, st.integers(min_value=0, max_value=1000))
    def test_range_round_trip(self, first: int, extra: int) -> None:
        last = min(SEQ_MAX, first + extra)
        self.assertEqual(decode_range(encode_range(first, last)), SeqRange(first, last))

    def test_malformed(self) -> None:
        for bad in (b"", b"\x00" * 7):
            self.assertRaises(MalformedFrameError, decode_send, bad)
        self.assertRaises(MalformedFrameError, decode_send, b"\x00" * 8)  # id 0
        self.assertRaises(InvalidUTF8Error, decode_send, b"\x00" * 7 + b"\x01\xff")
        for bad in (b"", b"\x00" * 23, b"\x00" * 25, bytes(8) + b"\x00" * 7 + b"\x01" + bytes(8)):
            self.assertRaises(MalformedFrameError, decode_sent, bad)
        self.assertRaises(MalformedFrameError, decode_sent, bytes(7) + b"\x01" + bytes(16))  # seq 0
        self.assertRaises(MalformedFrameError, decode_posted, b"\x00" * 16)
        self.assertRaises(MalformedFrameError, decode_posted, bytes(7) + b"\x01" + bytes(8) + b"\x05ann")
        self.assertRaises(MalformedFrameError, decode_posted, bytes(17))  # seq 0
        self.assertRaises(InvalidUTF8Error, decode_posted, bytes(7) + b"\x01" + bytes(8) + b"\x01\xff")
        for bad in (b"", bytes(15), bytes(17), bytes(16), encode_range(5, 5)[:8] + (4).to_bytes(8, "big")):
            self.assertRaises(MalformedFrameError, decode_range, bad)
        self.assertRaises(MalformedFrameError, decode_latest, b"\x00")
        for first, last in ((0, 1), (5, 4), (1, SEQ_MAX + 1)):
            self.assertRaises(MalformedFrameError, encode_range, first, last)
        self.assertRaises(MalformedFrameError, encode_send, 0, "x")
        self.assertRaises(MalformedFrameError, encode_sent, 1, 0, 0)

    def test_frame_types(self) -> None:
        self.assertEqual(
            [t.value for t in (FrameType.SEND, FrameType.SENT, FrameType.POSTED, FrameType.REPAIR)], [6, 7, 8, 9]
        )
        self.assertEqual((FrameType.GONE.value, FrameType.PROBE.value), (10, 11))
        self.assertEqual(
            DELIVERY_CLIENT_FRAME_TYPES - CLIENT_FRAME_TYPES, {FrameType.SEND, FrameType.REPAIR, FrameType.PROBE}
        )


class SizeTests(SynchronousTestCase):
    """Which frames may go by UDP: the sealed size, exactly, against MAX_NATIVE_DATAGRAM."""

    sealer = Sealer(bytes(32))

    @given(st.integers(min_value=0, max_value=4096), st.integers(min_value=1, max_value=32))
    def test_fits_is_the_sealed_size(self, text_size: int, name_size: int) -> None:
        text = b"x" * text_size
        posted = pack_posted(1, 0, b"n" * name_size, text)
        sealed = self.sealer.seal(Direction.TO_CLIENT, 1, 0, FrameType.POSTED, posted)
        self.assertEqual(len(sealed), len(posted) + OVERHEAD)
        self.assertEqual(len(sealed), text_size + name_size + POSTED_OVERHEAD)
        self.assertEqual(fits_datagram(len(posted)), len(sealed) <= MAX_NATIVE_DATAGRAM)
        send = encode_send(1, text.decode())
        self.assertEqual(len(send) + OVERHEAD, text_size + SEND_OVERHEAD)
        self.assertEqual(fits_datagram(len(send)), text_size + SEND_OVERHEAD <= MAX_NATIVE_DATAGRAM)

    def test_boundaries(self) -> None:
        self.assertTrue(fits_datagram(MAX_NATIVE_DATAGRAM - OVERHEAD))
        self.assertFalse(fits_datagram(MAX_NATIVE_DATAGRAM - OVERHEAD + 1))
        self.assertEqual(delivery.POSTED_OVERHEAD, 49)
        self.assertEqual(delivery.SEND_OVERHEAD, 40)


class FeatureNegotiationTests(SynchronousTestCase):
    def test_request_asks_for_the_feature(self) -> None:
        payload = room_request_payload("ann", None, None, False, features=[DELIVERY], client_id="c-1_A")
        self.assertEqual(
            json.loads(payload), {"chatd": 1, "username": "ann", "features": ["delivery"], "client": "c-1_A"}
        )
        request = parse_room_request(payload)
        self.assertEqual((request.features, request.client_id), (frozenset({DELIVERY}), "c-1_A"))

    def test_unknown_features_are_ignored(self) -> None:
        payload = json.dumps({"chatd": 1, "username": "ann", "features": ["colour", "delivery", "x" * 100]})
        self.assertEqual(parse_room_request(payload.encode()).features, frozenset({DELIVERY}))
        payload = json.dumps({"chatd": 1, "username": "ann", "features": None, "client": None})
        request = parse_room_request(payload.encode())
        self.assertEqual((request.features, request.client_id), (frozenset(), None))

    def test_legacy_json_gets_no_features(self) -> None:
        # A model client's JSON has no "chatd": whatever else it says, it is served as before.
        payload = json.dumps({"username": "ann", "features": ["delivery"], "client": "c"})
        request = parse_room_request(payload.encode())
        self.assertEqual((request.features, request.client_id), (frozenset(), None))

    def test_bad_members_are_refused(self) -> None:
        for extra in (
            {"features": "delivery"},
            {"features": [1]},
            {"features": ["a"] * 17},
            {"client": ""},
            {"client": "x" * 65},
            {"client": "spaces not allowed"},
            {"client": 7},
        ):
            payload = json.dumps({"chatd": 1, "username": "ann", **extra}).encode()
            self.assertRaises(MalformedFrameError, parse_room_request, payload)

    def _entered(self, start: DeliveryStart | None) -> bytes:
        return entered_payload(
            token="t",
            key=bytes(32),
            key_id=9,
            room="r",
            user="ann",
            host=True,
            members=["ann"],
            idle_timeout=300.0,
            keepalive_interval=30.0,
            delivery=start,
        )

    def test_answer_round_trip(self) -> None:
        start = DeliveryStart("0123456789abcdef", 120, 71)
        payload = self._entered(start)
        obj = json.loads(payload)
        self.assertEqual(list(obj)[-2:], ["features", "delivery"])
        self.assertEqual(obj["delivery"], {"epoch": "0123456789abcdef", "seq": 120, "history_from": 71})
        self.assertEqual(read_entered_payload(payload).delivery, start)
        # Without the feature the answer is byte for byte what it always was.
        plain = self._entered(None)
        self.assertNotIn(b"features", plain)
        self.assertIsNone(read_entered_payload(plain).delivery)

    def test_unusable_delivery_start(self) -> None:
        for start in ({"epoch": "e", "seq": 5, "history_from": 7}, {"epoch": "e", "seq": "5", "history_from": 1}, {}):
            obj = json.loads(self._entered(DeliveryStart("e", 1, 1)))
            obj["delivery"] = start
            self.assertRaises(MalformedFrameError, read_entered_payload, json.dumps(obj).encode())
