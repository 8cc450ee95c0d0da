"""
The fixture shared by the tests of chatd.client.chat_client against the real daemon
(tests/client/test_client.py, tests/test_security.py): services started on loopback
ports the OS picks, ChatClients that leave at cleanup, and bounded waits for
them to enter a room or be refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from chatd.client.chat_client import ChatClient, RoomInfo
from chatd.client.tls import TrustPolicy
from chatd.daemon.service import ChatService, make_service
from chatd.daemon.settings import Settings
from chatd.protocol.seal import Channel
from tests.waiting import CLOCK, WAIT, Recorder, bounded, until

REACTOR: Any = _reactor
HOST = "127.0.0.1"
X = TypeVar("X", bound=BaseException)


@dataclass(frozen=True)
class Person:
    """A chatd.client.chat_client.ChatClient and what it heard."""

    client: ChatClient
    heard: Recorder

    @property
    def info(self) -> RoomInfo:
        assert self.client.info is not None
        return self.client.info

    @property
    def channel(self) -> Channel:
        """The client's current UDP key."""
        channel = self.client._channel
        assert channel is not None
        return channel

    def send_raw(self, datagram: bytes) -> None:
        """Send bytes from the client's own UDP socket, as if the client had."""
        transport = self.client._datagrams.transport
        assert transport is not None and self.client._server_udp is not None
        transport.write(datagram, self.client._server_udp)


class ClientCase(unittest.TestCase):
    """Starts services and clients, and stops them all at cleanup."""

    def serve(self, **overrides: Any) -> ChatService:
        """
        A started chatd on loopback (ports the OS picks unless given), stopped
        at cleanup. Its presence interval is short: most tests check what a
        client hears, not how the server paces it (tests that do say so).
        """
        options: dict[str, Any] = {
            "interface": HOST,
            "tcp_port": 0,
            "udp_port": 0,
            "password_cost": 2,
            "presence_interval": 0.05,
        }
        service = make_service(Settings(**{**options, **overrides}), REACTOR)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def person(self, service: ChatService, name: str, tls: TrustPolicy | None = None, **options: Any) -> Person:
        """A client of C{service} (its TLS port when C{tls} is given) not in a room yet; it leaves at cleanup."""
        heard = Recorder(name)
        options = {"request_timeout": WAIT, "first_retry_delay": 0.1, "max_retry_delay": 0.5, **options}
        port = service.tcp_port
        if tls is not None:
            assert service.tls_port is not None
            port = service.tls_port
        client = ChatClient(REACTOR, HOST, port, service.udp_port, heard, tls=tls, **options)
        self.addCleanup(client.leave)
        return Person(client, heard)

    async def enter(
        self,
        service: ChatService,
        name: str,
        room: str = "lobby",
        *,
        create: bool = False,
        password: str | None = None,
        invite: str | None = None,
        tls: TrustPolicy | None = None,
        within: float = WAIT,
        **options: Any,
    ) -> Person:
        """
        A person in C{room} whose keepalive the server has answered (so it
        knows the UDP address), all within C{within} seconds.
        """
        deadline = CLOCK.seconds() + within
        person = self.person(service, name, tls, **options)
        if create:
            entering = person.client.create(room, name, password)
        else:
            entering = person.client.join(room, name, password, invite)
        await bounded(entering, f"{name} enters {room}", within)
        await until(
            lambda: person.client.udp_confirmed,
            f"the server answers {name}'s keepalive",
            max(0.0, deadline - CLOCK.seconds()),
        )
        return person

    async def refused(self, attempt: Deferred[Any], kind: type[X]) -> X:
        """The error C{attempt} fails with, which must be a C{kind}."""
        try:
            result = await bounded(attempt, f"a {kind.__name__}")
        except kind as error:
            return error
        raise self.failureException(f"expected {kind.__name__}, got {result!r}")
