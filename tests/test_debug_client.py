"""Tests for chatd.debug_client: the parser, the describers, the protocols, and a loopback session."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr
from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from chatd.datagrams import (
    FrameType,
    NativeFrame,
    decode_legacy,
    decode_native,
    encode_legacy,
    encode_native,
    encode_relay_body,
    native_header,
)
from chatd.debug_client import (
    HELP,
    ChangeDialect,
    CommandError,
    Connect,
    Console,
    DebugClient,
    Quit,
    SendBytes,
    SendDatagram,
    SendFrame,
    ServerConnection,
    Session,
    Show,
    advance,
    describe_datagram,
    describe_frame,
    describe_header,
    describe_status,
    describe_tcp_bytes,
    frame_hex,
    frame_size,
    learn,
    parse_arguments,
    parse_command,
    report,
    show_bytes,
)
from chatd.payloads import Dialect
from chatd.service import make_service
from chatd.settings import Settings
from chatd.wire import Frame, Operation, SizeEncoding, State, decode_frame, encode_frame

SEED_EXAMPLE = b"\x04\x01\x001" + 28 * b"\x00" + b"hogea"
"""The seed document's example: room hoge, create, request, payload 'a' (ASCII size)."""

MEMBER = Session(room="hoge", token="tok", local_udp_port=40001)
"""A session that has been through a complete frame."""


def replace_session(**changes: Any) -> Session:
    return replace(MEMBER, **changes)


def parse(line: str, session: Session = MEMBER) -> Any:
    return parse_command(line, session)


def sent_frame(line: str, session: Session = MEMBER) -> Frame:
    action = parse_command(line, session)
    assert isinstance(action, SendFrame), action
    # What goes on the wire decodes back to the same frame.
    assert decode_frame(encode_frame(action.frame)) == action.frame
    return action.frame


def sent_datagram(line: str, session: Session = MEMBER) -> SendDatagram:
    action = parse_command(line, session)
    assert isinstance(action, SendDatagram), action
    return action


