"""
The security measures of docs/security.md, against the real service.

Each test starts chatd from make_service on ephemeral loopback ports
(127.0.0.1 only), talks to it with real sockets, bounds every wait, and stops
it at cleanup. Two kinds of clients: chatd.client.chat_client.ChatClient, the library a
person's program uses (TLS, keys, rekeying, reconnecting), and the test
clients of tests/loopback_clients.py, which seal and send datagrams one by
one, so that a test can capture, damage, replay, reorder and forge them.

The fuzz tests at the end feed arbitrary bytes to the relay and to
chatd.protocol.seal.Channel in memory, with hypothesis.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

import chatd.daemon.passwords
import chatd.daemon.rooms
from chatd.client.chat_client import ConnectionState
from chatd.client.events import ConnectionLost, Reconnecting, ServerStopping, Throttled
from chatd.client.pins import PinStore, default_pin_path
from chatd.client.tls import TrustPolicy
from chatd.daemon.rooms import Member
from chatd.daemon.service import ChatService
from chatd.protocol.certificates import fingerprint, make_self_signed
from chatd.protocol.datagrams import FrameType, RelayedMessage, decode_relay_body, encode_legacy
from chatd.protocol.errors import (
    CertificateChangedError,
    CertificateError,
    InvalidPasswordError,
    ProtocolError,
    RateLimitedError,
    Status,
)
from chatd.protocol.payloads import Dialect, RoomRequest
from chatd.protocol.seal import HEADER_SIZE, MAX_KEY_ID, Channel, Direction, Sealer, new_key
from chatd.protocol.wire import Frame, Operation, State
from tests.client_cases import HOST, ClientCase
from tests.helpers import capture_events, make_server
from tests.loopback_clients import (
    NO_CAPTURE,
    Capture,
    DatagramClient,
)
from tests.loopback_clients import ChatClient as RawClient
from tests.waiting import CLOCK, bounded, sleep, until

QUIET = 0.3
"""Seconds a socket must stay silent to count as never answered."""


@dataclass(frozen=True)
class Certificate:
    cert: str
    key: str
    fingerprint: str


def temporary_directory(case: unittest.SynchronousTestCase) -> str:
    # Not trial's mktemp: under pytest that would write into the working directory.
    directory = tempfile.mkdtemp(prefix="chatd-security-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def write_certificate(directory: str, name: str) -> Certificate:
    """A fresh self-signed pair (chatd.protocol.certificates.make_self_signed) in C{directory}."""
    cert_pem, key_pem = make_self_signed()
    paths = []
    for suffix, data in (("cert", cert_pem), ("key", key_pem)):
        path = os.path.join(directory, f"{name}-{suffix}.pem")
        with open(path, "wb") as file:
            file.write(data)
        os.chmod(path, 0o600)
        paths.append(path)
    return Certificate(paths[0], paths[1], fingerprint(cert_pem))


def sealed_header(key_id: int, counter: int) -> bytes:
    """The clear header of a sealed frame (chatd/protocol/seal.py): marker 0, version 1, flags 0, key id, counter."""
    return bytes((0, 1, 0)) + key_id.to_bytes(4, "big") + counter.to_bytes(8, "big")


def flip(data: bytes, index: int, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[index] ^= 1 << bit
    return bytes(damaged)


# -- the fixture ----------------------------------------------------------------


class _ServiceCase(ClientCase):
    """Starts services (with TLS when given a certificate) and clients, and stops them all at cleanup."""

    timeout = 30

    def serve(self, tls: Certificate | None = None, **overrides: Any) -> ChatService:
        """A started chatd on loopback ports the OS picks (TLS too, given a certificate)."""
        if tls is not None:
            overrides = {"tls_cert": tls.cert, "tls_key": tls.key, "tls_port": 0, **overrides}
        return super().serve(**overrides)

    def certificate(self, name: str = "server") -> Certificate:
        if not hasattr(self, "_directory"):
            self._directory = temporary_directory(self)
        return write_certificate(self._directory, name)

    # -- test clients (tests/loopback_clients.py) ----------------------------

    async def member(
        self,
        service: ChatService,
        name: str,
        room: str = "lobby",
        *,
        create: bool = False,
        capture: Capture = NO_CAPTURE,
    ) -> RawClient:
        """A native member that seals by hand, its UDP address registered by an answered keepalive."""
        client = RawClient(Dialect.NATIVE, name, HOST, service.tcp_port, service.udp_port, capture)
        self.addCleanup(lambda: Deferred.fromCoroutine(client.close()))
        await client.open()
        operation = Operation.CREATE if create else Operation.JOIN
        client.request(operation, room)
        ack = await client.tcp.next_frame()
        self.assertEqual((ack.operation, ack.state, ack.payload), (operation, State.ACKNOWLEDGE, b"\x00"))
        complete = await client.tcp.next_frame()
        self.assertEqual((complete.operation, complete.state), (operation, State.COMPLETE))
        details = json.loads(complete.payload)
        client.token = details["token"]
        client.adopt_key(details)
        client.udp.send(client.native(FrameType.KEEPALIVE))
        data, _ = await client.udp.next_datagram()
        self.assertEqual(client.unseal(data), (FrameType.KEEPALIVE_ACK, b""))
        return client

    async def members(self, service: ChatService, *names: str) -> list[RawClient]:
        """The first creates "lobby", the others join it."""
        return [await self.member(service, name, create=index == 0) for index, name in enumerate(names)]

    async def datagram_socket(self, service: ChatService, who: str) -> DatagramClient:
        """A UDP socket of its own on 127.0.0.1: a spoofer, an intruder, or a member's new address."""
        sender = DatagramClient(who, (HOST, service.udp_port))
        sender.listen(HOST)
        self.addCleanup(lambda: Deferred.fromCoroutine(sender.stop()))
        return sender

    async def relayed(self, recipient: RawClient) -> RelayedMessage:
        """The recipient's next datagram: a RELAY sealed under its key."""
        data, _ = await recipient.udp.next_datagram()
        frame_type, body = recipient.unseal(data)
        self.assertEqual(frame_type, FrameType.RELAY)
        return decode_relay_body(body)

    async def processed(self, service: ChatService, count: int) -> None:
        """Wait until the relay has taken in C{count} more datagrams than it had when this was called."""
        relay = service.server.relay
        target = relay.received + count

        def done() -> bool:
            return relay.received >= target

        await until(done, f"the relay takes in {count} more datagrams")

    async def quiet(self, *sockets: DatagramClient) -> None:
        """Nothing arrives on any of C{sockets} within QUIET seconds."""
        await sleep(QUIET)
        for sock in sockets:
            self.assertEqual(sock.pending, 0, f"{sock.who} was sent something")

    def address_of(self, service: ChatService, client: RawClient) -> tuple[str, int] | None:
        member = service.server.store.member_for_key_id(client.key_id)
        assert member is not None
        return member.address


