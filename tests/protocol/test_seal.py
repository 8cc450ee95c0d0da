"""Tests for chatd.protocol.seal: sealed native frames and the replay window."""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from functools import partial

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import chatd.protocol.seal
from chatd.protocol.errors import (
    AuthenticationFailedError,
    MalformedFrameError,
    ProtocolError,
    ReplayedError,
    UnsupportedVersionError,
)
from chatd.protocol.seal import (
    DEFAULT_WINDOW,
    HEADER_SIZE,
    KEY_BYTES,
    OVERHEAD,
    REJECT_AFTER,
    REKEY_AFTER,
    TAG_SIZE,
    Direction,
    ReplayWindow,
    SealedHeader,
    Sealer,
    new_key,
    new_key_id,
    peek_header,
)

KEY = bytes(range(KEY_BYTES))
OTHER_KEY = bytes(range(1, KEY_BYTES + 1))
KEY_ID = 0x01020304

counters = st.one_of(st.just(0), st.just(REJECT_AFTER - 1), st.integers(min_value=0, max_value=REJECT_AFTER - 1))
key_ids = st.integers(min_value=0, max_value=2**32 - 1)
directions = st.sampled_from(Direction)
frame_types = st.integers(min_value=0, max_value=255)


def clear_header(key_id: int, counter: int) -> bytes:
    """The header as the layout table in the module docstring has it, built by hand."""
    return b"\x00\x01\x00" + key_id.to_bytes(4, "big") + counter.to_bytes(8, "big")


