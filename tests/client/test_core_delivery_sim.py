"""
Reliable delivery end to end in the client core: three whole ClientCores
(chatd.client.core with chatd.client.reliable) talk through a seeded lossy
network (tests/lossy_network.py: 20 % loss, reordering, duplicates, both
ways) to the server model of tests/delivery_model.py, on a simulated clock.
Every message must reach every other member exactly once, in room order,
and every sender must see each of its messages acknowledged.

Around the model, L{SealedServer} does what the daemon does around its
rules: a key per membership (a new one after each reconnection), sealing and
opening, the member's path (the transport of its last KEEPALIVE), PROBEs
answered by UDP, and operation 8 frames on the control connection, which
the simulation carries reliably and in order (TCP), and cuts when a member
is disconnected. The cores get only bytes and times, as from ChatClient.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass, field
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.core import (
    Action,
    CancelTimer,
    ClientCore,
    Connect,
    ConnectionState,
    CoreConfig,
    Emit,
    Membership,
    Reconnect,
    SendDatagram,
    SendFrame,
    StartTimer,
)
from chatd.client.events import MessageReceived, MessageStateChanged
from chatd.protocol.datagrams import FrameType
from chatd.protocol.delivery import MAX_NATIVE_DATAGRAM, encode_latest
from chatd.protocol.errors import ConnectionFailedError, ProtocolError
from chatd.protocol.seal import Channel, Direction, peek_header
from chatd.protocol.wire import Frame, FrameDecoder, Operation, State, encode_frame
from tests.delivery_model import ServerModel
from tests.lossy_network import LossyNetwork, SimulatedRoom, expected_shown

SERVER = "server"
SERVER_UDP = ("192.0.2.1", 9002)
ROOM = "hoge"
KEEPALIVE_INTERVAL = 5.0
"""The servers' 30 s would make the tail's repair wait as long; short enough for the simulation's minutes."""
TCP_DELAY = 0.03


@dataclass
class _Member:
    name: str
    channel: Channel
    connection: int
    on_tcp: bool = False


class SealedServer:
    """The daemon's part around the model's rules: keys, sealing, paths, operation 8."""

    def __init__(self, model: ServerModel, rng: random.Random) -> None:
        self.model = model
        self.rng = rng
        self.members: dict[str, _Member] = {}
        self.keys: dict[int, _Member] = {}
        self.datagrams_over_limit = 0
        self.tunneled_in = 0

    def enter(self, name: str, host: bool, connection: int, history: int) -> dict[str, Any]:
        """A create or join answer (docs/protocol.md 4.2), under a new key for a new membership."""
        epoch, seq, history_from = self.model.join(name, history)
        key = self.rng.randbytes(32)
        key_id = self.rng.randrange(1, 1 << 32)
        member = _Member(name, Channel(key, key_id, Direction.TO_CLIENT), connection)
        self.members[name] = member
        self.keys[key_id] = member
        return {
            "chatd": 1,
            "token": "t",
            "key": base64.b64encode(key).decode(),
            "key_id": key_id,
            "room": ROOM,
            "user": name,
            "host": host,
            "members": sorted(self.members),
            "idle_timeout": 300.0,
            "keepalive_interval": KEEPALIVE_INTERVAL,
            "features": ["delivery"],
            "delivery": {"epoch": epoch, "seq": seq, "history_from": history_from},
        }

    def leave(self, name: str) -> None:
        member = self.members.pop(name, None)
        if member is not None:
            del self.keys[member.channel.key_id]
        self.model.leave(name)

    def received(self, now: float, sealed: bytes, connection: int | None) -> list[tuple[str, bytes, bool]]:
        """
        A sealed frame from a client, by UDP (C{connection} None) or inside
        operation 8 on that connection: the sealed frames to send,
        (member, bytes, over TCP).
        """
        try:
            member = self.keys[peek_header(sealed).key_id]
            frame_type, body = member.channel.open(sealed)
        except (KeyError, ProtocolError):
            return []  # an old key (before a reconnection), a replay: dropped as the daemon drops them
        if connection is not None:
            if connection != member.connection:
                return []
            self.tunneled_in += 1
        if frame_type == FrameType.PROBE:
            # By UDP to its source, whatever the path; it never moves the path.
            ack = member.channel.seal(FrameType.KEEPALIVE_ACK, encode_latest(self.model.latest))
            return [(member.name, ack, connection is not None)]
        if frame_type == FrameType.KEEPALIVE:
            member.on_tcp = connection is not None
        out = []
        for destination, (kind, out_body) in self.model.receive(now, member.name, (FrameType(frame_type), body)):
            target = self.members.get(destination)
            if target is None:
                continue
            data = target.channel.seal(kind, out_body)
            out.append((destination, data, target.on_tcp or len(data) > MAX_NATIVE_DATAGRAM))
        return out


