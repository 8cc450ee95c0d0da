"""Tests for chatd.debug.describe: frames, headers, TCP bytes and datagrams as text."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from chatd.debug import describe
from chatd.debug.describe import (
    NO_KEY,
    Opened,
    Unopened,
    describe_datagram,
    describe_frame,
    describe_header,
    describe_opened,
    describe_status,
    describe_tcp_bytes,
    frame_hex,
    frame_size,
    report,
    sealed_hex,
    show_bytes,
)
from chatd.protocol.datagrams import FrameType, encode_legacy, encode_relay_body
from chatd.protocol.delivery import encode_latest, encode_posted, encode_range, encode_send, encode_sent
from chatd.protocol.seal import Direction, Sealer
from chatd.protocol.wire import Frame, Operation, SizeEncoding, State, decode_frame, encode_frame
from tests.helpers import SEED_EXAMPLE

KEY = bytes(range(32))
KEY_ID = 0x01020304


def sealed(direction: Direction, counter: int, frame_type: int, body: bytes = b"") -> bytes:
    return Sealer(KEY).seal(direction, KEY_ID, counter, frame_type, body)


def split_hex(data: bytes) -> str:
    """What sealed_hex should give: the clear header's fields, the ciphertext, the tag."""
    return f"00 01 00 | 01020304 | {data[7:15].hex()} | {data[15:-16].hex()} | {data[-16:].hex()}"


