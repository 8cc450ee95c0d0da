"""
Reliable delivery on the relay: what the server does for members with the
"delivery" feature (docs/reliability.md, section 3; the frames are
chatd.protocol.delivery's, the room state chatd.daemon.history's).

The relay (chatd.daemon.relay) opens and checks every sealed frame, numbers
every message into its room's history and fans it out; it hands this
module's L{DeliveryRelay}:

- the frames a delivery member sent, by UDP or inside an operation 8 frame
  (L{DeliveryRelay.received}): SEND (relayed once whatever the copies, and
  acknowledged with SENT), REPAIR (POSTED again from the history, GONE for
  what it no longer holds), KEEPALIVE (which sets the member's path) and
  PROBE;
- the copies of a room message for the delivery members (L{DeliveryRelay.fan_out}):
  one POSTED body, sealed for each.

Every sealed frame for a delivery member goes out through L{DeliveryRelay.send}:
over the member's control connection (operation 8) when its path is TCP or
the frame is over MAX_NATIVE_DATAGRAM, by UDP otherwise. So no datagram
sent to such a member is over 1,200 bytes.

This module does not import the relay (the relay imports it): what it needs
of the relay is the L{RelayHost} protocol.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

from chatd.daemon.history import UNNUMBERED, Duplicate, DuplicateWindow, Verdict, serve_repair
from chatd.daemon.interfaces import INumberedLater
from chatd.daemon.rooms import Member, Room
from chatd.daemon.sockaddr import Address
from chatd.daemon.stats import DeliveryStats
from chatd.protocol.datagrams import FrameType
from chatd.protocol.delivery import (
    MAX_NATIVE_DATAGRAM,
    decode_range,
    decode_send,
    encode_latest,
    encode_range,
    encode_sent,
    pack_posted,
    send_text,
)
from chatd.protocol.payloads import decode_text

# Read from the module on the message path: an enum member read from its
# class costs about 65 ns in Python 3.11 (see chatd.daemon.relay).
_SEND = FrameType.SEND
_MESSAGE = FrameType.MESSAGE
_POSTED = FrameType.POSTED


class RelayHost(Protocol):
    """What L{DeliveryRelay} uses of the relay (RelayProtocol provides it)."""

    def relay_message(self, sender: Member, message: bytes) -> tuple[int, int] | None:
        """
        Check, number, store and fan out a message as any other (the C{/exit}
        command, the size and the rate limit included): its sequence number
        and time in milliseconds, or None for C{/exit}. Raises the
        ProtocolError it is dropped for.
        """

    def charge(self, member: Member, size: int) -> None:
        """Charge C{member}'s rate limit one message of C{size} bytes; RateLimitedError when it is used up."""

    def send_udp(self, address: Address, data: bytes) -> None:
        """Send one datagram, counted as sent or as a send error."""

    def seal_for(self, member: Member, frame_type: FrameType, body: bytes) -> bytes | None:
        """C{body} sealed for C{member}; None (a send error counted) when its key is spent."""

    def send_error(self) -> None:
        """Count a frame that could not be sent."""


class DeliveryGauges(NamedTuple):
    """The delivery gauges of the metrics, over all rooms (L{delivery_gauges})."""

    history_messages: int
    history_bytes: int
    members_on_tcp: int


def delivery_gauges(rooms: Iterable[Room]) -> DeliveryGauges:
    """
    The messages and bytes held by every room's history, and the delivery
    members whose path is TCP. Read at scrape time (from the metrics
    thread: it only reads attributes and the rooms' C{delivery_members}
    tuples, which the registry replaces whole).
    """
    messages = size = on_tcp = 0
    for room in rooms:
        history = room.history
        messages += history.message_count
        size += history.byte_count
        on_tcp += sum(1 for member in room.delivery_members if member.on_tcp)
    return DeliveryGauges(messages, size, on_tcp)


