"""
The cluster's room directory in Redis: which node holds which room name, who
is a member where, single-use invitations, and which nodes are alive.

Each node keeps its own members in memory (chatd.daemon.rooms) for the
datagram path; this is the shared, authoritative part that decides what
must be decided once for the whole cluster: that a room name is taken, that
a user name is taken in a room, that an invitation is spent, that a member
moved to another node, that a dead node's members are gone.

Every operation is one Redis command or one Lua script (EVALSHA, falling back
to EVAL when Redis has forgotten the script, after a restart), so it is
atomic cluster-wide: no decision is ever read in Python and written back.
Times that matter across nodes (invitation expiry, heartbeats) come from
Redis's own clock (TIME, inside the scripts), so nodes whose clocks disagree
still agree on what has expired. Every command is bounded by C{timeout}: a
Redis that cannot be reached or does not answer makes the operation fail with
L{ClusterUnavailableError}, never wait.

Keys (P is the C{prefix}, "chatd" by default, so that deployments and tests
can share one Redis; C{{...}} is a Redis Cluster hash tag, so that a room's
keys live in one slot):

C{P:room:{ROOM}} (hash): the room (records.encode_room): name, epoch, host,
    host_node, password (modular scrypt, or empty), native_only (0/1),
    created_ms. Never expires: removed by release_room, or by reap when its
    host's node died and the host did not resume elsewhere.
C{P:room:{ROOM}:members} (hash): user name -> member JSON
    (records.encode_member): node, dialect, reliable, credential (SHA-256, or
    null for a member that cannot resume). Goes with the room.
C{P:room:{ROOM}:invites} (sorted set): the SHA-256 of each live invitation
    token, scored by its expiry (Redis ms). Expired ones are pruned on every
    add and never spent. Expires with its longest-lived invitation
    (PEXPIRE), or goes with the room.
C{P:node:{NODE}:members} (set): the node's index, one entry per member it
    holds (records.member_entry: room and name), so that reaping a node
    costs O(its members), not a scan of the keys. Never expires: kept true by
    claims, additions, removals, take-overs and releases, emptied by the reap.
C{P:node:{NODE}:alive} (string): the node's last heartbeat (Redis ms).
    Expires C{node_ttl} after it.
C{P:nodes} (sorted set): every registered node, scored by its last heartbeat
    (Redis ms): how any node finds the dead ones. Never expires: a node
    leaves it when it is reaped (or evicted).

Rooms do not expire by themselves: a room ends when its host leaves
(release_room, as the in-memory store's close_room) or when its host's node
has been silent for the grace period and the host did not resume elsewhere
(reap). Liveness is the heartbeat: L{RoomDirectory.start_heartbeat} writes
both the C{alive} key (with C{node_ttl}) and the node's score in
C{P:nodes} every third of C{node_ttl}; L{RoomDirectory.reap} takes the
nodes whose score is older than the grace period, pops their index entries
(SPOP, so two reapers never get the same entry: nothing is reported twice)
and removes each member still on that node. A node must beat before it adds
members (start_heartbeat beats at once), or nobody would ever reap them.

Resume credentials are compared by their SHA-256 inside the take-over
script and replaced in the same step by the new one the node hands out: a
credential serves one take-over, so of two nodes taking a member over at once
exactly one wins, and a credential that leaked is worth nothing once used.

Redis restarted without its data: the next heartbeat answers
L{Liveness.REGISTERED}, and each node writes back what it holds with
L{RoomDirectory.restore_room} (idempotent, from any node, never over a newer
room of the name). With Redis's append-only file (as the tests' servers and
docs/cluster.md use) nothing is lost and nothing needs restoring.

With Redis Cluster the room scripts stay in one slot; the node index and
P:nodes are other slots, so claim, add, take-over, removal and reap would
have to update the index in a second step (docs/cluster.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chatd.daemon.cluster.records import (
    MemberRecord,
    ReapReport,
    ReleasedRoom,
    RoomRecord,
    decode_member,
    decode_members,
    decode_reap_batch,
    decode_room,
    encode_member,
    encode_room,
    member_entry,
    pairs,
    secret_hash,
    split_member_entry,
)
from chatd.daemon.cluster.redis_url import RedisConnection
from chatd.protocol.errors import ClusterUnavailableError

DEFAULT_PREFIX = "chatd"
DEFAULT_NODE_TTL = 10.0
"""Seconds a heartbeat keeps a node alive; it is refreshed every third of it."""
DEFAULT_REAP_GRACE = 3 * DEFAULT_NODE_TTL
"""
Seconds a node may go without a heartbeat before its members are removed
(--node-grace): long enough for a node restarting under the same name, or
Redis failing over, not to cost every member its place; short enough that
a dead node's names and rooms come free within a minute.
"""
DEFAULT_TIMEOUT = 5.0
"""Seconds any one Redis command may take before the directory says Redis is unavailable."""
REAP_BATCH = 200
"""Index entries one reap script handles at most, so that no script blocks Redis for long."""


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis keys of the directory under one prefix (the table in the module docstring)."""

    prefix: str = DEFAULT_PREFIX

    def room(self, name: str) -> str:
        return f"{self.prefix}:room:{{{name}}}"

    def members(self, room: str) -> str:
        return f"{self.room(room)}:members"

    def invitations(self, room: str) -> str:
        return f"{self.room(room)}:invites"

    def node_members(self, node: str) -> str:
        return f"{self.prefix}:node:{{{node}}}:members"

    def node_alive(self, node: str) -> str:
        return f"{self.prefix}:node:{{{node}}}:alive"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"


