"""
What must hold of a RoomRegistry between operations, as assertions shared by
the example tests (tests/daemon/test_rooms.py) and the state machine
(tests/daemon/test_store_invariants.py).

They read the registry's private indexes on purpose: the point is that the
indexes agree with each other, which the public views alone cannot show.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from chatd.daemon.rooms import Member, Room, RoomRegistry
from chatd.daemon.settings import Settings
from chatd.protocol.payloads import Dialect


def snapshot(registry: RoomRegistry) -> dict[str, Any]:
    """Everything a failed request must leave as it found it (the counters of refusals aside)."""
    return {
        "rooms": {
            name: (id(room), tuple(room.members), dict(room.invitations)) for name, room in registry._rooms.items()
        },
        "hosts": {name: id(room.host) for name, room in registry._rooms.items()},
        "tokens": {token: id(member) for token, member in registry._by_token.items()},
        "token_bytes": {token: id(member) for token, member in registry._by_token_bytes.items()},
        "key_ids": {key_id: id(member) for key_id, member in registry._by_key_id.items()},
        "invitations": {invite: id(room) for invite, room in registry._invitations.items()},
        "creating": dict(registry._creating),
        "origins": dict(registry._rooms_by_origin),
        "hashing": registry.stats.hashing_in_flight,
        "recipients": {name: room.recipients for name, room in registry._rooms.items()},
        "windows": {name: (room.windows.live, room.windows.departed) for name, room in registry._rooms.items()},
    }


def live_members(registry: RoomRegistry) -> set[Member]:
    return set(registry._by_token.values())


def check_invariants(registry: RoomRegistry, settings: Settings, closed_rooms: list[Room] | None = None) -> None:
    """Assert every invariant of the registry's indexes; C{closed_rooms} are rooms known to be gone."""
    rooms = registry.rooms()
    open_members: set[Member] = set()
    for name, room in registry._rooms.items():
        assert room.name == name, (name, room.name)
        assert not room.closed, name
        host = room.host
        assert host is not None, f"room {name!r} has no host"
        assert room.members.get(host.name) is host, f"the host of {name!r} is not one of its members"
        for member_name, member in room.members.items():
            assert member.name == member_name
            assert member.room is room, f"{member_name!r} listed by {name!r} belongs to another room"
            open_members.add(member)
        expected_recipients = tuple(
            (member, member.address, member.channel is not None)
            for member in room.members.values()
            if member.address is not None and not member.delivery
        )
        assert room.recipients == expected_recipients, f"stale recipients in {name!r}"
        expected_delivery = tuple(member for member in room.members.values() if member.delivery)
        assert room.delivery_members == expected_delivery, f"stale delivery members in {name!r}"
        for member in expected_delivery:
            assert member.window is not None and room.windows.window(member.window_key) is member.window, name
        assert len(room.invitations) <= settings.max_invitations, (name, len(room.invitations))
        for invite in room.invitations:
            assert registry._invitations.get(invite) is room, f"invitation of {name!r} not indexed"
    live = live_members(registry)
    assert live == open_members, "members by token differ from the members of open rooms"
    for token, member in registry._by_token.items():
        assert member.token == token
        assert registry.member_for_token(token) is member
        assert registry.member_for_token_bytes(token.encode("utf-8")) is member
    assert len(registry._by_token_bytes) == len(registry._by_token), "a token's bytes outlive its member"
    assert registry.member_count() == len(live)
    for key_id, member in registry._by_key_id.items():
        assert member in live, f"key id {key_id} maps to a member who is gone"
        assert member.dialect is Dialect.NATIVE
        ids = {channel.key_id for channel in (member.channel, member.previous_channel) if channel is not None}
        assert key_id in ids, f"key id {key_id} is none of its member's keys"
    for member in live:
        if member.dialect is Dialect.NATIVE:
            assert member.channel is not None
            assert registry.member_for_key_id(member.channel.key_id) is member
        else:
            assert member.channel is None
    for invite, room in registry._invitations.items():
        assert registry._rooms.get(room.name) is room, f"invitation {invite!r} of a closed room"
        assert invite in room.invitations
    for room in closed_rooms or ():
        if registry._rooms.get(room.name) is not room:
            assert room.closed
            assert room.invitations == {}, f"closed room {room.name!r} keeps invitations"
            assert room.members == {}
    counted = Counter(room.origin for room in rooms) + Counter(registry._creating.values())
    assert registry._rooms_by_origin == counted, (dict(registry._rooms_by_origin), dict(counted))
    assert all(count > 0 for count in registry._rooms_by_origin.values()), "an origin kept at zero"
    for origin, count in registry._rooms_by_origin.items():
        assert registry.rooms_of_origin(origin) == count
        if registry._origin_is_limited(origin):
            assert count <= settings.max_rooms_per_host, (origin, count)
    assert not set(registry._creating) & set(registry._rooms), "a name both reserved and open"
    assert len(registry._rooms) + len(registry._creating) <= settings.max_rooms
    assert 0 <= registry.stats.hashing_in_flight <= settings.max_hashing
