"""
The client core's UDP side, sans I/O: the member's key (and the one before a
rekey), sealing and opening datagrams, the keepalive schedule, and the early
keepalives ("probes") that tell within seconds that the UDP path is dead,
and when it works again.

L{UdpPath} is a part of L{chatd.client.core.ClientCore}: it keeps its own
state and returns L{Action}s; what a datagram's content means (a message, a
notice, a keepalive's answer) is the core's to say.
"""

from __future__ import annotations

from collections.abc import Callable

from chatd.client.actions import KEEPALIVE, PROBE, Action, CoreConfig, Emit, Timers
from chatd.client.events import UdpPathLost, UdpPathRestored
from chatd.protocol.datagrams import MAX_DATAGRAM, FrameType, check_relay_size
from chatd.protocol.errors import FrameTooLargeError, MalformedFrameError, MessageTooLongError, ProtocolError
from chatd.protocol.seal import OVERHEAD, Channel, Direction, peek_header

UDP_PROBE_MAX_INTERVAL = 10.0
"""The slowest probing gets (doubling from UDP_PROBE_INTERVAL) once the path is reported lost."""


def channel_from(key: tuple[bytes, int], rekey_after: int) -> Channel:
    """Our side of the UDP key the server handed out (create, join, rekey)."""
    secret, key_id = key
    try:
        return Channel(secret, key_id, Direction.TO_SERVER, rekey_after=rekey_after)
    except (ValueError, TypeError) as error:
        raise MalformedFrameError(f"the server's key is unusable: {error}") from None


def message_body(user: str, text: str) -> bytes:
    """C{text} as a message's body, if the server can relay it from C{user}; else MessageTooLongError."""
    body = text.encode("utf-8")
    try:
        check_relay_size(user, body)
    except FrameTooLargeError:
        raise MessageTooLongError(f"a message of {len(body)} bytes is too long to relay") from None
    # Our own sealed datagram must fit as well.
    if OVERHEAD + len(body) > MAX_DATAGRAM:
        raise MessageTooLongError(f"a message of {len(body)} bytes is too long to send")
    return body


