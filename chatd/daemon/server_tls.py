"""
The server's side of TLS: loading and checking its certificate and key, and
the TLS options it listens with (TLS 1.3, or TLS 1.2 with AEAD suites only).
"""

from __future__ import annotations

import datetime
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

from chatd.protocol.certificates import certificate_hostnames, fingerprint_of, read_file
from chatd.protocol.errors import TLSSetupError

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
