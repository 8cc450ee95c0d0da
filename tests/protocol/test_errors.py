"""Tests for chatd.protocol.errors: the status byte and the ProtocolError family."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from chatd.protocol import errors
from chatd.protocol.errors import ChatError, ProtocolError, Status

EXPECTED: dict[type[ProtocolError], tuple[Status, str, bool]] = {
    errors.MalformedFrameError: (Status.MALFORMED_REQUEST, "malformed", True),
    errors.FrameTooLargeError: (Status.REQUEST_TOO_LARGE, "too_large", True),
    errors.InvalidUTF8Error: (Status.MALFORMED_REQUEST, "invalid_utf8", True),
    errors.UnknownOperationError: (Status.MALFORMED_REQUEST, "unknown_operation", True),
    errors.InvalidNameError: (Status.INVALID_NAME, "invalid_name", False),
    errors.UnsupportedVersionError: (Status.UNSUPPORTED_VERSION, "unsupported_version", True),
    errors.RoomExistsError: (Status.ROOM_EXISTS, "room_exists", False),
    errors.RoomNotFoundError: (Status.ROOM_NOT_FOUND, "room_not_found", False),
    errors.InvalidPasswordError: (Status.INVALID_PASSWORD, "invalid_password", False),
    errors.InvalidInvitationError: (Status.INVALID_INVITATION, "invalid_invitation", False),
    errors.UsernameTakenError: (Status.USERNAME_TAKEN, "username_taken", False),
    errors.ServerFullError: (Status.SERVER_FULL, "server_full", False),
    errors.RoomFullError: (Status.ROOM_FULL, "room_full", False),
    errors.NotPermittedError: (Status.NOT_PERMITTED, "not_permitted", False),
    errors.RequestTimeoutError: (Status.TIMED_OUT, "timed_out", True),
    errors.UnknownTokenError: (Status.MALFORMED_REQUEST, "unknown_token", False),
    errors.WrongRoomError: (Status.MALFORMED_REQUEST, "wrong_room", False),
    errors.WrongSourceError: (Status.MALFORMED_REQUEST, "wrong_source", False),
    errors.UnregisteredError: (Status.MALFORMED_REQUEST, "unregistered", False),
    errors.UnknownKeyError: (Status.MALFORMED_REQUEST, "unknown_key", False),
    errors.RateLimitedError: (Status.RATE_LIMITED, "rate_limited", False),
    errors.AuthenticationFailedError: (Status.MALFORMED_REQUEST, "unauthenticated", False),
    errors.ReplayedError: (Status.MALFORMED_REQUEST, "replayed", False),
    errors.InternalServerError: (Status.INTERNAL_ERROR, "internal_error", True),
    errors.UnknownStatusError: (Status.MALFORMED_REQUEST, "unknown_status", False),
    errors.ClusterUnavailableError: (Status.SERVER_FULL, "cluster_unavailable", False),
    errors.TooManyRoomsError: (Status.SERVER_FULL, "too_many_rooms", False),
    errors.TooManyInvitationsError: (Status.ROOM_FULL, "too_many_invitations", False),
    errors.HashingBusyError: (Status.RATE_LIMITED, "hashing_busy", False),
    errors.ForgeryLimitedError: (Status.MALFORMED_REQUEST, "auth_failures_limited", False),
}
"""Every ProtocolError subclass: the status a TCP peer is told, the drop reason, whether it closes."""


def _all_subclasses(cls: type[ProtocolError]) -> set[type[ProtocolError]]:
    found: set[type[ProtocolError]] = set()
    for sub in cls.__subclasses__():
        found.add(sub)
        found |= _all_subclasses(sub)
    return found


class StatusTests(SynchronousTestCase):
    def test_wire_values(self) -> None:
        """The first four are the model dialect's status bytes (wire-dialects.md)."""
        self.assertEqual(Status.SUCCESS, 0)
        self.assertEqual(Status.ROOM_EXISTS, 1)
        self.assertEqual(Status.ROOM_NOT_FOUND, 2)
        self.assertEqual(Status.INVALID_PASSWORD, 3)

    def test_values_are_distinct_bytes(self) -> None:
        values = [status.value for status in Status]
        self.assertEqual(len(values), len(set(values)))
        for value in values:
            self.assertTrue(0 <= value <= 255, value)
        self.assertEqual(bytes((Status.INTERNAL_ERROR,)), b"\x0f")

    def test_text(self) -> None:
        self.assertEqual(Status.SUCCESS.text, "success")
        self.assertEqual(Status.ROOM_NOT_FOUND.text, "room not found")
        self.assertEqual(Status.UNSUPPORTED_VERSION.text, "unsupported version")

    def test_every_text_is_readable(self) -> None:
        for status in Status:
            self.assertRegex(status.text, r"^[a-z]+( [a-z]+)*$")


