"""
What goes inside TCP frames: create/join requests, replies and notices.

Pure, like the frame codec: the three dialects differ here, in payload form,
and this module is the one place that knows how (docs/protocol.md,
"Payloads"). Legacy dialects get plain text; native clients get JSON that
carries the protocol version.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from chatd.protocol.errors import (
    InvalidNameError,
    InvalidUTF8Error,
    MalformedFrameError,
    ProtocolError,
    Status,
    UnsupportedVersionError,
    error_for_status,
)
from chatd.protocol.wire import Frame, SizeEncoding

NATIVE_VERSION = 1
SUPPORTED_VERSIONS = (NATIVE_VERSION,)
DELIVERY = "delivery"
"""
The reliable-delivery feature (docs/reliability.md): acknowledged sends, room
sequence numbers, repair, history and the TCP fallback. A native client asks
for it in C{"features"}; the server's answer lists it when granted. A feature
rather than a new version: a server that does not know it ignores the
member, so the client learns it is missing without a refusal and a second
connection.
"""
KNOWN_FEATURES = frozenset({DELIVERY})
MAX_FEATURES = 16
"""A request may name this many features at most (unknown ones are ignored, but not without bound)."""
MAX_CLIENT_ID = 64
_CLIENT_ID_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
MAX_RESUME_CREDENTIAL = 128
"""
The longest C{"resume"} credential a join may carry (the server's are 43
characters: 32 random bytes in URL-safe base64 without padding); a longer
one is no credential of ours, refused before any look-up.
"""
DEFAULT_MAX_ROOM_NAME = 64
DEFAULT_MAX_USER_NAME = 32
NOTICE_MARK = "*"
"""Every notice's text starts with this; no user name may."""
MODEL_ROOM_CLOSED = "チャットルームが閉じられました"
"""
What a model-dialect member is told when its room closes (host left, host
closed it, host timed out, server stopping): the course's model client ends
its program only on this exact text (or L{MODEL_REMOVED_FOR_SILENCE}).
"""
MODEL_REMOVED_FOR_SILENCE = "しばらく発言しなかったので、チャットルームから退出させました"
"""What a model-dialect member is told when it is itself removed for silence: the other sentence its client ends on."""


class Dialect(Enum):
    MODEL = "model"
    SEED = "seed"
    NATIVE = "native"
    WEB = "web"
    """
    A browser, through the daemon's WebSocket gateway (chatd.daemon.web,
    docs/web.md): never on the TCP or UDP ports, so no frame or datagram is
    ever encoded for it; the gateway speaks its own JSON messages.
    """


@dataclass(frozen=True, slots=True)
class RoomRequest:
    """A create or join request, whatever form its payload had."""

    username: str
    password: str | None = None
    invite: str | None = None
    version: int | None = None
    """The native protocol version; None for the legacy dialects."""
    native_only: bool = False
    """On create: admit native clients only (their traffic is sealed)."""
    features: frozenset[str] = frozenset()
    """The known features the native client asks for (unknown ones are dropped); empty for legacy clients."""
    client_id: str | None = None
    """
    The client's own id for itself (C{"client"}), the same across its
    reconnections, so that a message retransmitted after a rejoin is still
    recognised as a duplicate; None if not given.
    """
    resume: str | None = None
    """
    On a native join: the resume credential of the member this client was
    (C{"resume"}, docs/protocol.md section 4.1), which gives it that
    member's place back instead of a new one; None for a plain join, and
    always for a create and a legacy request.
    """

    @property
    def native(self) -> bool:
        return self.version is not None


def validate_name(name: str, max_bytes: int, what: str) -> str:
    """
    Refuse names that would confuse the people reading them.

    Not empty, at most C{max_bytes} of UTF-8, no control or format characters
    (they can rewrite a terminal line), no leading or trailing white space.
    """
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        # JSON can escape a lone surrogate, which no UTF-8 can carry.
        raise InvalidNameError(f"{what} is not valid Unicode") from None
    if size == 0:
        raise InvalidNameError(f"{what} is empty")
    if size > max_bytes:
        raise InvalidNameError(f"{what} is {size} bytes long; the limit is {max_bytes}")
    if name != name.strip():
        raise InvalidNameError(f"{what} starts or ends with white space")
    if any(unicodedata.category(char).startswith("C") for char in name):
        raise InvalidNameError(f"{what} holds a control character")
    return name


