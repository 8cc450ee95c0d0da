"""
What a chat client hears, as typed values: messages, who came and went,
why the room ended, and how the connection is doing.

Pure: chatd.client.core builds these from what the protocol's readers make
of the wire (chatd.protocol.payloads), and chatd.client.chat_client hands
them to its listener; user interfaces only ever see these types, never bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatd.protocol.payloads import NoticeKind, ReceivedNotice

ACTION_PREFIX = "/me "
"""A message starting with this is an action: shown as C{* name rest}."""


@dataclass(frozen=True, slots=True)
class MessageReceived:
    sender: str
    text: str
    time: float
    """When the server relayed it, in seconds since the epoch (the server's clock)."""
    seq: int | None = None
    """The room's sequence number for it (with the "delivery" feature; None without)."""
    history: bool = False
    """Said before this client entered: offered as history on entering (docs/reliability.md)."""

    @property
    def is_action(self) -> bool:
        return self.text.startswith(ACTION_PREFIX)

    @property
    def action(self) -> str:
        """The action's text without the C{/me } prefix."""
        return self.text[len(ACTION_PREFIX) :]


@dataclass(frozen=True, slots=True)
class MemberJoined:
    user: str
    members: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class MemberLeft:
    user: str
    members: tuple[str, ...]
    text: str
    timed_out: bool = False
    """The member was removed for inactivity rather than leaving."""


@dataclass(frozen=True, slots=True)
class RoomClosed:
    """The host left or closed the room; no token of it works any more."""

    room: str
    reason: str
    text: str


@dataclass(frozen=True, slots=True)
class RemovedForInactivity:
    """This client was silent too long and is no longer in the room."""

    room: str
    text: str


@dataclass(frozen=True, slots=True)
class ServerStopping:
    """The server is shutting down; the client will try to come back."""

    room: str
    text: str


@dataclass(frozen=True, slots=True)
class ServerDegraded:
    """
    The server (a node of a cluster) lost the cluster's shared state: what
    is said in the room reaches only the members on this server, and the
    client's own messages wait to be acknowledged, until L{ServerRecovered}.
    """

    room: str
    text: str


@dataclass(frozen=True, slots=True)
class ServerRecovered:
    """The server has the cluster's shared state again: the room reaches every member."""

    room: str
    text: str


@dataclass(frozen=True, slots=True)
class Throttled:
    """This client sent too fast: some of its messages were dropped."""

    room: str
    text: str


_SOCKET_WORDING = ("Connection was closed cleanly", "Connection to the other side was lost")
"""
How Twisted words a closed or broken connection: true of the socket, and of
no use to a reader ("closed cleanly" is what a killed server's connection
says too). What it means to a person is that the server went away.
"""


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    reason: str
    will_reconnect: bool

    @property
    def explanation(self) -> str | None:
        """The reason, when it says more than that the socket closed; None when it does not."""
        text = self.reason.removeprefix("* ").strip()
        if not text or text.startswith(_SOCKET_WORDING):
            return None
        return text


@dataclass(frozen=True, slots=True)
class Reconnecting:
    attempt: int
    delay: float
    """Seconds until this attempt."""
    server: str = field(default="", compare=False)
    """
    The server this attempt goes to (C{host:port}); empty when not said.
    Where, not what: two events that say the same differ in nothing else.
    """
    resuming: bool = False
    """The attempt resumes the membership (its resume credential) before anything else."""


@dataclass(frozen=True, slots=True)
class Reconnected:
    room: str
    members: tuple[str, ...]
    host: str | None = None
    """Who hosts the room now (None if this client cannot tell)."""
    server: str = field(default="", compare=False)
    """The server the client is on now (C{host:port}); empty when not said. Not compared, as L{Reconnecting}'s."""
    resumed: bool = False
    """
    The membership was resumed (docs/protocol.md 4.1): the same place in the
    room, the host role if it was ours, and nobody was told we left; False
    when the client entered anew (the room was created or joined again).
    """
    as_host: bool = field(default=False, compare=False)
    """This client is the room's host (C{host} is its own name): said, not compared, as it follows from C{host}."""


@dataclass(frozen=True, slots=True)
class WaitingForHost:
    """
    After a server restart the room is gone, and only the member that was
    its host may create it again: this client, a member, retries its join.
    """

    room: str
    host: str | None
    """The host it waits for, if known."""
    attempt: int
    delay: float
    """Seconds until the next try."""
    gives_up_in: float
    """Seconds until it stops waiting."""


@dataclass(frozen=True, slots=True)
class UdpPathLost:
    """Keepalives have gone unanswered: messages cannot be delivered over UDP."""

    silent_for: float
    """Seconds since the last datagram from the server."""


@dataclass(frozen=True, slots=True)
class UdpPathRestored:
    """Datagrams from the server arrive again after a L{UdpPathLost}."""


@dataclass(frozen=True, slots=True)
class MessageStateChanged:
    """
    One of this client's messages changed state (with the "delivery"
    feature): C{state} is C{"sending"}, C{"sent"} (acknowledged: C{seq} is
    its place in the room) or C{"not delivered"} (given up; /retry sends it
    again under the same id, so it is never shown twice).
    """

    message_id: int
    text: str
    state: str
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class MessagesMissed:
    """Messages C{first} to C{last} are older than the room's history and cannot be shown: never skipped silently."""

    first: int
    last: int
    text: str
    """The sentence to show, e.g. C{"3 messages missed"}."""

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class RoomRecreated:
    """The room was created again (a new epoch): its numbering started again and earlier messages are gone."""

    room: str
    text: str


@dataclass(frozen=True, slots=True)
class DeliveryPathChanged:
    """
    Messages now go by C{path}, C{"udp"} or C{"tcp"} (with the "delivery"
    feature: the TCP fallback when UDP is blocked); C{text} is the sentence to
    show, e.g. C{"UDP blocked: messages go over TCP"}.
    """

    path: str
    text: str


ChatEvent = (
    MessageReceived
    | MessageStateChanged
    | MessagesMissed
    | RoomRecreated
    | DeliveryPathChanged
    | MemberJoined
    | MemberLeft
    | RoomClosed
    | RemovedForInactivity
    | ServerStopping
    | ServerDegraded
    | ServerRecovered
    | Throttled
    | ConnectionLost
    | Reconnecting
    | Reconnected
    | WaitingForHost
    | UdpPathLost
    | UdpPathRestored
)


def event_from_notice(notice: ReceivedNotice, me: str, members: tuple[str, ...] = ()) -> ChatEvent | None:
    """
    The event for a native notice (docs/protocol.md, "Notices"; read from
    the wire by L{chatd.protocol.payloads.read_notice}), as seen by member
    C{me}; None for an event this client does not know (a newer server).

    A notice says who came or went, not who is there: C{members} is the list
    the client holds (from its create or join answer, or operation 7), and a
    C{MemberJoined} or C{MemberLeft} carries that list with the change
    applied (L{apply_presence}). A notice that does carry a member list (a
    server from before notices became changes only) is taken at its word.
    """
    kind = notice.kind
    user = notice.user or ""
    if notice.members is not None:
        members = notice.members
    elif kind in _PRESENCE:
        members = apply_presence(members, user, joined=kind is NoticeKind.MEMBER_JOINED)
    if kind is NoticeKind.MEMBER_JOINED:
        return MemberJoined(user, members, notice.text)
    if kind is NoticeKind.MEMBER_LEFT:
        return MemberLeft(user, members, notice.text)
    if kind is NoticeKind.TIMED_OUT:
        if user == me:
            return RemovedForInactivity(notice.room, notice.text)
        return MemberLeft(user, members, notice.text, timed_out=True)
    if kind is NoticeKind.ROOM_CLOSED:
        return RoomClosed(notice.room, notice.reason, notice.text)
    if kind is NoticeKind.SERVER_STOPPING:
        return ServerStopping(notice.room, notice.text)
    if kind is NoticeKind.THROTTLED:
        return Throttled(notice.room, notice.text)
    if kind is NoticeKind.SERVER_DEGRADED:
        return ServerDegraded(notice.room, notice.text)
    if kind is NoticeKind.SERVER_RECOVERED:
        return ServerRecovered(notice.room, notice.text)
    return None


_PRESENCE = frozenset({NoticeKind.MEMBER_JOINED, NoticeKind.MEMBER_LEFT, NoticeKind.TIMED_OUT})
"""The notices that change who is in the room."""


def apply_presence(members: tuple[str, ...], user: str, *, joined: bool) -> tuple[str, ...]:
    """
    C{members} after C{user} joined (added at the end: the list is in join
    order) or left. Idempotent, because a change can reach a client whose
    list already holds it: a change the server held back (docs/protocol.md,
    "Coalescing") that happened before an operation 7 answer arrives after it.
    """
    if joined:
        return members if user in members else (*members, user)
    return tuple(name for name in members if name != user)