# -- TLS ----------------------------------------------------------------------


class TLSTests(_ServiceCase):
    """Native clients over the daemon's TLS port, with each way of trusting the server."""

    async def test_native_session_over_tls(self) -> None:
        """Two clients over TLS (a CA file, a fingerprint): messages both ways, sealed on UDP."""
        cert = self.certificate()
        service = self.serve(cert)
        alice = await self.enter(service, "alice", create=True, tls=TrustPolicy.ca_file(cert.cert))
        bob = await self.enter(service, "bob", tls=TrustPolicy.fingerprint(cert.fingerprint))
        connections = service.server.tcp_factory.connections
        self.assertEqual([connection.secure for connection in connections], [True, True])
        alice.client.send("over TLS 🔒")
        await bob.heard.message("alice", "over TLS 🔒")
        bob.client.send("and back")
        await alice.heard.message("bob", "and back")
        self.assertEqual(alice.heard.messages_from("bob"), ["and back"])
        self.assertEqual(bob.heard.messages_from("alice"), ["over TLS 🔒"])
        self.assertEqual((service.server.relay.drops.total, alice.client.dropped_datagrams), (0, 0))

    async def test_wrong_fingerprint_is_refused_and_not_retried(self) -> None:
        """A client pinning another certificate: CertificateError naming both fingerprints, one attempt only."""
        cert = self.certificate()
        other = self.certificate("other")
        service = self.serve(cert)
        built = self.count_connections(service)
        eve = self.person(service, "eve", TrustPolicy.fingerprint(other.fingerprint))
        error = await self.refused(eve.client.join("lobby", "eve"), CertificateError)
        self.assertNotIsInstance(error, CertificateChangedError)
        message = str(error)
        self.assertIn(f"expected {other.fingerprint}", message)
        self.assertIn(f"presented {cert.fingerprint}", message)
        self.assertNotIn("\n", message, "one line: line mode would print a newline as a literal \\n")
        self.assertIn(f"{HOST}:{service.tls_port}", message)
        await until(lambda: not service.server.tcp_factory.connections, "the refused connection is closed")
        await sleep(QUIET)  # three times the first retry delay
        self.assertEqual((built, eve.client.state, eve.heard.events), ([1], ConnectionState.IDLE, []))
        self.assertEqual(service.server.store.member_count(), 0)

    def count_connections(self, service: ChatService) -> list[int]:
        """A one-element list counting the TCP connections the service accepts from now on."""
        factory = service.server.tcp_factory
        build = factory.buildProtocol
        built = [0]

        def counting(addr: Any) -> Protocol | None:
            built[0] += 1
            return build(addr)

        self.patch(factory, "buildProtocol", counting)
        return built

    def private_config_home(self) -> str:
        """Point XDG_CONFIG_HOME at a temporary directory for this test, so no pin reaches ~/.config."""
        directory = temporary_directory(self)
        old = os.environ.get("XDG_CONFIG_HOME")
        os.environ["XDG_CONFIG_HOME"] = directory

        def restore() -> None:
            if old is None:
                os.environ.pop("XDG_CONFIG_HOME", None)
            else:
                os.environ["XDG_CONFIG_HOME"] = old

        self.addCleanup(restore)
        return directory

    async def test_trust_on_first_use(self) -> None:
        """The first connection pins the certificate in the XDG config directory; the next one passes the pin."""
        config = self.private_config_home()
        cert = self.certificate()
        service = self.serve(cert)
        assert service.tls_port is not None
        self.assertEqual(default_pin_path(), os.path.join(config, "chatd", "known_servers.json"))
        self.assertIsNone(PinStore().get(HOST, service.tls_port))
        first = await self.enter(service, "alice", create=True, tls=TrustPolicy.tofu())
        self.assertEqual(first.client.newly_pinned, cert.fingerprint)
        self.assertEqual(PinStore().get(HOST, service.tls_port), cert.fingerprint)
        second = await self.enter(service, "bob", tls=TrustPolicy.tofu())
        self.assertIsNone(second.client.newly_pinned)
        second.client.send("pinned and trusted")
        await first.heard.message("bob", "pinned and trusted")
        # Another server on another port, whose pin names a different certificate.
        replacement = self.certificate("changed")
        changed = self.serve(replacement)
        assert changed.tls_port is not None
        PinStore().pin(HOST, changed.tls_port, cert.fingerprint)
        eve = self.person(changed, "eve", TrustPolicy.tofu())
        error = await self.refused(eve.client.join("lobby", "eve"), CertificateChangedError)
        self.assertIn(f"pinned {cert.fingerprint}", str(error))
        self.assertIn(f"presented {replacement.fingerprint}", str(error))
        self.assertIn(f"`chatd-cert --forget {HOST}:{changed.tls_port}`", str(error))
        self.assertNotIn("\n", str(error), "one line: line mode would print a newline as a literal \\n")
        self.assertEqual(PinStore().get(HOST, changed.tls_port), cert.fingerprint)

    async def test_changed_certificate_stops_reconnecting(self) -> None:
        """
        A member pinned the server; the daemon comes back on the same ports
        with another certificate. The client refuses it, says so once, and
        stops: there is nothing to come back to.
        """
        self.private_config_home()
        first_certificate = self.certificate("first")
        first_fingerprint = first_certificate.fingerprint
        first = self.serve(first_certificate)
        tls_port, udp_port = first.tls_port, first.udp_port
        assert tls_port is not None
        alice = await self.enter(first, "alice", create=True, tls=TrustPolicy.tofu())
        await bounded(first.stopService(), "the first service stops")
        await alice.heard.next(ServerStopping)
        impostor = self.certificate("impostor")
        second = self.serve(impostor, tls_port=tls_port, udp_port=udp_port)
        built = self.count_connections(second)
        lost = await alice.heard.next(ConnectionLost, lambda event: not event.will_reconnect)
        self.assertIn("HAS CHANGED", lost.reason)
        self.assertIn(f"pinned {first_fingerprint}", lost.reason)
        self.assertIn(f"presented {impostor.fingerprint}", lost.reason)
        self.assertEqual(alice.client.state, ConnectionState.CLOSED)
        await until(lambda: alice.client._udp is None, "the client closes its UDP socket")
        await sleep(1.0)  # twice the longest retry delay
        self.assertEqual(built, [1], "the client kept reconnecting to a server it does not trust")
        self.assertEqual(alice.heard.of(ConnectionLost)[-1], lost)
        self.assertEqual(second.server.store.member_count(), 0)
        self.assertEqual(PinStore().get(HOST, tls_port), first_fingerprint)
        # It did try once: the refusal came from the new server, not from nobody listening.
        self.assertGreaterEqual(len(alice.heard.of(Reconnecting)), 1)


