"""
A page's side of the gateway without a browser: an autobahn WebSocket client
on the test's reactor that sends the page's JSON messages and collects what
the gateway answers, with bounded waits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionResponse
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import CertificateOptions
from typing_extensions import override

from tests.waiting import bounded, until

Message = dict[str, Any]


class PageClient(WebSocketClientProtocol):
    """What one page hears, in order; its opening and closing as Deferreds."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[Message] = []
        self.opened: Deferred[bool] = Deferred()
        """True once the WebSocket opened; False when it closed without opening (refused)."""
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()
        self.refused_status: int | None = None
        """The HTTP status of a refused opening handshake (403, 429, 503)."""

    @override
    def onConnect(self, response: ConnectionResponse) -> None:
        pass

    @override
    def onOpen(self) -> None:
        self.opened.callback(True)

    @override
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.heard.append(json.loads(payload.decode("utf-8")))

    @override
    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.callback(False)
        if not self.closed.called:
            self.closed.callback((wasClean, code, reason))

    def send(self, message: Message) -> None:
        self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def of(self, kind: str) -> list[Message]:
        return [message for message in self.heard if message["type"] == kind]

    async def next(self, kind: str, where: Callable[[Message], bool] = lambda message: True) -> Message:
        """The first message of C{kind} heard (now or soon) that C{where} accepts, not returned before."""
        seen: list[int] = getattr(self, "_taken", [])
        self._taken = seen

        def find() -> Message | None:
            for index, message in enumerate(self.heard):
                if index not in seen and message["type"] == kind and where(message):
                    return message
            return None

        await until(lambda: find() is not None, f"a {kind!r} message; heard {self.heard}")
        found = find()
        assert found is not None
        seen.append(self.heard.index(found))
        return found

    async def enter(self, room: str, name: str, *, create: bool = False, **extra: Any) -> Message:
        self.send({"type": "enter", "action": "create" if create else "join", "room": room, "name": name, **extra})
        await until(lambda: bool(self.of("entered") or self.of("refused")), f"{name} entering {room}")
        return await self.next("entered") if self.of("entered") else await self.next("refused")

    async def say(self, message_id: int, text: str) -> Message:
        """Send; the answer to it (sent or refused)."""
        self.send({"type": "say", "id": message_id, "text": text})

        def answered() -> bool:
            return any(m.get("id") == message_id and m["type"] in ("sent", "refused") for m in self.heard)

        await until(answered, f"an answer to say {message_id}; heard {self.heard}")
        return next(m for m in self.heard if m.get("id") == message_id and m["type"] in ("sent", "refused"))


async def open_page(
    port: int, *, origin: str | None = "same", path: str = "/ws", host: str = "127.0.0.1", tls: bool = False
) -> PageClient:
    """A WebSocket to the gateway at C{port}, with the page's own Origin (or C{origin}, or none), opened."""
    client = await connect_page(port, origin=origin, path=path, host=host, tls=tls)
    if not await bounded(client.opened, "the WebSocket opening"):
        raise AssertionError(f"the WebSocket was refused: {client.closed.result}")
    return client


async def connect_page(
    port: int, *, origin: str | None = "same", path: str = "/ws", host: str = "127.0.0.1", tls: bool = False
) -> PageClient:
    """
    A WebSocket to the gateway, connected but maybe not (yet, or ever)
    opened; over TLS with C{tls} (any certificate: the tests' own, self-signed).
    """
    if origin == "same":
        origin = f"{'https' if tls else 'http'}://{host}:{port}"
    scheme = "wss" if tls else "ws"
    factory = WebSocketClientFactory(f"{scheme}://{host}:{port}{path}", origin=origin, reactor=_reactor)
    factory.protocol = PageClient
    endpoint: IStreamClientEndpoint = TCP4ClientEndpoint(_reactor, host, port)
    if tls:
        endpoint = wrapClientTLS(CertificateOptions(), endpoint)
    client = await bounded(endpoint.connect(factory), "the TCP connection to the web port")
    assert isinstance(client, PageClient)
    return client


async def close_page(client: PageClient) -> None:
    if not client.closed.called:
        client.sendClose(1000)
        try:
            await bounded(client.closed, "the WebSocket closing")
        except AssertionError:
            client.dropConnection(abort=True)
