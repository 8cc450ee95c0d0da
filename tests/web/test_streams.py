"""
The seam browsers hang on, without a browser or a socket: the store keeps a
room's Dialect.WEB members in Room.streamed_members, and the relay hands each
of them (IMessageStream) every numbered message of the room, from every
dialect, in order, never their own.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from chatd.daemon.interfaces import IMessageStream
from chatd.daemon.rooms import LeaveReason, Member
from chatd.protocol.datagrams import encode_legacy
from chatd.protocol.errors import FrameTooLargeError, RateLimitedError
from chatd.protocol.payloads import Dialect, RoomRequest
from tests.helpers import make_server


@implementer(IMessageStream)
class Recorded:
    def __init__(self) -> None:
        self.messages: list[tuple[str, int, int, bytes]] = []

    def send_message(self, sender: Member, seq: int, time_ms: int, message: bytes) -> None:
        self.messages.append((sender.name, seq, time_ms, message))


class StreamedMembersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.clock, self.transport = make_server(message_burst=5, messages_per_s=0.001)
        self.store = self.server.store

    def enter(self, name: str, dialect: Dialect, create: bool = False) -> Member:
        request = RoomRequest(name)
        if create:
            entered = self.store.create_room("lobby", request, dialect)
        else:
            entered = self.store.join_room("lobby", request, dialect)
        return self.successResultOf(entered)

    def browser(self, name: str, create: bool = False) -> tuple[Member, Recorded]:
        member = self.enter(name, Dialect.WEB, create)
        member.stream = stream = Recorded()
        return member, stream

    def test_the_room_lists_its_browser_members_in_join_order(self) -> None:
        alice, _ = self.browser("alice", create=True)
        seed = self.enter("sid", Dialect.SEED)
        bob, _ = self.browser("bob")
        room = alice.room
        self.assertEqual(room.streamed_members, (alice, bob))
        self.assertEqual((room.recipients, room.delivery_members), ((), ()))
        self.store.leave(bob, LeaveReason.LEFT)
        self.assertEqual(room.streamed_members, (alice,))
        self.store.leave(seed, LeaveReason.LEFT)
        self.assertEqual(room.streamed_members, (alice,))
        self.store.leave(alice, LeaveReason.LEFT)
        self.assertTrue(room.closed)
        self.assertEqual(room.streamed_members, ())

    def test_a_browser_member_has_no_key_and_no_address(self) -> None:
        alice, stream = self.browser("alice", create=True)
        self.assertEqual((alice.channel, alice.address, alice.delivery), (None, None, False))
        verifyObject(IMessageStream, stream)

    def test_every_message_in_room_order_never_the_senders_own(self) -> None:
        alice, alice_heard = self.browser("alice", create=True)
        bob, bob_heard = self.browser("bob")
        legacy = self.enter("sid", Dialect.SEED)
        self.store.bind_address(legacy, ("127.0.0.1", 5000))
        self.clock.advance(2)
        relay = self.server.relay
        self.store.touch(alice)
        self.assertEqual(relay.relay_message(alice, b"one"), (1, 2000))
        self.store.touch(bob)
        self.assertEqual(relay.relay_message(bob, b"/me two"), (2, 2000))
        # A legacy datagram, through the relay's own path.
        relay.datagramReceived(encode_legacy("lobby", legacy.token, "three"), ("127.0.0.1", 5000))
        self.assertEqual(alice_heard.messages, [("bob", 2, 2000, b"/me two"), ("sid", 3, 2000, b"three")])
        self.assertEqual(bob_heard.messages, [("alice", 1, 2000, b"one"), ("sid", 3, 2000, b"three")])
        # The legacy member got the browsers' messages as legacy text.
        self.assertEqual([data for data, _ in self.transport.written], [b"alice: one", b"* bob two"])
        self.assertEqual(alice.room.history.latest, 3)

    def test_the_same_checks_as_any_message(self) -> None:
        alice, _ = self.browser("alice", create=True)
        _, bob_heard = self.browser("bob")
        relay = self.server.relay
        with self.assertRaises(FrameTooLargeError):
            relay.relay_message(alice, b"x" * 5000)
        for _ in range(5):
            relay.relay_message(alice, b"ok")
        with self.assertRaises(RateLimitedError):
            relay.relay_message(alice, b"too many")
        self.assertEqual(len(bob_heard.messages), 5)

    def test_a_member_whose_stream_is_gone_is_skipped(self) -> None:
        alice, _ = self.browser("alice", create=True)
        bob, bob_heard = self.browser("bob")
        bob.stream = None
        self.assertIsNotNone(self.server.relay.relay_message(alice, b"nobody hears"))
        self.assertEqual(bob_heard.messages, [])
