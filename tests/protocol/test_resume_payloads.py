"""The two fields of resuming (docs/protocol.md 4.1 and 4.2): the join's "resume", the answer's "resume"."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.protocol.errors import MalformedFrameError
from chatd.protocol.payloads import (
    MAX_RESUME_CREDENTIAL,
    entered_payload,
    loggable_payload,
    parse_room_request,
    read_entered_payload,
    read_room_request,
    room_request_payload,
)

CREDENTIAL = "Yq3Lx0aVb8Wn2Rt6Kc1Mz5Pd9Hs4Jf7Ue0Go3Ni8Bw2"
KEY = bytes(range(32))
CREDENTIAL_ALPHABET = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class ResumeRequestTests(SynchronousTestCase):
    def test_request_bytes(self) -> None:
        """Byte for byte: "resume" comes last, after "client"."""
        payload = room_request_payload(
            "ann", None, None, False, features=("delivery",), client_id="c1", resume=CREDENTIAL
        )
        self.assertEqual(
            payload,
            b'{"chatd": 1, "username": "ann", "features": ["delivery"], "client": "c1",'
            b' "resume": "Yq3Lx0aVb8Wn2Rt6Kc1Mz5Pd9Hs4Jf7Ue0Go3Ni8Bw2"}',
        )
        self.assertEqual(parse_room_request(payload).resume, CREDENTIAL)

    def test_without_it_nothing_changes(self) -> None:
        self.assertEqual(room_request_payload("ann", None, None, False), b'{"chatd": 1, "username": "ann"}')
        self.assertIsNone(parse_room_request(b'{"chatd": 1, "username": "ann"}').resume)

    def test_null_and_empty_are_absent(self) -> None:
        for value in (None, ""):
            obj = {"chatd": 1, "username": "ann", "resume": value}
            self.assertIsNone(parse_room_request(json.dumps(obj).encode()).resume)

    def test_legacy_requests_never_resume(self) -> None:
        """A JSON request without "chatd" (the model dialect) has no credential, whatever it carries."""
        for value in (CREDENTIAL, 5):
            obj = {"username": "ann", "resume": value}
            self.assertIsNone(parse_room_request(json.dumps(obj).encode()).resume)

    def test_malformed(self) -> None:
        for bad in (5, True, [CREDENTIAL], {"c": 1}, "with space", "slash/", "x" * (MAX_RESUME_CREDENTIAL + 1), "é"):
            parsed = read_room_request(json.dumps({"chatd": 1, "username": "ann", "resume": bad}).encode())
            self.assertTrue(parsed.native)
            self.assertRaises(MalformedFrameError, parsed.request)

    @given(st.text(CREDENTIAL_ALPHABET, min_size=1, max_size=MAX_RESUME_CREDENTIAL))
    def test_any_credential_round_trips(self, credential: str) -> None:
        payload = room_request_payload("ann", None, None, False, resume=credential)
        self.assertEqual(parse_room_request(payload).resume, credential)

    def test_redacted_in_logs(self) -> None:
        payload = room_request_payload("ann", None, None, False, resume=CREDENTIAL)
        logged = loggable_payload(payload)
        self.assertNotIn(CREDENTIAL, logged)
        self.assertIn('"resume": "[redacted]"', logged)


class ResumeAnswerTests(SynchronousTestCase):
    def answer(self, resume: str | None) -> bytes:
        return entered_payload(
            token="t",
            key=KEY,
            key_id=7,
            room="hoge",
            user="ann",
            host=True,
            members=["ann"],
            idle_timeout=300.0,
            keepalive_interval=30.0,
            resume=resume,
        )

    def test_answer_bytes(self) -> None:
        """Byte for byte: "resume" is the answer's last member."""
        self.assertEqual(
            self.answer(CREDENTIAL),
            b'{"chatd": 1, "token": "t", "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "key_id": 7,'
            b' "room": "hoge", "user": "ann", "host": true, "members": ["ann"], "idle_timeout": 300.0,'
            b' "keepalive_interval": 30.0, "resume": "Yq3Lx0aVb8Wn2Rt6Kc1Mz5Pd9Hs4Jf7Ue0Go3Ni8Bw2"}',
        )
        self.assertEqual(read_entered_payload(self.answer(CREDENTIAL)).resume, CREDENTIAL)

    def test_without_it(self) -> None:
        """An older server's answer: no credential, and the client cannot resume (it rejoins as before)."""
        self.assertNotIn(b"resume", self.answer(None))
        self.assertIsNone(read_entered_payload(self.answer(None)).resume)

    def test_unusable(self) -> None:
        for bad in (5, "", ["x"]):
            obj = json.loads(self.answer(None))
            obj["resume"] = bad
            self.assertRaises(MalformedFrameError, read_entered_payload, json.dumps(obj).encode())

    def test_redacted_in_logs(self) -> None:
        self.assertNotIn(CREDENTIAL, loggable_payload(self.answer(CREDENTIAL), secret=True))
