"""
A scripted chatd for unit tests of chatd.client.chat_client on a task.Clock: no
sockets, no real daemon, so a test can restart the "server", hold it down,
drop its UDP answers and move time by exactly as much as it wants.

It speaks just enough of the native protocol (docs/protocol.md: create,
join, member list, invite, keepalive answers) for the client's reconnect
and UDP-path logic; the real daemon is what tests/client/test_client.py runs.
TCP answers are written back at once; UDP answers come after L{LATENCY}
seconds of the clock, as they would over a network.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IReactorUDP, ITCPTransport
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides, implementer

import chatd.client.chat_client
from chatd.protocol.datagrams import FrameType
from chatd.protocol.errors import Status
from chatd.protocol.seal import Channel, Direction, peek_header
from chatd.protocol.wire import Frame, FrameDecoder, Operation, State, encode_frame

SERVER = "127.0.0.1"
TCP_PORT = 9001
UDP_PORT = 9002
LATENCY = 0.01
"""Seconds a datagram takes each way."""


@dataclass
class FakeMember:
    name: str
    connection: FakeConnection
    channel: Channel


@dataclass
class FakeRoom:
    name: str
    host: str
    password: str | None
    native_only: bool
    members: dict[str, FakeMember] = field(default_factory=dict)


class FakeConnection:
    """One client's TCP connection to the fake server: its transport, as the client sees it."""

    def __init__(self, server: FakeChatd, protocol: Protocol, number: int) -> None:
        self._server = server
        self.protocol = protocol
        self._number = number
        self._decoder = FrameDecoder(1 << 16)
        self.member: FakeMember | None = None
        self.room: FakeRoom | None = None
        self.open = True
        # A TCP connection, as the client checks before aborting (as tests/helpers.connect does).
        directlyProvides(self, ITCPTransport)

    # -- ITransport, as much as chatd.client.chat_client uses ------------------------------

    def getPeer(self) -> IPv4Address:  # noqa: N802 - Twisted's name
        return IPv4Address("TCP", SERVER, TCP_PORT)

    def getHost(self) -> IPv4Address:  # noqa: N802 - Twisted's name
        return IPv4Address("TCP", SERVER, 40000 + self._number)

    def write(self, data: bytes) -> None:
        if not self.open:
            return
        self._decoder.feed(data)
        while (item := self._decoder.next()) is not None:
            assert isinstance(item, Frame)
            self._server.request(self, item)

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.close(ConnectionDone())

    def abortConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.close(ConnectionLost())

    # -- the server's side ------------------------------------------------------

    def send(self, frame: Frame) -> None:
        if self.open:
            self.protocol.dataReceived(encode_frame(frame))

    def close(self, reason: Exception) -> None:
        if not self.open:
            return
        self.open = False
        self._server.left(self)
        self.protocol.connectionLost(Failure(reason))


class FakeUdpPort:
    """The client's UDP socket: what it writes goes to the fake server."""

    def __init__(self, server: FakeChatd, protocol: DatagramProtocol, number: int) -> None:
        self._server = server
        self.protocol = protocol
        self.address = (SERVER, 50000 + number)
        self.listening = True
        protocol.makeConnection(self)  # type: ignore[arg-type]

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        assert addr == (SERVER, UDP_PORT), addr
        self._server.datagram(self, data)

    def stopListening(self) -> None:  # noqa: N802 - Twisted's name
        self.listening = False
        self.protocol.doStop()


@implementer(IReactorUDP)
class FakeReactor(Clock):
    """A Clock that can also listen on (fake) UDP ports."""

    def __init__(self, server: FakeChatd) -> None:
        super().__init__()
        self._server = server

    def listenUDP(  # noqa: N802 - Twisted's name
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,  # noqa: N803 - Twisted's name
    ) -> Any:  # a FakeUdpPort: as much of IListeningPort as chatd.client.chat_client uses
        return self._server.udp_port(protocol)


