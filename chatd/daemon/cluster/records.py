"""
What the room directory keeps in Redis, as typed records, and their encoding.

Pure: strings in, records out, and back; no Redis, no Twisted, so every
branch is tested without a server (tests/daemon/cluster/test_records.py).
The directory's Lua scripts read and write the same encodings, so each one is
chosen for what Lua can handle too:

- a room is a Redis hash of text fields (L{encode_room}, L{decode_room}),
  so a script can read or change one field (C{epoch}, C{host_node});
- a member is a JSON object in the room's members hash, under the member's
  name (L{encode_member}, L{decode_member}); scripts read and rewrite it with
  Redis's C{cjson};
- a node's index entry names a room and a member in one string
  (L{member_entry}): the room's length in UTF-8 bytes, a colon, the room,
  the member. Unambiguous whatever characters the names hold, and the same
  bytes whether Python or Lua builds it;
- secrets (resume credentials, invitation tokens) are never stored, only
  their SHA-256 (L{secret_hash}), so a copy of Redis's data lets nobody
  resume a member or spend an invitation.

Whatever comes back from Redis is checked as it is decoded: a field missing,
of the wrong form, or bytes that are not UTF-8 raise
L{ClusterUnavailableError} with one sentence naming the record and the
field, never a KeyError deep in the daemon.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatd.daemon.passwords import PasswordHash
from chatd.protocol.errors import ClusterUnavailableError

EPOCH_PATTERN = re.compile(r"[0-9a-f]{16}\Z")
"""A room's epoch: 16 lowercase hexadecimal characters (docs/reliability.md, section 2)."""
SECRET_HASH_PATTERN = re.compile(r"[0-9a-f]{64}\Z")
"""A SHA-256 in lowercase hexadecimal: what Redis holds of a credential or an invitation."""
CREDENTIAL_BYTES = 32
"""Entropy of a resume credential made by L{new_credential}."""

RedisText = str | bytes
"""A value as txredisapi hands it over: text, or bytes when it is not UTF-8."""


def secret_hash(secret: str) -> str:
    """
    The SHA-256 of a secret's UTF-8 bytes, in hexadecimal: what Redis keeps of
    a resume credential or an invitation token. A plain hash is enough (no
    salt, no scrypt): the secrets are 128 bits or more of randomness, not
    passwords a person chose, so there is nothing to guess.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_credential() -> str:
    """A fresh resume credential for a native member (URL-safe text; only its hash goes to Redis)."""
    return secrets.token_urlsafe(CREDENTIAL_BYTES)


def _malformed(what: str, why: str) -> ClusterUnavailableError:
    return ClusterUnavailableError(f"the room directory in Redis holds a malformed {what}: {why}")


def _text(value: object, what: str, field: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed(what, f"{field} is not UTF-8 text") from None
    if not isinstance(value, str):
        raise _malformed(what, f"{field} is {type(value).__name__}, not text")
    return value


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """
    A room as the cluster knows it. C{name} is unique cluster-wide; C{epoch}
    tells this incarnation of the name from an earlier or later one, so that a
    late clean-up of an old room never touches a new room of the same name.
    C{host} is the host's user name and C{host_node} the node it is on now
    (it moves when the host resumes elsewhere). C{created_ms} is the creator's
    wall clock, in milliseconds, for display and operations only.
    """

    name: str
    epoch: str
    host: str
    host_node: str
    password: PasswordHash | None
    native_only: bool
    created_ms: int

    def __post_init__(self) -> None:
        if not EPOCH_PATTERN.match(self.epoch):
            raise ValueError(f"a room epoch is 16 lowercase hexadecimal characters, not {self.epoch!r}")
        if not self.name or not self.host or not self.host_node:
            raise ValueError("a room record needs a name, a host and the host's node")
        if self.created_ms < 0:
            raise ValueError(f"a room's creation time cannot be negative ({self.created_ms})")


ROOM_FIELDS = ("name", "epoch", "host", "host_node", "password", "native_only", "created_ms")
"""The fields of a room's hash, all of them always present."""


