"""
TLS: certificates, the server's options, the client's trust policies and
chatd-cert. The handshake tests use real TLS on 127.0.0.1 with Twisted's
endpoints, as the daemon and the client library will.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import stat
import sys
import tempfile
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IHandshakeListener, IListeningPort, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial import unittest
from typing_extensions import override
from zope.interface import implementer

from chatd.client import cert_tool
from chatd.client.pins import PinStore, default_pin_path, server_key
from chatd.client.tls import ChatTLSCreator, TrustPolicy, client_connection_creator, explain_tls_failure
from chatd.daemon.server_tls import load_server_certificate, server_tls_options
from chatd.protocol.certificates import DEFAULT_HOSTNAMES, fingerprint, make_self_signed, normalize_fingerprint
from chatd.protocol.errors import (
    CertificateChangedError,
    CertificateError,
    ChatError,
    ConnectionFailedError,
    PinStoreError,
    TLSSetupError,
)

CLOCK = cast(IReactorTime, _reactor)
WAIT = 5.0
"""Seconds any one wait on the network may take before the test fails."""
FINGERPRINT = re.compile(r"^SHA256:[0-9a-f]{2}(:[0-9a-f]{2}){31}$")


def _temporary_directory(case: unittest.SynchronousTestCase) -> str:
    # Not trial's mktemp: under pytest that would write into the working directory.
    directory = tempfile.mkdtemp(prefix="chatd-tls-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def _write(directory: str, name: str, data: bytes, mode: int = 0o600) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as file:
        file.write(data)
    os.chmod(path, mode)
    return path


def _sans(cert_pem: bytes) -> x509.SubjectAlternativeName:
    certificate = x509.load_pem_x509_certificate(cert_pem)
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class _Authority:
    """A throwaway certificate authority, for CA-signed chains and expired certificates."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatd test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, host: str, *, expired: bool = False) -> tuple[bytes, bytes]:
        """A server certificate (followed by this CA's, as in a fullchain.pem) and its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=10)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        chain = certificate.public_bytes(serialization.Encoding.PEM) + self.pem
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return chain, key_pem


# -- certificates ---------------------------------------------------------------------------


class CertificateTests(unittest.SynchronousTestCase):
    def test_default_names_are_sans_of_the_right_kinds(self) -> None:
        """127.0.0.1 and ::1 are IP address SANs (clients match addresses only against those), localhost a DNS SAN."""
        cert_pem, _ = make_self_signed()
        sans = _sans(cert_pem)
        self.assertEqual(
            sorted(map(str, sans.get_values_for_type(x509.IPAddress))),
            ["127.0.0.1", "::1"],
        )
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(DEFAULT_HOSTNAMES, ("127.0.0.1", "::1", "localhost"))

    def test_chosen_names_and_days(self) -> None:
        cert_pem, _ = make_self_signed(["Chat.Example.org", "192.0.2.7", "*.rooms.example.org"], days=10)
        sans = _sans(cert_pem)
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["chat.example.org", "*.rooms.example.org"])
        self.assertEqual(list(map(str, sans.get_values_for_type(x509.IPAddress))), ["192.0.2.7"])
        certificate = x509.load_pem_x509_certificate(cert_pem)
        lifetime = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        self.assertTrue(datetime.timedelta(days=9) < lifetime <= datetime.timedelta(days=10))

    def test_key_is_p256_and_belongs_to_the_certificate(self) -> None:
        cert_pem, key_pem = make_self_signed()
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(key.curve.name, "secp256r1")
        certificate = x509.load_pem_x509_certificate(cert_pem)
        self.assertEqual(certificate.public_key(), key.public_key())
        self.assertNotEqual(make_self_signed()[0], cert_pem)

    def test_bad_names_and_days_are_refused(self) -> None:
        for names in (["not a host"], ["under_score.example"], ["a..b"], [""], []):
            self.assertRaises(ValueError, make_self_signed, names)
        self.assertRaises(TypeError, make_self_signed, "localhost")
        self.assertRaises(ValueError, make_self_signed, ["localhost"], 0)

    def test_fingerprint_is_sha256_of_the_der_in_lowercase_hex_pairs(self) -> None:
        cert_pem, _ = make_self_signed()
        der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
        value = fingerprint(cert_pem)
        self.assertRegex(value, FINGERPRINT)
        self.assertEqual(value.removeprefix("SHA256:").replace(":", ""), hashlib.sha256(der).hexdigest())

    def test_normalize_fingerprint_accepts_what_people_paste(self) -> None:
        value = fingerprint(make_self_signed()[0])
        hex_digits = value.removeprefix("SHA256:").replace(":", "")
        for typed in (
            value,
            value.upper(),
            hex_digits,
            f"sha256 Fingerprint={value.removeprefix('SHA256:').upper()}",
            f"  {value}\n",
        ):
            self.assertEqual(normalize_fingerprint(typed), value)
        for wrong in ("", "SHA256:", hex_digits[:-2], hex_digits + "00", "x" * 64):
            self.assertRaises(ValueError, normalize_fingerprint, wrong)


class ServerCertificateTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = _temporary_directory(self)
        self.cert_pem, self.key_pem = make_self_signed()
        self.cert = _write(self.directory, "cert.pem", self.cert_pem, 0o644)
        self.key = _write(self.directory, "key.pem", self.key_pem)

    def test_self_signed_loads_into_server_options(self) -> None:
        options = server_tls_options(self.cert, self.key)
        self.assertIsInstance(options, CertificateOptions)
        context = options.getContext()
        self.assertIsInstance(context, SSL.Context)
        loaded = load_server_certificate(self.cert, self.key)
        self.assertEqual(loaded.fingerprint, fingerprint(self.cert_pem))
        self.assertEqual(sorted(loaded.hostnames), sorted(DEFAULT_HOSTNAMES))
        self.assertEqual(loaded.warnings, ())

    def test_tls_1_2_is_the_minimum(self) -> None:
        context = server_tls_options(self.cert, self.key).getContext()
        # Setting no new option returns those already set: Twisted turns old versions off with these flags.
        options = context.set_options(0)
        for older in (SSL.OP_NO_SSLv3, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
            self.assertTrue(options & older)
        self.assertFalse(options & (SSL.OP_NO_TLSv1_2 | SSL.OP_NO_TLSv1_3))

    def assert_setup_error(self, cert: str, key: str, *fragments: str) -> None:
        error = self.assertRaises(TLSSetupError, load_server_certificate, cert, key)
        # The daemon catches ValueError to turn it into a usage error.
        self.assertIsInstance(error, ValueError)
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_missing_file(self) -> None:
        missing = os.path.join(self.directory, "nope.pem")
        self.assert_setup_error(missing, self.key, missing, "no such file")
        self.assert_setup_error(self.cert, missing, missing, "no such file")

    def test_unreadable_file(self) -> None:
        # A directory cannot be read as a file, even by root (a 0000 file can be).
        self.assert_setup_error(self.directory, self.key, self.directory, "cannot read")

    def test_not_pem(self) -> None:
        self.assert_setup_error(self.key, self.key, self.key, "no PEM certificate")
        self.assert_setup_error(self.cert, self.cert, self.cert, "not a PEM private key")

    def test_key_of_another_certificate(self) -> None:
        other = _write(self.directory, "other-key.pem", make_self_signed()[1])
        self.assert_setup_error(self.cert, other, other, self.cert, "does not belong")

    def test_encrypted_key(self) -> None:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        path = _write(self.directory, "encrypted.pem", encrypted)
        self.assert_setup_error(self.cert, path, path, "encrypted")

    def test_key_readable_by_others_is_a_warning(self) -> None:
        os.chmod(self.key, 0o644)
        (warning,) = load_server_certificate(self.cert, self.key).warnings
        self.assertIn(f"chmod 600 {self.key}", warning)

    def test_chain_file_loads_and_fingerprint_is_the_leafs(self) -> None:
        chain, key_pem = _Authority().issue("127.0.0.1")
        cert = _write(self.directory, "fullchain.pem", chain, 0o644)
        key = _write(self.directory, "chain-key.pem", key_pem)
        loaded = load_server_certificate(cert, key)
        self.assertEqual(loaded.fingerprint, fingerprint(chain))
        self.assertEqual(loaded.hostnames, ("127.0.0.1",))


# -- pinning --------------------------------------------------------------------------------


class PinStoreTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = _temporary_directory(self)
        self.path = os.path.join(self.directory, "config", "chatd", "known_servers.json")
        self.store = PinStore(self.path)
        self.value = fingerprint(make_self_signed()[0])

    def test_default_path_honours_xdg_config_home(self) -> None:
        self.patch(os, "environ", {**os.environ, "XDG_CONFIG_HOME": "/xdg"})
        self.assertEqual(default_pin_path(), "/xdg/chatd/known_servers.json")
        self.assertEqual(PinStore().path, "/xdg/chatd/known_servers.json")

    def test_default_path_without_xdg_config_home(self) -> None:
        environment = {key: value for key, value in os.environ.items() if key != "XDG_CONFIG_HOME"}
        self.patch(os, "environ", {**environment, "HOME": "/home/someone"})
        self.assertEqual(default_pin_path(), "/home/someone/.config/chatd/known_servers.json")
        # The XDG spec says a relative value is to be ignored.
        self.patch(os, "environ", {**environment, "HOME": "/home/someone", "XDG_CONFIG_HOME": "relative"})
        self.assertEqual(default_pin_path(), "/home/someone/.config/chatd/known_servers.json")

    def test_pin_writes_a_private_file_atomically(self) -> None:
        self.assertIsNone(self.store.get("127.0.0.1", 9003))
        self.store.pin("127.0.0.1", 9003, self.value)
        self.assertEqual(self.store.get("127.0.0.1", 9003), self.value)
        self.assertEqual(_mode(self.path), 0o600)
        self.assertEqual(_mode(os.path.dirname(self.path)), 0o700)
        # Nothing left over from the temporary file that was renamed into place.
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["known_servers.json"])
        with open(self.path, encoding="utf-8") as file:
            self.assertEqual(json.load(file), {"version": 1, "servers": {"127.0.0.1:9003": self.value}})

    def test_one_pin_per_host_and_port(self) -> None:
        other = fingerprint(make_self_signed()[0])
        self.store.pin("127.0.0.1", 9003, self.value)
        self.store.pin("127.0.0.1", 9004, other)
        self.store.pin("Chat.Example.org.", 9003, other)
        self.assertEqual(self.store.get("127.0.0.1", 9003), self.value)
        self.assertEqual(self.store.get("chat.example.org", 9003), other)
        self.store.pin("127.0.0.1", 9003, other)
        self.assertEqual(self.store.get("127.0.0.1", 9003), other)
        self.assertTrue(self.store.forget("127.0.0.1", 9003))
        self.assertFalse(self.store.forget("127.0.0.1", 9003))
        self.assertEqual(self.store.get("127.0.0.1", 9004), other)

    def test_server_key(self) -> None:
        self.assertEqual(server_key("127.0.0.1", 9003), "127.0.0.1:9003")
        self.assertEqual(server_key("::1", 9003), "[::1]:9003")
        self.assertEqual(server_key("[0:0::1]", 9003), "[::1]:9003")
        self.assertEqual(server_key("Chat.Example.ORG.", 1), "chat.example.org:1")

    def test_corrupt_file_is_an_error_and_is_never_replaced(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        for damage in (b"{not json", b"[]", b'{"version": 1, "servers": {"a:1": "oops"}}', b'{"version": 2}'):
            _write(os.path.dirname(self.path), "known_servers.json", damage)
            error = self.assertRaises(PinStoreError, self.store.get, "127.0.0.1", 9003)
            self.assertIn(self.path, str(error))
            self.assertIn("damaged", str(error))
            self.assertRaises(PinStoreError, self.store.pin, "127.0.0.1", 9003, self.value)
            self.assertRaises(PinStoreError, self.store.forget, "127.0.0.1", 9003)
            with open(self.path, "rb") as file:
                self.assertEqual(file.read(), damage)

    def test_tofu_creator_reports_a_corrupt_file_before_connecting(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        _write(os.path.dirname(self.path), "known_servers.json", b"\x00\x01")
        self.assertRaises(PinStoreError, client_connection_creator, "127.0.0.1", 9003, TrustPolicy.tofu(self.store))


class PolicyTests(unittest.SynchronousTestCase):
    def test_missing_ca_file_is_reported_before_connecting(self) -> None:
        missing = os.path.join(_temporary_directory(self), "ca.pem")
        error = self.assertRaises(TLSSetupError, client_connection_creator, "h", 1, TrustPolicy.ca_file(missing))
        self.assertIn(missing, str(error))

    def test_fingerprint_policy_normalizes(self) -> None:
        value = fingerprint(make_self_signed()[0])
        self.assertEqual(TrustPolicy.fingerprint(value.upper()).expected, value)
        self.assertRaises(ValueError, TrustPolicy.fingerprint, "SHA256:nope")

    def test_explain_leaves_non_tls_failures_alone(self) -> None:
        self.assertIsNone(explain_tls_failure(Failure(ConnectionRefusedError())))
        error = CertificateError("no")
        self.assertIs(explain_tls_failure(Failure(error)), error)
        explained = explain_tls_failure(SSL.Error([("SSL routines", "", "wrong version number")]))
        self.assertIsInstance(explained, ConnectionFailedError)
        self.assertIn("wrong version number", str(explained))


# -- handshakes over loopback ---------------------------------------------------------------


class _Echo(Protocol):
    def __init__(self) -> None:
        self.gone: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone.callback(None)


class _EchoFactory(Factory):
    noisy = False

    def __init__(self) -> None:
        self.connections: list[_Echo] = []

    @override
    def buildProtocol(self, addr: object) -> _Echo:
        protocol = _Echo()
        self.connections.append(protocol)
        return protocol


@implementer(IHandshakeListener)
class _Probe(Protocol):
    """Sends b"ping" once the handshake is done, hangs up when it comes back, keeps why it was lost."""

    def __init__(self) -> None:
        self.handshake_done = False
        self.echoed = b""
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:  # noqa: N802 - IHandshakeListener's spelling
        self.handshake_done = True
        assert self.transport is not None
        self.transport.write(b"ping")

    @override
    def dataReceived(self, data: bytes) -> None:
        self.echoed += data
        if self.echoed == b"ping":
            assert self.transport is not None
            self.transport.loseConnection()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


class _Server:
    def __init__(self, port: IListeningPort, factory: _EchoFactory) -> None:
        self.listening: IListeningPort | None = port
        self.factory = factory
        self.port: int = port.getHost().port  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Stop listening and wait until every accepted connection is gone, so no test leaks one."""
        listening, self.listening = self.listening, None
        stopped = listening.stopListening() if listening is not None else None
        if stopped is not None:
            await stopped
        for connection in self.factory.connections:
            await connection.gone.addTimeout(WAIT, CLOCK)