class ParseCommandTests(SynchronousTestCase):
    def assert_refused(self, line: str, fragment: str, session: Session = MEMBER) -> None:
        error = self.assertRaises(CommandError, parse_command, line, session)
        self.assertIn(fragment, str(error))

    def test_blank_and_comment_lines_do_nothing(self) -> None:
        for line in ("", "   ", "\t\r\n", "# a note", "  #create x y"):
            self.assertIsNone(parse(line), line)

    def test_unknown_command(self) -> None:
        self.assert_refused("hello there", "unknown command 'hello'")

    def test_command_words_ignore_case(self) -> None:
        self.assertEqual(sent_frame("CREATE hoge ann").operation, Operation.CREATE)

    def test_create_model(self) -> None:
        frame = sent_frame("create hoge ann", Session())
        self.assertEqual(
            (frame.operation, frame.state, frame.room, frame.encoding),
            (Operation.CREATE, State.REQUEST, "hoge", SizeEncoding.BINARY),
        )
        self.assertEqual(json.loads(frame.payload), {"username": "ann"})

    def test_create_with_password(self) -> None:
        frame = sent_frame("create hoge ann s3cret", Session())
        self.assertEqual(json.loads(frame.payload), {"username": "ann", "password": "s3cret"})

    def test_create_seed_uses_ascii_size(self) -> None:
        frame = sent_frame("create hoge ann", Session(dialect=Dialect.SEED))
        self.assertEqual(frame.encoding, SizeEncoding.ASCII)
        self.assertEqual(json.loads(frame.payload), {"username": "ann"})
        self.assertEqual(encode_frame(frame)[3:5], b"19")

    def test_create_native_carries_the_version(self) -> None:
        frame = sent_frame("create hoge ann pw", Session(dialect=Dialect.NATIVE))
        self.assertEqual(frame.encoding, SizeEncoding.BINARY)
        self.assertEqual(json.loads(frame.payload), {"chatd": 1, "username": "ann", "password": "pw"})

    def test_quoted_arguments(self) -> None:
        frame = sent_frame("create 'tea room' \"ann\" 'pass word'")
        self.assertEqual(frame.room, "tea room")
        self.assertEqual(json.loads(frame.payload), {"username": "ann", "password": "pass word"})

    def test_non_ascii_names(self) -> None:
        frame = sent_frame("create お茶 花子")
        self.assertEqual(frame.room, "お茶")
        self.assertEqual(json.loads(frame.payload), {"username": "花子"})

    def test_create_usage(self) -> None:
        self.assert_refused("create", "usage: create ROOM USER [PASSWORD]")
        self.assert_refused("create hoge", "usage: create ROOM USER [PASSWORD]")
        self.assert_refused("create hoge ann pw extra", "usage: create ROOM USER [PASSWORD]")

    def test_unbalanced_quote(self) -> None:
        self.assert_refused("create 'hoge ann", "No closing quotation")

    def test_room_name_over_255_bytes(self) -> None:
        self.assert_refused("create " + "é" * 128 + " ann", "256 bytes long")

    def test_join(self) -> None:
        frame = sent_frame("join hoge bob pw", Session(dialect=Dialect.SEED))
        self.assertEqual((frame.operation, frame.room, frame.encoding), (Operation.JOIN, "hoge", SizeEncoding.ASCII))
        self.assertEqual(json.loads(frame.payload), {"username": "bob", "password": "pw"})
        self.assert_refused("join hoge", "usage: join ROOM USER [PASSWORD]")

    def test_accept_joins_with_an_invitation(self) -> None:
        frame = sent_frame("accept hoge bob INV", Session(dialect=Dialect.NATIVE))
        self.assertEqual((frame.operation, frame.room), (Operation.JOIN, "hoge"))
        self.assertEqual(json.loads(frame.payload), {"chatd": 1, "username": "bob", "invite": "INV"})
        self.assert_refused("accept hoge bob", "usage: accept ROOM USER INVITE")

    def test_invite(self) -> None:
        frame = sent_frame("invite")
        self.assertEqual((frame.operation, frame.state, frame.room, frame.payload), (Operation.INVITE, 0, "hoge", b""))
        self.assertEqual(sent_frame("invite", Session()).room, "")
        self.assertEqual(sent_frame("invite other").room, "other")
        self.assert_refused("invite a b", "usage: invite [ROOM]")

    def test_register_defaults_to_our_udp_port(self) -> None:
        frame = sent_frame("register", replace_session(dialect=Dialect.SEED))
        self.assertEqual(
            (frame.operation, frame.room, frame.payload, frame.encoding),
            (Operation.REGISTER_UDP, "hoge", b"40001", SizeEncoding.ASCII),
        )

    def test_register_given_port(self) -> None:
        self.assertEqual(sent_frame("register 9").payload, b"9")

    def test_register_errors(self) -> None:
        self.assert_refused("register", "no UDP port yet", Session())
        self.assert_refused("register 65536", "not a port number")
        self.assert_refused("register -1", "not a port number")
        self.assert_refused("register x", "not a port number")
        self.assert_refused("register 1 2", "usage: register [PORT]")

    def test_port_is_two_raw_bytes(self) -> None:
        self.assertEqual(parse("port"), SendBytes(bytes((0x9C, 0x41))))
        self.assertEqual(parse("port 9002"), SendBytes(b"\x23\x2a"))
        self.assertEqual(parse("port 0"), SendBytes(b"\x00\x00"))
        self.assert_refused("port 70000", "not a port number")
        self.assert_refused("port", "no UDP port yet", Session())

    def test_say_is_a_legacy_datagram(self) -> None:
        action = sent_datagram("say hello,  world ")
        self.assertEqual(action.data, encode_legacy("hoge", "tok", "hello,  world "))
        self.assertIsNone(action.sequence)
        datagram = decode_legacy(action.data)
        self.assertEqual((datagram.room, datagram.token, datagram.message), ("hoge", "tok", b"hello,  world "))

    def test_say_needs_text_and_a_token(self) -> None:
        self.assert_refused("say", "usage: say TEXT")
        self.assert_refused("say hi", "create or join a room first", Session())

    def test_nsay_is_a_native_message(self) -> None:
        action = sent_datagram("nsay hi there", replace_session(sequence=4))
        self.assertEqual(action.sequence, 5)
        self.assertEqual(action.data, encode_native(NativeFrame(FrameType.MESSAGE, 5, b"tok", b"hi there")))
        self.assert_refused("nsay", "usage: nsay TEXT")
        self.assert_refused("nsay hi", "create or join a room first", Session())

    def test_keepalive(self) -> None:
        action = sent_datagram("keepalive")
        self.assertEqual(action.sequence, 1)
        self.assertEqual(decode_native(action.data), NativeFrame(FrameType.KEEPALIVE, 1, b"tok", b""))
        self.assert_refused("keepalive now", "usage: keepalive")
        self.assert_refused("keepalive", "create or join a room first", Session())

    def test_raw(self) -> None:
        self.assertEqual(parse("raw 0401 00 31"), SendBytes(b"\x04\x01\x00\x31"))
        # The client's own hex output can be pasted back.
        self.assertEqual(parse("raw " + frame_hex(SEED_EXAMPLE)), SendBytes(SEED_EXAMPLE))
        self.assert_refused("raw", "usage: raw HEX")
        self.assert_refused("raw 0g", "not hex")
        self.assert_refused("raw 123", "not hex")

    def test_udpraw(self) -> None:
        self.assertEqual(parse("udpraw 00 01 | 02", Session()), SendDatagram(b"\x00\x01\x02"))
        self.assert_refused("udpraw", "usage: udpraw HEX")
        self.assert_refused("udpraw zz", "not hex")

    def test_dialect(self) -> None:
        self.assertEqual(parse("dialect seed"), ChangeDialect(Dialect.SEED))
        self.assertEqual(parse("dialect NATIVE"), ChangeDialect(Dialect.NATIVE))
        self.assertEqual(parse("dialect model"), ChangeDialect(Dialect.MODEL))
        shown = parse("dialect", Session(dialect=Dialect.SEED))
        self.assertIsInstance(shown, Show)
        self.assertIn("seed", shown.text)
        self.assert_refused("dialect klingon", "one of model, seed, native")
        self.assert_refused("dialect seed model", "usage: dialect")

    def test_help_state_connect_quit(self) -> None:
        self.assertEqual(parse("help"), Show(HELP))
        state = parse("state")
        self.assertIsInstance(state, Show)
        self.assertIn("'tok'", state.text)
        self.assertIn("40001", state.text)
        self.assertEqual(parse("connect"), Connect())
        self.assertEqual(parse("quit"), Quit())
        self.assertEqual(parse("exit"), Quit())
        self.assert_refused("state now", "usage: state")
        self.assert_refused("connect there", "usage: connect")

    def test_help_mentions_every_command(self) -> None:
        for command in ("create", "join", "invite", "register", "port", "say", "nsay", "keepalive", "raw", "udpraw"):
            self.assertIn(f"  {command} ", HELP)
        for command in ("dialect", "help", "quit"):
            self.assertIn(f"  {command}", HELP)


