"""
Tests for chatd.daemon.cluster.envelope: every kind of envelope survives a
round trip (hypothesis), the log's sequence-number splice is the encoding
with that number, and bytes that are not an envelope of this version give
one clear EnvelopeError, never another exception; a POSTED_BATCH (what
the log's script publishes for several messages of a room) splits into its
POSTED in order, and the batcher's templates are the codec's; a node's own
messages coming back are known from their bytes (own_posted, is_echo), and
nothing else is taken for them.
"""

from __future__ import annotations

import contextlib
import dataclasses

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.cluster.envelope import (
    SEQ_OFFSET,
    SEQ_SIZE,
    VERSION,
    Envelope,
    EnvelopeError,
    Kind,
    Notice,
    NoticeKind,
    Posted,
    RoomClosed,
    TemplateFramer,
    decode,
    decode_all,
    encode,
    encode_batch,
    framed,
    is_echo,
    origin_field,
    own_posted,
    posted_template,
    room_channel,
    with_seq,
)
from chatd.daemon.history import HistoryEntry
from chatd.protocol.errors import ChatError

EPOCH = "0123456789abcdef"

epochs = st.text("0123456789abcdef", min_size=16, max_size=16)
names = st.text(max_size=40)
u64 = st.integers(0, 2**64 - 1)

posted = st.builds(
    Posted,
    room=names,
    epoch=epochs,
    seq=u64,
    time_ms=u64,
    name=st.binary(max_size=255),
    text=st.binary(max_size=5000),
    origin=names,
    client=names,
    message_id=u64,
)
notices = st.builds(
    Notice,
    room=names,
    epoch=epochs,
    kind=st.sampled_from(NoticeKind),
    member=names,
    origin=names,
    reason=names,
    members=st.none() | st.lists(names, max_size=20).map(tuple),
    host=st.none() | names.filter(bool),
)
closes = st.builds(RoomClosed, room=names, epoch=epochs, origin=names, reason=names, member=names)
envelopes: st.SearchStrategy[Envelope] = posted | notices | closes


def a_message(seq: int = 7) -> Posted:
    return Posted("lobby", EPOCH, seq, 1_700_000_000_000, b"ann", "hé".encode(), "node-a", "c1", 3)


class RoundTrips(SynchronousTestCase):
    @given(envelopes)
    def test_every_envelope_decodes_to_itself(self, envelope: Envelope) -> None:
        data = encode(envelope)
        self.assertEqual(data[0], VERSION)
        self.assertEqual(decode(data), envelope)

    @given(posted, st.integers(1, 2**64 - 1))
    def test_the_logs_splice_is_the_encoding_with_that_number(self, message: Posted, seq: int) -> None:
        template = posted_template(message)
        self.assertEqual(template[SEQ_OFFSET : SEQ_OFFSET + SEQ_SIZE], bytes(SEQ_SIZE))
        numbered = with_seq(template, seq)
        self.assertEqual(decode(numbered), dataclasses.replace(message, seq=seq))

    def test_a_posted_message_is_a_history_entry(self) -> None:
        self.assertEqual(a_message(9).entry(), HistoryEntry(9, 1_700_000_000_000, b"ann", "hé".encode()))

    def test_channel_names_the_prefix_and_the_room(self) -> None:
        self.assertEqual(room_channel("chatd", "lobby"), b"chatd:room:lobby")
        self.assertNotEqual(room_channel("staging", "lobby"), room_channel("chatd", "lobby"))