class FakeChatd:
    """
    The server: L{up} says whether it accepts connections, L{crash} is a
    SIGKILL (every connection drops, every room is gone), L{udp_answers}
    whether keepalives are answered.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        self.reactor = FakeReactor(self)
        self.up = True
        self.udp_answers = True
        self.rooms: dict[str, FakeRoom] = {}
        self.connections: list[FakeConnection] = []
        self.udp_ports: list[FakeUdpPort] = []
        self.requests: list[tuple[Operation, str, dict[str, Any]]] = []
        """Every create and join: operation, room, payload."""
        self.keepalives = 0
        self._key_ids = 0
        test.patch(chatd.client.chat_client, "HostnameEndpoint", lambda reactor, host, port, timeout: (host, port))
        test.patch(chatd.client.chat_client, "connectProtocol", self.connect)

    # -- the network -------------------------------------------------------------

    def connect(self, endpoint: object, protocol: Protocol) -> Deferred[Protocol]:
        if not self.up:
            return fail(ConnectionRefusedError("nobody listens"))
        connection = FakeConnection(self, protocol, len(self.connections))
        self.connections.append(connection)
        protocol.makeConnection(connection)
        return succeed(protocol)

    def udp_port(self, protocol: DatagramProtocol) -> FakeUdpPort:
        port = FakeUdpPort(self, protocol, len(self.udp_ports))
        self.udp_ports.append(port)
        return port

    def crash(self) -> None:
        """The daemon dies: connections reset, rooms forgotten, nobody listening."""
        self.up = False
        self.rooms.clear()
        for connection in self.connections:
            connection.room = connection.member = None
            connection.close(ConnectionLost("Connection reset by peer"))

    def start(self) -> None:
        self.up = True

    # -- TCP requests ------------------------------------------------------------

    def request(self, connection: FakeConnection, frame: Frame) -> None:
        if frame.operation in (Operation.CREATE, Operation.JOIN):
            payload = json.loads(frame.payload)
            self.requests.append((frame.operation, frame.room, payload))
            if frame.operation is Operation.CREATE:
                self._create(connection, frame, payload)
            else:
                self._join(connection, frame, payload)
        elif frame.operation is Operation.MEMBERS:
            room = connection.room
            assert room is not None
            answer = {"chatd": 1, "members": list(room.members), "host": room.host}
            self._acknowledge(connection, frame, Status.SUCCESS)
            connection.send(Frame(Operation.MEMBERS, State.COMPLETE, room.name, json.dumps(answer).encode()))
        elif frame.operation is Operation.INVITE:
            room, member = connection.room, connection.member
            assert room is not None and member is not None
            if room.host != member.name:
                self._acknowledge(connection, frame, Status.NOT_PERMITTED, "only the host can invite")
                return
            self._acknowledge(connection, frame, Status.SUCCESS)
            invitation = json.dumps({"chatd": 1, "invite": "t0ken"}).encode()
            connection.send(Frame(Operation.INVITE, State.COMPLETE, room.name, invitation))
        else:
            raise AssertionError(f"the fake server does not do {frame.operation.name}")

    def _create(self, connection: FakeConnection, frame: Frame, payload: dict[str, Any]) -> None:
        if frame.room in self.rooms:
            self._acknowledge(connection, frame, Status.ROOM_EXISTS, f"room {frame.room!r} already exists")
            return
        room = FakeRoom(frame.room, payload["username"], payload.get("password"), bool(payload.get("native_only")))
        self.rooms[room.name] = room
        self._enter(connection, frame, room, payload["username"])

    def _join(self, connection: FakeConnection, frame: Frame, payload: dict[str, Any]) -> None:
        room = self.rooms.get(frame.room)
        if room is None:
            self._acknowledge(connection, frame, Status.ROOM_NOT_FOUND, f"no room {frame.room!r}")
        elif room.password is not None and payload.get("password") != room.password:
            self._acknowledge(connection, frame, Status.INVALID_PASSWORD, "invalid password")
        elif payload["username"] in room.members:
            self._acknowledge(connection, frame, Status.USERNAME_TAKEN, "user name taken")
        else:
            self._enter(connection, frame, room, payload["username"])

    def _enter(self, connection: FakeConnection, frame: Frame, room: FakeRoom, user: str) -> None:
        self._key_ids += 1
        key = bytes([self._key_ids]) * 32
        member = FakeMember(user, connection, Channel(key, self._key_ids, Direction.TO_CLIENT))
        room.members[user] = member
        connection.room, connection.member = room, member
        answer = {
            "chatd": 1,
            "token": f"token{self._key_ids}",
            "key": base64.b64encode(key).decode(),
            "key_id": self._key_ids,
            "room": room.name,
            "user": user,
            "host": room.host == user,
            "members": list(room.members),
            "idle_timeout": 300.0,
            "keepalive_interval": 30.0,
        }
        self._acknowledge(connection, frame, Status.SUCCESS)
        connection.send(Frame(frame.operation, State.COMPLETE, room.name, json.dumps(answer).encode()))

    def _acknowledge(self, connection: FakeConnection, frame: Frame, status: Status, message: str = "") -> None:
        payload = bytes([status])
        if status is not Status.SUCCESS:
            payload += json.dumps({"chatd": 1, "message": message}).encode()
        connection.send(Frame(frame.operation, State.ACKNOWLEDGE, frame.room, payload))

    def left(self, connection: FakeConnection) -> None:
        """A connection closed: its member leaves; the host's leaving closes the room."""
        room, member = connection.room, connection.member
        connection.room = connection.member = None
        if room is None or member is None:
            return
        del room.members[member.name]
        if room.host == member.name:
            del self.rooms[room.name]
            notice = {"event": "room_closed", "room": room.name, "reason": "the host left", "text": "* closed"}
            for other in list(room.members.values()):
                other.connection.send(Frame(Operation.NOTICE, State.COMPLETE, room.name, json.dumps(notice).encode()))
                other.connection.close(ConnectionDone())

    # -- UDP ---------------------------------------------------------------------

    def datagram(self, port: FakeUdpPort, data: bytes) -> None:
        key_id = peek_header(data).key_id
        member = next(
            (m for room in self.rooms.values() for m in room.members.values() if m.channel.key_id == key_id), None
        )
        if member is None:
            return
        frame_type, _ = member.channel.open(data)
        if frame_type != FrameType.KEEPALIVE:
            return
        self.keepalives += 1
        if self.udp_answers:
            answer = member.channel.seal(FrameType.KEEPALIVE_ACK, b"")
            self.reactor.callLater(LATENCY, self._deliver, port, answer)

    def _deliver(self, port: FakeUdpPort, data: bytes) -> None:
        if port.listening:
            port.protocol.datagramReceived(data, (SERVER, UDP_PORT))
