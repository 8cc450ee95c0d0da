"""
The key test of the client's reliable delivery: three clients, each an
Outbox and a Timeline sharing an RttEstimator, talk through a seeded lossy
network (20 % loss, reordering, duplicates, both ways) to a minimal model of
the server, on a simulated clock. Every message must reach every other member
exactly once, in room order, and every sender must see each of its messages
acknowledged.

The server model (tests/delivery_model.py) is plain test code following
docs/reliability.md, section 3; it is not the daemon, whose relay gets its
own test behind the same network. Frames go through the real codecs of
chatd.protocol.delivery. tests/client/test_core_delivery_sim.py runs whole
client cores against the same model.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.delivery import DeliveryStats, MessageSent, Outbox, RttEstimator
from chatd.client.timeline import Missed, RoomRecreated, Shown, Timeline, TimelineItem
from chatd.protocol.datagrams import FrameType
from chatd.protocol.delivery import (
    decode_latest,
    decode_posted,
    decode_range,
    decode_sent,
    encode_range,
    encode_send,
)
from tests.delivery_model import ModelFrame, ServerModel
from tests.lossy_network import LossyNetwork, SimulatedRoom, expected_shown

SERVER = "server"
Frame = ModelFrame


class SimClient:
    """A client made of the delivery objects, as the core will drive them, with a /retry-happy user."""

    KEEPALIVE_INTERVAL = 1.0

    def __init__(self, name: str, start: tuple[str, int, int], now: float) -> None:
        self.name = name
        self.stats = DeliveryStats()
        self.rtt = RttEstimator()
        self.outbox = Outbox(self.rtt, self.stats)
        self.timeline = Timeline(*start, now, own_name=name, rtt=self.rtt, stats=self.stats)
        self.items: list[TimelineItem] = []
        self.acknowledged: dict[int, MessageSent] = {}
        self.posted: dict[int, str] = {}
        self.failures = 0
        self.next_keepalive = now + self.KEEPALIVE_INTERVAL
        self.connected = True

    def post(self, text: str) -> None:
        self.posted[self.outbox.post(text)] = text

    def rejoin(self, start: tuple[str, int, int], now: float) -> None:
        self.connected = True
        self.items += self.timeline.resume(*start, now)
        self.outbox.resend_all()

    def deadline(self) -> float:
        times = [self.outbox.next_deadline(), self.timeline.next_deadline(), self.next_keepalive]
        return min(t for t in times if t is not None)

    def tick(self, now: float, network: LossyNetwork[Frame]) -> None:
        if not self.connected:
            return
        due = self.outbox.due(now)
        for outgoing in due.sends:
            network.send(now, self.name, SERVER, (FrameType.SEND, encode_send(outgoing.message_id, outgoing.text)))
        if due.failed:
            # The user types /retry at once: the message goes again under its id.
            self.failures += len(due.failed)
            self.outbox.retry()
        for wanted in self.timeline.repairs_due(now):
            network.send(now, self.name, SERVER, (FrameType.REPAIR, encode_range(wanted.first, wanted.last)))
        if now >= self.next_keepalive:
            network.send(now, self.name, SERVER, (FrameType.KEEPALIVE, b""))
            self.next_keepalive = now + self.KEEPALIVE_INTERVAL

    def receive(self, now: float, frame: Frame) -> None:
        kind, body = frame
        if kind is FrameType.SENT:
            sent = decode_sent(body)
            acknowledged = self.outbox.acknowledged(sent, now)
            if acknowledged is not None:
                assert sent.message_id not in self.acknowledged, "acknowledged twice"
                self.acknowledged[sent.message_id] = acknowledged
            self.items += self.timeline.own_sent(sent.seq, now)
        elif kind is FrameType.POSTED:
            self.items += self.timeline.posted(decode_posted(body), now)
        elif kind is FrameType.GONE:
            self.items += self.timeline.gone(decode_range(body), now)
        elif kind is FrameType.KEEPALIVE_ACK:
            self.items += self.timeline.latest(decode_latest(body), now)
        else:
            raise AssertionError(f"unexpected frame {kind}")

    def shown(self) -> list[Shown]:
        return [item for item in self.items if isinstance(item, Shown)]


class Simulation(SimulatedRoom):
    def __init__(self, seed: int, *, loss: float = 0.2, duplicate: float = 0.05, ring_size: int = 512) -> None:
        self.rng = random.Random(seed)
        self.network: LossyNetwork[Frame] = LossyNetwork(self.rng, loss=loss, duplicate=duplicate, delay=(0.005, 0.06))
        self.server = ServerModel(ring_size=ring_size)
        self.clients: dict[str, SimClient] = {}
        self.now = 0.0
        self.steps = 0

    def join(self, name: str, history: int = 50) -> SimClient:
        client = SimClient(name, self.server.join(name, history), self.now)
        self.clients[name] = client
        return client

    def step_until(self, time: float) -> None:
        """Run every event up to C{time}."""
        while True:
            self.steps += 1
            assert self.steps < 2_000_000, "the simulation does not settle"
            candidates = [c.deadline() for c in self.clients.values() if c.connected]
            arrival = self.network.next_time()
            if arrival is not None:
                candidates.append(arrival)
            upcoming = max(min(candidates), self.now)
            if upcoming > time:
                self.now = time
                return
            self.now = upcoming
            for delivery in self.network.deliver(self.now):
                if delivery.destination == SERVER:
                    for destination, frame in self.server.receive(self.now, str(delivery.source), delivery.payload):
                        self.network.send(self.now, SERVER, destination, frame)
                else:
                    client = self.clients[str(delivery.destination)]
                    if client.connected:
                        client.receive(self.now, delivery.payload)
            for client in self.clients.values():
                client.tick(self.now, self.network)

    def post(self, name: str, text: str) -> None:
        self.clients[name].post(text)

    def settled(self) -> bool:
        return all(
            not c.outbox.unacknowledged and c.timeline.last_shown == self.server.latest and not c.timeline.gaps
            for c in self.clients.values()
        )


class DeliverySimulationTests(SynchronousTestCase):
    def check_room(self, sim: Simulation, names: list[str], *, history: dict[str, int] | None = None) -> None:
        """Every member shows every other member's messages once, in room order, and got all its own acknowledged."""
        room = [(sender, sim.clients[sender].posted[message_id]) for sender, message_id in sim.server.relayed]
        self.assertEqual(len(set(sim.server.relayed)), len(sim.server.relayed), "a message numbered twice")
        for name in names:
            client = sim.clients[name]
            self.assertEqual(sorted(client.acknowledged), sorted(client.posted))
            self.assertEqual(client.outbox.unacknowledged, 0)
            seqs = {sent.seq for sent in client.acknowledged.values()}
            self.assertEqual(len(seqs), len(client.acknowledged))
            for sent in client.acknowledged.values():
                self.assertEqual(room[sent.seq - 1], (name, client.posted[sent.message_id]))
            shown = client.shown()
            self.assertEqual([s.seq for s in shown], sorted({s.seq for s in shown}), "out of order or twice")
            expected = expected_shown(room, name, (history or {}).get(name, 0), {s.seq for s in shown})
            self.assertEqual([(s.seq, s.sender, s.text) for s in shown], expected)

    def test_three_clients_thousand_messages_each(self) -> None:
        sim = Simulation(seed=12)
        names = ["ann", "bob", "cat"]
        for name in names:
            sim.join(name)
        sim.chat(names, 1000)
        sim.settle()
        self.check_room(sim, names)
        self.assertEqual(sim.server.latest, 3000)
        for client in sim.clients.values():
            self.assertFalse(any(s.history for s in client.shown()))
            # The network was hard on everyone: the repair and retransmission paths all ran.
            self.assertGreater(client.stats.retransmissions, 100)
            self.assertGreater(client.stats.repaired, 100)
            self.assertGreater(client.stats.duplicates, 0)
            self.assertEqual(client.stats.missed, 0)
        self.assertGreater(sim.network.duplicated, 100)

    def test_lost_tail_found_by_keepalive(self) -> None:
        """The room's last message lost on its way to bob: the keepalive answer's latest number brings it."""
        sim = Simulation(seed=3, loss=0.0, duplicate=0.0)
        for name in ("ann", "bob"):
            sim.join(name)
        sim.chat(["ann"], 20)
        sim.settle()
        sim.network.drop_once(lambda source, destination, frame: destination == "bob")
        sim.clients["ann"].post("the last word")
        sim.step_until(sim.now + 0.5)
        self.assertEqual(sim.clients["bob"].timeline.last_shown, 20)
        sim.settle()
        self.assertEqual(sim.clients["bob"].shown()[-1].text, "the last word")
        self.assertEqual(sim.clients["bob"].stats.repaired, 1)
        self.check_room(sim, ["ann", "bob"])

    def test_lossy_tail(self) -> None:
        """The same under loss: every run ends with whatever tail was lost being repaired."""
        sim = Simulation(seed=5)
        names = ["ann", "bob", "cat"]
        for name in names:
            sim.join(name)
        for round_ in range(20):
            sim.clients[names[round_ % 3]].post(f"tail {round_}")
            sim.settle()
        self.check_room(sim, names)

    def test_history_on_join(self) -> None:
        sim = Simulation(seed=7)
        for name in ("ann", "bob"):
            sim.join(name)
        sim.chat(["ann", "bob"], 60)
        sim.settle()
        cat = sim.join("cat", history=50)
        sim.settle()
        history = [s for s in cat.shown() if s.history]
        self.assertEqual([s.seq for s in history], list(range(71, 121)))
        sim.chat(["ann", "bob", "cat"], 30)
        sim.settle()
        self.assertFalse(any(s.history for s in cat.shown()[50:]))
        self.check_room(sim, ["ann", "bob", "cat"], history={"cat": 120})

    def test_resume_after_reconnect(self) -> None:
        """bob is away while the room goes on; back under the same epoch, he gets what he missed, once each."""
        sim = Simulation(seed=9)
        names = ["ann", "bob", "cat"]
        for name in names:
            sim.join(name)
        sim.chat(names, 100)
        bob = sim.clients["bob"]
        sim.server.leave("bob")
        bob.connected = False
        sim.chat(["ann", "cat"], 100)
        bob.post("typed while away")
        sim.step_until(sim.now + 5)
        bob.rejoin(sim.server.join("bob"), sim.now)
        sim.settle()
        self.check_room(sim, names)
        self.assertFalse(any(s.history for s in bob.shown()))

    def test_resume_past_the_history(self) -> None:
        """Away longer than the ring holds: "N messages missed" in its place, then the rest in order."""
        sim = Simulation(seed=10, ring_size=64)
        names = ["ann", "bob"]
        for name in names:
            sim.join(name)
        sim.chat(names, 10)
        sim.settle()
        bob = sim.clients["bob"]
        sim.server.leave("bob")
        bob.connected = False
        sim.chat(["ann"], 200)
        sim.step_until(sim.now + 2)
        bob.rejoin(sim.server.join("bob"), sim.now)
        sim.settle()
        missed = [item for item in bob.items if isinstance(item, Missed)]
        self.assertEqual(sum(m.count for m in missed), sim.server.latest - 64 - 20)
        self.assertEqual(bob.stats.missed, sim.server.latest - 64 - 20)
        first_missed = bob.items.index(missed[0])
        self.assertEqual(bob.shown()[-1].seq, sim.server.latest)
        self.assertTrue(all(isinstance(item, Shown) for item in bob.items[first_missed + len(missed) :]))
        self.assertEqual([s.seq for s in bob.shown()[-64:]], list(range(sim.server.latest - 63, sim.server.latest + 1)))

    def test_room_created_again(self) -> None:
        sim = Simulation(seed=11)
        names = ["ann", "bob"]
        for name in names:
            sim.join(name)
        sim.chat(names, 20)
        sim.settle()
        bob = sim.clients["bob"]
        sim.server.leave("bob")
        bob.connected = False
        sim.server.recreate()
        sim.clients["ann"].timeline.resume(*sim.server.join("ann"), sim.now)
        sim.clients["ann"].post("new room")
        sim.step_until(sim.now + 3)
        bob.rejoin(sim.server.join("bob"), sim.now)
        sim.settle()
        self.assertIn(RoomRecreated(sim.server.epoch), bob.items)
        self.assertEqual(bob.shown()[-1].text, "new room")
        self.assertTrue(bob.shown()[-1].history)
