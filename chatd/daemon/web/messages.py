"""
The browser's wire: the JSON messages a page and the WebSocket gateway
exchange (docs/web.md, field by field). A pure codec: text in, typed values
out, and back; no Twisted, no I/O, so every branch is tested without a
reactor or a browser.

Each WebSocket message is one text frame holding one JSON object whose
C{"type"} names it. What the browser sends is read strictly (L{read_request}):
an unknown type, a missing field or a field of the wrong type is a
MalformedFrameError, whose C{closes} makes the gateway close the WebSocket,
as a TCP peer that breaks framing is disconnected. What the gateway sends is
made by the C{*_message} functions, each in one place; C{encode} writes one
as compact UTF-8 JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from chatd.protocol.errors import MalformedFrameError, ProtocolError
from chatd.protocol.payloads import NoticeKind

MAX_MESSAGE_ID: Final = 2**53 - 1
"""The largest message id a page may give a send: JavaScript's largest exact integer."""
CREATE: Final = "create"
JOIN: Final = "join"


# -- what the browser sends -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enter:
    """C{{"type": "enter"}}: create or join a room, as the TCP create and join do."""

    create: bool
    room: str
    name: str
    password: str | None = None
    invite: str | None = None


@dataclass(frozen=True, slots=True)
class Say:
    """C{{"type": "say"}}: a message for the room; C{id} is the page's own, answered by L{sent_message}."""

    id: int
    text: str


@dataclass(frozen=True, slots=True)
class Invite:
    """C{{"type": "invite"}}: (the host) a single-use invitation to the room."""


@dataclass(frozen=True, slots=True)
class Members:
    """C{{"type": "members"}}: the member list, now."""


@dataclass(frozen=True, slots=True)
class Leave:
    """C{{"type": "leave"}}: leave the room on purpose (a host closes it); the gateway then closes the WebSocket."""


Request = Enter | Say | Invite | Members | Leave
"""Everything a page may send."""


def _string(obj: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise MalformedFrameError(f"{key!r} must be a string")
    return value


def _required(obj: dict[str, Any], key: str) -> str:
    value = _string(obj, key)
    assert value is not None
    return value


def read_request(text: str) -> Request:
    """One message from a page, read strictly; MalformedFrameError for anything else."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise MalformedFrameError("a message is one JSON object") from None
    if not isinstance(obj, dict):
        raise MalformedFrameError("a message is one JSON object")
    kind = obj.get("type")
    if kind == "say":
        message_id = obj.get("id")
        # bool is an int to Python, not to a page.
        if isinstance(message_id, bool) or not isinstance(message_id, int) or not 0 <= message_id <= MAX_MESSAGE_ID:
            raise MalformedFrameError(f"'id' must be an integer from 0 to {MAX_MESSAGE_ID}")
        return Say(message_id, _required(obj, "text"))
    if kind == "enter":
        action = obj.get("action")
        if action not in (CREATE, JOIN):
            raise MalformedFrameError("'action' must be 'create' or 'join'")
        password = _string(obj, "password", optional=True) or None
        invite = _string(obj, "invite", optional=True) or None
        if action == CREATE and invite is not None:
            raise MalformedFrameError("an invitation is for joining a room")
        if password is not None and invite is not None:
            raise MalformedFrameError("a password or an invitation, not both")
        return Enter(action == CREATE, _required(obj, "room"), _required(obj, "name"), password, invite)
    if kind == "invite":
        return Invite()
    if kind == "members":
        return Members()
    if kind == "leave":
        return Leave()
    raise MalformedFrameError(f"unknown message type {kind!r}")


# -- what the gateway sends -------------------------------------------------


def encode(message: dict[str, Any]) -> bytes:
    """One message as a WebSocket text frame's payload: compact JSON, UTF-8."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def chat_message(seq: int, time_ms: int, sender: str, text: str, *, history: bool = False) -> dict[str, Any]:
    """
    C{{"type": "message"}}: one message of the room, numbered C{seq} in room
    order, said at C{time_ms}; C{history} when it was said before the page
    entered (sent inside L{entered_message}).
    """
    message: dict[str, Any] = {"type": "message", "seq": seq, "time": time_ms, "from": sender, "text": text}
    if history:
        message["history"] = True
    return message


def entered_message(
    *,
    room: str,
    name: str,
    created: bool,
    host: str | None,
    members: tuple[str, ...],
    epoch: str,
    latest: int,
    history: list[dict[str, Any]],
    idle_timeout: float,
) -> dict[str, Any]:
    """
    C{{"type": "entered"}}: the create or join succeeded. C{epoch} names
    this incarnation of the room (a room made again after a restart numbers
    from 1 again under a new one); C{latest} is its latest sequence number
    as the page entered: every message after it comes as a L{chat_message};
    C{history} holds the ones before it that the room offers on joining.
    """
    return {
        "type": "entered",
        "room": room,
        "name": name,
        "created": created,
        "host": host,
        "members": list(members),
        "epoch": epoch,
        "latest": latest,
        "history": history,
        "idle_timeout": idle_timeout,
    }


def sent_message(message_id: int, seq: int, time_ms: int) -> dict[str, Any]:
    """C{{"type": "sent"}}: the page's message C{message_id} is in the room, numbered C{seq} at C{time_ms}."""
    return {"type": "sent", "id": message_id, "seq": seq, "time": time_ms}


def members_message(members: tuple[str, ...], host: str | None) -> dict[str, Any]:
    """C{{"type": "members"}}: everyone in the room, in entry order (host first), and the host's name."""
    return {"type": "members", "members": list(members), "host": host}


def invitation_message(invite: str, expires_in: float) -> dict[str, Any]:
    """C{{"type": "invitation"}}: a single-use invitation token, valid for C{expires_in} seconds."""
    return {"type": "invitation", "invite": invite, "expires_in": expires_in}


def notice_message(kind: NoticeKind, text: str, user: str | None, reason: str) -> dict[str, Any]:
    """
    C{{"type": "notice"}}: a notice of the room, its C{event} the native
    notice's (joined, left, timed_out, room_closed, server_stopping,
    throttled) and its C{text} worded for this member.
    """
    message: dict[str, Any] = {"type": "notice", "event": kind.value, "text": text}
    if user is not None:
        message["user"] = user
    if reason:
        message["reason"] = reason
    return message


def sentence(text: str) -> str:
    """C{text} as a sentence: its first letter capitalised, a full stop at the end."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def refused_message(error: ProtocolError, message_id: int | None = None) -> dict[str, Any]:
    """
    C{{"type": "refused"}}: a request refused, C{error} its reason (the
    daemon's own, as in the logs and counters) and C{text} one sentence for
    a person; C{id} when it is a L{Say} that was not sent.
    """
    message: dict[str, Any] = {"type": "refused", "error": error.reason, "text": sentence(str(error))}
    if message_id is not None:
        message["id"] = message_id
    return message
