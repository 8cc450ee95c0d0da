"""
Rooms, members, tokens and invitations, in memory: the default IRoomStore.

Plain logic: time comes only from the injected IReactorTime, password work
only through the injected runner (a thread pool in the daemon, inline in
tests), and every change of membership is reported to the observer, which
decides who is told what. Nothing here does I/O or logs.

Two rules keep the indexes (rooms by name, members by token and by key id,
invitations, rooms per origin) true to each other:

- A room or member appears whole or not at all. A create reserves its name
  and its origin's room for the whole request, builds the room and its host
  without touching the indexes, then commits them in one synchronous step;
  any exception on the way (a failed hash, a bug, a RecursionError) rolls
  everything back. A join likewise, and undoes itself when the observer fails.
- What should never happen is still cleaned up: L{RoomRegistry.expire}
  removes rooms without a live host and members without an open room, and
  counts each repair in C{stats.repaired}, so a bug costs a log line, not a room
  slot for ever.

The limits an attacker could otherwise turn into memory or CPU are here too:
live invitations per room, open rooms per origin address, password hashes in
flight; each refusal is counted in C{stats.refused}.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from chatd.daemon.history import DuplicateWindow, IHistory, RoomHistory, RoomWindows, Verdict
from chatd.daemon.interfaces import (
    IMemberConnection,
    IMessageStream,
    IRoomClaims,
    IRoomObserver,
    IRoomStore,
    Replica,
)
from chatd.daemon.passwords import PasswordHash, hash_password, verify_password
from chatd.daemon.ratelimit import MemberRateLimit, is_loopback
from chatd.daemon.settings import Settings
from chatd.daemon.stats import StoreStats
from chatd.protocol.errors import (
    HashingBusyError,
    InvalidInvitationError,
    InvalidPasswordError,
    NotPermittedError,
    RoomExistsError,
    RoomFullError,
    RoomNotFoundError,
    ServerFullError,
    TooManyInvitationsError,
    TooManyRoomsError,
    UsernameTakenError,
)
from chatd.protocol.payloads import DELIVERY, Dialect, RoomRequest, validate_name
from chatd.protocol.seal import Channel, Direction, new_key, new_key_id

Recipient = tuple["Member", tuple[str, int], bool]
"""A relay target: the member, its registered address, and whether its copies are sealed (native)."""
HashRunner = Callable[[Callable[[], Any]], "Deferred[Any]"]
"""Runs a password hash or check somewhere that does not stall the reactor."""
TOKEN_BYTES = 16
"""128 bits from the OS's CSPRNG: unguessable, and never seen twice in practice."""
CREDENTIAL_BYTES = 32
"""A resume credential's entropy, as the cluster directory's (chatd.daemon.cluster.records.CREDENTIAL_BYTES)."""


def run_inline(work: Callable[[], Any]) -> Deferred[Any]:
    """Run password work on the calling thread (tests; tools)."""
    return succeed(work())


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_credential() -> str:
    """A native member's resume credential: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(CREDENTIAL_BYTES)


def credential_hash(credential: str) -> str:
    """
    What the store keeps of a resume credential: the SHA-256 of its UTF-8
    bytes in hexadecimal, as the cluster directory keeps it in Redis
    (chatd.daemon.cluster.records.secret_hash), so that a member's record
    means the same on every node. A plain hash suffices: the credential is
    256 random bits, nothing a person chose.
    """
    return hashlib.sha256(credential.encode("utf-8")).hexdigest()


class LeaveReason(Enum):
    LEFT = "left"
    """Its connection went away (closed, lost, or the handshake ran out)."""
    EXITED = "exited"
    """It said so: the C{/exit} message. A host that does this closes the room on purpose."""
    TIMED_OUT = "timed_out"


class CloseReason(Enum):
    HOST_LEFT = "the host left"
    """The host's connection went away: it may not have meant to end the room."""
    HOST_CLOSED = "the host closed the room"
    """The host ended the room on purpose (C{/exit})."""
    HOST_TIMED_OUT = "the host timed out"
    SERVER_STOPPING = "the server is shutting down"
    BROKEN = "the room lost its host"
    """Closed by L{RoomRegistry.expire}'s repair: a bug left the room without a live host."""
    HOST_SERVER_STOPPED = "the host's server stopped"
    """The host's node (another node of the cluster) stopped: the room closed with it."""
    NO_LOCAL_MEMBERS = "no member is left on this node"
    """A replica (a room another node holds) dropped by this node: the room goes on elsewhere."""


_HOST_DEPARTURES = {
    LeaveReason.LEFT: CloseReason.HOST_LEFT,
    LeaveReason.EXITED: CloseReason.HOST_CLOSED,
    LeaveReason.TIMED_OUT: CloseReason.HOST_TIMED_OUT,
}
"""Why a room closes when its host leaves for each reason."""


