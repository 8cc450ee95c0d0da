"""
Standard input and output as lines, for the clients that talk to a person
or a script through them (line mode, the debug client).

The part both need and neither should get wrong twice: the half-closes of
stdio (end of input; nobody reading the output any more), a clean close
that waits for the output to drain, for a bounded time, before the process
exits, and L{StdioLines.after_output}, which holds a write to standard error
until the lines before it have reached standard output (the reactor writes
them later, so a plain write to stderr would overtake them).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPullProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

CLOSE_TIMEOUT = 5.0
"""Seconds to wait for standard output to drain at exit, if nobody reads it."""


@implementer(IHalfCloseableProtocol)
class StdioLines(LineReceiver):
    """
    Lines in and out over stdio. Subclasses handle lines (C{lineReceived}) and
    are told of the ends through C{input_ended}, C{output_lost} and
    C{stdio_lost}.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 16

    def __init__(self) -> None:
        self._output_open = True
        self._lost = False
        self._lost_waiters: list[Deferred[None]] = []
        self._drain_watched = False
        self._output_pending = False
        self._after_output: list[Callable[[], None]] = []

    def watch_output(self) -> None:
        """
        Learn from the transport when what was written has gone out, for
        L{after_output}. Stdio's transport tells a pull producer each time its
        buffer has drained; without this (a test's StringTransport, which
        keeps what is written at once) L{after_output} acts at once.
        """
        if self.transport is not None and not self._drain_watched:
            self._drain_watched = True
            IConsumer(self.transport).registerProducer(_OutputDrained(self), False)

    def write_text(self, text: str, errors: str = "strict") -> None:
        """One line to standard output, while anyone reads it."""
        if self.transport is not None and self._output_open and not self._lost:
            self._output_pending = self._drain_watched
            self.transport.write(text.encode("utf-8", errors) + b"\n")

    def after_output(self, action: Callable[[], None]) -> None:
        """Call C{action} once the lines written so far have gone out (or never will)."""
        if self._output_pending:
            self._after_output.append(action)
        else:
            action()

    def _output_drained(self) -> None:
        self._output_pending = False
        actions, self._after_output = self._after_output, []
        for action in actions:
            action()

    def input_ended(self) -> None:
        """End of standard input."""

    def output_lost(self) -> None:
        """Nobody reads standard output any more."""

    def stdio_lost(self) -> None:
        """Both are closed."""

    # IHalfCloseableProtocol: stdio looks these two up by their Twisted names.
    def readConnectionLost(self) -> None:  # noqa: N802
        self.input_ended()

    def writeConnectionLost(self) -> None:  # noqa: N802
        self._output_open = False
        self._output_drained()
        self.output_lost()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._output_drained()
        self.stdio_lost()

    def close(self, clock: IReactorTime, timeout: float = CLOSE_TIMEOUT) -> Deferred[None]:
        """Flush the output and close stdio; fires when done, or after C{timeout} seconds."""
        if self._lost or self.transport is None:
            return succeed(None)
        if self._drain_watched:
            # A pull producer registered would keep the transport from closing.
            self._drain_watched = False
            IConsumer(self.transport).unregisterProducer()
        waiter: Deferred[None] = Deferred()
        if self._output_open:
            self._lost_waiters.append(waiter)
        else:
            # stdout is gone already, so stdio will not report the close.
            waiter.callback(None)
        self.transport.loseConnection()
        waiter.addTimeout(timeout, clock)
        waiter.addErrback(lambda failure: failure.trap(TimeoutError))
        # Drained or not (nobody reads it), what waited for it goes ahead now.
        waiter.addCallback(lambda _: self._output_drained())
        return waiter


@implementer(IPullProducer)
class _OutputDrained:
    """
    Registered with the stdout transport as a pull producer, only to hear
    when its buffer has drained: it asks for more data then. It never writes.
    """

    def __init__(self, lines: StdioLines) -> None:
        self._lines = lines

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        self._lines._output_drained()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        self._lines._output_drained()