@dataclass
class CoreClient:
    """One ClientCore and what the simulation keeps for it: its timers, its connection, what it heard."""

    name: str
    core: ClientCore
    host: bool
    timers: dict[str, float] = field(default_factory=dict)
    connection: int = 0
    """The control connection's number; 0 while there is none."""
    offline_until: float = 0.0
    received: list[MessageReceived] = field(default_factory=list)
    states: list[MessageStateChanged] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    posted: dict[int, str] = field(default_factory=dict)
    udp_sizes: list[int] = field(default_factory=list)

    def deadline(self) -> float | None:
        return min(self.timers.values(), default=None)

    def sent(self) -> dict[int, MessageStateChanged]:
        return {s.message_id: s for s in self.states if s.state == "sent"}


class CoreSimulation(SimulatedRoom):
    def __init__(self, seed: int, *, loss: float = 0.2, duplicate: float = 0.05, ring_size: int = 512) -> None:
        self.rng = random.Random(seed)
        self.udp: LossyNetwork[bytes] = LossyNetwork(self.rng, loss=loss, duplicate=duplicate, delay=(0.005, 0.06))
        # TCP: no loss, one delay for all, so in order.
        self.tcp: LossyNetwork[tuple[int, bytes]] = LossyNetwork(self.rng, delay=(TCP_DELAY, TCP_DELAY))
        self.model = ServerModel(ring_size=ring_size)
        self.server = SealedServer(self.model, self.rng)
        self.clients: dict[str, CoreClient] = {}
        self.server_decoders: dict[tuple[str, int], FrameDecoder] = {}
        self.now = 0.0
        self.steps = 0
        self.history: dict[str, int] = {}

    # -- the clients -----------------------------------------------------------------------

    def join(self, name: str, history: int = 50) -> CoreClient:
        """A core enters the room: the first one creates it (its host), the others join."""
        host = not self.clients
        core = ClientCore(CoreConfig(delivery=True, first_retry_delay=0.5, max_retry_delay=2.0), lambda: 0.5)
        client = CoreClient(name, core, host)
        self.clients[name] = client
        self.history[name] = history
        wanted = Membership(Operation.CREATE if host else Operation.JOIN, ROOM, name, None, None)
        core.start(wanted)
        self.connect(client)
        self.run(client, core.ask_room(wanted, self.now)[1])
        self.step_until(self.now + 0.2)
        assert core.state is ConnectionState.IN_ROOM and core.delivery
        return client

    def connect(self, client: CoreClient) -> list[Action]:
        client.connection = max(client.connection, 0) + 1
        self.server_decoders[(client.name, client.connection)] = FrameDecoder(1 << 16)
        return client.core.control_opened(SERVER_UDP)

    def disconnect(self, name: str, until: float) -> None:
        """C{name}'s connection breaks (the server forgets the member) and cannot be made again before C{until}."""
        client = self.clients[name]
        self.server.leave(name)
        client.connection = -client.connection  # what is still on the wire for it is lost
        client.offline_until = until
        self.run(client, client.core.control_lost("Connection to the other side was lost", self.now))

    def post(self, name: str, text: str) -> None:
        client = self.clients[name]
        message_id, actions = client.core.post(text, self.now)
        assert message_id is not None
        client.posted[message_id] = text
        self.run(client, actions)

    def run(self, client: CoreClient, actions: list[Action]) -> None:
        """Carry out a core's actions, as ChatClient does."""
        for action in actions:
            if isinstance(action, StartTimer):
                client.timers[action.name] = self.now + action.delay
            elif isinstance(action, CancelTimer):
                client.timers.pop(action.name, None)
            elif isinstance(action, SendDatagram):
                client.udp_sizes.append(len(action.data))
                self.udp.send(self.now, client.name, SERVER, action.data)
            elif isinstance(action, SendFrame):
                if client.connection > 0:
                    self.tcp.send(self.now, client.name, SERVER, (client.connection, action.data))
            elif isinstance(action, Emit):
                event = action.event
                client.events.append(event)
                if isinstance(event, MessageReceived):
                    client.received.append(event)
                elif isinstance(event, MessageStateChanged):
                    client.states.append(event)
                    if event.state == "not delivered":
                        # The user types /retry at once.
                        self.run(client, client.core.retry(self.now)[1])
            elif isinstance(action, Reconnect):
                client.timers["reconnect"] = self.now + action.delay
            elif isinstance(action, Connect):
                if self.now < client.offline_until:
                    self.run(client, client.core.rejoin_failed(ConnectionFailedError("refused"), self.now))
                else:
                    self.run(client, self.connect(client))

    def fire(self, client: CoreClient, name: str) -> None:
        del client.timers[name]
        if name == "reconnect":
            self.run(client, client.core.reconnect_due(self.now))
        else:
            self.run(client, client.core.timer_fired(name, self.now))

    # -- the server ------------------------------------------------------------------------------

    def server_stream(self, name: str, connection: int, data: bytes) -> None:
        """Bytes from a client's control connection: a create or join, or operation 8."""
        decoder = self.server_decoders[(name, connection)]
        decoder.feed(data)
        while (frame := decoder.next()) is not None:
            assert isinstance(frame, Frame)
            if frame.operation in (Operation.CREATE, Operation.JOIN):
                assert json.loads(frame.payload)["features"] == ["delivery"]
                if name in self.server.members:
                    self.server.leave(name)
                answer = self.server.enter(name, frame.operation is Operation.CREATE, connection, self.history[name])
                reply = encode_frame(Frame(frame.operation, State.ACKNOWLEDGE, ROOM, b"\x00"))
                reply += encode_frame(Frame(frame.operation, State.COMPLETE, ROOM, json.dumps(answer).encode()))
                self.tcp.send(self.now, SERVER, name, (connection, reply))
            elif frame.operation is Operation.DATAGRAM:
                self.from_server(self.server.received(self.now, frame.payload, connection))

    def from_server(self, out: list[tuple[str, bytes, bool]]) -> None:
        for name, data, over_tcp in out:
            if over_tcp:
                member = self.server.members.get(name)
                if member is not None:
                    frame = encode_frame(Frame(Operation.DATAGRAM, State.COMPLETE, ROOM, data))
                    self.tcp.send(self.now, SERVER, name, (member.connection, frame))
            else:
                assert len(data) <= MAX_NATIVE_DATAGRAM
                self.udp.send(self.now, SERVER, name, data)

    # -- the clock ----------------------------------------------------------------------------------

    def step_until(self, time: float) -> None:
        """Run every event up to C{time}."""
        while True:
            self.steps += 1
            assert self.steps < 3_000_000, "the simulation does not settle"
            candidates = [t for t in (self.udp.next_time(), self.tcp.next_time()) if t is not None]
            candidates += [d for c in self.clients.values() if (d := c.deadline()) is not None]
            upcoming = max(min(candidates, default=time + 1), self.now)
            if upcoming > time:
                self.now = time
                return
            self.now = upcoming
            for delivery in self.udp.deliver(self.now):
                if delivery.destination == SERVER:
                    self.from_server(self.server.received(self.now, delivery.payload, None))
                else:
                    client = self.clients[str(delivery.destination)]
                    self.run(client, client.core.datagram_received(delivery.payload, SERVER_UDP, self.now))
            for segment in self.tcp.deliver(self.now):
                connection, data = segment.payload
                if segment.destination == SERVER:
                    if self.clients[str(segment.source)].connection == connection:
                        self.server_stream(str(segment.source), connection, data)
                else:
                    client = self.clients[str(segment.destination)]
                    if client.connection == connection:
                        self.run(client, client.core.control_received(data, self.now))
            for client in self.clients.values():
                for name, deadline in sorted(client.timers.items(), key=lambda item: item[1]):
                    if deadline <= self.now and name in client.timers:
                        self.fire(client, name)

    def settled(self) -> bool:
        for client in self.clients.values():
            session = client.core._delivery
            if client.core.state is not ConnectionState.IN_ROOM or session.outbox.unacknowledged:
                return False
            timeline = session.timeline
            if timeline is None or timeline.last_shown != self.model.latest or timeline.gaps:
                return False
        return True


