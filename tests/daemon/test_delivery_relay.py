"""
Reliable delivery on the relay (chatd.daemon.relay and chatd.daemon.delivery;
docs/reliability.md section 3): numbering, POSTED, SEND and SENT, duplicates,
REPAIR and GONE, keepalives and paths, frames over TCP, operation 8 checks.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatd.daemon.history import DUPLICATE_WINDOW
from chatd.daemon.metrics import ChatCollector
from chatd.daemon.ratelimit import MemberRateLimit
from chatd.daemon.rooms import LeaveReason, RoomRegistry
from chatd.protocol.datagrams import MAX_DATAGRAM, RELAY_OVERHEAD, FrameType, decode_relay_body, encode_legacy
from chatd.protocol.delivery import (
    MAX_NATIVE_DATAGRAM,
    REPAIR_BATCH,
    decode_latest,
    decode_posted,
    decode_range,
    decode_sent,
    encode_range,
    encode_send,
)
from chatd.protocol.payloads import Dialect
from tests.daemon.delivery_cases import ANN, BOB, CAT, DAN, ELSEWHERE, START_MS, TCP_PEER, DeliveryCase
from tests.store_checks import check_invariants


class NumberingTests(DeliveryCase):
    def test_every_dialect_is_numbered_in_one_sequence(self) -> None:
        legacy = self.member("lee", ANN, Dialect.MODEL)
        plain = self.member("pat", BOB, delivery=False)
        ann = self.member("ann", CAT)
        self.relay.datagramReceived(encode_legacy("hoge", legacy.token, "one"), ANN)
        self.datagram(plain, FrameType.MESSAGE, b"two")
        self.datagram(ann, FrameType.SEND, encode_send(1, "three"))
        self.datagram(ann, FrameType.MESSAGE, b"four")
        history = ann.room.history
        entries = history.range(1, 10).entries
        self.assertEqual(
            [(e.seq, e.name, e.text) for e in entries],
            [(1, b"lee", b"one"), (2, b"pat", b"two"), (3, b"ann", b"three"), (4, b"ann", b"four")],
        )
        self.assertEqual({e.time_ms for e in entries}, {START_MS})

    def test_exit_and_dropped_messages_are_not_numbered(self) -> None:
        self.setUp(message_burst=1, messages_per_s=0.001)
        self.member("host", ANN, Dialect.MODEL)
        ann = self.member("ann", BOB)
        cat = self.member("cat", CAT, Dialect.SEED)
        too_long = "x" * (MAX_DATAGRAM - RELAY_OVERHEAD - len("ann") + 1)
        self.datagram(ann, FrameType.SEND, encode_send(1, too_long))
        self.datagram(ann, FrameType.SEND, encode_send(2, "fine"))
        self.datagram(ann, FrameType.SEND, encode_send(3, "over the limit"))
        self.relay.datagramReceived(encode_legacy("hoge", cat.token, "/exit"), CAT)
        self.assertEqual(ann.room.history.latest, 1)
        self.assertEqual(self.relay.drops.counts["too_large"], 1)
        self.assertEqual(self.relay.drops.counts["rate_limited"], 1)
        # Neither dropped SEND was recorded: sent again later, it is new.
        assert ann.window is not None
        self.assertEqual(ann.window.highest, 2)

    def test_rooms_have_their_own_numbers_and_epochs(self) -> None:
        ann = self.member("ann", ANN)
        bob = self.member("bob", BOB, room="other")
        self.datagram(ann, FrameType.SEND, encode_send(1, "a"))
        self.datagram(bob, FrameType.SEND, encode_send(1, "b"))
        self.assertEqual((ann.room.history.latest, bob.room.history.latest), (1, 1))
        self.assertNotEqual(ann.room.history.epoch, bob.room.history.epoch)

    def test_the_history_takes_the_settings_bounds(self) -> None:
        self.setUp(history_messages=3, history_bytes=1000)
        ann = self.member("ann", ANN)
        for message_id in range(1, 6):
            self.datagram(ann, FrameType.SEND, encode_send(message_id, "hi"))
        history = ann.room.history
        self.assertEqual((history.oldest, history.latest, history.message_count), (3, 5, 3))


class FanOutTests(DeliveryCase):
    def test_each_dialect_gets_its_own_form(self) -> None:
        lee = self.member("lee", ANN, Dialect.MODEL)
        pat = self.member("pat", BOB, delivery=False)
        ann = self.member("ann", CAT)
        bob = self.member("bob", DAN)
        self.relay.datagramReceived(encode_legacy("hoge", lee.token, "/me waves"), ANN)
        self.assertEqual(self.udp_to(lee), [])
        ((kind, body),) = self.udp_to(pat)
        self.assertEqual((kind, decode_relay_body(body).text), (FrameType.RELAY, "/me waves"))
        for member in (ann, bob):
            ((kind, body),) = self.udp_to(member)
            posted = decode_posted(body)
            self.assertEqual(
                (kind, posted.seq, posted.time_ms, posted.sender, posted.text),
                (FrameType.POSTED, 1, START_MS, "lee", "/me waves"),
            )

    def test_a_send_goes_once_to_the_others_and_is_acknowledged(self) -> None:
        lee = self.member("lee", ANN, Dialect.SEED)
        ann = self.member("ann", BOB)
        bob = self.member("bob", CAT)
        self.clock.advance(2)
        self.udp.written.clear()  # the presence notices to lee
        self.datagram(ann, FrameType.SEND, encode_send(7, "héllo"))
        self.assertEqual([data for data, _ in self.udp.written if _ == ANN], ["ann: héllo".encode()])
        ((kind, body),) = self.udp_to(bob)
        self.assertEqual((kind, decode_posted(body).text), (FrameType.POSTED, "héllo"))
        # The sender gets its SENT, never its own POSTED.
        ((kind, body),) = self.udp_to(ann)
        sent = decode_sent(body)
        self.assertEqual((kind, sent.message_id, sent.seq, sent.time_ms), (FrameType.SENT, 7, 1, START_MS + 2000))
        del lee

    def test_a_member_not_yet_reachable_is_skipped_without_an_error(self) -> None:
        ann = self.member("ann", ANN)
        self.member("bob", None)
        self.datagram(ann, FrameType.SEND, encode_send(1, "hi"))
        self.assertEqual(self.relay.send_errors, 0)
        self.assertEqual([kind for kind, _ in self.udp_to(ann)], [FrameType.SENT])


class DuplicateTests(DeliveryCase):
    def test_a_duplicate_is_acknowledged_again_not_relayed(self) -> None:
        ann = self.member("ann", ANN)
        bob = self.member("bob", BOB)
        self.datagram(ann, FrameType.SEND, encode_send(1, "once"))
        (first,) = self.udp_to(ann)
        self.clock.advance(5)
        self.datagram(ann, FrameType.SEND, encode_send(1, "once"))
        (again,) = self.udp_to(ann)
        self.assertEqual(first, again)
        self.assertEqual(len(self.udp_to(bob)), 1)
        self.assertEqual((self.stats.duplicates, ann.room.history.latest), (1, 1))

    def test_a_duplicate_costs_a_message_of_the_rate_limit(self) -> None:
        self.setUp(message_burst=2, messages_per_s=0.001)
        ann = self.member("ann", ANN)
        self.datagram(ann, FrameType.SEND, encode_send(1, "once"))
        self.datagram(ann, FrameType.SEND, encode_send(1, "once"))
        self.datagram(ann, FrameType.SEND, encode_send(1, "once"))
        self.assertEqual(len(self.udp_to(ann)), 2)
        self.assertEqual((self.stats.duplicates, self.relay.drops.counts["rate_limited"]), (2, 1))

    def test_an_id_below_the_window_is_dropped_and_counted(self) -> None:
        self.setUp(message_burst=1000)
        ann = self.member("ann", ANN)
        for message_id in (1, DUPLICATE_WINDOW + 1):
            self.datagram(ann, FrameType.SEND, encode_send(message_id, "x"))
        self.udp_to(ann)
        self.datagram(ann, FrameType.SEND, encode_send(1, "x"))
        self.assertEqual(self.udp_to(ann), [])
        self.assertEqual((self.stats.duplicates, ann.room.history.latest), (1, 2))

    def test_ids_may_arrive_out_of_order(self) -> None:
        ann = self.member("ann", ANN)
        for message_id in (3, 1, 2):
            self.datagram(ann, FrameType.SEND, encode_send(message_id, str(message_id)))
        sent = [decode_sent(body) for _, body in self.udp_to(ann)]
        self.assertEqual([(s.message_id, s.seq) for s in sent], [(3, 1), (1, 2), (2, 3)])
        self.assertEqual(self.stats.duplicates, 0)

    def test_after_a_rejoin_under_the_same_client_id_a_resend_is_a_duplicate(self) -> None:
        self.member("host", ANN)
        ann = self.member("ann", BOB, client_id="laptop-1")
        self.datagram(ann, FrameType.SEND, encode_send(1, "before"))
        ((_, body),) = self.udp_to(ann)
        self.store.leave(ann, LeaveReason.LEFT)
        again = self.member("ann", CAT, client_id="laptop-1")
        self.datagram(again, FrameType.SEND, encode_send(1, "before"))
        ((kind, resent),) = self.udp_to(again)
        self.assertEqual((kind, decode_sent(resent)), (FrameType.SENT, decode_sent(body)))
        self.assertEqual((again.room.history.latest, self.stats.duplicates), (1, 1))

    def test_without_a_client_id_a_rejoin_starts_a_new_window(self) -> None:
        self.member("host", ANN)
        ann = self.member("ann", BOB)
        self.datagram(ann, FrameType.SEND, encode_send(1, "before"))
        room = ann.room
        self.assertEqual((room.windows.live, room.windows.departed), (2, 0))
        self.store.leave(ann, LeaveReason.LEFT)
        self.assertEqual((room.windows.live, room.windows.departed), (1, 0))
        again = self.member("ann", CAT)
        self.datagram(again, FrameType.SEND, encode_send(1, "before"))
        self.assertEqual((room.history.latest, self.stats.duplicates), (2, 0))

    def test_another_user_with_the_same_client_id_has_a_window_of_its_own(self) -> None:
        # An id seen on the wire gives no hold on its owner's window: pushing
        # ids far ahead under it must not make the owner's messages stale.
        self.member("host", ANN)
        ann = self.member("ann", BOB, client_id="laptop-1")
        mallory = self.member("mallory", CAT, client_id="laptop-1")
        self.datagram(mallory, FrameType.SEND, encode_send(10_000, "far ahead"))
        self.datagram(ann, FrameType.SEND, encode_send(1, "mine"))
        sent = [decode_sent(body) for kind, body in self.udp_to(ann) if kind == FrameType.SENT]
        self.assertEqual([(s.message_id, s.seq) for s in sent], [(1, 2)])
        self.assertEqual((ann.room.history.latest, self.stats.duplicates), (2, 0))

    def test_a_leaving_client_ids_window_is_kept(self) -> None:
        self.member("host", ANN)
        ann = self.member("ann", BOB, client_id="c1")
        self.store.leave(ann, LeaveReason.LEFT)
        self.assertEqual((ann.room.windows.live, ann.room.windows.departed, ann.window), (1, 1, None))

    def test_exit_by_send_leaves_without_an_acknowledgement(self) -> None:
        self.member("host", ANN)
        ann = self.member("ann", BOB)
        self.datagram(ann, FrameType.SEND, encode_send(1, " /exit "))
        self.assertNotIn("ann", ann.room.members)
        self.assertEqual(self.udp.written, [])


class RepairTests(DeliveryCase):
    def setUp(self, history_messages: int = 10) -> None:  # type: ignore[override]
        super().setUp(history_messages=history_messages, message_burst=1000)
        self.ann = self.member("ann", ANN)
        self.bob = self.member("bob", BOB)
        for message_id in range(1, 16):
            self.datagram(self.ann, FrameType.SEND, encode_send(message_id, f"m{message_id}"))
        self.udp.written.clear()

    def repair(self, first: int, last: int) -> list[tuple[int, bytes]]:
        self.datagram(self.bob, FrameType.REPAIR, encode_range(first, last))
        return self.udp_to(self.bob)

    def test_held_messages_are_sent_again_own_ones_included(self) -> None:
        got = self.repair(8, 9)
        self.assertEqual(
            [(k, decode_posted(b).seq, decode_posted(b).text) for k, b in got],
            [
                (FrameType.POSTED, 8, "m8"),
                (FrameType.POSTED, 9, "m9"),
            ],
        )
        self.datagram(self.ann, FrameType.REPAIR, encode_range(15, 15))
        ((kind, body),) = self.udp_to(self.ann)
        self.assertEqual((kind, decode_posted(body).sender), (FrameType.POSTED, "ann"))
        self.assertEqual((self.stats.repaired, self.stats.gone), (3, 0))

    def test_the_part_older_than_the_history_is_gone(self) -> None:
        # 6..15 are held.
        got = self.repair(2, 7)
        self.assertEqual([k for k, _ in got], [FrameType.GONE, FrameType.POSTED, FrameType.POSTED])
        self.assertEqual(decode_range(got[0][1]), decode_range(encode_range(2, 5)))
        self.assertEqual([decode_posted(b).seq for _, b in got[1:]], [6, 7])
        self.assertEqual((self.stats.repaired, self.stats.gone), (2, 1))

    def test_all_gone_gets_one_gone(self) -> None:
        got = self.repair(1, 5)
        self.assertEqual([(k, decode_range(b).first, decode_range(b).last) for k, b in got], [(FrameType.GONE, 1, 5)])

    def test_a_range_past_the_latest_gets_nothing_and_the_latest_bounds_the_rest(self) -> None:
        self.assertEqual(self.repair(16, 20), [])
        self.assertEqual([decode_posted(b).seq for _, b in self.repair(14, 99)], [14, 15])

    def test_one_repair_sends_at_most_a_batch(self) -> None:
        self.setUp(history_messages=500)
        history = self.ann.room.history
        for message_id in range(100, 200):
            self.datagram(self.ann, FrameType.SEND, encode_send(message_id, "x"))
        self.udp.written.clear()
        got = self.repair(history.oldest, history.latest)
        self.assertEqual(len(got), REPAIR_BATCH)

    def test_a_repair_is_charged_the_bytes_it_serves(self) -> None:
        self.bob.rate_limit = MemberRateLimit(1000, 1000, 0.001, 7, self.clock)
        # 14 and 15 are 12 bytes of names and texts: refused whole, nothing sent.
        self.assertEqual(self.repair(14, 15), [])
        self.assertEqual(self.relay.drops.counts["rate_limited"], 1)
        self.assertEqual(len(self.repair(15, 15)), 1)

    def test_a_malformed_repair_is_dropped(self) -> None:
        self.datagram(self.bob, FrameType.REPAIR, b"\x00" * 16)
        self.assertEqual(self.relay.drops.counts["malformed"], 1)


class KeepaliveAndPathTests(DeliveryCase):
    def test_keepalive_ack_carries_the_latest_number(self) -> None:
        ann = self.member("ann", None)
        self.datagram(ann, FrameType.KEEPALIVE, source=ANN)
        ((kind, body),) = self.udp_to(ann)
        self.assertEqual((kind, decode_latest(body)), (FrameType.KEEPALIVE_ACK, 0))
        self.datagram(ann, FrameType.SEND, encode_send(1, "hi"))
        self.udp_to(ann)
        self.datagram(ann, FrameType.KEEPALIVE)
        ((kind, body),) = self.udp_to(ann)
        self.assertEqual((kind, len(body), decode_latest(body)), (FrameType.KEEPALIVE_ACK, 8, 1))

    def test_the_transport_of_each_keepalive_sets_the_path(self) -> None:
        ann = self.member("ann", ANN)
        bob = self.member("bob", BOB)
        self.assertFalse(bob.on_tcp)
        self.tunnel(bob, FrameType.KEEPALIVE)
        self.assertTrue(bob.on_tcp)
        self.assertEqual([k for k, _ in self.tcp_to(bob)], [FrameType.KEEPALIVE_ACK])
        self.datagram(ann, FrameType.SEND, encode_send(1, "over tcp"))
        self.assertEqual(self.udp_to(bob), [])
        ((kind, body),) = self.tcp_to(bob)
        self.assertEqual((kind, decode_posted(body).text), (FrameType.POSTED, "over tcp"))
        self.assertEqual(self.server.delivery_gauges().members_on_tcp, 1)
        self.datagram(bob, FrameType.KEEPALIVE)
        self.assertFalse(bob.on_tcp)
        self.assertEqual([k for k, _ in self.udp_to(bob)], [FrameType.KEEPALIVE_ACK])
        self.datagram(ann, FrameType.SEND, encode_send(2, "over udp"))
        self.assertEqual(self.tcp_to(bob), [])
        self.assertEqual([decode_posted(b).text for _, b in self.udp_to(bob)], ["over udp"])
        self.assertEqual(self.stats.tunneled_out, 2)

    def test_a_member_whose_udp_is_blocked_gets_everything_over_tcp(self) -> None:
        ann = self.member("ann", ANN)
        bob = self.member("bob", None)
        self.tunnel(bob, FrameType.KEEPALIVE)
        self.datagram(ann, FrameType.SEND, encode_send(1, "hi"))
        self.tunnel(bob, FrameType.SEND, encode_send(1, "hello"))
        self.assertIsNone(bob.address)
        self.assertEqual([k for k, _ in self.tcp_to(bob)], [FrameType.KEEPALIVE_ACK, FrameType.POSTED, FrameType.SENT])
        self.assertEqual([decode_posted(b).text for _, b in self.udp_to(ann)[1:]], ["hello"])

    def test_a_probe_is_answered_by_udp_to_its_source_and_keeps_the_path(self) -> None:
        ann = self.member("ann", ANN)
        self.tunnel(ann, FrameType.KEEPALIVE)
        self.tcp_to(ann)
        self.datagram(ann, FrameType.PROBE, source=ELSEWHERE)
        ((answer, address),) = self.udp.written
        self.assertEqual(address, ELSEWHERE)
        self.assertEqual(self.client(ann).open(answer), (FrameType.KEEPALIVE_ACK, (0).to_bytes(8, "big")))
        self.assertTrue(ann.on_tcp)

    def test_plain_native_keepalive_is_unchanged(self) -> None:
        pat = self.member("pat", None, delivery=False)
        self.datagram(pat, FrameType.KEEPALIVE, source=BOB)
        self.assertEqual(self.udp_to(pat), [(FrameType.KEEPALIVE_ACK, b"")])


class LargeFrameTests(DeliveryCase):
    def test_a_frame_over_1200_bytes_goes_over_tcp_whatever_the_path(self) -> None:
        ann = self.member("ann", ANN)
        bob = self.member("bob", BOB)
        text = "y" * 1200
        self.datagram(ann, FrameType.MESSAGE, text.encode())
        self.assertEqual(self.udp_to(bob), [])
        ((kind, body),) = self.tcp_to(bob)
        self.assertEqual((kind, decode_posted(body).text), (FrameType.POSTED, text))
        self.assertFalse(bob.on_tcp)

    def test_without_a_connection_it_is_a_send_error(self) -> None:
        ann = self.member("ann", ANN)
        bob = self.member("bob", BOB)
        bob.connection = None
        self.datagram(ann, FrameType.MESSAGE, b"z" * 1200)
        self.assertEqual((self.relay.send_errors, self.stats.tunneled_out), (1, 0))

    def test_a_closing_connection_is_a_send_error(self) -> None:
        ann = self.member("ann", ANN)
        bob = self.member("bob", BOB)
        self.tunnel(bob, FrameType.KEEPALIVE)
        assert bob.connection is not None
        bob.connection.close()
        self.datagram(ann, FrameType.MESSAGE, b"z")
        self.assertEqual((self.relay.send_errors, self.stats.tunneled_out), (1, 1))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(size=st.integers(min_value=0, max_value=MAX_DATAGRAM), via=st.sampled_from(["legacy", "send", "repair"]))
    def test_no_udp_datagram_to_a_delivery_member_is_over_1200_bytes(self, size: int, via: str) -> None:
        self.setUp(message_burst=10**6, byte_burst=10**9)
        lee = self.member("lee", ANN, Dialect.MODEL)
        ann = self.member("ann", BOB)
        bob = self.member("bob", CAT)
        text = "t" * min(size, MAX_DATAGRAM - RELAY_OVERHEAD - 3)
        if via == "legacy":
            self.relay.datagramReceived(encode_legacy("hoge", lee.token, text), ANN)
        else:
            self.datagram(ann, FrameType.SEND, encode_send(1, text))
            if via == "repair":
                self.datagram(bob, FrameType.REPAIR, encode_range(1, 1))
        sizes = [len(data) for data, address in self.udp.written if address in (BOB, CAT)]
        self.assertLessEqual(max(sizes, default=0), MAX_NATIVE_DATAGRAM)
        # And each message still reached bob, one way or the other.
        self.assertEqual(
            [k for k, _ in self.udp_to(bob) + self.tcp_to(bob)].count(FrameType.POSTED), 2 if via == "repair" else 1
        )


class TunnelledTests(DeliveryCase):
    def test_a_tunnelled_message_is_relayed_and_learns_no_address(self) -> None:
        lee = self.member("lee", ANN, Dialect.MODEL)
        ann = self.member("ann", None)
        self.tunnel(ann, FrameType.MESSAGE, b"via tcp")
        self.assertEqual(self.udp.written, [(b"ann: via tcp", ANN)])
        self.assertIsNone(ann.address)
        self.assertEqual(self.stats.tunneled_in, 1)
        del lee

    def test_a_forgery_is_dropped_and_counted(self) -> None:
        ann = self.member("ann", ANN)
        forged = bytearray(self.sealed(ann, FrameType.KEEPALIVE))
        forged[-1] ^= 1
        self.relay.tunnelled(ann, bytes(forged), TCP_PEER)
        self.assertEqual(self.relay.drops.counts["unauthenticated"], 1)
        self.assertEqual(self.tcp_to(ann) + self.udp_to(ann), [])
        self.assertFalse(ann.on_tcp)

    def test_another_members_key_is_refused(self) -> None:
        ann = self.member("ann", ANN)
        bob = self.member("bob", BOB)
        self.relay.tunnelled(ann, self.sealed(bob, FrameType.KEEPALIVE), TCP_PEER)
        self.assertEqual(self.relay.drops.counts["wrong_source"], 1)
        self.assertFalse(bob.on_tcp or ann.on_tcp)

    def test_garbage_and_legacy_payloads_are_malformed(self) -> None:
        ann = self.member("ann", ANN)
        for payload in (b"", b"\x00\x01", encode_legacy("hoge", ann.token, "hi")):
            self.relay.tunnelled(ann, payload, TCP_PEER)
        self.assertEqual(self.relay.drops.counts["malformed"], 3)
        self.assertEqual(self.stats.tunneled_in, 3)

    def test_a_replay_is_dropped(self) -> None:
        ann = self.member("ann", ANN)
        keepalive = self.sealed(ann, FrameType.KEEPALIVE)
        self.relay.tunnelled(ann, keepalive, TCP_PEER)
        self.relay.tunnelled(ann, keepalive, TCP_PEER)
        self.assertEqual((len(self.tcp_to(ann)), self.relay.drops.counts["replayed"]), (1, 1))

    def test_server_frame_types_are_dropped(self) -> None:
        ann = self.member("ann", ANN)
        self.tunnel(ann, FrameType.POSTED, b"x" * 20)
        self.datagram(ann, FrameType.SENT, b"x" * 24)
        self.assertEqual(self.relay.drops.counts["malformed"], 2)


class PlainNativeTests(DeliveryCase):
    def test_delivery_frame_types_from_a_plain_native_member_are_dropped(self) -> None:
        pat = self.member("pat", ANN, delivery=False)
        self.assertFalse(pat.delivery)
        for frame_type in (FrameType.SEND, FrameType.REPAIR, FrameType.PROBE):
            self.datagram(pat, frame_type, encode_send(1, "x") if frame_type is FrameType.SEND else b"")
        self.assertEqual(self.relay.drops.counts["malformed"], 3)
        self.assertEqual(pat.room.history.latest, 0)

    def test_features_of_a_legacy_request_are_ignored(self) -> None:
        lee = self.member("lee", ANN, Dialect.MODEL, delivery=True)
        self.assertFalse(lee.delivery)
        self.assertIsNone(lee.window)


class CounterTests(DeliveryCase):
    def test_gauges_and_metrics(self) -> None:
        ann = self.member("ann", ANN)
        bob = self.member("bob", BOB, room="other")
        self.datagram(ann, FrameType.SEND, encode_send(1, "four"))
        self.datagram(ann, FrameType.SEND, encode_send(1, "four"))
        self.datagram(bob, FrameType.SEND, encode_send(1, "xy"))
        self.tunnel(bob, FrameType.KEEPALIVE)
        self.datagram(bob, FrameType.REPAIR, encode_range(1, 1))
        gauges = self.server.delivery_gauges()
        self.assertEqual(tuple(gauges), (2, 3 + 4 + 3 + 2, 1))
        samples = {
            (sample.name, tuple(sample.labels.items())): sample.value
            for family in ChatCollector(self.server).collect()
            for sample in family.samples
        }
        self.assertEqual(samples[("chatd_delivery_duplicates_total", ())], 1)
        self.assertEqual(samples[("chatd_delivery_repaired_total", ())], 1)
        self.assertEqual(samples[("chatd_delivery_gone_total", ())], 0)
        self.assertEqual(samples[("chatd_history_messages", ())], 2)
        self.assertEqual(samples[("chatd_history_bytes", ())], 12)
        self.assertEqual(samples[("chatd_members_on_tcp", ())], 1)
        self.assertEqual(samples[("chatd_tunneled_frames_total", (("direction", "in"),))], 1)
        self.assertEqual(samples[("chatd_tunneled_frames_total", (("direction", "out"),))], 2)


class StoreTests(DeliveryCase):
    def test_the_store_keeps_delivery_members_and_windows_in_step(self) -> None:
        registry = self.store
        assert isinstance(registry, RoomRegistry)
        self.member("host", ANN, Dialect.MODEL)
        ann = self.member("ann", None, client_id="c")
        pat = self.member("pat", BOB, delivery=False)
        self.member("bob", CAT)
        check_invariants(registry, self.server.settings)
        self.assertEqual([m.name for m in ann.room.delivery_members], ["ann", "bob"])
        self.assertNotIn(ann, [member for member, _, _ in ann.room.recipients])
        self.store.leave(ann, LeaveReason.LEFT)
        self.store.leave(pat, LeaveReason.LEFT)
        check_invariants(registry, self.server.settings)
        self.assertEqual([m.name for m in pat.room.delivery_members], ["bob"])
