"""Tests for chatd.daemon.tcp: the room protocol on a StringTransport, time on a Clock."""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.rooms import Member, credential_hash
from chatd.daemon.tcp import RoomProtocol
from chatd.protocol.errors import Status
from chatd.protocol.payloads import Dialect
from chatd.protocol.wire import HEADER_SIZE, Frame, Operation, SizeEncoding, State
from tests.helpers import SEED_EXAMPLE, ManualRunner, capture_events, connect, frames, make_server, request

ASCII = SizeEncoding.ASCII


def status_of(frame: Frame) -> Status:
    return Status(frame.payload[0])


class RoomProtocolTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.clock, self.udp = make_server()

    def enter(
        self,
        operation: Operation,
        user: str,
        room: str = "hoge",
        encoding: SizeEncoding = SizeEncoding.BINARY,
        port: int = 40000,
        **fields: Any,
    ) -> tuple[RoomProtocol, StringTransport, list[Frame]]:
        protocol, transport = connect(self.server, port=port)
        protocol.dataReceived(request(operation, room, {"username": user, **fields}, encoding))
        return protocol, transport, frames(transport)

    def member(self, room: str, user: str) -> Member:
        for each in self.server.store.rooms():
            if each.name == room:
                return each.members[user]
        raise AssertionError(f"no {user} in {room}")


