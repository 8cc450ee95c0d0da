"""
Certificates for the TLS control connection: making a self-signed one,
fingerprints, reading PEM files. Pure (cryptography only, no Twisted); the
server's loading of its certificate and key is chatd.daemon.server_tls.

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
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chatd.protocol.errors import TLSSetupError

DEFAULT_HOSTNAMES: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")
"""The names a certificate from L{make_self_signed} covers unless told otherwise."""

DEFAULT_DAYS = 825
"""Validity of a new certificate: the longest that Apple's TLS clients accept for a server."""

CERT_FILE_NAME = "chatd-cert.pem"
KEY_FILE_NAME = "chatd-key.pem"

FINGERPRINT_PREFIX = "SHA256:"


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
