"""
Line mode's console (chatd.client.line_console): bytes of standard input to
lines, lines to standard output, and warnings held until the output before
them has gone out.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from chatd.client.line_console import LineConsole
from tests.client.test_line_output import HELLO, WAVE


class FakeOwner:
    """Records what a LineConsole reports."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.warnings: list[str] = []
        self.ended: list[str] = []

    def line_read(self, line: str) -> None:
        self.sent.append(line)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def input_ended(self) -> None:
        self.ended.append("input")

    def output_lost(self) -> None:
        self.ended.append("output")


def attached(console: LineConsole) -> StringTransportWithDisconnection:
    transport = StringTransportWithDisconnection()
    transport.protocol = console
    console.makeConnection(transport)
    return transport


class LineConsoleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.owner = FakeOwner()
        self.console = LineConsole(self.owner)
        self.transport = attached(self.console)

    def test_lines_are_sent_as_text(self) -> None:
        self.console.dataReceived(f"hello\n{HELLO}\r\n\n\r\n  \n".encode())
        self.assertEqual(self.owner.sent, ["hello", HELLO, "  "])

    def test_a_line_split_across_reads(self) -> None:
        data = f"{WAVE}\n".encode()
        for index in range(len(data)):
            self.console.dataReceived(data[index : index + 1])
        self.assertEqual(self.owner.sent, [WAVE])

    def test_invalid_utf8_is_not_sent(self) -> None:
        self.console.dataReceived(b"\xff\xfe\nok\n")
        self.assertEqual(self.owner.sent, ["ok"])
        self.assertEqual(self.owner.warnings, ["not sent: the line is not valid UTF-8"])

    def test_too_long_a_line_is_dropped_and_reading_goes_on(self) -> None:
        long = b"x" * (LineConsole.MAX_LENGTH + 10)
        self.console.dataReceived(b"first\n" + long + b"\nsecond\nthird\n")
        self.assertEqual(self.owner.sent, ["first", "second", "third"])
        self.assertEqual(len(self.owner.warnings), 1)
        self.assertFalse(self.transport.disconnecting)

    def test_too_long_a_line_in_pieces(self) -> None:
        self.console.dataReceived(b"x" * (LineConsole.MAX_LENGTH + 10))
        self.console.dataReceived(b"y" * 100)
        self.console.dataReceived(b"zz\nnext\n")
        self.assertEqual(self.owner.sent, ["next"])
        self.assertEqual(len(self.owner.warnings), 1)

    def test_end_of_input_sends_the_last_line_without_newline(self) -> None:
        self.console.dataReceived(b"one\nlast")
        self.console.readConnectionLost()
        self.assertEqual(self.owner.sent, ["one", "last"])
        self.assertEqual(self.owner.ended, ["input"])

    def test_end_of_input_while_paused_sends_nothing(self) -> None:
        self.console.pause_input()
        self.console.dataReceived(b"one\ntwo")
        self.console.readConnectionLost()
        self.assertEqual(self.owner.sent, [])
        self.assertEqual(self.owner.ended, ["input"])

    def test_end_of_input_after_too_long_a_line(self) -> None:
        self.console.dataReceived(b"x" * (LineConsole.MAX_LENGTH + 10))
        self.console.readConnectionLost()
        self.assertEqual(self.owner.sent, [])
        self.assertEqual(len(self.owner.warnings), 1)

    def test_paused_input_waits(self) -> None:
        self.console.pause_input()
        self.assertEqual(self.transport.producerState, "paused")
        self.console.dataReceived(b"one\ntwo\n")
        self.assertEqual(self.owner.sent, [])
        self.console.resume_input()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.owner.sent, ["one", "two"])

    def test_write_line(self) -> None:
        self.console.write_line(HELLO)
        self.assertEqual(self.transport.value(), f"{HELLO}\n".encode())

    def test_output_lost(self) -> None:
        self.console.writeConnectionLost()
        self.console.write_line("nobody reads this")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.owner.ended, ["output"])


class DrainingTransport(StringTransportWithDisconnection):
    """A StringTransport that, as stdio's does, tells a pull producer when its output has drained."""

    def drain(self) -> None:
        assert self.producer is not None
        self.producer.resumeProducing()


class AfterOutputTests(SynchronousTestCase):
    """StdioLines.after_output: stderr lines wait for the stdout lines before them."""

    def setUp(self) -> None:
        self.console = LineConsole(FakeOwner())
        self.transport = DrainingTransport()
        self.transport.protocol = self.console
        self.console.makeConnection(self.transport)
        self.console.watch_output()
        self.done: list[str] = []

    def test_nothing_written_acts_at_once(self) -> None:
        self.console.after_output(lambda: self.done.append("warned"))
        self.assertEqual(self.done, ["warned"])

    def test_waits_for_the_lines_before_it(self) -> None:
        self.console.write_line("event")
        self.console.after_output(lambda: self.done.append("first"))
        self.console.after_output(lambda: self.done.append("second"))
        self.assertEqual(self.done, [])
        self.transport.drain()
        self.assertEqual(self.done, ["first", "second"])
        self.console.after_output(lambda: self.done.append("third"))
        self.assertEqual(self.done, ["first", "second", "third"])

    def test_close_lets_it_go_and_unregisters(self) -> None:
        self.console.write_line("event")
        self.console.after_output(lambda: self.done.append("warned"))
        self.successResultOf(self.console.close(Clock()))
        self.assertEqual(self.done, ["warned"])
        self.assertIsNone(self.transport.producer)

    def test_output_lost_lets_it_go(self) -> None:
        self.console.write_line("event")
        self.console.after_output(lambda: self.done.append("warned"))
        self.console.writeConnectionLost()
        self.assertEqual(self.done, ["warned"])
