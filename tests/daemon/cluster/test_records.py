"""The directory's records and their Redis encoding: round trips, and malformed data refused in one sentence."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.cluster.records import (
    MemberRecord,
    ReapReport,
    RoomRecord,
    decode_member,
    decode_members,
    decode_reap_batch,
    decode_room,
    encode_member,
    encode_room,
    member_entry,
    new_credential,
    pairs,
    secret_hash,
    split_member_entry,
)
from chatd.daemon.history import new_epoch
from chatd.daemon.passwords import PasswordHash
from chatd.protocol.errors import ClusterUnavailableError, Status

names = st.text(min_size=1, max_size=40).filter(lambda text: "\x00" not in text)
epochs = st.text("0123456789abcdef", min_size=16, max_size=16)
password_hashes = st.builds(
    PasswordHash,
    salt=st.binary(min_size=16, max_size=16),
    key=st.binary(min_size=32, max_size=32),
    cost=st.sampled_from([2, 1024, 16384]),
)
rooms = st.builds(
    RoomRecord,
    name=names,
    epoch=epochs,
    host=names,
    host_node=names,
    password=st.none() | password_hashes,
    native_only=st.booleans(),
    created_ms=st.integers(min_value=0, max_value=2**53),
)
members = st.builds(
    MemberRecord,
    name=names,
    node=names,
    dialect=st.sampled_from(["native", "model", "seed"]),
    reliable=st.booleans(),
    credential_hash=st.none() | st.text().map(secret_hash),
)


def room_fields(room: RoomRecord) -> dict[str, str]:
    return pairs(encode_room(room))


class RoomEncodingTests(SynchronousTestCase):
    @given(rooms)
    def test_round_trip(self, room: RoomRecord) -> None:
        self.assertEqual(decode_room(pairs(encode_room(room))), room)

    @given(rooms)
    def test_round_trip_from_bytes(self, room: RoomRecord) -> None:
        """txredisapi hands over bytes for values it could not decode; valid UTF-8 bytes read the same."""
        fields = {field: value.encode("utf-8") for field, value in room_fields(room).items()}
        self.assertEqual(decode_room(fields), room)

    def test_malformed(self) -> None:
        good = room_fields(RoomRecord("teahouse", new_epoch(), "alice", "n1", None, False, 5))
        cases = {
            "lacks epoch": {k: v for k, v in good.items() if k != "epoch"},
            "epoch": {**good, "epoch": "XYZ"},
            "password": {**good, "password": "bcrypt$1$2"},
            "native_only": {**good, "native_only": "yes"},
            "created_ms": {**good, "created_ms": "-5"},
            "not UTF-8": {**good, "host": b"\xff"},
            "host": {**good, "host": ""},
            "not text": {**good, "name": 5},
        }
        for expected, fields in cases.items():
            with self.assertRaises(ClusterUnavailableError, msg=expected) as raised:
                decode_room(fields)  # type: ignore[arg-type]
            message = str(raised.exception)
            self.assertIn("malformed room record", message)
            self.assertIn(expected.split()[-1], message)
            self.assertNotIn("\n", message)

    def test_checks_on_construction(self) -> None:
        with self.assertRaises(ValueError):
            RoomRecord("r", "short", "h", "n", None, False, 0)
        with self.assertRaises(ValueError):
            RoomRecord("r", new_epoch(), "h", "n", None, False, -1)
        with self.assertRaises(ValueError):
            RoomRecord("", new_epoch(), "h", "n", None, False, 0)

    def test_odd_flat_list(self) -> None:
        with self.assertRaises(ClusterUnavailableError):
            pairs(["name"])


class MemberEncodingTests(SynchronousTestCase):
    @given(members)
    def test_round_trip(self, member: MemberRecord) -> None:
        self.assertEqual(decode_member(member.name, encode_member(member)), member)

    @given(st.lists(members, unique_by=lambda m: m.name))
    def test_members_hash(self, records: list[MemberRecord]) -> None:
        flat = [item for m in records for item in (m.name, encode_member(m))]
        self.assertEqual(decode_members(flat), sorted(records, key=lambda m: m.name))

    def test_lua_style_json(self) -> None:
        """What Redis's cjson writes back after a take-over (other key order, escaped slashes) reads the same."""
        value = '{"credential":"' + secret_hash("x") + '","reliable":true,"dialect":"native","node":"a\\/b"}'
        self.assertEqual(decode_member("bob", value), MemberRecord("bob", "a/b", "native", True, secret_hash("x")))

    def test_malformed(self) -> None:
        cases = {
            "not JSON": "{",
            "not a JSON object": "[]",
            "node and dialect must be text": '{"node":1,"dialect":"native","reliable":true,"credential":null}',
            "reliable must be true or false": '{"node":"n","dialect":"native","reliable":1,"credential":null}',
            "credential must be text or null": '{"node":"n","dialect":"native","reliable":true,"credential":5}',
            "SHA-256": '{"node":"n","dialect":"native","reliable":true,"credential":"abc"}',
        }
        for expected, value in cases.items():
            with self.assertRaises(ClusterUnavailableError, msg=expected) as raised:
                decode_member("bob", value)
            self.assertIn(expected, str(raised.exception))
            self.assertIn("'bob'", str(raised.exception))

    def test_can_resume(self) -> None:
        self.assertTrue(MemberRecord("a", "n", "native", True, secret_hash("s")).can_resume)
        self.assertFalse(MemberRecord("a", "n", "model", False, None).can_resume)