# Lua shared by the scripts. Key names are built exactly as Keys builds them,
# and member_entry as records.member_entry (string.len counts bytes).
_LUA_HELPERS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function room_key(prefix, room) return prefix .. ':room:{' .. room .. '}' end
local function node_index(prefix, node) return prefix .. ':node:{' .. node .. '}:members' end
local function entry(room, name) return string.len(room) .. ':' .. room .. name end
local function epoch_matches(key, epoch) return redis.call('HGET', key, 'epoch') == epoch end
-- Deletes a room and all under it, drops its members from their nodes'
-- indexes, and returns its members as a flat list (name, json, ...).
local function release(prefix, room)
  local key = room_key(prefix, room)
  local members = redis.call('HGETALL', key .. ':members')
  for i = 1, #members, 2 do
    local member = cjson.decode(members[i + 1])
    redis.call('SREM', node_index(prefix, member.node), entry(room, members[i]))
  end
  redis.call('DEL', key, key .. ':members', key .. ':invites')
  return members
end
"""


class Script:
    """A Lua script run by its SHA-1 (EVALSHA), sent whole (EVAL) only when Redis does not know it yet."""

    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.source = _LUA_HELPERS + body
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()


# KEYS: room, members, host's node index. ARGV: host name, host member json, index entry, room fields...
_CLAIM = Script(
    "claim",
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
""",
)

# KEYS: room. ARGV: prefix, room, epoch. Answer: {host, released members (flat)}, or nil.
_RELEASE = Script(
    "release",
    """
if not epoch_matches(KEYS[1], ARGV[3]) then return false end
local host = redis.call('HGET', KEYS[1], 'host')
return {host, release(ARGV[1], ARGV[2])}
""",
)

# KEYS: room, members, node index. ARGV: epoch, name, member json, entry, max members (0: none).
_ADD_MEMBER = Script(
    "add_member",
    """
if not epoch_matches(KEYS[1], ARGV[1]) then return 'no_room' end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 'taken' end
local most = tonumber(ARGV[5])
if most > 0 and redis.call('HLEN', KEYS[2]) >= most then return 'full' end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return 'added'
""",
)