class Refusals(SynchronousTestCase):
    def refused(self, data: bytes, says: str) -> None:
        with self.assertRaises(EnvelopeError) as caught:
            decode(data)
        self.assertIn(says, str(caught.exception))
        self.assertIsInstance(caught.exception, ChatError)

    def test_too_short(self) -> None:
        self.refused(b"", "too short")
        self.refused(bytes([VERSION]), "too short")

    def test_another_version(self) -> None:
        data = encode(a_message())
        self.refused(bytes([VERSION + 1]) + data[1:], f"version {VERSION + 1}")

    def test_unknown_kind(self) -> None:
        self.refused(bytes([VERSION, 99]), "kind 99")

    def test_truncated(self) -> None:
        data = encode(a_message())
        for length in range(2, len(data)):
            self.refused(data[:length], "truncated")

    def test_trailing_bytes(self) -> None:
        self.refused(encode(a_message()) + b"x", "1 bytes after its end")

    def test_text_that_is_not_utf8(self) -> None:
        data = encode(RoomClosed("lobby", EPOCH, "node-a"))
        # The room is the first str16 after the fixed part (2 + 8 bytes): "lobby" -> "\xffobby".
        self.refused(data[:12] + b"\xff" + data[13:], "not UTF-8")

    def test_unknown_notice_kind_and_flag(self) -> None:
        data = bytearray(encode(Notice("lobby", EPOCH, NoticeKind.JOINED, "ann", "node-a")))
        data[10] = 77
        self.refused(bytes(data), "notice kind 77")
        data[10], data[11] = NoticeKind.JOINED.value, 2
        self.refused(bytes(data), "flag is 2")

    @given(st.binary(max_size=200))
    def test_any_bytes_decode_or_raise_envelope_error(self, data: bytes) -> None:
        with contextlib.suppress(EnvelopeError):
            decode(data)

    @given(envelopes, st.data())
    def test_any_damage_decodes_or_raises_envelope_error(self, envelope: Envelope, data: st.DataObject) -> None:
        encoded = bytearray(encode(envelope))
        at = data.draw(st.integers(0, len(encoded) - 1))
        encoded[at] = data.draw(st.integers(0, 255))
        with contextlib.suppress(EnvelopeError):
            decode(bytes(encoded))