class CreateJoinTests(RoomProtocolTestCase):
    def test_create_model(self) -> None:
        _protocol, _transport, replies = self.enter(Operation.CREATE, "ann", password="")
        ack, complete = replies
        self.assertEqual(
            (ack.operation, ack.state, ack.room, ack.payload), (Operation.CREATE, State.ACKNOWLEDGE, "hoge", b"\x00")
        )
        self.assertEqual((complete.operation, complete.state), (Operation.CREATE, State.COMPLETE))
        member = self.member("hoge", "ann")
        self.assertEqual(complete.payload.decode(), member.token)
        self.assertEqual(member.dialect, Dialect.MODEL)
        self.assertIsNone(member.connection)
        self.assertEqual(ack.encoding, SizeEncoding.BINARY)

    def test_seed_example_is_answered_in_ascii(self) -> None:
        """The seed's example request: room 'hoge', create, payload 'a' (a bare user name)."""
        protocol, transport = connect(self.server)
        protocol.dataReceived(SEED_EXAMPLE)
        ack, complete = frames(transport)
        self.assertEqual(ack.encoding, ASCII)
        self.assertEqual(complete.encoding, ASCII)
        self.assertEqual(status_of(ack), Status.SUCCESS)
        member = self.member("hoge", "a")
        self.assertEqual(member.dialect, Dialect.SEED)
        self.assertIs(member.connection, protocol)
        self.assertEqual(complete.payload, member.token.encode())

    def test_native_complete_is_json(self) -> None:
        self.enter(Operation.CREATE, "ann")
        _, _, (ack, complete) = self.enter(Operation.JOIN, "bob", port=40001, chatd=1)
        self.assertEqual(ack.payload, b"\x00")
        info = json.loads(complete.payload)
        member = self.member("hoge", "bob")
        assert member.channel is not None
        self.assertEqual(base64.b64decode(info.pop("key")), member.channel.key)
        # The resume credential, handed out once: the member keeps its hash.
        self.assertEqual(member.credential_hash, credential_hash(info.pop("resume")))
        self.assertEqual(
            info,
            {
                "chatd": 1,
                "token": member.token,
                "key_id": member.channel.key_id,
                "room": "hoge",
                "user": "bob",
                "host": False,
                "members": ["ann", "bob"],
                "idle_timeout": 300.0,
                "keepalive_interval": 30.0,
            },
        )

    def test_room_exists_leaves_connection_open_for_retry(self) -> None:
        self.enter(Operation.CREATE, "ann")
        protocol, transport, (ack,) = self.enter(Operation.CREATE, "bob", port=40001)
        self.assertEqual(status_of(ack), Status.ROOM_EXISTS)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(request(Operation.CREATE, "other", {"username": "bob"}))
        self.assertEqual(status_of(frames(transport)[0]), Status.SUCCESS)

    def test_join_errors(self) -> None:
        self.enter(Operation.CREATE, "ann", password="pw")
        cases: list[tuple[dict[str, Any], Status]] = [
            ({"room": "nope"}, Status.ROOM_NOT_FOUND),
            ({"password": "wrong"}, Status.INVALID_PASSWORD),
            ({}, Status.INVALID_PASSWORD),
            ({"user": "ann", "password": "pw"}, Status.USERNAME_TAKEN),
            ({"invite": "forged"}, Status.INVALID_INVITATION),
        ]
        for fields, status in cases:
            room = fields.pop("room", "hoge")
            user = fields.pop("user", "bob")
            _, _transport, (ack,) = self.enter(Operation.JOIN, user, room=room, port=40001, **fields)
            self.assertEqual(status_of(ack), status, fields)
            self.assertEqual(ack.payload, bytes((status,)))

    def test_native_errors_carry_a_reason(self) -> None:
        _, _, (ack,) = self.enter(Operation.JOIN, "bob", chatd=1)
        self.assertEqual(status_of(ack), Status.ROOM_NOT_FOUND)
        detail = json.loads(ack.payload[1:])
        self.assertEqual(detail["status"], "room_not_found")
        self.assertIn("hoge", detail["message"])

    def test_unsupported_version_closes_and_says_what_is(self) -> None:
        _, transport, (ack,) = self.enter(Operation.CREATE, "ann", chatd=99)
        self.assertEqual(status_of(ack), Status.UNSUPPORTED_VERSION)
        self.assertEqual(json.loads(ack.payload[1:])["versions"], [1])
        self.assertTrue(transport.disconnecting)

    def test_native_refusal_of_bad_name_has_detail(self) -> None:
        _, _, (ack,) = self.enter(Operation.CREATE, "* ann", chatd=1)
        self.assertEqual(status_of(ack), Status.INVALID_NAME)
        self.assertEqual(json.loads(ack.payload[1:])["status"], "invalid_name")

    def test_a_request_is_parsed_once(self) -> None:
        """One JSON decode per create or join: the dialect and the request come from it."""
        calls: list[object] = []
        loads = json.loads

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return loads(*args, **kwargs)

        self.patch(json, "loads", counting)
        requests: list[dict[str, Any]] = [{"chatd": 1}, {}, {"chatd": 99}, {"chatd": 1, "password": 5}]
        for fields in requests:
            del calls[:]
            self.enter(Operation.CREATE, "ann", room="once", **fields)
            self.assertEqual(len(calls), 1, fields)
        del calls[:]
        protocol, transport = connect(self.server, port=40009)
        protocol.dataReceived(request(Operation.CREATE, "bare", "bob", ASCII))
        self.assertEqual(status_of(frames(transport)[0]), Status.SUCCESS)
        self.assertEqual(calls, [])

    def test_native_refusals_are_worded_natively(self) -> None:
        """A native request the parse refuses is still answered in the native form."""
        cases: list[tuple[dict[str, Any], Status]] = [
            ({"chatd": 1, "password": 5}, Status.MALFORMED_REQUEST),
            ({"chatd": "1"}, Status.MALFORMED_REQUEST),
            ({"chatd": 1, "native_only": "yes"}, Status.MALFORMED_REQUEST),
            ({"chatd": 1, "username": "a:b"}, Status.INVALID_NAME),
        ]
        for fields, status in cases:
            _, _, (ack,) = self.enter(Operation.CREATE, "ann", **fields)
            self.assertEqual(status_of(ack), status, fields)
            self.assertEqual(json.loads(ack.payload[1:])["status"], status.name.lower(), fields)
        _, _, (ack,) = self.enter(Operation.CREATE, "ann", password=5)
        self.assertEqual(ack.payload, bytes((Status.MALFORMED_REQUEST,)))

    def test_second_room_on_one_connection_is_refused(self) -> None:
        protocol, transport, _ = self.enter(Operation.CREATE, "ann", encoding=ASCII)
        protocol.dataReceived(request(Operation.CREATE, "two", "ann", ASCII))
        (ack,) = frames(transport)
        self.assertEqual(status_of(ack), Status.NOT_PERMITTED)
        self.assertFalse(transport.disconnecting)


