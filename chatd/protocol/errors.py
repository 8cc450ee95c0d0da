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


class TooManyRoomsError(ServerFullError):
    """One address holds its limit of open rooms (--max-rooms-per-host)."""

    reason = "too_many_rooms"


class TooManyInvitationsError(RoomFullError):
    """The room holds its limit of live invitations (--max-invitations)."""

    reason = "too_many_invitations"


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


class UnknownKeyError(ProtocolError):
    """A sealed datagram names a key id that no live member holds."""

    reason = "unknown_key"


class UnregisteredError(ProtocolError):
    """A legacy member sent a datagram before registering its UDP port."""

    reason = "unregistered"


class AuthenticationFailedError(ProtocolError):
    """A sealed datagram did not authenticate: wrong key, forged or damaged."""

    reason = "unauthenticated"


class ReplayedError(ProtocolError):
    """A sealed datagram's counter was seen before, or is too old for the replay window."""

    reason = "replayed"


class RateLimitedError(ProtocolError):
    status = Status.RATE_LIMITED
    reason = "rate_limited"


class HashingBusyError(RateLimitedError):
    """Password hashing is at its limit, for the daemon or for one address (--max-hashing...)."""

    reason = "hashing_busy"


class ForgeryLimitedError(ProtocolError):
    """
    A sealed datagram dropped before decryption: its key id (from a source
    other than its member's) or its source address has failed authentication
    too often (--auth-failures-per-s).
    """

    reason = "auth_failures_limited"


class InternalServerError(ProtocolError):
    """The server failed while answering; it closes the connection after saying so."""

    status = Status.INTERNAL_ERROR
    reason = "internal_error"
    closes = True


class ClusterUnavailableError(ProtocolError):
    """
    The cluster's shared state (Redis) cannot be reached or read: the server
    is degraded. Creates and joins are refused with SERVER_FULL (the nearest
    existing meaning: "not now, try later or elsewhere") and the connection
    stays open; a dedicated status would be a wire change (docs/protocol.md).
    The message names what failed, in one sentence.
    """

    status = Status.SERVER_FULL
    reason = "cluster_unavailable"


class UnknownStatusError(ProtocolError):
    """A status byte this client does not know (from a newer server)."""

    reason = "unknown_status"


_ERROR_FOR_STATUS: dict[Status, type[ProtocolError]] = {
    Status.ROOM_EXISTS: RoomExistsError,
    Status.ROOM_NOT_FOUND: RoomNotFoundError,
    Status.INVALID_PASSWORD: InvalidPasswordError,
    Status.MALFORMED_REQUEST: MalformedFrameError,
    Status.USERNAME_TAKEN: UsernameTakenError,
    Status.RATE_LIMITED: RateLimitedError,
    Status.SERVER_FULL: ServerFullError,
    Status.ROOM_FULL: RoomFullError,
    Status.NOT_PERMITTED: NotPermittedError,
    Status.UNSUPPORTED_VERSION: UnsupportedVersionError,
    Status.REQUEST_TOO_LARGE: FrameTooLargeError,
    Status.INVALID_NAME: InvalidNameError,
    Status.TIMED_OUT: RequestTimeoutError,
    Status.INVALID_INVITATION: InvalidInvitationError,
    Status.INTERNAL_ERROR: InternalServerError,
}


def error_for_status(status: int, message: str = "") -> ProtocolError:
    """
    The exception a client raises for a refusal: the class names the status,
    so callers catch C{RoomExistsError} instead of comparing numbers.
    """
    try:
        return _ERROR_FOR_STATUS[Status(status)](message or Status(status).text)
    except ValueError:
        return UnknownStatusError(message or f"status {status}")


class ClientError(ChatError):
    """Something went wrong on the client's side of the conversation."""


class ConnectionFailedError(ClientError):
    """The server could not be reached (not running, wrong address, no route)."""


class ConnectionClosedError(ClientError):
    """The connection closed before the server answered."""


class NotInRoomError(ClientError):
    """The operation needs a room, and the client is not in one."""


class MessageTooLongError(ClientError):
    """The message would not fit in one datagram once relayed."""


class CertificateError(ClientError):
    """The server's TLS certificate is not the one this client trusts."""


class CertificateChangedError(CertificateError):
    """The server's certificate differs from the one pinned on first use: possibly an attack."""


class TLSSetupError(ChatError, ValueError):
    """
    A TLS file or setting cannot be used: missing, unreadable, not PEM, or a
    key that does not belong to its certificate. The message names the file.

    Also a ValueError, so that the daemon's option checking can turn it into a
    usage error like any other bad value.
    """


class PinStoreError(TLSSetupError):
    """The file of pinned server fingerprints cannot be read or written."""