# KEYS: room, members. ARGV: prefix, room, epoch, name, presented hash, new node, new hash.
# Answer: {outcome, previous node, member json}.
_TAKE_OVER = Script(
    "take_over",
    """
if not epoch_matches(KEYS[1], ARGV[3]) then return {'no_room'} end
local raw = redis.call('HGET', KEYS[2], ARGV[4])
if not raw then return {'no_member'} end
local member = cjson.decode(raw)
if type(member.credential) ~= 'string' or member.credential ~= ARGV[5] then return {'refused'} end
local previous = member.node
member.node = ARGV[6]
member.credential = ARGV[7]
local encoded = cjson.encode(member)
redis.call('HSET', KEYS[2], ARGV[4], encoded)
local this = entry(ARGV[2], ARGV[4])
redis.call('SREM', node_index(ARGV[1], previous), this)
redis.call('SADD', node_index(ARGV[1], ARGV[6]), this)
if redis.call('HGET', KEYS[1], 'host') == ARGV[4] then
  redis.call('HSET', KEYS[1], 'host_node', ARGV[6])
end
return {'moved', previous, encoded}
""",
)

# KEYS: room, members, node index. ARGV: epoch, name, node, entry.
_REMOVE_MEMBER = Script(
    "remove_member",
    """
if not epoch_matches(KEYS[1], ARGV[1]) then return 'no_room' end
local raw = redis.call('HGET', KEYS[2], ARGV[2])
if not raw then return 'no_member' end
if cjson.decode(raw).node ~= ARGV[3] then return 'elsewhere' end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[4])
return 'removed'
""",
)

# KEYS: room, members. ARGV: prefix, room, epoch, field count, room fields..., name, json, name, json...
# Answer: {outcome, names taken by members on other nodes...}.
_RESTORE = Script(
    "restore",
    """
local prefix, room, epoch = ARGV[1], ARGV[2], ARGV[3]
local field_count = tonumber(ARGV[4])
local outcome = 'kept'
local current = redis.call('HGET', KEYS[1], 'epoch')
if current and current ~= epoch then return {'conflict'} end
if not current then
  redis.call('HSET', KEYS[1], unpack(ARGV, 5, 4 + field_count))
  outcome = 'recreated'
end
local answer = {outcome}
for i = 5 + field_count, #ARGV, 2 do
  local name, encoded = ARGV[i], ARGV[i + 1]
  local node = cjson.decode(encoded).node
  local raw = redis.call('HGET', KEYS[2], name)
  if raw and cjson.decode(raw).node ~= node then
    table.insert(answer, name)
  else
    redis.call('HSET', KEYS[2], name, encoded)
    redis.call('SADD', node_index(prefix, node), entry(room, name))
  end
end
return answer
""",
)

# KEYS: room, invites. ARGV: epoch, token hash, ttl ms, max live.
_ADD_INVITATION = Script(
    "add_invitation",
    """
if not epoch_matches(KEYS[1], ARGV[1]) then return 'no_room' end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 'full' end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 'added'
""",
)

# KEYS: room, invites. ARGV: epoch, token hash.
_SPEND_INVITATION = Script(
    "spend_invitation",
    """
if not epoch_matches(KEYS[1], ARGV[1]) then return 'no_room' end
local expires = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not expires then return 'invalid' end
redis.call('ZREM', KEYS[2], ARGV[2])
if tonumber(expires) <= now_ms() then return 'expired' end
return 'spent'
""",
)

# KEYS: alive key, nodes. ARGV: node, ttl ms. Answer: 1 when the node was not registered.
_HEARTBEAT = Script(
    "heartbeat",
    """
local now = now_ms()
redis.call('SET', KEYS[1], now, 'PX', ARGV[2])
return redis.call('ZADD', KEYS[2], now, ARGV[1])
""",
)