# -- sealed datagrams --------------------------------------------------------


class SealedDatagramTests(_ServiceCase):
    """Damaged, replayed, reordered, forged and roaming datagrams against the real relay."""

    async def test_every_flipped_bit_is_dropped(self) -> None:
        """
        One bit flipped anywhere in a captured datagram: dropped, never
        relayed, never answered, and the window is not moved: the intact
        datagram is still accepted afterwards.
        """
        service = self.serve()
        relay = service.server.relay
        alice, bob = await self.members(service, "alice", "bob")
        address = self.address_of(service, alice)
        captured = alice.native(FrameType.MESSAGE, b"flip me")
        last = len(captured) - 1
        cases: list[tuple[int, int, str | None]] = [
            (0, 0, None),  # no longer the sealed marker: judged as a legacy datagram, whatever it says
            (1, 1, "unsupported_version"),
            (2, 7, "unsupported_version"),
            (3, 7, "unknown_key"),  # key id
            (6, 0, "unknown_key"),
            (7, 7, "unauthenticated"),  # counter: still fresh, but its nonce is another one
            (9, 2, "unauthenticated"),
            (HEADER_SIZE - 1, 4, "unauthenticated"),
            (HEADER_SIZE, 0, "unauthenticated"),  # the encrypted frame type
            (HEADER_SIZE + 1, 5, "unauthenticated"),  # ciphertext
            (HEADER_SIZE + 4, 3, "unauthenticated"),
            (last - 16, 6, "unauthenticated"),  # the last ciphertext byte
            (last - 15, 0, "unauthenticated"),  # the tag
            (last - 8, 1, "unauthenticated"),
            (last, 7, "unauthenticated"),
        ]
        sent_before = relay.sent
        for index, bit, reason in cases:
            before = relay.drops.counts.copy()
            alice.udp.send(flip(captured, index, bit))
            await self.processed(service, 1)
            dropped = relay.drops.counts - before
            self.assertEqual(sum(dropped.values()), 1, f"byte {index} bit {bit}: {dropped}")
            if reason is not None:
                self.assertEqual(dropped, Counter({reason: 1}), f"byte {index} bit {bit}")
        # Then every single bit from the counter on, in batches the socket buffer holds.
        before = relay.drops.counts.copy()
        flipped = [flip(captured, index, bit) for index in range(7, len(captured)) for bit in range(8)]
        for start in range(0, len(flipped), 50):
            batch = flipped[start : start + 50]
            for datagram in batch:
                alice.udp.send(datagram)
            await self.processed(service, len(batch))
        # The counter is 1 here, so clearing its lowest bit names counter 0, the keepalive's: a replay.
        expected = Counter({"unauthenticated": len(flipped) - 1, "replayed": 1})
        self.assertEqual(relay.drops.counts - before, expected)
        await self.quiet(alice.udp, bob.udp)
        self.assertEqual((relay.sent, self.address_of(service, alice)), (sent_before, address))
        alice.udp.send(captured)
        self.assertEqual((await self.relayed(bob)).text, "flip me")
        await self.quiet(alice.udp, bob.udp)

    async def test_forgeries_get_no_answer(self) -> None:
        """
        A spoofer claims alice's key id without her key: a keepalive (which
        would be answered if it were genuine) and a message. Nothing comes
        back to it, nothing is relayed, and alice keeps her address.
        """
        service = self.serve()
        relay = service.server.relay
        alice, bob = await self.members(service, "alice", "bob")
        address = self.address_of(service, alice)
        spoofer = await self.datagram_socket(service, "spoofer")
        forger = Sealer(new_key())
        assert alice.channel is not None
        for counter in range(alice.channel.sent, alice.channel.sent + 5):
            spoofer.send(forger.seal(Direction.TO_SERVER, alice.key_id, counter, FrameType.KEEPALIVE, b""))
            spoofer.send(alice.forged("hijack", counter=counter))
        await self.processed(service, 10)
        await self.quiet(spoofer, alice.udp, bob.udp)
        self.assertEqual(relay.drops.counts, Counter({"unauthenticated": 10}))
        self.assertEqual(self.address_of(service, alice), address)
        # Alice's own next datagrams still pass: the forgeries did not move her window.
        alice.say("still me")
        self.assertEqual((await self.relayed(bob)).text, "still me")

    async def test_replay_is_dropped(self) -> None:
        """A captured datagram sent again, from its owner's own address: relayed once only."""
        service = self.serve()
        relay = service.server.relay
        alice, bob = await self.members(service, "alice", "bob")
        captured = alice.say("only once")
        self.assertEqual((await self.relayed(bob)).text, "only once")
        alice.udp.send(captured)
        alice.udp.send(captured)
        alice.say("next")
        self.assertEqual((await self.relayed(bob)).text, "next")
        self.assertEqual(relay.drops.counts, Counter({"replayed": 2}))
        await self.quiet(alice.udp, bob.udp)

    async def test_replay_from_another_address_does_not_move_the_member(self) -> None:
        """A captured datagram replayed from elsewhere is dropped; the member stays where it was."""
        service = self.serve()
        relay = service.server.relay
        alice, bob = await self.members(service, "alice", "bob")
        address = self.address_of(service, alice)
        self.assertEqual(address, (HOST, alice.udp.port))
        captured = alice.say("captured")
        self.assertEqual((await self.relayed(bob)).text, "captured")
        intruder = await self.datagram_socket(service, "intruder")
        intruder.send(captured)
        await self.processed(service, 1)
        self.assertEqual(relay.drops.counts, Counter({"replayed": 1}))
        self.assertEqual(self.address_of(service, alice), address)
        bob.say("to alice, where she is")
        self.assertEqual((await self.relayed(alice)).text, "to alice, where she is")
        await self.quiet(intruder, alice.udp, bob.udp)

    async def test_roaming_moves_the_member_and_spoofers_cannot(self) -> None:
        """
        An authenticated, fresh datagram from a new address moves the member
        there (roaming); a replay or a forgery from a third address does not
        move it again.
        """
        service = self.serve()
        relay = service.server.relay
        alice, bob = await self.members(service, "alice", "bob")
        old_captured = alice.say("from home")
        self.assertEqual((await self.relayed(bob)).text, "from home")
        roamed = await self.datagram_socket(service, "alice on another network")
        roamed.send(alice.message("from the train"))
        self.assertEqual((await self.relayed(bob)).text, "from the train")
        self.assertEqual(self.address_of(service, alice), (HOST, roamed.port))
        bob.say("found you")
        data, _ = await roamed.next_datagram()
        frame_type, body = alice.unseal(data)
        self.assertEqual((frame_type, decode_relay_body(body).text), (FrameType.RELAY, "found you"))
        spoofer = await self.datagram_socket(service, "spoofer")
        spoofer.send(old_captured)
        spoofer.send(alice.forged("take over"))
        await self.processed(service, 2)
        self.assertEqual(relay.drops.counts, Counter({"replayed": 1, "unauthenticated": 1}))
        self.assertEqual(self.address_of(service, alice), (HOST, roamed.port))
        await self.quiet(spoofer, alice.udp, roamed, bob.udp)

    async def test_another_members_key_is_not_this_members(self) -> None:
        """A member seals with its own key but claims another member's key id: unauthenticated."""
        service = self.serve()
        relay = service.server.relay
        alice, bob, carol = await self.members(service, "alice", "bob", "carol")
        address = self.address_of(service, alice)
        assert alice.channel is not None and bob.channel is not None
        impersonation = Sealer(bob.channel.key).seal(
            Direction.TO_SERVER, alice.key_id, alice.channel.sent, FrameType.MESSAGE, b"I am alice"
        )
        bob.udp.send(impersonation)
        await self.processed(service, 1)
        self.assertEqual(relay.drops.counts, Counter({"unauthenticated": 1}))
        self.assertEqual(self.address_of(service, alice), address)
        self.assertEqual(self.address_of(service, bob), (HOST, bob.udp.port))
        await self.quiet(alice.udp, bob.udp, carol.udp)
        # Alice's next genuine counter is still hers to use.
        alice.say("this is alice")
        for recipient in (bob, carol):
            relayed = await self.relayed(recipient)
            self.assertEqual((relayed.sender, relayed.text), ("alice", "this is alice"))

    async def test_native_token_in_the_legacy_form_is_refused(self) -> None:
        """The sealing cannot be bypassed: a native member's token in a plain legacy datagram is unknown."""
        service = self.serve()
        relay = service.server.relay
        alice, bob = await self.members(service, "alice", "bob")
        alice.udp.send(encode_legacy("lobby", alice.token, "in clear"))
        await self.processed(service, 1)
        self.assertEqual(relay.drops.counts, Counter({"unknown_token": 1}))
        await self.quiet(alice.udp, bob.udp)

    async def test_reordered_datagrams_are_accepted_once_each(self) -> None:
        """Out of order but inside the window: each accepted once, relayed once; duplicates dropped as replayed."""
        service = self.serve()
        relay = service.server.relay
        alice, bob = await self.members(service, "alice", "bob")
        sealed = [alice.message(f"m{index}") for index in range(6)]
        order = [3, 0, 5, 1, 4, 2]
        for index in order + order:
            alice.udp.send(sealed[index])
        heard = [(await self.relayed(bob)).text for _ in order]
        self.assertEqual(heard, [f"m{index}" for index in order])
        await until(lambda: relay.drops.total == len(order), "every duplicate dropped")
        self.assertEqual(relay.drops.counts, Counter({"replayed": len(order)}))
        await self.quiet(alice.udp, bob.udp)
        # A counter never seen but older than the window is refused as well.
        assert alice.channel is not None
        too_old = alice.message("from long ago")
        alice.channel.sent += 1024
        alice.say("far ahead")
        self.assertEqual((await self.relayed(bob)).text, "far ahead")
        alice.udp.send(too_old)
        alice.say("after")
        self.assertEqual((await self.relayed(bob)).text, "after")
        self.assertEqual(relay.drops.counts, Counter({"replayed": len(order) + 1}))

    async def test_sealed_message_shows_neither_token_nor_text(self) -> None:
        """
        The native datagrams carry neither the token, nor the key, nor the
        text, as bytes or as hex. With CHATD_CAPTURE set, the datagrams and
        the secrets they hide are written to the capture file.
        """
        capture = Capture.from_environment("native")
        capture.heading(f"{self.id()}: one sealed MESSAGE and its RELAY, with the secrets they must not show")
        service = self.serve()
        alice = await self.member(service, "alice", create=True, capture=capture)
        bob = await self.member(service, "bob", capture=capture)
        text = "meet at the old mill at noon 🗝"
        datagram = alice.say(text)
        data, _ = await bob.udp.next_datagram()
        frame_type, body = bob.unseal(data)
        self.assertEqual((frame_type, decode_relay_body(body).text), (FrameType.RELAY, text))
        assert alice.channel is not None and bob.channel is not None
        capture.note(f"alice's token: {alice.token}")
        capture.note(f"alice's key id: {alice.key_id}, key: {base64.b64encode(alice.channel.key).decode()}")
        capture.note(f"text: {text!r} = {text.encode().hex()}")
        capture.note(f"sealed MESSAGE alice->server: {datagram.hex()}")
        capture.note(f"sealed RELAY server->bob: {data.hex()}")
        self.assertEqual(datagram[:HEADER_SIZE], sealed_header(alice.key_id, 1))
        secrets = [
            alice.token.encode("ascii"),
            bob.token.encode("ascii"),
            alice.channel.key,
            bob.channel.key,
            text.encode("utf-8"),
            b"meet",
        ]
        for wire in (datagram, data):
            for secret in secrets:
                self.assertNotIn(secret, wire)
                self.assertNotIn(secret.hex(), wire.hex())
            for clear in (alice.token, bob.token, text):
                self.assertNotIn(clear, wire.hex())
                self.assertNotIn(clear, wire.decode("latin-1"))