class FramingTests(RoomProtocolTestCase):
    def test_one_byte_at_a_time(self) -> None:
        protocol, transport = connect(self.server)
        data = request(Operation.CREATE, "hoge", "ann", ASCII) + request(Operation.INVITE, "hoge", "", ASCII)
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
        replies = frames(transport)
        self.assertEqual(
            [(f.operation, f.state) for f in replies],
            [
                (Operation.CREATE, State.ACKNOWLEDGE),
                (Operation.CREATE, State.COMPLETE),
                (Operation.INVITE, State.ACKNOWLEDGE),
                (Operation.INVITE, State.COMPLETE),
            ],
        )

    def test_several_frames_in_one_chunk(self) -> None:
        protocol, transport = connect(self.server)
        protocol.dataReceived(
            request(Operation.CREATE, "hoge", "ann", ASCII)
            + request(Operation.REGISTER_UDP, "hoge", "5000", ASCII)
            + request(Operation.INVITE, "hoge", "", ASCII)
        )
        self.assertEqual(len(frames(transport)), 5)
        self.assertEqual(self.member("hoge", "ann").address, ("127.0.0.1", 5000))

    def test_model_port_bytes_in_same_chunk(self) -> None:
        protocol, transport = connect(self.server)
        protocol.dataReceived(request(Operation.CREATE, "hoge", {"username": "ann"}) + b"\x13\x88")
        self.assertEqual(len(frames(transport)), 2)
        self.assertEqual(self.member("hoge", "ann").address, ("127.0.0.1", 5000))
        self.assertTrue(transport.disconnecting)

    def test_malformed_header_answered_and_closed(self) -> None:
        protocol, transport = connect(self.server)
        protocol.dataReceived(b"\x04\x09\x00" + (1).to_bytes(29, "big") + b"hogea")
        (ack,) = frames(transport)
        self.assertEqual(
            (ack.operation, ack.state, status_of(ack)), (Operation.UNKNOWN, State.ACKNOWLEDGE, Status.MALFORMED_REQUEST)
        )
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(request(Operation.CREATE, "x", "ann"))
        self.assertEqual(transport.value(), b"")

    def test_huge_size_refused_from_header(self) -> None:
        protocol, transport = connect(self.server)
        protocol.dataReceived(b"\x04\x01\x00" + b"9" * 29)
        (ack,) = frames(transport)
        self.assertEqual(
            (ack.operation, ack.encoding, status_of(ack)), (Operation.CREATE, ASCII, Status.REQUEST_TOO_LARGE)
        )
        self.assertTrue(transport.disconnecting)

    def test_invalid_utf8_payload(self) -> None:
        protocol, transport = connect(self.server)
        protocol.dataReceived(request(Operation.CREATE, "hoge", b"\xff\xfe"))
        (ack,) = frames(transport)
        self.assertEqual(status_of(ack), Status.MALFORMED_REQUEST)
        self.assertTrue(transport.disconnecting)

    def test_request_state_must_be_request(self) -> None:
        protocol, transport = connect(self.server)
        protocol.dataReceived(b"\x04\x01\x02" + (0).to_bytes(29, "big") + b"hoge")
        (ack,) = frames(transport)
        self.assertEqual(status_of(ack), Status.MALFORMED_REQUEST)
        self.assertTrue(transport.disconnecting)

    def test_operations_before_joining_are_refused(self) -> None:
        for operation in (Operation.REGISTER_UDP, Operation.INVITE, Operation.NOTICE):
            protocol, transport = connect(self.server)
            protocol.dataReceived(request(operation, "hoge", "5000"))
            (ack,) = frames(transport)
            self.assertIn(status_of(ack), (Status.NOT_PERMITTED, Status.MALFORMED_REQUEST))


