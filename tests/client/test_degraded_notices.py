"""
The notices a cluster node sends its native members when it loses Redis and
has it back (docs/protocol.md 4.6 and 8.5): the bytes documented, read back
by the client as ServerDegraded and ServerRecovered.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.events import ServerDegraded, ServerRecovered, event_from_notice
from chatd.client.line_output import event_object, format_text
from chatd.protocol.payloads import Dialect, Notice, NoticeKind, read_notice_payload
from chatd.protocol.wire import Frame, Operation, SizeEncoding, State, encode_frame

DEGRADED_FRAME = bytes.fromhex(
    """
    04 05 02 00 00 00 00 00 00 00 00 00 00 00 00 00
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 9c
    68 6f 67 65 7b 22 63 68 61 74 64 22 3a 20 31 2c
    20 22 65 76 65 6e 74 22 3a 20 22 73 65 72 76 65
    72 5f 64 65 67 72 61 64 65 64 22 2c 20 22 72 6f
    6f 6d 22 3a 20 22 68 6f 67 65 22 2c 20 22 74 65
    78 74 22 3a 20 22 2a 20 74 68 65 20 73 65 72 76
    65 72 20 69 73 20 64 65 67 72 61 64 65 64 3a 20
    72 6f 6f 6d 20 68 6f 67 65 20 72 65 61 63 68 65
    73 20 6f 6e 6c 79 20 74 68 69 73 20 73 65 72 76
    65 72 27 73 20 6d 65 6d 62 65 72 73 20 75 6e 74
    69 6c 20 69 74 20 72 65 63 6f 76 65 72 73 22 7d
    """
)
"""docs/protocol.md 8.5: the server_degraded notice frame to a native member of room hoge."""

RECOVERED_PAYLOAD = (
    b'{"chatd": 1, "event": "server_recovered", "room": "hoge",'
    b' "text": "* the server has recovered: room hoge reaches every member again"}'
)


class DegradedNoticeTests(SynchronousTestCase):
    def test_the_documented_frame(self) -> None:
        payload = Notice(NoticeKind.SERVER_DEGRADED, "hoge").encode_for("bob", Dialect.NATIVE)
        frame = encode_frame(Frame(Operation.NOTICE, State.COMPLETE, "hoge", payload, SizeEncoding.BINARY))
        self.assertEqual(len(frame), 192)
        self.assertEqual(frame, DEGRADED_FRAME)

    def test_the_documented_recovery(self) -> None:
        payload = Notice(NoticeKind.SERVER_RECOVERED, "hoge").encode_for("bob", Dialect.NATIVE)
        self.assertEqual(payload, RECOVERED_PAYLOAD)
        self.assertEqual(len(payload), 133)

    def test_the_client_reads_them(self) -> None:
        degraded = event_from_notice(read_notice_payload(DEGRADED_FRAME[36:]), "bob")
        self.assertEqual(
            degraded,
            ServerDegraded(
                "hoge", "* the server is degraded: room hoge reaches only this server's members until it recovers"
            ),
        )
        recovered = event_from_notice(read_notice_payload(RECOVERED_PAYLOAD), "bob")
        self.assertEqual(
            recovered, ServerRecovered("hoge", "* the server has recovered: room hoge reaches every member again")
        )


class LineModeTests(SynchronousTestCase):
    """What chatd-chat's line mode prints of them: the server's sentence, and its JSON event."""

    def test_text_and_json(self) -> None:
        degraded = ServerDegraded("hoge", "* the server is degraded: room hoge reaches only ...")
        self.assertEqual(format_text(degraded), "* the server is degraded: room hoge reaches only ...")
        self.assertEqual(
            event_object(degraded),
            {
                "event": "server_degraded",
                "room": "hoge",
                "text": "* the server is degraded: room hoge reaches only ...",
            },
        )
        recovered = ServerRecovered("hoge", "* the server has recovered: room hoge reaches every member again")
        self.assertEqual(format_text(recovered), recovered.text)
        self.assertEqual(event_object(recovered)["event"], "server_recovered")
