"""
End to end on loopback: the real service from make_service, real sockets.

The room scenarios are written once in L{_DialectScenarios} and run in each
dialect, as the transit relay runs C{_Transit} over each transport. Expected
bytes are spelled out here from docs and wire-dialects.md, not rebuilt with
the server's own encoders. Native datagrams are sealed (chatd.protocol.seal): their
clear header is spelled out here too, and the test client opens the rest with
the key its complete frame handed out. Set C{CHATD_CAPTURE=/some/file} to have
the create/join/relay scenario append the hex of every frame and datagram to it.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from chatd.daemon.service import ChatService, make_service
from chatd.daemon.settings import Settings
from chatd.protocol.datagrams import FrameType
from chatd.protocol.errors import Status
from chatd.protocol.payloads import MODEL_REMOVED_FOR_SILENCE, MODEL_ROOM_CLOSED, Dialect
from chatd.protocol.seal import KEY_BYTES, MAX_KEY_ID
from chatd.protocol.wire import Frame, Operation, SizeEncoding, State, encode_frame
from tests.loopback_clients import (
    CLOCK,
    NO_CAPTURE,
    WAIT,
    Capture,
    ChatClient,
    DatagramClient,
    FrameClient,
    connect_tcp,
    has_ipv6_loopback,
    request_payload,
    wall_ms,
)

if TYPE_CHECKING:
    _MixinBase = unittest.TestCase
else:
    _MixinBase = object

SEALED_HEADER_SIZE, TYPE_SIZE, TAG_SIZE = 15, 1, 16
"""A sealed frame (chatd/protocol/seal.py): clear header, then the encrypted frame type and body, then the tag."""
RELAY, NOTICE, KEEPALIVE_ACK = 3, 4, 5
LEGACY = (Dialect.MODEL, Dialect.SEED)


def sealed_header(key_id: int, counter: int) -> bytes:
    """Marker 0x00, version 1, flags 0, the u32 key id, the u64 counter: all in clear, all authenticated."""
    return bytes((0, 1, 0)) + key_id.to_bytes(4, "big") + counter.to_bytes(8, "big")


class _Loopback(_MixinBase):
    """A running ChatService on ephemeral loopback ports, and helpers that assert."""

    host = "127.0.0.1"
    overrides: ClassVar[dict[str, Any]] = {}

    def setUp(self) -> None:
        # These tests check what each member is told, not when: a short
        # presence interval keeps changes held back for coalescing (timed on a
        # Clock in tests/daemon/test_server.py) from slowing them down.
        options: dict[str, Any] = {"password_cost": 2, "presence_interval": 0.05, **self.overrides}
        settings = Settings(interface=self.host, tcp_port=0, udp_port=0, **options)
        self.service: ChatService = make_service(settings, CLOCK)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.server = self.service.server
        self.server_udp = (self.host, self.service.udp_port)

    # -- clients ------------------------------------------------------------

    async def client(self, dialect: Dialect, name: str, capture: Capture = NO_CAPTURE) -> ChatClient:
        client = ChatClient(dialect, name, self.host, self.service.tcp_port, self.service.udp_port, capture)
        self.addCleanup(lambda: Deferred.fromCoroutine(client.close()))
        await client.open()
        return client

    async def raw_connection(self) -> FrameClient:
        connection = FrameClient("raw")
        self.addCleanup(connection.close)
        return await connect_tcp(self.host, self.service.tcp_port, connection)

    async def datagram_socket(self, who: str) -> DatagramClient:
        sender = DatagramClient(who, self.server_udp)
        sender.listen(self.host)
        self.addCleanup(lambda: Deferred.fromCoroutine(sender.stop()))
        return sender

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = CLOCK.seconds() + timeout
        while not predicate():
            if CLOCK.seconds() > deadline:
                self.fail(f"not within {timeout:g} s: {what}")
            await deferLater(CLOCK, 0.01)

    # -- the room protocol --------------------------------------------------

    async def enter(self, client: ChatClient, operation: Operation, room: str, members: list[str]) -> None:
        """Create or join; the acknowledge and complete frames are exactly what the dialect expects."""
        client.request(operation, room)
        await self.enter_answered(client, operation, room, members)

    async def enter_answered(self, client: ChatClient, operation: Operation, room: str, members: list[str]) -> None:
        """The answers to a create or join request already sent."""
        ack = await client.tcp.next_frame()
        self.assertEqual(ack, Frame(operation, State.ACKNOWLEDGE, room, b"\x00", client.encoding))
        complete = await client.tcp.next_frame()
        self.assertEqual(
            (complete.operation, complete.state, complete.room, complete.encoding),
            (operation, State.COMPLETE, room, client.encoding),
        )
        if client.dialect is Dialect.NATIVE:
            details = json.loads(complete.payload)
            token, key, key_id = details.get("token"), details.get("key"), details.get("key_id")
            # Every native answer's resume credential (docs/protocol.md 4.2): 32 bytes, URL-safe base64.
            self.assertRegex(details.pop("resume", None), r"^[A-Za-z0-9_-]{43}$")
            self.assertIsInstance(token, str)
            self.assertIsInstance(key, str)
            self.assertIsInstance(key_id, int)
            self.assertEqual(len(base64.b64decode(key, validate=True)), KEY_BYTES)
            self.assertTrue(1 <= key_id <= MAX_KEY_ID, key_id)
            self.assertEqual(
                details,
                {
                    "chatd": 1,
                    "token": token,
                    "key": key,
                    "key_id": key_id,
                    "room": room,
                    "user": client.name,
                    "host": operation is Operation.CREATE,
                    "members": members,
                    "idle_timeout": self.server.settings.idle_timeout,
                    "keepalive_interval": self.server.settings.keepalive_interval,
                },
            )
            client.adopt_key(details)
        else:
            token = complete.payload.decode("ascii")
        self.assertRegex(token, r"^[A-Za-z0-9_-]{22}$")
        client.token = token

    async def register(self, client: ChatClient) -> None:
        """Bind the client's UDP socket to its token, the dialect's way."""
        if client.dialect is Dialect.MODEL:
            client.send_port()
            # The model handshake ends with the server closing the connection.
            await client.tcp.when_closed()
            self.assertEqual(client.tcp.pending, 0)
        elif client.dialect is Dialect.SEED:
            client.send_register()
            ack = await client.tcp.next_frame()
            self.assertEqual(
                ack, Frame(Operation.REGISTER_UDP, State.ACKNOWLEDGE, client.room, b"\x00", client.encoding)
            )
        else:
            keepalive = client.native(FrameType.KEEPALIVE)
            client.udp.send(keepalive)
            data, source = await client.udp.next_datagram()
            self.assertEqual(source, self.server_udp)
            self.assertEqual(self.open_sealed(client, data), (KEEPALIVE_ACK, b""))
            # Never larger than the keepalive it answers: no amplification.
            self.assertEqual(len(data), len(keepalive))
            self.assertEqual(len(data), SEALED_HEADER_SIZE + TYPE_SIZE + TAG_SIZE)

    def open_sealed(self, client: ChatClient, data: bytes) -> tuple[int, bytes]:
        """
        A sealed frame from the server to a native client: its clear header
        names the client's key and the server's next counter, and it opens
        under the client's key. The frame type and body.
        """
        self.assertEqual(data[:SEALED_HEADER_SIZE], sealed_header(client.key_id, client.server_counter), data.hex())
        client.server_counter += 1
        frame_type, body = client.unseal(data)
        self.assertEqual(len(data), SEALED_HEADER_SIZE + TYPE_SIZE + len(body) + TAG_SIZE)
        return frame_type, body

    async def room_of(
        self, people: list[tuple[Dialect, str]], room: str = "lobby", capture: Capture = NO_CAPTURE
    ) -> list[ChatClient]:
        """The first person creates C{room}, the others join; everyone registers UDP."""
        members: list[ChatClient] = []
        for dialect, name in people:
            client = await self.client(dialect, name, capture)
            names = [member.name for member in members] + [name]
            await self.enter(client, Operation.JOIN if members else Operation.CREATE, room, names)
            for other in members:
                await self.expect_notice(other, "joined", f"* {name} joined {room}", user=name)
            await self.register(client)
            members.append(client)
        # Every native member has a key of its own.
        keys = [(member.channel.key, member.channel.key_id) for member in members if member.channel is not None]
        self.assertEqual(len({key for key, _ in keys}), len(keys))
        self.assertEqual(len({key_id for _, key_id in keys}), len(keys))
        return members

    # -- what members receive -----------------------------------------------

    async def expect_relay(self, recipient: ChatClient, sender: ChatClient, text: str) -> None:
        """The recipient's next datagram is C{text} from C{sender}, in the recipient's dialect."""
        data, source = await recipient.udp.next_datagram()
        self.assertEqual(source, self.server_udp)
        message = text.encode("utf-8")
        if recipient.dialect is not Dialect.NATIVE:
            self.assertEqual(data, sender.name.encode("utf-8") + b": " + message)
            return
        frame_type, body = self.open_sealed(recipient, data)
        self.assertEqual(frame_type, RELAY)
        self.assertGreaterEqual(len(body), 9, body.hex())
        timestamp_ms = int.from_bytes(body[:8], "big")
        name = sender.name.encode("utf-8")
        self.assertEqual(body, timestamp_ms.to_bytes(8, "big") + bytes((len(name),)) + name + message)
        self.assertLess(abs(timestamp_ms - wall_ms()), 5000)
        # Sealed: neither the text nor the sender's token crosses the wire in clear.
        self.assertNotIn(message, data)
        self.assertNotIn(sender.token.encode("ascii"), data)

    async def say_and_expect(self, sender: ChatClient, text: str, recipients: list[ChatClient]) -> None:
        sender.say(text)
        for recipient in recipients:
            await self.expect_relay(recipient, sender, text)

    async def expect_notice(
        self,
        recipient: ChatClient,
        event: str,
        text: str,
        *,
        user: str | None = None,
        reason: str | None = None,
        model_text: str | None = None,
    ) -> None:
        """
        A system notice: over TCP while the member holds its connection (seed
        and native), as a datagram otherwise (model); plain text for legacy
        clients, JSON for native ones. C{model_text}, when given, is what a
        model member gets instead of C{text} (docs/protocol.md 4.6).
        """
        expected: dict[str, Any] = {
            "chatd": 1,
            "event": event,
            "room": recipient.room,
            "text": text,
        }
        if user is not None:
            expected["user"] = user
        if reason is not None:
            expected["reason"] = reason
        if recipient.dialect is not Dialect.MODEL and not recipient.tcp.lost:
            frame = await recipient.tcp.next_frame()
            self.assertEqual(
                (frame.operation, frame.state, frame.room, frame.encoding),
                (Operation.NOTICE, State.COMPLETE, recipient.room, recipient.encoding),
            )
            payload = frame.payload
        else:
            data, source = await recipient.udp.next_datagram()
            self.assertEqual(source, self.server_udp)
            payload = data
            if recipient.dialect is Dialect.NATIVE:
                frame_type, payload = self.open_sealed(recipient, data)
                self.assertEqual(frame_type, NOTICE)
        if recipient.dialect is Dialect.NATIVE:
            self.assertEqual(json.loads(payload), expected)
        elif recipient.dialect is Dialect.MODEL and model_text is not None:
            self.assertEqual(payload, model_text.encode("utf-8"))
        else:
            self.assertEqual(payload, text.encode("utf-8"))

    async def expect_room_closed(
        self, members: list[ChatClient], host: str, room: str = "lobby", reason: str = "the host closed the room"
    ) -> None:
        for member in members:
            text = f"* room {room} was closed: {reason}"
            await self.expect_notice(
                member, "room_closed", text, user=host, reason=reason, model_text=MODEL_ROOM_CLOSED
            )
        for member in members:
            # The server hangs up on members it told over TCP.
            await member.tcp.when_closed()

    def assert_refused(self, frame: Frame, operation: Operation, status: Status, room: str, client: ChatClient) -> None:
        self.assertEqual(
            (frame.operation, frame.state, frame.room, frame.encoding, frame.payload[:1]),
            (operation, State.ACKNOWLEDGE, room, client.encoding, bytes((status,))),
        )
        if client.dialect is Dialect.NATIVE:
            detail = json.loads(frame.payload[1:])
            self.assertEqual((detail["chatd"], detail["status"]), (1, status.name.lower()))
        else:
            self.assertEqual(len(frame.payload), 1)

    async def mixed_room(self) -> None:
        """One room, a member of each dialect: every message reaches the others in their own form."""
        alice, bob, carol = await self.room_of(
            [(Dialect.MODEL, "alice"), (Dialect.SEED, "bob"), (Dialect.NATIVE, "carol")]
        )
        await self.say_and_expect(alice, "from the model", [bob, carol])
        await self.say_and_expect(bob, "from the seed", [alice, carol])
        await self.say_and_expect(carol, "from the native ✓", [alice, bob])
        await self.say_and_expect(alice, "and back", [bob, carol])
        await bob.tcp.close()
        await self.expect_notice(alice, "left", "* bob left lobby", user="bob")
        await self.expect_notice(carol, "left", "* bob left lobby", user="bob")
        alice.say("/exit")
        await self.expect_room_closed([alice, carol], "alice")
        self.assertEqual((self.server.store.rooms(), self.server.relay.drops.total), ([], 0))


class _DialectScenarios(_Loopback):
    """Every room scenario, in the dialect C{dialect}; mixed into one class per dialect."""

    dialect: ClassVar[Dialect]

    def people(self, *names: str) -> list[tuple[Dialect, str]]:
        return [(self.dialect, name) for name in names]

    def dead_reason(self) -> str:
        """Why a datagram from a member who is gone is dropped: its token, or its key, is no longer known."""
        return "unknown_key" if self.dialect is Dialect.NATIVE else "unknown_token"

    async def test_create_join_relay(self) -> None:
        """
        Relay reaches every other member, byte for byte, and never the
        sender: each member's next datagram after speaking is someone else's.
        """
        capture = Capture.from_environment(self.dialect.value)
        capture.heading(f"{self.id()}: create, join, register, relay ({self.dialect.value} dialect)")
        alice, bob, carol = await self.room_of(self.people("alice", "bob", "carol"), capture=capture)
        await self.say_and_expect(alice, "hello, room", [bob, carol])
        await self.say_and_expect(bob, "hi alice", [alice, carol])
        await self.say_and_expect(carol, "grüße ✓", [alice, bob])
        await self.say_and_expect(alice, "bye", [bob, carol])
        self.assertEqual([member.udp.pending + member.tcp.pending for member in (alice, bob, carol)], [0, 0, 0])
        self.assertEqual((self.server.relay.drops.total, self.server.relay.send_errors), (0, 0))

    async def test_address_check(self) -> None:
        """
        Legacy: a valid token from another socket is dropped as wrong_source.
        Native: another socket has no key, so it can only forge (dropped as
        unauthenticated) or replay a captured datagram (dropped as replayed).
        Either way the owner keeps its address, and the intruder hears nothing.
        """
        alice, bob = await self.room_of(self.people("alice", "bob"))
        intruder = await self.datagram_socket("intruder")
        if self.dialect is Dialect.NATIVE:
            captured = alice.say("captured")
            await self.expect_relay(bob, alice, "captured")
            intruder.send(alice.forged("forged"))
            intruder.send(captured)
            expected = Counter({"unauthenticated": 1, "replayed": 1})
        else:
            intruder.send(alice.message("forged"))
            expected = Counter({"wrong_source": 1})
        await self.say_and_expect(alice, "genuine", [bob])
        await self.say_and_expect(bob, "to alice", [alice])
        self.assertEqual(self.server.relay.drops.counts, expected)
        self.assertEqual(intruder.pending, 0)

    async def test_host_exit_closes_room(self) -> None:
        alice, bob, carol = await self.room_of(self.people("alice", "bob", "carol"))
        alice.say("/exit")
        await self.expect_room_closed([alice, bob, carol], "alice")
        self.assertEqual((self.server.store.rooms(), self.server.store.member_count()), ([], 0))
        # The old tokens are dead, and the name is free again.
        bob.say("anyone?")
        dave = await self.client(self.dialect, "dave")
        dave.request(Operation.JOIN, "lobby")
        self.assert_refused(await dave.tcp.next_frame(), Operation.JOIN, Status.ROOM_NOT_FOUND, "lobby", dave)
        await self.enter(dave, Operation.CREATE, "lobby", ["dave"])
        # A native member's key died with its room, as a legacy member's token did.
        dead = self.dead_reason()
        await self.until(lambda: self.server.relay.drops.counts[dead] == 1, "bob's datagram dropped")
        self.assertEqual([member.udp.pending for member in (alice, bob, carol)], [0, 0, 0])

    async def test_member_exit_leaves(self) -> None:
        """A member's /exit is leaving (docs/protocol.md 6.4): not relayed, the others told, its TCP closed."""
        alice, bob, carol = await self.room_of(self.people("alice", "bob", "carol"))
        bob.say("  /exit\n")
        for member in (alice, carol):
            await self.expect_notice(member, "left", "* bob left lobby", user="bob")
        await bob.tcp.when_closed()
        self.assertEqual(self.server.store.member_count(), 2)
        await self.say_and_expect(alice, "and then there were two", [carol])
        await self.say_and_expect(carol, "indeed", [alice])
        self.assertEqual((bob.udp.pending, bob.tcp.pending), (0, 0))

    async def test_tcp_close_leaves(self) -> None:
        alice, bob, carol = await self.room_of(self.people("alice", "bob", "carol"))
        if self.dialect is Dialect.MODEL:
            # Model clients close TCP after registering, and stay members.
            self.assertTrue(alice.tcp.lost and bob.tcp.lost and carol.tcp.lost)
            self.assertEqual(self.server.store.member_count(), 3)
            await self.say_and_expect(alice, "still with us?", [bob, carol])
            await self.say_and_expect(bob, "yes", [alice, carol])
            return
        await bob.tcp.close()
        for member in (alice, carol):
            await self.expect_notice(member, "left", "* bob left lobby", user="bob")
        bob.say("ghost")
        # Sent after the ghost: if the ghost were relayed, carol would get it first.
        await self.say_and_expect(alice, "just us", [carol])
        await self.say_and_expect(carol, "yes", [alice])
        self.assertEqual(self.server.relay.drops.counts, Counter({self.dead_reason(): 1}))
        self.assertEqual(self.server.store.member_count(), 2)

    async def test_password_room(self) -> None:
        """The password is checked on the reactor's thread pool; a wrong one is refused, the right one admitted."""
        alice = await self.client(self.dialect, "alice")
        alice.request(Operation.CREATE, "vault", password="sesame")
        await self.enter_answered(alice, Operation.CREATE, "vault", ["alice"])
        await self.register(alice)
        bob = await self.client(self.dialect, "bob")
        bob.request(Operation.JOIN, "vault", password="wrong")
        self.assert_refused(await bob.tcp.next_frame(), Operation.JOIN, Status.INVALID_PASSWORD, "vault", bob)
        bob.request(Operation.JOIN, "vault", password="sesame")
        await self.enter_answered(bob, Operation.JOIN, "vault", ["alice", "bob"])
        await self.expect_notice(alice, "joined", "* bob joined vault", user="bob")
        await self.register(bob)
        await self.say_and_expect(bob, "open sesame", [alice])

    async def test_two_rooms_isolated(self) -> None:
        alice, bob = await self.room_of(self.people("alice", "bob"), room="red")
        carol, dave = await self.room_of(self.people("carol", "dave"), room="blue")
        alice.say("in red")
        carol.say("in blue")
        await self.expect_relay(bob, alice, "in red")
        await self.expect_relay(dave, carol, "in blue")
        if self.dialect in LEGACY:
            # A member's token with another room's name is dropped.
            alice.udp.send(alice.message("sneaking in", room="blue"))
        await self.say_and_expect(bob, "red reply", [alice])
        await self.say_and_expect(dave, "blue reply", [carol])
        await self.say_and_expect(carol, "blue again", [dave])
        expected = Counter({"wrong_room": 1}) if self.dialect in LEGACY else Counter()
        self.assertEqual(self.server.relay.drops.counts, expected)
        self.assertEqual(sorted(room.name for room in self.server.store.rooms()), ["blue", "red"])


