"""Shared test fixtures: an in-memory server, fake connections, frame helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, FakeDatagramTransport, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from chatd.daemon.controller import ChatServer
from chatd.daemon.settings import Settings
from chatd.daemon.tcp import RoomProtocol
from chatd.protocol.wire import Frame, FrameDecoder, Operation, SizeEncoding, State, encode_frame

SEED_EXAMPLE = b"\x04\x01\x001" + 28 * b"\x00" + b"hogea"
"""The seed document's example request: create room 'hoge' with payload 'a'."""

FAST = Settings(password_cost=2)
"""Defaults, with scrypt made cheap: tests check logic, not hashing cost."""


def make_server(**overrides: Any) -> tuple[ChatServer, Clock, FakeDatagramTransport]:
    """A ChatServer on a Clock, its relay on a fake datagram transport."""
    clock = Clock()
    server = ChatServer(clock, replace(FAST, **overrides))
    transport = FakeDatagramTransport()
    server.relay.makeConnection(transport)
    return server, clock, transport


def connect(server: ChatServer, host: str = "127.0.0.1", port: int = 40000) -> tuple[RoomProtocol, StringTransport]:
    """A RoomProtocol from the server's factory on a StringTransport."""
    peer = IPv4Address("TCP", host, port)
    protocol = server.tcp_factory.buildProtocol(peer)
    assert isinstance(protocol, RoomProtocol)
    transport = StringTransport(peerAddress=peer)
    # As a TCP (or TLS) transport, it can abort: abortConnection sets disconnected.
    directlyProvides(transport, ITCPTransport)
    protocol.makeConnection(transport)
    return protocol, transport


def request(
    operation: Operation,
    room: str,
    payload: bytes | str | dict[str, Any] = b"",
    encoding: SizeEncoding = SizeEncoding.BINARY,
) -> bytes:
    """The bytes of a request frame; a dict payload is sent as JSON."""
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return encode_frame(Frame(operation, State.REQUEST, room, payload, encoding))


def frames(transport: StringTransport, clear: bool = True) -> list[Frame]:
    """Every whole frame written to C{transport} (and forget them)."""
    decoder = FrameDecoder(max_payload=1 << 20)
    decoder.feed(transport.value())
    if clear:
        transport.clear()
    out = []
    while (item := decoder.next()) is not None:
        assert isinstance(item, Frame)
        out.append(item)
    return out


def capture_events(test: SynchronousTestCase) -> EventLoggingObserver:
    """Every twisted.logger event emitted during C{test}, for asserting on fields."""
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return observer


class ManualRunner:
    """A password-work runner that holds each job until the test releases it."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        waiting: Deferred[Any] = Deferred()
        waiting.addCallback(lambda _: work())
        self.pending.append(waiting)
        return waiting

    def release(self) -> None:
        self.pending.pop(0).callback(None)