class EncodingRefusals(SynchronousTestCase):
    def test_an_epoch_that_is_not_16_hex_characters(self) -> None:
        for epoch in ("", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdefa"):
            with self.assertRaises(ValueError):
                encode(RoomClosed("lobby", epoch, "node-a"))

    def test_numbers_out_of_range(self) -> None:
        with self.assertRaises(ValueError):
            encode(Posted("lobby", EPOCH, 2**64, 0, b"a", b"b", "n"))
        with self.assertRaises(ValueError):
            encode(Posted("lobby", EPOCH, 1, -1, b"a", b"b", "n"))
        with self.assertRaises(ValueError):
            with_seq(posted_template(a_message()), 0)

    def test_a_name_too_long(self) -> None:
        with self.assertRaises(ValueError):
            encode(Posted("lobby", EPOCH, 1, 0, b"a" * 70_000, b"b", "n"))


def one_room(messages: list[Posted]) -> list[Posted]:
    """The messages made one room's and one incarnation's, numbered 1, 2, ... in order."""
    return [dataclasses.replace(message, room="lobby", epoch=EPOCH, seq=seq) for seq, message in enumerate(messages, 1)]


class Batches(SynchronousTestCase):
    @given(st.lists(posted, min_size=1, max_size=8))
    def test_a_batch_decodes_to_its_posted_in_order(self, messages: list[Posted]) -> None:
        batch = one_room(messages)
        data = encode_batch([encode(message) for message in batch])
        self.assertEqual(data[:2], bytes([VERSION, Kind.POSTED_BATCH.value]))
        self.assertEqual(decode_all(data), batch)

    @given(envelopes)
    def test_a_single_envelope_decodes_all_to_itself(self, envelope: Envelope) -> None:
        self.assertEqual(decode_all(encode(envelope)), [envelope])

    def test_decode_refuses_a_batch_decode_all_reads_it(self) -> None:
        data = encode_batch([encode(a_message(1)), encode(a_message(2))])
        with self.assertRaises(EnvelopeError) as caught:
            decode(data)
        self.assertIn("decode_all", str(caught.exception))

    def test_a_damaged_batch_is_refused_whole(self) -> None:
        data = encode_batch([encode(a_message(1)), encode(a_message(2))])
        for length in range(2, len(data)):
            with self.assertRaises(EnvelopeError):
                decode_all(data[:length])
        with self.assertRaises(EnvelopeError):
            decode_all(data + b"x")
        with self.assertRaises(EnvelopeError):
            decode_all(bytes([VERSION, Kind.POSTED_BATCH.value, 0, 0]))

    def test_a_batch_of_another_room_or_kind_is_refused(self) -> None:
        other = dataclasses.replace(a_message(2), room="elsewhere")
        with self.assertRaises(EnvelopeError):
            decode_all(encode_batch([encode(a_message(1)), encode(other)]))
        closed = RoomClosed("lobby", EPOCH, "node-a")
        with self.assertRaises(EnvelopeError):
            decode_all(encode_batch([encode(a_message(1)), encode(closed)]))

    @given(st.binary(max_size=200))
    def test_any_bytes_decode_all_or_raise_envelope_error(self, data: bytes) -> None:
        with contextlib.suppress(EnvelopeError):
            decode_all(bytes([VERSION, Kind.POSTED_BATCH.value]) + data)

    @given(posted)
    def test_the_framers_template_is_the_codecs(self, message: Posted) -> None:
        framer = TemplateFramer(message.room, message.epoch, message.origin)
        made = framer.frame(message.time_ms, message.name, message.text, message.client, message.message_id)
        self.assertEqual(made, framed([posted_template(message)]))


def sent_and_back(messages: list[Posted], first: int) -> tuple[bytes, bytes]:
    """One room's messages as a node sends them (framed templates) and as the log's script publishes them."""
    batch = one_room(messages)
    sent = framed([posted_template(message) for message in batch])
    numbered = [with_seq(posted_template(message), first + index) for index, message in enumerate(batch)]
    back = numbered[0] if len(numbered) == 1 else encode_batch(numbered)
    return sent, back


class Echoes(SynchronousTestCase):
    """A node knows its own messages coming back on the bus from their bytes, without decoding them."""

    @given(st.lists(posted, min_size=1, max_size=6), st.integers(1, 2**40))
    def test_what_the_script_publishes_is_the_echo_of_what_was_sent(self, messages: list[Posted], first: int) -> None:
        sent, back = sent_and_back(messages, first)
        self.assertTrue(is_echo(back, sent, len(messages)))
        origin = one_room(messages)[0].origin
        self.assertEqual(own_posted(back, origin_field(origin)), (EPOCH, first, len(messages)))

    @given(st.lists(posted, min_size=1, max_size=4), st.data())
    def test_any_byte_changed_but_the_numbers_is_not_the_echo(
        self, messages: list[Posted], data: st.DataObject
    ) -> None:
        sent, back = sent_and_back(messages, 5)
        numbers: set[int] = set()
        if len(messages) == 1:
            numbers = set(range(SEQ_OFFSET, SEQ_OFFSET + SEQ_SIZE))
        else:
            at = 4
            while at < len(back):
                length = int.from_bytes(back[at : at + 4], "big")
                numbers |= set(range(at + 4 + SEQ_OFFSET, at + 4 + SEQ_OFFSET + SEQ_SIZE))
                at += 4 + length
        where = data.draw(st.integers(0, len(back) - 1).filter(lambda index: index not in numbers))
        damaged = bytearray(back)
        damaged[where] ^= data.draw(st.integers(1, 255))
        self.assertFalse(is_echo(bytes(damaged), sent, len(messages)))
        self.assertFalse(is_echo(back + b"x", sent, len(messages)))
        self.assertFalse(is_echo(back[:-1], sent, len(messages)))

    def test_another_nodes_or_what_is_not_posted_is_no_candidate(self) -> None:
        sent, back = sent_and_back([a_message(), a_message()], 1)
        self.assertIsNone(own_posted(back, origin_field("node-b")))
        self.assertIsNone(own_posted(back, origin_field("node")))
        self.assertIsNone(own_posted(encode(RoomClosed("lobby", EPOCH, "node-a")), origin_field("node-a")))
        for length in range(len(back)):
            own_posted(back[:length], origin_field("node-a"))
        self.assertFalse(is_echo(back, sent, 3))

    @given(st.binary(max_size=300), st.integers(1, 4))
    def test_any_bytes_are_a_candidate_or_not_never_an_error(self, data: bytes, count: int) -> None:
        sent, _ = sent_and_back([a_message()] * count, 1)
        for head in (b"", bytes([VERSION, Kind.POSTED.value]), bytes([VERSION, Kind.POSTED_BATCH.value, 0, count])):
            own_posted(head + data, origin_field("node-a"))
            is_echo(head + data, sent, count)
