"""
Rate limits for abuse resistance: token buckets, alone, per key and per member.

Plain logic, like the room registry: time comes only from the injected
IReactorTime's ``seconds()``, buckets refill lazily from elapsed time (floats,
no timers, no DelayedCalls), and nothing here does I/O or logs. The daemon
decides what a refusal means (drop a message, close a connection, refuse a
join) and what, if anything, to log.

Memory and CPU are bounded:

- A ``TokenBucket`` is two floats plus shared references; ``take`` and
  ``wait_time`` are O(1).
- A ``KeyedLimiter`` holds one bucket per key it has seen recently, at most
  ``max_keys`` of them (about 250 bytes each with short string keys, so some
  25 MB at the default 100,000). A bucket that has refilled to full carries no
  information, so it is dropped: lazily, from the least recently seen end,
  whenever a new key arrives (amortised O(1): each bucket is dropped at most
  once per insertion), and all at once by ``prune()``, O(n), for the daemon's
  periodic sweep. A bucket that is not full is never evicted, since that would
  forgive its debt, and an attacker with many keys could reset their own
  buckets by cycling through them. When all ``max_keys`` buckets are busy --
  which means every one of those keys was seen within the last
  ``burst / rate`` seconds -- a new key is refused, not admitted: the limiter
  fails closed for new keys. That is the deliberate choice: under a flood of
  keys (spoofed or many source addresses) it keeps the daemon's memory and
  CPU bounded and keeps limiting the keys it already knows, at the price of
  refusing newcomers until buckets drain (``burst / rate`` seconds after the
  flood stops). Exempt keys (say, loopback) are never refused and get no
  bucket.
- A ``MemberRateLimit`` is two buckets and two floats, living and dying with
  its member, so the member limits bound their own memory.

Suggested defaults, the ``DEFAULT_*`` constants below. Each is what a person
typing, or a client reconnecting after a network blip, never reaches, and what
a flooder or password guesser reaches within seconds:

- per member: 20 messages/s, burst 40, and 64 KiB/s, burst 128 KiB. Nobody
  types 20 lines a second, and pasting a screenful at once stays inside the
  bursts; a script hammering a room is cut down to a trickle the room can
  bear.
- per source IP: 10 new TCP connections/s, burst 20 (a ``KeyedLimiter`` keyed
  by host, exempting ``is_loopback``). A client reconnects a few times a
  minute at worst, and a NAT full of people stays well under; a connection
  flood from one address is refused at ``buildProtocol`` before it costs a
  protocol instance.
- per source IP, failed joins: 5 per minute, burst 5 (rate ``5 / 60``).
  Charge one token per failed password check, and refuse an attempt without
  hashing when ``wait_time(host) > 0``. A person who mistypes a password five
  times running waits 12 seconds for a sixth try; a guesser gets 5 guesses a minute instead of as
  many as the CPU allows. If several checks from one host can be in flight at
  once, charge before the check instead, so that concurrent guesses are
  counted too; a person still never notices.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

DEFAULT_MESSAGES_PER_S = 20.0
DEFAULT_MESSAGE_BURST = 40.0
DEFAULT_BYTES_PER_S = 64.0 * 1024
DEFAULT_BYTE_BURST = 128.0 * 1024
DEFAULT_CONNECTIONS_PER_S = 10.0
"""New TCP connections per second per source IP."""
DEFAULT_CONNECTION_BURST = 20.0
DEFAULT_JOIN_FAILURES_PER_S = 5.0 / 60.0
"""Failed password checks per second per source IP: 5 a minute."""
DEFAULT_JOIN_FAILURE_BURST = 5.0
DEFAULT_WARN_INTERVAL = 5.0
"""Seconds between two "you are sending too fast" notices to one member."""
DEFAULT_MAX_KEYS = 100_000

K = TypeVar("K", bound=Hashable)


def _check_rate(rate: float, burst: float) -> None:
    # "not x > 0" also refuses NaN, which would make every comparison False.
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be positive and finite, not {rate!r}")
    if not (burst > 0 and math.isfinite(burst)):
        raise ValueError(f"burst must be positive and finite, not {burst!r}")


def _check_cost(cost: float) -> None:
    # A negative cost would add tokens, and NaN would pass no check at all.
    if not (cost >= 0 and math.isfinite(cost)):
        raise ValueError(f"cost must be zero or more and finite, not {cost!r}")


class TokenBucket:
    """
    Up to ``burst`` tokens, refilled at ``rate`` per second; starts full.

    The level is brought up to date only when asked for, from the time
    elapsed since the last update, so an idle bucket costs nothing.
    """

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, clock: IReactorTime) -> None:
        _check_rate(rate, burst)
        self._rate = float(rate)
        self._burst = float(burst)
        self._clock = clock
        self._tokens = self._burst
        self._last = clock.seconds()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def _refill(self) -> None:
        self._refill_at(self._clock.seconds())

    def _refill_at(self, now: float) -> None:
        elapsed = now - self._last
        # A wall clock can step backwards. Counting that as no time (and
        # restarting from now) is what keeps the bucket from refusing
        # everything until the clock catches up with the old stamp.
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._last = now

    @property
    def level(self) -> float:
        """The tokens available now."""
        self._refill()
        return self._tokens

    def take(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many, else take none and return False."""
        _check_cost(cost)
        self._refill()
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True

    def wait_time(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens will be available: 0 if now, infinity if never (cost over burst)."""
        _check_cost(cost)
        self._refill()
        missing = cost - self._tokens
        if missing <= 0:
            return 0.0
        if cost > self._burst:
            return math.inf
        return missing / self._rate


class KeyedLimiter(Generic[K]):
    """
    One token bucket per key (a source host, a member), in bounded memory.

    Buckets are kept least recently seen first, which is what makes lazy
    dropping O(1): a bucket whose key was last taken from at least
    ``burst / rate`` seconds ago is full, so full buckets gather at the front.
    See the module docstring for why a new key is refused, not admitted, when
    every one of ``max_keys`` buckets is still busy.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: IReactorTime,
        max_keys: int = DEFAULT_MAX_KEYS,
        exempt: Callable[[K], bool] | None = None,
    ) -> None:
        _check_rate(rate, burst)
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys!r}")
        self._rate = float(rate)
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._exempt = exempt
        # OrderedDict, not dict: popping from the front of a plain dict leaves
        # holes that every later look at the front must skip, O(n) per look.
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    @property
    def max_keys(self) -> int:
        return self._max_keys

    def __len__(self) -> int:
        """How many keys hold a bucket now."""
        return len(self._buckets)

    def take(self, key: K, cost: float = 1.0) -> bool:
        """
        Take ``cost`` tokens from ``key``'s bucket if it holds that many.

        Exempt keys always pass. A key with no bucket starts with a full one,
        unless ``max_keys`` busy buckets leave no room, when it is refused.
        """
        _check_cost(cost)
        if self._exempt is not None and self._exempt(key):
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            if cost > self._burst:
                # Refused whatever happens: no reason to make room for it.
                return False
            bucket = self._admit(key)
            if bucket is None:
                return False
        else:
            self._buckets.move_to_end(key)
        return bucket.take(cost)

    def wait_time(self, key: K, cost: float = 1.0) -> float:
        """
        Seconds until ``take(key, cost)`` would pass, if nothing else happens.

        For a key without a bucket while the limiter is full of busy ones,
        that is how long until the least recently seen bucket drains and
        makes room.
        """
        _check_cost(cost)
        if self._exempt is not None and self._exempt(key):
            return 0.0
        if cost > self._burst:
            return math.inf
        bucket = self._buckets.get(key)
        if bucket is not None:
            return bucket.wait_time(cost)
        if len(self._buckets) < self._max_keys:
            return 0.0
        oldest = next(iter(self._buckets.values()))
        return oldest.wait_time(self._burst)

    def prune(self) -> int:
        """Drop every bucket that has refilled to full; O(n), for a periodic sweep. Returns how many."""
        full = [key for key, bucket in self._buckets.items() if bucket.level >= self._burst]
        for key in full:
            del self._buckets[key]
        return len(full)

    def _drop_full_oldest(self) -> None:
        # Stops at the first busy bucket, so it costs O(1) beyond the buckets
        # it drops, and each bucket is dropped at most once.
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if bucket.level < self._burst:
                return
            del self._buckets[key]

    def _admit(self, key: K) -> TokenBucket | None:
        self._drop_full_oldest()
        if len(self._buckets) >= self._max_keys:
            return None
        bucket = TokenBucket(self._rate, self._burst, self._clock)
        self._buckets[key] = bucket
        return bucket


