"""
TLS for the control connection: certificates, the server's options, and the
client's trust policies (system CAs, a CA file, a fixed fingerprint, or trust
on first use).

Modelled on Mumble, which wraps its control connection in TLS and usually runs
with a self-signed certificate, and on SSH's known_hosts: the first time a
client meets a server it remembers the certificate's fingerprint, and from then
on a different certificate on that host and port is refused loudly.

Fingerprints are always written C{"SHA256:"} followed by the SHA-256 of the
certificate's DER bytes in lowercase hex pairs joined by colons, e.g.
C{"SHA256:3f:a0:...:9c"}. That is C{openssl x509 -noout -fingerprint -sha256}
lowercased, so an administrator can check one with stock tools. It covers the
whole certificate, not only its key: a renewed certificate is a changed one.

Certificate failures reach the client's connection as the L{ChatError} that
explains them (L{CertificateError}, L{CertificateChangedError}): the creator
hands them to Twisted's C{failVerification}, the same way Twisted's own
hostname check reports a mismatch. L{explain_tls_failure} turns whatever a
failed TLS connection ended with into the error to show.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import service_identity
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.errors import CertificateChangedError, CertificateError, ChatError, ConnectionFailedError

if TYPE_CHECKING:
    # Twisted defines this interface only in its private module; it is used here for annotations alone.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

DEFAULT_HOSTNAMES: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")
"""The names a certificate from L{make_self_signed} covers unless told otherwise."""

DEFAULT_DAYS = 825
"""Validity of a new certificate: the longest that Apple's TLS clients accept for a server."""

CERT_FILE_NAME = "chatd-cert.pem"
KEY_FILE_NAME = "chatd-key.pem"

FINGERPRINT_PREFIX = "SHA256:"

_EXPIRY_WARNING = datetime.timedelta(days=30)


class TLSSetupError(ChatError, ValueError):
    """
    A TLS file or setting cannot be used: missing, unreadable, not PEM, or a
    key that does not belong to its certificate. The message names the file.

    Also a ValueError, so that the daemon's option checking can turn it into a
    usage error like any other bad value.
    """


class PinStoreError(TLSSetupError):
    """The file of pinned server fingerprints cannot be read or written."""


# -- certificates -------------------------------------------------------------------------


def _general_name(hostname: str) -> x509.GeneralName:
    """An IP address SAN for a literal address, a DNS SAN (IDNA, lowercase) for anything else."""
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        pass
    name = hostname.rstrip(".").lower()
    wildcard = name.startswith("*.")
    rest = name[2:] if wildcard else name
    try:
        ascii_name = rest.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    # A name no client could ever ask for (spaces, underscores, empty labels)
    # would only make a certificate that matches nothing.
    labels = ascii_name.split(".")
    if not all(
        label and label.replace("-", "").isalnum() and not label.startswith("-") and not label.endswith("-")
        for label in labels
    ):
        raise ValueError(f"{hostname!r} is neither an IP address nor a valid host name")
    return x509.DNSName(("*." if wildcard else "") + ascii_name)