def flip(data: bytes, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


def refusal_for_byte(index: int) -> type[ProtocolError]:
    """What damage to byte `index` of a sealed frame must be refused as."""
    if index == 0:
        return MalformedFrameError
    if index in (1, 2):
        return UnsupportedVersionError
    return AuthenticationFailedError


class RefusalAssertions(SynchronousTestCase):
    def assert_refused_as(self, expected: type[ProtocolError], call: Callable[..., object], *args: object) -> None:
        """Like assertRaises, but the class must be exactly `expected`, not a relative."""
        try:
            call(*args)
        except ProtocolError as error:
            self.assertIs(type(error), expected, str(error))
        else:
            self.fail(f"{expected.__name__} not raised")


class ConstantsTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual(KEY_BYTES, 32)
        self.assertEqual(HEADER_SIZE, 15)
        self.assertEqual(TAG_SIZE, 16)
        self.assertEqual(OVERHEAD, 32)
        self.assertEqual(REKEY_AFTER, 2**60)
        self.assertEqual(REJECT_AFTER, 2**64 - 1 - 2**13)
        self.assertEqual(DEFAULT_WINDOW, 1024)
        self.assertEqual((Direction.TO_SERVER, Direction.TO_CLIENT), (0, 1))

    def test_rekey_comes_well_before_reject(self) -> None:
        self.assertLess(REKEY_AFTER, REJECT_AFTER)


class KeyTests(SynchronousTestCase):
    def test_new_key(self) -> None:
        keys = {new_key() for _ in range(20)}
        self.assertEqual(len(keys), 20)
        self.assertEqual({len(key) for key in keys}, {KEY_BYTES})

    def test_new_key_id_is_a_nonzero_u32(self) -> None:
        for _ in range(200):
            self.assertTrue(1 <= new_key_id() <= 2**32 - 1)

    def test_new_key_id_bounds(self) -> None:
        """The lowest and highest random draws still give a u32 that is not 0."""
        bounds: list[int] = []

        def randbelow(bound: int, draw: int) -> int:
            bounds.append(bound)
            return draw

        ids = []
        for draw in (0, 2**32 - 2):
            self.patch(secrets, "randbelow", partial(randbelow, draw=draw))
            ids.append(new_key_id())
        self.assertEqual(bounds, [2**32 - 1, 2**32 - 1])
        self.assertEqual(ids, [1, 2**32 - 1])

    def test_key_size_enforced(self) -> None:
        for size in (0, 16, 31, 33, 64):
            self.assertRaises(ValueError, Sealer, bytes(size))

    def test_cipher_built_once(self) -> None:
        """Building the cipher object is not free: once per Sealer, not per datagram."""
        built: list[bytes] = []

        def counting(key: bytes) -> ChaCha20Poly1305:
            built.append(key)
            return ChaCha20Poly1305(key)

        self.patch(chatd.protocol.seal, "ChaCha20Poly1305", counting)
        sealer = Sealer(KEY)
        for counter in range(5):
            sealer.open(Direction.TO_SERVER, sealer.seal(Direction.TO_SERVER, KEY_ID, counter, 1, b"x"))
        self.assertEqual(built, [KEY])


class SealTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sealer = Sealer(KEY)

    def test_layout(self) -> None:
        sealed = self.sealer.seal(Direction.TO_SERVER, KEY_ID, 7, 1, b"hello")
        self.assertEqual(sealed[:HEADER_SIZE], b"\x00\x01\x00\x01\x02\x03\x04\x00\x00\x00\x00\x00\x00\x00\x07")
        self.assertEqual(len(sealed), HEADER_SIZE + 1 + len(b"hello") + TAG_SIZE)
        self.assertEqual(len(sealed), OVERHEAD + len(b"hello"))

    def test_independent_construction(self) -> None:
        """
        The nonce is the direction (u32) and the counter (u64), the associated
        data is the clear header, and the plaintext is the frame type and the
        body: built here with the cipher directly, as another client would.
        """
        for direction in Direction:
            header = clear_header(KEY_ID, 2**40 + 3)
            nonce = struct.pack("!IQ", direction, 2**40 + 3)
            expected = header + ChaCha20Poly1305(KEY).encrypt(nonce, b"\x02" + b"body", header)
            self.assertEqual(self.sealer.seal(direction, KEY_ID, 2**40 + 3, 2, b"body"), expected)

    def test_known_answer(self) -> None:
        """A fixed vector for other implementations (from test_independent_construction's recipe)."""
        sealed = self.sealer.seal(Direction.TO_CLIENT, 1, 0, 3, b"hi")
        header, ciphertext, tag = "000100000000010000000000000000", "a82ef4", "466361a46920d5d696a56cb25c13f47e"
        self.assertEqual(sealed.hex(), header + ciphertext + tag)

    def test_every_frame_type(self) -> None:
        for frame_type in range(256):
            sealed = self.sealer.seal(Direction.TO_SERVER, KEY_ID, frame_type, frame_type, b"x")
            self.assertEqual(
                self.sealer.open(Direction.TO_SERVER, sealed), (SealedHeader(KEY_ID, frame_type, 0), frame_type, b"x")
            )

    def test_extreme_counters_and_sizes(self) -> None:
        for counter in (0, 1, REKEY_AFTER, REJECT_AFTER - 1):
            for size in (0, 1, 4000):
                body = secrets.token_bytes(size)
                sealed = self.sealer.seal(Direction.TO_CLIENT, KEY_ID, counter, 4, body)
                self.assertEqual(sealed[:HEADER_SIZE], clear_header(KEY_ID, counter))
                self.assertEqual(
                    self.sealer.open(Direction.TO_CLIENT, sealed), (SealedHeader(KEY_ID, counter, 0), 4, body)
                )

    @settings(max_examples=200, deadline=None)
    @given(
        direction=directions,
        key_id=key_ids,
        counter=counters,
        frame_type=frame_types,
        body=st.one_of(st.binary(max_size=64), st.binary(min_size=3900, max_size=4000)),
    )
    def test_round_trip(self, direction: Direction, key_id: int, counter: int, frame_type: int, body: bytes) -> None:
        sealed = self.sealer.seal(direction, key_id, counter, frame_type, body)
        self.assertEqual(sealed[:HEADER_SIZE], clear_header(key_id, counter))
        self.assertEqual(len(sealed), OVERHEAD + len(body))
        self.assertEqual(peek_header(sealed), SealedHeader(key_id, counter, 0))
        self.assertEqual(self.sealer.open(direction, sealed), (SealedHeader(key_id, counter, 0), frame_type, body))
        if len(body) >= 16:
            # Shorter bodies could turn up in the ciphertext by chance.
            self.assertNotIn(body, sealed)

    def test_token_not_on_the_wire(self) -> None:
        token = secrets.token_urlsafe(16)
        self.assertEqual(len(token), 22)
        body = b'{"token": "' + token.encode("ascii") + b'", "text": "hello"}'
        for direction in Direction:
            sealed = self.sealer.seal(direction, KEY_ID, 0, 1, body)
            self.assertNotIn(token.encode("ascii"), sealed)
            self.assertNotIn(b"hello", sealed)

    def test_frame_type_not_in_the_clear(self) -> None:
        """A message and a keepalive of the same size look alike: only the ciphertext differs."""
        message = self.sealer.seal(Direction.TO_SERVER, KEY_ID, 9, 1, b"")
        keepalive = self.sealer.seal(Direction.TO_SERVER, KEY_ID, 9, 2, b"")
        self.assertEqual(message[:HEADER_SIZE], keepalive[:HEADER_SIZE])
        self.assertEqual(len(message), len(keepalive))
        self.assertNotEqual(message, keepalive)

    def test_directions_never_share_a_nonce(self) -> None:
        """Same key, counter and plaintext in both directions: different keystreams."""
        to_server = self.sealer.seal(Direction.TO_SERVER, KEY_ID, 0, 1, bytes(64))
        to_client = self.sealer.seal(Direction.TO_CLIENT, KEY_ID, 0, 1, bytes(64))
        self.assertEqual(to_server[:HEADER_SIZE], to_client[:HEADER_SIZE])
        self.assertNotEqual(to_server[HEADER_SIZE:], to_client[HEADER_SIZE:])

    def test_counter_out_of_range_refused(self) -> None:
        for counter in (-1, REJECT_AFTER, REJECT_AFTER + 1, 2**64 - 1, 2**64):
            self.assertRaises(ValueError, self.sealer.seal, Direction.TO_SERVER, KEY_ID, counter, 1, b"")

    def test_key_id_out_of_range_refused(self) -> None:
        for key_id in (-1, 2**32):
            self.assertRaises(ValueError, self.sealer.seal, Direction.TO_SERVER, key_id, 0, 1, b"")

    def test_frame_type_out_of_range_refused(self) -> None:
        for frame_type in (-1, 256):
            self.assertRaises(ValueError, self.sealer.seal, Direction.TO_SERVER, KEY_ID, 0, frame_type, b"")


class TamperTests(RefusalAssertions):
    def setUp(self) -> None:
        self.sealer = Sealer(KEY)

    def test_every_bit_of_a_small_frame(self) -> None:
        sealed = self.sealer.seal(Direction.TO_SERVER, KEY_ID, 5, 1, b"hi")
        for bit in range(len(sealed) * 8):
            self.assert_refused_as(refusal_for_byte(bit // 8), self.sealer.open, Direction.TO_SERVER, flip(sealed, bit))

    @settings(max_examples=150, deadline=None)
    @given(
        direction=directions,
        counter=counters,
        body=st.binary(min_size=17, max_size=4000),
        data=st.data(),
    )
    def test_any_bit_of_a_larger_frame(
        self, direction: Direction, counter: int, body: bytes, data: st.DataObject
    ) -> None:
        sealed = self.sealer.seal(direction, KEY_ID, counter, 1, body)
        bit = data.draw(st.integers(min_value=0, max_value=len(sealed) * 8 - 1), label="bit")
        self.assert_refused_as(refusal_for_byte(bit // 8), self.sealer.open, direction, flip(sealed, bit))

    def test_wrong_key(self) -> None:
        sealed = self.sealer.seal(Direction.TO_SERVER, KEY_ID, 0, 1, b"hello")
        self.assert_refused_as(AuthenticationFailedError, Sealer(OTHER_KEY).open, Direction.TO_SERVER, sealed)
        self.assert_refused_as(AuthenticationFailedError, Sealer(new_key()).open, Direction.TO_SERVER, sealed)

    def test_wrong_direction(self) -> None:
        """A client's frame reflected back to it as if from the server does not open, nor the reverse."""
        for sent, opened in ((Direction.TO_SERVER, Direction.TO_CLIENT), (Direction.TO_CLIENT, Direction.TO_SERVER)):
            sealed = self.sealer.seal(sent, KEY_ID, 0, 1, b"hello")
            self.assert_refused_as(AuthenticationFailedError, self.sealer.open, opened, sealed)

    def test_truncated_at_every_length(self) -> None:
        """Shorter than a sealed frame can be: malformed; long enough: the tag fails."""
        sealed = self.sealer.seal(Direction.TO_SERVER, KEY_ID, 3, 1, b"a body of some length")
        for length in range(len(sealed)):
            expected = MalformedFrameError if length < OVERHEAD else AuthenticationFailedError
            self.assert_refused_as(expected, self.sealer.open, Direction.TO_SERVER, sealed[:length])

    def test_extended(self) -> None:
        sealed = self.sealer.seal(Direction.TO_SERVER, KEY_ID, 3, 1, b"body")
        for tail in (b"\x00", b"junk", bytes(TAG_SIZE)):
            self.assert_refused_as(AuthenticationFailedError, self.sealer.open, Direction.TO_SERVER, sealed + tail)

    def test_header_spliced_onto_another_ciphertext(self) -> None:
        """The header is bound to its ciphertext: moving a ciphertext to another counter fails."""
        first = self.sealer.seal(Direction.TO_SERVER, KEY_ID, 1, 1, b"first")
        second = self.sealer.seal(Direction.TO_SERVER, KEY_ID, 2, 1, b"other")
        self.assert_refused_as(
            AuthenticationFailedError,
            self.sealer.open,
            Direction.TO_SERVER,
            first[:HEADER_SIZE] + second[HEADER_SIZE:],
        )


class PeekHeaderTests(RefusalAssertions):
    def test_valid(self) -> None:
        frame = clear_header(KEY_ID, 2**63) + bytes(1 + TAG_SIZE)
        self.assertEqual(peek_header(frame), SealedHeader(KEY_ID, 2**63, 0))

    def test_does_not_authenticate(self) -> None:
        """peek_header only parses: a garbage tag is open()'s business."""
        frame = clear_header(0, 0) + secrets.token_bytes(100)
        self.assertEqual(peek_header(frame), SealedHeader(0, 0, 0))

    def test_refusals(self) -> None:
        body = bytes(1 + TAG_SIZE)
        cases: list[tuple[bytes, type[ProtocolError]]] = [
            (b"", MalformedFrameError),
            (b"\x00", MalformedFrameError),
            (b"\x00\x01", MalformedFrameError),
            (b"\x00\x01\x00", MalformedFrameError),
            (clear_header(1, 1) + bytes(TAG_SIZE), MalformedFrameError),
            (b"\x04\x03hogetokhello" + bytes(OVERHEAD), MalformedFrameError),
            (b"\x01" + clear_header(1, 1)[1:] + body, MalformedFrameError),
            (b"\x00\x02\x00" + bytes(12) + body, UnsupportedVersionError),
            (b"\x00\x00\x00" + bytes(12) + body, UnsupportedVersionError),
            (b"\x00\xff\x00" + bytes(12) + body, UnsupportedVersionError),
            (b"\x00\x01\x01" + bytes(12) + body, UnsupportedVersionError),
            (b"\x00\x01\x80" + bytes(12) + body, UnsupportedVersionError),
        ]
        for frame, expected in cases:
            self.assert_refused_as(expected, peek_header, frame)

    def test_version_and_flags_judged_before_length(self) -> None:
        """A later version may define shorter frames: it is still unsupported_version, not malformed."""
        self.assert_refused_as(UnsupportedVersionError, peek_header, b"\x00\x02")
        self.assert_refused_as(UnsupportedVersionError, peek_header, b"\x00\x01\x01")

    def test_open_refuses_as_peek_header(self) -> None:
        sealer = Sealer(KEY)
        self.assert_refused_as(MalformedFrameError, sealer.open, Direction.TO_SERVER, b"")
        self.assert_refused_as(UnsupportedVersionError, sealer.open, Direction.TO_SERVER, b"\x00\x02" + bytes(OVERHEAD))


arbitrary_datagrams = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda tail: b"\x00\x01\x00" + tail, st.binary(max_size=80)),
    st.builds(lambda head, tail: bytes(head) + tail, st.lists(st.integers(0, 2), max_size=3), st.binary(max_size=80)),
)


class ArbitraryBytesTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(data=arbitrary_datagrams)
    def test_peek_header_raises_only_protocol_errors(self, data: bytes) -> None:
        try:
            header = peek_header(data)
        except ProtocolError:
            return
        self.assertGreaterEqual(len(data), OVERHEAD)
        key_id, counter = struct.unpack("!IQ", data[3:15])
        self.assertEqual(header, SealedHeader(key_id, counter, 0))

    @settings(max_examples=400, deadline=None)
    @given(data=arbitrary_datagrams, direction=directions)
    def test_open_raises_only_protocol_errors(self, data: bytes, direction: Direction) -> None:
        """Not one of these can be forged, so each is refused, and only with a ProtocolError."""
        self.assertRaises(ProtocolError, Sealer(KEY).open, direction, data)


class ReplayWindowTests(SynchronousTestCase):
    def assert_fresh(self, window: ReplayWindow, *counters: int) -> None:
        self.assertEqual([c for c in counters if not window.check(c)], [], "refused, but fresh")

    def assert_refused(self, window: ReplayWindow, *counters: int) -> None:
        self.assertEqual([c for c in counters if window.check(c)], [], "fresh, but seen or too old")

    def receive(self, window: ReplayWindow, *counters: int) -> None:
        for counter in counters:
            self.assertTrue(window.check(counter), counter)
            window.accept(counter)

    def test_default_size(self) -> None:
        self.assertEqual(ReplayWindow().size, DEFAULT_WINDOW)
        self.assertGreaterEqual(DEFAULT_WINDOW, 64)

    def test_size_must_be_positive(self) -> None:
        self.assertRaises(ValueError, ReplayWindow, 0)
        self.assertRaises(ValueError, ReplayWindow, -1)

    def test_in_order(self) -> None:
        window = ReplayWindow()
        self.receive(window, *range(3000))
        self.assert_refused(window, *range(3000))
        self.assert_fresh(window, 3000, 3001, 10**9)

    def test_first_counter_need_not_be_zero(self) -> None:
        window = ReplayWindow()
        self.receive(window, 5000)
        self.assert_fresh(window, 5000 - 1023, 4999, 5001)
        self.assert_refused(window, 5000, 5000 - 1024, 0)

    def test_replay_refused(self) -> None:
        window = ReplayWindow()
        self.receive(window, 0, 1, 2)
        self.assert_refused(window, 0, 1, 2)
        self.assertRaises(ValueError, window.accept, 1)

    def test_reordered_inside_the_window(self) -> None:
        window = ReplayWindow()
        self.receive(window, 10, 8, 9, 7)
        self.assert_refused(window, 10, 8, 9, 7)
        self.assert_fresh(window, *range(7), 11)

    def test_older_than_the_window(self) -> None:
        window = ReplayWindow(size=64)
        self.receive(window, 100)
        self.assert_fresh(window, 37)  # the oldest counter the window still covers: 100 - 63
        self.assert_refused(window, 36, 0)

    def test_window_edges_as_it_slides(self) -> None:
        size = DEFAULT_WINDOW
        window = ReplayWindow(size)
        self.receive(window, 100, 100 + size - 1)
        self.assert_refused(window, 100)  # still inside: remembered
        self.assert_fresh(window, 101)
        self.receive(window, 100 + size)
        self.assert_refused(window, 100)  # out of the window now
        self.assert_fresh(window, 101)  # the oldest counter still covered, never seen

    def test_jump_far_ahead(self) -> None:
        window = ReplayWindow()
        self.receive(window, *range(10), 10**6)
        self.assert_fresh(window, 10**6 - 1, 10**6 - 1023, 10**6 + 1)
        self.assert_refused(window, 5, 10**6, 10**6 - 1024)
        self.receive(window, 10**6 - 1)
        self.assert_refused(window, 10**6 - 1)

    def test_memory_is_bounded(self) -> None:
        """No per-counter growth: the bitmap never holds more than `size` bits, whatever the jumps."""
        window = ReplayWindow(size=64)
        self.receive(window, *range(0, 10_000, 7), 2**40, 2**40 - 3, REJECT_AFTER - 1)
        self.assertLessEqual(window._bitmap.bit_length(), 64)

    def test_check_without_accept_changes_nothing(self) -> None:
        window = ReplayWindow(size=16)
        self.receive(window, 20, 18)
        before = [window.check(c) for c in range(40)]
        for counter in (0, 18, 19, 21, 35, 10**9, REJECT_AFTER):
            window.check(counter)
        self.assertEqual([window.check(c) for c in range(40)], before)

    def test_reject_after(self) -> None:
        window = ReplayWindow()
        self.assert_refused(window, REJECT_AFTER, REJECT_AFTER + 1, 2**64 - 1, 2**64)
        self.assertRaises(ValueError, window.accept, REJECT_AFTER)
        self.receive(window, REJECT_AFTER - 1)
        self.assert_refused(window, REJECT_AFTER - 1, REJECT_AFTER)
        self.assert_fresh(window, REJECT_AFTER - 2)

    def test_negative_counters_refused(self) -> None:
        """No datagram carries one, but check() must not call one fresh either."""
        window = ReplayWindow()
        self.assert_refused(window, -1)
        self.receive(window, 3)
        self.assert_refused(window, -1, -5)
        self.assertRaises(ValueError, window.accept, -1)

    @settings(max_examples=300, deadline=None)
    @given(
        size=st.sampled_from([1, 2, 3, 8, 64, DEFAULT_WINDOW]),
        data=st.data(),
    )
    def test_against_a_set(self, size: int, data: st.DataObject) -> None:
        """
        Fresh iff below REJECT_AFTER, never accepted, and above
        max_seen - size. Some fresh counters are "forged": checked but never
        accepted, as when the tag fails.
        """
        counter = st.one_of(
            st.integers(min_value=0, max_value=4 * size),
            st.integers(min_value=REJECT_AFTER - 2 * size, max_value=2**64 - 1),
        )
        steps = data.draw(st.lists(st.tuples(counter, st.booleans()), max_size=200), label="steps")
        window = ReplayWindow(size)
        seen: set[int] = set()
        for value, authentic in steps:
            expected = value < REJECT_AFTER and value not in seen and (not seen or value > max(seen) - size)
            self.assertEqual(window.check(value), expected, value)
            if expected and authentic:
                window.accept(value)
                seen.add(value)
            elif not expected:
                self.assertRaises(ValueError, window.accept, value)
            self.assertLessEqual(window._bitmap.bit_length(), size)


class ReceiveProcedureTests(SynchronousTestCase):
    """The order the module docstring prescribes: peek, check, open, accept."""

    def setUp(self) -> None:
        self.client = Sealer(KEY)
        self.keys = {KEY_ID: Sealer(KEY)}
        self.window = ReplayWindow()

    def receive(self, datagram: bytes) -> tuple[int, bytes]:
        header = peek_header(datagram)
        sealer = self.keys[header.key_id]
        if not self.window.check(header.counter):
            raise ReplayedError(f"counter {header.counter}")
        _, frame_type, body = sealer.open(Direction.TO_SERVER, datagram)
        self.window.accept(header.counter)
        return frame_type, body

    def test_replayed_datagram_refused(self) -> None:
        sealed = self.client.seal(Direction.TO_SERVER, KEY_ID, 0, 1, b"hello")
        self.assertEqual(self.receive(sealed), (1, b"hello"))
        self.assertRaises(ReplayedError, self.receive, sealed)

    def test_forgery_does_not_move_the_window(self) -> None:
        """A forged counter far ahead fails the tag, and so cannot push real datagrams out of the window."""
        early = self.client.seal(Direction.TO_SERVER, KEY_ID, 1, 1, b"late but real")
        forged = bytearray(self.client.seal(Direction.TO_SERVER, KEY_ID, 0, 1, b"x"))
        forged[7:15] = (REJECT_AFTER - 1).to_bytes(8, "big")
        self.assertRaises(AuthenticationFailedError, self.receive, bytes(forged))
        self.assertEqual(self.receive(early), (1, b"late but real"))
