"""
chatd.client.chat_client against the real daemon: make_service on ephemeral loopback
ports, real TCP and UDP sockets, every wait bounded.

Each test starts its own service, with the Settings it needs (small idle
timeouts, room and member limits), and says what each person hears through a
L{Recorder}, the listener every ChatClient here is given.
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IReactorFDSet

import chatd.client.requests
from chatd.client.chat_client import ConnectionState, RoomInfo
from chatd.client.core import KEEPALIVE
from chatd.client.events import (
    ConnectionLost,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Reconnected,
    Reconnecting,
    RemovedForInactivity,
    RoomClosed,
    ServerStopping,
    WaitingForHost,
)
from chatd.protocol.errors import (
    ClientError,
    ConnectionFailedError,
    InvalidInvitationError,
    InvalidNameError,
    InvalidPasswordError,
    MessageTooLongError,
    NotInRoomError,
    NotPermittedError,
    RoomExistsError,
    RoomFullError,
    RoomNotFoundError,
    ServerFullError,
    UnsupportedVersionError,
    UsernameTakenError,
)
from tests.client_cases import HOST, REACTOR, ClientCase, Person
from tests.waiting import bounded, sleep, until

MAX_DATAGRAM = 4096
"""docs/protocol.md section 7: no datagram, either way, is larger."""
NATIVE_MESSAGE_OVERHEAD = 15 + 1 + 16
"""A sealed MESSAGE frame: 15 clear header bytes, the frame type, the 16-byte tag (section 7)."""
RELAY_OVERHEAD = NATIVE_MESSAGE_OVERHEAD + 9
"""A relayed copy adds a sealed frame and the RELAY body's 9-byte prefix to name and message (section 7.2)."""
IDLE: dict[str, Any] = {"idle_timeout": 0.5, "sweep_interval": 0.1, "keepalive_interval": 0.1}
"""A server that removes a member after half a second of silence, and asks for a keepalive every 0.1 s."""