# -- key rotation --------------------------------------------------------------


class KeyRotationTests(_ServiceCase):
    async def test_rekeying_keeps_chatting_and_retires_the_old_key(self) -> None:
        """
        With a new key every 5 datagrams, 40 messages go both ways across
        several rekeys, none lost; a datagram under the first key is then
        dropped as unknown_key, even from its owner's own address.
        """
        service = self.serve()
        relay = service.server.relay
        alice = await self.enter(service, "alice", create=True, rekey_after=5)
        bob = await self.enter(service, "bob", rekey_after=5)
        first = alice.channel
        alice_keys = {first.key_id}
        bob_keys = {bob.channel.key_id}
        for index in range(20):
            alice.client.send(f"a{index}")
            await bob.heard.message("alice", f"a{index}")
            bob.client.send(f"b{index}")
            await alice.heard.message("bob", f"b{index}")
            alice_keys.add(alice.channel.key_id)
            bob_keys.add(bob.channel.key_id)
        self.assertEqual(bob.heard.messages_from("alice"), [f"a{index}" for index in range(20)])
        self.assertEqual(alice.heard.messages_from("bob"), [f"b{index}" for index in range(20)])
        # About one new key per 5 datagrams.
        self.assertGreaterEqual(len(alice_keys), 4)
        self.assertGreaterEqual(len(bob_keys), 4)
        self.assertIsNone(service.server.store.member_for_key_id(first.key_id))
        # The old key is dead: a datagram sealed under it, from alice's own socket, is dropped.
        before = relay.drops.counts.copy()
        alice.send_raw(first.seal(FrameType.MESSAGE, b"under the old key"))
        await until(lambda: relay.drops.counts != before, "the old key's datagram is dropped")
        self.assertEqual(relay.drops.counts - before, Counter({"unknown_key": 1}))
        await sleep(QUIET)
        self.assertNotIn("under the old key", bob.heard.messages_from("alice"))
        alice.client.send("the new key works")
        await bob.heard.message("alice", "the new key works")


