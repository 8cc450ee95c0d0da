"""Tests for chatd.daemon.relay: the relay on a fake datagram transport, time on a Clock."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from chatd.daemon.controller import ChatServer
from chatd.daemon.fanout import WriteEachFanout, WriteEachTransport, fanout_transport
from chatd.daemon.interfaces import IFanoutTransport
from chatd.daemon.relay import RelayStats
from chatd.daemon.rooms import LeaveReason, Member
from chatd.daemon.sockaddr import Address
from chatd.protocol.datagrams import (
    MAX_DATAGRAM,
    RELAY_OVERHEAD,
    FrameType,
    decode_relay_body,
    encode_legacy,
)
from chatd.protocol.errors import AuthenticationFailedError
from chatd.protocol.payloads import Dialect, RoomRequest
from chatd.protocol.seal import Channel, Direction, SealedHeader, Sealer, new_key, peek_header
from tests.helpers import FAST, capture_events, make_server

ANN = ("127.0.0.1", 5000)
BOB = ("127.0.0.1", 5001)
CAT = ("127.0.0.1", 5002)
EVE = ("127.0.0.1", 6666)


@implementer(IFanoutTransport)
class RecordingPort:
    """An IFanoutTransport that records what it prepares and sends, and who listens for refusals."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Address]] = []
        self.prepared: list[tuple[Address, ...]] = []
        self.listener: Callable[[int, int], None] | None = None

    def write(self, data: bytes, addr: Address) -> None:
        self.written.append((data, addr))

    def fanout(self, addresses: Sequence[Address]) -> WriteEachFanout:
        self.prepared.append(tuple(addresses))
        return WriteEachFanout(self.write, addresses)

    def report_refused_sends(self, listener: Callable[[int, int], None] | None) -> None:
        self.listener = listener


class RelayTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server()
        self.relay = self.server.relay
        self.store = self.server.store
        self.clients: dict[str, Channel] = {}

    def member(self, user: str, dialect: Dialect, address: tuple[str, int] | None, room: str = "hoge") -> Member:
        request = RoomRequest(user, version=1 if dialect is Dialect.NATIVE else None)
        if any(r.name == room for r in self.store.rooms()):
            member = self.successResultOf(self.store.join_room(room, request, dialect))
        else:
            member = self.successResultOf(self.store.create_room(room, request, dialect))
        if address is not None:
            self.store.bind_address(member, address)
        self.udp.written.clear()
        return member

    def say(self, member: Member, text: str, source: tuple[str, int] | None = None) -> None:
        source = source or member.address
        assert source is not None
        self.relay.datagramReceived(encode_legacy(member.room.name, member.token, text), source)

    def client_channel(self, member: Member) -> Channel:
        """The member's own side of its key, as its client holds it."""
        if member.name not in self.clients:
            assert member.channel is not None
            self.clients[member.name] = Channel(member.channel.key, member.channel.key_id, Direction.TO_SERVER)
        return self.clients[member.name]

    def native(self, member: Member, kind: FrameType, body: bytes = b"") -> bytes:
        return self.client_channel(member).seal(kind, body)


