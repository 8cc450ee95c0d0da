"""
Reliable delivery end to end: the real daemon (make_service on ephemeral
loopback ports), chatd's own client library with the "delivery" feature, and
between them the impairment proxy (chatd.bench.impair) losing, reordering,
duplicating or blocking the datagrams. Every wait is bounded.

What it shows (docs/reliability.md): at 10 % loss each way with reordering,
every message reaches every other member exactly once, in room order (the
server's: a message sent again may be numbered after a later one of the same
sender, as in any chat with retransmission), and every sender's messages are
acknowledged; with all UDP blocked the control
connection carries the conversation and the client says so; once UDP is
back, the client goes back to it; the lossy benchmark's own run works.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import Any

from twisted.internet.defer import ensureDeferred

import chatd.client.core
from chatd.bench import lossy
from chatd.bench.impair import Direction, Impairment, ImpairmentProxy
from chatd.client.chat_client import ChatClient
from chatd.client.delivery import PathMonitor
from chatd.client.events import DeliveryPathChanged, MessageReceived, MessageStateChanged
from chatd.daemon.service import ChatService
from tests.client_cases import HOST, REACTOR, ClientCase, Person
from tests.waiting import WAIT, Recorder, bounded, sleep, until

LOSSY_WAIT = 40.0
"""Seconds the lossy conversation may take to be whole (it takes about 3 on an idle machine)."""


class DeliveryEndToEndTests(ClientCase):
    timeout = 90

    def impaired(self, service: ChatService, seed: int, **impairment: Any) -> tuple[ImpairmentProxy, int]:
        """The proxy in front of C{service}'s UDP port, the same impairment both ways; stopped at cleanup."""
        both = Impairment(**impairment)
        proxy = ImpairmentProxy(REACTOR, (HOST, service.udp_port), seed=seed, to_server=both, to_client=both)
        port = proxy.listen(0, HOST)
        self.addCleanup(proxy.stop)
        return proxy, port

    async def member(self, service: ChatService, udp_port: int, name: str, *, create: bool = False) -> Person:
        """A member with the "delivery" feature, its datagrams through C{udp_port} (the proxy)."""
        heard = Recorder(name)
        client = ChatClient(
            REACTOR,
            HOST,
            service.tcp_port,
            udp_port,
            heard,
            request_timeout=WAIT,
            reconnect=False,
            delivery=True,
        )
        self.addCleanup(client.leave)
        entering = client.create("lobby", name) if create else client.join("lobby", name)
        await bounded(entering, f"{name} enters", WAIT)
        self.assertTrue(client.delivery, f"{name} was granted reliable delivery")
        return Person(client, heard)

    def shown(self, person: Person) -> list[MessageReceived]:
        return [event for event in person.heard.of(MessageReceived) if not event.history]

    def acknowledged(self, person: Person) -> set[int]:
        return {event.message_id for event in person.heard.of(MessageStateChanged) if event.state == "sent"}

    async def test_lossy_path_exactly_once_in_room_order(self) -> None:
        # Keepalives every second, so that a lost last message is found soon.
        service = self.serve(keepalive_interval=1.0)
        proxy, port = self.impaired(service, seed=7, loss=0.1, reorder_ms=30.0, duplicate=0.02)
        names = ["ann", "bob", "cat"]
        people = [await self.member(service, port, names[0], create=True)]
        people += [await self.member(service, port, name) for name in names[1:]]
        count = 40
        sent: dict[str, list[int | None]] = {name: [] for name in names}
        for index in range(count):
            for person, name in zip(people, names, strict=True):
                sent[name].append(person.client.send(f"{name} {index}"))
            await sleep(0.005)

        def whole() -> bool:
            return all(len(self.shown(person)) >= count * (len(names) - 1) for person in people) and all(
                len(self.acknowledged(person)) == count for person in people
            )

        await until(whole, "every message shown to every other member and acknowledged", LOSSY_WAIT)
        await sleep(0.3)  # anything shown twice would come now
        by_seq: dict[int | None, tuple[str, str]] = {}
        for person, name in zip(people, names, strict=True):
            shown = self.shown(person)
            texts = [f"{event.sender} {event.text}" for event in shown]
            self.assertEqual(len(texts), len(set(texts)), f"{name} was shown a message twice")
            expected = {f"{other} {other} {index}" for other in names if other != name for index in range(count)}
            self.assertEqual(set(texts), expected)
            seqs = [event.seq for event in shown]
            self.assertTrue(all(seq is not None for seq in seqs))
            self.assertEqual(seqs, sorted(seqs), f"{name} was shown messages out of room order")
            for event in shown:
                # One room order for everyone: a number names the same message for every member.
                self.assertEqual(by_seq.setdefault(event.seq, (event.sender, event.text)), (event.sender, event.text))
            self.assertEqual(self.acknowledged(person), set(sent[name]))
        # The proxy did lose and duplicate datagrams, in both directions.
        for direction in Direction:
            counters = proxy.counters(direction)
            self.assertGreater(counters.dropped, 0, direction)
        stats = [person.client.delivery_stats for person in people]
        self.assertGreater(sum(s.retransmissions + s.repaired for s in stats if s is not None), 0)

    async def test_blocked_udp_goes_over_tcp_and_comes_back(self) -> None:
        self.patch(PathMonitor, "PROBE_FIRST", 0.5)
        service = self.serve(keepalive_interval=0.5)
        proxy, port = self.impaired(service, seed=1)
        ann = await self.member(service, port, "ann", create=True)
        bob = await self.member(service, port, "bob")
        await until(lambda: ann.client.delivery_path == "udp" and bob.client.delivery_path == "udp", "both on UDP")

        proxy.block("both")
        for person in (ann, bob):
            changed = await person.heard.next(DeliveryPathChanged, timeout=15.0)
            self.assertEqual((changed.path, changed.text), ("tcp", "UDP blocked: messages go over TCP"))
        forwarded = proxy.counters(Direction.TO_SERVER).forwarded
        ann.client.send("over tcp")
        message = await bob.heard.next(MessageReceived, lambda event: event.text == "over tcp", timeout=WAIT)
        self.assertEqual(message.sender, "ann")
        await ann.heard.next(MessageStateChanged, lambda event: event.state == "sent", timeout=WAIT)
        self.assertEqual(proxy.counters(Direction.TO_SERVER).forwarded, forwarded, "nothing went by UDP")

        proxy.block("both", on=False)
        for person in (ann, bob):
            changed = await person.heard.next(DeliveryPathChanged, lambda event: event.path == "udp", timeout=15.0)
            self.assertEqual(changed.text, "UDP works again: messages go over UDP")
        # The server moves each member back with its keepalive by UDP.
        await until(
            lambda: all(not member.on_tcp for room in service.server.store.rooms() for member in room.members.values()),
            "the server sends by UDP again",
        )
        before = proxy.counters(Direction.TO_CLIENT).forwarded
        bob.client.send("over udp")
        await ann.heard.next(MessageReceived, lambda event: event.text == "over udp", timeout=WAIT)
        self.assertGreater(proxy.counters(Direction.TO_CLIENT).forwarded, before)

    async def test_blocked_in_the_middle_with_the_servers_keepalive_interval(self) -> None:
        # The server's default keepalive interval (30 s): the sender finds the
        # block from its own unanswered message (3 s), the listener from its
        # keepalives (every DELIVERY_KEEPALIVE at most, shortened here to keep
        # the test short), and then gets what it missed by repair.
        self.patch(chatd.client.core, "DELIVERY_KEEPALIVE", 1.0)
        service = self.serve()
        proxy, port = self.impaired(service, seed=3)
        ann = await self.member(service, port, "ann", create=True)
        bob = await self.member(service, port, "bob")
        ann.client.send("before")
        await bob.heard.next(MessageReceived, lambda event: event.text == "before", timeout=WAIT)
        proxy.block("both")
        ann.client.send("during")
        changed = await ann.heard.next(DeliveryPathChanged, timeout=8.0)
        self.assertEqual(changed.path, "tcp")
        await bob.heard.next(DeliveryPathChanged, lambda event: event.path == "tcp", timeout=15.0)
        message = await bob.heard.next(MessageReceived, lambda event: event.text == "during", timeout=WAIT)
        self.assertEqual((message.sender, message.history), ("ann", False))
        self.assertEqual([e.text for e in self.shown(bob)], ["before", "during"])

    async def test_udp_blocked_from_the_start(self) -> None:
        service = self.serve(keepalive_interval=0.5)
        proxy, port = self.impaired(service, seed=2)
        proxy.block("both")
        ann = await self.member(service, port, "ann", create=True)
        bob = await self.member(service, port, "bob")
        for person in (ann, bob):
            await person.heard.next(DeliveryPathChanged, lambda event: event.path == "tcp", timeout=15.0)
        bob.client.send("hello")
        ann.client.send("hi")
        self.assertEqual((await ann.heard.next(MessageReceived, timeout=WAIT)).text, "hello")
        self.assertEqual((await bob.heard.next(MessageReceived, timeout=WAIT)).text, "hi")
        self.assertEqual(proxy.counters(Direction.TO_CLIENT).forwarded, 0)

    async def test_the_lossy_benchmark_runs(self) -> None:
        service = self.serve(keepalive_interval=1.0)
        arguments = lossy.make_parser().parse_args(
            [
                "--tcp-port",
                str(service.tcp_port),
                "--udp-port",
                str(service.udp_port),
                "--loss",
                "0.1",
                "--messages",
                "15",
                "--rate",
                "50",
                "--timeout",
                "20",
            ]
        )
        out = io.StringIO()
        with redirect_stdout(out):
            figures = await ensureDeferred(lossy.run_one(REACTOR, arguments, 0.1, 0))
        self.assertEqual((figures.pairs, figures.delivered, figures.duplicates), (90, 90, 0))
        self.assertEqual(figures.order_violations, 0)
        self.assertIsNotNone(figures.latency_p99_ms)
        self.assertGreater(figures.dropped_by_proxy, 0)
