"""
The terminal app's controller end to end: keys into TerminalApp.widget, the
real ChatClient, the real service on 127.0.0.1, rendered text checked.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.protocol import Factory
from twisted.trial import unittest
from zope.interface import implementer

from chatd.client.chat_cli import ChatArguments
from chatd.client.chat_client import ChatClient, IChatListener
from chatd.client.events import ChatEvent, MessageReceived, RoomClosed
from chatd.daemon.service import ChatService, make_service
from chatd.daemon.settings import Settings
from chatd.tui.controller import TerminalApp
from chatd.tui.session import ChatClientLike
from tests.tui_helpers import CLOCK, REACTOR, press, screen_text, shows, status_line, type_line, type_text, until


@implementer(IChatListener)
class _Recorder:
    """A listener for the plain ChatClients that play the other people."""

    def __init__(self) -> None:
        self.events: list[ChatEvent] = []

    def chat_event(self, event: ChatEvent) -> None:
        self.events.append(event)


class TerminalAppTests(unittest.TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.service = self.start_service(0, 0)
        self.tcp_port = self.service.tcp_port
        self.udp_port = self.service.udp_port

    def start_service(self, tcp_port: int, udp_port: int) -> ChatService:
        settings = Settings(tcp_port=tcp_port, udp_port=udp_port, password_cost=2, shutdown_grace=0.2)
        service = make_service(settings, REACTOR)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def client_factory(self, host: str, tcp_port: int, udp_port: int, listener: IChatListener) -> ChatClientLike:
        # Quick retries: a reconnect test should not wait out the real back-off.
        return ChatClient(REACTOR, host, tcp_port, udp_port, listener, first_retry_delay=0.05, max_retry_delay=0.2)

    def app(self, **arguments: Any) -> TerminalApp:
        settings = ChatArguments(host="127.0.0.1", tcp_port=self.tcp_port, udp_port=self.udp_port, **arguments)
        app = TerminalApp(settings, self.client_factory, CLOCK)
        self.addCleanup(app.close)
        app.start()
        return app

    async def person(
        self, name: str, room: str, create: bool = False, password: str | None = None
    ) -> tuple[ChatClient, _Recorder]:
        """Someone else in the room, with a plain client."""
        recorder = _Recorder()
        client = ChatClient(REACTOR, "127.0.0.1", self.tcp_port, self.udp_port, recorder)
        self.addCleanup(client.leave)
        if create:
            await client.create(room, name, password)
        else:
            await client.join(room, name, password)
        return client, recorder

    async def shows(self, app: TerminalApp, text: str) -> None:
        await until(lambda: shows(app.widget, text), lambda: f"{text!r} on the screen:\n{screen_text(app.widget)}")

    async def connected(self, app: TerminalApp) -> None:
        await until(lambda: "│ connected │" in status_line(app.widget), "connected")

    # -- the screens before the chat ------------------------------------------------

    async def test_create_flow(self) -> None:
        app = self.app()
        self.assertIn("Your name", screen_text(app.widget))
        type_line(app.widget, "alice")
        self.assertIn("You are alice.", screen_text(app.widget))
        press(app.widget, "up", "right", " ", "down")
        type_line(app.widget, "hoge")
        self.assertIn("│ connecting │", status_line(app.widget))
        await self.connected(app)
        self.assertEqual(
            status_line(app.widget), f" hoge │ connected │ 1 member │ host │ alice @ 127.0.0.1:{self.tcp_port}"
        )
        self.assertIn("You created room hoge and host it.", screen_text(app.widget))

    async def test_wrong_password_then_the_right_one(self) -> None:
        await self.person("alice", "secret", create=True, password="right")
        app = self.app(name="bob")
        type_text(app.widget, "secret")
        press(app.widget, "tab")
        type_line(app.widget, "wrong")
        await self.shows(app, "Wrong password for room “secret”.")
        self.assertIn("Create or join a room", screen_text(app.widget))
        # The cursor is in the password field, ready for the correction.
        press(app.widget, *["backspace"] * 5)
        type_line(app.widget, "right")
        await self.connected(app)
        self.assertIn("2 members in room secret: alice (host), bob (you)", screen_text(app.widget))

    async def test_server_not_running(self) -> None:
        port = REACTOR.listenTCP(0, Factory(), 5, "127.0.0.1")
        closed_port = port.getHost().port
        await port.stopListening()
        self.tcp_port = closed_port
        app = self.app(name="alice", room="hoge")
        await self.shows(
            app, f"Cannot reach chatd at 127.0.0.1, TCP port {closed_port} (Connection refused): is the server running"
        )

    async def test_room_exists_and_room_not_found(self) -> None:
        await self.person("alice", "hoge", create=True)
        app = self.app(name="bob", room="hoge", create=True)
        await self.shows(app, "Room “hoge” already exists: choose “join a room”, or another room name.")
        press(app.widget, "up", " ", "down", "ctrl e", "ctrl u")
        type_line(app.widget, "nowhere")
        await self.shows(app, "There is no room “nowhere”: check its name, or choose “create a room”.")

    async def test_name_taken_goes_back_to_the_name(self) -> None:
        await self.person("alice", "hoge", create=True)
        app = self.app(name="alice", room="hoge")
        await self.shows(app, "Someone in room “hoge” is already called “alice”: pick another name.")
        press(app.widget, *["backspace"] * 5)
        type_line(app.widget, "alicia")
        self.assertIn("You are alicia.", screen_text(app.widget))
        press(app.widget, "enter")
        await self.connected(app)

    async def test_invitations(self) -> None:
        host = self.app(name="alice", room="club", password="pw", create=True)
        await self.connected(host)
        type_line(host.widget, "/invite")
        await self.shows(host, "They join with:")
        found = re.search(r"--invite (\S+)", screen_text(host.widget, (160, 30)))
        assert found is not None
        token = found.group(1)
        self.assertIn(f"--room club --name THEIR-NAME --invite {token}", screen_text(host.widget, (160, 30)))
        guest = self.app(name="bob", room="club", invite=token)
        await self.connected(guest)
        again = self.app(name="carol", room="club", invite=token)
        await self.shows(again, "That invitation does not open this room")

    # -- in the room ---------------------------------------------------------------

    async def test_a_join_and_messages_both_ways(self) -> None:
        app = self.app(name="alice", room="hoge", create=True)
        await self.connected(app)
        bob, heard = await self.person("bob", "hoge")
        await self.shows(app, "--> bob joined")
        self.assertIn("│ 2 members │", status_line(app.widget))
        bob.send("hello alice")
        await self.shows(app, "<bob> hello alice")
        type_line(app.widget, "hi bob")
        type_line(app.widget, "/me waves")
        self.assertIn("<alice> hi bob", screen_text(app.widget))
        self.assertIn("* alice waves", screen_text(app.widget))
        await until(lambda: len(heard.events) >= 2, "bob hears alice")
        received = [event for event in heard.events if isinstance(event, MessageReceived)]
        said = [(event.sender, event.text) for event in received]
        self.assertEqual(said, [("alice", "hi bob"), ("alice", "/me waves")])

    async def test_host_close_and_the_member_told(self) -> None:
        host = self.app(name="alice", room="hoge", create=True)
        await self.connected(host)
        member = self.app(name="bob", room="hoge")
        await self.connected(member)
        type_line(host.widget, "/close")
        await self.shows(host, "You closed room hoge: everyone in it was told and removed.")
        self.assertIn("│ closed │", status_line(host.widget))
        await self.shows(member, "Room hoge was closed: the host closed the room.")
        self.assertIn("│ closed │", status_line(member.widget))
        type_line(member.widget, "/leave")
        await self.shows(member, "Room hoge was closed: the host closed the room.")
        self.assertIn("Create or join a room", screen_text(member.widget))

    async def test_status_through_a_server_restart(self) -> None:
        app = self.app(name="alice", room="hoge", create=True)
        self.assertIn("│ connecting │", status_line(app.widget))
        await self.connected(app)
        await self.service.stopService()
        await until(lambda: "│ reconnecting (attempt" in status_line(app.widget), "reconnecting")
        self.assertIn("The server is shutting down; reconnecting when it is back.", screen_text(app.widget))
        self.start_service(self.tcp_port, self.udp_port)
        await self.connected(app)
        self.assertIn("Reconnected to room hoge.", screen_text(app.widget))
        self.assertIn("│ 1 member │ host │", status_line(app.widget))

    async def test_quit(self) -> None:
        app = self.app(name="alice", room="hoge", create=True)
        await self.connected(app)
        _, heard = await self.person("bob", "hoge")
        press(app.widget, "ctrl c")
        self.assertEqual(await app.finished, 0)
        await until(lambda: any(isinstance(event, RoomClosed) for event in heard.events), "bob told the room closed")