class LegacyRelayTests(RelayTestCase):
    def test_relays_to_all_others_not_sender(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.SEED, BOB)
        self.member("cat", Dialect.MODEL, CAT)
        sent_before = self.relay.sent
        self.say(ann, "hello, 世界 🙂")
        message = "ann: hello, 世界 🙂".encode()
        self.assertEqual(sorted(self.udp.written), sorted([(message, BOB), (message, CAT)]))
        self.assertEqual((self.relay.received, self.relay.sent - sent_before), (1, 2))

    def test_unregistered_members_get_nothing(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.SEED, None)
        self.say(ann, "hi")
        self.assertEqual(self.udp.written, [])

    def test_rooms_are_isolated(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.member("cat", Dialect.MODEL, CAT, room="other")
        self.say(ann, "hi")
        self.assertEqual(self.udp.written, [(b"ann: hi", BOB)])

    def test_recipients_follow_membership_and_addresses(self) -> None:
        # The relay prepares each room's recipients once and must notice
        # every change: a join, an address change, a departure, a closing.
        ann = self.member("ann", Dialect.MODEL, ANN)
        bob = self.member("bob", Dialect.MODEL, BOB)
        self.say(ann, "one")
        self.assertEqual(self.udp.written, [(b"ann: one", BOB)])
        cat = self.member("cat", Dialect.SEED, CAT)
        self.say(ann, "two")
        self.assertEqual(sorted(self.udp.written), [(b"ann: two", BOB), (b"ann: two", CAT)])
        self.udp.written.clear()
        self.store.bind_address(bob, EVE)
        self.say(cat, "three")
        self.assertEqual(sorted(self.udp.written), [(b"cat: three", ANN), (b"cat: three", EVE)])
        self.udp.written.clear()
        self.store.leave(cat, LeaveReason.LEFT)
        self.udp.written.clear()
        self.say(ann, "four")
        self.assertEqual(self.udp.written, [(b"ann: four", EVE)])
        self.udp.written.clear()
        self.store.leave(ann, LeaveReason.LEFT)
        self.assertEqual(self.relay._fanouts, {})

    def test_sends_through_a_fanout_transport_and_registers_for_refusals(self) -> None:
        server = ChatServer(self.clock, FAST)
        relay, self.store = server.relay, server.store
        port = RecordingPort()
        # Twisted types the transport as IUDPTransport, which a relay's port need not be.
        relay.makeConnection(port)  # type: ignore[arg-type]
        self.assertEqual(port.listener, relay.stats.sends_refused)
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        port.written.clear()
        stats = relay.stats
        before = (stats.sent, stats.sent_bytes, stats.send_errors)
        relay.datagramReceived(encode_legacy("hoge", ann.token, "hi"), ANN)
        self.assertEqual((port.prepared, port.written), ([(ANN, BOB)], [(b"ann: hi", BOB)]))
        assert port.listener is not None
        port.listener(1, len(b"ann: hi"))
        self.assertEqual((stats.sent, stats.sent_bytes, stats.send_errors), (before[0], before[1], before[2] + 1))
        relay.doStop()
        relay.datagramReceived(encode_legacy("hoge", ann.token, "gone"), ANN)
        self.assertEqual((len(port.written), stats.send_errors), (1, before[2] + 2))

    def test_any_other_transport_is_adapted_to_write_each(self) -> None:
        stock = FakeDatagramTransport()
        adapted = fanout_transport(stock)
        self.assertIsInstance(adapted, WriteEachTransport)
        verifyObject(IFanoutTransport, adapted)
        # Every refusal is raised at its write: there is nothing to report later.
        adapted.report_refused_sends(lambda count, size: self.fail("reported"))
        self.assertEqual(adapted.fanout([ANN, BOB]).send(b"x", skip=0), 0)
        self.assertEqual(stock.written, [(b"x", BOB)])

    def test_copies_the_port_refused_later_are_not_counted_as_sent(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        before = (self.relay.sent, self.relay.sent_bytes, self.relay.send_errors)
        self.say(ann, "hi")
        counts = (self.relay.sent, self.relay.sent_bytes, self.relay.send_errors)
        self.assertEqual([b - a for a, b in zip(before, counts, strict=True)], [1, len(b"ann: hi"), 0])
        # The batching port reports, after its sendmmsg, a copy it had taken,
        # to the listener the relay registered with it.
        self.relay.stats.sends_refused(1, len(b"ann: hi"))
        counts = (self.relay.sent, self.relay.sent_bytes, self.relay.send_errors)
        self.assertEqual([b - a for a, b in zip(before, counts, strict=True)], [0, 0, 1])

    def test_activity_is_recorded(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.clock.advance(100)
        self.say(ann, "hi")
        self.assertEqual(ann.last_active, 100)

    def test_one_failing_recipient_does_not_stop_the_others(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.member("cat", Dialect.MODEL, CAT)
        original = self.udp.write

        def write(data: bytes, address: tuple[str, int]) -> None:
            if address == BOB:
                raise OSError("network unreachable")
            original(data, address)

        self.udp.write = write  # type: ignore[method-assign,assignment]
        self.say(ann, "hi")
        self.assertEqual(self.udp.written, [(b"ann: hi", CAT)])
        self.assertEqual(self.relay.send_errors, 1)


class ClosedPortTests(RelayTestCase):
    def test_sending_after_the_port_closed_is_counted_not_raised(self) -> None:
        self.member("ann", Dialect.MODEL, ANN)
        bob = self.member("bob", Dialect.MODEL, BOB)
        self.relay.doStop()
        self.relay.transport = None
        self.store.leave(bob, LeaveReason.LEFT)
        # bob's join opened the room's presence window: his leave waits for its end.
        self.clock.advance(self.server.settings.presence_interval)
        self.assertEqual(self.relay.send_errors, 1)


class DropTests(RelayTestCase):
    def assert_dropped(self, reason: str) -> None:
        self.assertEqual(self.udp.written, [])
        self.assertEqual(self.relay.drops.counts[reason], 1, dict(self.relay.drops.counts))

    def test_wrong_source(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.say(ann, "hi", source=EVE)
        self.assert_dropped("wrong_source")

    def test_wrong_room(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.member("zed", Dialect.MODEL, CAT, room="other")
        self.relay.datagramReceived(encode_legacy("other", ann.token, "hi"), ANN)
        self.assert_dropped("wrong_room")

    def test_unknown_token(self) -> None:
        self.member("bob", Dialect.MODEL, BOB)
        self.relay.datagramReceived(encode_legacy("hoge", "forged", "hi"), EVE)
        self.assert_dropped("unknown_token")

    def test_unregistered_sender(self) -> None:
        ann = self.member("ann", Dialect.SEED, None)
        self.member("bob", Dialect.MODEL, BOB)
        self.say(ann, "hi", source=ANN)
        self.assert_dropped("unregistered")

    def test_garbage(self) -> None:
        cases = {
            b"": "malformed",
            b"\x05": "malformed",
            b"\x04\x04ho": "malformed",
            b"\x01\x01ab\xff": "invalid_utf8",
            b"\x01" * 5000: "too_large",
            b"\x00\x01\x00": "malformed",
            b"\x00\x02\x01": "unsupported_version",
        }
        for data in cases:
            self.relay.datagramReceived(data, EVE)
        self.assertEqual(self.udp.written, [])
        self.assertEqual(self.relay.drops.total, len(cases))
        for reason in set(cases.values()):
            self.assertEqual(self.relay.drops.counts[reason], list(cases.values()).count(reason))
        # Every reason is one the stats know of, and report before it happens.
        self.assertLessEqual(set(self.relay.drops.counts), set(RelayStats.drop_reasons))

    def test_warnings_are_rate_limited(self) -> None:
        events = capture_events(self)
        for _ in range(100):
            self.relay.datagramReceived(b"\xff", EVE)
        self.clock.advance(10)
        self.relay.datagramReceived(b"\xff", EVE)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual([(w["reason"], w["suppressed"]) for w in warnings], [("malformed", 0), ("malformed", 99)])
        self.assertEqual((warnings[0]["source_host"], warnings[0]["source_port"]), EVE)
        # Nothing kept quiet: nothing said about it; otherwise a whole clause.
        self.assertEqual(
            [formatEvent(w) for w in warnings],
            [
                "dropped a datagram from 127.0.0.1:6666: malformed",
                "dropped a datagram from 127.0.0.1:6666: malformed"
                " (99 more were dropped for this reason since the last warning)",
            ],
        )
        self.assertEqual(self.relay.drops.counts["malformed"], 101)

    def test_unexpected_errors_are_logged_not_raised(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)

        class BrokenLimit:
            def allow(self, size: int, now: float | None = None) -> bool:
                raise RuntimeError("boom")

        ann.rate_limit = BrokenLimit()  # type: ignore[assignment]
        self.say(ann, "hi")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class NativeRelayTests(RelayTestCase):
    def test_first_authenticated_datagram_registers(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, None)
        self.member("bob", Dialect.MODEL, BOB)
        self.relay.datagramReceived(self.native(ann, FrameType.MESSAGE, b"hi"), ANN)
        self.assertEqual(ann.address, ANN)
        self.assertEqual(self.udp.written, [(b"ann: hi", BOB)])

    def test_authenticated_datagram_from_a_new_address_moves_the_member(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.relay.datagramReceived(self.native(ann, FrameType.MESSAGE, b"roaming"), EVE)
        self.assertEqual(ann.address, EVE)
        self.assertEqual(self.udp.written, [(b"ann: roaming", BOB)])

    def test_forged_or_replayed_datagrams_never_move_the_member(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        sent = self.native(ann, FrameType.MESSAGE, b"once")
        self.relay.datagramReceived(sent, ANN)
        self.relay.datagramReceived(sent, EVE)
        forged = bytearray(self.native(ann, FrameType.MESSAGE, b"forged"))
        forged[-1] ^= 1
        self.relay.datagramReceived(bytes(forged), EVE)
        self.assertEqual(ann.address, ANN)
        self.assertEqual(self.udp.written, [(b"ann: once", BOB)])
        self.assertEqual((self.relay.drops.counts["replayed"], self.relay.drops.counts["unauthenticated"]), (1, 1))

    def test_native_recipient_gets_a_sealed_relay_frame(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        bob = self.member("bob", Dialect.NATIVE, BOB)
        self.clock.advance(12.5)
        self.say(ann, "こんにちは")
        self.say(ann, "again")
        (first, address), (second, _) = self.udp.written
        self.assertEqual(address, BOB)
        self.assertNotIn("こんにちは".encode(), first)
        self.assertEqual([peek_header(first).counter, peek_header(second).counter], [0, 1])
        frame_type, body = self.client_channel(bob).open(first)
        self.assertEqual(frame_type, FrameType.RELAY)
        relayed = decode_relay_body(body)
        self.assertEqual((relayed.sender, relayed.text, relayed.timestamp_ms), ("ann", "こんにちは", 12500))

    def test_keepalive_registers_and_is_answered_no_larger(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, None)
        self.clock.advance(50)
        keepalive = self.native(ann, FrameType.KEEPALIVE)
        self.relay.datagramReceived(keepalive, ANN)
        ((answer, address),) = self.udp.written
        self.assertEqual(address, ANN)
        self.assertEqual(self.client_channel(ann).open(answer), (FrameType.KEEPALIVE_ACK, b""))
        self.assertLessEqual(len(answer), len(keepalive))
        self.assertEqual(ann.last_active, 50)

    def test_unknown_key_id(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        stranger = Channel(new_key(), 7, Direction.TO_SERVER)
        self.relay.datagramReceived(stranger.seal(FrameType.MESSAGE, b"hi"), EVE)
        self.assertEqual(self.relay.drops.counts["unknown_key"], 1)
        self.assertEqual(ann.address, ANN)

    def test_another_members_key_is_refused(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        bob = self.member("bob", Dialect.NATIVE, BOB)
        assert ann.channel is not None and bob.channel is not None
        # Sealed with bob's key, but naming ann's key id.
        impostor = Channel(bob.channel.key, ann.channel.key_id, Direction.TO_SERVER)
        self.relay.datagramReceived(impostor.seal(FrameType.MESSAGE, b"I am ann"), BOB)
        self.assertEqual(self.relay.drops.counts["unauthenticated"], 1)
        self.assertEqual(self.udp.written, [])

    def test_server_frame_types_from_clients_are_dropped_before_registering(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, None)
        self.relay.datagramReceived(self.native(ann, FrameType.RELAY, b"x"), EVE)
        self.relay.datagramReceived(self.native(ann, FrameType.NOTICE, b"{}"), EVE)
        self.assertEqual(self.relay.drops.counts["malformed"], 2)
        self.assertIsNone(ann.address)

    def test_unknown_flags_are_dropped(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, None)
        flagged = bytearray(self.native(ann, FrameType.MESSAGE, b"hi"))
        flagged[2] = 1
        self.relay.datagramReceived(bytes(flagged), ANN)
        self.assertEqual(self.relay.drops.counts["unsupported_version"], 1)
        self.assertIsNone(ann.address)

    def test_invalid_utf8_inside_a_sealed_message(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.relay.datagramReceived(self.native(ann, FrameType.MESSAGE, b"\xff"), ANN)
        self.assertEqual(self.relay.drops.counts["invalid_utf8"], 1)
        self.assertEqual(self.udp.written, [])

    def test_native_token_in_legacy_form_is_refused(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.say(ann, "hi")
        self.assertEqual(self.udp.written, [])
        self.assertEqual(self.relay.drops.counts["unknown_token"], 1)

    def test_rekey_keeps_the_old_key_until_the_new_one_is_used(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        old = self.client_channel(ann)
        self.store.rekey(ann)
        self.clients.pop(ann.name)
        # Sealed before ann heard of the new key: still on its way, still good.
        self.relay.datagramReceived(old.seal(FrameType.MESSAGE, b"in flight"), ANN)
        self.relay.datagramReceived(self.native(ann, FrameType.MESSAGE, b"new"), ANN)
        self.relay.datagramReceived(old.seal(FrameType.MESSAGE, b"too late"), ANN)
        self.assertEqual(self.udp.written, [(b"ann: in flight", BOB), (b"ann: new", BOB)])
        self.assertEqual(self.relay.drops.counts["unknown_key"], 1)


class ForgeryTests(RelayTestCase):
    """
    Forgeries under a live key id (it travels in clear) are refused before
    decryption once the key id, or the source host, has failed
    authentication auth_failure_burst times (refilled at
    auth_failures_per_s), so that they cost no more than garbage.
    """

    RATE = 5.0
    BURST = 20

    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server(auth_failures_per_s=self.RATE, auth_failure_burst=self.BURST)
        self.relay = self.server.relay
        self.store = self.server.store
        self.clients = {}
        self.opened = 0
        """Every call of the AEAD open, whatever its outcome."""
        self.failed = 0
        """The calls of the AEAD open that did not authenticate."""
        original_open = Sealer.open

        def counting_open(sealer: Sealer, direction: Direction, datagram: bytes) -> tuple[SealedHeader, int, bytes]:
            self.opened += 1
            try:
                return original_open(sealer, direction, datagram)
            except AuthenticationFailedError:
                self.failed += 1
                raise

        self.patch(Sealer, "open", counting_open)

    def forger(self, victim: Member) -> Channel:
        """Someone who saw the victim's key id on the wire, but not its key."""
        assert victim.channel is not None
        forger = Channel(new_key(), victim.channel.key_id, Direction.TO_SERVER)
        # Counters the victim has not used, so that the replay window (checked
        # before decrypting, and cheap) does not refuse the forgeries for us.
        forger.sent = 1 << 40
        return forger

    def test_forgery_flood_does_not_stop_the_members_own_datagrams(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        forger = self.forger(ann)
        forgeries, step = 10_000, 0.001
        relayed = 0
        for n in range(forgeries):
            # From loopback, like the member: loopback is not exempt here.
            self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), EVE)
            if n % 100 == 0:
                self.relay.datagramReceived(self.native(ann, FrameType.MESSAGE, f"real {n}".encode()), ANN)
                relayed += 1
            self.clock.advance(step)
        elapsed = forgeries * step
        self.assertEqual(self.udp.written, [(f"ann: real {n}".encode(), BOB) for n in range(0, forgeries, 100)])
        self.assertEqual(ann.address, ANN)
        # Every decryption that failed was a forgery; the member's all succeeded.
        self.assertEqual(self.opened - self.failed, relayed)
        self.assertLessEqual(self.failed, self.BURST + self.RATE * elapsed + 1)
        self.assertGreaterEqual(self.failed, self.BURST)
        counts = self.relay.drops.counts
        self.assertEqual(counts["unauthenticated"], self.failed)
        self.assertEqual(counts["auth_failures_limited"], forgeries - self.failed)
        self.assertEqual(self.relay.drops.total, forgeries)

    def test_forgeries_past_the_burst_never_reach_the_aead(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        forger = self.forger(ann)
        for _ in range(self.BURST):
            self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), EVE)
        self.assertEqual((self.opened, self.failed), (self.BURST, self.BURST))
        for _ in range(1000):
            self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), EVE)
        # Refused on the clear header alone, like garbage: no decryption.
        self.assertEqual(self.opened, self.BURST)
        self.assertEqual(self.relay.drops.counts["auth_failures_limited"], 1000)
        # The allowance comes back at the configured rate, one try at a time.
        self.clock.advance(1 / self.RATE)
        self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), EVE)
        self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), EVE)
        self.assertEqual(self.opened, self.BURST + 1)

    def test_while_refusing_the_checks_keep_their_order(self) -> None:
        """
        The early refusal of a flood (before the decoder) drops exactly what
        the full path would drop as auth_failures_limited, and nothing else.
        """
        ann = self.member("ann", Dialect.NATIVE, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        forger = self.forger(ann)
        for _ in range(self.BURST):
            self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), EVE)
        forged = forger.seal(FrameType.MESSAGE, b"forged")
        # A header the decoder refuses is still refused for that reason.
        self.relay.datagramReceived(forged[:1] + b"\x02" + forged[2:], EVE)
        self.relay.datagramReceived(forged[:2] + b"\x01" + forged[2:], EVE)
        self.relay.datagramReceived(forged[:31], EVE)
        counts = self.relay.drops.counts
        self.assertEqual((counts["unsupported_version"], counts["malformed"]), (2, 1))
        # A key id nobody holds is unknown, not limited.
        assert ann.channel is not None
        unknown = bytearray(forged)
        unknown[3:7] = (ann.channel.key_id % (2**32 - 1) + 1).to_bytes(4, "big")
        self.relay.datagramReceived(bytes(unknown), EVE)
        self.assertEqual(counts["unknown_key"], 1)
        # The member's own datagrams, under the refused key id, still go through.
        self.relay.datagramReceived(self.native(ann, FrameType.MESSAGE, b"real"), ANN)
        self.assertEqual(self.udp.written, [(b"ann: real", BOB)])
        self.assertEqual(counts["auth_failures_limited"], 0)
        self.relay.datagramReceived(forged, EVE)
        self.assertEqual(counts["auth_failures_limited"], 1)

    def test_roaming_member_whose_key_is_not_attacked_still_moves(self) -> None:
        attacker, roamed = ("203.0.113.9", 6666), ("198.51.100.4", 5555)
        ann = self.member("ann", Dialect.NATIVE, ANN)
        bob = self.member("bob", Dialect.NATIVE, BOB)
        self.member("cat", Dialect.MODEL, CAT)
        forger = self.forger(ann)
        for _ in range(1000):
            self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), attacker)
        self.relay.datagramReceived(self.native(bob, FrameType.MESSAGE, b"moved"), roamed)
        self.assertEqual(bob.address, roamed)
        self.assertIn((b"bob: moved", CAT), self.udp.written)

    def test_a_key_under_attack_cannot_roam_until_the_attack_stops(self) -> None:
        attacker, roamed = ("203.0.113.9", 6666), ("198.51.100.4", 5555)
        ann = self.member("ann", Dialect.NATIVE, ANN)
        forger = self.forger(ann)
        for _ in range(self.BURST):
            self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), attacker)
        self.relay.datagramReceived(self.native(ann, FrameType.KEEPALIVE), roamed)
        self.assertEqual(ann.address, ANN)
        self.assertEqual(self.relay.drops.counts["auth_failures_limited"], 1)
        # Its registered address still works meanwhile, and once the key id's
        # failures have drained, the move goes through.
        self.relay.datagramReceived(self.native(ann, FrameType.KEEPALIVE), ANN)
        self.assertEqual(len(self.udp.written), 1)
        self.clock.advance(self.BURST / self.RATE)
        self.relay.datagramReceived(self.native(ann, FrameType.KEEPALIVE), roamed)
        self.assertEqual(ann.address, roamed)

    def test_a_source_host_that_fails_too_often_is_refused_for_every_key(self) -> None:
        attacker = ("203.0.113.9", 6666)
        ann = self.member("ann", Dialect.NATIVE, ANN)
        bob = self.member("bob", Dialect.NATIVE, None)
        forger = self.forger(ann)
        for _ in range(self.BURST):
            self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), attacker)
        # Another key id from the same host (another port: a NAT, or the
        # attacker trying the next key it saw) is refused unopened ...
        opened = self.opened
        self.relay.datagramReceived(self.native(bob, FrameType.KEEPALIVE), ("203.0.113.9", 7000))
        self.assertEqual(self.opened, opened)
        self.assertIsNone(bob.address)
        # ... while a first registration from anywhere else goes through.
        self.relay.datagramReceived(self.native(bob, FrameType.KEEPALIVE), ("198.51.100.4", 5555))
        self.assertEqual(bob.address, ("198.51.100.4", 5555))

    def test_unknown_key_ids_cost_the_source_nothing(self) -> None:
        # No decryption is spent on them, and charging them would let a
        # spoofer use up a victim host's allowance without knowing any key.
        host = ("198.51.100.4", 5555)
        ann = self.member("ann", Dialect.NATIVE, None)
        assert ann.channel is not None
        stranger = Channel(new_key(), ann.channel.key_id ^ 1, Direction.TO_SERVER)
        for _ in range(1000):
            self.relay.datagramReceived(stranger.seal(FrameType.KEEPALIVE, b""), host)
        self.assertEqual(self.relay.drops.counts["unknown_key"], 1000)
        self.relay.datagramReceived(self.native(ann, FrameType.KEEPALIVE), host)
        self.assertEqual(ann.address, host)

    def test_failures_from_the_registered_address_are_opened_and_not_charged(self) -> None:
        # Only a spoofer of the exact address and port gets here; the
        # member's own path is never refused, at a decryption each.
        ann = self.member("ann", Dialect.NATIVE, ANN)
        forger = self.forger(ann)
        for _ in range(self.BURST * 3):
            self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), ANN)
        self.assertEqual(self.failed, self.BURST * 3)
        self.assertEqual(self.relay.drops.counts["auth_failures_limited"], 0)
        roamed = ("198.51.100.4", 5555)
        self.relay.datagramReceived(self.native(ann, FrameType.KEEPALIVE), roamed)
        self.assertEqual(ann.address, roamed)

    def test_prune_forgets_buckets_that_have_refilled(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        forger = self.forger(ann)
        self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), EVE)
        self.assertEqual(self.relay.prune(), 0)
        self.clock.advance(1 / self.RATE)
        # One bucket per key id and one per source host, both full again.
        self.assertEqual(self.relay.prune(), 2)
        self.assertEqual(self.relay.prune(), 0)

    def test_a_clock_stepping_back_does_not_prolong_a_refusal_past_the_sweep(self) -> None:
        ann = self.member("ann", Dialect.NATIVE, ANN)
        forger = self.forger(ann)
        for _ in range(self.BURST + 1):
            self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), EVE)
        self.assertEqual(self.opened, self.BURST)
        self.clock.rightNow -= 100  # the wall clock set back
        self.relay.prune()
        self.clock.advance(1 / self.RATE)
        self.relay.datagramReceived(forger.seal(FrameType.MESSAGE, b"forged"), EVE)
        self.assertEqual(self.opened, self.BURST + 1)


