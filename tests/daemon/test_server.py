"""chatd.daemon.controller: notices (linear in the room, coalesced), operation 7, the sweep, a clean stop."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from chatd.daemon.interfaces import IDatagramNotices, IMemberConnection, IRelayObserver, IRoomObserver
from chatd.daemon.rooms import Member
from chatd.daemon.tcp import RoomProtocol
from chatd.protocol.payloads import MODEL_ROOM_CLOSED, Dialect, RoomRequest
from chatd.protocol.wire import Frame, Operation, SizeEncoding, State
from tests.helpers import capture_events, connect, frames, make_server, request

ASCII = SizeEncoding.ASCII


class ChatServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server()

    def test_interfaces(self) -> None:
        verifyObject(IRoomObserver, self.server)
        # The relay reaches the controller through a named interface, and is handed notices through another.
        verifyObject(IRelayObserver, self.server)
        self.assertIs(self.server.relay.observer, self.server)
        verifyObject(IDatagramNotices, self.server.relay)
        protocol, _ = connect(self.server)
        verifyObject(IMemberConnection, protocol)

    def test_stop_tells_everyone_and_closes_connections(self) -> None:
        host, host_transport = connect(self.server, port=1)
        host.dataReceived(request(Operation.CREATE, "hoge", "ann", ASCII))
        model = self.successResultOf(self.server.store.join_room("hoge", RoomRequest("bob"), Dialect.MODEL))
        self.server.store.bind_address(model, ("127.0.0.1", 5001))
        idle, idle_transport = connect(self.server, port=2)
        frames(host_transport)
        self.udp.written.clear()

        stopped = self.server.stop()
        (notice,) = frames(host_transport)
        self.assertEqual(notice.payload, b"* the server is shutting down; room hoge is closed")
        # The model member, by UDP, in the sentence its client ends on.
        self.assertEqual(self.udp.written, [(MODEL_ROOM_CLOSED.encode("utf-8"), ("127.0.0.1", 5001))])
        self.assertTrue(host_transport.disconnecting)
        self.assertTrue(idle_transport.disconnecting)
        self.assertEqual(self.server.store.rooms(), [])
        self.assertNoResult(stopped)
        host.connectionLost()
        self.assertNoResult(stopped)
        idle.connectionLost()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_aborts_connections_that_do_not_close(self) -> None:
        protocol, transport = connect(self.server)
        stopped = self.server.stop()
        self.clock.advance(self.server.settings.shutdown_grace)
        self.assertTrue(transport.disconnected)  # what StringTransport.abortConnection sets
        protocol.connectionLost()
        self.successResultOf(stopped)

    def test_stop_with_nothing_open(self) -> None:
        self.successResultOf(self.server.stop())

    def test_sweep_does_not_log_stats(self) -> None:
        # The sweep may run ten times a second; the counters have their own interval.
        events = capture_events(self)
        self.server.sweep()
        self.assertEqual([e for e in events if e.get("event") == "stats"], [])

    def test_log_stats(self) -> None:
        events = capture_events(self)
        self.server.relay.datagramReceived(b"\xff", ("127.0.0.1", 9))
        protocol, _ = connect(self.server)
        protocol.dataReceived(request(Operation.JOIN, "nowhere", "ann", ASCII))
        self.server.log_stats()
        (stats,) = [e for e in events if e.get("event") == "stats"]
        self.assertEqual((stats["refused_frames"], stats["refused_frames_room_not_found"]), (1, 1))
        self.assertEqual((stats["rooms"], stats["datagrams_in"], stats["dropped"]), (0, 1, 1))
        self.assertEqual(stats["dropped_malformed"], 1)
        self.assertEqual((stats["bytes_in"], stats["bytes_out"]), (1, 0))
        self.assertEqual(stats["rate_limited"], 0)
        for limit in ("datagrams", "connections", "password_attempts", "hashing", "hashing_per_host"):
            self.assertEqual(stats[f"rate_limited_{limit}"], 0)
        for limit in ("rooms_per_host", "invitations"):
            self.assertEqual(stats[f"refused_{limit}"], 0)

    def test_sweep_logs_repairs_as_a_bug_once(self) -> None:
        events = capture_events(self)
        host = self.successResultOf(self.server.store.create_room("lobby", RoomRequest("alice"), Dialect.SEED))
        # A half-done departure, as a bug could leave it: the room has lost its host.
        host.room.host = None
        self.server.sweep()
        self.assertEqual(self.server.store.rooms(), [])
        (bug,) = [e for e in events if e.get("event") == "store_repaired"]
        self.assertEqual(bug["log_level"], LogLevel.error)
        self.assertEqual(bug["repaired_rooms"], 1)
        self.server.sweep()
        self.assertEqual(len([e for e in events if e.get("event") == "store_repaired"]), 1)

    def test_rate_limit_hits(self) -> None:
        server, _, _ = make_server(connection_burst=1, limit_loopback=True)
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        server.tcp_factory.buildProtocol(peer)
        server.tcp_factory.buildProtocol(peer)
        self.assertEqual(
            server.rate_limit_hits(),
            {"datagrams": 0, "connections": 1, "password_attempts": 0, "hashing": 0, "hashing_per_host": 0},
        )

    def test_sweep_never_raises(self) -> None:
        def broken() -> None:
            raise RuntimeError("boom")

        self.server.store.expire = broken  # type: ignore[method-assign]
        self.server.sweep()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.server.rate_limit_hits = broken  # type: ignore[method-assign,assignment]
        self.server.log_stats()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Room:
    """Members of one room on string transports (seed, native) or the fake UDP port (model)."""

    def __init__(self, case: SynchronousTestCase, **overrides: Any) -> None:
        self.server, self.clock, self.udp = make_server(**overrides)
        self.interval = self.server.settings.presence_interval
        self.protocols: dict[str, RoomProtocol] = {}
        self.transports: dict[str, StringTransport] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self._ports = iter(range(20000, 30000))
        case.addCleanup(self._no_timer_left_after_stop)

    def settle(self) -> None:
        """Let every held change go out and every presence window end: the room is quiet."""
        while self.presence_timers():
            self.clock.advance(self.interval)

    def enter(self, name: str, dialect: Dialect = Dialect.NATIVE, room: str = "hoge") -> RoomProtocol | None:
        """C{name} creates or joins C{room}; its own answers are read and forgotten."""
        operation = Operation.JOIN if room in [each.name for each in self.server.store.rooms()] else Operation.CREATE
        port = next(self._ports)
        if dialect is Dialect.MODEL:
            entered = self.server.store.join_room(room, RoomRequest(name), Dialect.MODEL)
            entered.addCallback(lambda member: self.server.store.bind_address(member, ("127.0.0.1", port)))
            self.addresses[name] = ("127.0.0.1", port)
            return None
        protocol, transport = connect(self.server, port=port)
        if dialect is Dialect.NATIVE:
            protocol.dataReceived(request(operation, room, {"chatd": 1, "username": name}))
        else:
            protocol.dataReceived(request(operation, room, name, ASCII))
        replies = frames(transport)
        assert [reply.state for reply in replies][-1] is State.COMPLETE, replies
        self.protocols[name] = protocol
        self.transports[name] = transport
        return protocol

    def leave(self, name: str) -> None:
        self.protocols.pop(name).connectionLost()
        self.transports.pop(name)

    def member(self, name: str, room: str = "hoge") -> Member:
        (found,) = [each.members[name] for each in self.server.store.rooms() if each.name == room]
        return found

    def heard(self, name: str) -> list[str]:
        """What C{name} was told since last asked: notice texts (native: event and user)."""
        if name in self.addresses:
            address = self.addresses[name]
            told = [data.decode() for data, to in self.udp.written if to == address]
            self.udp.written[:] = [(data, to) for data, to in self.udp.written if to != address]
            return told
        out = []
        for frame in frames(self.transports[name]):
            self.assertNotice(frame)
            if frame.payload.startswith(b"{"):
                notice = json.loads(frame.payload)
                out.append(f"{notice['event']} {notice.get('user')}")
            else:
                out.append(frame.payload.decode())
        return out

    @staticmethod
    def assertNotice(frame: Frame) -> None:  # noqa: N802 - reads as an assertion
        assert (frame.operation, frame.state) == (Operation.NOTICE, State.COMPLETE), frame

    def forget(self) -> None:
        """Forget everything written so far."""
        for transport in self.transports.values():
            transport.clear()
        self.udp.written.clear()

    def bytes_written(self) -> int:
        """Every byte written to every member so far, by TCP and by UDP."""
        return sum(len(t.value()) for t in self.transports.values()) + sum(len(d) for d, _ in self.udp.written)

    def presence_timers(self) -> list[DelayedCall]:
        # Clock's calls are DelayedCalls, which say what they will call.
        calls = [call for call in self.clock.getDelayedCalls() if isinstance(call, DelayedCall)]
        return [call for call in calls if call.func == self.server._end_window]

    def _no_timer_left_after_stop(self) -> None:
        stopped = self.server.stop()
        for protocol in list(self.protocols.values()):
            protocol.connectionLost()
        self.clock.advance(self.server.settings.shutdown_grace)
        assert stopped.called
        assert self.clock.getDelayedCalls() == [], self.clock.getDelayedCalls()


NAME_WIDTH = 4
"""Member names of one width, so that a notice costs the same whoever it is about."""


class LinearNoticeTests(SynchronousTestCase):
    """
    What one outsider's visit (a join, then a leave an interval later) costs
    a room in notice bytes, all members together: linear in the room's size.
    Before notices carried only the change, each one held the whole member
    list, and a 250-member room paid 25 times per member what a 10-member one did.
    """

    def visit_cost(self, size: int, dialects: tuple[Dialect, ...]) -> int:
        room = _Room(self)
        for index in range(size):
            room.enter(f"m{index:0{NAME_WIDTH - 1}d}", dialects[index % len(dialects)])
        room.settle()  # the joins above went out; the room is quiet again
        room.forget()
        outsider, _transport = connect(room.server, port=9)
        outsider.dataReceived(request(Operation.JOIN, "hoge", {"chatd": 1, "username": "eve0"}))
        room.clock.advance(room.interval)
        outsider.connectionLost()
        room.clock.advance(room.interval)
        return room.bytes_written()

    def assert_linear(self, dialects: tuple[Dialect, ...], sizes: tuple[int, ...]) -> None:
        per_member = {size: self.visit_cost(size, dialects) / size for size in sizes}
        smallest = per_member[sizes[0]]
        self.assertGreater(smallest, 0)
        for size in sizes[1:]:
            self.assertLess(abs(per_member[size] - smallest) / smallest, 0.10, per_member)

    def test_native_room(self) -> None:
        self.assert_linear((Dialect.NATIVE,), (10, 50, 250))

    def test_mixed_room(self) -> None:
        # The host is native; then seed, model, native, ... in turn: sizes a multiple of 3 keep the mix.
        self.assert_linear((Dialect.NATIVE, Dialect.SEED, Dialect.MODEL), (12, 51, 249))

    def test_each_member_is_told_each_change_once(self) -> None:
        room = _Room(self)
        for name in ("ann", "bob", "cat"):
            room.enter(name)
        room.settle()
        room.forget()
        room.enter("eve")
        room.clock.advance(room.interval)
        room.leave("eve")
        for name in ("ann", "bob", "cat"):
            self.assertEqual(room.heard(name), ["joined eve", "left eve"])


class CoalescingTests(SynchronousTestCase):
    """A room's joins and leaves within one presence interval: the first at once, the rest as one batch."""

    def setUp(self) -> None:
        self.room = _Room(self)
        self.room.enter("ann")
        self.room.enter("bob")
        self.room.settle()
        self.room.forget()

    def test_burst(self) -> None:
        room = self.room
        room.enter("cat")
        self.assertEqual(room.heard("ann"), ["joined cat"])
        room.enter("dan")
        room.enter("eve")
        room.leave("bob")
        room.clock.advance(room.interval / 2)
        self.assertEqual([room.heard(name) for name in ("ann", "cat", "dan", "eve")], [[], [], [], []])
        room.clock.advance(room.interval / 2)
        self.assertEqual(room.heard("ann"), ["joined dan", "joined eve", "left bob"])
        # Each hears only what happened after it entered: its join's list had the rest.
        self.assertEqual(room.heard("cat"), ["joined dan", "joined eve", "left bob"])
        self.assertEqual(room.heard("dan"), ["joined eve", "left bob"])
        self.assertEqual(room.heard("eve"), ["left bob"])

    def test_batches_are_an_interval_apart(self) -> None:
        room = self.room
        room.enter("cat")
        room.enter("dan")
        room.clock.advance(room.interval)
        self.assertEqual(room.heard("ann"), ["joined cat", "joined dan"])
        # Something was just told: the next change waits for the next batch.
        room.enter("eve")
        self.assertEqual(room.heard("ann"), [])
        room.clock.advance(room.interval)
        self.assertEqual(room.heard("ann"), ["joined eve"])
        # A batch with nothing in it ends the window: the room is quiet, the next change goes at once.
        room.clock.advance(room.interval)
        self.assertEqual(room.presence_timers(), [])
        room.leave("eve")
        self.assertEqual(room.heard("ann"), ["left eve"])

    def test_join_and_leave_in_one_batch_say_nothing(self) -> None:
        room = self.room
        room.enter("cat")
        room.forget()
        for _visit in range(20):
            room.enter("eve")
            room.leave("eve")
        room.clock.advance(room.interval)
        self.assertEqual([room.heard(name) for name in ("ann", "bob", "cat")], [[], [], []])
        # Nothing was told, so nothing more is held back either.
        self.assertEqual(room.presence_timers(), [])

    def test_whoever_saw_a_cancelled_join_hears_of_the_leave(self) -> None:
        """dan's create or join answer listed eve: he must hear that she left, though ann never hears of her."""
        room = self.room
        room.enter("cat")
        room.enter("eve")
        room.enter("dan")
        room.leave("eve")
        room.forget()
        room.clock.advance(room.interval)
        self.assertEqual(room.heard("ann"), ["joined dan"])
        self.assertEqual(room.heard("cat"), ["joined dan"])
        self.assertEqual(room.heard("dan"), ["left eve"])

    def test_the_first_join_is_told_and_so_is_its_leave(self) -> None:
        room = self.room
        room.enter("eve")
        room.leave("eve")
        self.assertEqual(room.heard("ann"), ["joined eve"])
        room.clock.advance(room.interval)
        self.assertEqual(room.heard("ann"), ["left eve"])

    def test_leave_then_rejoin_is_told(self) -> None:
        """A rejoin under the same name is a new member, maybe someone else: both changes are told."""
        room = self.room
        room.enter("cat")
        room.leave("bob")
        room.enter("bob")
        room.clock.advance(room.interval)
        self.assertEqual(room.heard("ann"), ["joined cat", "left bob", "joined bob"])
        self.assertEqual(room.heard("cat"), ["left bob", "joined bob"])

    def test_legacy_members_are_coalesced_alike(self) -> None:
        room = self.room
        room.enter("sam", Dialect.SEED)
        room.enter("mo", Dialect.MODEL)
        room.settle()
        room.forget()
        room.enter("cat")
        room.enter("eve")
        room.leave("eve")
        room.enter("dan")
        self.assertEqual(room.heard("sam"), ["* cat joined hoge"])
        self.assertEqual(room.heard("mo"), ["* cat joined hoge"])
        room.clock.advance(room.interval)
        self.assertEqual(room.heard("sam"), ["* dan joined hoge"])
        self.assertEqual(room.heard("mo"), ["* dan joined hoge"])

    def test_timed_out_member_is_told_at_once(self) -> None:
        room = _Room(self, idle_timeout=10.0)
        room.enter("ann")
        room.enter("bob")
        room.clock.advance(10.5)
        room.server.store.touch(room.member("ann"))
        room.enter("cat")  # opens a window: bob's removal is held for the others
        room.forget()
        room.server.store.expire()
        self.assertEqual(room.heard("bob"), ["timed_out bob"])
        self.assertTrue(room.transports["bob"].disconnecting)
        self.assertEqual(room.heard("ann"), [])
        room.clock.advance(room.interval)
        self.assertEqual(room.heard("ann"), ["timed_out bob"])
        self.assertEqual(room.heard("cat"), ["timed_out bob"])

    def test_closing_drops_what_is_held(self) -> None:
        room = self.room
        room.enter("cat")
        room.enter("dan")
        room.forget()
        room.leave("ann")  # the host: the room closes
        self.assertEqual(room.presence_timers(), [])
        for name in ("bob", "cat", "dan"):
            self.assertEqual(room.heard(name), ["room_closed ann"])
        room.clock.advance(room.interval)
        for name in ("bob", "cat", "dan"):
            self.assertEqual(room.heard(name), [])

    def test_stop_leaves_no_timer(self) -> None:
        room = self.room
        room.enter("cat")
        room.enter("dan")
        self.assertEqual(len(room.presence_timers()), 1)
        room.forget()
        room.server.stop()
        self.assertEqual(room.presence_timers(), [])
        self.assertEqual(room.heard("bob"), ["server_stopping ann"])
        # The cleanup checks that nothing at all is left once the connections are gone.

    def test_rooms_are_paced_apart(self) -> None:
        room = self.room
        room.enter("cat")
        room.enter("zed", room="other")
        room.enter("yan", room="other")
        self.assertEqual(room.heard("zed"), ["joined yan"])
        self.assertEqual(room.heard("ann"), ["joined cat"])

    def test_no_interval_no_holding(self) -> None:
        room = _Room(self, presence_interval=0.0)
        room.enter("ann")
        room.enter("bob")
        room.enter("cat")
        room.leave("cat")
        self.assertEqual(room.heard("ann"), ["joined bob", "joined cat", "left cat"])
        self.assertEqual(room.presence_timers(), [])