@dataclass(eq=False)
class Member:
    name: str
    token: str
    room: Room
    dialect: Dialect
    last_active: float
    address: tuple[str, int] | None = None
    """Where this member's datagrams come from and go to, once registered."""
    connection: IMemberConnection | None = None
    """The open TCP connection, while the member holds one."""
    channel: Channel | None = None
    """A native member's UDP key: seals what the server sends it, opens what it sends."""
    previous_channel: Channel | None = None
    """The key before the last rekey, still opened until the member has used the new one."""
    rate_limit: MemberRateLimit | None = None
    """Messages and bytes per second this member may send (None: unlimited)."""
    delivery: bool = False
    """
    A native member that asked for the "delivery" feature and got it
    (docs/reliability.md): it is sent POSTED instead of RELAY, and may send
    SEND, REPAIR and PROBE.
    """
    window_key: Hashable | None = None
    """
    The key of its duplicate window in C{room.windows}: its user name and
    client id, or the member itself when its client gave none (a delivery
    member only).
    """
    window: DuplicateWindow | None = None
    """Its duplicate window, while it is registered (a delivery member only): the SEND path needs no look-up."""
    on_tcp: bool = False
    """
    Its path (a delivery member only): False for UDP, True when its last
    KEEPALIVE came inside an operation 8 frame. Every sealed frame for it
    then goes over its control connection.
    """
    stream: IMessageStream | None = None
    """
    Where a browser member (Dialect.WEB) is sent its room's messages: its
    WebSocket, set by the gateway once it has entered, None once it is gone.
    """
    credential_hash: str | None = None
    """
    The hash (L{credential_hash}) of its resume credential: a native
    member's, which a later join shows to take this membership over
    (L{RoomRegistry.resume_member}); None for a legacy member.
    """
    credential: str | None = None
    """
    The resume credential itself, until the create or join answer has
    carried it (the TCP side takes it with L{take_credential}); the store
    keeps only its hash after that.
    """
    name_bytes: bytes = field(init=False, repr=False)
    """The name as UTF-8, encoded once: every relayed copy and size check needs it."""
    prefix: bytes = field(init=False, repr=False)
    """What a legacy recipient sees before this member's messages: C{b"<name>: "}."""
    action_prefix: bytes = field(init=False, repr=False)
    """What a legacy recipient sees instead of C{/me } in this member's actions: C{b"* <name> "}."""

    def __post_init__(self) -> None:
        self.name_bytes = self.name.encode("utf-8")
        self.prefix = self.name_bytes + b": "
        self.action_prefix = b"* " + self.name_bytes + b" "

    @property
    def is_host(self) -> bool:
        return self.room.host is self

    def take_credential(self) -> str | None:
        """The resume credential to hand out, once: the member no longer holds it in clear after this."""
        credential, self.credential = self.credential, None
        return credential


@dataclass(eq=False)
class Room:
    name: str
    password_hash: PasswordHash | None
    host: Member | None = None
    members: dict[str, Member] = field(default_factory=dict)
    invitations: dict[str, float] = field(default_factory=dict)
    """Live invitation tokens and when each expires."""
    closed: bool = False
    native_only: bool = False
    """Only native members, whose datagrams are sealed, may join."""
    origin: str = ""
    """The creator's address, which the per-address room limit counts by ("" for tools and tests)."""
    name_bytes: bytes = field(init=False, repr=False)
    """The name as UTF-8: the legacy datagram path compares it with the bytes on the wire."""
    recipients: tuple[Recipient, ...] = ()
    """
    Members without the "delivery" feature that have a registered address,
    in join order, as (member, address, native): what a relay fans out to.
    Rebuilt by the registry when a member arrives, leaves or changes
    address, never per datagram.
    """
    delivery_members: tuple[Member, ...] = ()
    """
    Members with the "delivery" feature, in join order, with or without an
    address: one on the TCP path may never have sent a datagram. Rebuilt
    with L{recipients}.
    """
    streamed_members: tuple[Member, ...] = ()
    """
    Browser members (Dialect.WEB), in join order: reached over their own
    connection (L{Member.stream}), never by UDP. Rebuilt with L{recipients}.
    """
    history: IHistory = field(default_factory=RoomHistory)
    """The room's epoch, sequence numbers and recent messages (the store makes it with the settings' bounds)."""
    windows: RoomWindows = field(default_factory=RoomWindows, repr=False)
    """The duplicate windows of its delivery members, and of some that left."""
    replica: bool = False
    """
    A room another node of a cluster holds (its host is there): this node
    keeps it for its own members, and drops it when the last of them leaves.
    """
    remote_host: str | None = None
    """A replica's host, by name (L{host} is None: the host is not on this node)."""
    remote_members: dict[str, Member] = field(default_factory=dict, repr=False)
    """
    The members on other nodes, by name (a cluster's rooms only): stand-ins
    that hold no token, key or address, kept by chatd.daemon.cluster so that
    the member list is the whole room's and their comings and goings are
    told like local ones.
    """

    def __post_init__(self) -> None:
        self.name_bytes = self.name.encode("utf-8")

    def names(self) -> tuple[str, ...]:
        """
        Everyone in the room, as a create or join answer lists them: the host
        first, the member who entered last (always one of this node's) last.
        With members on other nodes (a cluster's): the host, those elsewhere,
        then those here.
        """
        if not self.remote_members:
            return tuple(self.members)
        host = self.host_name
        first = () if host is None else (host,)
        elsewhere = tuple(name for name in self.remote_members if name != host)
        here = tuple(name for name in self.members if name != host)
        return (*first, *elsewhere, *here)

    @property
    def host_name(self) -> str | None:
        """The host's name, wherever it is."""
        return self.host.name if self.host is not None else self.remote_host

    def remote_joined(self, name: str) -> Member | None:
        """
        C{name} entered the room on another node: its stand-in, now listed
        (no token, key or address); None when it is known already.
        """
        if name in self.members or name in self.remote_members:
            return None
        member = self.remote_members[name] = Member(name, "", self, Dialect.NATIVE, 0.0)
        return member

    def remote_left(self, name: str) -> Member | None:
        """C{name}, on another node, left: its stand-in, no longer listed; None when it was not listed."""
        return self.remote_members.pop(name, None)