class SizeTests(RelayTestCase):
    def test_relayed_copies_fit_in_a_datagram(self) -> None:
        sender = self.member("a" * 32, Dialect.MODEL, ANN)
        self.member("bob", Dialect.NATIVE, BOB)
        self.member("cat", Dialect.MODEL, CAT)
        largest = MAX_DATAGRAM - RELAY_OVERHEAD - 32
        self.say(sender, "x" * largest)
        self.assertEqual(len(self.udp.written), 2)
        self.assertEqual(max(len(data) for data, _ in self.udp.written), MAX_DATAGRAM)
        self.udp.written.clear()
        self.say(sender, "x" * (largest + 1))
        self.assertEqual(self.udp.written, [])
        self.assertEqual(self.relay.drops.counts["too_large"], 1)


ROOM_CLOSED_SENTENCE = bytes.fromhex(
    "e38381e383a3e38383e38388e383abe383bce383a0e3818ce99689e38198e38289e3828ce381bee38197e3819f"
)
"""チャットルームが閉じられました, the model client's "room closed" sentence, as docs/protocol.md gives it."""
SILENCE_SENTENCE = bytes.fromhex(
    "e38197e381b0e38289e3818fe799bae8a880e38197e381aae3818be381a3e3819fe381aee381a7e38081"
    "e38381e383a3e38383e38388e383abe383bce383a0e3818be38289e98080e587bae38195e3819be381bee38197e3819f"
)
"""しばらく発言しなかったので、チャットルームから退出させました, its "removed for silence" sentence."""