class MembersOperationTests(SynchronousTestCase):
    """Operation 7: the member list on request, for native members only."""

    def setUp(self) -> None:
        self.room = _Room(self)
        self.room.enter("ann")
        self.room.enter("bob")
        self.room.forget()

    def ask(self, name: str, room: str = "hoge", encoding: SizeEncoding = SizeEncoding.BINARY) -> list[Frame]:
        self.room.protocols[name].dataReceived(request(Operation.MEMBERS, room, b"", encoding))
        return frames(self.room.transports[name])

    def test_native_member_gets_the_list_and_the_host(self) -> None:
        self.room.enter("cat")  # held: the list is exact all the same
        ack, complete = self.ask("bob")
        self.assertEqual(
            (ack.operation, ack.state, ack.room, ack.payload), (Operation.MEMBERS, State.ACKNOWLEDGE, "hoge", b"\x00")
        )
        self.assertEqual(
            (complete.operation, complete.state, complete.room), (Operation.MEMBERS, State.COMPLETE, "hoge")
        )
        self.assertEqual(complete.payload, b'{"chatd": 1, "members": ["ann", "bob", "cat"], "host": "ann"}')

    def test_the_bytes_of_the_example(self) -> None:
        """docs/protocol.md section 8.11, byte for byte."""
        room = _Room(self)
        room.enter("alice")
        room.enter("bob")
        room.forget()
        asked = request(Operation.MEMBERS, "hoge")
        self.assertEqual(asked, bytes.fromhex("0407" + 30 * "00" + "686f6765"))
        room.protocols["bob"].dataReceived(asked)
        self.assertEqual(
            room.transports["bob"].value(),
            bytes.fromhex(
                "040701" + 28 * "00" + "01" + "686f6765" + "00"
                "040702" + 28 * "00" + "3a" + "686f6765"
                "7b226368617464223a20312c20226d656d62657273223a205b22616c696365222c2022626f62225d2c2022686f7374223a2022616c696365227d"
            ),
        )

    def test_legacy_member_refused(self) -> None:
        self.room.enter("sam", Dialect.SEED)
        self.room.forget()
        (refusal,) = self.ask("sam", encoding=ASCII)
        self.assertEqual(
            (refusal.operation, refusal.state, refusal.payload), (Operation.MEMBERS, State.ACKNOWLEDGE, b"\x09")
        )
        self.assertFalse(self.room.transports["sam"].disconnecting)

    def test_before_entering_refused(self) -> None:
        protocol, transport = connect(self.room.server, port=7)
        protocol.dataReceived(request(Operation.MEMBERS, "hoge"))
        (refusal,) = frames(transport)
        self.assertEqual(
            (refusal.operation, refusal.state, refusal.payload[:1]), (Operation.MEMBERS, State.ACKNOWLEDGE, b"\x09")
        )
        self.assertFalse(transport.disconnecting)
        protocol.connectionLost()

    def test_another_room_refused(self) -> None:
        self.room.enter("zed", room="other")
        (refusal,) = self.ask("bob", room="other")
        self.assertEqual(refusal.payload[:1], b"\x09")
        self.assertEqual(json.loads(refusal.payload[1:])["status"], "not_permitted")
