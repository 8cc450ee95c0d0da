"""
TLS for the control connection, the client's side: trust policies (system
CAs, a CA file, a fixed fingerprint, or trust on first use) and the
connection creator that applies them.

Modelled on Mumble, which wraps its control connection in TLS and usually runs
with a self-signed certificate, and on SSH's known_hosts: the first time a
client meets a server it remembers the certificate's fingerprint
(chatd.client.pins), and from then on a different certificate on that host and port
is refused loudly. Certificates and the server's side are in
chatd.protocol.certificates.

Certificate failures reach the client's connection as the L{ChatError} that
explains them (L{CertificateError}, L{CertificateChangedError}): the creator
hands them to Twisted's C{failVerification}, the same way Twisted's own
hostname check reports a mismatch. L{explain_tls_failure} turns whatever a
failed TLS connection ended with into the error to show.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import service_identity
from cryptography import x509
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

from chatd.client.pins import PinStore, default_pin_path, server_key
from chatd.protocol.certificates import certificate_hostnames, fingerprint_of, normalize_fingerprint, read_file
from chatd.protocol.errors import (
    CertificateChangedError,
    CertificateError,
    ChatError,
    ConnectionFailedError,
    PinStoreError,
    TLSSetupError,
)

if TYPE_CHECKING:
    # Twisted defines this interface only in its private module; it is used here for annotations alone.
    from twisted.internet._sslverify import IOpenSSLTrustRoot


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
    data = read_file(policy.ca_path, "CA")
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
            # Every refusal is one line: line mode prints each report on one
            # line (a newline would come out as a literal \n), as logs do.
            return (
                CertificateError(
                    f"The TLS certificate of {self.label} is not the expected one (expected {self.policy.expected},"
                    f" presented {presented}); the connection was refused. Check the fingerprint you were given"
                    " (chatd-cert prints it on the server)."
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
                f"WARNING: THE TLS CERTIFICATE OF {key} HAS CHANGED since this client first trusted it (pinned"
                f" {pinned}, presented {presented}). Someone may be intercepting the connection (a"
                " man-in-the-middle attack), or the server's administrator may have replaced its certificate."
                " The connection was refused. Ask the administrator for the new fingerprint (chatd-cert prints"
                f" it). If the change is legitimate, remove the old pin with `{forget}` (or delete the"
                f' "{key}" entry from {pins.path}), then connect again to pin the new certificate.'
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
