"""
Room passwords, stored only as salted scrypt hashes.

scrypt is memory-hard, so guessing a stolen hash is slow on any hardware; it
is also slow for us (tens of milliseconds at the default cost), which is why
the registry runs these functions off the reactor thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

DEFAULT_COST = 2**14
_BLOCK_SIZE = 8
_PARALLELISM = 1
_SALT_BYTES = 16
_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A salted scrypt hash and the parameters it was made with."""

    salt: bytes
    key: bytes
    cost: int = DEFAULT_COST
    block_size: int = _BLOCK_SIZE
    parallelism: int = _PARALLELISM

    def __str__(self) -> str:
        """The modular form C{scrypt$n$r$p$salt$key} (base64), for storage."""
        salt = base64.b64encode(self.salt).decode("ascii")
        key = base64.b64encode(self.key).decode("ascii")
        return f"scrypt${self.cost}${self.block_size}${self.parallelism}${salt}${key}"

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        scheme, cost, block_size, parallelism, salt, key = text.split("$")
        if scheme != "scrypt":
            raise ValueError(f"unknown password hash scheme {scheme!r}")
        return cls(base64.b64decode(salt), base64.b64decode(key), int(cost), int(block_size), int(parallelism))


def _derive(password: str, salt: bytes, cost: int, block_size: int, parallelism: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=cost,
        r=block_size,
        p=parallelism,
        maxmem=256 * cost * block_size * parallelism + (1 << 20),
        dklen=_KEY_BYTES,
    )


def hash_password(password: str, cost: int = DEFAULT_COST) -> PasswordHash:
    salt = secrets.token_bytes(_SALT_BYTES)
    return PasswordHash(salt, _derive(password, salt, cost, _BLOCK_SIZE, _PARALLELISM), cost)


def verify_password(password: str, stored: PasswordHash) -> bool:
    """Compare in constant time, so timing does not tell how close a guess was."""
    candidate = _derive(password, stored.salt, stored.cost, stored.block_size, stored.parallelism)
    return hmac.compare_digest(candidate, stored.key)