# -- abuse ---------------------------------------------------------------------


class FloodTests(_ServiceCase):
    RATE, BURST = 50.0, 50.0
    BATCH, PAUSE = 50, 0.01
    """The flooder sends BATCH datagrams at once, then lets the reactor turn: up to some
    5000 a second, and never more than the server's socket buffer holds, so that every
    loss is the server's choice."""
    MINIMUM, DURATION, MAXIMUM = 2000, 1.0, 10000
    """The flood lasts at least DURATION seconds and MINIMUM datagrams, and stops at MAXIMUM."""

    async def test_a_flooder_is_throttled_and_the_room_goes_on(self) -> None:
        """
        While a member floods, two others exchange 20 messages and all
        arrive, a newcomer joins within a second, and the flooder gets no
        more than its burst plus its rate through, and is told so.
        """
        service = self.serve(messages_per_s=self.RATE, message_burst=self.BURST)
        relay = service.server.relay
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        flooder = await self.member(service, "flooder")
        sent = [0]
        exchanged = [False]

        async def flood() -> float:
            started = CLOCK.seconds()

            def enough() -> bool:
                long_enough = CLOCK.seconds() - started >= self.DURATION and sent[0] >= self.MINIMUM
                return sent[0] >= self.MAXIMUM or (exchanged[0] and long_enough)

            while not enough():
                for _ in range(self.BATCH):
                    flooder.udp.send(flooder.native(FrameType.MESSAGE, f"flood {sent[0]}".encode()))
                    sent[0] += 1
                await deferLater(CLOCK, self.PAUSE)
            return started

        flooding = Deferred.fromCoroutine(flood())
        joined_after = 0.0
        for index in range(10):
            alice.client.send(f"a{index}")
            await bob.heard.message("alice", f"a{index}")
            bob.client.send(f"b{index}")
            await alice.heard.message("bob", f"b{index}")
            if index == 4:
                # Meanwhile, a newcomer gets in within a second.
                self.assertFalse(flooding.called, "the flood ended before the newcomer came")
                started = time.monotonic()
                carol = await self.enter(service, "carol", within=1.0)
                joined_after = time.monotonic() - started
        exchanged[0] = True
        flood_started = await bounded(flooding, "the flood ends")
        # Every flood datagram accounted for: relayed (bob heard it) or dropped as rate_limited.
        # None was lost on the way, so every drop was the server's choice.

        def accounted() -> bool:
            return relay.drops.counts["rate_limited"] + len(bob.heard.messages_from("flooder")) >= sent[0]

        await until(accounted, "every flood datagram relayed or dropped", timeout=10.0)
        elapsed = CLOCK.seconds() - flood_started
        relayed = len(bob.heard.messages_from("flooder"))
        await sleep(QUIET)
        self.assertEqual(len(bob.heard.messages_from("flooder")), relayed, "flood relayed after it was dropped")

        self.assertLess(joined_after, 1.0)
        self.assertGreaterEqual(sent[0], self.MINIMUM)
        self.assertEqual(bob.heard.messages_from("alice"), [f"a{index}" for index in range(10)])
        self.assertEqual(alice.heard.messages_from("bob"), [f"b{index}" for index in range(10)])
        limit = self.BURST + self.RATE * elapsed + 5
        self.assertLessEqual(relayed, limit, f"{relayed} of {sent[0]} relayed in {elapsed:.2f} s")
        self.assertGreaterEqual(relayed, self.BURST, "throttled, not muted")
        self.assertGreater(relay.drops.counts["rate_limited"], sent[0] - limit)
        self.assertEqual(set(relay.drops.counts), {"rate_limited"})
        notices = [
            json.loads(frame.payload) for frame in flooder.tcp.frames.pending if frame.operation is Operation.NOTICE
        ]
        throttled = [notice for notice in notices if notice["event"] == "throttled"]
        self.assertGreaterEqual(len(throttled), 1, notices)
        self.assertEqual(throttled[0]["room"], "lobby")
        # The others were never throttled, and the newcomer hears the room too.
        for person in (alice, bob, carol):
            self.assertEqual(person.heard.of(Throttled), [])
        alice.client.send("after the flood")
        await carol.heard.message("alice", "after the flood")