class DescribeTests(SynchronousTestCase):
    def test_seed_example(self) -> None:
        frame = decode_frame(SEED_EXAMPLE)
        self.assertEqual(
            describe_frame(frame),
            "operation 1 CREATE, state 0 REQUEST, room 'hoge' (4 bytes), payload 1 byte (ascii size)\npayload 'a'",
        )
        self.assertEqual(frame_hex(SEED_EXAMPLE), "04 01 00 31" + "00" * 28 + " | 686f6765 | 61")
        self.assertEqual(
            describe_tcp_bytes(SEED_EXAMPLE),
            describe_frame(frame) + "\nhex " + frame_hex(SEED_EXAMPLE),
        )

    def test_acknowledge_shows_the_status_name(self) -> None:
        ack = Frame(Operation.JOIN, State.ACKNOWLEDGE, "hoge", b"\x02")
        self.assertEqual(describe_frame(ack).splitlines()[1], "status 2 ROOM_NOT_FOUND (room not found)")
        native = Frame(Operation.JOIN, State.ACKNOWLEDGE, "hoge", b'\x03{"status": "invalid_password"}')
        self.assertEqual(
            describe_frame(native).splitlines()[1],
            'status 3 INVALID_PASSWORD (invalid password), detail \'{"status": "invalid_password"}\'',
        )

    def test_status_edge_cases(self) -> None:
        self.assertEqual(describe_status(b""), "status missing (empty payload)")
        self.assertEqual(describe_status(b"\xc8"), "status 200 (not a known status)")
        self.assertEqual(describe_status(b"\x00"), "status 0 SUCCESS (success)")

    def test_payloads(self) -> None:
        empty = describe_frame(Frame(Operation.INVITE, State.REQUEST, "", b""))
        self.assertIn("room '' (0 bytes)", empty)
        self.assertTrue(empty.endswith("payload (empty)"))
        binary = describe_frame(Frame(Operation.NOTICE, State.COMPLETE, "r", b"\xff\x00"))
        self.assertTrue(binary.endswith("payload b'\\xff\\x00' (not UTF-8)"))
        self.assertEqual(show_bytes(b"\x1b[2Jhi"), "'\\x1b[2Jhi'")

    def test_frame_hex_binary_size(self) -> None:
        data = encode_frame(Frame(Operation.CREATE, State.COMPLETE, "r", b"tok"))
        self.assertEqual(frame_hex(data), "01 01 02 " + "00" * 28 + "03 | 72 | 746f6b")
        self.assertEqual(frame_hex(b"\x04\x01"), "0401")

    def test_several_frames_and_a_partial_one(self) -> None:
        second = encode_frame(Frame(Operation.CREATE, State.ACKNOWLEDGE, "hoge", b"\x00", SizeEncoding.ASCII))
        text = describe_tcp_bytes(SEED_EXAMPLE + second + b"\x04\x01")
        lines = text.splitlines()
        self.assertEqual(len(lines), 9)
        self.assertIn("state 1 ACKNOWLEDGE", lines[3])
        self.assertEqual(lines[6:], ["2 bytes, not a whole frame", "(as a model dialect UDP port: 1025)", "hex 0401"])

    def test_refused_bytes(self) -> None:
        unknown = b"\x01\x09\x00" + (1).to_bytes(29, "big") + b"rx"
        text = describe_tcp_bytes(unknown + SEED_EXAMPLE)
        self.assertIn("not a frame: operation 9 with state 0 is not defined", text)
        self.assertIn("header: room size 1, operation 9 (unknown), state 0 REQUEST, size field binary 1", text)
        self.assertIn("payload 'a'", text)
        garbage = b"\x04\x01\x001x" + 27 * b"\x00" + b"hogea"
        text = describe_tcp_bytes(garbage)
        self.assertIn("not a frame: ASCII size field has non-digits", text)
        self.assertIn("hex 04 01 00 3178", text)

    def test_a_room_name_that_is_not_utf8(self) -> None:
        bad = b"\x02\x01\x00" + bytes(29) + b"\xff\xfe"
        text = describe_tcp_bytes(bad + SEED_EXAMPLE)
        self.assertIn("not a frame: room name is not valid UTF-8\nheader: room size 2, operation 1 CREATE", text)
        self.assertIn("hex 02 01 00 " + "00" * 29 + " | fffe\n", text)
        self.assertIn("payload 'a'", text)

    def test_frame_size(self) -> None:
        self.assertEqual(frame_size(SEED_EXAMPLE + b"more"), len(SEED_EXAMPLE))
        self.assertIsNone(frame_size(SEED_EXAMPLE[:-1]))
        self.assertIsNone(frame_size(SEED_EXAMPLE[:31]))
        self.assertIsNone(frame_size(b"\x04\x01\x001x" + bytes(27) + b"hogea"))

    def test_frame_size_uses_the_codecs_rule(self) -> None:
        """The debug client has no framing rule of its own: it asks chatd.protocol.wire."""
        seen: list[bytes] = []

        def rule(header: bytes) -> tuple[int, int, SizeEncoding]:
            seen.append(header)
            return 0, 33, SizeEncoding.BINARY

        self.patch(describe, "frame_length", rule)
        self.assertEqual(frame_size(SEED_EXAMPLE), 33)
        self.assertEqual(seen, [SEED_EXAMPLE])

    def test_describe_header(self) -> None:
        self.assertEqual(
            describe_header(SEED_EXAMPLE),
            "header: room size 4, operation 1 CREATE, state 0 REQUEST, size field ASCII '1'",
        )
        self.assertEqual(describe_header(b"\x01"), "1 byte, shorter than a 32-byte header")

    def test_sent_legacy_datagram(self) -> None:
        text = describe_datagram(encode_legacy("hoge", "tok", "hi"), sent=True)
        self.assertEqual(
            text,
            "legacy chat datagram, room 'hoge', token 'tok'\nmessage 'hi'\nhex 04 03 | 686f6765 | 746f6b | 6869",
        )

    def test_sent_datagram_the_codec_refuses(self) -> None:
        self.assertEqual(
            describe_datagram(b"\x05\x01ab", sent=True),
            "not a legacy chat datagram: datagram shorter than its room name and token\nhex 05016162",
        )
        self.assertEqual(
            describe_datagram(b"\x00\x01", sent=True),
            "native frame the codec refuses: sealed frame shorter than its flags\nhex 0001",
        )
        self.assertEqual(
            describe_datagram(b"\x00\x02\x00", sent=False),
            "native frame the codec refuses: sealed frame version 2\nhex 000200",
        )
        short = sealed(Direction.TO_SERVER, 0, FrameType.KEEPALIVE)[:-1]
        self.assertEqual(
            describe_datagram(short, sent=True),
            f"native frame the codec refuses: sealed frame of 31 bytes is shorter than 32\nhex {short.hex()}",
        )
        self.assertEqual(describe_datagram(b"", sent=True), "empty datagram")

    def test_received_legacy_text(self) -> None:
        self.assertEqual(describe_datagram(b"ann: hi", sent=False), "legacy text 'ann: hi'\nhex 616e6e3a206869")
        self.assertIn("(not UTF-8)", describe_datagram(b"\xff", sent=False))

    def test_sealed_relay(self) -> None:
        body = encode_relay_body("ann", b"hello", 1_700_000_000_000)
        data = sealed(Direction.TO_CLIENT, 3, FrameType.RELAY, body)
        self.assertEqual(
            describe_datagram(data, sent=False, opening=Opened(FrameType.RELAY, body)),
            "sealed native frame, key id 16909060, counter 3, flags 0\n"
            "RELAY from 'ann' at 2023-11-14T22:13:20.000Z: 'hello'\n"
            f"hex {split_hex(data)}",
        )

    def test_the_hex_hides_what_is_sealed(self) -> None:
        body = encode_relay_body("ann", b"a secret", 1_700_000_000_000)
        data = sealed(Direction.TO_CLIENT, 0, FrameType.RELAY, body)
        hex_line = describe_datagram(data, sent=False, opening=Opened(FrameType.RELAY, body)).splitlines()[-1]
        digits = hex_line.replace(" ", "").replace("|", "")
        self.assertEqual(digits, "hex" + data.hex())
        self.assertNotIn(b"a secret".hex(), digits)

    def test_sealed_hex(self) -> None:
        data = sealed(Direction.TO_SERVER, 258, FrameType.MESSAGE, b"yo")
        self.assertEqual(sealed_hex(data), split_hex(data))
        self.assertEqual(split_hex(data).split(" | ")[2], "0000000000000102")
        # One byte of ciphertext: the frame type alone.
        keepalive = sealed(Direction.TO_SERVER, 0, FrameType.KEEPALIVE)
        self.assertEqual(sealed_hex(keepalive).split(" | ")[3], keepalive[15:16].hex())
        self.assertEqual(sealed_hex(b"\x00\x01"), "0001")

    def test_sealed_without_the_key(self) -> None:
        data = sealed(Direction.TO_CLIENT, 5, FrameType.KEEPALIVE_ACK)
        self.assertEqual(
            describe_datagram(data, sent=False),
            "sealed native frame, key id 16909060, counter 5, flags 0\n"
            f"could not open: {NO_KEY}\nhex {split_hex(data)}",
        )
        self.assertIn("no UDP key", NO_KEY)

    def test_sealed_that_did_not_open(self) -> None:
        data = sealed(Direction.TO_CLIENT, 5, FrameType.KEEPALIVE_ACK)
        text = describe_datagram(data, sent=False, opening=Unopened("sealed frame did not authenticate"))
        self.assertEqual(text.splitlines()[1], "could not open: sealed frame did not authenticate")

    def test_sealed_message_notice_and_keepalives(self) -> None:
        message = sealed(Direction.TO_SERVER, 2, FrameType.MESSAGE, b"yo")
        self.assertEqual(
            describe_datagram(message, sent=True, opening=Opened(FrameType.MESSAGE, b"yo")),
            f"sealed native frame, key id 16909060, counter 2, flags 0\nMESSAGE 'yo'\nhex {split_hex(message)}",
        )
        self.assertEqual(describe_opened(Opened(FrameType.KEEPALIVE, b"")), "KEEPALIVE (no body)")
        self.assertEqual(describe_opened(Opened(FrameType.KEEPALIVE_ACK, b"")), "KEEPALIVE_ACK (no body)")
        self.assertEqual(
            describe_opened(Opened(FrameType.NOTICE, b'{"event": "joined"}')), 'NOTICE \'{"event": "joined"}\''
        )
        self.assertEqual(describe_opened(Opened(12, b"\xff")), "frame type 12 (unknown), body b'\\xff' (not UTF-8)")

    def test_delivery_frames(self) -> None:
        cases = {
            (FrameType.SEND, encode_send(7, "hi")): "SEND id 7: 'hi'",
            (FrameType.SENT, encode_sent(7, 42, 0)): "SENT id 7 as seq 42 at 1970-01-01T00:00:00.000Z",
            (FrameType.POSTED, encode_posted(42, 1000, "ann", "hi")): (
                "POSTED seq 42 from 'ann' at 1970-01-01T00:00:01.000Z: 'hi'"
            ),
            (FrameType.REPAIR, encode_range(3, 5)): "REPAIR seq 3 to 5 (3 messages)",
            (FrameType.GONE, encode_range(1, 2)): "GONE seq 1 to 2 (2 messages)",
            (FrameType.KEEPALIVE_ACK, encode_latest(42)): "KEEPALIVE_ACK, the room's latest seq 42",
            (FrameType.PROBE, b""): "PROBE (no body)",
            (FrameType.REPAIR, b"\x00"): "REPAIR body the codec refuses: range body of 1 bytes, not 16",
        }
        for (kind, body), expected in cases.items():
            self.assertEqual(describe_opened(Opened(kind, body)), expected)

    def test_sealed_relay_with_a_short_body(self) -> None:
        self.assertEqual(
            describe_opened(Opened(FrameType.RELAY, b"\x00\x01")),
            "RELAY body the codec refuses: relay body shorter than its header",
        )

    def test_report_indents(self) -> None:
        self.assertEqual(report("<< x", "a\nb"), "<< x\n   a\n   b")
        self.assertEqual(report("-- y", ""), "-- y")
