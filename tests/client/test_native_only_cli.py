"""
chatd-chat --native-only against the real daemon: the create of both faces
(line mode, and the terminal app's session) carries it and makes a
native-only room over TLS, and the library's create over plain TCP is
refused with the server's one sentence.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from chatd.client.chat_cli import client_for, make_client, parse_arguments
from chatd.client.chat_client import ChatClient, IChatListener
from chatd.client.line_mode import EXIT_OK
from chatd.daemon.service import ChatService
from chatd.protocol.errors import NotPermittedError, Status
from chatd.protocol.payloads import Dialect
from chatd.protocol.wire import Operation, State
from chatd.tui.screens import RoomChoice
from chatd.tui.session import ChatSession
from tests.client.test_line_mode import InProcessSession
from tests.client_cases import HOST, REACTOR
from tests.loopback_clients import NO_CAPTURE
from tests.loopback_clients import ChatClient as RawClient
from tests.test_security import _ServiceCase
from tests.waiting import Recorder, bounded, until


def noop(_: str) -> None:
    pass


def nothing() -> None:
    pass


class NativeOnlyCommandLineTests(_ServiceCase):
    def tls_arguments(self, service: ChatService, ca_file: str) -> list[str]:
        assert service.tls_port is not None
        return ["--udp-port", str(service.udp_port), "--tls-port", str(service.tls_port), "--tls-ca", ca_file]

    async def legacy_join_refused(self, service: ChatService, room: str) -> None:
        legacy = RawClient(Dialect.MODEL, "oldtimer", HOST, service.tcp_port, service.udp_port, NO_CAPTURE)
        self.addCleanup(lambda: Deferred.fromCoroutine(legacy.close()))
        await legacy.open()
        legacy.request(Operation.JOIN, room)
        refusal = await legacy.tcp.next_frame()
        self.assertEqual(
            (refusal.operation, refusal.state, refusal.payload),
            (Operation.JOIN, State.ACKNOWLEDGE, bytes((Status.NOT_PERMITTED,))),
        )

    async def test_line_mode_client_creates_a_native_only_room(self) -> None:
        cert = self.certificate()
        service = self.serve(cert)
        argv = ["--line", "--room", "secret", "--name", "alice", "--create", "--native-only"]
        arguments = parse_arguments([*argv, *self.tls_arguments(service, cert.cert)])
        # Line mode itself, in this process: its create carries --native-only.
        session = InProcessSession(REACTOR, arguments)
        await until(lambda: session.output() != "" or session.status.called, "alice entered")
        self.assertEqual([(room.name, room.native_only) for room in service.server.store.rooms()], [("secret", True)])
        await self.legacy_join_refused(service, "secret")
        session.end_input()
        self.assertEqual(await bounded(session.status, "line mode ends"), EXIT_OK)

    async def test_terminal_app_client_creates_a_native_only_room(self) -> None:
        cert = self.certificate()
        service = self.serve(cert)
        arguments = parse_arguments(["--create", "--native-only", *self.tls_arguments(service, cert.cert)])
        assert service.tls_port is not None

        # The terminal app's factory: host and ports from its room screen.
        def client_factory(host: str, tcp_port: int, udp_port: int, listener: IChatListener) -> ChatClient:
            return client_for(REACTOR, arguments, host, tcp_port, udp_port, listener)

        # The room screen's choice, with the command line's native-only as the controller passes it on.
        choice = RoomChoice(True, "quiet", None, None, HOST, service.tls_port, service.udp_port, arguments.native_only)
        session = ChatSession("ann", choice, client_factory, REACTOR, on_leave=noop, on_quit=nothing, changed=nothing)
        self.addCleanup(session.leave)
        await bounded(session.enter(), "ann creates quiet")
        self.assertEqual([(room.name, room.native_only) for room in service.server.store.rooms()], [("quiet", True)])

    async def test_without_the_flag_the_room_is_open_to_legacy_clients(self) -> None:
        cert = self.certificate()
        service = self.serve(cert)
        arguments = parse_arguments(["--create", *self.tls_arguments(service, cert.cert)])
        client = make_client(REACTOR, arguments, Recorder("ann"))
        self.addCleanup(client.leave)
        await bounded(client.create("open", "ann"), "ann creates open")
        self.assertEqual([(room.name, room.native_only) for room in service.server.store.rooms()], [("open", False)])

    async def test_over_plain_tcp_the_server_refuses_in_one_sentence(self) -> None:
        service = self.serve()
        person = self.person(service, "alice")
        error = await self.refused(person.client.create("secret", "alice", native_only=True), NotPermittedError)
        self.assertEqual(str(error), "a native-only room can only be created over TLS")
        self.assertEqual(service.server.store.rooms(), [])
