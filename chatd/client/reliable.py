"""
Reliable delivery in the client core, sans I/O (docs/reliability.md, sections
1, 2, 4 and 5; the frames of docs/protocol.md section 7.6).

L{DeliverySession} is a part of L{chatd.client.core.ClientCore}, as
chatd.client.udp_path is: it ties the pure pieces of chatd.client.delivery
(the outbox, the path monitor, the round-trip estimator, the counters) and
chatd.client.timeline to the membership, and returns L{Action}s. The core
asks for the feature on every create and join, and hands the session what
concerns it:

 - the answer's grant (L{DeliverySession.entered}): the first entry starts a
   timeline (and asks for the history offered), a rejoin resumes it and sends
   the unacknowledged messages again under their ids;
 - the user's messages (L{DeliverySession.post}, L{DeliverySession.retry});
 - the core's own frames (keepalives, the host's C{/exit}): the path monitor
   says which way each goes (L{DeliverySession.send_frame});
 - every sealed frame from the server, by UDP or inside operation 8
   (L{DeliverySession.received});
 - its one timer, L{DELIVERY} (L{DeliverySession.timer_fired}), set to the
   earliest deadline of the outbox, the timeline and the path monitor.

Sealing stays the core's (one key, one counter, and the rekey decision): the
session gives it each frame with a rule that says, from the sealed size,
whether the frame goes over the control connection as operation 8.
"""

from __future__ import annotations

from collections.abc import Callable

from chatd.client.actions import DELIVERY, Action, Emit, Timers
from chatd.client.delivery import (
    DeliveryStats,
    MessageState,
    Outbox,
    Path,
    PathActions,
    PathMonitor,
    RttEstimator,
)
from chatd.client.events import (
    DeliveryPathChanged,
    MessageReceived,
    MessagesMissed,
    MessageStateChanged,
)
from chatd.client.events import RoomRecreated as RoomRecreatedEvent
from chatd.client.timeline import Missed, RoomRecreated, Shown, Timeline, TimelineItem
from chatd.protocol.datagrams import FrameType
from chatd.protocol.delivery import (
    decode_latest,
    decode_posted,
    decode_range,
    decode_sent,
    encode_range,
    encode_send,
)
from chatd.protocol.payloads import DeliveryStart

OverTcp = Callable[[int], bool]
"""From a sealed frame's size: whether it goes over the control connection (operation 8) rather than by UDP."""

Transmit = Callable[[FrameType, bytes, OverTcp, float], list[Action]]
"""The core's: seal a frame (type, body) and send it the way the rule says, at a time."""


def by_udp(size: int) -> bool:
    """A frame that must go by UDP whatever the path: a PROBE, a keepalive the monitor sends by UDP."""
    return False


def over_tcp(size: int) -> bool:
    """A frame that must go inside operation 8: a keepalive that moves the server's path to TCP."""
    return True


