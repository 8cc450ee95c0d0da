"""Tests for the client's reliable-delivery state: chatd.client.delivery and chatd.client.timeline."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.client.delivery import (
    UDP_BLOCKED,
    UDP_WORKS,
    DeliveryStats,
    MessageFailed,
    MessageSent,
    MessageState,
    Outbox,
    OutboxDue,
    Outgoing,
    Path,
    PathActions,
    PathChanged,
    PathMonitor,
    RttEstimator,
)
from chatd.client.timeline import RECREATED, Missed, RoomRecreated, Shown, Timeline, TimelineItem
from chatd.protocol.delivery import MAX_NATIVE_DATAGRAM, REPAIR_BATCH, Posted, Sent, SeqRange

EPOCH = "0123456789abcdef"


def posted(seq: int, sender: str = "ann", text: str | None = None) -> Posted:
    return Posted(seq, 1000 * seq, sender, text if text is not None else f"m{seq}")


def shown_seqs(items: list[TimelineItem]) -> list[int]:
    return [item.seq for item in items if isinstance(item, Shown)]


class RttEstimatorTests(SynchronousTestCase):
    def test_before_any_sample(self) -> None:
        rtt = RttEstimator()
        self.assertIsNone(rtt.srtt)
        self.assertEqual(rtt.rto, 1.0)
        self.assertEqual(rtt.reorder_delay, 0.1)

    def test_first_sample(self) -> None:
        rtt = RttEstimator()
        rtt.sample(0.1)
        self.assertEqual((rtt.srtt, rtt.rttvar), (0.1, 0.05))
        self.assertAlmostEqual(rtt.rto, 0.3)
        self.assertAlmostEqual(rtt.reorder_delay, 0.05)

    def test_later_samples(self) -> None:
        """RFC 6298 (2.3): RTTVAR from the old SRTT, then SRTT."""
        rtt = RttEstimator()
        rtt.sample(0.1)
        rtt.sample(0.3)
        self.assertAlmostEqual(rtt.rttvar or 0, 0.75 * 0.05 + 0.25 * 0.2)
        self.assertAlmostEqual(rtt.srtt or 0, 0.875 * 0.1 + 0.125 * 0.3)
        self.assertAlmostEqual(rtt.rto, (rtt.srtt or 0) + 4 * (rtt.rttvar or 0))

    def test_clamped(self) -> None:
        fast = RttEstimator()
        fast.sample(0.001)
        self.assertEqual(fast.rto, 0.2)
        self.assertEqual(fast.reorder_delay, 0.02)
        slow = RttEstimator()
        slow.sample(20.0)
        self.assertEqual(slow.rto, 10.0)

    def test_negative_sample_is_zero(self) -> None:
        rtt = RttEstimator()
        rtt.sample(-5.0)
        self.assertEqual(rtt.srtt, 0.0)

    def test_backoff(self) -> None:
        rtt = RttEstimator()
        self.assertEqual([rtt.backed_off(n) for n in range(1, 7)], [1.0, 2.0, 4.0, 8.0, 10.0, 10.0])
        self.assertEqual(rtt.backed_off(100), 10.0)

    @given(st.lists(st.floats(min_value=-1, max_value=100, allow_nan=False), max_size=50))
    def test_rto_always_in_bounds(self, samples: list[float]) -> None:
        rtt = RttEstimator()
        for sample in samples:
            rtt.sample(sample)
            self.assertTrue(0.2 <= rtt.rto <= 10.0)
            self.assertTrue(rtt.reorder_delay >= 0.02)


class OutboxTests(SynchronousTestCase):
    def test_ids_from_one(self) -> None:
        outbox = Outbox()
        self.assertEqual([outbox.post("a"), outbox.post("b")], [1, 2])
        self.assertEqual(outbox.state(1), MessageState.SENDING)
        self.assertEqual(outbox.next_deadline(), 0.0)
        self.assertEqual(outbox.due(5.0), OutboxDue((Outgoing(1, "a"), Outgoing(2, "b")), ()))
        self.assertEqual(outbox.next_deadline(), 6.0)
        self.assertEqual(outbox.due(5.5), OutboxDue())
        self.assertEqual(list(outbox), [(1, MessageState.SENDING), (2, MessageState.SENDING)])

    def test_empty(self) -> None:
        outbox = Outbox()
        self.assertIsNone(outbox.next_deadline())
        self.assertEqual(outbox.due(0.0), OutboxDue())

    def test_acknowledged(self) -> None:
        outbox = Outbox()
        outbox.post("a")
        outbox.due(0.0)
        self.assertEqual(outbox.acknowledged(Sent(1, 7, 1234), 0.1), MessageSent(1, 7, 1234))
        self.assertIsNone(outbox.state(1))
        self.assertIsNone(outbox.next_deadline())
        # Karn's rule allows this one: sent once.
        self.assertEqual(outbox.rtt.srtt, 0.1)
        # The server answers every copy: the second SENT is nothing new.
        self.assertIsNone(outbox.acknowledged(Sent(1, 7, 1234), 0.2))
        self.assertIsNone(outbox.acknowledged(Sent(99, 8, 1234), 0.2))

    def test_retransmission_backoff_and_karn(self) -> None:
        stats = DeliveryStats()
        outbox = Outbox(stats=stats)
        outbox.post("a")
        times = []
        now = 0.0
        for _ in range(4):
            due = outbox.due(now)
            self.assertEqual(due.sends, (Outgoing(1, "a"),))
            times.append(now)
            deadline = outbox.next_deadline()
            assert deadline is not None
            now = deadline
        self.assertEqual(times, [0.0, 1.0, 3.0, 7.0])
        self.assertEqual(stats.retransmissions, 3)
        outbox.acknowledged(Sent(1, 1, 0), 7.05)
        self.assertIsNone(outbox.rtt.srtt)

    def test_window(self) -> None:
        outbox = Outbox()
        limit = Outbox.MAX_IN_FLIGHT
        for i in range(limit + 6):
            outbox.post(str(i))
        self.assertEqual(len(outbox.due(0.0).sends), limit)
        self.assertEqual((outbox.in_flight, outbox.waiting, outbox.unacknowledged), (limit, 6, limit + 6))
        self.assertEqual(outbox.next_deadline(), 1.0)
        outbox.acknowledged(Sent(3, 3, 0), 0.1)
        self.assertEqual(outbox.next_deadline(), 0.0)
        self.assertEqual(outbox.due(0.1).sends, (Outgoing(limit + 1, str(limit)),))
        self.assertEqual(outbox.state(limit + 6), MessageState.SENDING)

    def test_gives_up_after_thirty_seconds(self) -> None:
        outbox = Outbox()
        outbox.post("a")
        now, sends = 0.0, 0
        failed: tuple[MessageFailed, ...] = ()
        while not failed:
            due = outbox.due(now)
            sends += len(due.sends)
            failed = due.failed
            deadline = outbox.next_deadline()
            if deadline is None:
                break
            now = deadline
        self.assertEqual(failed, (MessageFailed(1, "a"),))
        self.assertEqual(now, 30.0)
        self.assertEqual(sends, 6)  # 0, 1, 3, 7, 15, 25
        self.assertEqual(outbox.state(1), MessageState.NOT_DELIVERED)
        self.assertEqual(outbox.failed, [1])
        self.assertIsNone(outbox.next_deadline())

    def test_gives_up_after_eight_sends(self) -> None:
        outbox = Outbox()
        outbox.GIVE_UP_AFTER = 1000.0
        outbox.post("a")
        now, sends = 0.0, 0
        while True:
            due = outbox.due(now)
            sends += len(due.sends)
            if due.failed:
                break
            deadline = outbox.next_deadline()
            assert deadline is not None
            now = deadline
        self.assertEqual(sends, 8)
        self.assertEqual(now, 1 + 2 + 4 + 8 + 10 + 10 + 10 + 10)

    def test_retry_under_the_same_id(self) -> None:
        outbox = Outbox()
        outbox.post("a")
        outbox.post("b")
        outbox.due(0.0)
        outbox.acknowledged(Sent(2, 1, 0), 0.1)
        due = outbox.due(30.0)
        self.assertEqual(due.failed, (MessageFailed(1, "a"),))
        third = outbox.post("c")
        self.assertEqual(outbox.retry(), [1])
        self.assertEqual(outbox.retry(), [])
        self.assertEqual(outbox.state(1), MessageState.SENDING)
        self.assertEqual(outbox.due(40.0).sends, (Outgoing(1, "a"), Outgoing(third, "c")))
        self.assertEqual(outbox.stats.retransmissions, 1)  # by /retry (the timer never ran in between)
        # A fresh attempt, with the RTO of message 2's round trip (0.1 s).
        self.assertAlmostEqual(outbox.next_deadline() or 0, 40.3)

    def test_failed_then_acknowledged(self) -> None:
        """A SENT after giving up: the server had it after all, and the user should know."""
        outbox = Outbox()
        outbox.post("a")
        outbox.due(0.0)
        outbox.due(30.0)
        self.assertEqual(outbox.acknowledged(Sent(1, 4, 9), 31.0), MessageSent(1, 4, 9))
        self.assertEqual(outbox.failed, [])

    def test_resend_all(self) -> None:
        outbox = Outbox()
        for text in "abc":
            outbox.post(text)
        outbox.due(0.0)
        outbox.acknowledged(Sent(2, 1, 0), 0.1)
        self.assertEqual(outbox.resend_all(), [1, 3])
        self.assertEqual(outbox.in_flight, 0)
        self.assertEqual(outbox.next_deadline(), 0.0)
        # Acknowledged while waiting to go again: no longer sent.
        self.assertIsNotNone(outbox.acknowledged(Sent(3, 2, 0), 0.5))
        self.assertEqual(outbox.due(50.0).sends, (Outgoing(1, "a"),))
        self.assertEqual(outbox.stats.retransmissions, 1)
        # The RTO from message 2's round trip (0.1 s): 0.3 s.
        self.assertAlmostEqual(outbox.next_deadline() or 0, 50.3)
        self.assertEqual(outbox.resend_all(), [1])
        self.assertIsNotNone(outbox.acknowledged(Sent(1, 3, 0), 50.1))
        self.assertEqual(outbox.rtt.srtt, 0.1)  # message 1 sent twice: no sample (Karn)

    @settings(max_examples=200)
    @given(st.lists(st.tuples(st.sampled_from(["post", "ack", "due", "retry", "resend"]), st.integers(0, 100))))
    def test_invariants(self, operations: list[tuple[str, int]]) -> None:
        outbox = Outbox()
        now = 0.0
        posted: set[int] = set()
        acknowledged: set[int] = set()
        for operation, value in operations:
            now += value / 10
            if operation == "post":
                message_id = outbox.post(str(value))
                self.assertNotIn(message_id, posted)
                posted.add(message_id)
            elif operation == "ack" and posted:
                message_id = min(posted) + value % len(posted)
                result = outbox.acknowledged(Sent(message_id, message_id, 0), now)
                self.assertEqual(result is None, message_id in acknowledged or message_id not in posted)
                if result is not None:
                    acknowledged.add(message_id)
            elif operation == "due":
                due = outbox.due(now)
                self.assertFalse({o.message_id for o in due.sends} & acknowledged)
            elif operation == "retry":
                outbox.retry()
            else:
                outbox.resend_all()
            self.assertLessEqual(outbox.in_flight, Outbox.MAX_IN_FLIGHT)
            self.assertEqual({message_id for message_id, _ in outbox}, posted - acknowledged)
            deadline = outbox.next_deadline()
            self.assertEqual(deadline is None, outbox.in_flight == 0 and outbox.waiting == 0)


class PathMonitorTests(SynchronousTestCase):
    def test_a_message_unanswered_with_nothing_heard_means_blocked(self) -> None:
        monitor = PathMonitor()
        monitor.keepalive(0.0)
        monitor.keepalive_ack(0.1, by_udp=True)
        monitor.heard(0.1)
        # Nothing in flight: nothing to judge by.
        self.assertEqual(monitor.sends_unanswered(50.0, None), PathActions())
        self.assertIsNone(monitor.send_deadline(None))
        # A message in flight since 10.0: blocked at 13.0 unless something comes by UDP.
        self.assertEqual(monitor.send_deadline(10.0), 13.0)
        self.assertEqual(monitor.sends_unanswered(12.9, 10.0), PathActions())
        actions = monitor.sends_unanswered(13.0, 10.0)
        self.assertEqual(actions, PathActions(changed=PathChanged(Path.TCP, UDP_BLOCKED), keepalive=Path.TCP))
        self.assertEqual(monitor.path, Path.TCP)
        # On TCP the rule says nothing more.
        self.assertIsNone(monitor.send_deadline(20.0))
        self.assertEqual(monitor.sends_unanswered(30.0, 20.0), PathActions())

    def test_anything_heard_by_udp_since_the_send_means_udp_works(self) -> None:
        # A lossy path in a busy room: the SENT is late, but other frames come.
        monitor = PathMonitor()
        monitor.keepalive(0.0)
        monitor.keepalive_ack(0.1, by_udp=True)
        monitor.heard(11.0)
        self.assertIsNone(monitor.send_deadline(10.0))
        self.assertEqual(monitor.sends_unanswered(20.0, 10.0), PathActions())
        self.assertEqual(monitor.path, Path.UDP)

    def test_udp_works(self) -> None:
        monitor = PathMonitor()
        self.assertEqual(monitor.keepalive(0.0), PathActions(keepalive=Path.UDP))
        self.assertEqual(monitor.next_deadline(), 3.0)
        self.assertEqual(monitor.keepalive_ack(0.05, by_udp=True), PathActions())
        self.assertIsNone(monitor.next_deadline())
        self.assertEqual(monitor.rtt.srtt, 0.05)
        self.assertEqual(monitor.path, Path.UDP)
        self.assertEqual(monitor.stats.path, "UDP")

    def test_no_first_answer(self) -> None:
        stats = DeliveryStats()
        monitor = PathMonitor(stats=stats)
        monitor.keepalive(0.0)
        self.assertEqual(monitor.poll(2.9), PathActions())
        self.assertEqual(monitor.poll(3.0), PathActions(changed=PathChanged(Path.TCP, UDP_BLOCKED), keepalive=Path.TCP))
        self.assertEqual(stats.path, "TCP")
        self.assertTrue(monitor.via_tcp(10))
        self.assertEqual(monitor.keepalive(4.0), PathActions(keepalive=Path.TCP))
        # Probes by UDP: 5 s after the change, then the wait doubles up to 30 s.
        probes = []
        for _ in range(6):
            deadline = monitor.next_deadline()
            assert deadline is not None
            self.assertEqual(monitor.poll(deadline), PathActions(probe=True))
            probes.append(deadline)
        self.assertEqual(probes, [8.0, 18.0, 38.0, 68.0, 98.0, 128.0])
        # An answer by TCP changes nothing.
        self.assertEqual(monitor.keepalive_ack(129.0, by_udp=False), PathActions())
        self.assertEqual(
            monitor.keepalive_ack(129.1, by_udp=True),
            PathActions(changed=PathChanged(Path.UDP, UDP_WORKS), keepalive=Path.UDP),
        )
        self.assertEqual(stats.path, "UDP")
        self.assertFalse(monitor.via_tcp(10))
        self.assertIsNone(monitor.next_deadline())

    def test_three_unanswered_in_a_row(self) -> None:
        monitor = PathMonitor()
        monitor.keepalive(0.0)
        monitor.keepalive_ack(0.1, by_udp=True)
        self.assertEqual(monitor.keepalive(30.0).keepalive, Path.UDP)
        self.assertEqual(monitor.keepalive(31.5).keepalive, Path.UDP)  # one unanswered
        self.assertEqual(monitor.keepalive(33.0).keepalive, Path.UDP)  # two
        monitor.keepalive_ack(33.1, by_udp=True)
        self.assertEqual(monitor.keepalive(63.0).keepalive, Path.UDP)
        self.assertEqual(monitor.keepalive(64.5).keepalive, Path.UDP)  # one unanswered
        self.assertEqual(monitor.keepalive(66.0).keepalive, Path.UDP)  # two
        actions = monitor.keepalive(67.5)  # three in a row
        self.assertEqual(actions, PathActions(changed=PathChanged(Path.TCP, UDP_BLOCKED), keepalive=Path.TCP))
        self.assertEqual(monitor.next_deadline(), 72.5)

    def test_a_sent_by_udp_is_an_answer(self) -> None:
        # A chatting client on a lossy path: keepalive answers lost, but its SENTs come.
        monitor = PathMonitor()
        monitor.keepalive(0.0)
        monitor.keepalive_ack(0.1, by_udp=True)
        for moment in (30.0, 31.5, 33.0, 34.5, 36.0):
            self.assertEqual(monitor.keepalive(moment).keepalive, Path.UDP)
            monitor.round_trip()
        self.assertEqual(monitor.path, Path.UDP)
        self.assertIsNone(monitor.next_deadline())

    def test_probe_answer_moves_back_then_blocked_again(self) -> None:
        monitor = PathMonitor()
        monitor.keepalive(0.0)
        monitor.poll(3.0)
        monitor.poll(8.0)
        self.assertEqual(monitor.keepalive_ack(8.1, by_udp=True).keepalive, Path.UDP)
        self.assertEqual(monitor.keepalive(38.0).keepalive, Path.UDP)  # the one at 8.1 unanswered
        self.assertEqual(monitor.keepalive(39.5).keepalive, Path.UDP)  # two
        self.assertEqual(monitor.keepalive(41.0).changed, PathChanged(Path.TCP, UDP_BLOCKED))
        self.assertEqual(monitor.next_deadline(), 46.0)

    def test_rtt_samples_only_when_unambiguous(self) -> None:
        monitor = PathMonitor()
        monitor.keepalive(0.0)
        monitor.keepalive(1.5)
        monitor.keepalive_ack(1.6, by_udp=True)
        self.assertIsNone(monitor.rtt.srtt)
        monitor.keepalive(30.0)
        monitor.keepalive_ack(30.2, by_udp=True)
        self.assertAlmostEqual(monitor.rtt.srtt or 0, 0.2)

    def test_via_tcp_for_large_frames(self) -> None:
        monitor = PathMonitor()
        self.assertFalse(monitor.via_tcp(MAX_NATIVE_DATAGRAM))
        self.assertTrue(monitor.via_tcp(MAX_NATIVE_DATAGRAM + 1))


class TimelineTests(SynchronousTestCase):
    def timeline(self, seq: int = 0, history_from: int | None = None, own_name: str | None = None) -> Timeline:
        return Timeline(EPOCH, seq, seq + 1 if history_from is None else history_from, 0.0, own_name=own_name)

    def test_in_order(self) -> None:
        timeline = self.timeline()
        self.assertIsNone(timeline.next_deadline())
        self.assertEqual(timeline.posted(posted(1), 0.0), [Shown(1, 1000, "ann", "m1", False)])
        self.assertEqual(shown_seqs(timeline.posted(posted(2), 0.0)), [2])
        self.assertEqual(timeline.last_shown, 2)

    def test_history_on_entering(self) -> None:
        timeline = self.timeline(seq=100, history_from=51)
        self.assertEqual(timeline.next_deadline(), 0.0)
        self.assertEqual(timeline.repairs_due(0.0), [SeqRange(51, 100)])
        self.assertEqual(timeline.repairs_due(0.5), [])
        self.assertEqual(timeline.posted(posted(52), 0.1), [])
        items = timeline.posted(posted(51), 0.1)
        self.assertEqual(items, [Shown(51, 51000, "ann", "m51", True), Shown(52, 52000, "ann", "m52", True)])
        self.assertEqual(timeline.stats.repaired, 2)
        # The rest again at the RTO (1 s before any sample).
        self.assertEqual(timeline.repairs_due(1.0), [SeqRange(53, 100)])
        for seq in range(53, 102):
            timeline.posted(posted(seq), 1.1)
        self.assertEqual(timeline.last_shown, 101)
        self.assertIsNone(timeline.next_deadline())

    def test_no_history(self) -> None:
        timeline = self.timeline(seq=100)
        self.assertEqual((timeline.next_seq, timeline.gaps), (101, []))
        self.assertEqual(timeline.posted(posted(101), 0.0)[0], Shown(101, 101000, "ann", "m101", False))

    def test_reorder_then_repair(self) -> None:
        timeline = self.timeline()
        self.assertEqual(timeline.posted(posted(3), 0.0), [])
        self.assertEqual(timeline.gaps, [SeqRange(1, 2)])
        self.assertEqual(timeline.next_deadline(), 0.1)
        self.assertEqual(timeline.repairs_due(0.05), [])
        # Reordered, not lost: 1 comes in time, only 2 is asked for.
        timeline.posted(posted(1), 0.06)
        self.assertEqual(timeline.repairs_due(0.1), [SeqRange(2, 2)])
        self.assertEqual(timeline.next_deadline(), 1.1)
        self.assertEqual(timeline.repairs_due(1.1), [SeqRange(2, 2)])
        self.assertEqual(shown_seqs(timeline.posted(posted(2), 1.2)), [2, 3])
        self.assertEqual(timeline.stats.repaired, 1)
        self.assertIsNone(timeline.next_deadline())

    def test_duplicates(self) -> None:
        timeline = self.timeline()
        timeline.posted(posted(1), 0.0)
        timeline.posted(posted(3), 0.0)
        self.assertEqual(timeline.posted(posted(1), 0.0), [])
        self.assertEqual(timeline.posted(posted(3), 0.0), [])
        self.assertEqual(timeline.stats.duplicates, 2)

    def test_own_messages(self) -> None:
        timeline = self.timeline(seq=2, history_from=1, own_name="me")
        timeline.repairs_due(0.0)
        # History: the member's own earlier messages are shown, as history.
        items = timeline.posted(posted(1, "me"), 0.0) + timeline.posted(posted(2, "ann"), 0.0)
        self.assertEqual([(s.seq, s.history) for s in items if isinstance(s, Shown)], [(1, True), (2, True)])
        # Its own SENT fills the place without showing.
        self.assertEqual(timeline.own_sent(4, 0.0), [])
        self.assertEqual(shown_seqs(timeline.posted(posted(3), 0.0)), [3])
        self.assertEqual(timeline.last_shown, 4)
        self.assertEqual(timeline.own_sent(4, 0.0), [])
        # Its own message by repair (its SENT was lost): the local echo showed it.
        timeline.posted(posted(6), 0.0)
        self.assertEqual(shown_seqs(timeline.posted(posted(5, "me"), 0.0)), [6])
        # And its SENT arriving afterwards changes nothing.
        self.assertEqual(timeline.own_sent(5, 0.0), [])
        self.assertEqual(timeline.stats.duplicates, 0)

    def test_own_sent_ahead(self) -> None:
        timeline = self.timeline()
        timeline.own_sent(3, 0.0)
        self.assertEqual(timeline.gaps, [SeqRange(1, 2)])
        timeline.posted(posted(2), 0.0)
        self.assertEqual(shown_seqs(timeline.posted(posted(1), 0.0)), [1, 2])
        self.assertEqual(timeline.last_shown, 3)

    def test_gone(self) -> None:
        timeline = self.timeline(seq=200, history_from=1)
        self.assertEqual(len(timeline.repairs_due(0.0)), 4)
        timeline.posted(posted(150), 0.1)
        items = timeline.gone(SeqRange(1, 136), 0.1)
        self.assertEqual(items, [Missed(1, 136)])
        self.assertEqual(Missed(1, 136).message, "136 messages missed")
        self.assertEqual(Missed(3, 3).message, "1 message missed")
        self.assertEqual(timeline.stats.missed, 136)
        self.assertEqual(timeline.gaps, [SeqRange(137, 149), SeqRange(151, 200)])
        # A message that came inside a GONE range is shown in its place.
        self.assertEqual(
            timeline.gone(SeqRange(137, 160), 0.2),
            [Missed(137, 149), Shown(150, 150000, "ann", "m150", True), Missed(151, 160)],
        )
        self.assertEqual(timeline.gone(SeqRange(1, 5), 0.2), [])
        self.assertEqual(timeline.next_seq, 161)

    def test_gone_ahead_and_past_the_horizon(self) -> None:
        timeline = self.timeline()
        self.assertEqual(timeline.gone(SeqRange(3, 4), 0.0), [])
        self.assertEqual(timeline.gaps, [SeqRange(1, 2)])
        timeline.posted(posted(1), 0.0)
        self.assertEqual(timeline.posted(posted(2), 0.0)[-1], Missed(3, 4))
        self.assertEqual(timeline.next_seq, 5)

    def test_keepalive_latest(self) -> None:
        timeline = self.timeline()
        timeline.posted(posted(1), 0.0)
        self.assertEqual(timeline.latest(1, 0.0), [])
        self.assertEqual(timeline.gaps, [])
        timeline.latest(3, 1.0)
        self.assertEqual(timeline.gaps, [SeqRange(2, 3)])
        self.assertEqual(timeline.repairs_due(1.1), [SeqRange(2, 3)])
        timeline.latest(2, 1.2)
        self.assertEqual(timeline.gaps, [SeqRange(2, 3)])

    def test_wide_gap_in_batches(self) -> None:
        timeline = self.timeline(seq=1000, history_from=1)
        ranges = timeline.repairs_due(0.0)
        self.assertEqual(len(ranges), Timeline.MAX_REPAIR_RANGES)
        self.assertTrue(all(len(r) <= REPAIR_BATCH for r in ranges))
        self.assertEqual((ranges[0], ranges[-1]), (SeqRange(1, 64), SeqRange(449, 512)))
        self.assertEqual(timeline.next_deadline(), 1.0)
        # Once the asked ranges are answered, the rest goes at once.
        timeline.gone(SeqRange(1, 400), 0.1)
        self.assertEqual(timeline.next_deadline(), 1.0)
        for seq in range(401, 513):
            timeline.posted(posted(seq), 0.1)
        self.assertEqual(timeline.next_deadline(), 0.0)
        ranges = timeline.repairs_due(0.1)
        self.assertEqual((ranges[0], len(ranges)), (SeqRange(513, 576), 8))

    def test_resume_same_epoch(self) -> None:
        timeline = self.timeline(seq=10)
        timeline.posted(posted(11), 0.0)
        timeline.posted(posted(13), 0.0)
        self.assertEqual(timeline.resume(EPOCH, 20, 15, 5.0), [])
        self.assertEqual(timeline.next_deadline(), 5.0)
        self.assertEqual(timeline.repairs_due(5.0), [SeqRange(12, 12), SeqRange(14, 20)])
        items = [item for seq in range(12, 21) for item in timeline.posted(posted(seq), 5.1)]
        self.assertEqual(shown_seqs(items), list(range(12, 21)))
        self.assertFalse(any(isinstance(i, Shown) and i.history for i in items))

    def test_resume_new_epoch(self) -> None:
        timeline = self.timeline(seq=10)
        timeline.posted(posted(11), 0.0)
        timeline.posted(posted(13), 0.0)
        self.assertEqual(timeline.resume("fedcba9876543210", 3, 1, 5.0), [RoomRecreated("fedcba9876543210", RECREATED)])
        self.assertEqual((timeline.epoch, timeline.next_seq, timeline.buffered), ("fedcba9876543210", 1, 0))
        self.assertEqual(timeline.repairs_due(5.0), [SeqRange(1, 3)])
        self.assertTrue(all(isinstance(i, Shown) and i.history for i in timeline.posted(posted(1), 5.1)))

    def test_buffer_bounded(self) -> None:
        timeline = self.timeline()
        timeline.MAX_BUFFERED = 4
        for seq in range(2, 8):
            timeline.posted(posted(seq), 0.0)
        self.assertEqual(timeline.buffered, 4)
        self.assertEqual(timeline.gaps, [SeqRange(1, 1), SeqRange(6, 7)])
        self.assertEqual(timeline.repairs_due(0.0), [SeqRange(6, 7)])
        self.assertEqual(timeline.repairs_due(1.0), [SeqRange(1, 1), SeqRange(6, 7)])
        self.assertEqual(shown_seqs(timeline.posted(posted(1), 1.1)), [1, 2, 3, 4, 5])

    def test_gone_bounded(self) -> None:
        timeline = self.timeline(seq=400, history_from=1)
        timeline.MAX_GONE = 2
        for first in (10, 20, 30):
            timeline.gone(SeqRange(first, first + 1), 0.0)
        # The farthest forgotten: missing again, so asked again.
        self.assertEqual(timeline._gone, [(10, 11), (20, 21)])
        self.assertIn(SeqRange(22, 400), timeline.gaps)
        self.check_invariants(timeline)
        self.assertEqual(timeline.gone(SeqRange(1, 9), 0.1), [Missed(1, 11)])

    @settings(max_examples=300)
    @given(st.integers(1, 150), st.randoms(use_true_random=False), st.integers(0, 20))
    def test_any_arrival_order(self, count: int, rng: random.Random, gone_count: int) -> None:
        """Whatever order, duplicates and GONE ranges: each message shown once, in order, every place accounted for."""
        timeline = self.timeline()
        timeline.MAX_BUFFERED = 16
        gone = set(range(1, gone_count + 1))
        events: list[tuple[str, int]] = [("posted", s) for s in range(1, count + 1) if s not in gone]
        events += [("posted", rng.randint(1, count)) for _ in range(count // 3) if count > gone_count]
        events = [e for e in events if e[1] not in gone]
        events += [("gone", s) for s in gone if s <= count]
        events += [("latest", rng.randint(1, count))]
        rng.shuffle(events)
        items: list[TimelineItem] = []
        now = 0.0
        for kind, seq in events:
            now += 0.01
            if kind == "posted":
                items += timeline.posted(posted(seq), now)
            elif kind == "gone":
                items += timeline.gone(SeqRange(seq, seq), now)
            else:
                items += timeline.latest(seq, now)
            self.check_invariants(timeline)
            timeline.repairs_due(now)
        # Dropped from the bounded buffer: repair fetches them again.
        while timeline.gaps:
            now += 1.0
            for wanted in timeline.repairs_due(now):
                for seq in range(wanted.first, wanted.last + 1):
                    items += (
                        timeline.gone(SeqRange(seq, seq), now) if seq in gone else timeline.posted(posted(seq), now)
                    )
        self.assertEqual(shown_seqs(items), [s for s in range(1, count + 1) if s not in gone])
        missed = {s for item in items if isinstance(item, Missed) for s in range(item.first, item.last + 1)}
        self.assertEqual(missed, {s for s in gone if s <= count})
        self.assertEqual(timeline.last_shown, count)

    def check_invariants(self, timeline: Timeline) -> None:
        """The gaps are exactly the numbers neither shown, nor buffered, nor gone, up to the horizon."""
        self.assertLessEqual(timeline.buffered, timeline.MAX_BUFFERED)
        gaps = [s for r in timeline.gaps for s in range(r.first, r.last + 1)]
        self.assertEqual(gaps, sorted(set(gaps)))
        accounted = set(timeline._buffer) | {s for a, b in timeline._gone for s in range(a, b + 1)}
        missing = [s for s in range(timeline.next_seq, timeline.horizon + 1) if s not in accounted]
        self.assertEqual(gaps, missing)
