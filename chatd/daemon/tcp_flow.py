"""
A TCP connection's flow control and timers: the part of RoomProtocol
(chatd.daemon.tcp) that is about bytes and time rather than requests.

Each connection is a streaming producer on its transport (Twisted's producer
API, both ways): the transport pauses it when its send buffer is full, and it
pauses the transport's reading while a request is in flight or its answers
cannot be sent. A peer that does not read is aborted once
Settings.send_queue bytes wait for it, or once it has not read for
Settings.send_queue_timeout seconds; so is a close that does not finish in
that time. A connection has Settings.handshake_timeout to create or join a
room (L{FlowControlledProtocol._handshake_pending} says when it is done), and
Settings.frame_timeout to finish each frame it has begun.

L{FlowControlledProtocol} holds that state and those timers; the request
handling above it (RoomProtocol) supplies three hooks: L{_process} (go on
with the frames buffered), L{_refuse} (answer a frame with an error) and
L{_handshake_pending}. Its logs go out under the subclass' namespace
(twisted.logger names a class attribute's Logger after the instance's class).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from chatd.daemon.settings import Settings
from chatd.daemon.stats import AbortReason, TcpStats
from chatd.protocol.errors import ProtocolError, RequestTimeoutError
from chatd.protocol.wire import HEADER_SIZE, FrameDecoder, Operation


@implementer(IPushProducer)
class FlowControlledProtocol(Protocol):
    """
    A connection that reads only while its requests can be answered, bounds
    what waits for a peer that does not read, and runs the handshake,
    partial-frame, send-queue and close timers.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, settings: Settings, stats: TcpStats) -> None:
        self._clock = clock
        self._settings = settings
        self._stats = stats
        """The TCP side's counters (the factory's): aborts are counted here, by L{AbortReason}."""
        self._decoder = FrameDecoder(settings.max_payload)
        """The frames received; a frame begun and not finished runs the frame timer."""
        self.peer_host = ""
        self._busy = False
        """A create or join is in flight; later frames wait for its answer."""
        self._write_paused = False
        """The transport's send buffer is full: it has paused us (IPushProducer)."""
        self._reading_paused = False
        """We have paused the transport's reading (busy, or the peer does not read)."""
        self._registered = False
        """We are the transport's producer (until a close unregisters us)."""
        self.queued_bytes = 0
        """Bytes written since the transport paused us: what the peer has not taken."""
        self._closing = False
        self._aborted = False
        self._lost = False
        self._handshake_timer: IDelayedCall | None = None
        self._frame_timer: IDelayedCall | None = None
        self._send_queue_timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._close_waiters: list[Deferred[None]] = []

    # -- hooks of the request handling --------------------------------------

    def _process(self) -> None:
        """Handle the frames buffered, now that they may be answered (the peer reads again)."""
        raise NotImplementedError

    def _refuse(self, error: ProtocolError, operation: Operation, room: str = "") -> None:
        """Answer a frame of C{operation} with C{error} (and close, if C{error.closes})."""
        raise NotImplementedError

    def _handshake_pending(self) -> bool:
        """Whether the handshake is not done yet, so that its timeout aborts the connection."""
        raise NotImplementedError

    # -- connection life ----------------------------------------------------

    def _start_flow(self) -> None:
        """The connection is made: produce for its transport, and give it the handshake's time."""
        assert self.transport is not None
        consumer = IConsumer(self.transport, None)
        if consumer is not None:
            # Streaming: the transport tells us when its buffer is full and
            # when it has drained (pauseProducing, resumeProducing).
            consumer.registerProducer(self, True)
            self._registered = True
        self._handshake_timer = self._clock.callLater(self._settings.handshake_timeout, self._handshake_expired)

    def _stop_flow(self) -> None:
        """The connection is lost: nothing more is sent, and no timer runs."""
        self._lost = True
        self._closing = True
        self._cancel_timers()

    def _notify_closed(self) -> None:
        """Fire what L{when_closed} handed out (once the connection is lost)."""
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _handshake_done(self) -> None:
        """The handshake is over: its timer stops."""
        self._cancel_timer(self._handshake_timer)
        self._handshake_timer = None

    def _write(self, data: bytes) -> None:
        """Write C{data}, unless it makes more wait for a peer that does not read than the send queue allows."""
        assert self.transport is not None
        if self._write_paused:
            # The transport buffers it (beyond its own buffer size) for a
            # peer that is not reading: bounded here.
            self.queued_bytes += len(data)
            if self.queued_bytes > self._settings.send_queue:
                self._abort_for(AbortReason.SEND_QUEUE)
                return
        self.transport.write(data)

    def abort(self) -> None:
        """Close at once, dropping what was not yet sent."""
        if self._lost or self._aborted:
            return
        self._aborted = self._closing = True
        self._cancel_timers()
        transport = self.transport
        assert transport is not None
        # TCP transports can abort, and TLS ones too: the TLS port's
        # transports are TCP ones that declare ISSLTransport, which extends
        # ITCPTransport (a TLSMemoryBIOProtocol declares what it wraps).
        if ITCPTransport.providedBy(transport):
            ITCPTransport(transport).abortConnection()
        else:
            # A transport that cannot abort (none of Twisted's streams).
            transport.loseConnection()

    def _abort_for(self, reason: str) -> None:
        """Abort because a limit was hit: logged and counted by C{reason} (an L{AbortReason})."""
        if self._lost or self._aborted:
            return
        self._stats.aborted[reason] += 1
        self._log.info(
            "aborting connection from {peer}: {reason}",
            event="aborted",
            peer=self.peer_host,
            reason=reason,
            queued_bytes=self.queued_bytes,
        )
        self.abort()

    def when_closed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self._lost:
            waiter.callback(None)
        else:
            self._close_waiters.append(waiter)
        return waiter

    def _close(self) -> None:
        """Close once what was sent is flushed; abort if that takes too long."""
        if self._closing:
            return
        self._closing = True
        self._cancel_timers()
        assert self.transport is not None
        if self._registered:
            # A transport with a producer registered does not finish closing
            # (TCP when the producer is paused, TLS at all): nothing more is
            # produced anyway.
            self._registered = False
            IConsumer(self.transport).unregisterProducer()
        self._close_timer = self._clock.callLater(
            self._settings.send_queue_timeout, self._abort_for, AbortReason.CLOSE_TIMEOUT
        )
        self.transport.loseConnection()

    # -- IPushProducer: the transport's send buffer -------------------------

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer's spelling
        """The transport's send buffer is full: the peer is not reading fast enough."""
        if self._write_paused or self._closing:
            return
        self._write_paused = True
        self.queued_bytes = 0
        self._send_queue_timer = self._clock.callLater(
            self._settings.send_queue_timeout, self._abort_for, AbortReason.SEND_QUEUE_TIMEOUT
        )
        self._update_reading()
        # A frame waiting here waits for the peer, not for its own bytes.
        self._watch_partial_frame()

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer's spelling
        """The transport has sent what it held: read and answer again."""
        if not self._write_paused:
            return
        self._write_paused = False
        self.queued_bytes = 0
        self._cancel_timer(self._send_queue_timer)
        self._send_queue_timer = None
        if not self._closing:
            self._process()

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer's spelling
        """The connection is going (connectionLost follows): nothing more is sent."""
        self._closing = True
        self._registered = False
        self._cancel_timers()

    def _update_reading(self) -> None:
        """Read from the peer only while its requests can be answered."""
        wanted = self._busy or self._write_paused
        # The transport produces what the peer sends (TCP and TLS do).
        producer = IPushProducer(self.transport, None)
        # Once closing, the transport reads no more by itself: resuming an
        # aborted one would only wake the reactor for nothing.
        if wanted == self._reading_paused or self._closing or producer is None:
            return
        self._reading_paused = wanted
        if wanted:
            producer.pauseProducing()
        else:
            producer.resumeProducing()

    # -- timers -------------------------------------------------------------

    def _watch_partial_frame(self) -> None:
        """
        Start the frame timer when a frame begins; it is not reset by more
        bytes, so a peer dribbling one byte at a time still runs out of time.
        """
        waiting = self._decoder.buffered > 0 and not self._busy and not self._closing and not self._write_paused
        if waiting and self._frame_timer is None:
            self._frame_timer = self._clock.callLater(self._settings.frame_timeout, self._frame_expired)
        elif not waiting and self._frame_timer is not None:
            self._cancel_timer(self._frame_timer)
            self._frame_timer = None

    def _frame_expired(self) -> None:
        self._frame_timer = None
        error = RequestTimeoutError(f"a frame was not finished within {self._settings.frame_timeout:g} s")
        if self._decoder.buffered >= HEADER_SIZE:
            self._refuse(error, self._decoder.pending_operation)
        else:
            self._log.info(
                "closing connection from {peer}: {reason}", event="closing", peer=self.peer_host, reason=error.reason
            )
            self._close()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        # Even with a request in flight: a create or join that takes this
        # long has gone wrong, and the request handling copes with a closed
        # connection. Aborted, not closed: a peer that stalls its handshake
        # may well not read either, and a close would wait for it.
        if self._handshake_pending():
            self._abort_for(AbortReason.HANDSHAKE_TIMEOUT)

    def _cancel_timers(self) -> None:
        for timer in (self._handshake_timer, self._frame_timer, self._send_queue_timer, self._close_timer):
            self._cancel_timer(timer)
        self._handshake_timer = self._frame_timer = self._send_queue_timer = self._close_timer = None

    @staticmethod
    def _cancel_timer(timer: IDelayedCall | None) -> None:
        if timer is not None and timer.active():
            timer.cancel()