class TimeoutTests(RoomProtocolTestCase):
    def test_partial_frame_times_out_even_when_dribbled(self) -> None:
        protocol, transport = connect(self.server)
        for _ in range(9):
            protocol.dataReceived(b"\x04")
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_stalled_body_is_told_timed_out(self) -> None:
        protocol, transport = connect(self.server)
        protocol.dataReceived(request(Operation.CREATE, "hoge", "ann")[: HEADER_SIZE + 2])
        self.clock.advance(10)
        (ack,) = frames(transport)
        self.assertEqual((ack.operation, status_of(ack)), (Operation.CREATE, Status.TIMED_OUT))
        self.assertTrue(transport.disconnecting)

    def test_whole_frames_do_not_time_out(self) -> None:
        _protocol, transport, _ = self.enter(Operation.CREATE, "ann", encoding=ASCII)
        self.clock.advance(100)
        self.assertFalse(transport.disconnecting)

    def test_handshake_timeout(self) -> None:
        """Aborted, not closed: a peer that stalls its handshake may not read either."""
        _protocol, transport = connect(self.server)
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)  # what StringTransport.abortConnection sets
        self.assertEqual(self.server.tcp_factory.stats.aborted, {"handshake_timeout": 1})

    def test_model_client_must_send_its_port_in_time(self) -> None:
        self.enter(Operation.CREATE, "ann", encoding=ASCII)
        _, transport, _ = self.enter(Operation.JOIN, "bob", port=40001)
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_tcp_requests_count_as_activity(self) -> None:
        host, _, _ = self.enter(Operation.CREATE, "ann", encoding=ASCII)
        self.clock.advance(200)
        host.dataReceived(request(Operation.INVITE, "hoge", "", ASCII))
        self.assertEqual(self.member("hoge", "ann").last_active, 200)

    def test_handshake_timeout_during_a_slow_join_keeps_the_peer_out(self) -> None:
        self.enter(Operation.CREATE, "ann", encoding=ASCII, password="pw")
        runner = ManualRunner()
        self.server.store._run_hash = runner  # type: ignore[attr-defined]
        bob, transport = connect(self.server, port=40001)
        bob.dataReceived(request(Operation.JOIN, "hoge", {"username": "bob", "password": "pw"}, ASCII))
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(30)
        self.assertTrue(transport.disconnected)
        runner.release()
        self.assertEqual(frames(transport), [])
        self.assertEqual(self.server.store.rooms()[0].names(), ("ann",))

    def test_timers_cancelled_on_close(self) -> None:
        protocol, _transport = connect(self.server)
        protocol.dataReceived(b"\x04")
        protocol.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PresenceTests(RoomProtocolTestCase):
    def test_seed_close_is_leave_and_others_are_told(self) -> None:
        _host, host_transport, _ = self.enter(Operation.CREATE, "ann", encoding=ASCII)
        bob, _bob_transport, _ = self.enter(Operation.JOIN, "bob", encoding=ASCII, port=40001)
        (joined,) = frames(host_transport)
        self.assertEqual((joined.operation, joined.state, joined.encoding), (Operation.NOTICE, State.COMPLETE, ASCII))
        self.assertEqual(joined.payload, b"* bob joined hoge")
        bob.connectionLost()
        # bob's join opened the room's presence interval: his leave is told at its end.
        self.assertEqual(frames(host_transport), [])
        self.clock.advance(self.server.settings.presence_interval)
        (left,) = frames(host_transport)
        self.assertEqual(left.payload, b"* bob left hoge")
        self.assertEqual(self.server.store.rooms()[0].names(), ("ann",))

    def test_host_close_closes_room(self) -> None:
        host, _, _ = self.enter(Operation.CREATE, "ann", encoding=ASCII)
        _bob, bob_transport, _ = self.enter(Operation.JOIN, "bob", encoding=ASCII, port=40001)
        token = self.member("hoge", "bob").token
        host.connectionLost()
        (closed,) = frames(bob_transport)
        self.assertEqual(closed.payload, b"* room hoge was closed: the host left")
        self.assertTrue(bob_transport.disconnecting)
        self.assertIsNone(self.server.store.member_for_token(token))
        self.assertEqual(self.server.store.rooms(), [])

    def test_native_notices_are_json(self) -> None:
        _host, host_transport, _ = self.enter(Operation.CREATE, "ann", chatd=1)
        self.enter(Operation.JOIN, "bob", port=40001)
        (joined,) = frames(host_transport)
        self.assertEqual(
            json.loads(joined.payload),
            {
                "chatd": 1,
                "event": "joined",
                "room": "hoge",
                "user": "bob",
                "text": "* bob joined hoge",
            },
        )

    def test_model_member_stays_after_registering(self) -> None:
        self.enter(Operation.CREATE, "ann", encoding=ASCII)
        bob, bob_transport, _ = self.enter(Operation.JOIN, "bob", port=40001)
        bob.dataReceived(b"\x13\x89")
        self.assertTrue(bob_transport.disconnecting)
        bob.connectionLost()
        self.assertEqual(self.member("hoge", "bob").address, ("127.0.0.1", 5001))

    def test_model_member_leaves_if_closed_before_registering(self) -> None:
        self.enter(Operation.CREATE, "ann", encoding=ASCII)
        bob, _, _ = self.enter(Operation.JOIN, "bob", port=40001)
        bob.connectionLost()
        self.assertEqual(self.server.store.rooms()[0].names(), ("ann",))

    def test_model_port_zero_is_refused(self) -> None:
        self.enter(Operation.CREATE, "ann", encoding=ASCII)
        bob, transport, _ = self.enter(Operation.JOIN, "bob", port=40001)
        bob.dataReceived(b"\x00\x00")
        (ack,) = frames(transport)
        self.assertEqual(status_of(ack), Status.MALFORMED_REQUEST)
        self.assertTrue(transport.disconnecting)
        bob.connectionLost()
        self.assertEqual(self.server.store.rooms()[0].names(), ("ann",))

    def test_idle_member_is_told_and_removed(self) -> None:
        _host, host_transport, _ = self.enter(Operation.CREATE, "ann", encoding=ASCII)
        _bob, bob_transport, _ = self.enter(Operation.JOIN, "bob", encoding=ASCII, port=40001)
        frames(host_transport)
        self.clock.advance(200)
        self.server.store.touch(self.member("hoge", "ann"))
        self.clock.advance(101)
        self.server.sweep()
        (notice,) = frames(bob_transport)
        self.assertEqual(notice.payload, b"* you were removed from hoge after 300 s without activity")
        self.assertTrue(bob_transport.disconnecting)
        (notice,) = frames(host_transport)
        self.assertEqual(notice.payload, b"* bob was removed from hoge after 300 s without activity")

    def test_join_finishing_after_close_leaves(self) -> None:
        self.enter(Operation.CREATE, "ann", encoding=ASCII, password="pw")
        runner = ManualRunner()
        self.server.store._run_hash = runner  # type: ignore[attr-defined]
        bob, _ = connect(self.server, port=40001)
        bob.dataReceived(request(Operation.JOIN, "hoge", {"username": "bob", "password": "pw"}, ASCII))
        bob.connectionLost()
        runner.release()
        self.assertEqual(self.server.store.rooms()[0].names(), ("ann",))