class _HeldConnectionScenarios(_DialectScenarios):
    """For the dialects whose TCP connection is the member's presence (not model)."""

    async def test_host_tcp_close_closes_room(self) -> None:
        alice, bob, carol = await self.room_of(self.people("alice", "bob", "carol"))
        await alice.tcp.close()
        # Its connection went away: it may not have meant to end the room.
        await self.expect_room_closed([bob, carol], "alice", reason="the host left")
        self.assertEqual((self.server.store.rooms(), self.server.store.member_count()), ([], 0))


class ModelDialectTests(_DialectScenarios, unittest.TestCase):
    timeout = 10
    dialect = Dialect.MODEL


class SeedDialectTests(_HeldConnectionScenarios, unittest.TestCase):
    timeout = 10
    dialect = Dialect.SEED


class NativeDialectTests(_HeldConnectionScenarios, unittest.TestCase):
    timeout = 10
    dialect = Dialect.NATIVE


class MixedDialectTests(_Loopback, unittest.TestCase):
    timeout = 10

    async def test_one_room_every_dialect(self) -> None:
        await self.mixed_room()


class IPv6Tests(_Loopback, unittest.TestCase):
    timeout = 10
    host = "::1"

    def setUp(self) -> None:
        if not has_ipv6_loopback():
            raise unittest.SkipTest("this machine has no IPv6 loopback (::1)")
        super().setUp()

    async def test_one_room_every_dialect(self) -> None:
        await self.mixed_room()
        self.assertEqual(self.service.server.settings.interface, "::1")