# KEYS: nodes. ARGV: prefix, grace ms, batch, node ('' for the oldest dead one).
# Answer: JSON (records.decode_reap_batch), or nil when no node is dead.
_REAP = Script(
    "reap",
    """
local prefix = ARGV[1]
local node = ARGV[4]
if node == '' then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms() - tonumber(ARGV[2]), 'LIMIT', 0, 1)
  if #dead == 0 then return false end
  node = dead[1]
end
local index = node_index(prefix, node)
local members, rooms = {}, {}
for _, popped in ipairs(redis.call('SPOP', index, tonumber(ARGV[3]))) do
  local length, rest = string.match(popped, '^(%d+):(.*)$')
  if length then
    local room = string.sub(rest, 1, tonumber(length))
    local name = string.sub(rest, tonumber(length) + 1)
    local key = room_key(prefix, room)
    local raw = redis.call('HGET', key .. ':members', name)
    if raw and cjson.decode(raw).node == node then
      redis.call('HDEL', key .. ':members', name)
      local room_fields = redis.call('HMGET', key, 'epoch', 'host')
      local epoch, host = room_fields[1], room_fields[2]
      if epoch then
        table.insert(members, {room = room, epoch = epoch, name = name, host = host == name})
        if host == name then
          table.insert(rooms, {name = room, epoch = epoch, host = host, members = release(prefix, room)})
        end
      end
    end
  end
end
local finished = redis.call('SCARD', index) == 0
if finished then redis.call('ZREM', KEYS[1], node) end
return cjson.encode({node = node, finished = finished, members = members, rooms = rooms})
""",
)


class MemberOutcome(Enum):
    """What L{RoomDirectory.add_member} did."""

    ADDED = "added"
    NAME_TAKEN = "taken"
    ROOM_FULL = "full"
    NO_ROOM = "no_room"
    """The room is gone, or its name now belongs to another incarnation (another epoch)."""


class Removal(Enum):
    """What L{RoomDirectory.remove_member} did."""

    REMOVED = "removed"
    ELSEWHERE = "elsewhere"
    """The member resumed on another node since: its old node's clean-up leaves it alone."""
    NO_MEMBER = "no_member"
    NO_ROOM = "no_room"


class TakeOverOutcome(Enum):
    """What L{RoomDirectory.take_over_member} did."""

    MOVED = "moved"
    REFUSED = "refused"
    """The credential is wrong, already used by another take-over, or the member has none (legacy)."""
    NO_MEMBER = "no_member"
    NO_ROOM = "no_room"


@dataclass(frozen=True, slots=True)
class TakeOver:
    """A take-over's outcome; when MOVED, the member as it now is and the node it left."""

    outcome: TakeOverOutcome
    member: MemberRecord | None = None
    previous_node: str | None = None


class InvitationOutcome(Enum):
    """What L{RoomDirectory.add_invitation} did."""

    ADDED = "added"
    TOO_MANY = "full"
    NO_ROOM = "no_room"


class Spending(Enum):
    """What L{RoomDirectory.spend_invitation} did."""

    SPENT = "spent"
    INVALID = "invalid"
    """Unknown in this room, or spent already (here or on another node)."""
    EXPIRED = "expired"
    """It existed but its time was up: removed, never spent."""
    NO_ROOM = "no_room"


class RestoreOutcome(Enum):
    """What L{RoomDirectory.restore_room} did with the room itself."""

    KEPT = "kept"
    """Redis still had the room (same epoch): only the members were written again."""
    RECREATED = "recreated"
    """Redis had lost the room: it was written again from the node's record."""
    CONFLICT = "conflict"
    """Another room of that name (another epoch) was claimed meanwhile: nothing was written."""


@dataclass(frozen=True, slots=True)
class Restoration:
    """A restore's outcome, and the members not restored because their names are now taken on other nodes."""

    outcome: RestoreOutcome
    taken: tuple[str, ...] = ()


class Liveness(Enum):
    """What a heartbeat found."""

    CONTINUED = "continued"
    REGISTERED = "registered"
    """The node was not registered: its first beat, or it was reaped as dead, or Redis lost its data."""


HeartbeatObserver = Callable[[Liveness | ClusterUnavailableError], None]
"""Told the result of every periodic heartbeat: the Liveness, or the error that kept it from Redis."""


