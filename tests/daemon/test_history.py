"""
Tests for chatd.daemon.history: the room history ring and its bounds, what a
REPAIR and a join are served, the duplicate windows and the room's keeping
of them. Each is checked at its boundaries by example, and against a plain
model (everything remembered, filtered afterwards) with hypothesis.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from chatd.daemon.history import (
    DEPARTED_WINDOWS,
    DUPLICATE_WINDOW,
    Duplicate,
    DuplicateWindow,
    Held,
    HistoryEntry,
    IHistory,
    Repair,
    RoomHistory,
    RoomWindows,
    Verdict,
    history_from,
    new_epoch,
    serve_repair,
)
from chatd.protocol.delivery import REPAIR_BATCH, SEQ_MAX, SeqRange

EPOCH = "0123456789abcdef"


def filled(count: int, *, max_messages: int = 512, max_bytes: int = 1 << 30, size: int = 4) -> RoomHistory:
    """A history that was given C{count} messages of C{size} bytes each (name b'n', text the rest), at time seq * 10."""
    history = RoomHistory(max_messages, max_bytes, EPOCH)
    for seq in range(1, count + 1):
        history.append(b"n", b"t" * (size - 1), seq * 10)
    return history


def seqs(entries: Sequence[HistoryEntry]) -> list[int]:
    return [entry.seq for entry in entries]


class EpochTests(SynchronousTestCase):
    def test_new_epochs_are_16_hex_and_differ(self) -> None:
        epochs = {new_epoch() for _ in range(100)}
        self.assertEqual(len(epochs), 100)
        for epoch in epochs:
            self.assertRegex(epoch, r"\A[0-9a-f]{16}\Z")

    def test_a_history_makes_its_epoch(self) -> None:
        self.assertRegex(RoomHistory().epoch, r"\A[0-9a-f]{16}\Z")
        self.assertNotEqual(RoomHistory().epoch, RoomHistory().epoch)

    def test_epoch_injected(self) -> None:
        self.assertEqual(RoomHistory(epoch=EPOCH).epoch, EPOCH)
        self.assertEqual(RoomHistory(make_epoch=lambda: "f" * 16).epoch, "f" * 16)

    def test_malformed_epochs_are_refused(self) -> None:
        for epoch in ("", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF", "0123456789abcdeg"):
            self.assertRaises(ValueError, RoomHistory, epoch=epoch)
        self.assertRaises(ValueError, RoomHistory, make_epoch=lambda: "nope")


class RingTests(SynchronousTestCase):
    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IHistory, RoomHistory()))

    def test_bounds_below_one_are_refused(self) -> None:
        for max_messages, max_bytes in ((0, 1), (1, 0), (-1, 10)):
            self.assertRaises(ValueError, RoomHistory, max_messages, max_bytes)
        RoomHistory(1, 1)

    def test_empty(self) -> None:
        history = RoomHistory(epoch=EPOCH)
        self.assertEqual((history.latest, history.oldest, history.message_count, history.byte_count), (0, 1, 0, 0))
        self.assertEqual(history.range(1, 10), Held([], 1))

    def test_numbers_from_one_and_holds_what_it_is_given(self) -> None:
        history = RoomHistory(epoch=EPOCH)
        self.assertEqual([history.append(b"ann", b"hi", 1000), history.append(b"bob", b"", 1001)], [1, 2])
        self.assertEqual(
            history.range(1, 2),
            Held([HistoryEntry(1, 1000, b"ann", b"hi"), HistoryEntry(2, 1001, b"bob", b"")], 1),
        )
        self.assertEqual((history.latest, history.oldest, history.message_count, history.byte_count), (2, 1, 2, 8))
        self.assertEqual(HistoryEntry(1, 0, b"ann", b"hi").size, 5)

    def test_count_bound_drops_the_oldest(self) -> None:
        history = filled(3, max_messages=3)
        self.assertEqual(seqs(history.range(1, 10).entries), [1, 2, 3])
        history.append(b"n", b"ttt", 40)
        self.assertEqual((history.oldest, history.latest, history.message_count, history.byte_count), (2, 4, 3, 12))
        for _ in range(10):
            history.append(b"n", b"ttt", 0)
        self.assertEqual((history.oldest, history.latest, history.message_count), (12, 14, 3))

    def test_one_message(self) -> None:
        history = filled(5, max_messages=1)
        self.assertEqual(history.range(1, 5), Held([HistoryEntry(5, 50, b"n", b"ttt")], 5))

    def test_byte_bound_drops_the_oldest(self) -> None:
        # 4 bytes each, 10 at most: two fit, the third pushes the first out.
        history = filled(2, max_bytes=10)
        self.assertEqual((history.oldest, history.byte_count), (1, 8))
        history.append(b"n", b"ttt", 30)
        self.assertEqual((history.oldest, history.message_count, history.byte_count), (2, 2, 8))

    def test_exactly_at_the_byte_bound_is_kept(self) -> None:
        history = filled(3, max_bytes=12)
        self.assertEqual((history.oldest, history.byte_count), (1, 12))
        history.append(b"", b"", 0)  # An empty message costs nothing.
        self.assertEqual((history.oldest, history.message_count, history.byte_count), (1, 4, 12))
        history.append(b"", b"x", 0)
        self.assertEqual((history.oldest, history.message_count, history.byte_count), (2, 4, 9))

    def test_a_message_larger_than_the_byte_bound_is_kept_alone(self) -> None:
        history = filled(2, max_bytes=10)
        seq = history.append(b"big", b"x" * 20, 99)
        self.assertEqual(history.range(1, seq), Held([HistoryEntry(3, 99, b"big", b"x" * 20)], 3))
        self.assertEqual(history.byte_count, 23)
        # The next one, small, pushes it out; then the ring is back within its bound.
        history.append(b"n", b"ttt", 100)
        self.assertEqual((history.oldest, history.message_count, history.byte_count), (4, 1, 4))
        history.append(b"n", b"ttt", 110)
        self.assertEqual((history.oldest, history.message_count, history.byte_count), (4, 2, 8))

    def test_range_at_every_boundary(self) -> None:
        # Held: 6..10 (of 10).
        history = filled(10, max_messages=5)
        held = list(range(6, 11))
        for first in range(1, 13):
            for last in range(first, 14):
                answer = history.range(first, last)
                self.assertEqual(answer.oldest, 6)
                self.assertEqual(seqs(answer.entries), [seq for seq in held if first <= seq <= last], (first, last))
        self.assertEqual(history.range(1, SEQ_MAX).entries, history.range(6, 10).entries)
        self.assertEqual(history.range(8, 7).entries, [])  # Empty asked, empty given.

    def test_repr_says_what_it_holds(self) -> None:
        self.assertEqual(
            repr(filled(3, max_messages=2)),
            f"<RoomHistory epoch={EPOCH} seqs 2..3 (2/2 messages, 8/{1 << 30} bytes)>",
        )


_MESSAGES = st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=30)), max_size=60)


class RingModelTests(SynchronousTestCase):
    """The ring against the model: everything ever appended, of which it holds the longest suffix within bounds."""

    @settings(max_examples=300, deadline=None)
    @given(
        messages=_MESSAGES,
        max_messages=st.integers(1, 12),
        max_bytes=st.integers(1, 120),
        asked=st.lists(st.tuples(st.integers(1, 70), st.integers(0, 20)), max_size=8),
    )
    def test_holds_the_longest_suffix_within_bounds(
        self,
        messages: list[tuple[bytes, bytes]],
        max_messages: int,
        max_bytes: int,
        asked: list[tuple[int, int]],
    ) -> None:
        history = RoomHistory(max_messages, max_bytes, EPOCH)
        model: list[HistoryEntry] = []
        for time_ms, (name, text) in enumerate(messages):
            model.append(HistoryEntry(len(model) + 1, time_ms, name, text))
            self.assertEqual(history.append(name, text, time_ms), len(model))
            # The longest suffix within both bounds, but never less than the newest message.
            kept = 1
            while (
                kept < len(model)
                and kept + 1 <= max_messages
                and sum(entry.size for entry in model[-(kept + 1) :]) <= max_bytes
            ):
                kept += 1
            expected = model[-kept:]
            everything = history.range(1, SEQ_MAX)
            self.assertEqual(everything, Held(expected, expected[0].seq))
            self.assertEqual(
                (history.latest, history.oldest, history.message_count, history.byte_count),
                (len(model), expected[0].seq, kept, sum(entry.size for entry in expected)),
            )
            self.assertTrue(history.byte_count <= max_bytes or history.message_count == 1)
        for first, span in asked:
            last = first + span
            self.assertEqual(
                history.range(first, last).entries,
                [entry for entry in history.range(1, SEQ_MAX).entries if first <= entry.seq <= last],
            )


class RepairTests(SynchronousTestCase):
    def setUp(self) -> None:
        # 200 numbered, 101..200 held.
        self.history = filled(200, max_messages=100)

    def repair(self, first: int, last: int, batch: int = REPAIR_BATCH) -> tuple[list[int], SeqRange | None]:
        served = serve_repair(self.history, first, last, batch)
        return seqs(served.entries), served.gone

    def test_wholly_past_the_latest_is_ignored(self) -> None:
        self.assertEqual(serve_repair(self.history, 201, 201), Repair((), None))
        self.assertEqual(self.repair(201, SEQ_MAX), ([], None))
        self.assertEqual(self.repair(SEQ_MAX, SEQ_MAX), ([], None))

    def test_nothing_numbered_yet(self) -> None:
        empty = RoomHistory(epoch=EPOCH)
        self.assertEqual(serve_repair(empty, 1, 1), Repair((), None))
        self.assertEqual(serve_repair(empty, 1, SEQ_MAX), Repair((), None))

    def test_clamped_to_the_latest(self) -> None:
        self.assertEqual(self.repair(200, 500), ([200], None))
        self.assertEqual(self.repair(190, SEQ_MAX), (list(range(190, 201)), None))

    def test_held_entries_are_sent_whole(self) -> None:
        served = serve_repair(self.history, 150, 151)
        self.assertEqual(
            served, Repair([HistoryEntry(150, 1500, b"n", b"ttt"), HistoryEntry(151, 1510, b"n", b"ttt")], None)
        )

    def test_at_most_a_batch_counted_from_first(self) -> None:
        self.assertEqual(self.repair(101, 200), (list(range(101, 165)), None))
        self.assertEqual(self.repair(101, 164), (list(range(101, 165)), None))
        self.assertEqual(self.repair(101, 165), (list(range(101, 165)), None))
        self.assertEqual(self.repair(137, 200), (list(range(137, 201)), None))  # 64, to the latest.
        self.assertEqual(self.repair(101, 200, batch=1), ([101], None))

    def test_wholly_older_than_the_history_is_one_gone(self) -> None:
        self.assertEqual(self.repair(1, 1), ([], SeqRange(1, 1)))
        self.assertEqual(self.repair(1, 50), ([], SeqRange(1, 50)))
        self.assertEqual(self.repair(100, 100), ([], SeqRange(100, 100)))

    def test_straddling_the_oldest(self) -> None:
        self.assertEqual(self.repair(100, 101), ([101], SeqRange(100, 100)))
        self.assertEqual(self.repair(90, 120), (list(range(101, 121)), SeqRange(90, 100)))
        # The batch counts from first: 50..113, of which 101..113 are held.
        self.assertEqual(self.repair(50, 200), (list(range(101, 114)), SeqRange(50, 100)))
        self.assertEqual(self.repair(101, 101), ([101], None))

    def test_the_older_part_is_gone_whole_even_past_the_batch(self) -> None:
        # 1..64 are all gone: none sent, and all of 1..100 said gone at once,
        # so the client's next ask starts at 101.
        self.assertEqual(self.repair(1, 200), ([], SeqRange(1, 100)))
        self.assertEqual(self.repair(1, SEQ_MAX), ([], SeqRange(1, 100)))

    def test_invalid_ranges_are_refused(self) -> None:
        for first, last in ((0, 5), (5, 4), (-1, 1)):
            self.assertRaises(ValueError, serve_repair, self.history, first, last)

    @settings(max_examples=300, deadline=None)
    @given(
        count=st.integers(0, 40),
        max_messages=st.integers(1, 30),
        first=st.integers(1, 50),
        span=st.integers(0, 60),
        batch=st.integers(1, 10),
    )
    def test_against_the_model(self, count: int, max_messages: int, first: int, span: int, batch: int) -> None:
        history = filled(count, max_messages=max_messages)
        last = first + span
        latest, oldest = history.latest, history.oldest
        served = serve_repair(history, first, last, batch)
        if first > latest:
            self.assertEqual(served, Repair((), None))
            return
        end = min(last, first + batch - 1, latest)
        self.assertEqual(seqs(served.entries), [seq for seq in range(oldest, latest + 1) if first <= seq <= end])
        self.assertEqual(served.gone, SeqRange(first, min(last, oldest - 1)) if first < oldest else None)
        self.assertLessEqual(len(served.entries), batch)

    @settings(max_examples=200, deadline=None)
    @given(
        count=st.integers(0, 300), max_messages=st.integers(1, 150), first=st.integers(1, 320), span=st.integers(0, 320)
    )
    def test_a_client_asking_for_the_rest_gets_each_number_once(
        self, count: int, max_messages: int, first: int, span: int
    ) -> None:
        # A client asks, then asks for what follows what it got, until the
        # server sends nothing: every number up to the latest is then either
        # served or gone, once, and it took no more asks than batches.
        history = filled(count, max_messages=max_messages)
        last = first + span
        served: list[int] = []
        gone: list[int] = []
        asks = 0
        asking = first
        while asking <= last:
            answer = serve_repair(history, asking, last)
            asks += 1
            if not answer.entries and answer.gone is None:
                break
            served += seqs(answer.entries)
            if answer.gone is not None:
                gone += range(answer.gone.first, answer.gone.last + 1)
            asking = max([asking, *served, *gone]) + 1
        expected = list(range(first, min(last, history.latest) + 1))
        self.assertEqual(sorted(served + gone), expected)
        self.assertEqual(served, [seq for seq in expected if seq >= history.oldest])
        self.assertLessEqual(asks, 2 + len(expected) // REPAIR_BATCH + 1)


class HistoryFromTests(SynchronousTestCase):
    def test_nothing_numbered(self) -> None:
        self.assertEqual(history_from(RoomHistory(epoch=EPOCH), 50), 1)

    def test_none_asked(self) -> None:
        self.assertEqual(history_from(filled(10), 0), 11)

    def test_the_last_n(self) -> None:
        self.assertEqual(history_from(filled(100), 50), 51)
        self.assertEqual(history_from(filled(100), 1), 100)
        self.assertEqual(history_from(filled(100), 100), 1)

    def test_no_older_than_held(self) -> None:
        self.assertEqual(history_from(filled(10), 50), 1)
        self.assertEqual(history_from(filled(100, max_messages=30), 50), 71)
        self.assertEqual(history_from(filled(100, max_messages=30), 30), 71)
        self.assertEqual(history_from(filled(100, max_messages=30), 29), 72)

    def test_negative_is_refused(self) -> None:
        self.assertRaises(ValueError, history_from, filled(1), -1)

    @given(count=st.integers(0, 60), max_messages=st.integers(1, 40), on_join=st.integers(0, 80))
    def test_the_offer_is_held_and_repairs_without_gone(self, count: int, max_messages: int, on_join: int) -> None:
        history = filled(count, max_messages=max_messages)
        start = history_from(history, on_join)
        offered = list(range(start, history.latest + 1))
        self.assertEqual(len(offered), min(on_join, history.message_count))
        if offered:
            self.assertIsNone(serve_repair(history, start, history.latest).gone)


class DuplicateWindowTests(SynchronousTestCase):
    def test_new_then_duplicate(self) -> None:
        window = DuplicateWindow()
        self.assertEqual((window.highest, window.check(1)), (0, Verdict.NEW))
        window.record(1, 7, 1000)
        self.assertEqual((window.highest, window.check(1)), (1, Duplicate(7, 1000)))
        self.assertEqual(window.check(2), Verdict.NEW)
        self.assertEqual(window.check(SEQ_MAX), Verdict.NEW)

    def test_out_of_order_within_the_window(self) -> None:
        window = DuplicateWindow()
        window.record(10, 1, 100)
        for message_id in range(1, 10):
            self.assertEqual(window.check(message_id), Verdict.NEW, message_id)
        window.record(5, 2, 200)
        self.assertEqual(
            (window.check(5), window.check(10), window.check(6)), (Duplicate(2, 200), Duplicate(1, 100), Verdict.NEW)
        )
        self.assertEqual(window.highest, 10)

    def test_the_window_edge(self) -> None:
        window = DuplicateWindow()
        highest = 1000
        lowest = highest - DUPLICATE_WINDOW + 1
        for message_id in (lowest - 1, lowest, highest):
            window.record(message_id, message_id, 0)
        self.assertEqual(window.check(lowest - 1), Verdict.STALE)
        self.assertEqual(window.check(1), Verdict.STALE)
        self.assertEqual(window.check(lowest), Duplicate(lowest, 0))
        self.assertEqual(window.check(lowest + 1), Verdict.NEW)
        self.assertEqual(window.check(highest), Duplicate(highest, 0))
        self.assertEqual(window.check(highest + 1), Verdict.NEW)
        self.assertEqual(window.remembered(), 2)

    def test_an_id_leaving_the_window_gives_up_its_slot(self) -> None:
        window = DuplicateWindow()
        window.record(2, 1, 10)
        self.assertEqual(window.check(2), Duplicate(1, 10))
        window.record(2 + DUPLICATE_WINDOW, 2, 20)
        self.assertEqual(window.check(2), Verdict.STALE)
        self.assertEqual(window.check(2 + DUPLICATE_WINDOW), Duplicate(2, 20))
        # A slot still holding an id that left the window says nothing of its new id.
        window.record(3, 3, 30)  # In the window: 3 > highest - DUPLICATE_WINDOW = 2.
        window.record(3 + DUPLICATE_WINDOW + DUPLICATE_WINDOW // 2, 4, 40)
        self.assertEqual(window.check(3 + DUPLICATE_WINDOW), Verdict.NEW)  # Slot 3 holds id 3, gone.
        self.assertEqual(window.check(3), Verdict.STALE)

    def test_recording_below_the_window_is_ignored(self) -> None:
        window = DuplicateWindow()
        window.record(1000, 1, 10)
        window.record(1000 - DUPLICATE_WINDOW, 2, 20)
        self.assertEqual((window.check(1000 - DUPLICATE_WINDOW), window.remembered()), (Verdict.STALE, 1))

    def test_sequential_sends_keep_the_last_window(self) -> None:
        window = DuplicateWindow()
        for message_id in range(1, 10_001):
            self.assertEqual(window.check(message_id), Verdict.NEW)
            window.record(message_id, message_id + 5, message_id * 2)
        self.assertEqual(window.remembered(), DUPLICATE_WINDOW)
        lowest = 10_000 - DUPLICATE_WINDOW + 1
        self.assertEqual(window.check(lowest), Duplicate(lowest + 5, lowest * 2))
        self.assertEqual(window.check(lowest - 1), Verdict.STALE)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.integers(1, 700), max_size=300))
    def test_against_the_model(self, ids: list[int]) -> None:
        # The model remembers every id it recorded; the window must agree
        # wherever the id is within DUPLICATE_WINDOW of the highest.
        window = DuplicateWindow()
        model: dict[int, Duplicate] = {}
        for seq, message_id in enumerate(ids, start=1):
            highest = max(model, default=0)
            verdict = window.check(message_id)
            if message_id > highest:
                expected: Verdict | Duplicate = Verdict.NEW
            elif message_id <= highest - DUPLICATE_WINDOW:
                expected = Verdict.STALE
            else:
                expected = model.get(message_id, Verdict.NEW)
            self.assertEqual(verdict, expected, (message_id, highest))
            if verdict is Verdict.NEW:
                window.record(message_id, seq, seq * 3)
                model[message_id] = Duplicate(seq, seq * 3)
            self.assertEqual(window.highest, max(model, default=0))
            self.assertEqual(len(window._slots), 3 * DUPLICATE_WINDOW)


class RoomWindowsTests(SynchronousTestCase):
    def test_a_member_coming_back_gets_its_window_back(self) -> None:
        windows = RoomWindows()
        window = windows.enter("client-1")
        window.record(1, 1, 10)
        self.assertIs(windows.window("client-1"), window)
        windows.leave("client-1")
        self.assertEqual((windows.live, windows.departed, windows.window("client-1")), (0, 1, None))
        again = windows.enter("client-1")
        self.assertIs(again, window)
        self.assertEqual((again.check(1), windows.live, windows.departed), (Duplicate(1, 10), 1, 0))

    def test_a_window_left_without_keeping_is_forgotten(self) -> None:
        windows = RoomWindows()
        member = object()  # A membership's own key, for a client that gave no id.
        windows.enter(member).record(1, 1, 10)
        windows.leave(member, keep=False)
        self.assertEqual((windows.live, windows.departed), (0, 0))
        self.assertEqual(windows.enter(member).check(1), Verdict.NEW)

    def test_live_memberships_under_one_key_share_its_window(self) -> None:
        windows = RoomWindows()
        old = windows.enter("c")
        new = windows.enter("c")
        self.assertIs(old, new)
        windows.leave("c")  # The old membership times out; the new one goes on.
        self.assertEqual((windows.live, windows.departed, windows.window("c")), (1, 0, new))
        windows.leave("c")
        self.assertEqual((windows.live, windows.departed), (0, 1))

    def test_leaving_without_a_live_member_is_ignored(self) -> None:
        windows = RoomWindows()
        windows.leave("nobody")
        windows.enter("c")
        windows.leave("c")
        windows.leave("c")
        self.assertEqual((windows.live, windows.departed), (0, 1))

    def test_the_oldest_departed_go_first(self) -> None:
        windows = RoomWindows()
        for n in range(DEPARTED_WINDOWS):
            windows.enter(f"c{n}").record(1, n + 1, 0)
            windows.leave(f"c{n}")
        # c0 comes back and leaves again: now the newest departed.
        windows.enter("c0")
        windows.leave("c0")
        windows.enter("late")
        windows.leave("late")
        self.assertEqual(windows.departed, DEPARTED_WINDOWS)
        self.assertEqual(windows.enter("c1").check(1), Verdict.NEW)  # c1 left first of those kept: forgotten.
        self.assertEqual(windows.enter("c0").check(1), Duplicate(1, 0))
        self.assertEqual(windows.enter("c2").check(1), Duplicate(3, 0))

    def test_ten_thousand_departed_keep_at_most_the_limit(self) -> None:
        windows = RoomWindows()
        for n in range(10_000):
            windows.enter(f"client-{n}").record(1, n + 1, 0)
            windows.leave(f"client-{n}")
        self.assertEqual((windows.live, windows.departed), (0, DEPARTED_WINDOWS))
        # The last 64 are those kept.
        self.assertEqual(windows.enter("client-9999").check(1), Duplicate(10_000, 0))
        self.assertEqual(
            windows.enter(f"client-{10_000 - DEPARTED_WINDOWS}").check(1), Duplicate(10_000 - DEPARTED_WINDOWS + 1, 0)
        )
        self.assertEqual(windows.enter(f"client-{10_000 - DEPARTED_WINDOWS - 1}").check(1), Verdict.NEW)

    def test_no_departed_kept(self) -> None:
        windows = RoomWindows(departed_limit=0)
        windows.enter("c").record(1, 1, 0)
        windows.leave("c")
        self.assertEqual((windows.departed, windows.enter("c").check(1)), (0, Verdict.NEW))
        self.assertRaises(ValueError, RoomWindows, -1)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(st.sampled_from(["enter", "leave", "forget"]), st.integers(0, 12)),
            max_size=200,
        ),
        st.integers(0, 5),
    )
    def test_bounded_whatever_comes_and_goes(self, operations: list[tuple[str, int]], limit: int) -> None:
        windows = RoomWindows(departed_limit=limit)
        users: dict[int, int] = {}
        for operation, key in operations:
            if operation == "enter":
                windows.enter(key)
                users[key] = users.get(key, 0) + 1
            elif key in users:
                windows.leave(key, keep=operation == "leave")
                users[key] -= 1
                if not users[key]:
                    del users[key]
            else:
                windows.leave(key)
            self.assertEqual(windows.live, len(users))
            self.assertLessEqual(windows.departed, limit)
            for live in users:
                self.assertIsNotNone(windows.window(live))
            self.assertEqual(set(windows._live) & set(windows._departed), set())


class ModuleTests(SynchronousTestCase):
    def test_pure(self) -> None:
        # No clock, no I/O, no Twisted: the caller passes the time.
        import chatd.daemon.history as module

        with open(module.__file__) as source:
            text = source.read()
        self.assertIsNone(re.search(r"^\s*(from|import) (twisted|time|socket|asyncio)\b", text, re.MULTILINE))
