"""
Certificates for the TLS control connection: making a self-signed one,
fingerprints, and loading the server's certificate and key.

Fingerprints are always written C{"SHA256:"} followed by the SHA-256 of the
certificate's DER bytes in lowercase hex pairs joined by colons, e.g.
C{"SHA256:3f:a0:...:9c"}. That is C{openssl x509 -noout -fingerprint -sha256}
lowercased, so an administrator can check one with stock tools. It covers the
whole certificate, not only its key: a renewed certificate is a changed one.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.ssl import (
    AcceptableCiphers,
    CertificateOptions,
    TLSVersion,
)

from chatd.errors import TLSSetupError

if TYPE_CHECKING:
    # Twisted defines this interface only in its private module; it is used here for annotations alone.
    pass

DEFAULT_HOSTNAMES: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")
"""The names a certificate from L{make_self_signed} covers unless told otherwise."""

DEFAULT_DAYS = 825
"""Validity of a new certificate: the longest that Apple's TLS clients accept for a server."""

CERT_FILE_NAME = "chatd-cert.pem"
KEY_FILE_NAME = "chatd-key.pem"

FINGERPRINT_PREFIX = "SHA256:"

SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""
The TLS 1.2 suites the server accepts, as an OpenSSL cipher string: forward
secret key exchange (ECDHE) and an AEAD (AES-GCM or ChaCha20-Poly1305) only,
so no CBC (Lucky 13 and its kin), no RSA key exchange (no forward secrecy),
no SHA-1 MACs. Every TLS 1.3 suite is already of that kind and always
offered. Every client chatd ships, and every TLS library of the last decade,
has one of these.
"""

_EXPIRY_WARNING = datetime.timedelta(days=30)


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


def read_file(path: str, what: str) -> bytes:
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
    cert_data = read_file(cert_path, "certificate")
    key_data = read_file(key_path, "private key")
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
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(SERVER_CIPHERS),
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
    """
    The server's TLS options (TLS 1.3, or TLS 1.2 with the AEAD suites of
    L{SERVER_CIPHERS}) from PEM files; see L{load_server_certificate}.
    """
    return load_server_certificate(cert_path, key_path).options
