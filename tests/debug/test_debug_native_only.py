"""
chatd-debug over TLS and its create --native-only, against the real daemon
(docs/protocol.md 4.8: a native-only room is created over TLS only).
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from chatd.client.tls import TrustMode, TrustPolicy
from chatd.client.tls_arguments import DEFAULT_TLS_PORT
from chatd.daemon.service import ChatService
from chatd.debug.client import DebugClient, parse_arguments
from tests.debug.test_debug_client import Transcript
from tests.test_security import _ServiceCase

FINGERPRINT = "SHA256:" + ":".join(["ab"] * 32)


class NativeOnlyDebugTests(_ServiceCase):
    timeout = 20

    async def start_client(self, service: ChatService, tls: TrustPolicy | None) -> tuple[DebugClient, Transcript]:
        port = service.tcp_port
        if tls is not None:
            assert service.tls_port is not None
            port = service.tls_port
        transcript = Transcript()
        client = DebugClient(reactor, transcript, "127.0.0.1", port, service.udp_port, tls)
        self.addCleanup(client.shutdown)
        self.assertTrue(await client.connect(), str(transcript))
        return client, transcript

    async def command(self, client: DebugClient, transcript: Transcript, line: str, needle: str) -> str:
        since = transcript.mark()
        client.handle_line(line)
        try:
            return await transcript.wait_for(needle, since).addTimeout(5, reactor)
        except Exception:
            self.fail(f"no {needle!r} in the output:\n{transcript}")

    def rooms(self, service: ChatService) -> list[tuple[str, bool]]:
        return [(room.name, room.native_only) for room in service.server.store.rooms()]

    async def test_native_only_create_over_tls(self) -> None:
        cert = self.certificate()
        service = self.serve(cert)
        ann, out = await self.start_client(service, TrustPolicy.ca_file(cert.cert))
        ann.handle_line("dialect native")
        await self.command(ann, out, "create secret ann --native-only", "-- token for room 'secret'")
        self.assertIn("""payload '{"chatd": 1, "username": "ann", "native_only": true}'""", str(out))
        await self.command(ann, out, "keepalive", "<< UDP")
        self.assertEqual(self.rooms(service), [("secret", True)])

    async def test_over_plain_tcp_the_refusal_shows(self) -> None:
        service = self.serve()
        ann, out = await self.start_client(service, None)
        ann.handle_line("dialect native")
        refused = await self.command(ann, out, "create secret ann --native-only", "status 9 NOT_PERMITTED")
        self.assertIn("a native-only room can only be created over TLS", refused)
        self.assertEqual(self.rooms(service), [])

    async def test_a_refused_certificate_is_said(self) -> None:
        cert = self.certificate()
        service = self.serve(cert)
        eve, out = await self.start_client(service, TrustPolicy.fingerprint(FINGERPRINT))
        lost = await self.command(eve, out, "create den eve", "!! TCP connection lost")
        self.assertIn("The TLS certificate of 127.0.0.1:", lost)
        self.assertIn(f"(expected {FINGERPRINT}, presented {cert.fingerprint})", lost)


class TLSArgumentTests(SynchronousTestCase):
    def test_tls_options(self) -> None:
        self.assertIsNone(parse_arguments([]).tls)
        options = parse_arguments(["--tls-port", "9443"])
        self.assertEqual((options.tls.mode, options.tcp_port), (TrustMode.TOFU, 9443))
        options = parse_arguments(["--tls-ca", "cert.pem"])
        self.assertEqual((options.tls.mode, options.tcp_port), (TrustMode.CA_FILE, DEFAULT_TLS_PORT))
        options = parse_arguments(["--tls-fingerprint", FINGERPRINT])
        self.assertEqual(options.tls.mode, TrustMode.FINGERPRINT)