class ProtocolErrorTests(SynchronousTestCase):
    def test_family(self) -> None:
        self.assertTrue(issubclass(ProtocolError, ChatError))
        self.assertTrue(issubclass(ChatError, Exception))

    def test_base_defaults(self) -> None:
        self.assertIs(ProtocolError.status, Status.MALFORMED_REQUEST)
        self.assertEqual(ProtocolError.reason, "malformed")
        self.assertFalse(ProtocolError.closes)

    def test_every_subclass_is_listed(self) -> None:
        """A new error class must be added to EXPECTED, with its status and reason."""
        self.assertEqual(_all_subclasses(ProtocolError), set(EXPECTED))

    def test_status_reason_and_closes(self) -> None:
        for cls, (status, reason, closes) in EXPECTED.items():
            self.assertIs(cls.status, status, cls.__name__)
            self.assertIsInstance(cls.status, Status)
            self.assertEqual(cls.reason, reason, cls.__name__)
            self.assertEqual(cls.closes, closes, cls.__name__)

    def test_reasons_are_counter_keys(self) -> None:
        """Reasons key the UDP drop counters and log fields: snake_case, one per class."""
        reasons = [cls.reason for cls in EXPECTED]
        self.assertEqual(len(reasons), len(set(reasons)))
        for reason in reasons:
            self.assertIsNotNone(re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", reason), reason)

    def test_framing_errors_close(self) -> None:
        """Every MalformedFrameError means the stream can no longer be trusted."""
        for cls in EXPECTED:
            if issubclass(cls, errors.MalformedFrameError):
                self.assertTrue(cls.closes, cls.__name__)

    def test_instances_carry_message_and_class_attributes(self) -> None:
        error = errors.FrameTooLargeError("payload of 5000 bytes")
        self.assertEqual(str(error), "payload of 5000 bytes")
        self.assertIs(error.status, Status.REQUEST_TOO_LARGE)
        self.assertEqual(error.reason, "too_large")
        self.assertTrue(error.closes)
        self.assertIsInstance(error, errors.MalformedFrameError)
        self.assertIsInstance(error, ProtocolError)

    def test_raised_and_caught_as_protocol_error(self) -> None:
        def refuse() -> None:
            raise errors.RoomExistsError("room hoge exists")

        caught = self.assertRaises(ProtocolError, refuse)
        self.assertIs(caught.status, Status.ROOM_EXISTS)


class ErrorForStatusTests(SynchronousTestCase):
    def test_every_refusal_status_has_its_own_class(self) -> None:
        for status in Status:
            if status is Status.SUCCESS:
                continue
            error = errors.error_for_status(status, "why")
            self.assertIs(error.status, status)
            self.assertEqual(str(error), "why")
            self.assertIsNot(type(error), ProtocolError)

    def test_named_classes(self) -> None:
        self.assertIsInstance(errors.error_for_status(1), errors.RoomExistsError)
        self.assertIsInstance(errors.error_for_status(3), errors.InvalidPasswordError)
        self.assertEqual(str(errors.error_for_status(2)), "room not found")

    def test_unknown_status(self) -> None:
        error = errors.error_for_status(200)
        self.assertIsInstance(error, errors.UnknownStatusError)
        self.assertEqual(str(error), "status 200")

    def test_client_errors_are_chat_errors(self) -> None:
        for cls in (
            errors.ConnectionFailedError,
            errors.ConnectionClosedError,
            errors.NotInRoomError,
            errors.MessageTooLongError,
        ):
            self.assertTrue(issubclass(cls, errors.ClientError))
            self.assertTrue(issubclass(cls, ChatError))
