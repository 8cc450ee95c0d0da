"""Tests for chatd.daemon.ratelimit: token buckets alone, per key and per member, driven by a Clock."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.ratelimit import (
    DEFAULT_BYTE_BURST,
    DEFAULT_BYTES_PER_S,
    DEFAULT_JOIN_FAILURE_BURST,
    DEFAULT_JOIN_FAILURES_PER_S,
    DEFAULT_MESSAGE_BURST,
    DEFAULT_MESSAGES_PER_S,
    KeyedLimiter,
    MemberRateLimit,
    TokenBucket,
    is_loopback,
)

# Float rounding in refills may hand out a few ulps more than exact arithmetic would.
SLACK = 1e-9

# (seconds to wait before the request, its cost) sequences.
REQUESTS = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5, allow_nan=False),
        st.floats(min_value=0, max_value=30, allow_nan=False),
    ),
    max_size=80,
)
RATES = st.floats(min_value=0.01, max_value=100)
BURSTS = st.floats(min_value=0.5, max_value=20)


def drain(bucket: TokenBucket) -> int:
    """Take single tokens until refused; how many were taken."""
    taken = 0
    while bucket.take():
        taken += 1
    return taken


class TokenBucketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.bucket = TokenBucket(rate=4.0, burst=10.0, clock=self.clock)

    def test_starts_full(self) -> None:
        self.assertEqual(self.bucket.level, 10.0)

    def test_burst_then_refusal(self) -> None:
        self.assertEqual(drain(self.bucket), 10)
        self.assertFalse(self.bucket.take())
        self.assertEqual(self.bucket.level, 0.0)

    def test_refills_at_the_rate(self) -> None:
        drain(self.bucket)
        self.clock.advance(0.125)
        self.assertEqual(self.bucket.level, 0.5)
        self.assertFalse(self.bucket.take())
        self.clock.advance(0.125)
        self.assertTrue(self.bucket.take())
        self.assertFalse(self.bucket.take())
        self.clock.advance(1.0)
        self.assertEqual(drain(self.bucket), 4)

    def test_refill_capped_at_burst(self) -> None:
        drain(self.bucket)
        self.clock.advance(3600)
        self.assertEqual(self.bucket.level, 10.0)
        self.assertEqual(drain(self.bucket), 10)

    def test_refused_take_takes_nothing(self) -> None:
        self.assertTrue(self.bucket.take(7.5))
        self.assertFalse(self.bucket.take(3.0))
        self.assertEqual(self.bucket.level, 2.5)
        self.assertTrue(self.bucket.take(2.5))
        self.assertEqual(self.bucket.level, 0.0)

    def test_cost_over_burst_never_passes(self) -> None:
        self.assertFalse(self.bucket.take(10.5))
        self.clock.advance(10**6)
        self.assertFalse(self.bucket.take(10.5))
        self.assertEqual(self.bucket.wait_time(10.5), math.inf)
        self.assertEqual(self.bucket.level, 10.0)

    def test_cost_of_exactly_burst_passes_when_full(self) -> None:
        self.assertTrue(self.bucket.take(10.0))
        self.assertFalse(self.bucket.take(10.0))

    def test_wait_time_exact(self) -> None:
        self.assertEqual(self.bucket.wait_time(), 0.0)
        self.assertEqual(self.bucket.wait_time(10.0), 0.0)
        self.assertTrue(self.bucket.take(9.0))
        self.assertEqual(self.bucket.wait_time(1.0), 0.0)
        self.assertEqual(self.bucket.wait_time(3.0), 0.5)
        self.clock.advance(0.25)
        self.assertEqual(self.bucket.wait_time(3.0), 0.25)
        self.clock.advance(0.25)
        self.assertEqual(self.bucket.wait_time(3.0), 0.0)
        self.assertTrue(self.bucket.take(3.0))

    def test_waiting_wait_time_makes_take_pass(self) -> None:
        drain(self.bucket)
        wait = self.bucket.wait_time(6.0)
        self.assertEqual(wait, 1.5)
        self.clock.advance(wait)
        self.assertTrue(self.bucket.take(6.0))

    def test_zero_cost_always_passes(self) -> None:
        drain(self.bucket)
        self.assertTrue(self.bucket.take(0))
        self.assertEqual(self.bucket.wait_time(0), 0.0)

    def test_clock_stepping_back_neither_refills_nor_locks_out(self) -> None:
        """A wall clock stepped back counts as no time; refill resumes from the new reading."""
        self.clock.advance(1000)
        drain(self.bucket)
        self.clock.rightNow -= 500
        self.assertEqual(self.bucket.level, 0.0)
        self.clock.advance(0.25)
        self.assertEqual(self.bucket.level, 1.0)

    def test_invalid_arguments(self) -> None:
        for rate, burst in [(0, 1), (-1, 1), (1, 0), (1, -1), (math.nan, 1), (1, math.inf), (math.inf, 1)]:
            self.assertRaises(ValueError, TokenBucket, rate, burst, self.clock)
        for cost in [-1.0, math.nan, math.inf]:
            self.assertRaises(ValueError, self.bucket.take, cost)
            self.assertRaises(ValueError, self.bucket.wait_time, cost)
        self.assertEqual(self.bucket.level, 10.0)

    def test_rate_and_burst(self) -> None:
        self.assertEqual((self.bucket.rate, self.bucket.burst), (4.0, 10.0))

    @settings(max_examples=200, deadline=None)
    @given(rate=RATES, burst=BURSTS, requests=REQUESTS)
    def test_never_more_than_burst_plus_rate_times_elapsed(
        self, rate: float, burst: float, requests: list[tuple[float, float]]
    ) -> None:
        clock = Clock()
        bucket = TokenBucket(rate, burst, clock)
        passed = 0.0
        for wait, cost in requests:
            clock.advance(wait)
            if bucket.take(cost):
                passed += cost
            bound = burst + rate * clock.seconds()
            self.assertLessEqual(passed, bound * (1 + SLACK))

    @settings(max_examples=100, deadline=None)
    @given(rate=RATES, burst=st.integers(min_value=1, max_value=20), waits=st.lists(st.floats(0, 2), max_size=80))
    def test_passes_of_one_never_exceed_the_bound(self, rate: float, burst: int, waits: list[float]) -> None:
        clock = Clock()
        bucket = TokenBucket(rate, burst, clock)
        passes = 0
        for wait in waits:
            clock.advance(wait)
            passes += bucket.take()
            self.assertLessEqual(passes, math.floor((burst + rate * clock.seconds()) * (1 + SLACK)))


class KeyedLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter: KeyedLimiter[str] = KeyedLimiter(2.0, 4.0, self.clock, max_keys=3)

    def drain(self, key: str) -> int:
        taken = 0
        while self.limiter.take(key):
            taken += 1
        return taken

    def test_keys_are_isolated(self) -> None:
        self.assertEqual(self.drain("203.0.113.1"), 4)
        self.assertEqual(self.drain("203.0.113.2"), 4)
        self.assertFalse(self.limiter.take("203.0.113.1"))
        self.clock.advance(0.5)
        self.assertEqual(self.drain("203.0.113.1"), 1)
        self.assertEqual(self.drain("203.0.113.2"), 1)

    def test_wait_time(self) -> None:
        self.assertEqual(self.limiter.wait_time("a"), 0.0)
        self.assertEqual(len(self.limiter), 0, "asking creates no bucket")
        self.drain("a")
        self.assertEqual(self.limiter.wait_time("a"), 0.5)
        self.assertEqual(self.limiter.wait_time("a", 3.0), 1.5)
        self.assertEqual(self.limiter.wait_time("a", 5.0), math.inf)
        self.assertEqual(self.limiter.wait_time("b"), 0.0)

    def test_cost_over_burst_refused_without_a_bucket(self) -> None:
        self.assertFalse(self.limiter.take("a", 5.0))
        self.assertEqual(len(self.limiter), 0)

    def test_exempt_keys_always_pass_and_get_no_bucket(self) -> None:
        limiter: KeyedLimiter[str] = KeyedLimiter(2.0, 4.0, self.clock, max_keys=1, exempt=is_loopback)
        self.assertTrue(limiter.take("203.0.113.1", 4.0))
        for host in ["127.0.0.1", "::1", "::ffff:127.0.0.1"]:
            for _ in range(100):
                self.assertTrue(limiter.take(host, 4.0))
            self.assertEqual(limiter.wait_time(host, 400.0), 0.0)
        self.assertEqual(len(limiter), 1)
        self.assertFalse(limiter.take("203.0.113.1"))
        self.assertFalse(limiter.take("203.0.113.2"), "the one slot is busy")

    def test_full_buckets_carry_no_information_and_are_pruned(self) -> None:
        self.limiter.take("a")
        self.limiter.take("b", 4.0)
        self.limiter.take("c")
        self.clock.advance(0.5)
        self.assertEqual(self.limiter.prune(), 2)
        self.assertEqual(len(self.limiter), 1)
        self.assertEqual(self.limiter.wait_time("b", 4.0), 1.5)
        self.clock.advance(1.5)
        self.assertEqual(self.limiter.prune(), 1)
        self.assertEqual(len(self.limiter), 0)
        self.assertEqual(self.limiter.prune(), 0)

    def test_new_key_evicts_full_buckets(self) -> None:
        for key in "abc":
            self.limiter.take(key)
        self.clock.advance(0.5)
        self.assertTrue(self.limiter.take("d"))
        self.assertLessEqual(len(self.limiter), 3)
        self.assertEqual(self.drain("d"), 3)

    def test_new_key_refused_while_every_bucket_is_busy(self) -> None:
        """Fail closed for new keys: busy buckets are never evicted, so their debt is never forgiven."""
        for key in "abc":
            self.limiter.take(key, 4.0)
        self.assertFalse(self.limiter.take("d"))
        self.assertEqual(len(self.limiter), 3)
        self.assertEqual(self.limiter.wait_time("d"), 2.0, "until 'a', least recently seen, refills")
        self.clock.advance(1.0)
        self.assertTrue(self.limiter.take("b"), "known keys are still served")
        self.clock.advance(1.0)
        self.assertEqual(self.limiter.wait_time("d"), 0.0)
        self.assertTrue(self.limiter.take("d"))
        self.assertEqual(len(self.limiter), 2, "'a' and 'c' were full and dropped; 'b' is busy")

    def test_evicts_least_recently_seen(self) -> None:
        for key in "abc":
            self.limiter.take(key, 4.0)
        self.clock.advance(1.0)
        self.limiter.take("a")
        self.clock.advance(1.0)
        # 'b' is now the least recently seen and full; 'a' is not.
        self.assertTrue(self.limiter.take("d", 4.0))
        self.assertEqual(self.limiter.wait_time("a", 4.0), 0.5)
        self.assertEqual(self.limiter.wait_time("d", 4.0), 2.0)

    def test_memory_bound_under_a_flood_of_keys(self) -> None:
        """100,000 distinct keys, 2,000 a second: never more than max_keys buckets."""
        limiter: KeyedLimiter[int] = KeyedLimiter(10.0, 20.0, self.clock, max_keys=1000)
        largest = 0
        admitted = 0
        for key in range(100_000):
            if key % 2000 == 0:
                self.clock.advance(1.0)
            # Emptied, each bucket stays busy for 2 s.
            admitted += limiter.take(key, 20.0)
            largest = max(largest, len(limiter))
        self.assertEqual(largest, 1000)
        self.assertLess(admitted, 100_000, "some new keys were refused while all buckets were busy")
        # 50 s of flood; 1,000 buckets admitted, then none until they drain 2 s later.
        self.assertEqual(admitted, 25 * 1000, "room is made each time the oldest buckets refill")
        self.clock.advance(2.0)
        limiter.prune()
        self.assertEqual(len(limiter), 0)

    def test_memory_bound_with_the_default_limit(self) -> None:
        """A million distinct keys within one refill time: the default 100,000 buckets, no more."""
        limiter: KeyedLimiter[int] = KeyedLimiter(10.0, 20.0, self.clock)
        take = limiter.take
        admitted = sum(take(key) for key in range(1_000_000))
        self.assertEqual((admitted, len(limiter)), (100_000, limiter.max_keys))

    def test_invalid_max_keys(self) -> None:
        self.assertRaises(ValueError, KeyedLimiter, 1.0, 1.0, self.clock, max_keys=0)

    @settings(max_examples=150, deadline=None)
    @given(
        rate=RATES,
        burst=BURSTS,
        requests=st.lists(
            st.tuples(
                st.floats(min_value=0, max_value=2),
                st.sampled_from("abcde"),
                st.floats(min_value=0, max_value=10),
            ),
            max_size=80,
        ),
    )
    def test_eviction_never_forgives_debt(
        self, rate: float, burst: float, requests: list[tuple[float, str, float]]
    ) -> None:
        """Per key, passes never exceed burst + rate x elapsed, however keys come and go."""
        clock = Clock()
        limiter: KeyedLimiter[str] = KeyedLimiter(rate, burst, clock, max_keys=2)
        passed = dict.fromkeys("abcde", 0.0)
        for wait, key, cost in requests:
            clock.advance(wait)
            if limiter.take(key, cost):
                passed[key] += cost
            self.assertLessEqual(len(limiter), 2)
            self.assertLessEqual(passed[key], (burst + rate * clock.seconds()) * (1 + SLACK))


class IsLoopbackTests(SynchronousTestCase):
    def test_truth_table(self) -> None:
        table = {
            "127.0.0.1": True,
            "127.0.0.0": True,
            "127.255.255.254": True,
            "127.255.255.255": True,
            "::1": True,
            "0:0:0:0:0:0:0:1": True,
            "::1%lo": True,
            "::ffff:127.0.0.1": True,
            "::ffff:7f00:1": True,
            "::ffff:127.255.255.254": True,
            "128.0.0.1": False,
            "126.255.255.255": False,
            "0.0.0.0": False,
            "10.0.0.1": False,
            "::": False,
            "::2": False,
            "::ffff:128.0.0.1": False,
            "::127.0.0.1": False,
            "fe80::1%eth0": False,
            "localhost": False,
            "": False,
            "garbage": False,
            "127.1": False,
            "127.0.0.1:80": False,
            " 127.0.0.1": False,
            "127.0.0.1\x00": False,
            "[::1]": False,
        }
        self.assertEqual({host: is_loopback(host) for host in table}, table)

    @settings(max_examples=300, deadline=None)
    @given(host=st.text())
    def test_never_raises(self, host: str) -> None:
        self.assertIsInstance(is_loopback(host), bool)


class MemberRateLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        # 2 messages/s, burst 4; 100 bytes/s, burst 200.
        self.limit = MemberRateLimit(2.0, 4.0, 100.0, 200.0, self.clock)

    def test_message_limit(self) -> None:
        self.assertEqual([self.limit.allow(1) for _ in range(5)], [True] * 4 + [False])
        self.clock.advance(0.5)
        self.assertTrue(self.limit.allow(1))
        self.assertFalse(self.limit.allow(1))

    def test_byte_limit(self) -> None:
        self.assertTrue(self.limit.allow(150))
        self.assertFalse(self.limit.allow(60))
        self.assertTrue(self.limit.allow(50))
        self.clock.advance(0.5)
        self.assertFalse(self.limit.allow(51))
        self.assertTrue(self.limit.allow(50))

    def test_message_over_byte_burst_never_passes(self) -> None:
        self.assertFalse(self.limit.allow(201))
        self.assertEqual(self.limit.wait_time(201), math.inf)
        self.assertTrue(self.limit.allow(200))

    def test_refused_for_bytes_takes_no_message(self) -> None:
        self.assertTrue(self.limit.allow(200))
        for _ in range(10):
            self.assertFalse(self.limit.allow(1))
        self.clock.advance(0.0625)
        self.assertEqual([self.limit.allow(1) for _ in range(5)], [True] * 3 + [False] * 2)

    def test_refused_for_messages_takes_no_bytes(self) -> None:
        for _ in range(4):
            self.assertTrue(self.limit.allow(0))
        for _ in range(10):
            self.assertFalse(self.limit.allow(50))
        self.clock.advance(0.5)
        self.assertTrue(self.limit.allow(200))

    def test_wait_time_is_the_longer_of_the_two(self) -> None:
        self.assertEqual(self.limit.wait_time(200), 0.0)
        self.assertTrue(self.limit.allow(200))
        self.assertEqual(self.limit.wait_time(25), 0.25)
        self.assertEqual(self.limit.wait_time(0), 0.0)
        for _ in range(3):
            self.limit.allow(0)
        self.assertEqual(self.limit.wait_time(0), 0.5)

    def test_should_warn_only_while_throttled(self) -> None:
        self.assertFalse(self.limit.should_warn())
        self.assertTrue(self.limit.allow(200))
        self.assertFalse(self.limit.should_warn())
        self.assertFalse(self.limit.allow(1))
        self.clock.advance(10.0)
        self.assertTrue(self.limit.allow(1))
        self.assertFalse(self.limit.should_warn(), "a message passed since the refusal")

    def test_should_warn_at_most_once_per_interval(self) -> None:
        warnings = []
        # Flood for 12 s, 0.125 s apart: the bytes run out at 0.25 s, and
        # after that only one message in eight passes.
        for _ in range(96):
            if not self.limit.allow(100):
                if self.limit.should_warn():
                    warnings.append(self.clock.seconds())
                self.assertFalse(self.limit.should_warn(), "one warning per refusal at most")
            self.clock.advance(0.125)
        self.assertEqual(warnings, [0.25, 5.25, 10.25])

    def test_warns_again_after_a_pause_only_once_the_interval_passed(self) -> None:
        self.limit.allow(200)
        self.limit.allow(1)
        self.assertTrue(self.limit.should_warn())
        self.clock.advance(3.0)
        self.assertTrue(self.limit.allow(1))
        self.assertFalse(self.limit.should_warn())
        self.assertFalse(self.limit.allow(200))
        self.assertFalse(self.limit.should_warn(), "3 s after the last warning")
        self.clock.advance(2.0)
        self.assertFalse(self.limit.allow(1000))
        self.assertTrue(self.limit.should_warn())

    def test_custom_warn_interval(self) -> None:
        limit = MemberRateLimit(1.0, 1.0, 10.0, 10.0, self.clock, warn_interval=1.0)
        limit.allow(1)
        limit.allow(1)
        self.assertTrue(limit.should_warn())
        self.clock.advance(0.5)
        limit.allow(11)
        self.assertFalse(limit.should_warn())
        self.clock.advance(0.5)
        limit.allow(11)
        self.assertTrue(limit.should_warn())

    def test_invalid_arguments(self) -> None:
        self.assertRaises(ValueError, MemberRateLimit, 0.0, 1.0, 1.0, 1.0, self.clock)
        self.assertRaises(ValueError, MemberRateLimit, 1.0, 1.0, 1.0, 0.0, self.clock)
        self.assertRaises(ValueError, MemberRateLimit, 1.0, 1.0, 1.0, 1.0, self.clock, warn_interval=-1.0)
        self.assertRaises(ValueError, self.limit.allow, -1)


class DefaultsTests(SynchronousTestCase):
    def test_a_person_typing_never_hits_the_member_limit(self) -> None:
        """Ten 1 KiB lines a second for a minute, far beyond anyone's typing, all pass."""
        clock = Clock()
        limit = MemberRateLimit(
            DEFAULT_MESSAGES_PER_S, DEFAULT_MESSAGE_BURST, DEFAULT_BYTES_PER_S, DEFAULT_BYTE_BURST, clock
        )
        for _ in range(600):
            self.assertTrue(limit.allow(1024))
            clock.advance(0.1)

    def test_a_flooder_is_cut_to_the_rate(self) -> None:
        clock = Clock()
        limit = MemberRateLimit(
            DEFAULT_MESSAGES_PER_S, DEFAULT_MESSAGE_BURST, DEFAULT_BYTES_PER_S, DEFAULT_BYTE_BURST, clock
        )
        passed = 0
        # A message every 1/1024 s (exact in binary) from 0 s to 10 s inclusive.
        for _ in range(10 * 1024 + 1):
            passed += limit.allow(10)
            clock.advance(1 / 1024)
        self.assertEqual(passed, DEFAULT_MESSAGE_BURST + DEFAULT_MESSAGES_PER_S * 10)

    def test_a_password_guesser_gets_five_a_minute(self) -> None:
        clock = Clock()
        failures: KeyedLimiter[str] = KeyedLimiter(
            DEFAULT_JOIN_FAILURES_PER_S, DEFAULT_JOIN_FAILURE_BURST, clock, exempt=is_loopback
        )
        guesser = "203.0.113.9"
        for _ in range(5):
            self.assertTrue(failures.take(guesser))
        self.assertFalse(failures.take(guesser))
        self.assertAlmostEqual(failures.wait_time(guesser), 12.0)
        guesses = 0
        # Two guesses a second for ten minutes, each checked first, charged as failed.
        for _ in range(1200):
            clock.advance(0.5)
            if failures.wait_time(guesser) == 0:
                guesses += failures.take(guesser)
        self.assertIn(guesses, (49, 50), "one every 12 s; float rounding decides the last")
        self.assertTrue(failures.take("127.0.0.1"), "the local host is never limited")