class SessionTests(SynchronousTestCase):
    def test_advance(self) -> None:
        self.assertEqual(advance(Session(), ChangeDialect(Dialect.SEED)).dialect, Dialect.SEED)
        self.assertEqual(advance(MEMBER, SendDatagram(b"x", 7)).sequence, 7)
        self.assertEqual(advance(MEMBER, SendDatagram(b"x")), MEMBER)
        self.assertEqual(advance(MEMBER, Quit()), MEMBER)

    def test_learns_a_legacy_token(self) -> None:
        frame = Frame(Operation.CREATE, State.COMPLETE, "hoge", b"abc123")
        learned = learn(Session(sequence=3), frame)
        self.assertEqual((learned.room, learned.token, learned.sequence), ("hoge", "abc123", 0))

    def test_learns_a_native_token(self) -> None:
        payload = json.dumps({"chatd": 1, "token": "T", "room": "hoge", "user": "bob"}).encode()
        learned = learn(Session(), Frame(Operation.JOIN, State.COMPLETE, "hoge", payload))
        self.assertEqual((learned.room, learned.token), ("hoge", "T"))

    def test_ignores_what_is_not_a_complete_create_or_join(self) -> None:
        for frame in (
            Frame(Operation.CREATE, State.ACKNOWLEDGE, "hoge", b"\x00"),
            Frame(Operation.NOTICE, State.COMPLETE, "hoge", b"* bob joined hoge"),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b""),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b"\xff"),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b'{"chatd": 1}'),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b"{not json"),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b'{"token": "\\ud800"}'),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b'{"token": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ):
            self.assertEqual(learn(MEMBER, frame), MEMBER, frame)

    def test_learns_invitations(self) -> None:
        legacy = learn(MEMBER, Frame(Operation.INVITE, State.COMPLETE, "hoge", b"INV"))
        self.assertEqual((legacy.invite, legacy.token), ("INV", "tok"))
        native = learn(MEMBER, Frame(Operation.INVITE, State.COMPLETE, "hoge", b'{"chatd": 1, "invite": "I2"}'))
        self.assertEqual(native.invite, "I2")


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
            "native frame the codec refuses: native frame shorter than its header\nhex 0001",
        )
        self.assertEqual(describe_datagram(b"", sent=True), "empty datagram")

    def test_received_legacy_text(self) -> None:
        self.assertEqual(describe_datagram(b"ann: hi", sent=False), "legacy text 'ann: hi'\nhex 616e6e3a206869")
        self.assertIn("(not UTF-8)", describe_datagram(b"\xff", sent=False))

    def test_native_relay(self) -> None:
        data = native_header(FrameType.RELAY, 3) + encode_relay_body("ann", b"hello", 1_700_000_000_000)
        self.assertEqual(
            describe_datagram(data, sent=False),
            "native RELAY frame, sequence 3, flags 0, auth (none)\n"
            "from 'ann' at 2023-11-14T22:13:20.000Z: 'hello'\n"
            "hex 00 01 03 00 0000000000000003 00 | 0000018bcfe56800 03 | 616e6e | 68656c6c6f",
        )

    def test_native_relay_with_a_short_body(self) -> None:
        text = describe_datagram(native_header(FrameType.RELAY, 1) + b"\x00\x01", sent=False)
        self.assertIn("relay body the codec refuses: relay body shorter than its header", text)

    def test_native_message_notice_and_keepalive(self) -> None:
        message = encode_native(NativeFrame(FrameType.MESSAGE, 2, b"tok", b"yo"))
        self.assertEqual(
            describe_datagram(message, sent=True),
            "native MESSAGE frame, sequence 2, flags 0, auth 'tok'\nbody 'yo'\n"
            "hex 00 01 01 00 0000000000000002 03 | 746f6b | 796f",
        )
        notice = native_header(FrameType.NOTICE, 9) + b'{"event": "joined"}'
        self.assertIn('body \'{"event": "joined"}\'', describe_datagram(notice, sent=False))
        ack = describe_datagram(native_header(FrameType.KEEPALIVE_ACK, 5), sent=False)
        self.assertEqual(
            ack,
            "native KEEPALIVE_ACK frame, sequence 5, flags 0, auth (none)\nno body\n"
            "hex 00 01 05 00 0000000000000005 00",
        )

    def test_report_indents(self) -> None:
        self.assertEqual(report("<< x", "a\nb"), "<< x\n   a\n   b")
        self.assertEqual(report("-- y", ""), "-- y")


