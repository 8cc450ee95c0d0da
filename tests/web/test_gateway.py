"""
The WebSocket gateway without a browser: a real daemon service on the test's
reactor (ports picked by the system, loopback only), pages played by autobahn
clients (tests.web.ws_client), and chatd's own client library as a native
member in the same rooms. Every wait is bounded.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from chatd.client.chat_client import ChatClient
from chatd.client.events import MessageReceived
from chatd.daemon.service import ChatService, make_service
from chatd.daemon.settings import Settings
from chatd.daemon.web.gateway import MAX_BROWSER_MESSAGE
from chatd.protocol.certificates import make_self_signed
from tests.waiting import Recorder, bounded, sleep, until
from tests.web.ws_client import PageClient, close_page, connect_page, open_page

SETTINGS = Settings(
    tcp_port=0, udp_port=0, web_port=0, password_cost=2, presence_interval=0, history_on_join=50, udp_io="twisted"
)


class GatewayCase(TestCase):
    timeout = 30
    settings = SETTINGS

    def setUp(self) -> None:
        self.service: ChatService = make_service(self.settings, _reactor)
        self.service.startService()
        self.addCleanup(self._stop)

    def _stop(self) -> Deferred[Any] | None:
        return self.service.stopService() if self.service.running else None

    @property
    def web_port(self) -> int:
        port = self.service.web_port
        assert port is not None
        return port

    async def page(self, **options: Any) -> PageClient:
        client = await open_page(self.web_port, **options)
        self.addCleanup(close_page, client)
        return client

    async def native(self, room: str, name: str, *, create: bool = False) -> tuple[ChatClient, Recorder]:
        heard = Recorder(name)
        client = ChatClient(
            _reactor, "127.0.0.1", self.service.tcp_port, self.service.udp_port, listener=heard, reconnect=False
        )
        self.addCleanup(client.leave)
        if create:
            await client.create(room, name)
        else:
            await client.join(room, name)
        return client, heard


class RoomTests(GatewayCase):
    async def test_create_join_and_chat_in_room_order(self) -> None:
        alice = await self.page()
        entered = await alice.enter("teahouse", "alice", create=True)
        self.assertEqual(entered["type"], "entered")
        self.assertEqual(
            {key: entered[key] for key in ("room", "name", "created", "host", "members", "latest", "history")},
            {
                "room": "teahouse",
                "name": "alice",
                "created": True,
                "host": "alice",
                "members": ["alice"],
                "latest": 0,
                "history": [],
            },
        )
        self.assertRegex(entered["epoch"], "^[0-9a-f]{16}$")
        first = await alice.say(1, "before bob")
        self.assertEqual((first["type"], first["id"], first["seq"]), ("sent", 1, 1))
        bob = await self.page()
        joined = await bob.enter("teahouse", "bob")
        self.assertEqual((joined["created"], joined["host"], joined["members"]), (False, "alice", ["alice", "bob"]))
        self.assertEqual(joined["latest"], 1)
        # History on joining: what was said before, marked so, with its number and time.
        [held] = joined["history"]
        self.assertEqual(
            (held["seq"], held["from"], held["text"], held["history"], held["time"]),
            (1, "alice", "before bob", True, first["time"]),
        )
        # The member list is pushed to alice on the change, after the notice.
        notice = await alice.next("notice", lambda m: m["event"] == "joined")
        self.assertEqual((notice["user"], notice["text"]), ("bob", "* bob joined teahouse"))
        members = await alice.next("members", lambda m: "bob" in m["members"])
        self.assertEqual(members, {"type": "members", "members": ["alice", "bob"], "host": "alice"})
        for number in range(2, 7):
            await bob.say(number, f"bob {number}")
        sent = await alice.say(9, "/me waves")
        self.assertEqual(sent["seq"], 7)
        heard = [m for m in alice.of("message")]
        self.assertEqual([m["seq"] for m in heard], [2, 3, 4, 5, 6])
        self.assertEqual([m["text"] for m in heard], [f"bob {n}" for n in range(2, 7)])
        action = await bob.next("message", lambda m: m["seq"] == 7)
        self.assertEqual((action["from"], action["text"]), ("alice", "/me waves"))
        # A page is never sent its own messages: it has their "sent".
        self.assertEqual([m for m in bob.of("message") if m["from"] == "bob"], [])

    async def test_a_native_member_and_a_page_hear_each_other(self) -> None:
        page = await self.page()
        await page.enter("mixed", "webby", create=True)
        native, heard = await self.native("mixed", "nat")
        self.assertEqual(native.members, ("webby", "nat"))
        sent = await page.say(1, "hello from the browser")
        received = await heard.message("webby", "hello from the browser")
        self.assertIsInstance(received, MessageReceived)
        native.send("hello from the terminal")
        message = await page.next("message", lambda m: m["from"] == "nat")
        self.assertEqual(message["text"], "hello from the terminal")
        self.assertEqual(message["seq"], sent["seq"] + 1)

    async def test_password_and_invitation(self) -> None:
        host = await self.page()
        await host.enter("locked", "hana", create=True, password="sesame")
        nobody = await self.page()
        refused = await nobody.enter("locked", "guest")
        self.assertEqual((refused["type"], refused["error"]), ("refused", "invalid_password"))
        self.assertEqual(refused["text"], "Room 'locked' needs a password.")
        wrong = await self.page()
        refused = await wrong.enter("locked", "guest", password="open")
        self.assertEqual(refused["error"], "invalid_password")
        right = await self.page()
        self.assertEqual((await right.enter("locked", "guest", password="sesame"))["type"], "entered")
        host.send({"type": "invite"})
        invitation = await host.next("invitation")
        self.assertEqual(invitation["expires_in"], self.settings.invite_ttl)
        invited = await self.page()
        entered = await invited.enter("locked", "friend", invite=invitation["invite"])
        self.assertEqual(entered["members"], ["hana", "guest", "friend"])
        # Single use.
        again = await self.page()
        self.assertEqual(
            (await again.enter("locked", "other", invite=invitation["invite"]))["error"], "invalid_invitation"
        )
        # Only the host invites.
        right.send({"type": "invite"})
        self.assertEqual((await right.next("refused"))["error"], "not_permitted")

    async def test_refusals_read_as_sentences(self) -> None:
        page = await self.page()
        refused = await page.enter("nowhere", "ann")
        self.assertEqual(refused, {"type": "refused", "error": "room_not_found", "text": "No room 'nowhere'."})
        taken = await self.page()
        await taken.enter("here", "ann", create=True)
        twice = await self.page()
        self.assertEqual((await twice.enter("here", "ann"))["error"], "username_taken")
        bad = await self.page()
        self.assertEqual((await bad.enter("here", "a: b"))["error"], "invalid_name")
        # Saying before entering.
        early = await self.page()
        self.assertEqual((await early.say(1, "hi"))["error"], "not_permitted")

    async def test_leaving_and_a_host_closing(self) -> None:
        host = await self.page()
        await host.enter("brief", "hana", create=True)
        guest = await self.page()
        await guest.enter("brief", "gus")
        other = await self.page()
        await other.enter("brief", "ola")
        guest.send({"type": "leave"})
        await bounded(guest.closed, "gus's WebSocket closing after leaving")
        left = await host.next("notice", lambda m: m["event"] == "left")
        self.assertEqual(left["user"], "gus")
        self.assertEqual((await host.next("members", lambda m: "gus" not in m["members"]))["members"], ["hana", "ola"])
        host.send({"type": "leave"})
        closed = await other.next("notice", lambda m: m["event"] == "room_closed")
        self.assertEqual(closed["text"], "* room brief was closed: the host closed the room")
        was_clean, code, _ = await bounded(other.closed, "ola's WebSocket closing with the room")
        self.assertEqual((was_clean, code), (True, 1000))

    async def test_closing_the_page_leaves_the_room(self) -> None:
        native, _ = await self.native("shut", "nat", create=True)
        page = await self.page()
        await page.enter("shut", "webby")
        await until(lambda: native.members == ("nat", "webby"), "webby in nat's member list")
        page.dropConnection(abort=True)
        await until(lambda: native.members == ("nat",), f"webby gone from nat's list: {native.members}")


class LimitTests(GatewayCase):
    settings = Settings(
        tcp_port=0,
        udp_port=0,
        web_port=0,
        password_cost=2,
        presence_interval=0,
        message_burst=3,
        messages_per_s=0.01,
        max_connections_per_host=3,
        limit_loopback=True,
        web_origin="https://chat.example.org",
        udp_io="twisted",
    )

    async def test_rate_limit_refuses_the_say_and_tells_the_page(self) -> None:
        page = await self.page()
        await page.enter("quick", "fast", create=True)
        answers = [await page.say(number, f"m{number}") for number in range(1, 6)]
        self.assertEqual([a["type"] for a in answers], ["sent", "sent", "sent", "refused", "refused"])
        self.assertEqual(answers[3]["error"], "rate_limited")
        self.assertEqual(answers[3]["text"], "The member is sending too fast.")
        throttled = await page.next("notice", lambda m: m["event"] == "throttled")
        self.assertIn("too fast", throttled["text"])
        # The connection stays: a refused say is not a broken page.
        self.assertFalse(page.closed.called)

    async def test_per_address_connection_limit(self) -> None:
        pages = [await self.page() for _ in range(3)]
        fourth = await connect_page(self.web_port)
        self.addCleanup(close_page, fourth)
        _, _, reason = await bounded(fourth.closed, "the fourth WebSocket refused")
        self.assertFalse(fourth.opened.result)
        self.assertIn("[503]", str(reason))
        await close_page(pages[0])
        await until(lambda: self._gateway_connections() == 2, "a closed page stops counting")
        self.assertIsNotNone(await self.page())

    def _gateway_connections(self) -> int:
        assert self.service.web is not None
        return len(self.service.web.connections)

    async def test_origin_is_checked(self) -> None:
        for origin in ("http://evil.example", None, f"https://127.0.0.1:{self.web_port}"):
            client = await connect_page(self.web_port, origin=origin)
            self.addCleanup(close_page, client)
            _, _, reason = await bounded(client.closed, f"the WebSocket from origin {origin} refused")
            self.assertFalse(client.opened.result)
            self.assertIn("[403]", str(reason), origin)
        # The operator's extra origin is allowed.
        allowed = await self.page(origin="https://chat.example.org")
        self.assertEqual((await allowed.enter("x", "y", create=True))["type"], "entered")

    async def test_message_size_is_bounded(self) -> None:
        page = await self.page()
        await page.enter("big", "bigmouth", create=True)
        page.sendMessage(b'{"type":"say","id":1,"text":"' + b"x" * MAX_BROWSER_MESSAGE + b'"}', isBinary=False)
        # autobahn refuses it as it arrives (1009) and drops the connection
        # at once (failByDrop): nothing of it is buffered past the limit.
        was_clean, _, reason = await bounded(page.closed, "the oversized message closing the WebSocket")
        self.assertFalse(was_clean)
        self.assertIn("peer dropped the TCP connection", str(reason))
        # The page's member is gone with it (its room too: it was the host).
        other = await self.page()
        self.assertEqual((await other.enter("big", "later"))["error"], "room_not_found")

    async def test_a_text_too_long_for_the_room_is_refused_not_fatal(self) -> None:
        page = await self.page()
        await page.enter("long", "longwinded", create=True)
        answer = await page.say(1, "y" * 5000)
        self.assertEqual((answer["type"], answer["error"]), ("refused", "too_large"))
        self.assertFalse(page.closed.called)

    async def test_binary_and_malformed_messages_close(self) -> None:
        binary = await self.page()
        binary.sendMessage(b"\x00\x01", isBinary=True)
        self.assertEqual((await bounded(binary.closed, "binary closing"))[1], 4003)
        malformed = await self.page()
        malformed.sendMessage(b'{"type":"shout"}', isBinary=False)
        refused = await malformed.next("refused")
        self.assertEqual(refused["error"], "malformed")
        self.assertEqual((await bounded(malformed.closed, "malformed closing"))[1], 4008)


class KeepaliveTests(GatewayCase):
    settings = Settings(
        tcp_port=0,
        udp_port=0,
        web_port=0,
        password_cost=2,
        presence_interval=0,
        # A ping at most every second (autobahn's timers have a one-second
        # grain), each answered at once on loopback: activity well within
        # every idle timeout of 1.5 s.
        keepalive_interval=1.0,
        idle_timeout=1.5,
        sweep_interval=0.1,
        handshake_timeout=0.5,
        udp_io="twisted",
    )

    async def test_answered_pings_keep_a_silent_page_in_its_room(self) -> None:
        page = await self.page()
        await page.enter("quiet", "mute", create=True)
        # Over two idle timeouts without a word: the browser's pongs are its activity.
        await sleep(3.0)
        self.assertFalse(page.closed.called, page.heard)
        self.assertEqual([room.name for room in self.service.server.store.rooms()], ["quiet"])

    async def test_a_page_that_enters_no_room_is_closed(self) -> None:
        page = await self.page()
        _, code, _ = await bounded(page.closed, "the handshake timeout closing the WebSocket")
        self.assertEqual(code, 4008)


class SendQueueTests(GatewayCase):
    settings = Settings(
        tcp_port=0,
        udp_port=0,
        web_port=0,
        password_cost=2,
        presence_interval=0,
        send_queue=100_000,
        messages_per_s=1e9,
        message_burst=1e9,
        bytes_per_s=1e12,
        byte_burst=1e12,
        udp_io="twisted",
    )

    async def test_a_page_that_falls_behind_by_the_send_queue_is_reset(self) -> None:
        listener = await self.page()
        await listener.enter("flood", "slow", create=True)
        talker = await self.page()
        await talker.enter("flood", "loud")
        assert self.service.web is not None
        [loud] = [c.member for c in self.service.web.connections if c.member is not None and c.member.name == "loud"]
        assert loud is not None
        relay = self.service.server.relay
        # Numbered and handed over in one go, as a burst from many members
        # would be: slow's transport fills its 64 KiB, then 100,000 bytes more
        # may wait for it, and no more.
        for _ in range(60):
            relay.relay_message(loud, b"x" * 4000)
        self.assertEqual(self.service.web.aborted, {"send_queue": 1})
        was_clean, _, _ = await bounded(listener.closed, "slow's connection reset")
        self.assertFalse(was_clean)
        # slow was the host: its room is gone, and loud is told so.
        closed = await talker.next("notice", lambda m: m["event"] == "room_closed")
        self.assertEqual(closed["reason"], "the host left")


class TlsTests(GatewayCase):
    def setUp(self) -> None:
        # Not self.mktemp(): under pytest that is a folder in the working tree.
        directory = Path(tempfile.mkdtemp(prefix="chatd-web-tls-"))
        self.addCleanup(shutil.rmtree, directory, True)
        cert_pem, key_pem = make_self_signed()
        (directory / "cert.pem").write_bytes(cert_pem)
        (directory / "key.pem").write_bytes(key_pem)
        key_path = directory / "key.pem"
        key_path.chmod(0o600)
        self.settings = replace(SETTINGS, tls_cert=str(directory / "cert.pem"), tls_key=str(key_path), tls_port=0)
        super().setUp()

    async def test_https_and_wss(self) -> None:
        def fetch() -> tuple[int, str]:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection = http.client.HTTPSConnection("127.0.0.1", self.web_port, timeout=5, context=context)
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                response.read()
                return response.status, response.getheader("Content-Security-Policy") or ""
            finally:
                connection.close()

        status, policy = await bounded(deferToThread(fetch), "GET / over https")
        self.assertEqual(status, 200)
        self.assertIn(f"connect-src 'self' wss://127.0.0.1:{self.web_port};", policy)
        page = await open_page(self.web_port, tls=True)
        self.addCleanup(close_page, page)
        entered = await page.enter("secret", "tess", create=True)
        self.assertEqual(entered["type"], "entered")
        self.assertEqual((await page.say(1, "over wss"))["type"], "sent")
        # The page's own origin over TLS is https: http is another origin.
        plain = await connect_page(self.web_port, origin=f"http://127.0.0.1:{self.web_port}", tls=True)
        self.addCleanup(close_page, plain)
        self.assertIn("[403]", str((await bounded(plain.closed, "the http origin refused"))[2]))


class SiteTests(GatewayCase):
    async def get(self, path: str) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        """GET C{path} with the standard library's client (in a thread), as any browser would."""

        def fetch() -> tuple[int, dict[bytes, list[bytes]], bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=5)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                headers: dict[bytes, list[bytes]] = {}
                for name, value in response.getheaders():
                    headers.setdefault(name.title().encode("latin-1"), []).append(value.encode("latin-1"))
                return response.status, headers, response.read()
            finally:
                connection.close()

        return await bounded(deferToThread(fetch), f"GET {path}")

    async def test_the_page_and_its_policy(self) -> None:
        code, headers, body = await self.get("/")
        self.assertEqual(code, 200)
        self.assertIn(b'<script src="chat.js" defer></script>', body)
        [policy] = headers[b"Content-Security-Policy"]
        self.assertIn(b"default-src 'self'", policy)
        self.assertIn(b"script-src 'self';", policy)
        self.assertIn(b"style-src 'self';", policy)
        self.assertIn(f"connect-src 'self' ws://127.0.0.1:{self.web_port};".encode(), policy)
        self.assertIn(b"frame-ancestors 'none'", policy)
        self.assertNotIn(b"unsafe", policy)
        self.assertEqual(headers[b"X-Content-Type-Options"], [b"nosniff"])
        for path, kind in (("/chat.js", b"text/javascript"), ("/chat.css", b"text/css")):
            code, headers, body = await self.get(path)
            self.assertEqual(code, 200)
            self.assertTrue(headers[b"Content-Type"][0].startswith(kind))
            self.assertTrue(body)

    async def test_no_inline_script_or_style_and_nothing_from_elsewhere(self) -> None:
        _, _, page = await self.get("/")
        self.assertNotIn(b"<script>", page)
        self.assertNotIn(b"<style", page)
        self.assertNotIn(b"style=", page)
        self.assertNotIn(b"http://", page)
        self.assertNotIn(b"https://", page)
        _, _, script = await self.get("/chat.js")
        self.assertNotIn(b"innerHTML", script)
        self.assertNotIn(b"eval(", script)

    async def test_anything_else_is_404_with_the_policy(self) -> None:
        code, headers, _ = await self.get("/static/../../etc/passwd")
        self.assertEqual(code, 404)
        self.assertIn(b"Content-Security-Policy", headers)
