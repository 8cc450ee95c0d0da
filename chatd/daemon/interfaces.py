"""
The seams between chatd's parts, as zope interfaces.

Room state sits behind L{IRoomStore}, whose in-memory implementation is
L{chatd.daemon.rooms.RoomRegistry}; a shared (Redis) store can replace it without
touching the codecs or the protocols. Control operations return Deferreds
because a shared store, and password hashing, take time; the datagram path's
look-ups are synchronous because they run for every datagram and must be
answered from local state.

The UDP side has three seams. The relay sends through an L{IFanoutTransport}
(chatd's batching port provides it; Twisted's stock port is adapted to it by
L{chatd.daemon.fanout.WriteEachTransport}), which prepares a room's
destinations once as an L{IFanout} and reports the copies the kernel refused
after they were queued to the listener registered with it. The relay tells
the controller of a member sending too fast through L{IRelayObserver}, and
the controller hands the relay the notices to send as datagrams through
L{IDatagramNotices}: notices go one way, controller to relay. A fourth,
L{ITunnelledDatagrams}, carries the sealed frames a member's control
connection received as operation 8 (reliable delivery's TCP fallback) to the
relay; the relay sends frames the other way through the member's
L{IMemberConnection.send_datagram}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from twisted.internet.defer import Deferred

    from chatd.daemon.rooms import CloseReason, LeaveReason, Member, Room
    from chatd.daemon.sockaddr import Address
    from chatd.protocol.payloads import Dialect, Notice, RoomRequest
    from chatd.protocol.seal import Channel


class IMemberConnection(Interface):
    """A member's open TCP control connection: its presence and notice channel."""

    def send_notice(notice: Notice) -> None:
        """Send a system notice as a TCP frame."""

    def send_datagram(sealed: bytes) -> bool:
        """
        Send one sealed frame as an operation 8 (DATAGRAM) frame, State 2, as
        notices are sent (flow-controlled, within the send queue): the TCP
        path of a member with the "delivery" feature. False when the
        connection sends nothing more (it is closing or gone).
        """

    def close() -> None:
        """Close the connection after what was sent is flushed."""


class IMessageStream(Interface):
    """
    A member reached over its own connection rather than by UDP: a browser's
    WebSocket (chatd.daemon.web). The relay hands it every message of its
    room, as numbered in the room's history, in that order; notices reach it
    as its L{IMemberConnection}.
    """

    def send_message(sender: Member, seq: int, time_ms: int, message: bytes) -> None:
        """
        C{sender} said C{message} (UTF-8, as relayed; C{/me} actions as sent),
        numbered C{seq} at C{time_ms} (milliseconds since the epoch). Never
        raises: a stream that cannot send drops the message (its member
        reconnects and is given the history).
        """


class IDatagramNotices(Interface):
    """Notices sent as datagrams, to members without a TCP connection (the relay)."""

    def send_notice(member: Member, notice: Notice) -> None:
        """Send C{notice} to C{member}'s registered UDP address (sealed for a native member); never raises."""


class ITunnelledDatagrams(Interface):
    """
    Sealed frames that a member's control connection carried as operation 8
    (the TCP fallback of reliable delivery): handed by the connection to
    the relay (given to the TCP factory by the controller), which checks
    and handles them as datagrams.
    """

    def tunnelled(member: Member, data: bytes, peer: Address) -> None:
        """
        C{data} came inside an operation 8 frame on C{member}'s connection,
        from C{peer} (its TCP address, for the drop counters' warnings). It
        is checked as a datagram would be, but for the source address: it
        must be sealed under C{member}'s own key. Never raises: what fails
        is dropped and counted, and the connection stays open.
        """


class IRelayObserver(Interface):
    """Told by the relay of what calls for a notice; it decides who is told what (the controller)."""

    def member_throttled(member: Member) -> None:
        """C{member} sends too fast: its datagrams are dropped. Told at most every few seconds per member."""


class IFanout(Interface):
    """A list of destinations prepared for sending one payload to all of them but one, again and again."""

    addresses = Attribute("The destinations, a tuple in the order given.")

    def send(data: bytes, skip: int = -1) -> int:
        """
        Send C{data} to every address but C{addresses[skip]} (to all with
        -1) and return how many sends failed: a failure is counted, never
        raised, and costs the other addresses nothing.
        """