class ExitTests(RelayTestCase):
    def test_host_exit_closes_room_and_tells_everyone(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        bob = self.member("bob", Dialect.SEED, BOB)
        cat = self.member("cat", Dialect.NATIVE, CAT)
        self.say(ann, "/exit")
        self.assertEqual(self.store.rooms(), [])
        self.assertIsNone(self.store.member_for_token(bob.token))
        closing = dict((address, data) for data, address in self.udp.written)
        # Closed on purpose: said so, not "the host left".
        self.assertEqual(closing[BOB], b"* room hoge was closed: the host closed the room")
        self.assertEqual(closing[ANN], ROOM_CLOSED_SENTENCE)
        frame_type, body = self.client_channel(cat).open(closing[CAT])
        self.assertEqual(frame_type, FrameType.NOTICE)
        self.assertEqual(json.loads(body)["reason"], "the host closed the room")

    def test_member_exit_is_leave(self) -> None:
        self.member("ann", Dialect.MODEL, ANN)
        bob = self.member("bob", Dialect.MODEL, BOB)
        self.say(bob, "/exit")
        self.assertEqual(self.store.rooms()[0].names(), ("ann",))
        # Held: bob's join, a moment ago, was the room's presence change of this interval.
        self.assertEqual(self.udp.written, [])
        self.clock.advance(self.server.settings.presence_interval)
        self.assertEqual(self.udp.written, [(b"* bob left hoge", ANN)])

    def test_join_notice_goes_by_udp_to_model_members(self) -> None:
        self.member("ann", Dialect.MODEL, ANN)
        self.successResultOf(self.store.join_room("hoge", RoomRequest("bob"), Dialect.MODEL))
        self.assertEqual(self.udp.written, [(b"* bob joined hoge", ANN)])


class ModelNoticeTests(RelayTestCase):
    """
    A model member's membership ends on one of its client's two sentences,
    exactly, whatever ended it (docs/protocol.md 4.6): anything else leaves
    the course's model client running in a room that is gone.
    """

    def sent_to(self, address: tuple[str, int]) -> list[bytes]:
        return [data for data, to in self.udp.written if to == address]

    def test_the_sentences_are_what_the_model_client_compares_against(self) -> None:
        self.assertEqual(ROOM_CLOSED_SENTENCE.decode("utf-8"), "チャットルームが閉じられました")
        self.assertEqual(
            SILENCE_SENTENCE.decode("utf-8"), "しばらく発言しなかったので、チャットルームから退出させました"
        )

    def test_host_exit(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.say(ann, "/exit")
        self.assertEqual(self.sent_to(BOB), [ROOM_CLOSED_SENTENCE])
        self.assertEqual(self.sent_to(ANN), [ROOM_CLOSED_SENTENCE])

    def test_host_left(self) -> None:
        ann = self.member("ann", Dialect.SEED, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.store.leave(ann, LeaveReason.LEFT)
        self.assertEqual(self.sent_to(BOB), [ROOM_CLOSED_SENTENCE])

    def test_host_timeout(self) -> None:
        self.member("ann", Dialect.MODEL, ANN)
        bob = self.member("bob", Dialect.MODEL, BOB)
        self.member("cat", Dialect.SEED, CAT)
        self.clock.advance(self.server.settings.idle_timeout - 1)
        self.say(bob, "still here")
        self.udp.written.clear()
        self.clock.advance(2)
        self.store.expire()
        self.assertEqual(self.store.rooms(), [])
        # The host was removed for silence; the member, whose room closed, was not.
        self.assertEqual(self.sent_to(ANN), [SILENCE_SENTENCE])
        self.assertEqual(self.sent_to(BOB), [ROOM_CLOSED_SENTENCE])
        self.assertEqual(self.sent_to(CAT), [b"* room hoge was closed: the host timed out"])

    def test_server_stop(self) -> None:
        self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.member("cat", Dialect.SEED, CAT)
        self.server.stop()
        self.assertEqual(self.sent_to(ANN), [ROOM_CLOSED_SENTENCE])
        self.assertEqual(self.sent_to(BOB), [ROOM_CLOSED_SENTENCE])
        self.assertEqual(self.sent_to(CAT), [b"* the server is shutting down; room hoge is closed"])

    def test_member_removed_for_silence(self) -> None:
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        cat = self.member("cat", Dialect.SEED, CAT)
        self.clock.advance(self.server.settings.idle_timeout - 1)
        self.say(ann, "still here")
        self.say(cat, "me too")
        self.udp.written.clear()
        self.clock.advance(2)
        self.store.expire()
        self.assertEqual(self.sent_to(BOB), [SILENCE_SENTENCE])
        # The others are told in chatd's words: their programs go on.
        self.clock.advance(self.server.settings.presence_interval)
        self.assertEqual(self.sent_to(ANN), [b"* bob was removed from hoge after 300 s without activity"])
        self.assertEqual(self.sent_to(CAT), [b"* bob was removed from hoge after 300 s without activity"])

    def test_other_notices_keep_chatds_wording(self) -> None:
        self.member("ann", Dialect.MODEL, ANN)
        self.successResultOf(self.store.join_room("hoge", RoomRequest("bob"), Dialect.MODEL))
        self.assertEqual(self.sent_to(ANN), [b"* bob joined hoge"])


class ActionTests(RelayTestCase):
    def test_legacy_recipients_get_the_action_as_chatds_clients_show_it(self) -> None:
        nat = self.member("nat", Dialect.NATIVE, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        cat = self.member("cat", Dialect.NATIVE, CAT)
        self.relay.datagramReceived(self.native(nat, FrameType.MESSAGE, b"/me waves"), ANN)
        self.assertEqual([data for data, to in self.udp.written if to == BOB], [b"* nat waves"])
        # Native recipients get the text as sent: their clients render it.
        (sealed,) = [data for data, to in self.udp.written if to == CAT]
        frame_type, body = self.client_channel(cat).open(sealed)
        self.assertEqual(frame_type, FrameType.RELAY)
        self.assertEqual(decode_relay_body(body).text, "/me waves")

    def test_legacy_sender(self) -> None:
        ann = self.member("ann", Dialect.SEED, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.say(ann, "/me waves back")
        self.say(ann, "/meow")
        self.say(ann, "not /me first")
        self.assertEqual(
            [data for data, _ in self.udp.written], [b"* ann waves back", b"ann: /meow", b"ann: not /me first"]
        )


class FloodTests(RelayTestCase):
    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server(messages_per_s=5, message_burst=10)
        self.relay = self.server.relay
        self.store = self.server.store
        self.clients = {}

    def test_flooder_is_throttled_and_told_others_unaffected(self) -> None:
        flooder = self.member("eve", Dialect.MODEL, EVE)
        self.member("ann", Dialect.MODEL, ANN)
        bob = self.member("bob", Dialect.MODEL, BOB)
        for n in range(100):
            self.say(flooder, f"spam {n}")
            if n % 10 == 0:
                self.say(bob, f"bob {n}")
        to_ann = [data for data, address in self.udp.written if address == ANN]
        self.assertEqual(len([d for d in to_ann if d.startswith(b"eve: ")]), 10)
        self.assertEqual(len([d for d in to_ann if d.startswith(b"bob: ")]), 10)
        self.assertEqual(self.relay.drops.counts["rate_limited"], 90)
        told = [data for data, address in self.udp.written if address == EVE and data.startswith(b"* ")]
        self.assertEqual(told, [b"* you are sending too fast: messages are being dropped; slow down"])
        self.udp.written.clear()
        self.clock.advance(1)
        for n in range(6):
            self.say(flooder, f"later {n}")
        later = [data for data, address in self.udp.written if address == ANN and data.startswith(b"eve: ")]
        self.assertEqual(len(later), 5)

    def test_byte_limit(self) -> None:
        self.server, self.clock, self.udp = make_server(bytes_per_s=100, byte_burst=100)
        self.relay, self.store = self.server.relay, self.server.store
        ann = self.member("ann", Dialect.MODEL, ANN)
        self.member("bob", Dialect.MODEL, BOB)
        self.say(ann, "x" * 60)
        self.say(ann, "x" * 60)
        self.assertEqual(len([1 for _, address in self.udp.written if address == BOB]), 1)
        self.assertEqual(self.relay.drops.counts["rate_limited"], 1)
