"""
A resume over the TCP side (RoomProtocol): the credential in every native
answer, a join with it taking the place back (the host role too), the old
connection closed, refusals worded for the client, nothing for the others.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.controller import ChatServer
from chatd.protocol.errors import Status
from chatd.protocol.payloads import decode_json, loggable_payload, read_entered_payload
from chatd.protocol.wire import Frame, Operation, SizeEncoding, State
from tests.helpers import capture_events, connect, frames, make_server, request


def native_request(user: str, **extra: Any) -> dict[str, Any]:
    return {"chatd": 1, "username": user, "features": ["delivery"], "client": f"{user}client", **extra}


class ResumeOverTcpTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server: ChatServer
        self.server, self.clock, _ = make_server()
        self.ann, self.ann_tcp = connect(self.server, port=40001)
        self.ann.dataReceived(request(Operation.CREATE, "hoge", native_request("ann", password="pw")))
        self.ann_answer = self.entered(self.ann_tcp, Operation.CREATE)
        self.bob, self.bob_tcp = connect(self.server, port=40002)
        self.bob.dataReceived(request(Operation.JOIN, "hoge", native_request("bob", password="pw")))
        self.bob_answer = self.entered(self.bob_tcp, Operation.JOIN)
        frames(self.ann_tcp)  # bob's join notice

    def entered(self, transport: StringTransport, operation: Operation) -> Any:
        ack, complete = frames(transport)
        self.assertEqual((ack.operation, ack.state, ack.payload), (operation, State.ACKNOWLEDGE, b"\x00"))
        self.assertEqual((complete.operation, complete.state), (operation, State.COMPLETE))
        return read_entered_payload(complete.payload)

    def test_every_native_answer_has_a_credential(self) -> None:
        for answer in (self.ann_answer, self.bob_answer):
            self.assertIsInstance(answer.resume, str)
            self.assertEqual(len(answer.resume), 43)
        self.assertNotEqual(self.ann_answer.resume, self.bob_answer.resume)
        member = self.server.store.member_for_token(self.ann_answer.token)
        assert member is not None
        self.assertIsNone(member.credential, "handed out: the store keeps its hash only")

    def test_legacy_answers_unchanged(self) -> None:
        seed, seed_tcp = connect(self.server, port=40003)
        seed.dataReceived(request(Operation.JOIN, "hoge", {"username": "cat", "password": "pw"}, SizeEncoding.ASCII))
        _, complete = frames(seed_tcp)
        self.assertEqual(len(complete.payload), 22, "the token alone")

    def test_host_resumes_on_a_new_connection(self) -> None:
        events = capture_events(self)
        again, again_tcp = connect(self.server, port=40004)
        # The password is not needed (and not hashed): the credential stands for it.
        again.dataReceived(request(Operation.JOIN, "hoge", native_request("ann", resume=self.ann_answer.resume)))
        answer = self.entered(again_tcp, Operation.JOIN)
        self.assertTrue(answer.host, "the host role comes back with a join")
        self.assertEqual(answer.members, ("ann", "bob"))
        self.assertEqual(answer.user, "ann")
        self.assertNotEqual(answer.resume, self.ann_answer.resume)
        self.assertNotEqual(answer.token, self.ann_answer.token)
        self.assertEqual(answer.delivery.epoch, self.ann_answer.delivery.epoch)
        self.assertTrue(self.ann_tcp.disconnecting, "the old connection is closed")
        self.assertEqual(frames(self.ann_tcp), [], "without a notice")
        self.ann.connectionLost()
        self.assertEqual(frames(self.bob_tcp), [], "bob hears of nothing: nobody came or went")
        self.assertFalse(self.server.store.rooms()[0].closed)
        self.assertIsNone(self.server.store.member_for_token(self.ann_answer.token))
        self.assertIn("resumed", [event.get("event") for event in events])
        # ann is the host again: she can invite, bob cannot.
        again.dataReceived(request(Operation.INVITE, "hoge"))
        self.assertEqual(frames(again_tcp)[0].payload, b"\x00")

    def test_wrong_or_used_credential(self) -> None:
        credential = self.bob_answer.resume
        again, again_tcp = connect(self.server, port=40004)
        again.dataReceived(request(Operation.JOIN, "hoge", native_request("bob", resume=credential)))
        self.entered(again_tcp, Operation.JOIN)
        third, third_tcp = connect(self.server, port=40005)
        third.dataReceived(request(Operation.JOIN, "hoge", native_request("bob", resume=credential)))
        (refusal,) = frames(third_tcp)
        self.assertEqual(refusal.payload[0], Status.INVALID_PASSWORD)
        detail = decode_json(refusal.payload[1:])
        self.assertEqual(detail["status"], "invalid_password")
        self.assertIn("resume credential is not valid", detail["message"])
        self.assertFalse(third_tcp.disconnecting, "not closing: the client falls back on the same connection")
        # The fallback on the same connection: a plain join finds the name taken.
        third.dataReceived(request(Operation.JOIN, "hoge", native_request("bob", password="pw")))
        self.assertEqual(frames(third_tcp)[0].payload[0], Status.USERNAME_TAKEN)

    def test_a_malformed_credential_is_a_malformed_request(self) -> None:
        for bad in (5, "not a credential!", "x" * 129, ["x"]):
            conn, tcp = connect(self.server, port=40006)
            conn.dataReceived(request(Operation.JOIN, "hoge", native_request("bob", resume=bad)))
            (refusal,) = frames(tcp)
            self.assertEqual(refusal.payload[0], Status.MALFORMED_REQUEST, bad)
            self.assertTrue(tcp.disconnecting)

    def test_a_resume_on_create_is_ignored(self) -> None:
        conn, tcp = connect(self.server, port=40007)
        conn.dataReceived(request(Operation.CREATE, "other", native_request("ann", resume=self.ann_answer.resume)))
        answer = self.entered(tcp, Operation.CREATE)
        self.assertEqual(answer.room, "other")
        self.assertFalse(self.ann_tcp.disconnecting)

    def test_the_credential_is_never_logged(self) -> None:
        payload = json.dumps(native_request("ann", resume=self.ann_answer.resume)).encode()
        self.assertNotIn(self.ann_answer.resume, loggable_payload(payload))
        server, _, _ = make_server(log_frames=True)
        events = capture_events(self)
        conn, tcp = connect(server)
        conn.dataReceived(request(Operation.CREATE, "hoge", native_request("ann")))
        answer = self.entered(tcp, Operation.CREATE)
        logged = repr([dict(event) for event in events])
        self.assertNotIn(answer.resume, logged)

    def test_the_old_connection_cannot_act(self) -> None:
        again, again_tcp = connect(self.server, port=40004)
        again.dataReceived(request(Operation.JOIN, "hoge", native_request("bob", resume=self.bob_answer.resume)))
        self.entered(again_tcp, Operation.JOIN)
        # Still readable until its close is done: its requests are refused.
        self.bob_tcp.disconnecting = False
        self.bob._closing = False
        self.bob.dataReceived(request(Operation.REKEY, "hoge"))
        refusal = frames(self.bob_tcp)[0]
        self.assertEqual(refusal.payload[0], Status.NOT_PERMITTED)
        self.assertEqual(refusal, Frame(Operation.REKEY, State.ACKNOWLEDGE, "hoge", refusal.payload))