class EntryTests(SynchronousTestCase):
    @given(names, names)
    def test_round_trip(self, room: str, name: str) -> None:
        self.assertEqual(split_member_entry(member_entry(room, name)), (room, name))

    def test_malformed(self) -> None:
        for entry in ["", "abc", "x:abc", "9:abc", "1:\u00e9"]:
            with self.assertRaises(ClusterUnavailableError, msg=entry):
                split_member_entry(entry)


class SecretTests(SynchronousTestCase):
    def test_hash(self) -> None:
        self.assertEqual(secret_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")

    def test_fresh_values(self) -> None:
        self.assertNotEqual(new_credential(), new_credential())
        self.assertGreaterEqual(len(new_credential()), 43)
        self.assertRegex(new_epoch(), r"\A[0-9a-f]{16}\Z")


class ReapReportTests(SynchronousTestCase):
    def test_decode(self) -> None:
        bob = MemberRecord("bob", "n2", "seed", False, None)
        answer = json.dumps(
            {
                "node": "n1",
                "finished": True,
                "members": [{"room": "teahouse", "epoch": "e", "name": "alice", "host": True}],
                "rooms": [{"name": "teahouse", "epoch": "e", "host": "alice", "members": ["bob", encode_member(bob)]}],
            }
        )
        report, finished = decode_reap_batch(answer)
        self.assertTrue(finished)
        self.assertEqual(report.nodes, ("n1",))
        self.assertEqual(
            [(m.room, m.name, m.node, m.was_host) for m in report.members], [("teahouse", "alice", "n1", True)]
        )
        self.assertEqual(report.rooms[0].members, (bob,))

    def test_empty_lua_tables(self) -> None:
        """cjson writes an empty Lua table as {}: empty lists; an unfinished node is not reported as forgotten."""
        report, finished = decode_reap_batch('{"node":"n1","finished":false,"members":{},"rooms":{}}')
        self.assertEqual((report, finished), (ReapReport(), False))

    def test_malformed(self) -> None:
        for answer in [
            "",
            "{}",
            '{"node":1,"finished":true,"members":{},"rooms":{}}',
            '{"node":"n","finished":true,"members":3,"rooms":{}}',
        ]:
            with self.assertRaises(ClusterUnavailableError, msg=answer):
                decode_reap_batch(answer)

    def test_sum(self) -> None:
        one = ReapReport(("a",), (), ())
        self.assertEqual((one + ReapReport(("a", "b"))).nodes, ("a", "b"))


class ErrorTests(SynchronousTestCase):
    def test_status(self) -> None:
        """A degraded cluster refuses with SERVER_FULL and keeps the connection."""
        self.assertIs(ClusterUnavailableError.status, Status.SERVER_FULL)
        self.assertFalse(ClusterUnavailableError.closes)
        self.assertEqual(ClusterUnavailableError.reason, "cluster_unavailable")