class InvitationTests(RoomProtocolTestCase):
    def test_host_mints_invitation_for_passwordless_join(self) -> None:
        host, transport, _ = self.enter(Operation.CREATE, "ann", encoding=ASCII, password="pw")
        host.dataReceived(request(Operation.INVITE, "hoge", "", ASCII))
        ack, complete = frames(transport)
        self.assertEqual(
            (status_of(ack), complete.operation, complete.state), (Status.SUCCESS, Operation.INVITE, State.COMPLETE)
        )
        invite = complete.payload.decode()
        _, _, (ack, _) = self.enter(Operation.JOIN, "bob", port=40001, invite=invite)
        self.assertEqual(status_of(ack), Status.SUCCESS)

    def test_native_invitation_is_json(self) -> None:
        host, transport, _ = self.enter(Operation.CREATE, "ann", chatd=1)
        host.dataReceived(request(Operation.INVITE, "hoge"))
        _, complete = frames(transport)
        info = json.loads(complete.payload)
        self.assertEqual(info["expires_in"], 3600.0)
        self.assertEqual(len(info["invite"]), 22)

    def test_only_host_invites(self) -> None:
        self.enter(Operation.CREATE, "ann", encoding=ASCII)
        bob, transport, _ = self.enter(Operation.JOIN, "bob", encoding=ASCII, port=40001)
        bob.dataReceived(request(Operation.INVITE, "hoge", "", ASCII))
        (ack,) = frames(transport)
        self.assertEqual(status_of(ack), Status.NOT_PERMITTED)

    def test_other_rooms_are_not_yours(self) -> None:
        host, transport, _ = self.enter(Operation.CREATE, "ann", encoding=ASCII)
        host.dataReceived(request(Operation.REGISTER_UDP, "elsewhere", "5000", ASCII))
        (ack,) = frames(transport)
        self.assertEqual(status_of(ack), Status.NOT_PERMITTED)


class LimitTests(RoomProtocolTestCase):
    def test_connection_limit_per_host(self) -> None:
        self.server, self.clock, self.udp = make_server(max_connections_per_host=2)
        connect(self.server, port=1)
        connect(self.server, port=2)
        refusal = self.server.tcp_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3))
        assert refusal is not None
        self.assertNotIsInstance(refusal, RoomProtocol)
        transport = StringTransport()
        refusal.makeConnection(transport)
        (ack,) = frames(transport)
        self.assertEqual(status_of(ack), Status.SERVER_FULL)
        self.assertTrue(transport.disconnecting)
        self.assertIsInstance(self.server.tcp_factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 3)), RoomProtocol)

    def test_connection_limit_total(self) -> None:
        self.server, self.clock, self.udp = make_server(max_connections=1)
        protocol, _ = connect(self.server, port=1)
        self.assertNotIsInstance(self.server.tcp_factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 3)), RoomProtocol)
        protocol.connectionLost()
        self.assertIsInstance(self.server.tcp_factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 3)), RoomProtocol)

    def test_payload_limit(self) -> None:
        self.server, self.clock, self.udp = make_server(max_payload=10)
        protocol, transport = connect(self.server)
        protocol.dataReceived(request(Operation.CREATE, "hoge", {"username": "ann"})[:HEADER_SIZE])
        (ack,) = frames(transport)
        self.assertEqual(status_of(ack), Status.REQUEST_TOO_LARGE)