class CoreDeliverySimulationTests(SynchronousTestCase):
    def check_room(self, sim: CoreSimulation, names: list[str], *, history: dict[str, int] | None = None) -> None:
        """Every core showed every other member's messages once, in room order, and got all its own acknowledged."""
        room = [(sender, sim.clients[sender].posted[message_id]) for sender, message_id in sim.model.relayed]
        self.assertEqual(len(set(sim.model.relayed)), len(sim.model.relayed), "a message numbered twice")
        for name in names:
            client = sim.clients[name]
            sent = client.sent()
            self.assertEqual(sorted(sent), sorted(client.posted), f"{name}: not all acknowledged")
            self.assertEqual(len(sent), len([s for s in client.states if s.state == "sent"]), "acknowledged twice")
            for state in sent.values():
                assert state.seq is not None
                self.assertEqual(room[state.seq - 1], (name, client.posted[state.message_id]))
            seqs = [m.seq for m in client.received]
            numbered = {seq for seq in seqs if seq is not None}
            self.assertEqual(seqs, sorted(numbered), "out of order or twice")
            expected = expected_shown(room, name, (history or {}).get(name, 0), numbered)
            self.assertEqual([(m.seq, m.sender, m.text) for m in client.received], expected)
            self.assertLessEqual(max(client.udp_sizes, default=0), MAX_NATIVE_DATAGRAM)

    def test_three_cores_thousand_messages_each(self) -> None:
        sim = CoreSimulation(seed=12)
        names = ["ann", "bob", "cat"]
        for name in names:
            sim.join(name)
        sim.chat(names, 1000)
        sim.settle()
        self.check_room(sim, names)
        self.assertEqual(sim.model.latest, 3000)
        for client in sim.clients.values():
            stats = client.core.delivery_stats
            assert stats is not None
            self.assertFalse(any(m.history for m in client.received))
            # The network was hard on everyone: the repair and retransmission paths all ran.
            self.assertGreater(stats.retransmissions, 100)
            self.assertGreater(stats.repaired, 100)
            self.assertGreater(stats.duplicates, 0)
            self.assertEqual(stats.missed, 0)
        self.assertGreater(sim.udp.duplicated, 100)

    def test_lost_tail_found_by_keepalive(self) -> None:
        """The room's last message lost on its way to bob: the keepalive answer's latest number brings it."""
        sim = CoreSimulation(seed=3, loss=0.0, duplicate=0.0)
        for name in ("ann", "bob"):
            sim.join(name)
        sim.chat(["ann"], 20)
        sim.settle()
        sim.udp.drop_once(lambda source, destination, data: destination == "bob")
        sim.post("ann", "the last word")
        sim.step_until(sim.now + 0.5)
        bob = sim.clients["bob"]
        self.assertEqual(bob.received[-1].seq, 20)
        sim.settle()
        self.assertEqual(bob.received[-1].text, "the last word")
        stats = bob.core.delivery_stats
        assert stats is not None
        self.assertEqual(stats.repaired, 1)
        self.check_room(sim, ["ann", "bob"])

    def test_history_on_join(self) -> None:
        sim = CoreSimulation(seed=7)
        for name in ("ann", "bob"):
            sim.join(name)
        sim.chat(["ann", "bob"], 60)
        sim.settle()
        cat = sim.join("cat", history=50)
        sim.settle()
        self.assertEqual([m.seq for m in cat.received if m.history], list(range(71, 121)))
        sim.chat(["ann", "bob", "cat"], 30)
        sim.settle()
        self.assertFalse(any(m.history for m in cat.received[50:]))
        self.check_room(sim, ["ann", "bob", "cat"], history={"cat": 120})

    def test_resume_after_reconnect(self) -> None:
        """bob is away while the room goes on; back under the same epoch, he gets what he missed, once each."""
        sim = CoreSimulation(seed=9)
        names = ["ann", "bob", "cat"]
        for name in names:
            sim.join(name)
        sim.chat(names, 100)
        sim.disconnect("bob", until=sim.now + 3.0)
        sim.chat(["ann", "cat"], 100)
        sim.post("bob", "typed while away")
        sim.settle()
        self.check_room(sim, names)
        bob = sim.clients["bob"]
        self.assertFalse(any(m.history for m in bob.received))
        self.assertIn("Reconnected", [type(e).__name__ for e in bob.events])

    def test_udp_blocked(self) -> None:
        """UDP blocked both ways for a while: everything goes over TCP, then back to UDP, nothing lost."""
        sim = CoreSimulation(seed=13, loss=0.05)
        names = ["ann", "bob", "cat"]
        for name in names:
            sim.join(name)
        sim.udp.blocked = lambda source, destination, data: "bob" in (source, destination)
        sim.chat(names, 100, interval=0.05)
        sim.settle()
        bob = sim.clients["bob"]
        self.assertEqual(bob.core.delivery_path, "tcp")
        self.assertGreater(sim.server.tunneled_in, 50)
        sim.udp.blocked = None
        sim.step_until(sim.now + 40)
        self.assertEqual(bob.core.delivery_path, "udp")
        sim.chat(names, 20)
        sim.settle()
        self.check_room(sim, names)
        paths = [e.path for e in bob.events if type(e).__name__ == "DeliveryPathChanged"]
        self.assertEqual(paths[:2], ["tcp", "udp"])