class ClientTests(ClientCase):
    timeout = 10

    # -- fixtures -----------------------------------------------------------

    async def keepalive_answered(self, person: Person) -> None:
        await until(lambda: person.client.udp_confirmed, f"the server answers {person.heard.name}'s keepalive")

    def open_sockets(self) -> set[object]:
        """Every socket the reactor watches (TCP and UDP ports and connections, not its wakers)."""
        fds = IReactorFDSet(REACTOR)
        return {fd for fd in [*fds.getReaders(), *fds.getWriters()] if hasattr(fd, "getHost")}

    async def stay_closed(self, person: Person) -> None:
        """The client ends up closed, with no socket, and does not try to come back."""
        await until(lambda: person.client.state is ConnectionState.CLOSED, f"{person.heard.name} is closed")
        await until(
            lambda: person.client._control is None and person.client._udp is None,
            f"{person.heard.name}'s sockets are closed",
        )
        await sleep(0.3)  # three times the first retry delay
        self.assertEqual(person.client.state, ConnectionState.CLOSED)
        self.assertEqual(person.heard.of(ConnectionLost) + person.heard.of(Reconnecting), [])

    # -- entering and events ------------------------------------------------

    async def test_create_and_join(self) -> None:
        """What each side is told on entering, and MemberJoined for the ones already there."""
        service = self.serve(keepalive_interval=7.0, idle_timeout=70.0)
        alice = await self.enter(service, "alice", create=True, password="sesame")
        self.assertEqual(alice.info, RoomInfo("lobby", "alice", True, ("alice",), 70.0, 7.0))
        self.assertEqual((alice.client.state, alice.client.members), (ConnectionState.IN_ROOM, ("alice",)))
        bob = await self.enter(service, "bob", password="sesame")
        self.assertEqual(bob.info, RoomInfo("lobby", "bob", False, ("alice", "bob"), 70.0, 7.0))
        self.assertEqual(bob.client.members, ("alice", "bob"))
        joined = await alice.heard.next(MemberJoined)
        self.assertEqual(joined, MemberJoined("bob", ("alice", "bob"), "* bob joined lobby"))
        self.assertEqual(alice.client.members, ("alice", "bob"))
        self.assertEqual(bob.heard.events, [])

    async def test_messages(self) -> None:
        """Text arrives whole (Japanese, emoji), with the server's time, and never back to its sender."""
        service = self.serve()
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "ボブ")
        text = "こんにちは、世界 🍣🎌 ok"
        sent_at = time.time()
        alice.client.send(text)
        message = await bob.heard.next(MessageReceived)
        self.assertEqual((message.sender, message.text, message.is_action), ("alice", text, False))
        self.assertLess(abs(message.time - sent_at), 1.0)
        bob.client.send("/me お辞儀する 🙇")
        action = await alice.heard.next(MessageReceived)
        self.assertEqual((action.sender, action.is_action, action.action), ("ボブ", True, "お辞儀する 🙇"))
        self.assertLess(abs(action.time - time.time()), 1.0)
        alice.client.send("second")
        await bob.heard.next(MessageReceived, lambda m: m.text == "second")
        self.assertEqual([m.text for m in alice.heard.of(MessageReceived)], ["/me お辞儀する 🙇"])
        self.assertEqual([m.text for m in bob.heard.of(MessageReceived)], [text, "second"])

    async def test_member_leaves(self) -> None:
        """leave(): the others hear MemberLeft; the one who left is closed for good, sockets and all."""
        service = self.serve()
        baseline = self.open_sockets()
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        carol = await self.enter(service, "carol")
        # carol's join may be held for the presence interval: bob hears it before he goes.
        await bob.heard.next(MemberJoined)
        await bounded(bob.client.leave(), "bob leaves")
        self.assertEqual(bob.client.state, ConnectionState.CLOSED)
        for person in (alice, carol):
            left = await person.heard.next(MemberLeft)
            self.assertEqual(left, MemberLeft("bob", ("alice", "carol"), "* bob left lobby", timed_out=False))
            self.assertEqual(person.client.members, ("alice", "carol"))
        with self.assertRaises(NotInRoomError):
            bob.client.send("still there?")
        await self.stay_closed(bob)
        self.assertEqual(bob.heard.events, [MemberJoined("carol", ("alice", "bob", "carol"), "* carol joined lobby")])
        self.assertEqual(len(service.server.tcp_factory.connections), 2)
        await bounded(alice.client.leave(), "alice leaves")
        await self.stay_closed(carol)
        await until(lambda: self.open_sockets() == baseline, "every client socket is closed, on both ends")

    async def test_host_closes_the_room(self) -> None:
        """close_room(): the others are told the host closed it, not that it left."""
        service = self.serve()
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        with self.assertRaises(NotPermittedError):
            bob.client.close_room()
        await bounded(alice.client.close_room(), "alice closes the room")
        closed = await bob.heard.next(RoomClosed)
        self.assertEqual(
            closed, RoomClosed("lobby", "the host closed the room", "* room lobby was closed: the host closed the room")
        )
        await self.stay_closed(bob)
        self.assertEqual(service.server.store.rooms(), [])

    async def test_host_leaves(self) -> None:
        """The host's leave() closes the room: the others hear RoomClosed and do not reconnect."""
        service = self.serve()
        baseline = self.open_sockets()
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        await bounded(alice.client.leave(), "alice leaves")
        closed = await bob.heard.next(RoomClosed)
        self.assertEqual(closed, RoomClosed("lobby", "the host left", "* room lobby was closed: the host left"))
        await self.stay_closed(bob)
        await self.stay_closed(alice)
        self.assertEqual(bob.heard.events, [closed])
        self.assertEqual(service.server.store.rooms(), [])
        await until(lambda: self.open_sockets() == baseline, "every client socket is closed, on both ends")
        # A closed client may enter again.
        again = await bounded(bob.client.create("lobby", "bob"), "bob creates the room anew")
        self.assertTrue(again.host)

    # -- the idle sweep and keepalives --------------------------------------

    def silence(self, person: Person) -> None:
        """Stop a member's keepalives, as if its process froze with the TCP connection still open."""
        keepalive = person.client._timers.pop(KEEPALIVE)
        assert keepalive.active()
        keepalive.cancel()

    async def test_silent_member_removed(self) -> None:
        service = self.serve(**IDLE)
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        self.silence(bob)
        removed = await bob.heard.next(RemovedForInactivity)
        self.assertEqual(
            removed, RemovedForInactivity("lobby", "* you were removed from lobby after 0.5 s without activity")
        )
        left = await alice.heard.next(MemberLeft)
        self.assertEqual(
            left, MemberLeft("bob", ("alice",), "* bob was removed from lobby after 0.5 s without activity", True)
        )
        self.assertEqual(alice.client.members, ("alice",))
        await self.stay_closed(bob)
        self.assertEqual(bob.heard.events, [removed])
        self.assertEqual(alice.client.state, ConnectionState.IN_ROOM)

    async def test_silent_host_closes_room(self) -> None:
        service = self.serve(**IDLE)
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        self.silence(alice)
        text = "* room lobby was closed: the host timed out"
        for person in (alice, bob):
            self.assertEqual(await person.heard.next(RoomClosed), RoomClosed("lobby", "the host timed out", text))
            await self.stay_closed(person)

    async def test_keepalive_keeps_reader(self) -> None:
        """
        Members who only read stay in the room for many idle timeouts, while
        one whose keepalives stop is removed by the same sweep.
        """
        service = self.serve(**IDLE)
        alice = self.person(service, "alice")
        info = await bounded(alice.client.create("lobby", "alice"), "alice creates lobby")
        self.assertEqual((info.idle_timeout, info.keepalive_interval), (0.5, 0.1))
        # Entering waits for the server's answer to the first keepalive.
        self.assertTrue(alice.client.udp_confirmed)
        bob = await self.enter(service, "bob")
        carol = await self.enter(service, "carol")
        self.silence(carol)
        await alice.heard.next(MemberLeft, lambda left: left.user == "carol" and left.timed_out)
        await sleep(1.0)  # two more idle timeouts; bob has been in for at least three
        for person in (alice, bob):
            self.assertEqual(person.client.state, ConnectionState.IN_ROOM)
            self.assertEqual(person.client.members, ("alice", "bob"))
            self.assertEqual(person.heard.of(RemovedForInactivity) + person.heard.of(RoomClosed), [])
        self.assertEqual([left.user for left in bob.heard.of(MemberLeft)], ["carol"])
        self.assertEqual([room.names() for room in service.server.store.rooms()], [("alice", "bob")])
        alice.client.send("still here?")
        heard = await bob.heard.next(MessageReceived)
        self.assertEqual(heard.text, "still here?")

    # -- server restart -----------------------------------------------------

    async def test_reconnect_after_restart(self) -> None:
        """
        The daemon stops and starts again on the same ports: both members come
        back to a room with the same password, and chat goes both ways.
        """
        first = self.serve()
        tcp_port, udp_port = first.tcp_port, first.udp_port
        alice = await self.enter(first, "alice", create=True, password="sesame")
        bob = await self.enter(first, "bob", password="sesame")
        await alice.heard.next(MemberJoined)
        marks = {person.heard.name: len(person.heard.events) for person in (alice, bob)}
        await bounded(first.stopService(), "the first service stops")
        for person in (alice, bob):
            # At least one attempt has failed with nobody listening.
            await person.heard.next(Reconnecting, lambda attempt: attempt.attempt >= 2)
            self.assertEqual(person.client.state, ConnectionState.RECONNECTING)
            with self.assertRaises(NotInRoomError):
                person.client.send("anyone?")
            stopping, lost, first_try, second_try = person.heard.events[marks[person.heard.name] :][:4]
            assert isinstance(first_try, Reconnecting) and isinstance(second_try, Reconnecting)
            self.assertEqual(stopping, ServerStopping("lobby", "* the server is shutting down; room lobby is closed"))
            assert isinstance(lost, ConnectionLost)
            self.assertTrue(lost.will_reconnect)
            # 0.1 s then 0.2 s, each shortened by up to 20 % at random.
            self.assertEqual((first_try.attempt, second_try.attempt), (1, 2))
            self.assertTrue(0.08 <= first_try.delay <= 0.1, first_try)
            self.assertTrue(0.16 <= second_try.delay <= 0.2, second_try)

        second = self.serve(tcp_port=tcp_port, udp_port=udp_port)
        for person in (alice, bob):
            back = await person.heard.next(Reconnected)
            self.assertEqual(back.room, "lobby")
            await self.keepalive_answered(person)
            self.assertEqual(person.client.state, ConnectionState.IN_ROOM)
        # bob's join notice to alice may still be on its way when bob says he is back.
        await until(lambda: sorted(alice.client.members) == ["alice", "bob"], "alice hears that bob is back")
        self.assertEqual(sorted(bob.client.members), ["alice", "bob"])
        # The host made the room again, and kept its password.
        self.assertEqual((alice.info.host, bob.info.host), (True, False))
        for person in (alice, bob):
            self.assertEqual(person.client.room_host, "alice")
            self.assertEqual((await person.heard.next(Reconnected)).host, "alice")
        eve = self.person(second, "eve")
        await self.refused(eve.client.join("lobby", "eve", "guess"), InvalidPasswordError)

        alice.client.send("おかえり 🎉")
        self.assertEqual((await bob.heard.next(MessageReceived)).text, "おかえり 🎉")
        bob.client.send("ただいま")
        self.assertEqual((await alice.heard.next(MessageReceived)).text, "ただいま")

    async def test_member_back_first_waits_for_the_host(self) -> None:
        """
        After a restart a member back first does not make the room: it waits
        for the host, who makes it again with its password, then joins; the
        host is still the host (it can invite), and both know it.
        """
        first = self.serve()
        tcp_port, udp_port = first.tcp_port, first.udp_port
        alice = await self.enter(
            first, "alice", create=True, password="sesame", first_retry_delay=2.0, max_retry_delay=2.0
        )
        bob = await self.enter(first, "bob", password="sesame")
        await bounded(first.stopService(), "the first service stops")
        await bob.heard.next(Reconnecting, lambda attempt: attempt.attempt >= 2)
        # alice's one delay: 2 s, shortened by up to 20 % at random (bob's are at most 0.1 s and 0.2 s).
        (retry,) = alice.heard.of(Reconnecting)
        self.assertEqual(retry.attempt, 1)
        self.assertTrue(1.6 <= retry.delay <= 2.0, retry)
        second = self.serve(tcp_port=tcp_port, udp_port=udp_port)
        waiting = await bob.heard.next(WaitingForHost)
        self.assertEqual((waiting.room, waiting.host), ("lobby", "alice"))
        self.assertTrue(119.0 < waiting.gives_up_in <= 120.0, waiting)
        self.assertEqual(second.server.store.rooms(), [])
        self.assertEqual(bob.client.state, ConnectionState.RECONNECTING)
        self.assertEqual(await alice.heard.next(Reconnected, timeout=3.0), Reconnected("lobby", ("alice",), "alice"))
        self.assertTrue(alice.info.host)
        self.assertEqual(await bob.heard.next(Reconnected), Reconnected("lobby", ("alice", "bob"), "alice"))
        self.assertFalse(bob.info.host)
        self.assertEqual(bob.client.room_host, "alice")
        await self.refused(self.person(second, "eve").client.join("lobby", "eve", "guess"), InvalidPasswordError)
        self.assertRegex(await bounded(alice.client.invite(), "alice invites"), r"^[A-Za-z0-9_-]{22}$")
        for person in (alice, bob):
            await self.keepalive_answered(person)
        bob.client.send("welcome back, host")
        self.assertEqual((await alice.heard.next(MessageReceived)).text, "welcome back, host")

    async def test_no_reconnect_when_disabled(self) -> None:
        service = self.serve()
        alice = self.person(service, "alice", reconnect=False)
        await bounded(alice.client.create("lobby", "alice"), "alice creates lobby")
        await bounded(service.stopService(), "the service stops")
        await alice.heard.next(ServerStopping)
        lost = await alice.heard.next(ConnectionLost)
        self.assertFalse(lost.will_reconnect)
        await until(lambda: alice.client._udp is None, "alice's UDP port is closed")
        await sleep(0.3)
        self.assertEqual(alice.heard.of(Reconnecting), [])
        self.assertEqual(alice.client.state, ConnectionState.CLOSED)

    # -- refusals -----------------------------------------------------------

    async def test_room_exists(self) -> None:
        service = self.serve()
        await self.enter(service, "alice", create=True)
        bob = self.person(service, "bob")
        await self.refused(bob.client.create("lobby", "bob"), RoomExistsError)
        self.assertEqual(bob.client.state, ConnectionState.IDLE)
        await until(lambda: len(service.server.tcp_factory.connections) == 1, "the refused connection is closed")
        # The same client, another room.
        info = await bounded(bob.client.create("lounge", "bob"), "bob creates lounge")
        self.assertEqual((info.room, info.host), ("lounge", True))

    async def test_room_not_found(self) -> None:
        service = self.serve()
        alice = self.person(service, "alice")
        error = await self.refused(alice.client.join("nope", "alice"), RoomNotFoundError)
        self.assertEqual(str(error), "no room 'nope'")
        await bounded(alice.client.create("nope", "alice"), "alice creates nope")

    async def test_invalid_password(self) -> None:
        service = self.serve()
        await self.enter(service, "alice", create=True, password="sesame")
        bob = self.person(service, "bob")
        await self.refused(bob.client.join("lobby", "bob", "open up"), InvalidPasswordError)
        await self.refused(bob.client.join("lobby", "bob"), InvalidPasswordError)
        info = await bounded(bob.client.join("lobby", "bob", "sesame"), "bob joins with the password")
        self.assertEqual(info.members, ("alice", "bob"))

    async def test_username_taken(self) -> None:
        service = self.serve()
        await self.enter(service, "alice", create=True)
        other = self.person(service, "other alice")
        await self.refused(other.client.join("lobby", "alice"), UsernameTakenError)
        info = await bounded(other.client.join("lobby", "alice2"), "joins under another name")
        self.assertEqual(info.members, ("alice", "alice2"))

    async def test_invalid_names(self) -> None:
        service = self.serve()
        alice = self.person(service, "alice")
        for user in ("bad:name", "*eve", " padded", ""):
            await self.refused(alice.client.create("lobby", user), InvalidNameError)
        await self.refused(alice.client.create(" lobby", "alice"), InvalidNameError)
        await bounded(alice.client.create("lobby", "alice"), "alice creates lobby")

    async def test_invitations(self) -> None:
        """An invitation lets one person into a password room, once; a made-up one, nobody."""
        service = self.serve()
        alice = await self.enter(service, "alice", create=True, password="sesame")
        invite = await bounded(alice.client.invite(), "an invitation")
        self.assertRegex(invite, r"^[A-Za-z0-9_-]{22}$")
        bob = self.person(service, "bob")
        await self.refused(bob.client.join("lobby", "bob", invite="not-an-invitation"), InvalidInvitationError)
        info = await bounded(bob.client.join("lobby", "bob", invite=invite), "bob joins by invitation")
        self.assertEqual(info.members, ("alice", "bob"))
        carol = self.person(service, "carol")
        await self.refused(carol.client.join("lobby", "carol", invite=invite), InvalidInvitationError)

    async def test_invite_by_member(self) -> None:
        """Only the host invites: refused by the client before asking, and by the server if asked."""
        service = self.serve()
        await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        asked = bob.client.invite()
        self.assertTrue(asked.called, "the client refuses without a round trip")
        await self.refused(asked, NotPermittedError)
        # A client that believes it is the host asks, and the server refuses.
        bob.client.info = replace(bob.info, host=True)
        asked = bob.client.invite()
        self.assertFalse(asked.called, "the request went to the server")
        error = await self.refused(asked, NotPermittedError)
        self.assertEqual(str(error), "only the host can invite")
        self.assertEqual(bob.client.state, ConnectionState.IN_ROOM)

    async def test_room_full(self) -> None:
        service = self.serve(max_members=2)
        await self.enter(service, "alice", create=True)
        await self.enter(service, "bob")
        carol = self.person(service, "carol")
        await self.refused(carol.client.join("lobby", "carol"), RoomFullError)
        await bounded(carol.client.create("overflow", "carol"), "carol makes her own room")

    async def test_server_full(self) -> None:
        service = self.serve(max_rooms=1)
        await self.enter(service, "alice", create=True)
        bob = self.person(service, "bob")
        await self.refused(bob.client.create("lounge", "bob"), ServerFullError)
        await bounded(bob.client.join("lobby", "bob"), "bob joins the one room there is")

    async def test_unsupported_version(self) -> None:
        """A client speaking a version this server does not: refused, and the connection closed."""
        service = self.serve()
        self.patch(chatd.client.requests, "NATIVE_VERSION", 2)
        alice = self.person(service, "alice")
        await self.refused(alice.client.create("lobby", "alice"), UnsupportedVersionError)
        self.assertEqual(alice.client.state, ConnectionState.IDLE)
        await until(lambda: not service.server.tcp_factory.connections, "the server closed the connection")

    async def test_connection_failed(self) -> None:
        """Nobody listens on the port: ConnectionFailedError, and the client may try elsewhere."""
        service = self.serve()
        with socket.socket() as borrowed:
            borrowed.bind((HOST, 0))
            closed_port = borrowed.getsockname()[1]
        alice = self.person(service, "alice")
        alice.client.tcp_port = closed_port
        await self.refused(alice.client.create("lobby", "alice"), ConnectionFailedError)
        self.assertEqual(alice.client.state, ConnectionState.IDLE)
        self.assertEqual(alice.heard.events, [])
        alice.client.tcp_port = service.tcp_port
        await bounded(alice.client.create("lobby", "alice"), "alice creates lobby on the real port")

    async def test_members_kept_from_changes(self) -> None:
        """
        Notices carry only who came or went (and a burst comes coalesced, at
        the server's default pace): every client's list ends right all the same.
        """
        service = self.serve(presence_interval=1.0)
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        carol = await self.enter(service, "carol")
        dave = await self.enter(service, "dave")
        await bounded(carol.client.leave(), "carol leaves")
        self.assertEqual(dave.client.members, ("alice", "bob", "carol", "dave"))
        for person in (alice, bob, dave):
            await until(
                lambda person=person: person.client.members == ("alice", "bob", "dave"),  # type: ignore[misc]
                f"{person.heard.name} knows who is left",
            )
        # dave entered after carol: her leaving is a change to his list, her coming was not.
        self.assertEqual([event.user for event in dave.heard.of(MemberJoined)], [])
        self.assertEqual(
            dave.heard.of(MemberLeft), [MemberLeft("carol", ("alice", "bob", "dave"), "* carol left lobby")]
        )

    async def test_refresh_members(self) -> None:
        service = self.serve()
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        self.assertEqual(await bounded(bob.client.refresh_members(), "bob asks who is there"), ("alice", "bob"))
        # A list gone wrong (a notice missed) is put right.
        alice.client.members = ("alice", "ghost")
        self.assertEqual(await bounded(alice.client.refresh_members(), "alice asks"), ("alice", "bob"))
        self.assertEqual(alice.client.members, ("alice", "bob"))
        await self.refused(self.person(service, "carol").client.refresh_members(), NotInRoomError)

    async def test_not_in_room(self) -> None:
        service = self.serve()
        alice = self.person(service, "alice")
        with self.assertRaises(NotInRoomError):
            alice.client.send("hello?")
        await self.refused(alice.client.invite(), NotInRoomError)
        await self.enter(service, "bob", create=True)
        await bounded(alice.client.join("lobby", "alice"), "alice joins")
        # One room at a time.
        await self.refused(alice.client.join("lobby", "alice"), ClientError)
        self.assertEqual(alice.client.state, ConnectionState.IN_ROOM)

    async def test_message_size_limit(self) -> None:
        """
        The longest message the client accepts reaches the others; one byte more is MessageTooLongError.

        Two limits apply (docs/protocol.md section 7): the sender's sealed
        datagram and each relayed copy (sender's name included) must fit in
        4096 bytes; with sealing the second is always the tighter one.
        """
        service = self.serve()
        short = await self.enter(service, "al", create=True)
        long_name = "a-rather-long-user-name"
        long = await self.enter(service, long_name)
        for sender, receiver in ((short, long), (long, short)):
            name_bytes = len(sender.info.user.encode("utf-8"))
            limit = min(MAX_DATAGRAM - NATIVE_MESSAGE_OVERHEAD, MAX_DATAGRAM - RELAY_OVERHEAD - name_bytes)
            with self.assertRaises(MessageTooLongError):
                sender.client.send("x" * (limit + 1))
            with self.assertRaises(MessageTooLongError):
                sender.client.send("あ" * (limit // 3 + 1))
            text = "🎌" + "x" * (limit - 4)
            self.assertEqual(len(text.encode("utf-8")), limit)
            sender.client.send(text)
            # In a room of two, the receiver hears no one else.
            heard = await receiver.heard.next(MessageReceived)
            self.assertEqual((heard.sender, heard.text), (sender.info.user, text))

    # -- leaving while a connection is being made ---------------------------

    def hold_connections(self) -> list[Deferred[None]]:
        """
        From now on each TCP connect of the client library completes only
        when the test fires its gate, so the test can act in between.
        """
        gates: list[Deferred[None]] = []
        connect = connectProtocol

        def held(endpoint: Any, protocol: Any) -> Deferred[Any]:
            connected = connect(endpoint, protocol)
            gate: Deferred[None] = Deferred()
            gates.append(gate)
            return gate.addCallback(lambda _: connected)

        self.patch(chatd.client.chat_client, "connectProtocol", held)
        return gates

    async def test_leave_while_entering(self) -> None:
        """leave() before the connection is made: the create fails, and nothing is left open."""
        service = self.serve()
        baseline = self.open_sockets()
        gates = self.hold_connections()
        alice = self.person(service, "alice")
        entering = alice.client.create("lobby", "alice")
        await until(lambda: len(gates) == 1, "alice connects")
        await bounded(alice.client.leave(), "alice leaves")
        gates[0].callback(None)
        await self.refused(entering, ClientError)
        await sleep(0.2)
        self.assertEqual(service.server.store.rooms(), [])
        self.assertNotEqual(alice.client.state, ConnectionState.IN_ROOM)
        await until(lambda: self.open_sockets() == baseline, "every client socket is closed, on both ends")

    async def test_leave_while_reconnecting(self) -> None:
        """leave() while a reconnect attempt is connecting: the client does not come back."""
        service = self.serve()
        alice = await self.enter(service, "alice", create=True)
        bob = await self.enter(service, "bob")
        gates = self.hold_connections()
        for connection in list(service.server.tcp_factory.connections):
            if connection.member is not None and connection.member.name == "bob":
                connection.abort()
        await bob.heard.next(ConnectionLost)
        await alice.heard.next(MemberLeft)
        await until(lambda: len(gates) == 1, "bob tries to reconnect")
        await bounded(bob.client.leave(), "bob leaves")
        gates[0].callback(None)
        await sleep(0.3)
        self.assertEqual(alice.client.members, ("alice",))
        self.assertEqual(alice.heard.of(MemberJoined), [MemberJoined("bob", ("alice", "bob"), "* bob joined lobby")])
        self.assertEqual(bob.client.state, ConnectionState.CLOSED)
        self.assertEqual(bob.heard.of(Reconnected), [])
        await until(lambda: len(service.server.tcp_factory.connections) == 1, "bob's sockets are closed")
        self.assertIsNone(bob.client._udp)