class UdpPath:
    """
    The datagrams of one membership. C{send} seals and sends a datagram (the
    core's, which also decides on a rekey); C{in_room} says whether the
    member is in its room, the only time keepalives count as unanswered.
    """

    def __init__(
        self,
        config: CoreConfig,
        timers: Timers,
        send: Callable[[FrameType, bytes, float], list[Action]],
        in_room: Callable[[], bool],
    ) -> None:
        self._config = config
        self._timers = timers
        self._send = send
        self._in_room = in_room
        self.server_udp: tuple[str, int] | None = None
        self.channel: Channel | None = None
        self.previous_channel: Channel | None = None
        """The key before a rekey: the server's copies sealed under it may still arrive."""
        self.confirmed = False
        """The server has answered a keepalive since the room was entered."""
        self.lost = False
        """Keepalives went unanswered and UdpPathLost was emitted, and nothing has been heard since."""
        self.reports = True
        """
        Whether the path's loss and return are told (UdpPathLost, UdpPathRestored).
        The core turns it off while the "delivery" feature is granted: then its
        path monitor decides and tells (DeliveryPathChanged), and UDP being
        lost is no longer a loss of messages, only a change of path.
        """
        self.dropped = 0
        """Datagrams that did not authenticate, were replayed, or could not be read."""
        self._interval = 0.0
        self._keepalive_started = 0.0
        self._keepalives = 0
        self._unanswered_since: float | None = None
        """When the oldest keepalive not answered yet went out; None when all were answered."""
        self._probes_sent = 0
        self._heard_at = 0.0
        """When the last authenticated datagram from the server arrived (or the room was entered)."""

    # -- keys ------------------------------------------------------------------------------

    def entered(self, channel: Channel, keepalive_interval: float, now: float) -> list[Action]:
        """The room was entered under C{channel}: the keepalives start, the first at once."""
        self.channel = channel
        self.previous_channel = None
        self.confirmed = False
        self._heard_at = now
        self._unanswered_since = None
        self._probes_sent = 0
        self._interval = keepalive_interval
        self._keepalive_started = now
        self._keepalives = 0
        # At once: the first datagram is what registers our UDP address.
        return self.keepalive_due(now)

    def rekeyed(self, key: tuple[bytes, int]) -> None:
        """The server handed out a new key; its copies under the old one may still arrive."""
        self.previous_channel = self.channel
        self.channel = channel_from(key, self._config.rekey_after)

    # -- keepalives and probes -------------------------------------------------------------

    def keepalive_due(self, now: float) -> list[Action]:
        """The regular keepalive, and the timer of the next (on the schedule it started on, as LoopingCall)."""
        interval = self._interval
        self._keepalives = max(self._keepalives + 1, int((now - self._keepalive_started) / interval) + 1)
        next_at = self._keepalive_started + self._keepalives * interval
        return [*self.send_keepalive(now), self._timers.start(KEEPALIVE, max(0.0, next_at - now))]

    def send_keepalive(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._in_room():
            # Counted as unanswered before it goes, in case the answer is quick.
            if self._unanswered_since is None:
                self._unanswered_since = now
            if PROBE not in self._timers:
                actions.append(self._timers.start(PROBE, self._probe_delay()))
        return [*actions, *self._send(FrameType.KEEPALIVE, b"", now)]

    def _probe_delay(self) -> float:
        """
        Seconds before the next early keepalive: the probe interval while in
        doubt; once the path is reported lost, doubling up to a bound, so a
        path that stays dead costs few datagrams and one that comes back is
        noticed within UDP_PROBE_MAX_INTERVAL.
        """
        interval = self._config.udp_probe_interval
        if not self.lost:
            return interval
        slower = interval * 2.0 ** max(0, self._probes_sent - 2)
        return min(slower, max(UDP_PROBE_MAX_INTERVAL, interval))

    def probe_due(self, now: float) -> list[Action]:
        """A keepalive is still unanswered: say so once it has been too long, and try again."""
        if not self._in_room() or self._unanswered_since is None:
            return []
        actions: list[Action] = []
        if self.reports and not self.lost and now - self._unanswered_since >= self._config.udp_lost_after:
            self.lost = True
            actions.append(Emit(UdpPathLost(round(now - self._heard_at, 3))))
        self._probes_sent += 1
        return [*actions, *self.send_keepalive(now)]

    def stop(self) -> list[Action]:
        """
        No more keepalives. Unanswered ones say nothing about UDP while TCP is
        down too; a path reported lost stays so until a datagram arrives again.
        """
        self._unanswered_since = None
        return [*self._timers.cancel(KEEPALIVE), *self._timers.cancel(PROBE)]

    # -- what arrives ----------------------------------------------------------------------

    def open(self, data: bytes, source: tuple[str, int], now: float) -> tuple[int, bytes, list[Action]] | None:
        """
        A datagram from C{source}, opened: its frame type, its body, and what
        hearing from the server means for the path. None for one that is not
        the server's, or does not open (forged, replayed, damaged, or under a
        key just replaced: dropped, as the server drops such datagrams, and
        never answered).
        """
        if source != self.server_udp:
            return None
        opened = self.open_tunneled(data)
        if opened is None:
            return None
        return *opened, self._heard(now)

    def open_tunneled(self, data: bytes) -> tuple[int, bytes] | None:
        """
        A sealed frame, opened with the key (and replay window) datagrams are
        opened with: its frame type and body. For operation 8 frames too, which
        carry exactly what a datagram would: one replay window for both, so a
        frame that came both ways is taken once. None when it does not open.
        """
        current = self.channel
        if current is None:
            return None
        try:
            header = peek_header(data)
            previous = self.previous_channel
            channel = previous if previous is not None and header.key_id == previous.key_id else current
            frame_type, body = channel.open(data, header)
        except ProtocolError:
            self.dropped += 1
            return None
        if channel is current:
            self.previous_channel = None
        return frame_type, body

    def answered_over_tcp(self) -> list[Action]:
        """
        A keepalive was answered inside operation 8 (the TCP path of the
        "delivery" feature): the server is there, so no early keepalives; the
        UDP path is the path monitor's to judge, so nothing is said of it.
        """
        self._unanswered_since = None
        self._probes_sent = 0
        return self._timers.cancel(PROBE)

    def _heard(self, now: float) -> list[Action]:
        """An authenticated datagram from the server arrived: the path works (again)."""
        self._heard_at = now
        self._unanswered_since = None
        self._probes_sent = 0
        actions = self._timers.cancel(PROBE)
        if self.lost:
            self.lost = False
            actions.append(Emit(UdpPathRestored()))
        return actions
