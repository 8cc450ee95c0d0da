"""
Line mode's console (chatd.client.line_mode): standard input as lines of
text for the session, its lines to standard output, its warnings to
standard error.

Input: UTF-8 lines ending in LF; a CR before the LF is dropped; an empty line
is not given to the session; a line that is not UTF-8, or too long for one
datagram, is dropped with a warning, and reading goes on. At the end of input
a last line without a newline is read too.
"""

from __future__ import annotations

import sys
from typing import Protocol

from typing_extensions import override

from chatd.client.chat_cli import PROGRAM
from chatd.client.line_output import one_line
from chatd.client.stdio_lines import StdioLines


def report_to_stderr(message: str) -> None:
    """Write C{chatd-chat: message} as one line to standard error."""
    try:
        sys.stderr.write(f"{PROGRAM}: {one_line(message)}\n")
        sys.stderr.flush()
    except OSError:
        # stderr may share stdout's file description, which stdio made
        # non-blocking; a warning lost is better than a crash.
        pass


class ConsoleOwner(Protocol):
    """What the console tells about its input and output (a LineSession, or a test's fake)."""

    def line_read(self, line: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def input_ended(self) -> None: ...

    def output_lost(self) -> None: ...


class LineConsole(StdioLines):
    """Standard input and output as lines: bytes in, text to the session; lines out."""

    MAX_LENGTH = 1 << 16
    """Longer than any message can be (one datagram); longer lines are dropped."""

    def __init__(self, session: ConsoleOwner) -> None:
        super().__init__()
        self._session = session
        self._input_ended = False
        self._skipping = False
        """Dropping the rest of a line that was too long, up to its newline."""
        self._resume_buffer = False

    def write_line(self, line: str) -> None:
        self.write_text(line)

    def pause_input(self) -> None:
        if self.transport is not None and not self._input_ended and not self.paused:
            self.pauseProducing()

    def resume_input(self) -> None:
        if self.transport is not None and not self._input_ended and self.paused:
            self.resumeProducing()

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._skipping:
            end = data.find(self.delimiter)
            if end < 0:
                return
            self._skipping = False
            data = data[end + len(self.delimiter) :]
        super().dataReceived(data)
        # LineReceiver stops at a line that is too long; the lines after it,
        # put back by lineLengthExceeded, still need reading.
        while self._resume_buffer and not self.paused:
            self._resume_buffer = False
            super().dataReceived(b"")

    @override
    def lineReceived(self, line: bytes) -> None:
        line = line.removesuffix(b"\r")
        if not line:
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._session.warn("not sent: the line is not valid UTF-8")
            return
        self._session.line_read(text)

    @override
    def lineLengthExceeded(self, line: bytes) -> None:
        # Not LineReceiver's default (hang up): one bad line should not end a bot.
        self._session.warn(f"not sent: a line of more than {self.MAX_LENGTH} bytes")
        _, found, rest = line.partition(self.delimiter)
        if found:
            self._buffer = rest
            self._resume_buffer = True
        else:
            self._skipping = True

    @override
    def input_ended(self) -> None:
        """End of input: send a last line without a newline, then end the session."""
        self._input_ended = True
        rest = self.clearLineBuffer()
        # Paused, the rest could not be sent now (reconnecting) or ever (ended).
        if not self._skipping and not self.paused:
            for line in rest.split(self.delimiter):
                self.lineReceived(line)
        self._session.input_ended()

    @override
    def output_lost(self) -> None:
        """Nobody reads our output any more: nothing left to do."""
        self._session.output_lost()

    @override
    def stdio_lost(self) -> None:
        self._session.output_lost()