def validate_user_name(name: str, max_bytes: int) -> str:
    """
    A name that cannot pass for something else in a legacy client's text:
    no ':', so "name: text" always splits at the first ': ' into who and
    what; and no leading '*', which marks the server's notices.
    """
    validate_name(name, max_bytes, "user name")
    if ":" in name:
        raise InvalidNameError("user name holds ':'")
    if name.startswith(NOTICE_MARK):
        raise InvalidNameError(f"user name starts with {NOTICE_MARK!r}")
    return name


def decode_text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidUTF8Error(f"{what} is not valid UTF-8") from None


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedFrameError(f"{key!r} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUTF8Error(f"{key!r} is not valid Unicode") from None
    return value


@dataclass(frozen=True, slots=True)
class ParsedRoomRequest:
    """
    A create or join payload, parsed once: which dialect it asks for, and
    the request or why it is refused.

    The two are apart because the server decides the dialect first, so that
    even a refusal is worded for the client, and may refuse a legacy client
    before it looks at the request (legacy dialects turned off).
    """

    native: bool
    """
    The payload asks for the native protocol: a JSON object with a non-null
    C{"chatd"}, whether or not the rest of it is valid (an unsupported
    version, a bad user name are refused in the native form).
    """
    parsed: RoomRequest | ProtocolError

    def request(self) -> RoomRequest:
        """The request; raises the L{ProtocolError} that refuses it, if any."""
        if isinstance(self.parsed, ProtocolError):
            raise self.parsed
        return self.parsed


def read_room_request(payload: bytes, max_user_name: int = DEFAULT_MAX_USER_NAME) -> ParsedRoomRequest:
    """
    Parse a create or join payload in any accepted form, once.

    A JSON object C{{"username": ..., "password": ..., "invite": ...}} (the
    model dialect; native clients add C{"chatd": version}), or the bare user
    name as text (the seed dialect, and some model clients on create).
    Every refusal is a L{ProtocolError} kept in the result, not raised.
    """
    try:
        text = decode_text(payload, "request payload")
    except ProtocolError as error:
        return ParsedRoomRequest(False, error)
    if not text.lstrip().startswith("{"):
        try:
            return ParsedRoomRequest(False, RoomRequest(validate_user_name(text.rstrip("\r\n"), max_user_name)))
        except ProtocolError as error:
            return ParsedRoomRequest(False, error)
    try:
        # Starts with "{", so it parses to an object or not at all.
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return ParsedRoomRequest(False, MalformedFrameError("request payload is not valid JSON"))
    native = obj.get("chatd") is not None
    try:
        return ParsedRoomRequest(native, _request_from(obj, max_user_name))
    except ProtocolError as error:
        return ParsedRoomRequest(native, error)


def _request_from(obj: dict[str, Any], max_user_name: int) -> RoomRequest:
    version = obj.get("chatd")
    if version is not None:
        if not isinstance(version, int) or isinstance(version, bool):
            raise MalformedFrameError("'chatd' must be an integer protocol version")
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersionError(
                f"protocol version {version} is not supported; this server speaks {list(SUPPORTED_VERSIONS)}"
            )
    username = obj.get("username")
    if not isinstance(username, str):
        raise MalformedFrameError("'username' is missing or not a string")
    password = _optional_str(obj, "password")
    invite = _optional_str(obj, "invite")
    native_only = obj.get("native_only", False)
    if not isinstance(native_only, bool):
        raise MalformedFrameError("'native_only' must be true or false")
    features, client_id = (_features(obj), _client_id(obj)) if version is not None else (frozenset(), None)
    resume = _resume_credential(obj) if version is not None else None
    return RoomRequest(
        validate_user_name(username, max_user_name),
        password or None,
        invite or None,
        version,
        native_only,
        features,
        client_id,
        resume,
    )


def _features(obj: dict[str, Any]) -> frozenset[str]:
    """The known features of C{"features"} (absent or null: none)."""
    listed = obj.get("features")
    if listed is None:
        return frozenset()
    if not isinstance(listed, list) or len(listed) > MAX_FEATURES or not all(isinstance(f, str) for f in listed):
        raise MalformedFrameError(f"'features' must be a list of at most {MAX_FEATURES} strings")
    return KNOWN_FEATURES.intersection(listed)


def _client_id(obj: dict[str, Any]) -> str | None:
    """C{"client"}: 1 to 64 of A-Z, a-z, 0-9, '-' and '_' (absent or null: none)."""
    value = obj.get("client")
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CLIENT_ID or not _CLIENT_ID_CHARACTERS.issuperset(value):
        raise MalformedFrameError(f"'client' must be 1 to {MAX_CLIENT_ID} of A-Z, a-z, 0-9, '-' and '_'")
    return value


def _resume_credential(obj: dict[str, Any]) -> str | None:
    """
    C{"resume"}: 1 to 128 of A-Z, a-z, 0-9, '-' and '_', the alphabet the
    server's credentials are written in (absent, null or "": none).
    """
    value = obj.get("resume")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_RESUME_CREDENTIAL or not _CLIENT_ID_CHARACTERS.issuperset(value):
        raise MalformedFrameError(
            f"'resume' must be a resume credential: 1 to {MAX_RESUME_CREDENTIAL} of A-Z, a-z, 0-9, '-' and '_'"
        )
    return value


def parse_room_request(payload: bytes, max_user_name: int = DEFAULT_MAX_USER_NAME) -> RoomRequest:
    """L{read_room_request}'s request, or its refusal raised."""
    return read_room_request(payload, max_user_name).request()


SECRET_KEYS = frozenset({"password", "invite", "token", "key", "key_id", "resume"})
"""
Redacted from logged payloads: the secrets, and the UDP key id, which is
in clear on every sealed datagram, so a log that put it next to a user name
would tie that person to their UDP flow (docs/architecture.md, "Logging").
"""
REDACTED = "[redacted]"


def loggable_payload(payload: bytes, secret: bool = False) -> str:
    """
    A payload as text for a debug log, with passwords, tokens and invitations
    replaced by C{[redacted]}. C{secret} marks a payload that is a secret as a
    whole when it is not JSON (a legacy token or invitation).
    """
    text = payload.decode("utf-8", "backslashreplace")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        # Broken JSON may still hold a password: only plain text is shown.
        return REDACTED if secret or text.lstrip().startswith("{") else repr(text)
    if not isinstance(obj, dict):
        return REDACTED if secret else repr(text)
    return json.dumps(
        {key: REDACTED if key in SECRET_KEYS else value for key, value in obj.items()}, ensure_ascii=False
    )


def parse_port(payload: bytes) -> int:
    """The seed dialect's operation 3 payload: a UDP port as ASCII digits."""
    text = decode_text(payload, "port").strip()
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise MalformedFrameError("port must be a decimal number from 1 to 65535")
    return int(text)


def acknowledge_payload(status: Status, dialect: Dialect, message: str = "") -> bytes:
    """One status byte; native clients also get the reason as JSON after it."""
    if dialect is not Dialect.NATIVE or status is Status.SUCCESS:
        return bytes((status,))
    detail = {
        "chatd": NATIVE_VERSION,
        "status": status.name.lower(),
        "message": message,
        "versions": list(SUPPORTED_VERSIONS),
    }
    return bytes((status,)) + json.dumps(detail, ensure_ascii=False).encode("utf-8")


def error_payload(error: ProtocolError, dialect: Dialect) -> bytes:
    return acknowledge_payload(error.status, dialect, str(error))


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """What L{acknowledge_payload} says, read back (the client's side)."""

    status: int
    """
    The status byte: 0 for success; a refusal's otherwise, maybe one this
    client does not know (a newer server's), so an int and not a L{Status}.
    """
    message: str = ""
    """A native refusal's reason, for display; empty for the legacy form and for success."""
    versions: tuple[int, ...] = ()
    """The native protocol versions the server speaks, as a native refusal lists them."""

    @property
    def refusal(self) -> ProtocolError | None:
        """
        None for success; otherwise the error that names the status
        (L{error_for_status}), with the server's message: a caller catches
        C{RoomExistsError} rather than comparing numbers.
        """
        if self.status == Status.SUCCESS:
            return None
        return error_for_status(self.status, self.message)


def read_acknowledge_payload(payload: bytes) -> Acknowledgement:
    """
    The payload of an acknowledge frame (L{acknowledge_payload}): one status
    byte, and for a native refusal the JSON detail after it. Only a refusal's
    detail is read (a success is one byte in every dialect). Raises
    MalformedFrameError when there is no status byte, or the detail is not a
    JSON object whose known members have their documented types
    (docs/protocol.md section 3.2); members it does not know are ignored.
    """
    if not payload:
        raise MalformedFrameError("an acknowledge has no status byte")
    status = payload[0]
    if status == Status.SUCCESS or len(payload) == 1:
        return Acknowledgement(status)
    detail = decode_json(payload[1:])
    versions = detail.get("versions", [])
    if not isinstance(versions, list) or not all(_is_int(version) for version in versions):
        raise MalformedFrameError("'versions' must be an array of integers")
    return Acknowledgement(status, _optional_str(detail, "message") or "", tuple(versions))


def _is_int(value: object) -> bool:
    # JSON's true and false are Python ints too; no version is a boolean.
    return isinstance(value, int) and not isinstance(value, bool)


def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps({"chatd": NATIVE_VERSION, **obj}, ensure_ascii=False).encode("utf-8")


def members_payload(members: tuple[str, ...], host: str | None) -> bytes:
    """
    The native answer to operation 7 (MEMBERS): everyone in the room, in the
    order they entered, and the host's name (None only for a room being closed).

    Keys in this order: C{chatd}, C{members}, C{host}.
    """
    return encode_json({"members": list(members), "host": host})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def legacy_secret_payload(secret: str) -> bytes:
    """
    What a legacy client gets in a create, join or invite complete frame:
    its token, or the invitation, as ASCII text, nothing else.
    """
    return secret.encode("ascii")


@dataclass(frozen=True, slots=True)
class DeliveryStart:
    """Where a member with the "delivery" feature starts in its room's sequence (section 4.2)."""

    epoch: str
    """The room's incarnation: sequence numbers are only comparable under one epoch."""
    seq: int
    """The room's latest sequence number when the member entered (0: no message yet)."""
    history_from: int
    """The first sequence number of the history the member is offered on entering (C{seq + 1}: none)."""


def entered_payload(
    *,
    token: str,
    key: bytes,
    key_id: int,
    room: str,
    user: str,
    host: bool,
    members: Sequence[str],
    idle_timeout: float,
    keepalive_interval: float,
    delivery: DeliveryStart | None = None,
    resume: str | None = None,
) -> bytes:
    """
    The native answer to a create or join (operation 1 or 2, complete).

    Keys in this order: C{chatd}, C{token}, C{key} (the member's 32-byte UDP
    key in standard base64), C{key_id}, C{room}, C{user}, C{host} (whether
    the member is the host), C{members} (the room's names in the order they
    entered, the member last), C{idle_timeout}, C{keepalive_interval}
    (seconds, as numbers); then, only when the "delivery" feature is
    granted, C{features} (C{["delivery"]}) and C{delivery} (an object:
    C{epoch}, C{seq}, C{history_from}); last, when given, C{resume}: the
    member's resume credential, which a later join presents to take this
    membership back (the server gives one to every native member; absent,
    the object is byte for byte what it was before resuming existed).
    """
    obj: dict[str, Any] = {
        "token": token,
        "key": _b64(key),
        "key_id": key_id,
        "room": room,
        "user": user,
        "host": host,
        "members": list(members),
        "idle_timeout": idle_timeout,
        "keepalive_interval": keepalive_interval,
    }
    if delivery is not None:
        obj["features"] = [DELIVERY]
        obj["delivery"] = {"epoch": delivery.epoch, "seq": delivery.seq, "history_from": delivery.history_from}
    if resume is not None:
        obj["resume"] = resume
    return encode_json(obj)


def rekey_payload(key: bytes, key_id: int) -> bytes:
    """
    The answer to operation 6 (REKEY, complete): the member's new UDP key.

    Keys in this order: C{chatd}, C{key} (32 bytes in standard base64),
    C{key_id}.
    """
    return encode_json({"key": _b64(key), "key_id": key_id})


def invite_payload(invite: str, expires_in: float, dialect: Dialect) -> bytes:
    """
    The answer to operation 4 (INVITE, complete): a new invitation.

    Native, keys in this order: C{chatd}, C{invite}, C{expires_in} (the
    invitation's lifetime in seconds); legacy: the invitation as ASCII
    text (L{legacy_secret_payload}).
    """
    if dialect is not Dialect.NATIVE:
        return legacy_secret_payload(invite)
    return encode_json({"invite": invite, "expires_in": expires_in})


def decode_json(payload: bytes) -> dict[str, Any]:
    """Parse a native JSON payload (client side, and tests)."""
    try:
        obj = json.loads(decode_text(payload, "payload"))
    except (ValueError, RecursionError):
        raise MalformedFrameError("payload is not valid JSON") from None
    if not isinstance(obj, dict):
        raise MalformedFrameError("payload is not a JSON object")
    return obj


# -- the client's side of the native answers: each read where it is built ------------------


def room_request_payload(
    user: str,
    password: str | None,
    invite: str | None,
    native_only: bool,
    version: int = NATIVE_VERSION,
    features: Sequence[str] = (),
    client_id: str | None = None,
    resume: str | None = None,
) -> bytes:
    """
    A native create or join request (docs/protocol.md section 4.1): keys
    C{chatd} (the protocol C{version} the client speaks), C{username}, then
    C{password}, C{invite}, C{native_only} (a create's alone), C{features},
    C{client} and C{resume} (a join's resume credential) when given, as
    ASCII JSON.
    """
    obj: dict[str, Any] = {"chatd": version, "username": user}
    if password:
        obj["password"] = password
    if invite:
        obj["invite"] = invite
    if native_only:
        obj["native_only"] = True
    if features:
        obj["features"] = list(features)
    if client_id is not None:
        obj["client"] = client_id
    if resume is not None:
        obj["resume"] = resume
    return json.dumps(obj).encode("utf-8")


@dataclass(frozen=True, slots=True)
class EnteredAnswer:
    """What L{entered_payload} says, read back."""

    token: str
    key: bytes
    key_id: int
    room: str
    user: str
    host: bool
    members: tuple[str, ...]
    idle_timeout: float
    keepalive_interval: float
    delivery: DeliveryStart | None = None
    """Set when the server granted the "delivery" feature."""
    resume: str | None = None
    """The member's resume credential, for its next join to take this place back; None from an older server."""


def read_key(obj: dict[str, Any]) -> tuple[bytes, int]:
    """The UDP key and key id of a create, join or rekey answer; MalformedFrameError if unusable."""
    try:
        return base64.b64decode(str(obj["key"]), validate=True), int(obj["key_id"])
    except (KeyError, ValueError, TypeError) as error:
        raise MalformedFrameError(f"the server's key is unusable: {error}") from None


def read_entered_payload(payload: bytes) -> EnteredAnswer:
    """The native answer to a create or join (L{entered_payload}); MalformedFrameError if unusable."""
    obj = decode_json(payload)
    key, key_id = read_key(obj)
    try:
        return EnteredAnswer(
            token=str(obj.get("token", "")),
            key=key,
            key_id=key_id,
            room=str(obj["room"]),
            user=str(obj["user"]),
            host=bool(obj["host"]),
            members=tuple(str(name) for name in obj["members"]),
            idle_timeout=float(obj["idle_timeout"]),
            keepalive_interval=float(obj["keepalive_interval"]),
            delivery=_read_delivery(obj),
            resume=_read_resume(obj),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise MalformedFrameError(f"the room answer is unusable: {error}") from None


def _read_resume(obj: dict[str, Any]) -> str | None:
    """The answer's resume credential; absent or null from a server that does not offer resuming."""
    value = obj.get("resume")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError("'resume' is not a credential")
    return value


def _read_delivery(obj: dict[str, Any]) -> DeliveryStart | None:
    features = obj.get("features")
    if not isinstance(features, list) or DELIVERY not in features:
        return None
    start = obj["delivery"]
    seq, history_from = start["seq"], start["history_from"]
    if not isinstance(seq, int) or not isinstance(history_from, int) or not 0 < history_from <= seq + 1:
        raise ValueError(f"delivery start {seq}, history from {history_from}")
    return DeliveryStart(str(start["epoch"]), seq, history_from)


def read_rekey_payload(payload: bytes) -> tuple[bytes, int]:
    """The new UDP key and key id of L{rekey_payload}."""
    return read_key(decode_json(payload))


def read_members_payload(payload: bytes) -> tuple[tuple[str, ...], str | None]:
    """The member list and the host's name (None if not given) of L{members_payload}."""
    obj = decode_json(payload)
    listed = obj.get("members")
    if not isinstance(listed, list):
        raise MalformedFrameError("the member list has no 'members' array")
    host = obj.get("host")
    return tuple(str(name) for name in listed), host if isinstance(host, str) else None


def read_invite_payload(payload: bytes) -> str:
    """The invitation of a native L{invite_payload}."""
    try:
        return str(decode_json(payload)["invite"])
    except KeyError:
        raise MalformedFrameError("the invitation answer has no 'invite'") from None


class NoticeKind(Enum):
    MEMBER_JOINED = "joined"
    MEMBER_LEFT = "left"
    TIMED_OUT = "timed_out"
    ROOM_CLOSED = "room_closed"
    SERVER_STOPPING = "server_stopping"
    THROTTLED = "throttled"
    SERVER_DEGRADED = "server_degraded"
    """
    The server (a node of a cluster) lost the cluster's shared state (Redis):
    its room reaches only the members on this server until it recovers.
    Native members only: the legacy dialects' wire does not change.
    """
    SERVER_RECOVERED = "server_recovered"
    """The server has the cluster's shared state again (after SERVER_DEGRADED). Native members only."""


@dataclass(frozen=True, slots=True)
class Notice:
    """
    A system message about a room: who came, who went, why it ended.

    C{user} is the member the notice is about, if any. Legacy clients get
    L{text_for} as plain text; native clients get L{to_json}. A notice says
    what changed, never who is in the room: its size does not grow with the
    room, so telling a room of N about a change costs N notices, not N
    squared names (the member list comes with the create or join answer and
    from operation 7, L{members_payload}).
    """

    kind: NoticeKind
    room: str
    user: str | None = None
    reason: str = ""
    idle_timeout: float = 0.0
    for_silence: bool = False
    """
    C{user} was removed for silence: always so for TIMED_OUT, and for a
    ROOM_CLOSED whose host timed out (the host is C{user} then).
    """
    _encoded: dict[tuple[bool, Dialect], bytes] = field(default_factory=dict, compare=False, repr=False)
    """One encoding per (about the recipient?, dialect): a room's notice goes to every member."""
    frames: dict[tuple[bool, Dialect, SizeEncoding], tuple[Frame, bytes]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """
    The notice as a TCP frame and its bytes, per (about the recipient?,
    dialect, size encoding), filled by the TCP protocol: a join in a room of
    N is framed a few times, not N times.
    """

    def text_for(self, recipient: str) -> str:
        about_you = recipient == self.user
        if self.kind is NoticeKind.MEMBER_JOINED:
            return f"* {self.user} joined {self.room}"
        if self.kind is NoticeKind.MEMBER_LEFT:
            return f"* {self.user} left {self.room}"
        if self.kind is NoticeKind.TIMED_OUT:
            seconds = f"{self.idle_timeout:g} s"
            if about_you:
                return f"* you were removed from {self.room} after {seconds} without activity"
            return f"* {self.user} was removed from {self.room} after {seconds} without activity"
        if self.kind is NoticeKind.ROOM_CLOSED:
            return f"* room {self.room} was closed: {self.reason}"
        if self.kind is NoticeKind.THROTTLED:
            return "* you are sending too fast: messages are being dropped; slow down"
        if self.kind is NoticeKind.SERVER_DEGRADED:
            return f"* the server is degraded: room {self.room} reaches only this server's members until it recovers"
        if self.kind is NoticeKind.SERVER_RECOVERED:
            return f"* the server has recovered: room {self.room} reaches every member again"
        return f"* the server is shutting down; room {self.room} is closed"

    def model_text_for(self, recipient: str) -> str:
        """
        The text for a model-dialect member: the course's model client ends
        its program only on one of its server's two exact sentences, so the
        notices that end a membership are those sentences, nothing added (a
        member left running in a room that no longer exists would be
        stranded); every other notice keeps chatd's wording.
        """
        about_you = recipient == self.user
        if self.kind in (NoticeKind.ROOM_CLOSED, NoticeKind.SERVER_STOPPING):
            return MODEL_REMOVED_FOR_SILENCE if about_you and self.for_silence else MODEL_ROOM_CLOSED
        if self.kind is NoticeKind.TIMED_OUT and about_you:
            return MODEL_REMOVED_FOR_SILENCE
        return self.text_for(recipient)

    def to_json(self, recipient: str) -> bytes:
        obj: dict[str, Any] = {
            "event": self.kind.value,
            "room": self.room,
            "text": self.text_for(recipient),
        }
        if self.user is not None:
            obj["user"] = self.user
        if self.reason:
            obj["reason"] = self.reason
        return encode_json(obj)

    def encode_for(self, recipient: str, dialect: Dialect) -> bytes:
        # The payload differs only for the member the notice is about, so a
        # join in a room of N is encoded twice, not N times.
        key = (recipient == self.user, dialect)
        encoded = self._encoded.get(key)
        if encoded is None:
            if dialect is Dialect.NATIVE:
                encoded = self.to_json(recipient)
            elif dialect is Dialect.MODEL:
                encoded = self.model_text_for(recipient).encode("utf-8")
            else:
                encoded = self.text_for(recipient).encode("utf-8")
            self._encoded[key] = encoded
        return encoded


@dataclass(frozen=True, slots=True)
class ReceivedNotice:
    """
    What L{Notice.to_json} says, read back as its recipient got it: the
    client's side of a native notice (docs/protocol.md section 4.6), from a
    NOTICE frame or the body of a sealed NOTICE datagram.
    """

    kind: NoticeKind | None
    """None for an event this reader does not know (a newer server's), or none named."""
    room: str = ""
    text: str = ""
    """The legacy text, worded for this recipient (L{Notice.text_for})."""
    user: str | None = None
    """The member the notice is about, if any."""
    reason: str = ""
    """Why the room ended (C{room_closed}, C{server_stopping})."""
    members: tuple[str, ...] | None = None
    """
    The whole member list, which only a server from before notices became
    changes only sent; None from every current server.
    """


def read_notice(obj: dict[str, Any]) -> ReceivedNotice:
    """
    A native notice object (L{Notice.to_json}), parsed. Members it does not
    know are ignored and absent ones read as empty (docs/protocol.md section
    9: a server may add members, and older ones sent fewer); an C{event} it
    does not know reads as kind None. A known member of the wrong type
    raises MalformedFrameError (InvalidUTF8Error for a string that is not
    valid Unicode).
    """
    event = _optional_str(obj, "event")
    kind = _NOTICE_KINDS.get(event) if event is not None else None
    listed = obj.get("members")
    members: tuple[str, ...] | None = None
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
            raise MalformedFrameError("'members' must be an array of strings")
        members = tuple(listed)
    return ReceivedNotice(
        kind=kind,
        room=_optional_str(obj, "room") or "",
        text=_optional_str(obj, "text") or "",
        user=_optional_str(obj, "user"),
        reason=_optional_str(obj, "reason") or "",
        members=members,
    )


def read_notice_payload(payload: bytes) -> ReceivedNotice:
    """A NOTICE frame's payload, or a NOTICE datagram's body, as L{read_notice} reads it."""
    return read_notice(decode_json(payload))


_NOTICE_KINDS = {kind.value: kind for kind in NoticeKind}