class PasswordGuessingTests(_ServiceCase):
    BURST = 3

    async def test_guessing_is_slowed(self) -> None:
        """
        With loopback limited, the (burst + 1)-th wrong guess from 127.0.0.1 is
        refused at once with RateLimitedError, without hashing; a join
        without a password is never charged.
        """
        service = self.serve(
            limit_loopback=True,
            # One more for the host: a create with a password is an attempt too.
            password_attempt_burst=float(self.BURST + 1),
            password_attempts_per_min=1.0,
            connections_per_s=1000.0,
            connection_burst=1000.0,
        )
        checks = [0]
        verify = chatd.daemon.passwords.verify_password

        def counting(password: str, stored: Any) -> bool:
            checks[0] += 1
            return verify(password, stored)

        self.patch(chatd.daemon.rooms, "verify_password", counting)
        await self.enter(service, "host", "vault", create=True, password="sesame")
        await self.enter(service, "host", "open", create=True)
        # Open-room joins cost nothing, however many.
        for index in range(self.BURST + 2):
            guest = await self.enter(service, f"guest{index}", "open")
            await bounded(guest.client.leave(), "the guest leaves")
        for index in range(self.BURST):
            guesser = self.person(service, f"guesser{index}")
            await self.refused(guesser.client.join("vault", f"guesser{index}", f"guess{index}"), InvalidPasswordError)
        self.assertEqual(checks, [self.BURST])
        started = time.monotonic()
        guesser = self.person(service, "guesser")
        error = await self.refused(guesser.client.join("vault", "guesser", "one more"), RateLimitedError)
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 1.0)
        self.assertIn("too many password attempts", str(error))
        # Charged before the check: even the right password waits now, and nothing was hashed.
        await self.refused(self.person(service, "late").client.join("vault", "late", "sesame"), RateLimitedError)
        self.assertEqual(checks, [self.BURST])
        # An open room still admits this address.
        await self.enter(service, "latecomer", "open")


