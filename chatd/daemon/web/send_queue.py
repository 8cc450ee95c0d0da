"""
What waits for a page that does not read, bounded as for a TCP peer
(docs/security.md 2.3 and 2.6).
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from chatd.daemon.settings import Settings


class Abortable(Protocol):
    """What the queue resets (chatd.daemon.web.gateway.BrowserProtocol)."""

    def abort(self, reason: str) -> None: ...


@implementer(IPushProducer)
class SendQueue:
    """
    What waits for a page that does not read, bounded as for a TCP peer
    (docs/security.md 2.3): registered as its transport's producer, it hears
    when the transport's buffer is full (Twisted's 64 KiB) and when it has
    drained. While full, what the page is sent counts against --send-queue
    bytes and --send-queue-timeout seconds; past either the connection is
    reset, and its member leaves.
    """

    def __init__(self, protocol: Abortable, clock: IReactorTime, settings: Settings) -> None:
        self._protocol = protocol
        self._clock = clock
        self._limit = settings.send_queue
        self._timeout = settings.send_queue_timeout
        self.queued = 0
        """Bytes sent to the page since its transport's buffer filled; 0 while it reads."""
        self._timer: IDelayedCall | None = None

    @property
    def full(self) -> bool:
        return self._timer is not None

    def admit(self, size: int) -> bool:
        """Whether C{size} more bytes may be sent now; False once the page is reset for not reading."""
        if self._timer is None:
            return True
        self.queued += size
        if self.queued > self._limit:
            self._protocol.abort("send_queue")
            return False
        return True

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer
        if self._timer is None:
            self._timer = self._clock.callLater(self._timeout, self._expired)

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.stop()

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.stop()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.queued = 0

    def _expired(self) -> None:
        self._timer = None
        self._protocol.abort("send_queue_timeout")