def is_loopback(host: str) -> bool:
    """
    Whether ``host`` is a loopback address: 127.0.0.0/8, ::1, or ::ffff:127.x.x.x.

    Anything else, names such as "localhost" included, is False: a name is not
    an address, and resolving it here would be I/O. Never raises.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # An IPv4 client of a dual-stack socket shows up IPv4-mapped, and
    # Python before 3.13 does not call ::ffff:127.0.0.1 loopback.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class MemberRateLimit:
    """
    One member's limit on messages per second and bytes per second.

    A message passes only if both buckets can pay for it, and then it is
    charged to both: a refused message costs nothing, so a member who pauses
    gets the full allowance back.
    """

    def __init__(
        self,
        messages_per_s: float,
        message_burst: float,
        bytes_per_s: float,
        byte_burst: float,
        clock: IReactorTime,
        warn_interval: float = DEFAULT_WARN_INTERVAL,
    ) -> None:
        if not (warn_interval >= 0 and math.isfinite(warn_interval)):
            raise ValueError(f"warn_interval must be zero or more and finite, not {warn_interval!r}")
        self._messages = TokenBucket(messages_per_s, message_burst, clock)
        self._bytes = TokenBucket(bytes_per_s, byte_burst, clock)
        self._clock = clock
        self._warn_interval = float(warn_interval)
        self._throttled = False
        self._warned_at: float | None = None

    def allow(self, size: int, now: float | None = None) -> bool:
        """
        Charge one message of ``size`` bytes if both limits allow it; else
        charge nothing. ``now`` is the clock's time when the caller has
        just read it (the relay, once per datagram); else it is read here.
        """
        if type(size) is not int or size < 0:
            _check_cost(size)
        # Runs for every relayed message, so it is written out: both buckets
        # are brought up to the same instant with one clock read (as
        # TokenBucket._refill_at does, without its calls), checked, and only
        # then charged.
        messages, size_bucket = self._messages, self._bytes
        if now is None:
            now = self._clock.seconds()
        elapsed = now - messages._last
        if elapsed > 0:
            level = messages._tokens + elapsed * messages._rate
            messages._tokens = level if level < messages._burst else messages._burst
        messages._last = now
        elapsed = now - size_bucket._last
        if elapsed > 0:
            level = size_bucket._tokens + elapsed * size_bucket._rate
            size_bucket._tokens = level if level < size_bucket._burst else size_bucket._burst
        size_bucket._last = now
        if messages._tokens >= 1 and size_bucket._tokens >= size:
            messages._tokens -= 1
            size_bucket._tokens -= size
            self._throttled = False
            return True
        self._throttled = True
        return False

    def wait_time(self, size: int) -> float:
        """Seconds until a message of ``size`` bytes would be allowed; infinity if it never will be."""
        return max(self._messages.wait_time(1), self._bytes.wait_time(size))

    def should_warn(self) -> bool:
        """
        True if the last message was refused and no warning was due in the last ``warn_interval`` seconds.

        Each True is taken as a warning sent, so the daemon can tell the member
        "you are sending too fast" without flooding them in turn.
        """
        if not self._throttled:
            return False
        now = self._clock.seconds()
        # A negative interval is the wall clock stepping back: warn rather
        # than stay silent until it catches up with the old stamp.
        if self._warned_at is not None and 0 <= now - self._warned_at < self._warn_interval:
            return False
        self._warned_at = now
        return True