def _client() -> tuple[DebugClient, list[str], MemoryReactorClock]:
    clock = MemoryReactorClock()
    output: list[str] = []
    return DebugClient(clock, output.append, "127.0.0.1", 9001, 9002), output, clock


def _connected() -> tuple[DebugClient, ServerConnection, StringTransport, list[str], MemoryReactorClock]:
    """A client whose TCP connection is a StringTransport (and, on a MemoryReactor, no UDP)."""
    client, output, clock = _client()
    protocol = ServerConnection(client)
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 50000), peerAddress=IPv4Address("TCP", "127.0.0.1", 9001)
    )
    protocol.makeConnection(transport)
    client.attach(protocol)
    return client, protocol, transport, output, clock


def _reply(operation: Operation, state: State, payload: bytes, room: str = "hoge") -> bytes:
    return encode_frame(Frame(operation, state, room, payload))


class DebugClientTests(SynchronousTestCase):
    def test_attach_reports_the_connection(self) -> None:
        _, _, _, output, _ = _connected()
        self.assertEqual(output[0], "-- connected to 127.0.0.1:9001 from 127.0.0.1:50000")
        self.assertEqual(output[1], "!! this reactor cannot do UDP: no datagrams")
        self.assertIn("type help for the commands", output[2])

    def test_a_command_is_sent_and_printed(self) -> None:
        client, _, transport, output, _ = _connected()
        del output[:]
        client.handle_line("create hoge ann")
        expected = encode_frame(Frame(Operation.CREATE, State.REQUEST, "hoge", b'{"username": "ann"}'))
        self.assertEqual(transport.value(), expected)
        self.assertEqual(output, [report(f">> TCP {len(expected)} bytes", describe_tcp_bytes(expected))])

    def test_frames_arriving_a_byte_at_a_time(self) -> None:
        client, protocol, _, output, _ = _connected()
        del output[:]
        data = _reply(Operation.CREATE, State.ACKNOWLEDGE, b"\x00") + _reply(Operation.CREATE, State.COMPLETE, b"tk")
        for index in range(len(data)):
            protocol.dataReceived(data[index : index + 1])
        self.assertEqual(len(output), 3)
        self.assertTrue(output[0].startswith("<< TCP 37 bytes\n   operation 1 CREATE, state 1 ACKNOWLEDGE"))
        self.assertIn("status 0 SUCCESS (success)", output[0])
        self.assertIn("\n   hex 04 01 01 ", output[0])
        self.assertIn("state 2 COMPLETE", output[1])
        self.assertEqual(
            output[2],
            "-- token for room 'hoge': tk (say, nsay, keepalive use it); "
            "to register your UDP address: port (2 raw bytes, then the server closes TCP)",
        )
        self.assertEqual((client.session.room, client.session.token), ("hoge", "tk"))

    def test_invitation_is_shown(self) -> None:
        client, protocol, _, output, _ = _connected()
        protocol.dataReceived(_reply(Operation.INVITE, State.COMPLETE, b"INV", room="tea room"))
        self.assertEqual(client.session.invite, "INV")
        self.assertIn("accept 'tea room' USER INV", output[-1])

    def test_a_frame_with_an_unknown_operation_is_skipped(self) -> None:
        _, protocol, _, output, _ = _connected()
        del output[:]
        unknown = b"\x00\x09\x02" + bytes(29)
        protocol.dataReceived(unknown + _reply(Operation.NOTICE, State.COMPLETE, b"* hi"))
        self.assertTrue(output[0].startswith("!! << TCP 32 bytes the frame codec refuses: operation 9"))
        self.assertIn("payload '* hi'", output[1])

    def test_a_room_name_that_is_not_utf8_is_skipped(self) -> None:
        _, protocol, _, output, _ = _connected()
        del output[:]
        protocol.dataReceived(b"\x02\x02\x02" + bytes(29) + b"\xff\xfe" + SEED_EXAMPLE[:10])
        protocol.dataReceived(SEED_EXAMPLE[10:])
        self.assertEqual(len(output), 2)
        self.assertTrue(
            output[0].startswith("!! << TCP 34 bytes the frame codec refuses: room name is not valid UTF-8")
        )
        self.assertIn("payload 'a'", output[1])

    def test_a_refused_size_field_drops_the_buffer(self) -> None:
        _, protocol, _, output, _ = _connected()
        del output[:]
        protocol.dataReceived(b"\x04\x01\x00" + b"1x" + bytes(27) + b"hogea")
        self.assertEqual(len(output), 1)
        self.assertIn("ASCII size field has non-digits", output[0])
        # Decoding starts afresh with the next bytes.
        protocol.dataReceived(SEED_EXAMPLE)
        self.assertIn("payload 'a'", output[1])

    def test_server_closed_the_connection(self) -> None:
        client, protocol, _, output, _ = _connected()
        protocol.dataReceived(b"\x04\x01")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(output[-2], "!! 2 bytes received that never became a whole frame\n   hex 0401")
        self.assertEqual(output[-1], "-- the server closed the TCP connection (type connect for a new one)")
        self.assertIsNone(client.connection)
        client.handle_line("create hoge ann")
        self.assertEqual(output[-1], "!! not connected to the server; type connect to open a new connection")

    def test_connection_lost(self) -> None:
        _, protocol, _, output, _ = _connected()
        protocol.connectionLost(Failure(ConnectionLost("reset by peer")))
        self.assertTrue(output[-1].startswith("!! TCP connection lost: "), output[-1])
        self.assertIn("reset by peer", output[-1])

    def test_errors_are_printed_not_raised(self) -> None:
        client, output, _ = _client()
        client.handle_line("frobnicate")
        client.handle_line("create hoge ann")
        client.handle_line("udpraw 00")
        client.handle_line("connect")
        self.assertEqual(
            output,
            [
                "!! unknown command 'frobnicate'; type help for the list",
                "!! not connected to the server; type connect to open a new connection",
                "!! no UDP port to send from",
            ],
        )
        # connect is under way (on a MemoryReactor it never finishes): not twice.
        client.handle_line("connect")
        self.assertEqual(output[-1], "!! already connected (or connecting)")

    def test_dialect_change_is_reported(self) -> None:
        client, output, _ = _client()
        client.handle_line("dialect native")
        self.assertEqual(client.session.dialect, Dialect.NATIVE)
        self.assertEqual(output, ['-- dialect native (binary size, JSON payload with "chatd": 1)'])

    def test_quit_closes_the_connection(self) -> None:
        client, protocol, transport, output, _ = _connected()
        client.handle_line("quit")
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(client.stopped)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(output[-1], "-- TCP connection closed")
        self.successResultOf(client.stopped)

    def test_shutdown_gives_up_on_a_connection_that_does_not_close(self) -> None:
        client, _, _, _, clock = _connected()
        stopped = client.shutdown()
        self.assertNoResult(stopped)
        clock.advance(5)
        self.successResultOf(stopped)
        self.assertIs(client.shutdown(), stopped)


class ConsoleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.console = Console()
        self.client = DebugClient(self.clock, self.console.write)
        self.console.client = self.client
        self.transport = StringTransport()
        self.console.makeConnection(self.transport)

    def test_lines_become_commands(self) -> None:
        self.console.dataReceived(b"dialect seed\r\nhel")
        self.console.dataReceived(b"p\n")
        self.assertEqual(self.client.session.dialect, Dialect.SEED)
        self.assertEqual(
            self.transport.value(), b"-- dialect seed (ASCII size, JSON payload)\n" + HELP.encode() + b"\n"
        )

    def test_invalid_utf8(self) -> None:
        self.console.dataReceived(b"say \xff\n")
        self.assertIn(b"!! that line is not valid UTF-8", self.transport.value())

    def test_a_too_long_line_is_dropped_not_fatal(self) -> None:
        self.console.dataReceived(b"x" * (Console.MAX_LENGTH + 1))
        self.assertIn(b"!! a line of more than 65536 bytes was dropped", self.transport.value())
        self.assertFalse(self.transport.disconnecting)

    def test_end_of_input_stops_the_client(self) -> None:
        self.console.readConnectionLost()
        self.successResultOf(self.client.stopped)

    def test_output_gone_stops_the_client(self) -> None:
        self.console.writeConnectionLost()
        self.successResultOf(self.client.stopped)
        self.console.write("nobody reads this")
        self.assertEqual(self.transport.value(), b"")
        self.successResultOf(self.console.close(self.clock))

    def test_close_waits_for_the_output(self) -> None:
        closed = self.console.close(self.clock)
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(closed)
        self.console.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)
        self.successResultOf(self.client.stopped)
        self.successResultOf(self.console.close(self.clock))

    def test_close_is_bounded(self) -> None:
        closed = self.console.close(self.clock)
        self.clock.advance(5)
        self.successResultOf(closed)


class ArgumentTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        options = parse_arguments([])
        self.assertEqual((options.host, options.tcp_port, options.udp_port), ("127.0.0.1", 9001, 9002))

    def test_ipv6(self) -> None:
        self.assertEqual(parse_arguments(["--host", "::1"]).host, "::1")
        self.assertEqual(parse_arguments(["--host", "[::1]", "--tcp-port", "8000", "--udp-port", "8001"]).host, "::1")

    def test_ports(self) -> None:
        options = parse_arguments(["--tcp-port", "8000", "--udp-port", "8001"])
        self.assertEqual((options.tcp_port, options.udp_port), (8000, 8001))

    def test_bad_arguments(self) -> None:
        for argv in (["--tcp-port", "0"], ["--udp-port", "65536"], ["--tcp-port", "x"], ["--host", "[]"], ["extra"]):
            errors = io.StringIO()
            with redirect_stderr(errors):
                exit_ = self.assertRaises(SystemExit, parse_arguments, argv)
            self.assertEqual(exit_.code, 2, argv)
            self.assertIn("chatd-debug: error:", errors.getvalue())


class Transcript:
    """A debug client's output, with a way to wait for an entry."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self._waiters: list[tuple[str, Deferred[str]]] = []

    def __call__(self, text: str) -> None:
        self.entries.append(text)
        for needle, waiter in list(self._waiters):
            if needle in text:
                self._waiters.remove((needle, waiter))
                waiter.callback(text)

    def __str__(self) -> str:
        return "\n".join(self.entries)

    def mark(self) -> int:
        return len(self.entries)

    def wait_for(self, needle: str, since: int) -> Deferred[str]:
        """The first entry from index C{since} on that holds C{needle}."""
        for entry in self.entries[since:]:
            if needle in entry:
                return succeed(entry)
        waiter: Deferred[str] = Deferred()
        self._waiters.append((needle, waiter))
        return waiter


class LoopbackTests(TestCase):
    """The debug client against a real chatd on 127.0.0.1."""

    timeout = 10

    def setUp(self) -> None:
        self.service = make_service(Settings(tcp_port=0, udp_port=0, password_cost=2), reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    async def start_client(self) -> tuple[DebugClient, Transcript]:
        transcript = Transcript()
        client = DebugClient(reactor, transcript, "127.0.0.1", self.service.tcp_port, self.service.udp_port)
        self.addCleanup(client.shutdown)
        self.assertTrue(await client.connect(), str(transcript))
        return client, transcript

    async def expect(self, transcript: Transcript, needle: str, since: int) -> str:
        try:
            return await transcript.wait_for(needle, since).addTimeout(5, reactor)
        except TimeoutError:
            self.fail(f"no {needle!r} in the output:\n{transcript}")

    async def command(self, client: DebugClient, transcript: Transcript, line: str, needle: str) -> str:
        since = transcript.mark()
        client.handle_line(line)
        return await self.expect(transcript, needle, since)

    async def test_create_register_and_say(self) -> None:
        ann, ann_out = await self.start_client()
        self.assertIn("-- UDP: listening on 127.0.0.1:", str(ann_out))
        ann.handle_line("dialect seed")
        since = ann_out.mark()
        await self.command(ann, ann_out, "create lobby ann", "-- token for room 'lobby'")
        created = "\n".join(ann_out.entries[since:])
        size = b'{"username": "ann"}'
        self.assertIn(
            ">> TCP 56 bytes\n   operation 1 CREATE, state 0 REQUEST, room 'lobby' (5 bytes), "
            f"payload {len(size)} bytes (ascii size)\n   payload '{size.decode()}'\n"
            "   hex 05 01 00 3139" + "00" * 27 + " | 6c6f626279 | " + size.hex(),
            created,
        )
        self.assertIn(
            "<< TCP 38 bytes\n   operation 1 CREATE, state 1 ACKNOWLEDGE, room 'lobby' (5 bytes), "
            "payload 1 byte (ascii size)\n   status 0 SUCCESS (success)\n"
            "   hex 05 01 01 31" + "00" * 28 + " | 6c6f626279 | 00",
            created,
        )
        token = ann.session.token
        assert token is not None
        self.assertIn(
            "   operation 1 CREATE, state 2 COMPLETE, room 'lobby' (5 bytes), "
            f"payload {len(token)} bytes (ascii size)\n   payload {token!r}\n"
            f"   hex 05 01 02 {str(len(token)).encode().hex()}",
            created,
        )
        registered = await self.command(ann, ann_out, "register", "operation 3 REGISTER_UDP, state 1 ACKNOWLEDGE")
        self.assertIn("status 0 SUCCESS", registered)

        bob, bob_out = await self.start_client()
        bob.handle_line("dialect native")
        since = ann_out.mark()
        await self.command(bob, bob_out, "join lobby bob", "-- token for room 'lobby'")
        notice = await self.expect(ann_out, "operation 5 NOTICE, state 2 COMPLETE", since)
        self.assertIn("payload '* bob joined lobby'", notice)
        await self.command(bob, bob_out, "keepalive", "native KEEPALIVE_ACK frame, sequence 1")

        since = bob_out.mark()
        said = await self.command(ann, ann_out, "say hello, bob", ">> UDP to 127.0.0.1:")
        self.assertIn(f"legacy chat datagram, room 'lobby', token {token!r}\n   message 'hello, bob'", said)
        self.assertIn(f"   hex 05 {len(token):02x} | 6c6f626279 | {token.encode().hex()} | ", said)
        relayed = await self.expect(bob_out, "<< UDP from", since)
        self.assertIn("native RELAY frame, sequence 1", relayed)
        self.assertIn("from 'ann' at ", relayed)
        self.assertIn(": 'hello, bob'", relayed)

        since = ann_out.mark()
        bob.handle_line("nsay hi, ann")
        relayed = await self.expect(ann_out, "<< UDP from", since)
        self.assertIn("legacy text 'bob: hi, ann'\n   hex " + b"bob: hi, ann".hex(), relayed)

    async def test_model_dialect_port_then_reconnect(self) -> None:
        carl, out = await self.start_client()
        await self.command(carl, out, "create den carl", "-- token for room 'den'")
        port = carl.session.local_udp_port
        assert port is not None
        sent = await self.command(carl, out, "port", "-- the server closed the TCP connection")
        self.assertIn(f"(as a model dialect UDP port: {port})\n   hex {port:04x}", str(out))
        self.assertIn("type connect", sent)
        await self.command(carl, out, "create den2 carl", "!! not connected")
        await self.command(carl, out, "connect", "-- connected to 127.0.0.1:")
        await self.command(carl, out, "join den dora", "status 0 SUCCESS")

    async def test_quit(self) -> None:
        dora, out = await self.start_client()
        dora.handle_line("quit")
        await dora.stopped
        self.assertEqual(out.entries[-1], "-- TCP connection closed")

    async def test_cannot_connect(self) -> None:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        number = port.getHost().port
        await port.stopListening()
        transcript = Transcript()
        client = DebugClient(reactor, transcript, "127.0.0.1", number, 9)
        self.assertFalse(await client.connect())
        self.assertIn(f"!! cannot connect to 127.0.0.1:{number}: Connection was refused", str(transcript))
        await client.shutdown()