class RoomDirectory:
    """
    The cluster-wide directory of rooms, members, invitations and nodes, as
    seen from one node (C{node}, this process's name in the cluster).

    C{redis} is a txredisapi connection (redis_url.connect); C{clock} drives
    the heartbeat and bounds every command to C{timeout} seconds. Every
    method fails with L{ClusterUnavailableError} when Redis cannot be
    reached, does not answer in time, or holds data it cannot read; the
    outcome of a refused operation is a value (an enum), never an exception.
    """

    log = Logger()

    def __init__(
        self,
        redis: RedisConnection,
        node: str,
        clock: IReactorTime,
        *,
        prefix: str = DEFAULT_PREFIX,
        node_ttl: float = DEFAULT_NODE_TTL,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not node:
            raise ValueError("a node needs a name")
        if node_ttl <= 0 or timeout <= 0:
            raise ValueError("node_ttl and timeout are seconds, more than zero")
        self.redis = redis
        self.node = node
        self.clock = clock
        self.keys = Keys(prefix)
        self.node_ttl = node_ttl
        self.timeout = timeout
        self._heartbeat: LoopingCall | None = None
        self._heartbeat_done: Deferred[LoopingCall] | None = None

    # Rooms

    async def claim_room(self, room: RoomRecord, host: MemberRecord) -> bool:
        """
        Take C{room.name} for the whole cluster, with C{host} as its first
        member, in one step: True, or False when the name is taken (by any
        node; of two claims at the same instant exactly one is True).
        """
        if host.name != room.host or host.node != room.host_node:
            raise ValueError("the host member must be the room's host, on the room's host node")
        keys = [
            self.keys.room(room.name),
            self.keys.members(room.name),
            self.keys.node_members(host.node),
            self.keys.invitations(room.name),
        ]
        arguments = [host.name, encode_member(host), member_entry(room.name, host.name), *encode_room(room)]
        return bool(await self._run(_CLAIM, keys, arguments))

    async def room(self, name: str) -> RoomRecord | None:
        """The room of that name, or None."""
        flat = await self._command("HGETALL", self.keys.room(name))
        return decode_room(pairs(flat)) if flat else None

    async def release_room(self, name: str, epoch: str) -> ReleasedRoom | None:
        """
        Delete the room, its members and invitations, only if its epoch is
        still C{epoch} (a newer room of the same name is left alone). The
        released room names the members it had, for the caller to tell them;
        None when there was nothing to release.
        """
        answer = await self._run(_RELEASE, [self.keys.room(name)], [self.keys.prefix, name, epoch])
        if answer is None:
            return None
        host, released = answer
        return ReleasedRoom(name, epoch, str(host), tuple(decode_members(released)))

    # Members

    async def add_member(self, room: str, epoch: str, member: MemberRecord, max_members: int = 0) -> MemberOutcome:
        """
        Add C{member} to the room if its name is free in the room cluster-wide
        (and the room has fewer than C{max_members}, when that is not 0), and
        the room is still the incarnation C{epoch}.
        """
        keys = [self.keys.room(room), self.keys.members(room), self.keys.node_members(member.node)]
        arguments: list[str | int] = [
            epoch,
            member.name,
            encode_member(member),
            member_entry(room, member.name),
            max_members,
        ]
        return MemberOutcome(await self._run(_ADD_MEMBER, keys, arguments))

    async def take_over_member(
        self, room: str, epoch: str, name: str, credential: str, new_node: str, new_credential: str
    ) -> TakeOver:
        """
        Move member C{name} to C{new_node}, proving it with its resume
        C{credential} (compared by SHA-256, in the script). The credential is
        replaced by C{new_credential} in the same step: a credential serves
        one take-over, so of two concurrent take-overs exactly one wins, and a
        credential seen once by someone else is worth nothing after the
        member resumed. When the member is the host, the room's host node
        moves too. The member's old node learns it from the caller (the bus):
        its C{remove_member} would now answer ELSEWHERE.
        """
        keys = [self.keys.room(room), self.keys.members(room)]
        arguments = [
            self.keys.prefix,
            room,
            epoch,
            name,
            secret_hash(credential),
            new_node,
            secret_hash(new_credential),
        ]
        answer = await self._run(_TAKE_OVER, keys, arguments)
        outcome = TakeOverOutcome(answer[0])
        if outcome is not TakeOverOutcome.MOVED:
            return TakeOver(outcome)
        return TakeOver(outcome, decode_member(name, answer[2]), str(answer[1]))

    async def remove_member(self, room: str, epoch: str, name: str, node: str) -> Removal:
        """Remove member C{name} only if it is still on C{node} (one that resumed elsewhere stays)."""
        keys = [self.keys.room(room), self.keys.members(room), self.keys.node_members(node)]
        return Removal(await self._run(_REMOVE_MEMBER, keys, [epoch, name, node, member_entry(room, name)]))

    async def members(self, room: str) -> list[MemberRecord]:
        """The room's members, cluster-wide, sorted by name (empty for a room that does not exist)."""
        return decode_members(await self._command("HGETALL", self.keys.members(room)))

    async def member(self, room: str, name: str) -> MemberRecord | None:
        """One member of the room, or None."""
        value = await self._command("HGET", self.keys.members(room), name)
        return None if value is None else decode_member(name, value)

    async def node_members(self, node: str) -> list[tuple[str, str]]:
        """The (room, member) pairs C{node}'s index holds, sorted: what a restarted node finds it had."""
        entries = await self._command("SMEMBERS", self.keys.node_members(node))
        return sorted(split_member_entry(str(entry)) for entry in entries)

    async def restore_room(self, room: RoomRecord, members: Sequence[MemberRecord]) -> Restoration:
        """
        Write a room and some of its members back, as this node knows them,
        after Redis lost them (restarted without its data; the heartbeat says
        so: L{Liveness.REGISTERED}). Idempotent and safe from every node at
        once: the room is written only if Redis has no room of that name (any
        node holding some of its members may bring it back first), and only
        under its own epoch; each member is written unless a member of that
        name is now on another node. Invitations are not restored: they were
        single-use secrets, and the host can mint new ones.
        """
        fields = encode_room(room)
        flat_members = [item for member in members for item in (member.name, encode_member(member))]
        keys = [self.keys.room(room.name), self.keys.members(room.name)]
        arguments = [self.keys.prefix, room.name, room.epoch, str(len(fields)), *fields, *flat_members]
        answer = await self._run(_RESTORE, keys, arguments)
        return Restoration(RestoreOutcome(answer[0]), tuple(str(name) for name in answer[1:]))

    # Invitations

    async def add_invitation(self, room: str, epoch: str, token: str, ttl: float, max_live: int) -> InvitationOutcome:
        """
        Record invitation C{token} (its SHA-256) for C{ttl} seconds by Redis's
        clock, unless the room already has C{max_live} live ones (expired ones
        are pruned first, so they never count).
        """
        if ttl <= 0 or max_live < 1:
            raise ValueError("an invitation needs a ttl of more than zero seconds and a max_live of at least 1")
        keys = [self.keys.room(room), self.keys.invitations(room)]
        arguments: list[str | int] = [epoch, secret_hash(token), max(1, round(ttl * 1000)), max_live]
        return InvitationOutcome(await self._run(_ADD_INVITATION, keys, arguments))

    async def spend_invitation(self, room: str, epoch: str, token: str) -> Spending:
        """
        Spend invitation C{token} of this room: SPENT exactly once
        cluster-wide; an expired one is removed and never spent; a token of
        another room is not touched (a mistyped room name burns nothing).
        """
        keys = [self.keys.room(room), self.keys.invitations(room)]
        return Spending(await self._run(_SPEND_INVITATION, keys, [epoch, secret_hash(token)]))

    # Nodes

    async def heartbeat(self) -> Liveness:
        """Tell the cluster this node is alive for C{node_ttl} more seconds."""
        keys = [self.keys.node_alive(self.node), self.keys.nodes]
        registered = await self._run(_HEARTBEAT, keys, [self.node, max(1, round(self.node_ttl * 1000))])
        return Liveness.REGISTERED if registered else Liveness.CONTINUED

    async def is_alive(self, node: str) -> bool:
        """Whether C{node} has beaten within its C{node_ttl}."""
        return bool(await self._command("EXISTS", self.keys.node_alive(node)))

    def start_heartbeat(self, observer: HeartbeatObserver | None = None) -> None:
        """
        Beat now and every third of C{node_ttl}, so that two beats can be
        lost before the node looks dead. A failed beat is logged and told to
        C{observer}, and the beating goes on: when Redis is back, the next
        beat registers the node again (L{Liveness.REGISTERED}).
        """
        if self._heartbeat is not None:
            return

        def beat() -> Deferred[None]:
            return ensureDeferred(self._beat(observer))

        self._heartbeat = LoopingCall(beat)
        self._heartbeat.clock = self.clock
        self._heartbeat_done = self._heartbeat.start(self.node_ttl / 3, now=True)

    def stop_heartbeat(self) -> Deferred[Any]:
        """Stop beating; the Deferred fires once a beat in flight has finished."""
        loop, done = self._heartbeat, self._heartbeat_done
        self._heartbeat = self._heartbeat_done = None
        if loop is None or done is None:
            return succeed(None)
        if loop.running:
            loop.stop()
        return done

    async def _beat(self, observer: HeartbeatObserver | None) -> None:
        result: Liveness | ClusterUnavailableError
        try:
            result = await self.heartbeat()
        except ClusterUnavailableError as error:
            self.log.warn(
                "node {node}: heartbeat failed: {reason}", node=self.node, reason=str(error), event="heartbeat_failed"
            )
            result = error
        except Exception:
            # A bug must not stop the beating (the node would look dead to the
            # whole cluster and be reaped): log it and beat again next time.
            self.log.failure("node {node}: heartbeat failed unexpectedly", node=self.node)
            result = ClusterUnavailableError("the heartbeat failed unexpectedly (see the log)")
        if observer is not None:
            observer(result)

    async def reap(self, grace: float, batch: int = REAP_BATCH) -> ReapReport:
        """
        Remove the members of every node that has not beaten for C{grace}
        seconds (at least C{node_ttl}) and that did not resume elsewhere;
        release the rooms whose host was among them; forget those nodes.
        Each member and room is reported once cluster-wide, however many
        nodes reap at the same time: each script pops its entries from the
        dead node's index. Any node may call it, e.g. every C{node_ttl}.
        """
        return await self._reap_batches(grace_ms=max(0, round(grace * 1000)), node="", batch=batch)

    async def evict_node(self, node: str, batch: int = REAP_BATCH) -> ReapReport:
        """
        Remove C{node}'s members now, alive or not, as reap does for a dead
        node: for a node that restarts under the same name and does not want
        its previous life's members, or that is shutting down cleanly.
        """
        return await self._reap_batches(grace_ms=0, node=node, batch=batch)

    async def _reap_batches(self, grace_ms: int, node: str, batch: int) -> ReapReport:
        report = ReapReport()
        while True:
            answer = await self._run(_REAP, [self.keys.nodes], [self.keys.prefix, grace_ms, batch, node])
            if answer is None:
                return report
            part, finished = decode_reap_batch(answer)
            report += part
            if node and finished:
                return report

    # Talking to Redis

    async def _run(self, script: Script, keys: Sequence[str], arguments: Sequence[str | int]) -> Any:
        """The script's answer: by EVALSHA, or by EVAL when Redis does not have it (first use, after a restart)."""
        try:
            return await self._command("EVALSHA", script.sha, len(keys), *keys, *arguments)
        except _ScriptMissingError:
            return await self._command("EVAL", script.source, len(keys), *keys, *arguments)

    async def _command(self, *arguments: str | int) -> Any:
        """One Redis command's reply within C{timeout}, or L{ClusterUnavailableError}."""
        # Imported here: importing txredisapi installs the global reactor.
        import txredisapi

        try:
            waiting: Deferred[Any] = self.redis.execute_command(*arguments)
            waiting.addTimeout(self.timeout, self.clock)
            return await waiting
        except DeferredTimeoutError:
            raise ClusterUnavailableError(f"Redis did not answer within {self.timeout:g} s") from None
        except txredisapi.ConnectionError as error:
            raise ClusterUnavailableError(f"the connection to Redis failed: {error}") from None
        except txredisapi.ResponseError as error:
            message = str(error)
            if message.startswith("NOSCRIPT"):
                raise _ScriptMissingError() from None
            raise ClusterUnavailableError(f"Redis refused {arguments[0]}: {message}") from None


class _ScriptMissingError(Exception):
    """Redis does not know the script's SHA-1 (NOSCRIPT): send it whole. Never leaves this module."""
