"""Tests for chatd.tui.wording: every entry failure has words and a place to fix it (pure)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from chatd.protocol import errors
from chatd.tui.screens import Field, RoomChoice
from chatd.tui.wording import Fix, describe, explain_entry_failure

JOIN = RoomChoice(False, "hoge", None, None, "127.0.0.1", 9001, 9002)


class ExplainEntryFailureTests(SynchronousTestCase):
    def explain(self, error: Exception, choice: RoomChoice = JOIN) -> tuple[str, Fix, Field]:
        explanation = explain_entry_failure(error, "alice", choice)
        return explanation.text, explanation.fix, explanation.field

    def test_server_not_running(self) -> None:
        error = errors.ConnectionFailedError(
            "cannot reach chatd at 127.0.0.1 port 9001: ConnectionRefusedError"
            " (Connection was refused by other side: 111: Connection refused.)"
        )
        text, fix, field = self.explain(error)
        self.assertEqual(
            text,
            "Cannot reach chatd at 127.0.0.1, TCP port 9001 (Connection refused): is the server running,"
            " and is that its address?",
        )
        self.assertEqual((fix, field), (Fix.ROOM, Field.HOST))

    def test_unknown_host(self) -> None:
        error = errors.ConnectionFailedError(
            "cannot reach chatd at nohost port 9001: DNSLookupError"
            " (address 'nohost' not found: [Errno -2] Name or service not known.)"
        )
        text, _, _ = self.explain(error, RoomChoice(False, "hoge", None, None, "nohost", 9001, 9002))
        self.assertIn("Cannot reach chatd at nohost, TCP port 9001 (Name or service not known)", text)

    def test_refusals(self) -> None:
        cases: list[tuple[Exception, str, Fix, Field]] = [
            (errors.RoomExistsError(), "Room “hoge” already exists", Fix.ROOM, Field.ROOM),
            (errors.RoomNotFoundError(), "There is no room “hoge”", Fix.ROOM, Field.ROOM),
            (errors.InvalidPasswordError(), "Room “hoge” needs its password", Fix.ROOM, Field.PASSWORD),
            (errors.InvalidInvitationError(), "That invitation does not open this room", Fix.ROOM, Field.INVITE),
            (errors.UsernameTakenError(), "already called “alice”: pick another name", Fix.NAME, Field.ROOM),
            (errors.InvalidNameError("user name is 40 bytes long"), "refuses that name", Fix.NAME, Field.ROOM),
            (errors.InvalidNameError("room name is 99 bytes long"), "refuses that room name", Fix.ROOM, Field.ROOM),
            (errors.RoomFullError("room full"), "Room “hoge” is full", Fix.ROOM, Field.ROOM),
            (errors.ServerFullError("server full"), "The server is busy", Fix.ROOM, Field.ROOM),
            (errors.ConnectionClosedError("closed"), "hung up before answering", Fix.ROOM, Field.HOST),
            (errors.InternalServerError("oops"), "Could not enter room “hoge”: oops.", Fix.ROOM, Field.ROOM),
        ]
        for error, words, fix, field in cases:
            text, got_fix, got_field = self.explain(error)
            self.assertIn(words, text)
            self.assertEqual((got_fix, got_field), (fix, field), type(error).__name__)

    def test_wrong_password(self) -> None:
        text, _, field = self.explain(errors.InvalidPasswordError(), RoomChoice(False, "hoge", "x", None, "h", 1, 2))
        self.assertEqual((text, field), ("Wrong password for room “hoge”.", Field.PASSWORD))


class DescribeTests(SynchronousTestCase):
    def test_our_errors_by_their_message(self) -> None:
        self.assertEqual(describe(errors.NotPermittedError("only the host can invite")), "only the host can invite")
        self.assertEqual(describe(errors.RoomExistsError()), "RoomExistsError")

    def test_other_errors_by_type(self) -> None:
        self.assertEqual(describe(KeyError("x")), "KeyError: 'x'")
        self.assertEqual(describe(None), "unknown error")
