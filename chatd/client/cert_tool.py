"""
C{chatd-cert}: make a self-signed certificate for chatd's TLS port, or forget
a pinned one.

    chatd-cert [--out DIR] [--host NAME ...] [--days N] [--force]
    chatd-cert --forget HOST:PORT [--known-servers FILE]

The first form writes DIR/chatd-cert.pem (0644) and DIR/chatd-key.pem (0600),
refuses to replace either without --force, and prints the certificate's
fingerprint with the options that use it: the daemon's and the client's. The
second removes a client's pin after a legitimate certificate change, as
C{ssh-keygen -R} does for known_hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from typing import TextIO

from chatd.client.pins import PinStore, server_key
from chatd.client.tls_arguments import DEFAULT_TLS_PORT
from chatd.protocol.certificates import (
    CERT_FILE_NAME,
    DEFAULT_DAYS,
    DEFAULT_HOSTNAMES,
    KEY_FILE_NAME,
    fingerprint,
    make_self_signed,
)
from chatd.protocol.errors import PinStoreError

"""The port shown in the suggested twistd command line (the daemon's --tls-port)."""


def _days(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (at least 1)")
    return int(text)


def _server(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (write an IPv6 address as [::1]:9003)")
    return host, int(port)


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chatd-cert",
        description=(
            "Make a self-signed TLS certificate and key for chatd's control connection, "
            "or forget a server's pinned certificate."
        ),
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=".",
        help=f"directory for {CERT_FILE_NAME} and {KEY_FILE_NAME} (default: the current directory)",
    )
    parser.add_argument(
        "--host",
        metavar="NAME",
        action="append",
        dest="hosts",
        help=(
            "a host name or IP address clients use to reach the server; repeat for each. "
            f"Replaces the default list ({', '.join(DEFAULT_HOSTNAMES)})"
        ),
    )
    parser.add_argument(
        "--days", type=_days, default=DEFAULT_DAYS, help=f"how long the certificate is valid (default {DEFAULT_DAYS})"
    )
    parser.add_argument("--force", action="store_true", help="replace existing certificate and key files")
    parser.add_argument(
        "--forget",
        metavar="HOST:PORT",
        type=_server,
        help="instead: remove the certificate pinned for this server, after a legitimate change",
    )
    parser.add_argument(
        "--known-servers",
        metavar="FILE",
        help="with --forget: the pin file (default $XDG_CONFIG_HOME/chatd/known_servers.json)",
    )
    return parser.parse_args(argv)


def _write(path: str, data: bytes, mode: int) -> None:
    """Write C{path} whole or not at all: a temporary file with its final mode, then a rename."""
    directory = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(prefix=".chatd-cert.", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes the file 0600, so the key is never readable by others, not even briefly.
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def generate(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    hosts: list[str] = options.hosts or list(DEFAULT_HOSTNAMES)
    directory = os.path.abspath(options.out)
    cert_path = os.path.join(directory, CERT_FILE_NAME)
    key_path = os.path.join(directory, KEY_FILE_NAME)
    if not options.force:
        # Checked for both before writing either, so a refusal leaves no half-made pair.
        existing = [path for path in (cert_path, key_path) if os.path.lexists(path)]
        for path in existing:
            print(f"chatd-cert: {path} already exists; use --force to replace it", file=err)
        if existing:
            return 1
    try:
        cert_pem, key_pem = make_self_signed(hosts, options.days)
    except ValueError as error:
        print(f"chatd-cert: {error}", file=err)
        return 2
    try:
        os.makedirs(directory, exist_ok=True)
        # The key first: a certificate without its key would be useless.
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem, 0o644)
    except OSError as error:
        print(f"chatd-cert: cannot write to {directory}: {error.strerror}", file=err)
        return 1

    value = fingerprint(cert_pem)
    cert_arg, key_arg = shlex.quote(cert_path), shlex.quote(key_path)
    print(
        f"Wrote {cert_path} (certificate, 0644) and {key_path} (private key, 0600).\n"
        f"Valid for {options.days} days for: {', '.join(hosts)}\n"
        f"\n"
        f"Fingerprint: {value}\n"
        f"(Check it with: openssl x509 -noout -fingerprint -sha256 -in {cert_arg})\n"
        f"\n"
        f"Run the daemon with TLS:\n"
        f"  twistd -n chatd --tls-cert {cert_arg} --tls-key {key_arg} --tls-port {DEFAULT_TLS_PORT}\n"
        f"\n"
        f"Clients then connect to port {DEFAULT_TLS_PORT} and trust this certificate in one of these ways:\n"
        f"  --tls-fingerprint {value}\n"
        f"      pin exactly this certificate;\n"
        f"  --tls-ca {cert_arg}\n"
        f"      a copy of the certificate file as the CA (host names are checked too);\n"
        f"  --tls-tofu\n"
        f"      trust what the server shows on first use, and refuse any other certificate later.\n"
        f"Give the fingerprint to users over a channel you trust, so they can check it.",
        file=out,
    )
    return 0


def forget(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    host, port = options.forget
    store = PinStore(options.known_servers)
    try:
        removed = store.forget(host, port)
    except PinStoreError as error:
        print(f"chatd-cert: {error}", file=err)
        return 1
    if removed:
        print(f"Removed the pinned certificate of {server_key(host, port)} from {store.path}.", file=out)
        print("The next connection trusts the certificate the server shows then, and pins it.", file=out)
    else:
        print(f"No certificate is pinned for {server_key(host, port)} in {store.path}.", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The C{chatd-cert} console script; returns the exit status."""
    options = parse_arguments(argv)
    if options.forget is not None:
        return forget(options, sys.stdout, sys.stderr)
    if options.known_servers is not None:
        print("chatd-cert: --known-servers goes with --forget", file=sys.stderr)
        return 2
    return generate(options, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
