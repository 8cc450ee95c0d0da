"""
Rooms, members, tokens and invitations, in memory: the default IRoomStore.

Plain logic: time comes only from the injected IReactorTime, password work
only through the injected runner (a thread pool in the daemon, inline in
tests), and every change of membership is reported to the observer, which
decides who is told what. Nothing here does I/O or logs.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from chatd.errors import (
    InvalidInvitationError,
    InvalidPasswordError,
    NotPermittedError,
    RoomExistsError,
    RoomFullError,
    RoomNotFoundError,
    ServerFullError,
    UsernameTakenError,
)
from chatd.interfaces import IMemberConnection, IRoomObserver, IRoomStore
from chatd.passwords import PasswordHash, hash_password, verify_password
from chatd.payloads import Dialect, RoomRequest, validate_name
from chatd.ratelimit import MemberRateLimit
from chatd.seal import Channel, Direction, new_key, new_key_id
from chatd.settings import Settings

Recipient = tuple["Member", tuple[str, int], bool]
"""A relay target: the member, its registered address, and whether its copies are sealed (native)."""
HashRunner = Callable[[Callable[[], Any]], "Deferred[Any]"]
"""Runs a password hash or check somewhere that does not stall the reactor."""
TOKEN_BYTES = 16
"""128 bits from the OS's CSPRNG: unguessable, and never seen twice in practice."""


def run_inline(work: Callable[[], Any]) -> Deferred[Any]:
    """Run password work on the calling thread (tests; tools)."""
    return succeed(work())


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


class LeaveReason(Enum):
    LEFT = "left"
    TIMED_OUT = "timed_out"


class CloseReason(Enum):
    HOST_LEFT = "the host left"
    HOST_TIMED_OUT = "the host timed out"
    SERVER_STOPPING = "the server is shutting down"


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
    name_bytes: bytes = field(init=False, repr=False)
    """The name as UTF-8, encoded once: every relayed copy and size check needs it."""
    prefix: bytes = field(init=False, repr=False)
    """What a legacy recipient sees before this member's messages: C{b"<name>: "}."""

    def __post_init__(self) -> None:
        self.name_bytes = self.name.encode("utf-8")
        self.prefix = self.name_bytes + b": "

    @property
    def is_host(self) -> bool:
        return self.room.host is self


@dataclass(eq=False)
class Room:
    name: str
    password_hash: PasswordHash | None
    created_at: float
    host: Member | None = None
    members: dict[str, Member] = field(default_factory=dict)
    invitations: dict[str, float] = field(default_factory=dict)
    """Live invitation tokens and when each expires."""
    closed: bool = False
    native_only: bool = False
    """Only native members, whose datagrams are sealed, may join."""
    name_bytes: bytes = field(init=False, repr=False)
    """The name as UTF-8: the legacy datagram path compares it with the bytes on the wire."""
    recipients: tuple[Recipient, ...] = ()
    """
    Members with a registered address, in join order, as (member, address,
    native): what a relay fans out to. Rebuilt by the registry when a member
    arrives, leaves or changes address, never per datagram.
    """

    def __post_init__(self) -> None:
        self.name_bytes = self.name.encode("utf-8")

    def names(self) -> tuple[str, ...]:
        return tuple(self.members)


