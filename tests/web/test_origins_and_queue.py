"""The gateway's pure parts: the origin check, and the send queue of a page that does not read."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.settings import Settings
from chatd.daemon.web.origins import host_of, origin_allowed, same_origin
from chatd.daemon.web.send_queue import SendQueue
from chatd.debug.commands import CommandError, Session, parse_command


class OriginTests(SynchronousTestCase):
    def test_same_origin_is_scheme_host_and_port(self) -> None:
        self.assertTrue(same_origin("http://127.0.0.1:9080", "127.0.0.1:9080", secure=False))
        self.assertTrue(same_origin("HTTPS://Chat.Example.org", "chat.example.org", secure=True))
        self.assertTrue(same_origin("http://[::1]:9080", "[::1]:9080", secure=False))
        for origin, host, secure in (
            ("https://127.0.0.1:9080", "127.0.0.1:9080", False),
            ("http://127.0.0.1:9080", "127.0.0.1:9080", True),
            ("http://127.0.0.1:9081", "127.0.0.1:9080", False),
            ("http://127.0.0.1", "127.0.0.1:9080", False),
            ("http://evil.example", "127.0.0.1:9080", False),
            ("http://127.0.0.1:9080.evil.example", "127.0.0.1:9080", False),
            ("null", "127.0.0.1:9080", False),
            ("http://127.0.0.1:9080", "", False),
        ):
            self.assertFalse(same_origin(origin, host, secure), (origin, host, secure))

    def test_allowed_origins(self) -> None:
        extra = frozenset({"https://chat.example.org"})
        self.assertTrue(origin_allowed("https://chat.example.org/", "127.0.0.1:9080", False, extra))
        self.assertTrue(origin_allowed("http://127.0.0.1:9080", "127.0.0.1:9080", False, extra))
        for origin in (None, "", "http://chat.example.org", "https://chat.example.org.evil"):
            self.assertFalse(origin_allowed(origin, "127.0.0.1:9080", False, extra), origin)

    def test_host_of(self) -> None:
        self.assertEqual(host_of(IPv4Address("TCP", "192.0.2.1", 5)), "192.0.2.1")
        self.assertEqual(host_of(IPv6Address("TCP", "::1", 5)), "::1")
        self.assertEqual(host_of(UNIXAddress(b"/tmp/s")), str(UNIXAddress(b"/tmp/s")))


class Resets:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def abort(self, reason: str) -> None:
        self.reasons.append(reason)


class SendQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resets = Resets()
        self.queue = SendQueue(self.resets, self.clock, Settings(send_queue=1000, send_queue_timeout=5))

    def test_a_reading_page_is_never_counted(self) -> None:
        for _ in range(100):
            self.assertTrue(self.queue.admit(1000))
        self.assertEqual((self.queue.queued, self.queue.full), (0, False))

    def test_bytes_past_the_queue_reset_the_page(self) -> None:
        self.queue.pauseProducing()
        self.assertTrue(self.queue.admit(600))
        self.assertTrue(self.queue.admit(400))
        self.assertFalse(self.queue.admit(1))
        self.assertEqual(self.resets.reasons, ["send_queue"])

    def test_time_with_a_full_buffer_resets_the_page(self) -> None:
        self.queue.pauseProducing()
        self.clock.advance(4.9)
        self.queue.pauseProducing()  # told again: the deadline does not move
        self.clock.advance(0.1)
        self.assertEqual(self.resets.reasons, ["send_queue_timeout"])

    def test_a_page_that_catches_up_starts_afresh(self) -> None:
        self.queue.pauseProducing()
        self.queue.admit(900)
        self.clock.advance(4)
        self.queue.resumeProducing()
        self.assertEqual((self.queue.queued, self.queue.full), (0, False))
        self.clock.advance(10)
        self.assertTrue(self.queue.admit(900))
        self.assertEqual(self.resets.reasons, [])
        self.queue.pauseProducing()
        self.queue.stopProducing()
        self.clock.advance(10)
        self.assertEqual(self.resets.reasons, [])


class DebugClientTests(SynchronousTestCase):
    def test_chatd_debug_has_no_web_dialect(self) -> None:
        """Browsers speak WebSocket to --web-port: chatd-debug's dialects stay the three of the TCP port."""
        with self.assertRaises(CommandError):
            parse_command("dialect web", Session())