class LoggingTests(RoomProtocolTestCase):
    def test_frames_logged_decoded_at_debug(self) -> None:
        events = capture_events(self)
        self.server, self.clock, self.udp = make_server(log_frames=True)
        self.enter(Operation.CREATE, "ann", encoding=ASCII)
        logged = [e for e in events if e.get("direction")]
        self.assertEqual(
            [(e["direction"], e["state"]) for e in logged],
            [("received", "REQUEST"), ("sent", "ACKNOWLEDGE"), ("sent", "COMPLETE")],
        )
        self.assertEqual(logged[0]["room"], "hoge")
        self.assertEqual(logged[0]["encoding"], "ascii")
        self.assertEqual(logged[0]["header"], "040100" + "3139".ljust(58, "0"))
        self.assertEqual(logged[0]["payload"], '{"username": "ann"}')
        token = self.member("hoge", "ann").token
        self.assertEqual(logged[2]["payload"], "[redacted]")
        self.assertNotIn(token, repr(logged))

    def test_passwords_and_invitations_are_not_logged(self) -> None:
        events = capture_events(self)
        self.server, self.clock, self.udp = make_server(log_frames=True)
        protocol, transport, _ = self.enter(Operation.CREATE, "ann", password="s3cret", chatd=1)
        protocol.dataReceived(request(Operation.INVITE, "hoge"))
        invite = json.loads(frames(transport)[1].payload)["invite"]
        logged = repr([e for e in events if e.get("direction")])
        self.assertIn('"password": "[redacted]"', logged)
        for secret in ("s3cret", invite, self.member("hoge", "ann").token):
            self.assertNotIn(secret, logged)

    def test_frames_not_logged_by_default(self) -> None:
        events = capture_events(self)
        self.enter(Operation.CREATE, "ann")
        self.assertEqual([e for e in events if e.get("direction")], [])


class InternalErrorTests(RoomProtocolTestCase):
    def test_a_bug_is_answered_and_contained(self) -> None:
        def broken(member: Member) -> str:
            raise RuntimeError("boom")

        host, transport, _ = self.enter(Operation.CREATE, "ann", encoding=ASCII)
        self.server.store.mint_invitation = broken  # type: ignore[method-assign]
        host.dataReceived(request(Operation.INVITE, "hoge", "", ASCII))
        (ack,) = frames(transport)
        self.assertEqual(status_of(ack), Status.INTERNAL_ERROR)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        _, _, (ack, _) = self.enter(Operation.CREATE, "bob", room="other", port=40001)
        self.assertEqual(status_of(ack), Status.SUCCESS)

    def test_lifecycle_events_are_named(self) -> None:
        """Every info or warning event says what happened in an "event" field, for log filters."""
        events = capture_events(self)
        self.enter(Operation.CREATE, "ann", encoding=ASCII)
        bob, _, _ = self.enter(Operation.JOIN, "bob", port=40001)
        bob.dataReceived(b"\x13\x89")
        _, _, _ = self.enter(Operation.JOIN, "ann", port=40002)
        self.server.sweep()
        self.server.log_stats()
        ours = [e for e in events if e["log_namespace"].startswith("chatd.")]
        self.assertEqual(
            [e["event"] for e in ours],
            ["created", "joined", "registered", "refused", "stats"],
        )


