"""Tests for chatd.daemon.passwords: salted scrypt hashes."""

from __future__ import annotations

import binascii

from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.passwords import DEFAULT_COST, PasswordHash, hash_password, verify_password

CHEAP = 2
"""The smallest scrypt cost: tests check the logic, not the hardness."""


class HashPasswordTests(SynchronousTestCase):
    def test_verify(self) -> None:
        stored = hash_password("s3cret", cost=CHEAP)
        self.assertTrue(verify_password("s3cret", stored))

    def test_wrong_password(self) -> None:
        stored = hash_password("s3cret", cost=CHEAP)
        self.assertFalse(verify_password("s3cre", stored))
        self.assertFalse(verify_password("S3cret", stored))
        self.assertFalse(verify_password("", stored))

    def test_non_ascii(self) -> None:
        stored = hash_password("p\u00e4ss \u90e8\u5c4b", cost=CHEAP)
        self.assertTrue(verify_password("p\u00e4ss \u90e8\u5c4b", stored))
        self.assertFalse(verify_password("pass \u90e8\u5c4b", stored))

    def test_small_costs(self) -> None:
        """Every power of two scrypt accepts, from the smallest, within its memory limit."""
        for cost in (2, 4, 8, 16):
            stored = hash_password("pw", cost=cost)
            self.assertEqual(stored.cost, cost)
            self.assertTrue(verify_password("pw", stored), cost)

    def test_parameters_and_sizes(self) -> None:
        stored = hash_password("pw", cost=CHEAP)
        self.assertEqual((stored.cost, stored.block_size, stored.parallelism), (CHEAP, 8, 1))
        self.assertEqual(len(stored.salt), 16)
        self.assertEqual(len(stored.key), 32)
        self.assertNotIn(b"pw", stored.key)

    def test_salts_differ(self) -> None:
        first = hash_password("same", cost=CHEAP)
        second = hash_password("same", cost=CHEAP)
        self.assertNotEqual(first.salt, second.salt)
        self.assertNotEqual(first.key, second.key)
        self.assertTrue(verify_password("same", second))

    def test_the_salt_matters(self) -> None:
        stored = hash_password("pw", cost=CHEAP)
        other_salt = PasswordHash(bytes(16), stored.key, stored.cost)
        self.assertFalse(verify_password("pw", other_salt))

    def test_the_cost_matters(self) -> None:
        stored = hash_password("pw", cost=CHEAP)
        self.assertFalse(verify_password("pw", PasswordHash(stored.salt, stored.key, 4)))

    def test_default_cost(self) -> None:
        self.assertEqual(DEFAULT_COST, 2**14)
        stored = hash_password("s3cret")
        self.assertEqual(stored.cost, DEFAULT_COST)
        self.assertTrue(verify_password("s3cret", stored))


class PasswordHashTextTests(SynchronousTestCase):
    def test_format(self) -> None:
        stored = PasswordHash(b"\x00" * 16, b"\xff" * 32, cost=4)
        self.assertEqual(
            str(stored),
            "scrypt$4$8$1$" + "A" * 22 + "==$" + "/" * 42 + "8=",
        )

    def test_round_trip(self) -> None:
        stored = hash_password("pw", cost=CHEAP)
        parsed = PasswordHash.parse(str(stored))
        self.assertEqual(parsed, stored)
        self.assertTrue(verify_password("pw", parsed))
        self.assertFalse(verify_password("pW", parsed))

    def test_round_trip_keeps_parameters(self) -> None:
        stored = PasswordHash(b"salt", b"key", cost=1024, block_size=4, parallelism=2)
        self.assertEqual(PasswordHash.parse(str(stored)), stored)

    def test_parse_refusals(self) -> None:
        good = str(hash_password("pw", cost=CHEAP))
        self.assertRaises(ValueError, PasswordHash.parse, good.replace("scrypt", "bcrypt", 1))
        self.assertRaises(ValueError, PasswordHash.parse, good + "$extra")
        self.assertRaises(ValueError, PasswordHash.parse, good.rsplit("$", 1)[0])
        self.assertRaises(ValueError, PasswordHash.parse, "")
        self.assertRaises(ValueError, PasswordHash.parse, "scrypt$x$8$1$AAAA$AAAA")
        self.assertRaises(binascii.Error, PasswordHash.parse, "scrypt$2$8$1$A$AAAA")
