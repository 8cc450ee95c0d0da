"""
Pinned server fingerprints, for trust on first use: one per server
(C{host:port}) in a JSON file, as SSH's known_hosts keeps host keys.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from chatd.protocol.certificates import normalize_fingerprint
from chatd.protocol.errors import PinStoreError

if TYPE_CHECKING:
    # Twisted defines this interface only in its private module; it is used here for annotations alone.
    pass

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