def encode_room(room: RoomRecord) -> list[str]:
    """The room's hash as field, value, field, value... (for HSET); no password is the empty string."""
    values = {
        "name": room.name,
        "epoch": room.epoch,
        "host": room.host,
        "host_node": room.host_node,
        "password": "" if room.password is None else str(room.password),
        "native_only": "1" if room.native_only else "0",
        "created_ms": str(room.created_ms),
    }
    return [item for field in ROOM_FIELDS for item in (field, values[field])]


def pairs(flat: Sequence[Any]) -> dict[str, Any]:
    """A flat reply field, value, field, value... (HGETALL, or a script's) as a dict."""
    if len(flat) % 2:
        raise _malformed("hash", f"a flat list of {len(flat)} items has no value for its last field")
    return {_text(flat[index], "hash", "a field name"): flat[index + 1] for index in range(0, len(flat), 2)}


def decode_room(fields: Mapping[str, Any]) -> RoomRecord:
    """The room in a room hash read back from Redis; every field checked."""
    what = f"room record {fields.get('name')!r}"
    missing = [field for field in ROOM_FIELDS if field not in fields]
    if missing:
        raise _malformed(what, f"it lacks {', '.join(missing)}")
    text = {field: _text(fields[field], what, field) for field in ROOM_FIELDS}
    password: PasswordHash | None = None
    if text["password"]:
        try:
            password = PasswordHash.parse(text["password"])
        except (ValueError, binascii.Error):
            raise _malformed(what, "password is not a scrypt hash in modular form") from None
    if text["native_only"] not in ("0", "1"):
        raise _malformed(what, f"native_only is {text['native_only']!r}, not 0 or 1")
    if not text["created_ms"].isascii() or not text["created_ms"].isdigit():
        raise _malformed(what, f"created_ms is {text['created_ms']!r}, not a number of milliseconds")
    try:
        return RoomRecord(
            name=text["name"],
            epoch=text["epoch"],
            host=text["host"],
            host_node=text["host_node"],
            password=password,
            native_only=text["native_only"] == "1",
            created_ms=int(text["created_ms"]),
        )
    except ValueError as error:
        raise _malformed(what, str(error)) from None


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """
    A member of a room as the cluster knows it: its user name (unique in the
    room cluster-wide), the node it is connected to, its dialect ("native",
    "model", "seed"), whether it has reliable delivery, and the SHA-256 of its
    resume credential (L{secret_hash}); None for a member that cannot resume
    elsewhere (every legacy member).
    """

    name: str
    node: str
    dialect: str
    reliable: bool
    credential_hash: str | None

    def __post_init__(self) -> None:
        if not self.name or not self.node or not self.dialect:
            raise ValueError("a member record needs a name, a node and a dialect")
        if self.credential_hash is not None and not SECRET_HASH_PATTERN.match(self.credential_hash):
            raise ValueError("a credential hash is a SHA-256 in lowercase hexadecimal (records.secret_hash)")

    @property
    def can_resume(self) -> bool:
        return self.credential_hash is not None


def encode_member(member: MemberRecord) -> str:
    """The member's value in its room's members hash (the name is the hash field, not repeated here)."""
    return json.dumps(
        {
            "node": member.node,
            "dialect": member.dialect,
            "reliable": member.reliable,
            "credential": member.credential_hash,
        },
        separators=(",", ":"),
    )


def decode_member(name: object, value: object) -> MemberRecord:
    """The member C{name} from its value in a members hash; every field checked."""
    member_name = _text(name, "member record", "its name")
    what = f"member record {member_name!r}"
    try:
        fields = json.loads(_text(value, what, "its value"))
    except json.JSONDecodeError:
        raise _malformed(what, "its value is not JSON") from None
    if not isinstance(fields, dict):
        raise _malformed(what, "its value is not a JSON object")
    node, dialect, reliable = fields.get("node"), fields.get("dialect"), fields.get("reliable")
    credential = fields.get("credential")
    if not isinstance(node, str) or not isinstance(dialect, str):
        raise _malformed(what, "node and dialect must be text")
    if not isinstance(reliable, bool):
        raise _malformed(what, "reliable must be true or false")
    if credential is not None and not isinstance(credential, str):
        raise _malformed(what, "credential must be text or null")
    try:
        return MemberRecord(member_name, node, dialect, reliable, credential)
    except ValueError as error:
        raise _malformed(what, str(error)) from None