class DeliverySession:
    """
    The "delivery" feature of one client. The outbox, the round-trip
    estimator and the counters live as long as the core (message ids are
    never reused under the client's id); the timeline and the path monitor
    as long as a membership (across its reconnections). Without a grant the
    session is inactive (L{granted} is False) and the core behaves as
    without the feature.
    """

    def __init__(self, timers: Timers, transmit: Transmit) -> None:
        self._timers = timers
        self._transmit = transmit
        self.stats = DeliveryStats()
        self.rtt = RttEstimator()
        self.outbox = Outbox(self.rtt, self.stats)
        self.timeline: Timeline | None = None
        self.monitor: PathMonitor | None = None
        self.room = ""
        self.connected = False
        """Entered and the control connection up: frames may go out, and the timer runs."""
        self._scheduled: float | None = None
        """The deadline the running DELIVERY timer is for, so that it is not restarted for the same one."""

    @property
    def granted(self) -> bool:
        """The server granted the feature for the current membership."""
        return self.timeline is not None

    @property
    def path(self) -> str | None:
        """C{"udp"} or C{"tcp"} while granted; None otherwise."""
        return self.monitor.path.value.lower() if self.monitor is not None else None

    # -- the membership ---------------------------------------------------------------

    def reset(self) -> None:
        """
        A new membership (create or join asked for): nothing of the last room
        carries over, but the next message id (the server may still hold the
        window of this client id in that room, so ids must not start again).
        """
        self.outbox.abandon()
        self.timeline = self.monitor = None
        self.room = ""
        self.connected = False

    def entered(self, start: DeliveryStart | None, room: str, user: str, now: float) -> list[Action]:
        """
        The room was entered (first, or again after a reconnection), with the
        server's grant (C{start}) or without. The core calls L{work} once its
        first keepalive has gone (the history asked for, the messages sent
        again): the keepalive first, as it is what registers the address.
        """
        if start is None:
            return self._not_granted()
        self.room = room
        self.connected = True
        if self.timeline is None or self.monitor is None:
            # The first entry: the timeline's first gap is the history offered, asked for at once.
            self.timeline = Timeline(
                start.epoch, start.seq, start.history_from, now, own_name=user, rtt=self.rtt, stats=self.stats
            )
            self.monitor = PathMonitor(self.rtt, self.stats)
            return []
        # Back after a reconnection: what was missed is asked for, the unacknowledged are sent again.
        self.outbox.resend_all()
        if self.monitor.path is Path.UDP:
            # A new membership's path is UDP on the server too: judged afresh, as on entering, and
            # not by a wait for an answer that began before the connection was lost. On TCP the
            # monitor stays: the first keepalive moves the server's path there again.
            self.monitor = PathMonitor(self.rtt, self.stats)
        return self._shown(self.timeline.resume(start.epoch, start.seq, start.history_from, now))

    def _not_granted(self) -> list[Action]:
        """
        An entry without the grant. After one with it (a rejoin to a server
        that no longer grants it), the messages still sending cannot be.
        """
        if self.timeline is None:
            return []
        self.timeline = self.monitor = None
        self.connected = False
        return [
            Emit(MessageStateChanged(message_id, text, MessageState.NOT_DELIVERED.value))
            for message_id, text in self.outbox.abandon()
        ]

    def stop(self) -> list[Action]:
        """The control connection is gone, or the session over: nothing goes out until entered again."""
        self.connected = False
        self._scheduled = None
        return self._timers.cancel(DELIVERY)

    # -- sending ----------------------------------------------------------------------------

    def post(self, text: str, now: float) -> tuple[int, list[Action]]:
        """
        A message from the user: its id, and its first send (if connected;
        otherwise it waits, C{sending}, for the rejoin).
        """
        message_id = self.outbox.post(text)
        return message_id, [
            Emit(MessageStateChanged(message_id, text, MessageState.SENDING.value)),
            *self.work(now),
        ]

    def retry(self, now: float) -> tuple[list[int], list[Action]]:
        """/retry: the messages not delivered go again under their own ids."""
        ids = self.outbox.retry()
        actions: list[Action] = [
            Emit(MessageStateChanged(message_id, self.outbox.text(message_id) or "", MessageState.SENDING.value))
            for message_id in ids
        ]
        return ids, [*actions, *self.work(now)]

    def send_frame(self, frame_type: FrameType, body: bytes, now: float) -> list[Action]:
        """
        One of the core's own frames (a keepalive, a plain MESSAGE such as
        C{/exit}), the way the path monitor says. A keepalive's path is the
        monitor's choice, and moves the server's path with it.
        """
        monitor = self.monitor
        assert monitor is not None
        if frame_type is FrameType.KEEPALIVE:
            return [*self._path_actions(monitor.keepalive(now), now), *self._schedule(now)]
        return self._transmit(frame_type, body, monitor.via_tcp, now)

    # -- receiving --------------------------------------------------------------------------

    def received(self, frame_type: int, body: bytes, now: float, *, udp: bool) -> list[Action]:
        """
        A sealed frame from the server (by UDP, or inside operation 8 when
        C{udp} is False), already opened: what the delivery frames mean. The
        core still does its own part for the others (RELAY, NOTICE) and for a
        KEEPALIVE_ACK (the flush, the rejoin's confirmation). Raises
        ProtocolError for an unreadable body.
        """
        timeline, monitor = self.timeline, self.monitor
        if timeline is None or monitor is None:
            return []
        if udp:
            monitor.heard(now)
        actions: list[Action]
        if frame_type == FrameType.POSTED:
            actions = self._shown(timeline.posted(decode_posted(body), now))
        elif frame_type == FrameType.SENT:
            sent = decode_sent(body)
            # Read before it is acknowledged: the outbox forgets what was acknowledged.
            text = self.outbox.text(sent.message_id)
            actions = []
            if self.outbox.acknowledged(sent, now) is not None and text is not None:
                actions.append(Emit(MessageStateChanged(sent.message_id, text, MessageState.SENT.value, sent.seq)))
            actions += self._shown(timeline.own_sent(sent.seq, now))
            if udp:
                monitor.round_trip()
        elif frame_type == FrameType.GONE:
            actions = self._shown(timeline.gone(decode_range(body), now))
        elif frame_type == FrameType.KEEPALIVE_ACK:
            # The room's latest: a lost last message is noticed here.
            actions = self._shown(timeline.latest(decode_latest(body), now))
            actions += self._path_actions(monitor.keepalive_ack(now, by_udp=udp), now)
        else:
            return []
        return [*actions, *self.work(now)]

    def _shown(self, items: list[TimelineItem]) -> list[Action]:
        """The timeline's items, as the events the interfaces show."""
        actions: list[Action] = []
        for item in items:
            if isinstance(item, Shown):
                event = MessageReceived(item.sender, item.text, item.time_ms / 1000, item.seq, item.history)
                actions.append(Emit(event))
            elif isinstance(item, Missed):
                actions.append(Emit(MessagesMissed(item.first, item.last, item.message)))
            elif isinstance(item, RoomRecreated):
                actions.append(Emit(RoomRecreatedEvent(self.room, item.message)))
        return actions

    def _path_actions(self, wanted: PathActions, now: float) -> list[Action]:
        """What the path monitor asked for: say the path changed, send a keepalive by a path, or a probe by UDP."""
        actions: list[Action] = []
        if wanted.changed is not None:
            changed = wanted.changed
            actions.append(Emit(DeliveryPathChanged(changed.path.value.lower(), changed.message)))
            if changed.path is Path.TCP:
                # What is in flight went where nothing gets through: again at once, by the new path.
                self.outbox.resend_all()
        if wanted.keepalive is not None:
            rule = over_tcp if wanted.keepalive is Path.TCP else by_udp
            actions += self._transmit(FrameType.KEEPALIVE, b"", rule, now)
        if wanted.probe:
            actions += self._transmit(FrameType.PROBE, b"", by_udp, now)
        return actions

    # -- the timer ----------------------------------------------------------------------------

    def timer_fired(self, now: float) -> list[Action]:
        """The DELIVERY timer ran out."""
        self._scheduled = None
        return self.work(now)

    def work(self, now: float) -> list[Action]:
        """
        Everything due by C{now}: sends and retransmissions (and the messages
        given up), repairs, the path monitor's keepalive or probe; then the
        timer for the next. Cheap when nothing is due, so it runs after every
        input rather than each piece keeping its own account.
        """
        timeline, monitor = self.timeline, self.monitor
        if not self.connected or timeline is None or monitor is None:
            return []
        # The path first: a message found unanswered moves everything in flight to TCP, to go at once below.
        actions: list[Action] = self._path_actions(monitor.poll(now), now)
        actions += self._path_actions(monitor.sends_unanswered(now, self.outbox.unacknowledged_since()), now)
        due = self.outbox.due(now)
        for outgoing in due.sends:
            actions += self._transmit(
                FrameType.SEND, encode_send(outgoing.message_id, outgoing.text), monitor.via_tcp, now
            )
        for failed in due.failed:
            actions.append(Emit(MessageStateChanged(failed.message_id, failed.text, failed.state.value)))
        for wanted in timeline.repairs_due(now):
            actions += self._transmit(FrameType.REPAIR, encode_range(wanted.first, wanted.last), monitor.via_tcp, now)
        return [*actions, *self._schedule(now)]

    def _schedule(self, now: float) -> list[Action]:
        """The timer for the earliest deadline of the three, restarted only when that deadline changed."""
        if not self.connected or self.timeline is None or self.monitor is None:
            return []
        deadlines = [
            deadline
            for deadline in (
                self.outbox.next_deadline(),
                self.timeline.next_deadline(),
                self.monitor.next_deadline(),
                self.monitor.send_deadline(self.outbox.unacknowledged_since()),
            )
            if deadline is not None
        ]
        if not deadlines:
            self._scheduled = None
            return self._timers.cancel(DELIVERY)
        deadline = max(min(deadlines), now)
        if deadline == self._scheduled and DELIVERY in self._timers:
            return []
        self._scheduled = deadline
        return [self._timers.start(DELIVERY, deadline - now)]


__all__ = ["DeliverySession", "DeliveryStats", "OverTcp", "Transmit", "by_udp", "over_tcp"]