class HandshakeTests(unittest.TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.directory = _temporary_directory(self)
        self.cert_pem, self.key_pem = make_self_signed()
        self.cert = _write(self.directory, "cert.pem", self.cert_pem, 0o644)
        self.key = _write(self.directory, "key.pem", self.key_pem)
        self.pins = PinStore(os.path.join(self.directory, "pins", "known_servers.json"))

    async def serve(self, cert: str, key: str, port: int = 0) -> _Server:
        endpoint = SSL4ServerEndpoint(_reactor, port, server_tls_options(cert, key), interface="127.0.0.1")
        factory = _EchoFactory()
        listening = await endpoint.listen(factory)
        server = _Server(listening, factory)
        self.addCleanup(lambda: Deferred.fromCoroutine(server.stop()))
        return server

    async def talk(self, creator: ChatTLSCreator, port: int) -> _Probe:
        endpoint = wrapClientTLS(creator, HostnameEndpoint(_reactor, "127.0.0.1", port, timeout=int(WAIT)))
        connected: Deferred[_Probe] = connectProtocol(endpoint, _Probe())
        probe = await connected.addTimeout(WAIT, CLOCK)
        await probe.lost.addTimeout(WAIT, CLOCK)
        return probe

    def assert_echoed(self, probe: _Probe) -> None:
        self.assertTrue(probe.handshake_done)
        self.assertEqual(probe.echoed, b"ping")

    def assert_refused(self, probe: _Probe, creator: ChatTLSCreator) -> ChatError:
        """The handshake failed, and connectionLost was told why as a ChatError."""
        self.assertFalse(probe.handshake_done)
        self.assertEqual(probe.echoed, b"")
        assert probe.reason is not None
        error = explain_tls_failure(probe.reason, creator)
        assert error is not None
        self.assertIs(probe.reason.value, error)
        self.assertIs(creator.refusal, error)
        return error

    async def test_ca_file_policy(self) -> None:
        server = await self.serve(self.cert, self.key)
        creator = client_connection_creator("127.0.0.1", server.port, TrustPolicy.ca_file(self.cert))
        probe = await self.talk(creator, server.port)
        self.assert_echoed(probe)
        self.assertIsNone(creator.refusal)
        self.assertEqual(creator.peer_fingerprint, fingerprint(self.cert_pem))

    async def test_ca_file_policy_with_a_real_chain(self) -> None:
        authority = _Authority()
        chain, key_pem = authority.issue("127.0.0.1")
        cert = _write(self.directory, "fullchain.pem", chain, 0o644)
        key = _write(self.directory, "chain-key.pem", key_pem)
        ca = _write(self.directory, "ca.pem", authority.pem, 0o644)
        server = await self.serve(cert, key)
        creator = client_connection_creator("127.0.0.1", server.port, TrustPolicy.ca_file(ca))
        self.assert_echoed(await self.talk(creator, server.port))

    async def test_trust_on_first_use_pins_then_accepts_the_same_certificate(self) -> None:
        server = await self.serve(self.cert, self.key)
        policy = TrustPolicy.tofu(self.pins)

        first = client_connection_creator("127.0.0.1", server.port, policy)
        self.assert_echoed(await self.talk(first, server.port))
        self.assertEqual(first.newly_pinned, fingerprint(self.cert_pem))
        self.assertEqual(self.pins.get("127.0.0.1", server.port), fingerprint(self.cert_pem))
        self.assertEqual(_mode(self.pins.path), 0o600)

        second = client_connection_creator("127.0.0.1", server.port, policy)
        self.assert_echoed(await self.talk(second, server.port))
        self.assertIsNone(second.newly_pinned)
        self.assertIsNone(second.refusal)

    async def test_trust_on_first_use_refuses_a_changed_certificate(self) -> None:
        old = await self.serve(self.cert, self.key)
        port = old.port
        policy = TrustPolicy.tofu(self.pins)
        self.assert_echoed(await self.talk(client_connection_creator("127.0.0.1", port, policy), port))
        await old.stop()
        with open(self.pins.path, "rb") as file:
            pinned_file = file.read()

        # Another certificate on the very same host and port, as a man in the middle would show.
        new_cert_pem, new_key_pem = make_self_signed()
        new_cert = _write(self.directory, "new-cert.pem", new_cert_pem, 0o644)
        new_key = _write(self.directory, "new-key.pem", new_key_pem)
        await self.serve(new_cert, new_key, port)
        creator = client_connection_creator("127.0.0.1", port, policy)
        error = self.assert_refused(await self.talk(creator, port), creator)

        self.assertIsInstance(error, CertificateChangedError)
        message = str(error)
        self.assertIn(fingerprint(self.cert_pem), message)
        self.assertIn(fingerprint(new_cert_pem), message)
        self.assertIn(self.pins.path, message)
        self.assertIn(f"chatd-cert --forget 127.0.0.1:{port} --known-servers {self.pins.path}", message)
        self.assertIsNone(creator.newly_pinned)
        with open(self.pins.path, "rb") as file:
            self.assertEqual(file.read(), pinned_file)

    async def test_fingerprint_policy(self) -> None:
        server = await self.serve(self.cert, self.key)
        right = client_connection_creator("127.0.0.1", server.port, TrustPolicy.fingerprint(fingerprint(self.cert_pem)))
        self.assert_echoed(await self.talk(right, server.port))

        other = fingerprint(make_self_signed()[0])
        wrong = client_connection_creator("127.0.0.1", server.port, TrustPolicy.fingerprint(other))
        error = self.assert_refused(await self.talk(wrong, server.port), wrong)
        self.assertNotIsInstance(error, CertificateChangedError)
        self.assertIsInstance(error, CertificateError)
        self.assertIn(other, str(error))
        self.assertIn(fingerprint(self.cert_pem), str(error))

    async def test_ca_file_policy_with_the_wrong_ca(self) -> None:
        server = await self.serve(self.cert, self.key)
        wrong_ca = _write(self.directory, "other.pem", make_self_signed()[0], 0o644)
        creator = client_connection_creator("127.0.0.1", server.port, TrustPolicy.ca_file(wrong_ca))
        error = self.assert_refused(await self.talk(creator, server.port), creator)
        self.assertIsInstance(error, CertificateError)
        self.assertNotIsInstance(error, CertificateChangedError)
        self.assertIn("self-signed", str(error))
        self.assertIn(wrong_ca, str(error))

    async def test_system_trust_refuses_a_self_signed_certificate(self) -> None:
        server = await self.serve(self.cert, self.key)
        creator = client_connection_creator("127.0.0.1", server.port, TrustPolicy.system())
        error = self.assert_refused(await self.talk(creator, server.port), creator)
        self.assertIsInstance(error, CertificateError)
        self.assertIn("system", str(error))

    async def test_ca_file_policy_checks_the_name(self) -> None:
        cert_pem, key_pem = make_self_signed(["chat.example.org"])
        cert = _write(self.directory, "named.pem", cert_pem, 0o644)
        key = _write(self.directory, "named-key.pem", key_pem)
        server = await self.serve(cert, key)
        creator = client_connection_creator("127.0.0.1", server.port, TrustPolicy.ca_file(cert))
        error = self.assert_refused(await self.talk(creator, server.port), creator)
        self.assertIsInstance(error, CertificateError)
        self.assertIn("chat.example.org", str(error))
        self.assertIn("not to 127.0.0.1", str(error))

    async def test_ca_file_policy_refuses_an_expired_certificate(self) -> None:
        authority = _Authority()
        chain, key_pem = authority.issue("127.0.0.1", expired=True)
        cert = _write(self.directory, "expired.pem", chain, 0o644)
        key = _write(self.directory, "expired-key.pem", key_pem)
        ca = _write(self.directory, "ca.pem", authority.pem, 0o644)
        self.assertIn("expired", load_server_certificate(cert, key).warnings[0])
        server = await self.serve(cert, key)
        creator = client_connection_creator("127.0.0.1", server.port, TrustPolicy.ca_file(ca))
        error = self.assert_refused(await self.talk(creator, server.port), creator)
        self.assertIn("expired on", str(error))

    async def test_a_server_that_does_not_speak_tls(self) -> None:
        """A plain TCP port (here an echo) fails the handshake; that is not blamed on a certificate."""
        factory = _EchoFactory()
        listening = await TCP4ServerEndpoint(_reactor, 0, interface="127.0.0.1").listen(factory)
        server = _Server(listening, factory)
        self.addCleanup(lambda: Deferred.fromCoroutine(server.stop()))
        creator = client_connection_creator("127.0.0.1", server.port, TrustPolicy.tofu(self.pins))
        probe = await self.talk(creator, server.port)
        self.assertFalse(probe.handshake_done)
        assert probe.reason is not None
        error = explain_tls_failure(probe.reason, creator)
        self.assertIsInstance(error, ConnectionFailedError)
        self.assertIn(f"127.0.0.1:{server.port}", str(error))
        self.assertFalse(os.path.exists(self.pins.path))


def _python_handshake(port: int, ca_pem: bytes, tls_1_2_ciphers: str | None) -> tuple[str, str] | ssl.SSLError:
    """
    A handshake by Python's ssl module (OpenSSL as a client, not Twisted's
    code): TLS 1.2 offering only C{tls_1_2_ciphers}, or TLS 1.3 when None.
    Returns the version and suite agreed, or the error the handshake failed
    with. Blocking, bounded by L{WAIT}: run it in a thread.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    if tls_1_2_ciphers is None:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(tls_1_2_ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"ping")
                echoed = tls.recv(4)
                assert echoed == b"ping", echoed
                version, cipher = tls.version(), tls.cipher()
                assert version is not None and cipher is not None
                return version, cipher[0]
        except ssl.SSLError as error:
            return error


class CipherSuiteTests(unittest.TestCase):
    """The server offers AEAD suites only: TLS 1.3, or TLS 1.2 with ECDHE and AES-GCM or ChaCha20-Poly1305."""

    timeout = 10

    def setUp(self) -> None:
        self.directory = _temporary_directory(self)
        self.cert_pem, self.key_pem = make_self_signed()
        self.cert = _write(self.directory, "cert.pem", self.cert_pem, 0o644)
        self.key = _write(self.directory, "key.pem", self.key_pem)

    def test_tls_1_2_suites_are_ecdhe_with_an_aead(self) -> None:
        context = server_tls_options(self.cert, self.key).getContext()
        names = [name for name in SSL.Connection(context, None).get_cipher_list() if not name.startswith("TLS_")]
        self.assertTrue(names)
        for name in names:
            self.assertTrue(name.startswith("ECDHE-"), name)
            self.assertTrue(name.endswith(("-GCM-SHA256", "-GCM-SHA384", "-CHACHA20-POLY1305")), name)

    async def handshake(self, tls_1_2_ciphers: str | None) -> tuple[str, str] | ssl.SSLError:
        endpoint = SSL4ServerEndpoint(_reactor, 0, server_tls_options(self.cert, self.key), interface="127.0.0.1")
        factory = _EchoFactory()
        server = _Server(await endpoint.listen(factory), factory)
        self.addCleanup(lambda: Deferred.fromCoroutine(server.stop()))
        result: Deferred[tuple[str, str] | ssl.SSLError] = deferToThread(
            _python_handshake, server.port, self.cert_pem, tls_1_2_ciphers
        )
        return await result.addTimeout(WAIT, CLOCK)

    async def test_tls_1_2_with_only_a_cbc_suite_is_refused(self) -> None:
        try:
            # The client side must be able to offer it, or the test proves nothing.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers("ECDHE-ECDSA-AES128-SHA")
        except ssl.SSLError:
            raise unittest.SkipTest("this OpenSSL cannot offer ECDHE-ECDSA-AES128-SHA at all") from None
        result = await self.handshake("ECDHE-ECDSA-AES128-SHA")
        self.assertIsInstance(result, ssl.SSLError)
        self.assertIn("HANDSHAKE_FAILURE", str(result).upper())

    async def test_tls_1_2_with_aes_gcm_is_accepted(self) -> None:
        result = await self.handshake("ECDHE-ECDSA-AES128-GCM-SHA256")
        self.assertEqual(result, ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"))

    async def test_tls_1_2_with_chacha20_poly1305_is_accepted(self) -> None:
        result = await self.handshake("ECDHE-ECDSA-CHACHA20-POLY1305")
        self.assertEqual(result, ("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"))

    async def test_tls_1_3_is_accepted(self) -> None:
        result = await self.handshake(None)
        assert not isinstance(result, ssl.SSLError), result
        self.assertEqual(result[0], "TLSv1.3")


# -- chatd-cert -----------------------------------------------------------------------------


class CertToolTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.join(_temporary_directory(self), "tls")
        self.cert = os.path.join(self.directory, "chatd-cert.pem")
        self.key = os.path.join(self.directory, "chatd-key.pem")

    def run_tool(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        status = cert_tool.main(list(argv))
        return status, out.getvalue(), err.getvalue()

    def read(self, path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    def test_writes_the_pair_with_the_right_modes_and_says_how_to_use_it(self) -> None:
        status, out, _ = self.run_tool("--out", self.directory, "--host", "chat.example.org", "--days", "30")
        self.assertEqual(status, 0)
        self.assertEqual(_mode(self.cert), 0o644)
        self.assertEqual(_mode(self.key), 0o600)
        cert_pem = self.read(self.cert)
        load_server_certificate(self.cert, self.key)  # a matching pair the daemon accepts
        self.assertEqual(_sans(cert_pem).get_values_for_type(x509.DNSName), ["chat.example.org"])
        value = fingerprint(cert_pem)
        self.assertIn(f"Fingerprint: {value}", out)
        self.assertIn(f"--tls-cert {self.cert} --tls-key {self.key} --tls-port", out)
        self.assertIn(f"--tls-fingerprint {value}", out)
        self.assertIn(f"--tls-ca {self.cert}", out)

    def test_refuses_to_overwrite_without_force(self) -> None:
        self.assertEqual(self.run_tool("--out", self.directory)[0], 0)
        cert_pem, key_pem = self.read(self.cert), self.read(self.key)

        status, _, err = self.run_tool("--out", self.directory)
        self.assertEqual(status, 1)
        self.assertIn(self.cert, err)
        self.assertIn("--force", err)
        self.assertEqual((self.read(self.cert), self.read(self.key)), (cert_pem, key_pem))

        os.unlink(self.cert)  # even one of the two is enough to refuse
        self.assertEqual(self.run_tool("--out", self.directory)[0], 1)
        self.assertEqual(self.read(self.key), key_pem)

        self.assertEqual(self.run_tool("--out", self.directory, "--force")[0], 0)
        self.assertNotEqual(self.read(self.key), key_pem)
        self.assertEqual(_mode(self.key), 0o600)
        load_server_certificate(self.cert, self.key)

    def test_bad_host_is_a_clean_error(self) -> None:
        status, _, err = self.run_tool("--out", self.directory, "--host", "not a host")
        self.assertEqual(status, 2)
        self.assertIn("not a host", err)
        self.assertFalse(os.path.exists(self.directory))

    def test_forget_removes_a_pin(self) -> None:
        pins = os.path.join(self.directory, "known_servers.json")
        PinStore(pins).pin("::1", 9003, fingerprint(make_self_signed()[0]))
        status, out, _ = self.run_tool("--forget", "[::1]:9003", "--known-servers", pins)
        self.assertEqual(status, 0)
        self.assertIn("Removed", out)
        self.assertIsNone(PinStore(pins).get("::1", 9003))
        status, out, _ = self.run_tool("--forget", "[::1]:9003", "--known-servers", pins)
        self.assertEqual(status, 0)
        self.assertIn("No certificate is pinned", out)
