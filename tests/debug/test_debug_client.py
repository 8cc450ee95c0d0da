"""Tests for chatd.debug.client: the protocols, the console, the arguments, and a loopback session."""

from __future__ import annotations

import base64
import io
import json
from contextlib import redirect_stderr

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from chatd.daemon.service import make_service
from chatd.daemon.settings import Settings
from chatd.debug.client import Console, DebugClient, ServerConnection, parse_arguments
from chatd.debug.commands import HELP
from chatd.debug.describe import describe_tcp_bytes, report
from chatd.protocol.datagrams import FrameType, encode_relay_body
from chatd.protocol.payloads import Dialect
from chatd.protocol.seal import Channel, Direction
from chatd.protocol.wire import Frame, Operation, SizeEncoding, State, encode_frame
from tests.helpers import SEED_EXAMPLE


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


KEY = bytes(range(32))


def _native_complete(operation: Operation = Operation.JOIN, key: bytes = KEY, key_id: int = 77) -> bytes:
    payload: dict[str, object] = {"key": base64.b64encode(key).decode(), "key_id": key_id}
    if operation is not Operation.REKEY:
        payload.update(chatd=1, token="T", room="hoge", user="bob")
    return _reply(operation, State.COMPLETE, json.dumps(payload).encode())


def _hex_line(entry: str) -> str:
    """The hex line of an entry, its separators taken out: the bytes exactly as they went over the wire."""
    lines = [line.strip() for line in entry.splitlines() if line.strip().startswith("hex ")]
    assert len(lines) == 1, entry
    return lines[0].removeprefix("hex ").replace(" ", "").replace("|", "")


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
            "-- token for room 'hoge': tk (say uses it); "
            "to register your UDP address: port (2 raw bytes, then the server closes TCP)",
        )
        self.assertEqual((client.session.room, client.session.token), ("hoge", "tk"))

    def test_a_seed_answer_suggests_register(self) -> None:
        """The hint follows the dialect the server answered in (ASCII size: seed), not the one requests are typed in."""
        client, protocol, _, output, _ = _connected()
        # The seed example sent as it is (raw), the session still in its default model dialect.
        client.handle_line(f"raw {SEED_EXAMPLE.hex()}")
        del output[:]
        ack = Frame(Operation.CREATE, State.ACKNOWLEDGE, "hoge", b"\x00", SizeEncoding.ASCII)
        complete = Frame(Operation.CREATE, State.COMPLETE, "hoge", b"tk", SizeEncoding.ASCII)
        protocol.dataReceived(encode_frame(ack) + encode_frame(complete))
        self.assertEqual(
            output[-1],
            "-- token for room 'hoge': tk (say uses it); to register your UDP address: register (operation 3)",
        )

    def test_a_model_answer_suggests_the_port_bytes_whatever_the_typed_dialect(self) -> None:
        client, protocol, _, output, _ = _connected()
        client.handle_line("dialect seed")
        protocol.dataReceived(_reply(Operation.CREATE, State.COMPLETE, b"tk"))
        self.assertTrue(
            output[-1].endswith("to register your UDP address: port (2 raw bytes, then the server closes TCP)")
        )

    def test_a_native_key_is_learned_and_shown_by_id(self) -> None:
        client, protocol, _, output, _ = _connected()
        client.handle_line("dialect native")
        del output[:]
        protocol.dataReceived(_native_complete())
        self.assertEqual(
            output[-1],
            "-- token for room 'hoge': T (never sent on UDP); UDP key id 77 (nsay and keepalive seal with it); "
            "to register your UDP address: keepalive (the first sealed datagram registers)",
        )
        channel = client.session.channel
        assert channel is not None
        self.assertEqual((channel.key, channel.key_id), (KEY, 77))
        client.handle_line("state")
        self.assertIn("key id 77 (the key itself is not shown)", output[-1])
        self.assertNotIn(base64.b64encode(KEY).decode(), output[-1])

    def test_a_native_complete_frame_without_a_key(self) -> None:
        client, protocol, _, output, _ = _connected()
        client.handle_line("dialect native")
        protocol.dataReceived(_reply(Operation.JOIN, State.COMPLETE, b'{"chatd": 1, "token": "T"}'))
        self.assertIn("-- token for room 'hoge': T (say uses it)", output[-2])
        self.assertEqual(
            output[-1], '!! the complete frame has no usable UDP key ("key", "key_id"): nsay and keepalive cannot seal'
        )
        self.assertIsNone(client.session.channel)

    def test_rekey(self) -> None:
        client, protocol, transport, output, _ = _connected()
        client.handle_line("dialect native")
        protocol.dataReceived(_native_complete())
        transport.clear()
        client.handle_line("rekey")
        self.assertEqual(transport.value(), _reply(Operation.REKEY, State.REQUEST, b""))
        first = client.session.channel
        protocol.dataReceived(_reply(Operation.REKEY, State.ACKNOWLEDGE, b"\x00"))
        self.assertIs(client.session.channel, first)
        protocol.dataReceived(_native_complete(Operation.REKEY, bytes(32), 78))
        self.assertEqual(
            output[-1],
            "-- new UDP key id 78 for room 'hoge' (nsay and keepalive seal with it, counters from 0; "
            "the old key no longer works)",
        )
        channel = client.session.channel
        assert channel is not None
        self.assertEqual((channel.key, channel.key_id), (bytes(32), 78))
        self.assertEqual((client.session.token, client.session.room), ("T", "hoge"))
        protocol.dataReceived(_reply(Operation.REKEY, State.COMPLETE, b'{"key": "?", "key_id": 1}'))
        self.assertEqual(
            output[-1], '!! the complete rekey frame has no usable UDP key ("key", "key_id"); still key id 78'
        )
        self.assertIs(client.session.channel, channel)

    def test_received_sealed_datagrams_are_opened(self) -> None:
        client, protocol, _, output, _ = _connected()
        server = Channel(KEY, 77, Direction.TO_CLIENT)
        relay = server.seal(FrameType.RELAY, encode_relay_body("ann", b"hello", 1_700_000_000_000))
        client.datagram_received(relay, ("127.0.0.1", 9002))
        self.assertIn(
            "sealed native frame, key id 77, counter 0, flags 0\n   could not open: this client holds no UDP key",
            output[-1],
        )
        client.handle_line("dialect native")
        protocol.dataReceived(_native_complete())
        client.datagram_received(relay, ("127.0.0.1", 9002))
        self.assertEqual(
            output[-1].splitlines()[:3],
            [
                "<< UDP from 127.0.0.1:9002, 49 bytes",
                "   sealed native frame, key id 77, counter 0, flags 0",
                "   RELAY from 'ann' at 2023-11-14T22:13:20.000Z: 'hello'",
            ],
        )
        self.assertEqual(_hex_line(output[-1]), relay.hex())
        # The same datagram again is a replay.
        client.datagram_received(relay, ("127.0.0.1", 9002))
        self.assertIn("could not open: counter 0 was seen before or is too old", output[-1])
        notice = server.seal(FrameType.NOTICE, b'{"event": "joined", "user": "cat"}')
        client.datagram_received(notice, ("10.0.0.9", 4000))
        self.assertIn("(not the server's UDP address)", output[-1])
        self.assertIn('NOTICE \'{"event": "joined", "user": "cat"}\'', output[-1])
        forged = bytearray(server.seal(FrameType.KEEPALIVE_ACK, b""))
        forged[20] ^= 0x80
        client.datagram_received(bytes(forged), ("127.0.0.1", 9002))
        self.assertIn("could not open: sealed frame did not authenticate", output[-1])
        client.datagram_received(server.seal(FrameType.KEEPALIVE_ACK, b""), ("127.0.0.1", 9002))
        self.assertIn("counter 3, flags 0\n   KEEPALIVE_ACK (no body)", output[-1])

    def test_sealing_needs_a_udp_port(self) -> None:
        client, protocol, _, output, _ = _connected()
        client.handle_line("dialect native")
        protocol.dataReceived(_native_complete())
        client.handle_line("nsay hi")
        client.handle_line("keepalive")
        self.assertEqual(output[-2:], ["!! no UDP port to send from"] * 2)
        # Nothing was sealed, so no counter was spent.
        assert client.session.channel is not None
        self.assertEqual(client.session.channel.sent, 0)

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
        key = bob.session.channel
        assert key is not None
        since = bob_out.mark()
        bob.handle_line("keepalive")
        sent = await self.expect(bob_out, ">> UDP to", since)
        self.assertIn(f"sealed native frame, key id {key.key_id}, counter 0, flags 0\n   KEEPALIVE (no body)", sent)
        acked = await self.expect(bob_out, "<< UDP from", since)
        self.assertIn(
            f"sealed native frame, key id {key.key_id}, counter 0, flags 0\n   KEEPALIVE_ACK (no body)", acked
        )

        since = bob_out.mark()
        said = await self.command(ann, ann_out, "say hello, bob", ">> UDP to 127.0.0.1:")
        self.assertIn(f"legacy chat datagram, room 'lobby', token {token!r}\n   message 'hello, bob'", said)
        self.assertIn(f"   hex 05 {len(token):02x} | 6c6f626279 | {token.encode().hex()} | ", said)
        relayed = await self.expect(bob_out, "<< UDP from", since)
        self.assertIn(f"sealed native frame, key id {key.key_id}, counter 1, flags 0\n   RELAY from 'ann' at ", relayed)
        self.assertIn(": 'hello, bob'", relayed)

        since = ann_out.mark()
        sent = await self.command(bob, bob_out, "nsay hi, ann", ">> UDP to")
        self.assertIn(f"key id {key.key_id}, counter 1, flags 0\n   MESSAGE 'hi, ann'", sent)
        relayed = await self.expect(ann_out, "<< UDP from", since)
        self.assertIn("legacy text 'bob: hi, ann'\n   hex " + b"bob: hi, ann".hex(), relayed)
        self.assertEqual(self.service.server.relay.drops.total, 0)

    async def native_member(self, line: str) -> tuple[DebugClient, Transcript]:
        """A native client that has run C{line} (create or join) and registered with a keepalive."""
        client, transcript = await self.start_client()
        client.handle_line("dialect native")
        await self.command(client, transcript, line, "UDP key id")
        await self.keepalive(client, transcript)
        return client, transcript

    async def keepalive(self, client: DebugClient, transcript: Transcript) -> None:
        """
        A keepalive, answered: the server has handled everything this client
        sent before it (datagrams on loopback arrive in order).
        """
        since = transcript.mark()
        client.handle_line("keepalive")
        await self.expect(transcript, "KEEPALIVE_ACK (no body)", since)

    async def nsay(self, sender: DebugClient, sender_out: Transcript, text: str, to: Transcript) -> tuple[str, str]:
        """C{sender}'s nsay, as shown when sent, and as its recipient shows the relayed copy."""
        since = to.mark()
        sent = await self.command(sender, sender_out, f"nsay {text}", ">> UDP to")
        return sent, await self.expect(to, "<< UDP from", since)

    async def test_native_members_both_ways(self) -> None:
        ann, ann_out = await self.native_member("create parlour ann")
        bob, bob_out = await self.native_member("join parlour bob")
        _, relayed = await self.nsay(ann, ann_out, "hello, bob", bob_out)
        self.assertIn("RELAY from 'ann' at ", relayed)
        self.assertIn(": 'hello, bob'", relayed)
        _, relayed = await self.nsay(bob, bob_out, "hello, ann", ann_out)
        self.assertIn("RELAY from 'bob' at ", relayed)
        self.assertIn(": 'hello, ann'", relayed)
        self.assertEqual(self.service.server.relay.drops.total, 0)

    async def test_native_hex_shows_neither_the_token_nor_the_text(self) -> None:
        ann, ann_out = await self.native_member("create parlour ann")
        bob, bob_out = await self.native_member("join parlour bob")
        text = "a message that only bob may read"
        sent, relayed = await self.nsay(ann, ann_out, text, bob_out)
        # Both ends read it, once opened with their keys...
        self.assertIn(f"MESSAGE {text!r}", sent)
        self.assertIn(f": {text!r}", relayed)
        secrets = {"text": text.encode(), "sender": b"ann"}
        for name, client in (("ann", ann), ("bob", bob)):
            assert client.session.token is not None and client.session.channel is not None
            secrets[f"{name}'s token"] = client.session.token.encode()
            secrets[f"{name}'s key"] = client.session.channel.key
        # ...but the bytes on the wire carry none of it.
        for entry in (sent, relayed):
            wire = _hex_line(entry)
            self.assertEqual(len(wire), 2 * int(entry.split(" bytes", 1)[0].rsplit(" ", 1)[1]))
            for name, secret in secrets.items():
                self.assertNotIn(secret.hex(), wire, name)
            for name in ("text", "ann's token", "bob's token"):
                self.assertNotIn(secrets[name].decode(), entry.split("\n   hex ")[1], name)

    async def test_a_replayed_datagram_is_dropped(self) -> None:
        ann, ann_out = await self.native_member("create parlour ann")
        bob, bob_out = await self.native_member("join parlour bob")
        sent, _ = await self.nsay(bob, bob_out, "only once", ann_out)
        captured = sent.split("\n   hex ")[1]
        since = ann_out.mark()
        replayed = await self.command(bob, bob_out, f"udpraw {captured}", ">> UDP to")
        # The client shows what its replay carries (it checks no window for what it sends).
        self.assertIn("MESSAGE 'only once'", replayed)
        self.assertEqual(_hex_line(replayed), _hex_line(sent))
        await self.keepalive(bob, bob_out)
        await self.keepalive(ann, ann_out)
        self.assertEqual(self.service.server.relay.drops.counts["replayed"], 1)
        self.assertEqual(self.service.server.relay.drops.total, 1)
        self.assertNotIn("only once", "\n".join(ann_out.entries[since:]))
        # The key still works after the replay.
        _, relayed = await self.nsay(bob, bob_out, "and again", ann_out)
        self.assertIn(": 'and again'", relayed)

    async def test_rekey(self) -> None:
        _, ann_out = await self.native_member("create parlour ann")
        bob, bob_out = await self.native_member("join parlour bob")
        old = bob.session.channel
        assert old is not None
        sent, _ = await self.nsay(bob, bob_out, "under the old key", ann_out)
        await self.command(bob, bob_out, "rekey", "-- new UDP key id")
        new = bob.session.channel
        assert new is not None
        self.assertNotEqual((new.key_id, new.key), (old.key_id, old.key))
        state = await self.command(bob, bob_out, "state", "UDP key")
        self.assertIn(f"key id {new.key_id} (the key itself is not shown), next counter to send 0", state)
        # Counters start again under the new key, which the server accepts.
        since = bob_out.mark()
        bob.handle_line("keepalive")
        acked = await self.expect(bob_out, "KEEPALIVE_ACK", since)
        self.assertIn(f"key id {new.key_id}, counter 0, flags 0", acked)
        _, relayed = await self.nsay(bob, bob_out, "under the new key", ann_out)
        self.assertIn(": 'under the new key'", relayed)
        # The old key is gone: a datagram sealed under it is dropped.
        replayed = await self.command(bob, bob_out, "udpraw " + sent.split("\n   hex ")[1], ">> UDP to")
        self.assertIn(
            f"could not open: sealed under key id {old.key_id}, not this client's key id {new.key_id}", replayed
        )
        await self.keepalive(bob, bob_out)
        self.assertEqual(self.service.server.relay.drops.counts["unknown_key"], 1)

    async def test_rekey_is_for_native_members_only(self) -> None:
        ann, ann_out = await self.start_client()
        ann.handle_line("dialect seed")
        await self.command(ann, ann_out, "create den ann", "-- token for room 'den'")
        refused = await self.command(ann, ann_out, "rekey", "operation 6 REKEY, state 1 ACKNOWLEDGE")
        self.assertNotIn("status 0 SUCCESS", refused)
        self.assertIsNone(ann.session.channel)

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