class IdleTests(_Loopback, unittest.TestCase):
    """The sweeper of the running service removes silent members and tells everyone, each in their form."""

    timeout = 10
    overrides: ClassVar[dict[str, Any]] = {"idle_timeout": 1.0, "sweep_interval": 0.05}

    async def test_silent_member_then_silent_host(self) -> None:
        alice, bob = await self.room_of([(Dialect.NATIVE, "alice"), (Dialect.MODEL, "bob")])
        # Alice keeps alive over UDP; bob says nothing after registering.
        notice = alice.tcp.next_frame()
        while not notice.called:
            alice.udp.send(alice.native(FrameType.KEEPALIVE))
            await deferLater(CLOCK, 0.1)
        frame = await notice
        self.assertEqual((frame.operation, frame.state, frame.room), (Operation.NOTICE, State.COMPLETE, "lobby"))
        text = "* bob was removed from lobby after 1 s without activity"
        self.assertEqual(
            json.loads(frame.payload),
            {"chatd": 1, "event": "timed_out", "room": "lobby", "text": text, "user": "bob"},
        )
        data, _ = await bob.udp.next_datagram()
        # The model client's own sentence: it ends its program on nothing else.
        self.assertEqual(data, MODEL_REMOVED_FOR_SILENCE.encode("utf-8"))
        self.assertEqual(self.server.store.member_count(), 1)
        # Now alice falls silent too: the host timing out closes the room.
        reason = "the host timed out"
        await self.expect_notice(
            alice, "room_closed", f"* room lobby was closed: {reason}", user="alice", reason=reason
        )
        await alice.tcp.when_closed()
        self.assertEqual(self.server.store.rooms(), [])


