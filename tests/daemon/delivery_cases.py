"""Shared fixture of the reliable delivery tests: a relay on a fake port, members with and without the feature."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from chatd.daemon.interfaces import IMemberConnection
from chatd.daemon.rooms import Member
from chatd.protocol.datagrams import FrameType
from chatd.protocol.payloads import DELIVERY, Dialect, Notice, RoomRequest
from chatd.protocol.seal import Channel, Direction, peek_header
from tests.helpers import make_server

ANN = ("127.0.0.1", 5000)
BOB = ("127.0.0.1", 5001)
CAT = ("127.0.0.1", 5002)
DAN = ("127.0.0.1", 5003)
ELSEWHERE = ("127.0.0.1", 6000)
TCP_PEER = ("127.0.0.1", 40000)
START = 1_700_000_000.25
"""The clock's time when a test starts: so that times in milliseconds are not 0."""
START_MS = 1_700_000_000_250


@implementer(IMemberConnection)
class FakeConnection:
    """A member's control connection that records the operation 8 frames it is given."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.notices: list[Notice] = []
        self.closed = False

    def send_notice(self, notice: Notice) -> None:
        self.notices.append(notice)

    def send_datagram(self, sealed: bytes) -> bool:
        if self.closed:
            return False
        self.datagrams.append(sealed)
        return True

    def close(self) -> None:
        self.closed = True


class DeliveryCase(SynchronousTestCase):
    """A server on a clock, with helpers to seal what members send and open what they get."""

    def setUp(self, **settings: Any) -> None:
        self.server, self.clock, self.udp = make_server(**settings)
        self.clock.advance(START)
        self.relay = self.server.relay
        self.store = self.server.store
        self.stats = self.relay.stats.delivery
        self.clients: dict[Member, Channel] = {}
        self.connections: dict[Member, FakeConnection] = {}

    def member(
        self,
        user: str,
        address: tuple[str, int] | None,
        dialect: Dialect = Dialect.NATIVE,
        *,
        delivery: bool = True,
        client_id: str | None = None,
        room: str = "hoge",
    ) -> Member:
        native = dialect is Dialect.NATIVE
        request = RoomRequest(
            user,
            version=1 if native else None,
            features=frozenset({DELIVERY}) if delivery and native else frozenset(),
            client_id=client_id,
        )
        if any(r.name == room for r in self.store.rooms()):
            member = self.successResultOf(self.store.join_room(room, request, dialect))
        else:
            member = self.successResultOf(self.store.create_room(room, request, dialect))
        if address is not None:
            self.store.bind_address(member, address)
        if member.delivery:
            member.connection = self.connections[member] = FakeConnection()
        self.udp.written.clear()
        return member

    def client(self, member: Member) -> Channel:
        """The member's own side of its key, as its client holds it."""
        if member not in self.clients:
            assert member.channel is not None
            self.clients[member] = Channel(member.channel.key, member.channel.key_id, Direction.TO_SERVER)
        return self.clients[member]

    def sealed(self, member: Member, frame_type: FrameType, body: bytes = b"") -> bytes:
        return self.client(member).seal(frame_type, body)

    def datagram(
        self, member: Member, frame_type: FrameType, body: bytes = b"", source: tuple[str, int] | None = None
    ) -> None:
        """C{member}'s client sends a frame by UDP (from its address unless told)."""
        source = source or member.address
        assert source is not None
        self.relay.datagramReceived(self.sealed(member, frame_type, body), source)

    def tunnel(self, member: Member, frame_type: FrameType, body: bytes = b"") -> None:
        """C{member}'s client sends a frame inside an operation 8 frame."""
        self.relay.tunnelled(member, self.sealed(member, frame_type, body), TCP_PEER)

    def udp_to(self, member: Member) -> list[tuple[int, bytes]]:
        """The frames sent by UDP to C{member}'s address, opened, in order (and forgotten)."""
        got = [data for data, address in self.udp.written if address == member.address]
        self.udp.written[:] = [(d, a) for d, a in self.udp.written if a != member.address]
        return [self.client(member).open(data, peek_header(data)) for data in got]

    def tcp_to(self, member: Member) -> list[tuple[int, bytes]]:
        """The frames sent to C{member} as operation 8 frames, opened, in order (and forgotten)."""
        connection = self.connections[member]
        got, connection.datagrams = connection.datagrams, []
        return [self.client(member).open(data, peek_header(data)) for data in got]
