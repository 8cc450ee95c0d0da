"""
chatd.client.chat_client through a real daemon crash: C{twistd chatd} as a subprocess,
killed with SIGKILL and started again on the same ports, with a host and a
member (ChatClients on this process's reactor) in one room. The member comes
back first and must wait for the host rather than take the room over.

The exact timings of the same policy are in tests/client/test_client_reconnect.py.
"""

from __future__ import annotations

from twisted.trial import unittest

from chatd.client.chat_client import RETRY_JITTER, ChatClient, ConnectionState
from chatd.client.events import ConnectionLost, MemberJoined, MessageReceived, Reconnected, Reconnecting, WaitingForHost
from tests.client_cases import REACTOR
from tests.daemon.test_twistd import Daemon
from tests.loopback_clients import free_ports
from tests.waiting import Recorder, bounded, until

HOST = "127.0.0.1"
HOST_RETRY = 3.75
"""
Seconds between the host's tries, before the jitter takes off up to 20 %
(RETRY_JITTER): even the shortest, 3 s, comes well after the daemon is back
(in about half a second) and the member (0.2 s at most) has found no room.
"""


class RestartTests(unittest.TestCase):
    timeout = 20

    async def daemon(self, tcp_port: int, udp_port: int) -> Daemon:
        """A started daemon, waited for without blocking the reactor the clients run on."""
        daemon = Daemon(self, tcp_port, udp_port)
        await until(lambda: "chatd listening on" in daemon.log() or daemon.process.poll() is not None, "twistd starts")
        self.assertIsNone(daemon.process.poll(), daemon.log())
        return daemon

    def client(self, name: str, tcp_port: int, udp_port: int, retry: float) -> tuple[ChatClient, Recorder]:
        heard = Recorder(name)
        client = ChatClient(
            REACTOR,
            HOST,
            tcp_port,
            udp_port,
            heard,
            request_timeout=5.0,
            first_retry_delay=retry,
            max_retry_delay=retry,
        )
        self.addCleanup(client.leave)
        return client, heard

    async def test_after_a_crash_the_host_is_still_the_host(self) -> None:
        tcp_port, udp_port = free_ports()
        first = await self.daemon(tcp_port, udp_port)
        alice, alice_heard = self.client("alice", tcp_port, udp_port, HOST_RETRY)
        bob, bob_heard = self.client("bob", tcp_port, udp_port, 0.2)
        await bounded(alice.create("lobby", "alice", "sesame"), "alice creates lobby")
        await bounded(bob.join("lobby", "bob", "sesame"), "bob joins lobby")
        await alice_heard.next(MemberJoined)

        first.kill()  # SIGKILL: no notice, the connections just drop
        for heard in (alice_heard, bob_heard):
            lost = await heard.next(ConnectionLost)
            self.assertTrue(lost.will_reconnect)
        await self.daemon(tcp_port, udp_port)

        # bob, back first, finds no room and waits for alice rather than making it.
        waiting = await bob_heard.next(WaitingForHost)
        self.assertEqual((waiting.room, waiting.host), ("lobby", "alice"))
        self.assertEqual(bob.state, ConnectionState.RECONNECTING)
        self.assertEqual(alice_heard.of(Reconnected), [], "alice was not back before bob")
        (retry,) = alice_heard.of(Reconnecting)
        self.assertEqual(retry.attempt, 1)
        self.assertTrue((1 - RETRY_JITTER) * HOST_RETRY <= retry.delay <= HOST_RETRY, retry)

        back = await alice_heard.next(Reconnected)
        self.assertEqual(back.host, "alice")
        self.assertTrue(alice.info is not None and alice.info.host)
        back = await bob_heard.next(Reconnected)
        self.assertEqual((back.members, back.host), (("alice", "bob"), "alice"))
        self.assertEqual((bob.room_host, bob.info is not None and bob.info.host), ("alice", False))
        self.assertEqual(len(bob_heard.of(ConnectionLost)), 1, "bob never gave up")

        # The host can still do what hosts do, and chat goes both ways.
        self.assertRegex(await bounded(alice.invite(), "alice invites"), r"^[A-Za-z0-9_-]{22}$")
        await until(lambda: alice.udp_confirmed and bob.udp_confirmed, "both keepalives are answered")
        bob.send("おかえり")
        self.assertEqual((await alice_heard.next(MessageReceived)).text, "おかえり")