class AbuseTests(_Loopback, unittest.TestCase):
    """Each abuse is refused as specified, and a fresh room works after it."""

    timeout = 10
    overrides: ClassVar[dict[str, Any]] = {"frame_timeout": 0.5}
    rooms = 0

    async def assert_fresh_room_works(self) -> None:
        self.rooms += 1
        room = f"fresh-{self.rooms}"
        ann, ben = await self.room_of([(Dialect.MODEL, "ann"), (Dialect.SEED, "ben")], room=room)
        await self.say_and_expect(ann, "still working?", [ben])
        await self.say_and_expect(ben, "still working.", [ann])
        await ben.tcp.close()
        await self.expect_notice(ann, "left", f"* ben left {room}", user="ben")

    async def assert_refused_and_closed(self, connection: FrameClient, expected: Frame) -> None:
        """The server's only answer is C{expected}, then it hangs up."""
        await connection.when_closed()
        self.assertEqual(bytes(connection.received), encode_frame(expected))

    async def until_no_connections(self) -> None:
        await self.until(lambda: not self.server.tcp_factory.connections, "every connection closed on the server")

    def create_request(self, room: str = "lobby", encoding: SizeEncoding = SizeEncoding.BINARY) -> bytes:
        payload = request_payload(Dialect.SEED if encoding is SizeEncoding.ASCII else Dialect.MODEL, "mallory")
        return encode_frame(Frame(Operation.CREATE, State.REQUEST, room, payload, encoding))

    async def test_truncated_header_then_close(self) -> None:
        connection = await self.raw_connection()
        connection.send_bytes(self.create_request()[:20])
        await connection.close()
        self.assertEqual(bytes(connection.received), b"")
        await self.until_no_connections()
        self.assertEqual(self.server.store.rooms(), [])
        await self.assert_fresh_room_works()

    async def test_absurd_payload_size(self) -> None:
        """Refused from the 32-byte header alone, in the size encoding the request used."""
        cases = [
            (b"\xff" * 29, SizeEncoding.BINARY),
            ((4097).to_bytes(29, "big"), SizeEncoding.BINARY),
            (b"9" * 29, SizeEncoding.ASCII),
            (b"4097".ljust(29, b"\x00"), SizeEncoding.ASCII),
        ]
        for size_field, encoding in cases:
            connection = await self.raw_connection()
            connection.send_bytes(bytes((5, Operation.CREATE, State.REQUEST)) + size_field + b"lobby")
            refusal = Frame(Operation.CREATE, State.ACKNOWLEDGE, "", bytes((Status.REQUEST_TOO_LARGE,)), encoding)
            await self.assert_refused_and_closed(connection, refusal)
        await self.until_no_connections()
        await self.assert_fresh_room_works()

    async def test_invalid_utf8_room_name(self) -> None:
        connection = await self.raw_connection()
        payload = request_payload(Dialect.MODEL, "mallory")
        header = bytes((2, Operation.CREATE, State.REQUEST)) + len(payload).to_bytes(29, "big")
        connection.send_bytes(header + b"\xff\xfe" + payload)
        # The operation byte was read (1, create), so the answer names it.
        refusal = Frame(Operation.CREATE, State.ACKNOWLEDGE, "", bytes((Status.MALFORMED_REQUEST,)))
        await self.assert_refused_and_closed(connection, refusal)
        self.assertEqual(self.server.store.rooms(), [])
        await self.until_no_connections()
        await self.assert_fresh_room_works()

    async def test_empty_room_name(self) -> None:
        """INVALID_NAME, and the connection stays usable: the same client then creates a named room."""
        for dialect in (Dialect.MODEL, Dialect.SEED):
            client = await self.client(dialect, "mallory")
            client.request(Operation.CREATE, "")
            refusal = await client.tcp.next_frame()
            self.assertEqual(
                refusal, Frame(Operation.CREATE, State.ACKNOWLEDGE, "", bytes((Status.INVALID_NAME,)), client.encoding)
            )
            await self.enter(client, Operation.CREATE, f"named-{dialect.value}", ["mallory"])
        await self.assert_fresh_room_works()

    async def test_unknown_operation(self) -> None:
        cases = [
            # An operation byte no dialect defines: it cannot be named in the answer.
            (bytes((5, 99, State.REQUEST)), Operation.UNKNOWN),
            # A defined operation that is never a request.
            (bytes((5, Operation.NOTICE, State.REQUEST)), Operation.NOTICE),
        ]
        for start, operation in cases:
            connection = await self.raw_connection()
            payload = request_payload(Dialect.MODEL, "mallory")
            connection.send_bytes(start + len(payload).to_bytes(29, "big") + b"lobby" + payload)
            room = "" if operation is Operation.UNKNOWN else "lobby"
            refusal = Frame(operation, State.ACKNOWLEDGE, room, bytes((Status.MALFORMED_REQUEST,)))
            await self.assert_refused_and_closed(connection, refusal)
        self.assertEqual(self.server.store.rooms(), [])
        await self.until_no_connections()
        await self.assert_fresh_room_works()

    async def test_stalled_connection(self) -> None:
        """One byte then nothing: closed after frame_timeout, silently (there is no header to answer)."""
        connection = await self.raw_connection()
        started = CLOCK.seconds()
        connection.send_bytes(b"\x05")
        await connection.when_closed()
        elapsed = CLOCK.seconds() - started
        self.assertEqual(bytes(connection.received), b"")
        self.assertTrue(0.4 <= elapsed < 3.0, f"closed after {elapsed:.2f} s; frame_timeout is 0.5 s")
        await self.until_no_connections()
        await self.assert_fresh_room_works()

    async def test_stalled_body(self) -> None:
        """A whole header and part of the body, then nothing: answered TIMED_OUT and closed."""
        connection = await self.raw_connection()
        connection.send_bytes(self.create_request()[:40])
        refusal = Frame(Operation.CREATE, State.ACKNOWLEDGE, "", bytes((Status.TIMED_OUT,)))
        await self.assert_refused_and_closed(connection, refusal)
        await self.until_no_connections()
        await self.assert_fresh_room_works()

    async def test_garbage_datagrams(self) -> None:
        """Every garbage datagram is counted, none is answered, and each reason is warned about once."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        sender = await self.datagram_socket("garbage")
        rng = random.Random(20240601)
        garbage = [b"", b"\x01", b"\x05\x05short", b"\x00", b"\x00\x09" + bytes(11), b"\xff" * 40, b"x" * 5000]
        garbage += [rng.randbytes(rng.randrange(1, 300)) for _ in range(400)]
        relay = self.server.relay
        for start in range(0, len(garbage), 50):
            # In batches, so a full socket buffer never loses any.
            batch = garbage[start : start + 50]
            for datagram in batch:
                sender.send(datagram)
            sent = start + len(batch)

            def all_received(sent: int = sent) -> bool:
                return relay.received >= sent

            await self.until(all_received, f"{sent} datagrams received")
        self.assertEqual((relay.received, relay.drops.total, relay.sent), (len(garbage), len(garbage), 0))
        warnings = [
            event
            for event in events
            if event.get("log_namespace") == "chatd.daemon.relay.DropCounter"
            and event.get("log_level") == LogLevel.warn
        ]
        warned = Counter(event["reason"] for event in warnings)
        self.assertEqual(set(warned), set(relay.drops.counts))
        self.assertEqual(set(warned.values()), {1})
        self.assertIn("too_large", warned)
        await self.assert_fresh_room_works()
        self.assertEqual(sender.pending, 0)