@implementer(IRoomStore)
class RoomRegistry:
    def __init__(
        self,
        clock: IReactorTime,
        settings: Settings | None = None,
        run_hash: HashRunner = run_inline,
        observer: IRoomObserver | None = None,
        claims: IRoomClaims | None = None,
    ) -> None:
        self._clock = clock
        self.claims = claims
        """The cluster consulted where it must agree (chatd.daemon.cluster); None for a single node."""
        self._settings = settings or Settings()
        self._run_hash = run_hash
        self.observer = observer
        self._rooms: dict[str, Room] = {}
        self._creating: dict[str, str] = {}
        """Names reserved by creates in progress, and the origin each was asked from."""
        self._rooms_by_origin: Counter[str] = Counter()
        """Open and being-created rooms per origin address; an origin at zero has no entry."""
        self._by_token: dict[str, Member] = {}
        self._by_token_bytes: dict[bytes, Member] = {}
        """The same members keyed by the token's UTF-8 bytes, as legacy datagrams carry it."""
        self.member_for_token_bytes: Callable[[bytes], Member | None] = self._by_token_bytes.get
        """The datagram path's look-up: a bare dict.get, so no Python frame per datagram."""
        self._by_key_id: dict[int, Member] = {}
        self._invitations: dict[str, Room] = {}
        self.stats = StoreStats()
        """What this store counts; the sweep's repair report, the stats log line and the metrics read it."""

    # -- control operations -------------------------------------------------

    def create_room(self, name: str, request: RoomRequest, dialect: Dialect, origin: str = "") -> Deferred[Member]:
        return Deferred.fromCoroutine(self._create_room(name, request, dialect, origin))

    async def _create_room(self, name: str, request: RoomRequest, dialect: Dialect, origin: str) -> Member:
        validate_name(name, self._settings.max_room_name, "room name")
        if request.native_only and dialect is not Dialect.NATIVE:
            raise NotPermittedError("only a native client can create a native-only room")
        if name in self._rooms or name in self._creating:
            raise RoomExistsError(f"room {name!r} exists")
        if len(self._rooms) + len(self._creating) >= self._settings.max_rooms:
            raise ServerFullError(f"the server holds its limit of {self._settings.max_rooms} rooms")
        self._check_origin_may_create(origin)
        # From here until the room is committed or rolled back, the name and
        # the origin's room are held, so that a second create of the same name
        # fails at once instead of racing this one, and an origin cannot get
        # past its limit with creates in parallel.
        self._creating[name] = origin
        self._rooms_by_origin[origin] += 1
        room: Room | None = None
        claimed = False
        try:
            password_hash = None
            if request.password:
                password = request.password
                cost = self._settings.password_cost
                password_hash = await self._hash(lambda: hash_password(password, cost))
                assert isinstance(password_hash, PasswordHash)
            claims = self.claims
            history = self._new_history() if claims is None else claims.new_history(name)
            room = Room(name, password_hash, native_only=request.native_only, origin=origin, history=history)
            host = self._new_member(room, request, dialect)
            room.host = host
            room.members[host.name] = host
            if claims is not None:
                # The name must be this node's cluster-wide before it is anyone's here.
                await claims.claim(room, host)
                claimed = True
            self._register_member(host)
            self._rooms[name] = room
            if claims is not None:
                claims.entered(host)
            return host
        except BaseException:
            # Whatever failed, nothing of this create may stay behind: a room
            # without a host would hold its slot (and its origin's) for ever.
            if claimed and room is not None and room.host is not None:
                assert self.claims is not None
                self.claims.abandoned(room, room.host.name)
            if room is not None:
                for member in list(room.members.values()):
                    self._unregister_member(member)
                room.members.clear()
                room.closed = True
                if self._rooms.get(name) is room:
                    del self._rooms[name]
            self._release_origin(origin)
            raise
        finally:
            del self._creating[name]

    def _check_origin_may_create(self, origin: str) -> None:
        limit = self._settings.max_rooms_per_host
        if not self._origin_is_limited(origin) or self._rooms_by_origin[origin] < limit:
            return
        self.stats.refused["rooms_per_host"] += 1
        raise TooManyRoomsError(f"{origin} holds its limit of {limit} open rooms; close one to create another")

    def _origin_is_limited(self, origin: str) -> bool:
        # An empty origin is a tool or a test, not a peer; loopback is the
        # operator's own machine, as for the other per-address limits.
        if not origin:
            return False
        return self._settings.limit_loopback or not is_loopback(origin)

    def _release_origin(self, origin: str) -> None:
        # Entries at zero are deleted, so addresses that come and go cost nothing.
        remaining = self._rooms_by_origin[origin] - 1
        if remaining > 0:
            self._rooms_by_origin[origin] = remaining
        else:
            del self._rooms_by_origin[origin]

    def rooms_of_origin(self, origin: str) -> int:
        """Open and being-created rooms asked from C{origin}."""
        return self._rooms_by_origin.get(origin, 0)

    def join_room(self, name: str, request: RoomRequest, dialect: Dialect) -> Deferred[Member]:
        return Deferred.fromCoroutine(self._join_room(name, request, dialect))

    async def _join_room(self, name: str, request: RoomRequest, dialect: Dialect) -> Member:
        claims = self.claims
        room = self._rooms.get(name)
        if room is None and claims is not None:
            # Held by another node, perhaps: a replica is made for the members here.
            found = await claims.find(name)
            room = None if found is None else self._replica(found)
        if room is None:
            raise RoomNotFoundError(f"no room {name!r}")
        if room.native_only and dialect is not Dialect.NATIVE:
            raise NotPermittedError(f"room {name!r} admits native clients only")
        if request.resume is not None and dialect is Dialect.NATIVE:
            # The credential stands for the password or the invitation, and
            # the member takes its own place: neither is checked, nor the size.
            return await self.resume_member(room, request, dialect)
        self._check_room_takes(room, request.username)
        spent_invitation: tuple[str, float] | None = None
        if request.invite is not None and claims is not None:
            # Single use cluster-wide: spent in the directory, wherever it was minted.
            await claims.spend_invitation(room, request.invite)
            self._forget_invitation(room, request.invite)
        elif request.invite is not None:
            spent_invitation = self._take_invitation(room, request.invite)
        elif room.password_hash is not None:
            if not request.password:
                # No hashing for a request that cannot succeed.
                raise InvalidPasswordError(f"room {name!r} needs a password")
            stored = room.password_hash
            password = request.password
            verified = await self._hash(lambda: verify_password(password, stored))
            self.stats.password_checks["accepted" if verified else "refused"] += 1
            if not verified:
                raise InvalidPasswordError(f"wrong password for room {name!r}")
            # The world may have moved while the password was checked.
            if room.closed:
                raise RoomNotFoundError(f"room {name!r} was closed")
            self._check_room_takes(room, request.username)
        # A native member's resume credential exists before the cluster
        # hears of the member: its hash goes into the member's record, so
        # that it can resume on any node.
        credential = new_credential() if dialect is Dialect.NATIVE else None
        if claims is not None:
            room = await self._admit(claims, room, request, dialect, credential)
        member: Member | None = None
        try:
            member = self._new_member(room, request, dialect, credential)
            room.members[member.name] = member
            self._register_member(member)
            if member.delivery or member.dialect is Dialect.WEB:
                # Without an address, but reachable over TCP (or its WebSocket) all the same.
                self._refresh_recipients(room)
            # Otherwise no recipients to refresh: a new member has no address yet.
            if self.observer is not None:
                self.observer.member_joined(member)
            if claims is not None:
                claims.entered(member)
        except BaseException:
            # The join did not happen: the room is as it was, and the
            # invitation (single use, but not used) works again.
            if member is not None:
                self._unregister_member(member)
                if room.members.get(member.name) is member:
                    del room.members[member.name]
                self._refresh_recipients(room)
            if claims is not None:
                claims.abandoned(room, request.username)
                if room.replica and not room.members and not room.closed:
                    self._close(room, CloseReason.NO_LOCAL_MEMBERS)
            if spent_invitation is not None and not room.closed:
                invite, expires = spent_invitation
                room.invitations[invite] = expires
                self._invitations[invite] = room
            raise
        return member

    async def _admit(
        self, claims: IRoomClaims, room: Room, request: RoomRequest, dialect: Dialect, credential: str | None
    ) -> Room:
        """
        Add the member's name to the room cluster-wide, then the room this
        node serves it in: the room as it is here, a replica made by a join
        in parallel (same incarnation), or C{room}, a new replica, now added.
        """
        await claims.admit(room, request, dialect, None if credential is None else credential_hash(credential))
        return self._serve(claims, room, request.username)

    def _serve(self, claims: IRoomClaims, room: Room, name: str) -> Room:
        """
        The room this node serves member C{name} in, once the cluster took
        the member: the room as it is here, a replica made by a join in
        parallel (same incarnation), or C{room}, a new replica, now added.
        RoomNotFoundError (the member undone cluster-wide) when it closed.
        """
        current = self._rooms.get(room.name)
        if room.replica and current is not room:
            if current is not None and current.history.epoch == room.history.epoch and not current.closed:
                room = current
            elif current is None and not room.closed:
                self._rooms[room.name] = room
                self._rooms_by_origin[room.origin] += 1
            else:
                claims.abandoned(room, name)
                raise RoomNotFoundError(f"room {room.name!r} was closed")
        if room.closed:
            claims.abandoned(room, name)
            raise RoomNotFoundError(f"room {room.name!r} was closed")
        return room

    def _replica(self, found: Replica) -> Room:
        """A replica of a room another node holds; not in the indexes until a member enters it."""
        room = Room(
            found.name,
            found.password_hash,
            native_only=found.native_only,
            history=found.history,
            replica=True,
            remote_host=found.host,
        )
        for name in found.members:
            room.remote_joined(name)
        return room

    def _forget_invitation(self, room: Room, invite: str) -> None:
        """An invitation spent cluster-wide: if this node minted it, its own index forgets it too."""
        if self._invitations.get(invite) is room:
            del self._invitations[invite]
            room.invitations.pop(invite, None)

    # -- resuming ---------------------------------------------------------------

    def resume_member(self, room: Room, request: RoomRequest, dialect: Dialect) -> Deferred[Member]:
        """
        A native join with C{"resume"}: member C{request.username} of
        C{room} comes back under a new connection, proving itself with the
        resume credential of its last answer. The one place a resume goes
        through, for a store to override (the cluster store checks and
        replaces the credential in Redis, where the member may be on another
        node). Here: the credential is checked against the live member's,
        then L{take_over} commits; a wrong or used credential, or a name
        with no live member (it left, timed out, or never was), is refused
        with InvalidPasswordError, and nothing changes.

        With the cluster's claims, the cluster decides
        (L{IRoomClaims.take_over}, L{_resume_in_cluster}): the member may be
        on this node or on any other, alive or dead.
        """
        if self.claims is not None:
            return Deferred.fromCoroutine(self._resume_in_cluster(self.claims, room, request, dialect))
        previous = room.members.get(request.username)
        offered = credential_hash(request.resume or "")
        if (
            previous is None
            or not self._is_live(previous)
            or previous.credential_hash is None
            or not hmac.compare_digest(previous.credential_hash, offered)
        ):
            return fail(
                InvalidPasswordError(
                    f"cannot resume as {request.username!r} in room {room.name!r}: the resume credential is"
                    " not valid (already used, or that member is gone)"
                )
            )
        return succeed(self.take_over(previous, request, dialect))

    async def _resume_in_cluster(
        self, claims: IRoomClaims, room: Room, request: RoomRequest, dialect: Dialect
    ) -> Member:
        """
        A resume in a cluster: the credential is checked and replaced in the
        cluster (a credential serves once, wherever it is shown), then the
        membership is this node's. A member live here is taken over as on
        one node; one that was on another node (or on this node's previous
        life, before a restart) arrives: it replaces its stand-in, in a
        replica of the room made here if need be, with its host role. Its
        duplicate window learns what its client posted that the log holds.
        """
        name = request.username
        credential = new_credential()
        client = request.client_id if DELIVERY in request.features else None
        resumption = await claims.take_over(room, name, request.resume or "", credential, client)
        room = self._serve(claims, room, name)
        previous = room.members.get(name)
        if previous is not None and self._is_live(previous):
            member = self.take_over(previous, request, dialect, credential)
        else:
            try:
                member = self._arrive(room, request, dialect, credential)
            except BaseException:
                claims.abandoned(room, name)
                if room.replica and not room.members and not room.closed:
                    self._close(room, CloseReason.NO_LOCAL_MEMBERS)
                raise
        window = member.window
        if window is not None:
            for message_id, seq, time_ms in resumption.acknowledged:
                if window.check(message_id) is Verdict.NEW:
                    window.record(message_id, seq, time_ms)
        claims.resumed(member, resumption.previous_node)
        return member

    def _arrive(self, room: Room, request: RoomRequest, dialect: Dialect, credential: str) -> Member:
        """
        A member that the cluster moved to this node from another: in its
        stand-in's place (the same name, the host role if it held it), told
        to the observer as a resume (nobody came or went).
        """
        name = request.username
        elsewhere = dict(room.remote_members)
        stand_in = room.remote_members.pop(name, None) or Member(name, "", room, Dialect.NATIVE, 0.0)
        member = self._new_member(room, request, dialect, credential)
        room.members[name] = member
        was_host = room.remote_host == name
        if was_host:
            # The room is this node's now: its host's departure will close it cluster-wide.
            room.host = member
            room.remote_host = None
            room.replica = False
        self._register_member(member)

        def undo() -> None:
            self._unregister_member(member)
            del room.members[name]
            if was_host:
                room.host = None
                room.remote_host = name
                room.replica = True
            # Its place in the list too.
            room.remote_members.clear()
            room.remote_members.update(elsewhere)

        return self._resumed(member, stand_in, undo)

    def moved_away(self, room: Room, name: str) -> None:
        """
        Member C{name} resumed on another node of the cluster: its copy here
        is dropped quietly (its old connection closed without a notice, no
        leave told to anyone: it is still in the room, elsewhere), a stand-in
        takes its place in the list, and a host takes its role along, so
        this node's copy of the room becomes a replica. A replica with no
        member left here is dropped here.
        """
        member = room.members.get(name)
        if member is None or not self._is_live(member) or room.closed:
            return
        self._unregister_member(member)
        del room.members[name]
        stand_in = room.remote_joined(name)
        if room.host is member:
            room.host = None
            room.remote_host = name
            room.replica = True
        self._refresh_recipients(room)
        if self.observer is not None and stand_in is not None:
            self.observer.member_resumed(stand_in, member)
        if room.replica and not room.members:
            self._close(room, CloseReason.NO_LOCAL_MEMBERS)

    def take_over(
        self, previous: Member, request: RoomRequest, dialect: Dialect, credential: str | None = None
    ) -> Member:
        """
        Put a new member in C{previous}'s place, in one synchronous step: the
        same name, the same place in the member list, the host role if it
        held it, its rate limit's state, and (with the same client id) its
        duplicate window; a new token, UDP key and resume credential. The
        old token and key stop working at once. The observer is told with
        L{IRoomObserver.member_resumed}, not as a leave and a join: for the
        others nobody came or went.
        """
        room = previous.room
        member = self._new_member(room, request, dialect, credential)
        if previous.rate_limit is not None:
            # A resume is no way to a fresh allowance.
            member.rate_limit = previous.rate_limit
        # Plain dictionary stores, nothing that can fail half-way: the new
        # member registered first, so a window shared by client id never
        # counts as departed in between.
        self._register_member(member)
        self._unregister_member(previous)
        room.members[member.name] = member
        if room.host is previous:
            room.host = member

        def undo() -> None:
            self._register_member(previous)
            self._unregister_member(member)
            room.members[previous.name] = previous
            if room.host is member:
                room.host = previous

        return self._resumed(member, previous, undo)

    def _resumed(self, member: Member, replaced: Member, undo: Callable[[], None]) -> Member:
        """
        The last step of a resume (L{take_over}, L{_arrive}), C{member} now in
        C{replaced}'s place: the recipients follow, and the observer is told.
        If telling it raises, the resume undoes itself as a join does: C{undo}
        puts the old membership back (its credential still good), and the new
        one never was.
        """
        room = member.room
        self._refresh_recipients(room)
        try:
            if self.observer is not None:
                self.observer.member_resumed(member, replaced)
        except BaseException:
            undo()
            self._refresh_recipients(room)
            raise
        return member

    def _check_room_takes(self, room: Room, username: str) -> None:
        if username in room.members:
            raise UsernameTakenError(f"{username!r} is already in room {room.name!r}")
        if len(room.members) >= self._settings.max_members:
            raise RoomFullError(f"room {room.name!r} holds its limit of {self._settings.max_members} members")

    def _take_invitation(self, room: Room, invite: str) -> tuple[str, float]:
        """Spend C{invite} on C{room}: its token and expiry, to put back if the join fails."""
        # Another room's invitation is refused without being spent.
        if self._invitations.get(invite) is not room:
            raise InvalidInvitationError("the invitation is not valid for this room")
        del self._invitations[invite]
        expires = room.invitations.pop(invite)
        if expires < self._clock.seconds():
            raise InvalidInvitationError("the invitation has expired")
        return invite, expires

    def _hash(self, work: Callable[[], Any]) -> Deferred[Any]:
        """
        Hand password work to the runner, unless max_hashing are in flight.

        Each scrypt run holds 128 * r * N bytes (16 MiB at the default cost),
        so the count bounds the daemon's memory, not only its CPU.
        """
        stats = self.stats
        if stats.hashing_in_flight >= self._settings.max_hashing:
            stats.refused["hashing"] += 1
            raise HashingBusyError("the server is checking too many passwords; try again in a moment")
        stats.hashing_in_flight += 1
        try:
            running = self._run_hash(work)
        except BaseException:
            stats.hashing_in_flight -= 1
            raise

        def finished(result: object) -> object:
            stats.hashing_in_flight -= 1
            return result

        running.addBoth(finished)
        # The request waits on a Deferred of its own: cancelling it (the
        # peer went away) must not cancel the runner's, whose thread goes on
        # hashing and holding its memory until it is done, and stays counted.
        outcome: Deferred[Any] = Deferred()
        running.chainDeferred(outcome)
        return outcome

    def _fresh_token(self) -> str:
        token = new_token()
        while token in self._by_token or token in self._invitations:
            token = new_token()
        return token

    def _new_history(self) -> IHistory:
        """A new room's history: in memory, within the settings' bounds, under a new epoch."""
        return RoomHistory(self._settings.history_messages, self._settings.history_bytes)

    def _new_member(self, room: Room, request: RoomRequest, dialect: Dialect, credential: str | None = None) -> Member:
        """
        A member with its token (and key and resume C{credential}, made here
        unless given, if native), not yet in any index or room.
        """
        token = self._fresh_token()
        settings = self._settings
        limit = MemberRateLimit(
            settings.messages_per_s, settings.message_burst, settings.bytes_per_s, settings.byte_burst, self._clock
        )
        member = Member(request.username, token, room, dialect, self._clock.seconds(), rate_limit=limit)
        if dialect is Dialect.NATIVE:
            member.channel = Channel(new_key(), self._fresh_key_id(), Direction.TO_CLIENT)
            member.credential = credential if credential is not None else new_credential()
            member.credential_hash = credential_hash(member.credential)
            # Only a native request has features (a legacy one's are ignored by the parser).
            if DELIVERY in request.features:
                member.delivery = True
                # The client id with the user name: a client id travels in
                # clear over plain TCP, and whoever shared a window could push
                # its ids past another's, whose messages would then be dropped
                # as stale. A user name is one member's at a time in a room.
                member.window_key = (member.name, request.client_id) if request.client_id is not None else member
        return member

    def _register_member(self, member: Member) -> None:
        """Make a built member reachable: plain dictionary stores, nothing that can fail half-way."""
        self._by_token[member.token] = member
        self._by_token_bytes[member.token.encode("utf-8")] = member
        if member.channel is not None:
            self._by_key_id[member.channel.key_id] = member
        if member.window_key is not None and member.window is None:
            member.window = member.room.windows.enter(member.window_key)

    def _unregister_member(self, member: Member) -> None:
        """Undo L{_register_member}, for whatever part of it happened; a no-op for the rest."""
        if self._by_token.get(member.token) is member:
            del self._by_token[member.token]
        token_bytes = member.token.encode("utf-8")
        if self._by_token_bytes.get(token_bytes) is member:
            del self._by_token_bytes[token_bytes]
        for channel in (member.previous_channel, member.channel):
            if channel is not None and self._by_key_id.get(channel.key_id) is member:
                del self._by_key_id[channel.key_id]
        member.previous_channel = None
        if member.window is not None:
            # A client id may come back (a rejoin): its window is kept for it.
            # A membership's own key cannot, so its window is forgotten.
            member.window = None
            member.room.windows.leave(member.window_key, keep=member.window_key is not member)

    def _fresh_key_id(self) -> int:
        key_id = new_key_id()
        while key_id in self._by_key_id:
            key_id = new_key_id()
        return key_id

    def _give_key(self, member: Member) -> None:
        channel = Channel(new_key(), self._fresh_key_id(), Direction.TO_CLIENT)
        if member.channel is not None:
            # Datagrams sealed before the member heard of the new key are
            # still on their way (as WireGuard keeps its previous keypair).
            self.confirm_key(member)
            member.previous_channel = member.channel
        member.channel = channel
        self._by_key_id[channel.key_id] = member

    def confirm_key(self, member: Member) -> None:
        previous, member.previous_channel = member.previous_channel, None
        if previous is not None and self._by_key_id.get(previous.key_id) is member:
            del self._by_key_id[previous.key_id]

    def rekey(self, member: Member) -> Channel:
        if member.channel is None or not self._is_live(member):
            raise NotPermittedError("only a native member has a key to replace")
        self._give_key(member)
        assert member.channel is not None
        return member.channel

    def mint_invitation(self, member: Member) -> str:
        if not self._is_live(member):
            raise NotPermittedError("only a member of an open room can invite")
        if self.claims is not None:
            self.claims.check_available()
        room = member.room
        now = self._clock.seconds()
        # Spent-by-time invitations make room before the count, so the limit
        # is on live ones: a host who invites steadily never hits it.
        self._drop_stale_invitations(room, now)
        limit = self._settings.max_invitations
        if len(room.invitations) >= limit:
            self.stats.refused["invitations"] += 1
            raise TooManyInvitationsError(
                f"room {room.name!r} holds its limit of {limit} live invitations; wait for some to be used or expire"
            )
        token = self._fresh_token()
        room.invitations[token] = now + self._settings.invite_ttl
        self._invitations[token] = room
        if self.claims is not None:
            self.claims.invitation_minted(room, token, self._settings.invite_ttl)
        return token

    def _drop_stale_invitations(self, room: Room, now: float) -> None:
        stale = [invite for invite, expires in room.invitations.items() if expires < now]
        for invite in stale:
            del room.invitations[invite]
            self._invitations.pop(invite, None)

    def _is_live(self, member: Member) -> bool:
        return self._by_token.get(member.token) is member

    # -- the datagram path --------------------------------------------------

    def member_for_token(self, token: str) -> Member | None:
        return self._by_token.get(token)

    def member_for_key_id(self, key_id: int) -> Member | None:
        return self._by_key_id.get(key_id)

    def bind_address(self, member: Member, address: tuple[str, int]) -> None:
        if member.address == address:
            return
        member.address = address
        if self._is_live(member):
            self._refresh_recipients(member.room)

    def _refresh_recipients(self, room: Room) -> None:
        # The only writer of Room.recipients: every change of membership or
        # of a registered address passes through this registry.
        room.recipients = tuple(
            (member, member.address, member.channel is not None)
            for member in room.members.values()
            if member.address is not None and not member.delivery
        )
        room.delivery_members = tuple(member for member in room.members.values() if member.delivery)
        room.streamed_members = tuple(member for member in room.members.values() if member.dialect is Dialect.WEB)

    def touch(self, member: Member) -> None:
        member.last_active = self._clock.seconds()

    # -- departures ---------------------------------------------------------

    def leave(self, member: Member, reason: LeaveReason) -> None:
        if not self._is_live(member):
            return
        room = member.room
        if member.is_host:
            self.close_room(room, _HOST_DEPARTURES[reason])
            return
        self._unregister_member(member)
        if room.members.get(member.name) is member:
            del room.members[member.name]
        self._refresh_recipients(room)
        if self.observer is not None:
            self.observer.member_left(member, reason)
        if self.claims is not None:
            self.claims.member_left(member, reason)
            if room.replica and not room.members and not room.closed:
                # The room goes on elsewhere; this node has nobody left in it.
                self._close(room, CloseReason.NO_LOCAL_MEMBERS)

    def close_room(self, room: Room, reason: CloseReason) -> None:
        if room.closed:
            return
        self._close(room, reason)

    def _close(self, room: Room, reason: CloseReason) -> None:
        # Every index first, the observer last: if telling people fails, the
        # room is gone all the same.
        members = list(room.members.values())
        for member in members:
            self._unregister_member(member)
        room.members.clear()
        room.recipients = ()
        room.delivery_members = ()
        room.streamed_members = ()
        room.closed = True
        for invite in room.invitations:
            if self._invitations.get(invite) is room:
                del self._invitations[invite]
        room.invitations.clear()
        if self._rooms.get(room.name) is room:
            # The one place an open room stops counting against its origin.
            del self._rooms[room.name]
            self._release_origin(room.origin)
        try:
            if self.observer is not None:
                self.observer.room_closed(room, members, reason)
        finally:
            if self.claims is not None:
                self.claims.room_closed(room, members, reason)

    def expire(self) -> None:
        now = self._clock.seconds()
        deadline = now - self._settings.idle_timeout
        idle = [member for member in self._by_token.values() if member.last_active < deadline]
        for member in idle:
            self.leave(member, LeaveReason.TIMED_OUT)
        self._repair()
        for room in self._rooms.values():
            self._drop_stale_invitations(room, now)

    def _repair(self) -> None:
        """
        Remove what no correct sequence of operations leaves behind, and
        count it in C{stats.repaired}: a last resort against bugs (and exceptions
        from outside, such as a RecursionError) that would otherwise hold a
        room slot, a token or a key id for ever.
        """
        # Members their room lists but the token index does not: gone in
        # every sense but one. Dropping the host here closes the room below.
        for room in list(self._rooms.values()):
            for member in list(room.members.values()):
                if not self._is_live(member) or member.room is not room:
                    del room.members[member.name]
                    if member.room is room:
                        self._unregister_member(member)
                    self._refresh_recipients(room)
                    self.stats.repaired["members"] += 1
        for name, room in list(self._rooms.items()):
            host = room.host
            if room.replica:
                # Its host is on another node: broken only without members of its own here.
                broken = room.closed or room.name != name or not room.members
            else:
                broken = (
                    room.closed
                    or room.name != name
                    or host is None
                    or room.members.get(host.name) is not host
                    or not self._is_live(host)
                )
            if broken:
                self.stats.repaired["rooms"] += 1
                if room.name != name:
                    # Indexed under another name: _close would not find it.
                    del self._rooms[name]
                    self._release_origin(room.origin)
                self._close(room, CloseReason.BROKEN)
        # Live tokens whose member is not in an open room's member list.
        for member in list(self._by_token.values()):
            room = member.room
            if self._rooms.get(room.name) is not room or room.members.get(member.name) is not member:
                self._unregister_member(member)
                self.stats.repaired["members"] += 1
                if self.observer is not None:
                    self.observer.member_left(member, LeaveReason.LEFT)
        for token_bytes, member in list(self._by_token_bytes.items()):
            if not self._is_live(member):
                del self._by_token_bytes[token_bytes]
                self.stats.repaired["members"] += 1
        for key_id, member in list(self._by_key_id.items()):
            current = member.channel is not None and member.channel.key_id == key_id
            previous = member.previous_channel is not None and member.previous_channel.key_id == key_id
            if not self._is_live(member) or not (current or previous):
                del self._by_key_id[key_id]
                self.stats.repaired["key_ids"] += 1
        for invite, room in list(self._invitations.items()):
            if self._rooms.get(room.name) is not room or invite not in room.invitations:
                del self._invitations[invite]
                self.stats.repaired["invitations"] += 1
        expected = Counter(room.origin for room in self._rooms.values()) + Counter(self._creating.values())
        if expected != self._rooms_by_origin:
            self.stats.repaired["origins"] += 1
            self._rooms_by_origin = expected

    # -- views --------------------------------------------------------------

    def rooms(self) -> list[Room]:
        return list(self._rooms.values())

    def member_count(self) -> int:
        return len(self._by_token)