def decode_members(flat: Sequence[Any]) -> list[MemberRecord]:
    """The members in a members hash read back as a flat list (HGETALL), sorted by name."""
    return sorted((decode_member(name, value) for name, value in pairs(flat).items()), key=lambda m: m.name)


def member_entry(room: str, name: str) -> str:
    """
    A node's index entry for member C{name} of C{room}: the room's length in
    UTF-8 bytes, a colon, the room, then the name. The Lua scripts build and
    split the same form (string.len counts bytes).
    """
    return f"{len(room.encode('utf-8'))}:{room}{name}"


def split_member_entry(entry: str) -> tuple[str, str]:
    """The room and member an index entry names (the inverse of L{member_entry})."""
    length, colon, rest = entry.partition(":")
    if not colon or not length.isascii() or not length.isdigit():
        raise _malformed("node index entry", f"{entry!r} does not start with a byte length and a colon")
    raw = rest.encode("utf-8")
    room_bytes = int(length)
    if room_bytes > len(raw):
        raise _malformed("node index entry", f"{entry!r} is shorter than its room length")
    try:
        return raw[:room_bytes].decode("utf-8"), raw[room_bytes:].decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("node index entry", f"{entry!r} splits inside a character") from None


@dataclass(frozen=True, slots=True)
class ReapedMember:
    """A member removed because its node stopped beating and it did not resume elsewhere."""

    room: str
    epoch: str
    name: str
    node: str
    was_host: bool


@dataclass(frozen=True, slots=True)
class ReleasedRoom:
    """
    A room released because its host's node stopped beating: every member it
    still had (C{members}, with their nodes) must be told it closed.
    """

    name: str
    epoch: str
    host: str
    members: tuple[MemberRecord, ...]


@dataclass(frozen=True, slots=True)
class ReapReport:
    """
    What one reap removed, for the caller to tell the members' rooms. Each
    item is reported once cluster-wide, however many nodes reap at once:
    C{nodes} the dead nodes this reap finished and forgot, C{members} the
    members removed, C{rooms} the rooms released because their host was
    removed. A member of a released room that was on the dead node too is
    reported either among C{members} or among its room's members, not both
    (the order in which a node's members are reaped is Redis's SPOP's).
    """

    nodes: tuple[str, ...] = ()
    members: tuple[ReapedMember, ...] = ()
    rooms: tuple[ReleasedRoom, ...] = ()

    def __add__(self, other: ReapReport) -> ReapReport:
        nodes = self.nodes + tuple(node for node in other.nodes if node not in self.nodes)
        return ReapReport(nodes, self.members + other.members, self.rooms + other.rooms)


def _json_list(value: object, what: str) -> list[Any]:
    # cjson encodes an empty Lua table as {}: it is an empty list here.
    if value == {}:
        return []
    if not isinstance(value, list):
        raise _malformed("reap report", f"{what} is not a list")
    return value


def decode_reap_batch(text: object) -> tuple[ReapReport, bool]:
    """
    One reap script's answer (JSON built by the script): what it removed, and
    whether its node is finished (its index empty and the node forgotten).
    """
    try:
        answer = json.loads(_text(text, "reap report", "the answer"))
        node = answer["node"]
        finished = answer["finished"]
        members = [
            ReapedMember(item["room"], item["epoch"], item["name"], node, item["host"])
            for item in _json_list(answer["members"], "members")
        ]
        rooms = [
            ReleasedRoom(
                item["name"],
                item["epoch"],
                item["host"],
                tuple(decode_members(_json_list(item["members"], "a room's members"))),
            )
            for item in _json_list(answer["rooms"], "rooms")
        ]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise _malformed("reap report", "it is not the JSON the reap script writes") from None
    if not isinstance(node, str) or not isinstance(finished, bool):
        raise _malformed("reap report", "node or finished has the wrong type")
    return ReapReport((node,) if finished else (), tuple(members), tuple(rooms)), finished
