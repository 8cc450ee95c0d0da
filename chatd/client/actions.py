"""
What the client core and its adapter say to each other: the values the core
keeps (its state, the room it is in, what it asked for, its tunables), the
L{Action}s it returns, and the bookkeeping of the timers it asks for.

Pure values, no logic of the protocol: chatd.client.core (and the modules it
is made of) builds them, chatd.client.chat_client carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from chatd.client.events import ChatEvent
from chatd.protocol.errors import ChatError
from chatd.protocol.seal import REKEY_AFTER
from chatd.protocol.wire import Operation

UDP_PROBE_INTERVAL = 1.5
"""
Seconds after an unanswered keepalive before another goes out. The server
answers at once, so an answer that late is one that is not coming; probing
this much sooner than the keepalive interval (30 s) is what lets a dead UDP
path be reported within seconds rather than at the next keepalive.
"""
UDP_LOST_AFTER = 4.0
"""Seconds of unanswered keepalives (about three of them) before the path is reported lost."""
UDP_CONFIRM_WAIT = 2.0
"""Seconds a create or join (or a rejoin) waits for the server to answer the first keepalive."""
HOST_WAIT = 120.0
"""
Seconds a member waits, after a server restart, for the room's host to
create the room again before it gives up.
"""
RETRY_JITTER = 0.2
"""
Each delay between reconnect tries (while the server is out of reach, and
while waiting for the host) is shortened by a random part of up to this
fraction, so that the clients of a server that restarted, who all lost their
connection at the same moment, do not all ask at the same moments.
"""

KEEPALIVE = "keepalive"
"""The timer of the regular keepalive."""
PROBE = "probe"
"""The timer of the next keepalive sent early because the last one is still unanswered."""
REQUEST = "request"
"""The timer of the request waiting for its answer."""
CONFIRM = "confirm"
"""The timer of a rejoin's wait for the first keepalive's answer, before it says Reconnected."""
DELIVERY = "delivery"
"""
The timer of reliable delivery (chatd.client.reliable): the earliest of the
outbox's retransmissions, the timeline's repairs and the path monitor's
deadlines, so that the three share one timer.
"""


# -- what the client knows -----------------------------------------------------


class ConnectionState(Enum):
    IDLE = "not connected"
    CONNECTING = "connecting"
    IN_ROOM = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """What the server said on entering a room."""

    room: str
    user: str
    host: bool
    members: tuple[str, ...]
    idle_timeout: float
    keepalive_interval: float


@dataclass(frozen=True, slots=True)
class Membership:
    """What the client asked for, so it can ask again after a reconnect."""

    operation: Operation
    room: str
    user: str
    password: str | None
    invite: str | None
    native_only: bool = False
    """A create of a room only native clients may join (docs/protocol.md 4.8; over TLS only)."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """The client's tunables (ChatClient's keyword arguments of the same names)."""

    request_timeout: float = 10.0
    reconnect: bool = True
    first_retry_delay: float = 0.5
    max_retry_delay: float = 30.0
    rekey_after: int = REKEY_AFTER
    host_wait: float = HOST_WAIT
    retry_jitter: float = RETRY_JITTER
    udp_probe_interval: float = UDP_PROBE_INTERVAL
    udp_lost_after: float = UDP_LOST_AFTER
    udp_confirm_wait: float = UDP_CONFIRM_WAIT
    server_silent_after: float = 30.0
    """
    With reliable delivery, seconds without anything from the server (no
    frame on the control connection, no datagram that authenticates) after
    which the node is taken for dead and the control connection dropped, so
    that the client resumes, there or on the next server. Every keepalive is
    answered on one path or the other and goes at least every 10 s, so three
    go unanswered first. 0 never drops it.
    """
    delivery: bool = False
    """
    Ask for the "delivery" feature on every create and join (docs/reliability.md).
    False: never ask, and behave exactly as a client without it. Off unless
    asked for, so that a library user (and every test written before the
    feature) gets the requests and events it always got; chatd-chat asks.
    """


# -- actions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendFrame:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendDatagram:
    data: bytes


@dataclass(frozen=True, slots=True)
class Emit:
    event: ChatEvent


@dataclass(frozen=True, slots=True)
class StartTimer:
    name: str
    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Answer:
    """The end of request C{request}: its C{result} (see L{ClientCore.request}), or C{error}."""

    request: int
    result: object = None
    error: ChatError | None = None


@dataclass(frozen=True, slots=True)
class KeepaliveAnswered:
    pass


@dataclass(frozen=True, slots=True)
class AbortControl:
    """The server's stream is unreadable: drop the control connection at once."""


@dataclass(frozen=True, slots=True)
class CloseControl:
    """Close the control connection; the actions after this one are carried out once it is closed."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Wait C{delay} seconds, then call L{ClientCore.reconnect_due} (unless the session ended meanwhile)."""

    delay: float


@dataclass(frozen=True, slots=True)
class Connect:
    """
    Open a new control connection (and the UDP port, if it is not open yet)
    to the server in use (L{ClientCore.servers}), then report it with
    L{ClientCore.control_opened}, or the failure (a ChatError) with
    L{ClientCore.rejoin_failed}.
    """


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The session is over: stop every timer and close both sockets."""


@dataclass(frozen=True, slots=True)
class Log:
    level: str
    """'info', 'warn' or 'error'."""
    message: str


Action = (
    SendFrame
    | SendDatagram
    | Emit
    | StartTimer
    | CancelTimer
    | Answer
    | KeepaliveAnswered
    | AbortControl
    | CloseControl
    | Reconnect
    | Connect
    | Shutdown
    | Log
)


class Timers:
    """
    The timers the core asked its adapter to run, by name, so that a cancel
    goes out only for a running timer, and a timer that fired after it was
    cancelled (the adapter's call was already on its way) is ignored.
    """

    def __init__(self) -> None:
        self._running: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._running

    def start(self, name: str, delay: float) -> StartTimer:
        """Start C{name} (the adapter replaces it if it runs)."""
        self._running.add(name)
        return StartTimer(name, delay)

    def cancel(self, name: str) -> list[Action]:
        if name not in self._running:
            return []
        self._running.discard(name)
        return [CancelTimer(name)]

    def fired(self, name: str) -> bool:
        """Timer C{name} ran out: whether it was running (it is not any more)."""
        if name not in self._running:
            return False
        self._running.discard(name)
        return True