def make_self_signed(hostnames: Sequence[str] = DEFAULT_HOSTNAMES, days: int = DEFAULT_DAYS) -> tuple[bytes, bytes]:
    """
    A new self-signed server certificate and its private key, both PEM.

    The key is ECDSA P-256, which every TLS 1.2 and 1.3 client supports
    (Ed25519 is not offered by every client yet). Each host name becomes a
    subjectAltName, as an IP address when it is one, so that clients which
    check names (a CA-file policy) accept it under each of them. The key PEM
    is unencrypted PKCS#8: the daemon must start unattended, so protect the
    file with its mode (0600) instead.
    """
    if isinstance(hostnames, str):
        raise TypeError("hostnames must be a sequence of names, not one string")
    if not hostnames:
        raise ValueError("a certificate needs at least one host name")
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    names = [_general_name(name) for name in hostnames]
    key = ec.generate_private_key(ec.SECP256R1())
    # The common name is only for people reading the certificate: clients match the SANs.
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0][:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "chatd self-signed"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # An hour of slack, so a client whose clock is a little behind still accepts it.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def fingerprint_of(certificate: x509.Certificate) -> str:
    """The fingerprint of a parsed certificate, in the one format chatd uses (see the module doc)."""
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return FINGERPRINT_PREFIX + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def fingerprint(cert_pem: bytes) -> str:
    """The fingerprint of the first certificate in C{cert_pem}: C{"SHA256:ab:cd:..."}."""
    return fingerprint_of(x509.load_pem_x509_certificate(cert_pem))


def normalize_fingerprint(text: str) -> str:
    """
    A fingerprint as typed by a person, in chatd's format.

    Accepts upper or lower case, with or without colons, with or without the
    C{SHA256:} prefix, and OpenSSL's C{sha256 Fingerprint=AB:CD:...} output.
    """
    value = text.strip()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        if value.lower().startswith(prefix):
            value = value[len(prefix) :]
            break
    digest = value.replace(":", "").replace(" ", "").lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{text!r} is not a SHA-256 certificate fingerprint (64 hex digits)")
    return FINGERPRINT_PREFIX + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def certificate_hostnames(certificate: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses in a certificate's subjectAltName, as text."""
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(sans.get_values_for_type(x509.DNSName))
    names += [str(address) for address in sans.get_values_for_type(x509.IPAddress)]
    return names


# -- the server's side -----------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise TLSSetupError(f"TLS {what} file {path}: cannot read it: {reason}") from None


_KeyTypes = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def _spki(key: Any) -> bytes:
    data: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """A server's certificate and key, loaded and checked, with what is worth logging at start-up."""

    options: CertificateOptions
    """For C{listenSSL} or C{SSL4ServerEndpoint}."""
    fingerprint: str
    hostnames: tuple[str, ...]
    not_after: datetime.datetime
    warnings: tuple[str, ...] = field(default=())
    """Problems that do not stop the server but that its operator should hear about."""


def load_server_certificate(cert_path: str, key_path: str) -> ServerCertificate:
    """
    Load a PEM certificate (optionally followed by its intermediate CA
    certificates, as in a Let's Encrypt fullchain.pem) and its PEM private key.

    Raises L{TLSSetupError} naming the file when a file is missing,
    unreadable, not PEM, the key is encrypted, or the key does not belong to
    the certificate, so that the daemon can print one line instead of a
    traceback.
    """
    cert_data = _read(cert_path, "certificate")
    key_data = _read(key_path, "private key")
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise TLSSetupError(
            f"TLS certificate file {cert_path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TLSSetupError(
            f"TLS private key file {key_path}: the key is encrypted; the daemon starts unattended, "
            "so it needs an unencrypted key protected by its file mode (0600)"
        ) from None
    except ValueError as error:
        raise TLSSetupError(f"TLS private key file {key_path}: not a PEM private key ({error})") from None
    if not isinstance(key, _KeyTypes):
        raise TLSSetupError(f"TLS private key file {key_path}: a {type(key).__name__} cannot sign TLS handshakes")
    leaf, intermediates = chain[0], chain[1:]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TLSSetupError(
            f"TLS private key file {key_path} does not belong to the certificate in {cert_path} "
            "(their public keys differ; the server's own certificate must come first in that file)"
        )
    # cryptography objects, not pyOpenSSL's X509/PKey: pyOpenSSL takes both
    # and deprecates the latter, though Twisted's annotations still name them.
    options = CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=leaf,  # type: ignore[arg-type]
        extraCertChain=list(intermediates),  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    try:
        # Build the context now: a problem OpenSSL finds must stop the start-up,
        # not the first client's handshake.
        options.getContext()
    except SSL.Error as error:
        raise TLSSetupError(f"TLS files {cert_path} and {key_path}: OpenSSL refuses them: {error}") from None

    warnings = []
    mode = os.stat(key_path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"TLS private key file {key_path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {key_path}"
        )
    now = datetime.datetime.now(datetime.UTC)
    not_after = leaf.not_valid_after_utc
    if not_after <= now:
        warnings.append(
            f"TLS certificate {cert_path} expired on {not_after:%Y-%m-%d}: clients that check it will refuse "
            "to connect (only clients that pinned it still accept it)"
        )
    elif not_after - now < _EXPIRY_WARNING:
        warnings.append(f"TLS certificate {cert_path} expires on {not_after:%Y-%m-%d}")
    return ServerCertificate(
        options=options,
        fingerprint=fingerprint_of(leaf),
        hostnames=tuple(certificate_hostnames(leaf)),
        not_after=not_after,
        warnings=tuple(warnings),
    )


def server_tls_options(cert_path: str, key_path: str) -> CertificateOptions:
    """The server's TLS options (TLS 1.2 at least) from PEM files; see L{load_server_certificate}."""
    return load_server_certificate(cert_path, key_path).options


# -- pinned fingerprints ---------------------------------------------------------------------


def default_pin_path() -> str:
    """C{$XDG_CONFIG_HOME/chatd/known_servers.json}, or under C{~/.config} when that is unset."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says to ignore a relative value.
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return str(base / "chatd" / "known_servers.json")


def server_key(host: str, port: int) -> str:
    """How a server is named in the pin file: C{host:port}, C{[v6]:port}, host names lowercased."""
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host.rstrip('.').lower()}:{port}"
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


_PIN_FILE_VERSION = 1


class PinStore:
    """
    One pinned certificate fingerprint per server, in a JSON file:

        {"version": 1, "servers": {"127.0.0.1:9001": "SHA256:3f:a0:..."}}

    Every read goes to the file, so several clients share what any of them
    pinned. Writes replace the file atomically (temporary file, then rename),
    created 0600 in a 0700 directory. A file that cannot be parsed is an
    error, never silently replaced: it may hold the only record of the
    certificates the user trusted.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else default_pin_path()

    def __repr__(self) -> str:
        return f"PinStore({self.path!r})"

    def load(self) -> dict[str, str]:
        """Every pin, keyed by L{server_key}; empty when the file does not exist yet."""
        try:
            with open(self.path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise PinStoreError(f"pinned certificates file {self.path}: cannot read it: {error.strerror}") from None
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:
            raise self._corrupt(f"not valid JSON ({error})") from None
        if not isinstance(document, dict) or document.get("version") != _PIN_FILE_VERSION:
            raise self._corrupt(f'expected an object with "version": {_PIN_FILE_VERSION}')
        servers = document.get("servers")
        if not isinstance(servers, dict):
            raise self._corrupt('expected "servers" to be an object')
        pins: dict[str, str] = {}
        for key, value in servers.items():
            try:
                if not isinstance(value, str):
                    raise ValueError(value)
                pins[key] = normalize_fingerprint(value)
            except ValueError:
                raise self._corrupt(f"the entry for {key!r} is not a SHA256 fingerprint") from None
        return pins

    def _corrupt(self, detail: str) -> PinStoreError:
        return PinStoreError(
            f"pinned certificates file {self.path} is damaged: {detail}. chatd will not overwrite it, because it "
            "records which server certificates you trusted: repair it, or move it away to start afresh "
            "(every server is then trusted again on first use)"
        )

    def get(self, host: str, port: int) -> str | None:
        """The fingerprint pinned for C{host:port}, if any."""
        return self.load().get(server_key(host, port))

    def pin(self, host: str, port: int, fingerprint: str) -> None:
        """Remember C{fingerprint} for C{host:port}, replacing any earlier pin."""
        pins = self.load()
        pins[server_key(host, port)] = normalize_fingerprint(fingerprint)
        self._save(pins)

    def forget(self, host: str, port: int) -> bool:
        """Drop the pin for C{host:port}; whether there was one."""
        pins = self.load()
        if pins.pop(server_key(host, port), None) is None:
            return False
        self._save(pins)
        return True

    def _save(self, pins: dict[str, str]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        text = json.dumps({"version": _PIN_FILE_VERSION, "servers": dict(sorted(pins.items()))}, indent=2) + "\n"
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            # mkstemp creates the file 0600 whatever the umask; the rename
            # then swaps it in whole, so a crash never leaves half a file.
            handle, temporary = tempfile.mkstemp(prefix=".known_servers.", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as file:
                    file.write(text)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as error:
            raise PinStoreError(f"pinned certificates file {self.path}: cannot write it: {error.strerror}") from None


# -- the client's side -----------------------------------------------------------------------


class TrustMode(Enum):
    SYSTEM = "system"
    CA_FILE = "ca-file"
    FINGERPRINT = "fingerprint"
    TOFU = "tofu"


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """
    Which server certificates a client accepts. Make one with a class method:

      - L{system}: signed by a CA the operating system trusts, for this host name;
      - L{ca_file}: signed by a certificate in a PEM file (which may be the
        server's self-signed certificate itself), for this host name;
      - L{fingerprint}: exactly the certificate with this fingerprint;
      - L{tofu}: whatever the server shows the first time, pinned in a
        L{PinStore}; after that only that certificate, like SSH.

    Pinned certificates (the last two) are accepted whatever their names and
    dates say, as SSH accepts a known host key: the pin is the trust.
    """

    mode: TrustMode
    ca_path: str | None = None
    expected: str | None = None
    pins: PinStore | None = None

    @classmethod
    def system(cls) -> TrustPolicy:
        return cls(TrustMode.SYSTEM)

    @classmethod
    def ca_file(cls, path: str) -> TrustPolicy:
        return cls(TrustMode.CA_FILE, ca_path=path)

    @classmethod
    def fingerprint(cls, value: str) -> TrustPolicy:
        """Raises ValueError when C{value} is not a SHA-256 fingerprint."""
        return cls(TrustMode.FINGERPRINT, expected=normalize_fingerprint(value))

    @classmethod
    def tofu(cls, pins: PinStore | None = None) -> TrustPolicy:
        return cls(TrustMode.TOFU, pins=pins if pins is not None else PinStore())

    def describe(self) -> str:
        """For messages: what this policy trusts."""
        if self.mode is TrustMode.SYSTEM:
            return "the system's trusted certificate authorities"
        if self.mode is TrustMode.CA_FILE:
            return f"the CA file {self.ca_path}"
        if self.mode is TrustMode.FINGERPRINT:
            return f"the fingerprint {self.expected}"
        assert self.pins is not None
        return f"the certificates pinned in {self.pins.path}"


def _trust_root(policy: TrustPolicy) -> IOpenSSLTrustRoot:
    # Twisted leaves these two functions unannotated; the variable gives them their type.
    root: IOpenSSLTrustRoot
    if policy.mode is TrustMode.SYSTEM:
        root = platformTrust()
        return root
    assert policy.ca_path is not None
    data = _read(policy.ca_path, "CA")
    try:
        authorities = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSSetupError(
            f"TLS CA file {policy.ca_path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"
        ) from None
    root = trustRootFromCertificates([Certificate(X509.from_cryptography(ca)) for ca in authorities])
    return root


_VERIFY_REASONS: dict[int, str] = {
    SSL.X509VerificationCodes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT: "it is self-signed",
    SSL.X509VerificationCodes.ERR_SELF_SIGNED_CERT_IN_CHAIN: "its chain ends in a self-signed CA that is not trusted",
    SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "it is not signed by a trusted CA",
    SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_ISSUER_CERT: "it is not signed by a trusted CA",
    SSL.X509VerificationCodes.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: "it is not signed by a trusted CA",
    SSL.X509VerificationCodes.ERR_CERT_SIGNATURE_FAILURE: "its signature does not verify",
    SSL.X509VerificationCodes.ERR_CERT_HAS_EXPIRED: "it has expired",
    SSL.X509VerificationCodes.ERR_CERT_NOT_YET_VALID: "it is not valid yet (or this computer's clock is wrong)",
    SSL.X509VerificationCodes.ERR_INVALID_CA: "a certificate in its chain is not a CA",
    SSL.X509VerificationCodes.ERR_INVALID_PURPOSE: "it is not meant for TLS servers",
    SSL.X509VerificationCodes.ERR_CERT_REVOKED: "it has been revoked",
}

_SELF_SIGNED_HINT = (
    " If the server uses a self-signed certificate (as chatd-cert makes), get that certificate file from its "
    "administrator and use it as the CA file, or pin its fingerprint."
)


@implementer(IOpenSSLClientConnectionCreator)
class ChatTLSCreator:
    """
    Makes the client end of each TLS connection to one server, and checks
    the server's certificate according to a L{TrustPolicy}.

    For the CA policies it does what Twisted's C{optionsForClientTLS} does
    (a CertificateOptions with the trust root and TLS 1.2 at least, SNI for
    host names, the certificate chain checked by OpenSSL and the name by
    service_identity, a failure handed to C{failVerification} from the verify
    callback) and adds only the reason, so that the error says "it has
    expired" or "it is self-signed" instead of OpenSSL's bare "certificate
    verify failed". For the pinning policies the fingerprint of the server's
    certificate decides alone.

    A refused certificate reaches the application protocol's connectionLost
    as the L{CertificateError} (or L{CertificateChangedError}) itself; it is
    also kept in L{refusal} until the next connection. A first-use pin is
    written only once the handshake has completed, and reported in
    L{newly_pinned}.
    """

    def __init__(self, host: str, port: int, policy: TrustPolicy) -> None:
        self.host = host.strip("[]")
        self.port = port
        self.policy = policy
        self.refusal: CertificateError | None = None
        """Why the latest connection's certificate was refused, if it was."""
        self.newly_pinned: str | None = None
        """The fingerprint that the latest connection pinned on first use, if it did."""
        self.peer_fingerprint: str | None = None
        """The fingerprint of the certificate that the latest connection was shown."""

        self._server_name: bytes | None = None
        try:
            self._address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(self.host)
        except ValueError:
            self._address = None
            # RFC 6066: SNI carries host names only, never literal addresses.
            # A name IDNA cannot encode is sent without SNI rather than failing
            # here: the certificate check still applies to it.
            with contextlib.suppress(UnicodeError):
                self._server_name = self.host.rstrip(".").encode("idna")
        trust = _trust_root(policy) if policy.mode in (TrustMode.SYSTEM, TrustMode.CA_FILE) else None
        if policy.mode is TrustMode.TOFU:
            assert policy.pins is not None
            policy.pins.load()  # a damaged pin file is reported now, not mid-handshake
        # One context for every connection: it holds no per-connection state,
        # and loading the system CA store once is enough.
        options = (
            CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2)
            if trust is None
            else CertificateOptions(trustRoot=trust, raiseMinimumTo=TLSVersion.TLSv1_2)
        )
        self._context = options.getContext()

    @property
    def label(self) -> str:
        """C{host:port} as the user would write it, for messages."""
        return server_key(self.host, self.port)

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N802, N803 - zope's spelling
        self.refusal = None
        self.newly_pinned = None
        self.peer_fingerprint = None
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        attempt = _Attempt(self, tlsProtocol)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, attempt.verify)
        if self.policy.mode is TrustMode.TOFU:
            connection.set_info_callback(attempt.info)
        return connection

    # -- deciding -----------------------------------------------------------------------------

    def _check_chain_error(self, certificate: x509.Certificate, error: int, depth: int) -> CertificateError:
        reason = _VERIFY_REASONS.get(error, f"OpenSSL verify error {error}")
        if error == SSL.X509VerificationCodes.ERR_CERT_HAS_EXPIRED:
            reason = f"{'it' if depth == 0 else 'a CA certificate in its chain'} expired on " + (
                f"{certificate.not_valid_after_utc:%Y-%m-%d}"
            )
        hint = ""
        if error in (
            SSL.X509VerificationCodes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
            SSL.X509VerificationCodes.ERR_SELF_SIGNED_CERT_IN_CHAIN,
            SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
            SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_ISSUER_CERT,
            SSL.X509VerificationCodes.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
        ):
            hint = _SELF_SIGNED_HINT
        return CertificateError(
            f"The TLS certificate of {self.label} is not trusted: {reason} "
            f"(checked against {self.policy.describe()}); the connection was refused.{hint}"
        )

    def _check_name(self, certificate: x509.Certificate) -> CertificateError | None:
        try:
            if self._address is None:
                verify_certificate_hostname(certificate, self.host)
            else:
                verify_certificate_ip_address(certificate, str(self._address))
        except (service_identity.VerificationError, service_identity.CertificateError):
            names = ", ".join(certificate_hostnames(certificate)) or "no names at all"
            return CertificateError(
                f"The TLS certificate of {self.label} is signed by a trusted CA but made out to other names "
                f"({names}), not to {self.host}; the connection was refused. Connect using one of those names, "
                f"or ask the server's administrator for a certificate that includes {self.host}."
            )
        return None

    def _check_pin(self, certificate: x509.Certificate) -> tuple[CertificateError | None, bool]:
        """The refusal, if any, and whether this certificate is to be pinned once the handshake completes."""
        presented = fingerprint_of(certificate)
        if self.policy.mode is TrustMode.FINGERPRINT:
            if presented == self.policy.expected:
                return None, False
            return (
                CertificateError(
                    f"The TLS certificate of {self.label} is not the expected one; the connection was refused.\n"
                    f"  expected:  {self.policy.expected}\n"
                    f"  presented: {presented}\n"
                    "Check the fingerprint you were given (chatd-cert prints it on the server)."
                ),
                False,
            )
        pins = self.policy.pins
        assert pins is not None
        try:
            pinned = pins.get(self.host, self.port)
        except PinStoreError as error:
            return CertificateError(str(error)), False
        if pinned is None:
            return None, True
        if pinned == presented:
            return None, False
        key = server_key(self.host, self.port)
        forget = f"chatd-cert --forget {key}"
        if pins.path != default_pin_path():
            forget += f" --known-servers {pins.path}"
        return (
            CertificateChangedError(
                f"WARNING: THE TLS CERTIFICATE OF {key} HAS CHANGED since this client first trusted it.\n"
                f"  pinned:    {pinned}\n"
                f"  presented: {presented}\n"
                "Someone may be intercepting the connection (a man-in-the-middle attack), or the server's "
                "administrator may have replaced its certificate. The connection was refused.\n"
                "Ask the administrator for the new fingerprint (chatd-cert prints it). If the change is "
                f"legitimate, remove the old pin with:\n  {forget}\n"
                f'or delete the "{key}" entry from {pins.path}, then connect again to pin the new certificate.'
            ),
            False,
        )


class _Attempt:
    """The checks of one connection: the verify and info callbacks OpenSSL calls during its handshake."""

    _log = Logger()

    def __init__(self, creator: ChatTLSCreator, tls_protocol: TLSMemoryBIOProtocol) -> None:
        self._creator = creator
        self._protocol: TLSMemoryBIOProtocol | None = tls_protocol
        self._to_pin: str | None = None

    def verify(self, connection: SSL.Connection, certificate: X509, error: int, depth: int, ok: int) -> bool:
        # Called by OpenSSL once per problem and once per accepted certificate,
        # from the root down to the server's own (depth 0). An exception here
        # would be lost inside OpenSSL, so every one is caught and refuses.
        try:
            refusal = self._decide(certificate.to_cryptography(), error, depth, bool(ok))
        except BaseException:
            self._log.failure("while checking the server's TLS certificate")
            refusal = CertificateError(f"The TLS certificate of {self._creator.label} could not be checked.")
        if refusal is None:
            return True
        self._refuse(refusal)
        return False

    def _decide(self, certificate: x509.Certificate, error: int, depth: int, ok: bool) -> CertificateError | None:
        creator = self._creator
        if depth == 0:
            creator.peer_fingerprint = fingerprint_of(certificate)
        if creator.policy.mode in (TrustMode.SYSTEM, TrustMode.CA_FILE):
            if not ok:
                return creator._check_chain_error(certificate, error, depth)
            return creator._check_name(certificate) if depth == 0 else None
        # Pinning: OpenSSL's opinion of the chain (self-signed, expired, no
        # CA) does not matter; only the server's own certificate does.
        if depth != 0:
            return None
        refusal, to_pin = creator._check_pin(certificate)
        self._to_pin = fingerprint_of(certificate) if to_pin else None
        return refusal

    def _refuse(self, refusal: CertificateError) -> None:
        self._creator.refusal = refusal
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            # What the application protocol's connectionLost receives.
            protocol.failVerification(Failure(refusal))

    def info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        # The certificate is pinned only once the handshake is complete: by
        # then the server has proved that it holds the certificate's key.
        if not where & SSL.SSL_CB_HANDSHAKE_DONE or self._to_pin is None:
            return
        value, self._to_pin = self._to_pin, None
        creator = self._creator
        pins = creator.policy.pins
        assert pins is not None
        try:
            pins.pin(creator.host, creator.port, value)
        except PinStoreError as error:
            # As SSH does: the connection is fine; only remembering it failed.
            self._log.warn(
                "could not pin the TLS certificate of {server}: {error}", server=creator.label, error=str(error)
            )
            return
        except BaseException:
            self._log.failure("while pinning the TLS certificate of {server}", server=creator.label)
            return
        creator.newly_pinned = value
        self._log.info(
            "Trusting {server} on first use: pinned its TLS certificate {fingerprint} in {path}",
            server=creator.label,
            fingerprint=value,
            path=pins.path,
        )


def client_connection_creator(host: str, port: int, policy: TrustPolicy) -> ChatTLSCreator:
    """
    The connection creator for C{wrapClientTLS(creator, HostnameEndpoint(reactor, host, port))}.

    Raises L{TLSSetupError} at once when the policy's file (CA file, pin
    file) cannot be used, before any connection is tried.
    """
    return ChatTLSCreator(host, port, policy)


def tls_endpoint(
    reactor: Any, host: str, port: int, policy: TrustPolicy
) -> tuple[IStreamClientEndpoint, ChatTLSCreator]:
    """A TLS client endpoint for C{host:port}, and its creator, to ask after a failure."""
    creator = client_connection_creator(host, port, policy)
    return wrapClientTLS(creator, HostnameEndpoint(reactor, host, port)), creator


def explain_tls_failure(reason: Failure | BaseException, creator: ChatTLSCreator | None = None) -> ChatError | None:
    """
    The error to show for a TLS connection that failed or was lost during its
    handshake: the L{CertificateError} the creator refused with, a
    L{ConnectionFailedError} for a handshake that failed for another reason
    (most often a server that does not speak TLS on that port), or None when
    the failure has nothing to do with TLS (refused, unreachable, closed).
    """
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, ChatError):
        return value
    if isinstance(value, service_identity.VerificationError):
        # From a creator other than ours, such as optionsForClientTLS.
        return CertificateError(f"The server's TLS certificate is made out to other names: {value}")
    if isinstance(value, SSL.Error):
        if creator is not None and creator.refusal is not None:
            return creator.refusal
        where = f" with {creator.label}" if creator is not None else ""
        return ConnectionFailedError(
            f"The TLS handshake{where} failed ({_openssl_reason(value)}). Is the server listening with TLS on "
            "that port, and not plain TCP?"
        )
    return None


def _openssl_reason(error: SSL.Error) -> str:
    # pyOpenSSL's args are a list of (library, function, reason) tuples.
    try:
        reasons = [str(entry[2]) for entry in error.args[0] if entry[2]]
    except (IndexError, TypeError):
        reasons = []
    return "; ".join(reasons) or str(error) or "no reason given"
