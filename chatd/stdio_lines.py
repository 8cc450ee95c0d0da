"""
Standard input and output as lines, for the clients that talk to a person
or a script through them (line mode, the debug client).

The part both need and neither should get wrong twice: the half-closes of
stdio (end of input; nobody reading the output any more), and a clean close
that waits for the output to drain, for a bounded time, before the process
exits.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
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

    def write_text(self, text: str, errors: str = "strict") -> None:
        """One line to standard output, while anyone reads it."""
        if self.transport is not None and self._output_open and not self._lost:
            self.transport.write(text.encode("utf-8", errors) + b"\n")

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
        self.output_lost()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self.stdio_lost()

    def close(self, clock: IReactorTime, timeout: float = CLOSE_TIMEOUT) -> Deferred[None]:
        """Flush the output and close stdio; fires when done, or after C{timeout} seconds."""
        if self._lost or self.transport is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if self._output_open:
            self._lost_waiters.append(waiter)
        else:
            # stdout is gone already, so stdio will not report the close.
            waiter.callback(None)
        self.transport.loseConnection()
        waiter.addTimeout(timeout, clock)
        waiter.addErrback(lambda failure: failure.trap(TimeoutError))
        return waiter