# -- legacy off, native-only rooms -------------------------------------------


class NativeOnlyTests(_ServiceCase):
    async def raw_client(
        self, service: ChatService, dialect: Dialect, name: str, tls: TrustPolicy | None = None
    ) -> RawClient:
        port = service.tcp_port
        if tls is not None:
            assert service.tls_port is not None
            port = service.tls_port
        client = RawClient(dialect, name, HOST, port, service.udp_port, NO_CAPTURE, tls)
        self.addCleanup(lambda: Deferred.fromCoroutine(client.close()))
        await client.open()
        return client

    def assert_status(self, frame: Frame, operation: Operation, status: Status) -> None:
        self.assertEqual(
            (frame.operation, frame.state, frame.payload[:1]), (operation, State.ACKNOWLEDGE, bytes((status,)))
        )

    async def test_legacy_off(self) -> None:
        """legacy=False: model and seed requests are refused NOT_PERMITTED; native clients chat as before."""
        service = self.serve(legacy=False)
        for dialect in (Dialect.MODEL, Dialect.SEED):
            legacy = await self.raw_client(service, dialect, "oldtimer")
            legacy.request(Operation.CREATE, "lobby")
            self.assert_status(await legacy.tcp.next_frame(), Operation.CREATE, Status.NOT_PERMITTED)
        self.assertEqual(service.server.store.rooms(), [])
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        alice.client.send("native only")
        await bob.heard.message("alice", "native only")

    async def test_native_only_room_over_tls(self) -> None:
        """A native-only room is created over TLS only, and refuses legacy joins; native members chat in it."""
        cert = self.certificate()
        service = self.serve(cert)
        policy = TrustPolicy.ca_file(cert.cert)
        # Not over plain TCP: the key would cross in clear.
        plain = await self.raw_client(service, Dialect.NATIVE, "alice")
        plain.request(Operation.CREATE, "secret", native_only=True)
        refusal = await plain.tcp.next_frame()
        self.assert_status(refusal, Operation.CREATE, Status.NOT_PERMITTED)
        self.assertIn("TLS", json.loads(refusal.payload[1:])["message"])
        host = await self.raw_client(service, Dialect.NATIVE, "alice", tls=policy)
        host.request(Operation.CREATE, "secret", native_only=True)
        ack = await host.tcp.next_frame()
        self.assertEqual((ack.operation, ack.state, ack.payload), (Operation.CREATE, State.ACKNOWLEDGE, b"\x00"))
        complete = await host.tcp.next_frame()
        host.adopt_key(json.loads(complete.payload))
        for dialect in (Dialect.MODEL, Dialect.SEED):
            legacy = await self.raw_client(service, dialect, "oldtimer")
            legacy.request(Operation.JOIN, "secret")
            self.assert_status(await legacy.tcp.next_frame(), Operation.JOIN, Status.NOT_PERMITTED)
        bob = await self.enter(service, "bob", "secret", tls=policy)
        self.assertEqual(service.server.store.member_count(), 2)
        host.udp.send(host.native(FrameType.KEEPALIVE))
        await host.udp.next_datagram()
        host.say("sealed all the way")
        await bob.heard.message("alice", "sealed all the way")
        self.assertEqual(service.server.relay.drops.total, 0)


