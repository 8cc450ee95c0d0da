"""
The one exception family of chatd, and the status codes it travels with.

Every error chatd raises on purpose is a L{ChatError}. Errors caused by what a
peer sent are L{ProtocolError}s: each class carries the L{Status} byte that the
TCP adapter puts in its acknowledge frame, so no adapter needs a mapping table.
The UDP adapter uses C{reason} instead, as the key its drop counter counts by.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class Status(IntEnum):
    """The status byte of an acknowledge frame (docs/protocol.md, "Status codes")."""

    SUCCESS = 0
    ROOM_EXISTS = 1
    ROOM_NOT_FOUND = 2
    INVALID_PASSWORD = 3
    MALFORMED_REQUEST = 4
    USERNAME_TAKEN = 5
    RATE_LIMITED = 6
    SERVER_FULL = 7
    ROOM_FULL = 8
    NOT_PERMITTED = 9
    UNSUPPORTED_VERSION = 10
    REQUEST_TOO_LARGE = 11
    INVALID_NAME = 12
    TIMED_OUT = 13
    INVALID_INVITATION = 14
    INTERNAL_ERROR = 15

    @property
    def text(self) -> str:
        """A short human description, as shown by clients and the debug client."""
        return self.name.lower().replace("_", " ")


class ChatError(Exception):
    """Everything chatd raises on purpose."""


class ProtocolError(ChatError):
    """
    A peer sent something chatd refuses.

    C{status} is what a TCP peer is told; C{reason} names the refusal in logs
    and in the UDP drop counters. C{closes} says whether the byte stream can no
    longer be trusted, so the connection must be closed after the reply.
    """

    status: ClassVar[Status] = Status.MALFORMED_REQUEST
    reason: ClassVar[str] = "malformed"
    closes: ClassVar[bool] = False


class MalformedFrameError(ProtocolError):
    """The bytes do not form a valid frame or datagram; framing is lost."""

    closes = True


class FrameTooLargeError(MalformedFrameError):
    """A size field announces more than the limit allows."""

    status = Status.REQUEST_TOO_LARGE
    reason = "too_large"


class InvalidUTF8Error(MalformedFrameError):
    """A field that must be UTF-8 text is not."""

    reason = "invalid_utf8"


class UnknownOperationError(MalformedFrameError):
    """The operation or state byte is not one this server knows."""

    reason = "unknown_operation"


class InvalidNameError(ProtocolError):
    """A room or user name is empty, too long or has forbidden characters."""

    status = Status.INVALID_NAME
    reason = "invalid_name"


class UnsupportedVersionError(ProtocolError):
    """A native client asked for a protocol version this server does not speak."""

    status = Status.UNSUPPORTED_VERSION
    reason = "unsupported_version"
    closes = True


class RoomExistsError(ProtocolError):
    status = Status.ROOM_EXISTS
    reason = "room_exists"


class RoomNotFoundError(ProtocolError):
    status = Status.ROOM_NOT_FOUND
    reason = "room_not_found"


class InvalidPasswordError(ProtocolError):
    status = Status.INVALID_PASSWORD
    reason = "invalid_password"


class InvalidInvitationError(ProtocolError):
    status = Status.INVALID_INVITATION
    reason = "invalid_invitation"


class UsernameTakenError(ProtocolError):
    status = Status.USERNAME_TAKEN
    reason = "username_taken"


class ServerFullError(ProtocolError):
    status = Status.SERVER_FULL
    reason = "server_full"


class RoomFullError(ProtocolError):
    status = Status.ROOM_FULL
    reason = "room_full"


class NotPermittedError(ProtocolError):
    """The request is valid but not allowed to this peer, or not in this state."""

    status = Status.NOT_PERMITTED
    reason = "not_permitted"


class RequestTimeoutError(ProtocolError):
    """A frame was started but not finished in time."""

    status = Status.TIMED_OUT
    reason = "timed_out"
    closes = True


class UnknownTokenError(ProtocolError):
    """A datagram names a token that no live member holds."""

    reason = "unknown_token"


class WrongRoomError(ProtocolError):
    """A datagram's room name is not the room of the token's member."""

    reason = "wrong_room"


class WrongSourceError(ProtocolError):
    """A datagram came from another address than the one its token is bound to."""

    reason = "wrong_source"


class UnregisteredError(ProtocolError):
    """A legacy member sent a datagram before registering its UDP port."""

    reason = "unregistered"