class AbuseResistanceTests(RoomProtocolTestCase):
    def test_legacy_dialects_can_be_turned_off(self) -> None:
        self.server, self.clock, self.udp = make_server(legacy=False)
        for encoding in (SizeEncoding.BINARY, ASCII):
            _, _, (ack,) = self.enter(Operation.CREATE, "ann", encoding=encoding)
            self.assertEqual(status_of(ack), Status.NOT_PERMITTED)
        _, _, (ack, _) = self.enter(Operation.CREATE, "ann", chatd=1)
        self.assertEqual(status_of(ack), Status.SUCCESS)

    def test_legacy_refusal_comes_before_the_request_is_read(self) -> None:
        """With legacy dialects off, a legacy request is refused as such, however bad it is."""
        self.server, self.clock, self.udp = make_server(legacy=False)
        for payload in (b"*ann", b'{"username": 5}', b"{", b"\xff"):
            protocol, transport = connect(self.server)
            protocol.dataReceived(request(Operation.CREATE, "hoge", payload, ASCII))
            (ack,) = frames(transport)
            self.assertEqual(ack.payload, bytes((Status.NOT_PERMITTED,)), payload)

    def test_new_connections_per_address_are_limited(self) -> None:
        self.server, self.clock, self.udp = make_server(connections_per_s=1, connection_burst=3)
        factory = self.server.tcp_factory
        outsider = IPv4Address("TCP", "192.0.2.7", 1)
        built = [factory.buildProtocol(outsider) for _ in range(4)]
        self.assertEqual([isinstance(p, RoomProtocol) for p in built], [True, True, True, False])
        refusal = built[3]
        assert refusal is not None
        transport = StringTransport()
        refusal.makeConnection(transport)
        self.assertEqual(status_of(frames(transport)[0]), Status.RATE_LIMITED)
        self.clock.advance(1)
        self.assertIsInstance(factory.buildProtocol(outsider), RoomProtocol)
        # Loopback is exempt, so local tools and tests are never throttled.
        local = IPv4Address("TCP", "127.0.0.1", 1)
        self.assertTrue(all(isinstance(factory.buildProtocol(local), RoomProtocol) for _ in range(10)))

    def test_loopback_can_be_limited_too(self) -> None:
        self.server, self.clock, self.udp = make_server(connections_per_s=1, connection_burst=1, limit_loopback=True)
        local = IPv4Address("TCP", "127.0.0.1", 1)
        built = [self.server.tcp_factory.buildProtocol(local) for _ in range(2)]
        self.assertEqual([isinstance(p, RoomProtocol) for p in built], [True, False])

    def test_password_guessing_is_slowed(self) -> None:
        """Five guesses a minute from one address (docs/security.md): the sixth is refused without hashing."""
        self.enter(Operation.CREATE, "ann", encoding=ASCII, password="right")
        runner = ManualRunner()
        self.server.store._run_hash = runner  # type: ignore[attr-defined]
        guesser, transport = connect(self.server, host="192.0.2.9", port=40001)
        for guess in range(5):
            guesser.dataReceived(request(Operation.JOIN, "hoge", {"username": "eve", "password": f"g{guess}"}))
            runner.release()
            self.assertEqual(status_of(frames(transport)[0]), Status.INVALID_PASSWORD)
        guesser.dataReceived(request(Operation.JOIN, "hoge", {"username": "eve", "password": "right"}))
        (ack,) = frames(transport)
        self.assertEqual(status_of(ack), Status.RATE_LIMITED)
        self.assertEqual(runner.pending, [])
        self.clock.advance(12)
        guesser.dataReceived(request(Operation.JOIN, "hoge", {"username": "eve", "password": "right"}))
        runner.release()
        self.assertEqual(status_of(frames(transport)[0]), Status.SUCCESS)

    def test_joins_without_password_are_not_charged(self) -> None:
        self.enter(Operation.CREATE, "ann", encoding=ASCII)
        for n in range(10):
            joiner, transport = connect(self.server, host="192.0.2.9", port=41000 + n)
            joiner.dataReceived(request(Operation.JOIN, "hoge", {"username": f"u{n}"}))
            self.assertEqual(status_of(frames(transport)[0]), Status.SUCCESS)


class RekeyTests(RoomProtocolTestCase):
    def test_native_member_gets_a_fresh_key(self) -> None:
        host, transport, _ = self.enter(Operation.CREATE, "ann", chatd=1)
        member = self.member("hoge", "ann")
        assert member.channel is not None
        old_id = member.channel.key_id
        host.dataReceived(request(Operation.REKEY, "hoge"))
        ack, complete = frames(transport)
        self.assertEqual(
            (status_of(ack), complete.operation, complete.state), (Status.SUCCESS, Operation.REKEY, State.COMPLETE)
        )
        fresh = json.loads(complete.payload)
        self.assertEqual(base64.b64decode(fresh["key"]), member.channel.key)
        self.assertEqual(fresh["key_id"], member.channel.key_id)
        self.assertNotEqual(fresh["key_id"], old_id)
        # The old key is still opened until the member uses the new one.
        self.assertIs(self.server.store.member_for_key_id(old_id), member)
        self.server.store.confirm_key(member)
        self.assertIsNone(self.server.store.member_for_key_id(old_id))

    def test_legacy_members_have_no_key(self) -> None:
        host, transport, _ = self.enter(Operation.CREATE, "ann", encoding=ASCII)
        host.dataReceived(request(Operation.REKEY, "hoge", "", ASCII))
        self.assertEqual(status_of(frames(transport)[0]), Status.NOT_PERMITTED)

    def test_native_only_rooms_need_tls(self) -> None:
        _, _, (ack,) = self.enter(Operation.CREATE, "ann", chatd=1, native_only=True)
        self.assertEqual(status_of(ack), Status.NOT_PERMITTED)
        self.assertIn("TLS", json.loads(ack.payload[1:])["message"])