class DeliveryRelay:
    """The relay's side of reliable delivery: receiving a delivery member's frames and sending it sealed frames."""

    def __init__(self, host: RelayHost, stats: DeliveryStats) -> None:
        self._host = host
        self.stats = stats

    # -- receiving ------------------------------------------------------------

    def received(self, member: Member, frame_type: int, body: bytes, source: Address | None) -> None:
        """
        Act on an authenticated frame of a delivery member, whose type the
        relay has checked is one a delivery client may send. C{source} is
        where its datagram came from, None when it came inside an operation
        8 frame. Raises the ProtocolError it is dropped for.
        """
        if frame_type == _SEND:
            self._send_received(member, body)
        elif frame_type == _MESSAGE:
            # A delivery client may still send plain MESSAGEs: numbered and relayed, never acknowledged.
            decode_text(body, "message")
            self._host.relay_message(member, body)
        elif frame_type == FrameType.REPAIR:
            self._repair(member, body)
        elif frame_type == FrameType.KEEPALIVE:
            self._host.charge(member, 0)
            # The transport of the last keepalive is the member's path.
            member.on_tcp = source is None
            self.send(member, FrameType.KEEPALIVE_ACK, encode_latest(member.room.history.latest))
        else:  # PROBE
            self._host.charge(member, 0)
            ack = encode_latest(member.room.history.latest)
            if source is None:
                # Not what clients do (a probe asks whether UDP works), but
                # answered all the same, along the member's path.
                self.send(member, FrameType.KEEPALIVE_ACK, ack)
            else:
                # By UDP to where it came from, whatever the path, which it never moves.
                self._send_udp(member, source, FrameType.KEEPALIVE_ACK, ack)

    def _send_received(self, member: Member, body: bytes) -> None:
        send = decode_send(body)
        window = member.window
        assert window is not None
        verdict = window.check(send.message_id)
        if isinstance(verdict, Duplicate):
            # A retransmission: not relayed again, but acknowledged again,
            # for the cost of a keepalive (so duplicates cannot flood).
            self.stats.duplicates += 1
            self._host.charge(member, 0)
            if verdict.seq == UNNUMBERED:
                # Its first copy is being stored (a cluster room): acknowledged once it is.
                return
            self.send(member, FrameType.SENT, encode_sent(send.message_id, verdict.seq, verdict.time_ms))
        elif verdict is Verdict.STALE:
            # So late it cannot be told from a forgery: nothing to answer.
            self.stats.duplicates += 1
        else:
            history = member.room.history
            shared = INumberedLater.providedBy(history)
            key = member.window_key
            if shared and isinstance(key, tuple):
                # A cluster room: the log carries the ids, so that a node this
                # member resumes on knows this message when it is sent again.
                INumberedLater(history).tag_next(key[1], send.message_id)
            try:
                numbered = self._host.relay_message(member, send_text(body))
            finally:
                if shared:
                    # Refused before it was appended (too fast, too long): the
                    # ids must not go with the next message of the room.
                    INumberedLater(history).tag_next("", 0)
            if numbered is None:
                # /exit: the member has left; there is nobody to acknowledge.
                return
            seq, time_ms = numbered
            if seq == UNNUMBERED:
                # A cluster room: the shared log numbers it, and the SENT
                # waits until it is stored there (never before).
                # Until then a copy sent again is a duplicate, not posted twice.
                window.record(send.message_id, UNNUMBERED, time_ms)
                later = INumberedLater(member.room.history).when_numbered()
                later.addCallback(self._numbered, member, window, send.message_id, time_ms)
                return
            window.record(send.message_id, seq, time_ms)
            self.send(member, FrameType.SENT, encode_sent(send.message_id, seq, time_ms))

    def _numbered(
        self, seq: int | None, member: Member, window: DuplicateWindow, message_id: int, time_ms: int
    ) -> None:
        """A cluster room's message got its number (None: it could not be stored, so no SENT)."""
        if seq is None:
            # Not stored: nothing acknowledged, and the client's next copy is posted again.
            window.forget(message_id)
            return
        window.record(message_id, seq, time_ms)
        if member.window is not window:
            # The member has gone (its window stays for a client that comes back).
            return
        self.send(member, FrameType.SENT, encode_sent(message_id, seq, time_ms))

    def _repair(self, member: Member, body: bytes) -> None:
        wanted = decode_range(body)
        repair = serve_repair(member.room.history, wanted.first, wanted.last)
        # Charged before anything is sent: a repair the limit refuses sends nothing.
        self._host.charge(member, sum(entry.size for entry in repair.entries))
        if repair.gone is not None:
            # First, so that the client closes the older gap before the
            # messages after it arrive.
            self.stats.gone += 1
            self.send(member, FrameType.GONE, encode_range(repair.gone.first, repair.gone.last))
        for entry in repair.entries:
            self.send(member, FrameType.POSTED, pack_posted(entry.seq, entry.time_ms, entry.name, entry.text))
        self.stats.repaired += len(repair.entries)

    # -- sending --------------------------------------------------------------

    def fan_out(
        self,
        members: tuple[Member, ...],
        sender: Member | None,
        seq: int,
        time_ms: int,
        message: bytes,
        name: bytes = b"",
    ) -> None:
        """
        A room message to its delivery members but its sender: one POSTED
        body, sealed for each. Nothing for a message not numbered yet (a
        cluster room's: its POSTED go out when the room log's copy comes
        back). C{name} is the sender's when it is not a member here.
        """
        if seq == UNNUMBERED:
            return
        body = pack_posted(seq, time_ms, sender.name_bytes if sender is not None else name, message)
        for member in members:
            if member is sender:
                continue
            if member.address is None and not member.on_tcp:
                # Not reachable yet (no datagram, no keepalive over TCP):
                # its first KEEPALIVE_ACK tells it the latest, and it repairs.
                continue
            self.send(member, _POSTED, body)

    def send(self, member: Member, frame_type: FrameType, body: bytes) -> None:
        """Seal a frame for a delivery member and send it along its path (or over TCP, if too large for UDP)."""
        data = self._host.seal_for(member, frame_type, body)
        if data is None:
            return
        if member.on_tcp or len(data) > MAX_NATIVE_DATAGRAM:
            self._tunnel(member, data)
        elif member.address is None:
            self._host.send_error()
        else:
            self._host.send_udp(member.address, data)

    def _send_udp(self, member: Member, address: Address, frame_type: FrameType, body: bytes) -> None:
        """Seal a small frame (a keepalive answer) and send it by UDP to C{address}, whatever the path."""
        data = self._host.seal_for(member, frame_type, body)
        if data is not None:
            self._host.send_udp(address, data)

    def _tunnel(self, member: Member, data: bytes) -> None:
        connection = member.connection
        if connection is None or not connection.send_datagram(data):
            # Lost for now: the member repairs once it is back.
            self._host.send_error()
            return
        self.stats.tunneled_out += 1
