"""
The command-line TLS options that chatd-chat and chatd-debug share: the same
flags, the same trust rules, one place.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from chatd.client.tls import TrustPolicy

DEFAULT_TLS_PORT = 9003


def add_tls_arguments(
    parser: argparse.ArgumentParser, description: str, port_type: Callable[[str], int], system: bool = True
) -> None:
    """
    C{--tls-port} and the trust options (C{--tls-ca}, C{--tls-fingerprint},
    C{--tls-tofu} and, if C{system}, C{--tls-system}), in a group of their own.
    """
    tls = parser.add_argument_group("TLS", description)
    tls.add_argument("--tls-port", type=port_type, help=f"the server's TLS port ({DEFAULT_TLS_PORT})")
    trust = tls.add_mutually_exclusive_group()
    trust.add_argument("--tls-ca", metavar="FILE", help="trust certificates signed by this CA file (or this cert)")
    trust.add_argument("--tls-fingerprint", metavar="SHA256:..", help="trust exactly this certificate")
    trust.add_argument("--tls-tofu", action="store_true", help="pin the certificate on first use (the default)")
    if system:
        trust.add_argument("--tls-system", action="store_true", help="trust the system's certificate authorities")


def trust_policy(args: argparse.Namespace, error: Callable[[str], NoReturn]) -> TrustPolicy | None:
    """
    How to trust the server, from the options of L{add_tls_arguments}; None
    for plain TCP. Any of them turns TLS on; without a trust option the
    certificate is pinned on first use. C{error} reports a bad value (the
    parser's C{error}).
    """
    if args.tls_ca:
        return TrustPolicy.ca_file(args.tls_ca)
    if args.tls_fingerprint:
        try:
            return TrustPolicy.fingerprint(args.tls_fingerprint)
        except ValueError as failure:
            error(f"--tls-fingerprint: {failure}")
    if vars(args).get("tls_system", False):
        return TrustPolicy.system()
    if args.tls_tofu or args.tls_port:
        return TrustPolicy.tofu()
    return None