class IFanoutTransport(Interface):
    """
    The relay's datagram transport: single writes, and fan-outs prepared
    per room (a batching port queues a room's copies in one call).
    """

    def write(data: bytes, addr: Address) -> None:
        """
        Send one datagram, as IUDPTransport.write: InvalidAddressError,
        MessageLengthError or OSError when it cannot be sent.
        """

    def fanout(addresses: Sequence[Address]) -> IFanout:
        """C{addresses} prepared for repeated sends of one payload (L{IFanout.send})."""

    def report_refused_sends(listener: Callable[[int, int], None] | None) -> None:
        """
        From now on, call C{listener(count, size)} when C{count} datagrams
        of C{size} bytes in all, accepted by L{write} or a fan-out's send
        (and counted as sent by their writer), are refused by the kernel
        when a batch goes out; None stops the reports. A transport that
        raises every refusal at its write never calls it.
        """


class IRoomObserver(Interface):
    """Told of every change of membership, to tell the people concerned."""

    def member_joined(member: Member) -> None:
        """C{member} has joined its room."""

    def member_left(member: Member, reason: LeaveReason) -> None:
        """C{member} is no longer in its room; the room goes on."""

    def room_closed(room: Room, members: list[Member], reason: CloseReason) -> None:
        """C{room} is gone; C{members} were in it and hold no token any more."""


class IRoomStore(Interface):
    """Rooms, members, tokens and invitations."""

    observer = Attribute("The IRoomObserver told of membership changes, or None.")
    stats = Attribute(
        "The store's counters, a chatd.daemon.stats.StoreStats that the store updates: password hashes"
        " in flight, join passwords checked, requests its limits refused, what expire() repaired. What"
        " the sweep's repair report, the stats log line and the metrics read of the store's counts."
    )

    def create_room(name: str, request: RoomRequest, dialect: Dialect, origin: str = "") -> Deferred[Member]:
        """
        Create C{name} with the requester as its host. C{origin} is the
        requester's address, which the per-address room limit counts by.
        The room appears whole (with its host) or, if anything fails, not at all.
        """

    def join_room(name: str, request: RoomRequest, dialect: Dialect) -> Deferred[Member]:
        """Join C{name}, by password or invitation when it needs one."""

    def mint_invitation(member: Member) -> str:
        """
        A single-use token that lets one person join C{member}'s room without
        its password; refused (TooManyInvitationsError) while the room holds
        max_invitations live ones.
        """

    def member_for_token(token: str) -> Member | None:
        """The live member holding C{token}, if any."""

    member_for_token_bytes = Attribute(
        "A callable from a token's UTF-8 bytes to the live member holding it, or None: the legacy"
        " datagram path's look-up, without decoding the token."
    )

    def member_for_key_id(key_id: int) -> Member | None:
        """The live native member whose UDP key has this id, if any."""

    def rekey(member: Member) -> Channel:
        """Give a native member a fresh UDP key (and id); the old one is opened until L{confirm_key}."""

    def confirm_key(member: Member) -> None:
        """The member has used its current key: forget the one before it."""

    def bind_address(member: Member, address: tuple[str, int]) -> None:
        """From now on C{member} sends and receives datagrams at C{address}."""

    def touch(member: Member) -> None:
        """
        C{member} has just shown activity on its control connection. The
        relay sets C{Member.last_active} itself, from the one clock read it
        makes per datagram for the rate limit and the history's time.
        """

    def leave(member: Member, reason: LeaveReason) -> None:
        """Remove C{member}; if it is the host, close its room."""

    def close_room(room: Room, reason: CloseReason) -> None:
        """Close C{room}; every token of it stops working."""

    def expire() -> None:
        """
        Remove idle members and stale invitations; and, as a last resort
        against bugs, rooms without a live host and members without an open
        room, each counted in C{stats.repaired}.
        """

    def rooms() -> list[Room]:
        """Every open room."""

    def member_count() -> int:
        """How many members all rooms hold together."""