# -- fuzz ------------------------------------------------------------------------


SOURCES = st.tuples(st.sampled_from(["127.0.0.1", "10.0.0.7", "::1", "192.0.2.1"]), st.integers(1, 65535))


class FuzzTests(unittest.SynchronousTestCase):
    """Arbitrary bytes, from anywhere, at a relay with native members: no exception, no output, no move."""

    def setUp(self) -> None:
        self.server, _clock, self.transport = make_server()
        store = self.server.store
        self.native: list[Member] = []
        for index, name in enumerate(["ann", "bob", "cat"]):
            request = RoomRequest(name, version=1)
            entering = (
                store.join_room("hoge", request, Dialect.NATIVE)
                if index
                else store.create_room("hoge", request, Dialect.NATIVE)
            )
            member = self.successResultOf(entering)
            store.bind_address(member, ("127.0.0.1", 5000 + index))
            self.native.append(member)
        legacy = self.successResultOf(store.join_room("hoge", RoomRequest("dan"), Dialect.MODEL))
        store.bind_address(legacy, ("127.0.0.1", 5003))
        self.members = [*self.native, legacy]
        self.addresses = [member.address for member in self.members]
        self.transport.written.clear()
        self.events = capture_events(self)

    def key_id(self, index: int) -> int:
        """One of the native members' key ids, or (index 3) an id nobody holds."""
        if index < len(self.native):
            channel = self.native[index].channel
            assert channel is not None
            return channel.key_id
        held = {member.channel.key_id for member in self.native if member.channel is not None}
        return next(key_id for key_id in (1, 2, 3, 4) if key_id not in held)

    @settings(max_examples=400, deadline=None)
    @given(
        tail=st.binary(max_size=300),
        sealed=st.booleans(),
        member=st.integers(0, 3),
        counter=st.integers(0, 2**64 - 1),
        source=SOURCES,
    )
    def test_relay_drops_arbitrary_datagrams_silently(
        self, tail: bytes, sealed: bool, member: int, counter: int, source: tuple[str, int]
    ) -> None:
        datagram = sealed_header(self.key_id(member), counter) + tail if sealed else tail
        relay = self.server.relay
        received, dropped = relay.received, relay.drops.total
        relay.datagramReceived(datagram, source)
        self.assertEqual((relay.received, relay.drops.total), (received + 1, dropped + 1))
        self.assertEqual(self.transport.written, [])
        self.assertEqual([m.address for m in self.members], self.addresses)
        self.assertEqual([m.channel.newest_received for m in self.native if m.channel is not None], [-1, -1, -1])
        self.assertEqual([event for event in self.events if "log_failure" in event], [])

    @settings(max_examples=400, deadline=None)
    @given(data=st.binary(max_size=300), claim=st.booleans(), counter=st.integers(0, 2**64 - 1))
    def test_channel_open_raises_only_protocol_errors(self, data: bytes, claim: bool, counter: int) -> None:
        for sending in Direction:
            channel = Channel(new_key(), 7, sending)
            datagram = sealed_header(7, counter) + data if claim else data
            try:
                opened = channel.open(datagram)
            except ProtocolError:
                pass
            else:
                self.fail(f"opened a datagram sealed under no key: {opened!r}")
            self.assertEqual(channel.newest_received, -1)

    def test_key_ids_are_in_range(self) -> None:
        for member in self.native:
            assert member.channel is not None
            self.assertTrue(1 <= member.channel.key_id <= MAX_KEY_ID)