@implementer(IRoomStore)
class RoomRegistry:
    def __init__(
        self,
        clock: IReactorTime,
        settings: Settings | None = None,
        run_hash: HashRunner = run_inline,
        observer: IRoomObserver | None = None,
    ) -> None:
        self._clock = clock
        self._settings = settings or Settings()
        self._run_hash = run_hash
        self.observer = observer
        self._rooms: dict[str, Room] = {}
        self._creating: set[str] = set()
        self._by_token: dict[str, Member] = {}
        self._by_token_bytes: dict[bytes, Member] = {}
        """The same members keyed by the token's UTF-8 bytes, as legacy datagrams carry it."""
        self.member_for_token_bytes: Callable[[bytes], Member | None] = self._by_token_bytes.get
        """The datagram path's look-up: a bare dict.get, so no Python frame per datagram."""
        self._by_key_id: dict[int, Member] = {}
        self._invitations: dict[str, Room] = {}
        self.password_checks: Counter[str] = Counter()
        """Join passwords checked (each an scrypt run), by result: "accepted" or "refused"."""

    # -- control operations -------------------------------------------------

    def create_room(self, name: str, request: RoomRequest, dialect: Dialect, origin: str = "") -> Deferred[Member]:
        return Deferred.fromCoroutine(self._create_room(name, request, dialect))

    async def _create_room(self, name: str, request: RoomRequest, dialect: Dialect) -> Member:
        validate_name(name, self._settings.max_room_name, "room name")
        if request.native_only and dialect is not Dialect.NATIVE:
            raise NotPermittedError("only a native client can create a native-only room")
        if name in self._rooms or name in self._creating:
            raise RoomExistsError(f"room {name!r} exists")
        if len(self._rooms) + len(self._creating) >= self._settings.max_rooms:
            raise ServerFullError(f"the server holds its limit of {self._settings.max_rooms} rooms")
        password_hash = None
        if request.password:
            password = request.password
            cost = self._settings.password_cost
            # The name is reserved while the hash is made, so a second create
            # of the same name fails at once instead of racing this one.
            self._creating.add(name)
            try:
                password_hash = await self._run_hash(lambda: hash_password(password, cost))
            finally:
                self._creating.discard(name)
            assert isinstance(password_hash, PasswordHash)
        room = Room(name, password_hash, self._clock.seconds(), native_only=request.native_only)
        self._rooms[name] = room
        member = self._add_member(room, request.username, dialect)
        room.host = member
        return member

    def join_room(self, name: str, request: RoomRequest, dialect: Dialect) -> Deferred[Member]:
        return Deferred.fromCoroutine(self._join_room(name, request, dialect))

    async def _join_room(self, name: str, request: RoomRequest, dialect: Dialect) -> Member:
        room = self._rooms.get(name)
        if room is None:
            raise RoomNotFoundError(f"no room {name!r}")
        if room.native_only and dialect is not Dialect.NATIVE:
            raise NotPermittedError(f"room {name!r} admits native clients only")
        self._check_room_takes(room, request.username)
        if request.invite is not None:
            self._take_invitation(room, request.invite)
        elif room.password_hash is not None:
            if not request.password:
                # No hashing for a request that cannot succeed.
                raise InvalidPasswordError(f"room {name!r} needs a password")
            stored = room.password_hash
            password = request.password
            verified = await self._run_hash(lambda: verify_password(password, stored))
            self.password_checks["accepted" if verified else "refused"] += 1
            if not verified:
                raise InvalidPasswordError(f"wrong password for room {name!r}")
            # The world may have moved while the password was checked.
            if room.closed:
                raise RoomNotFoundError(f"room {name!r} was closed")
            self._check_room_takes(room, request.username)
        member = self._add_member(room, request.username, dialect)
        if self.observer is not None:
            self.observer.member_joined(member)
        return member

    def _check_room_takes(self, room: Room, username: str) -> None:
        if username in room.members:
            raise UsernameTakenError(f"{username!r} is already in room {room.name!r}")
        if len(room.members) >= self._settings.max_members:
            raise RoomFullError(f"room {room.name!r} holds its limit of {self._settings.max_members} members")

    def _take_invitation(self, room: Room, invite: str) -> None:
        # Another room's invitation is refused without being spent.
        if self._invitations.get(invite) is not room:
            raise InvalidInvitationError("the invitation is not valid for this room")
        del self._invitations[invite]
        if room.invitations.pop(invite) < self._clock.seconds():
            raise InvalidInvitationError("the invitation has expired")

    def _fresh_token(self) -> str:
        token = new_token()
        while token in self._by_token or token in self._invitations:
            token = new_token()
        return token

    def _add_member(self, room: Room, username: str, dialect: Dialect) -> Member:
        token = self._fresh_token()
        settings = self._settings
        limit = MemberRateLimit(
            settings.messages_per_s, settings.message_burst, settings.bytes_per_s, settings.byte_burst, self._clock
        )
        member = Member(username, token, room, dialect, self._clock.seconds(), rate_limit=limit)
        room.members[username] = member
        self._by_token[token] = member
        self._by_token_bytes[token.encode("utf-8")] = member
        if dialect is Dialect.NATIVE:
            self._give_key(member)
        return member

    def _give_key(self, member: Member) -> None:
        key_id = new_key_id()
        while key_id in self._by_key_id:
            key_id = new_key_id()
        if member.channel is not None:
            # Datagrams sealed before the member heard of the new key are
            # still on their way (as WireGuard keeps its previous keypair).
            self.confirm_key(member)
            member.previous_channel = member.channel
        member.channel = Channel(new_key(), key_id, Direction.TO_CLIENT)
        self._by_key_id[key_id] = member

    def confirm_key(self, member: Member) -> None:
        previous, member.previous_channel = member.previous_channel, None
        if previous is not None:
            self._by_key_id.pop(previous.key_id, None)

    def rekey(self, member: Member) -> Channel:
        if member.channel is None or self._by_token.get(member.token) is not member:
            raise NotPermittedError("only a native member has a key to replace")
        self._give_key(member)
        assert member.channel is not None
        return member.channel

    def mint_invitation(self, member: Member) -> str:
        room = member.room
        token = self._fresh_token()
        room.invitations[token] = self._clock.seconds() + self._settings.invite_ttl
        self._invitations[token] = room
        return token

    # -- the datagram path --------------------------------------------------

    def member_for_token(self, token: str) -> Member | None:
        return self._by_token.get(token)

    def member_for_key_id(self, key_id: int) -> Member | None:
        return self._by_key_id.get(key_id)

    def bind_address(self, member: Member, address: tuple[str, int]) -> None:
        if member.address == address:
            return
        member.address = address
        if self._by_token.get(member.token) is member:
            self._refresh_recipients(member.room)

    def _refresh_recipients(self, room: Room) -> None:
        # The only writer of Room.recipients: every change of membership or
        # of a registered address passes through this registry.
        room.recipients = tuple(
            (member, member.address, member.channel is not None)
            for member in room.members.values()
            if member.address is not None
        )

    def touch(self, member: Member) -> None:
        member.last_active = self._clock.seconds()

    # -- departures ---------------------------------------------------------

    def leave(self, member: Member, reason: LeaveReason) -> None:
        if self._by_token.get(member.token) is not member:
            return
        room = member.room
        if member.is_host:
            close = CloseReason.HOST_TIMED_OUT if reason is LeaveReason.TIMED_OUT else CloseReason.HOST_LEFT
            self.close_room(room, close)
            return
        self._forget_member(member)
        del room.members[member.name]
        self._refresh_recipients(room)
        if self.observer is not None:
            self.observer.member_left(member, reason)

    def close_room(self, room: Room, reason: CloseReason) -> None:
        if room.closed:
            return
        members = list(room.members.values())
        for member in members:
            self._forget_member(member)
        room.members.clear()
        room.recipients = ()
        self._forget(room)
        if self.observer is not None:
            self.observer.room_closed(room, members, reason)

    def _forget_member(self, member: Member) -> None:
        del self._by_token[member.token]
        del self._by_token_bytes[member.token.encode("utf-8")]
        self.confirm_key(member)
        if member.channel is not None:
            self._by_key_id.pop(member.channel.key_id, None)

    def _forget(self, room: Room) -> None:
        room.closed = True
        for invite in room.invitations:
            self._invitations.pop(invite, None)
        room.invitations.clear()
        self._rooms.pop(room.name, None)

    def expire(self) -> None:
        now = self._clock.seconds()
        deadline = now - self._settings.idle_timeout
        idle = [member for member in self._by_token.values() if member.last_active < deadline]
        for member in idle:
            self.leave(member, LeaveReason.TIMED_OUT)
        for room in self._rooms.values():
            stale = [invite for invite, expires in room.invitations.items() if expires < now]
            for invite in stale:
                del room.invitations[invite]
                self._invitations.pop(invite, None)

    # -- views --------------------------------------------------------------

    def rooms(self) -> list[Room]:
        return list(self._rooms.values())

    def member_count(self) -> int:
        return len(self._by_token)