class RefusalLogTests(RoomProtocolTestCase):
    def test_refused_connections_are_counted_and_warned_about_sparingly(self) -> None:
        events = capture_events(self)
        self.server, self.clock, self.udp = make_server(connections_per_s=1, connection_burst=1)
        factory = self.server.tcp_factory
        flooder = IPv4Address("TCP", "192.0.2.66", 1)
        for _ in range(50):
            factory.buildProtocol(flooder)
        self.clock.advance(10)
        factory.buildProtocol(flooder)
        factory.buildProtocol(flooder)
        warnings = [e for e in events if e.get("event") == "refused_connection"]
        self.assertEqual(
            [(w["reason"], w["suppressed"]) for w in warnings], [("rate_limited", 0), ("rate_limited", 48)]
        )
        # Nothing kept quiet: nothing said about it; otherwise a whole clause.
        self.assertEqual(
            [formatEvent(w) for w in warnings],
            [
                "refused a connection from 192.0.2.66: rate_limited",
                "refused a connection from 192.0.2.66: rate_limited"
                " (48 more were refused for this reason since the last warning)",
            ],
        )
        self.assertEqual(factory.refused.counts["rate_limited"], 50)


class LogNamespaceTests(RoomProtocolTestCase):
    """
    The namespace of an event is a log filter's key (docs/architecture.md,
    section 8): a connection's events keep theirs, from its requests and
    from its flow control alike, and so do the factory's refusal warnings.
    """

    def test_connection_events_are_the_room_protocols(self) -> None:
        events = capture_events(self)
        host, _, _ = self.enter(Operation.CREATE, "ann", chatd=1)
        # Flow control: a peer that stops reading, past the send queue timeout.
        host.pauseProducing()
        self.clock.advance(self.server.settings.send_queue_timeout + 1)
        # Flow control: a frame begun and never finished.
        dribbler, _ = connect(self.server, port=40001)
        dribbler.dataReceived(b"\x01")
        self.clock.advance(self.server.settings.frame_timeout + 1)
        namespaces = {e["event"]: e["log_namespace"] for e in events if "event" in e}
        self.assertEqual(
            namespaces,
            dict.fromkeys(["created", "aborted", "closing"], "chatd.daemon.tcp.RoomProtocol"),
        )

    def test_refused_connection_warnings_keep_their_namespace(self) -> None:
        events = capture_events(self)
        self.server, self.clock, self.udp = make_server(connections_per_s=1, connection_burst=1)
        flooder = IPv4Address("TCP", "192.0.2.66", 1)
        for _ in range(2):
            self.server.tcp_factory.buildProtocol(flooder)
        (warning,) = [e for e in events if e.get("event") == "refused_connection"]
        self.assertEqual(warning["log_namespace"], "chatd.daemon.tcp.RefusedConnections")


class NativeRegistrationTests(RoomProtocolTestCase):
    def test_native_members_cannot_register_by_tcp(self) -> None:
        host, transport, _ = self.enter(Operation.CREATE, "ann", chatd=1)
        host.dataReceived(request(Operation.REGISTER_UDP, "hoge", "5000"))
        self.assertEqual(status_of(frames(transport)[0]), Status.NOT_PERMITTED)
        self.assertIsNone(self.member("hoge", "ann").address)

    def test_native_only_flag_on_join_is_no_obstacle(self) -> None:
        self.enter(Operation.CREATE, "ann", chatd=1)
        _, _, (ack, _) = self.enter(Operation.JOIN, "bob", port=40001, chatd=1, native_only=True)
        self.assertEqual(status_of(ack), Status.SUCCESS)
