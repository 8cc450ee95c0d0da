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

With several nodes serving one room (chatd.daemon.cluster), each node's
store keeps its own members, and consults L{IRoomClaims} wherever the
cluster must decide once: a room's name, a member's name, an invitation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from twisted.internet.defer import Deferred

    from chatd.daemon.history import IHistory
    from chatd.daemon.passwords import PasswordHash
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

    def member_resumed(member: Member, previous: Member) -> None:
        """
        C{member} took C{previous}'s place with its resume credential (the
        same name, and the host role if C{previous} held it): nobody came or
        went, so nobody is told; C{previous}'s token and key no longer work,
        and its connection, if still open, is to be closed.
        """

    def room_closed(room: Room, members: list[Member], reason: CloseReason) -> None:
        """C{room} is gone; C{members} were in it and hold no token any more."""


class Replica(NamedTuple):
    """
    A room another node holds, as the cluster knows it: what a node's store
    makes its replica of (L{IRoomClaims.find}).
    """

    name: str
    history: IHistory
    """The room's history on this node: the same epoch (incarnation) as everywhere."""
    password_hash: PasswordHash | None
    native_only: bool
    host: str
    """The host's name (on another node)."""
    members: tuple[str, ...]
    """Everyone in the room now, the host included: all on other nodes."""


class Resumption(NamedTuple):
    """
    A member's membership taken over by this node (L{IRoomClaims.take_over}):
    where it was, and what its client said there that the room's log holds.
    """

    previous_node: str
    """The node it was on: this one for a resume on the same node."""
    acknowledged: tuple[tuple[int, int, int], ...] = ()
    """
    (message id, sequence number, time in ms) of every message its client
    (by client id) posted in the room that the log still holds: what the
    new member's duplicate window learns, so that a copy sent again is
    answered SENT with its number instead of being relayed twice.
    """


class IRoomClaims(Interface):
    """
    What the nodes of a cluster must agree on, asked by the room store at
    the points where its own indexes would decide alone
    (chatd.daemon.cluster.store implements it on the Redis directory). A
    store without it is a single node, deciding everything itself.

    The Deferreds fail with the ProtocolError the request is refused for:
    ClusterUnavailableError when the cluster's shared state cannot be
    reached; the rest as the in-memory store raises them. The notifications
    (L{entered}, L{member_left}, L{room_closed}, L{invitation_minted})
    never raise: what they write to the cluster is written in the background.
    """

    def new_history(name: str) -> IHistory:
        """The history of a room this node is about to create: a new incarnation (epoch), numbered cluster-wide."""

    def claim(room: Room, host: Member) -> Deferred[None]:
        """
        Take C{room.name} (with its epoch, password hash and native_only)
        for the whole cluster, C{host} its first member, before the store
        commits the room: RoomExistsError when any node holds the name (of
        two claims at the same instant, exactly one succeeds).
        """

    def find(name: str) -> Deferred[Replica | None]:
        """
        Room C{name} as the cluster knows it, when another node holds it: the
        store makes a replica of it (C{Room.replica}: the same name and
        epoch, the record's password hash and native_only, the host remote),
        which it keeps while it has members of its own in it. None when no
        node holds the name.
        """

    def admit(room: Room, request: RoomRequest, dialect: Dialect, credential_hash: str | None = None) -> Deferred[None]:
        """
        Add the requester's name to C{room} cluster-wide before the store
        commits the join, with the hash of the resume credential its member
        will hold (None for a member that cannot resume: legacy):
        UsernameTakenError, RoomFullError, or RoomNotFoundError when the
        room's incarnation ended meanwhile.
        """

    def take_over(
        room: Room, name: str, credential: str, new_credential: str, client: str | None
    ) -> Deferred[Resumption]:
        """
        Move member C{name} of C{room} to this node, wherever it is, proving
        it with its resume C{credential}, which C{new_credential} replaces
        cluster-wide in the same step (a credential serves once): the node
        it was on, and what its client C{client} posted that the log holds.
        InvalidPasswordError when the credential is not the member's (used,
        wrong, or the member is gone); RoomNotFoundError when the room's
        incarnation ended.
        """

    def resumed(member: Member, previous_node: str) -> None:
        """
        C{member} took its membership back on this node (after L{take_over}):
        the room is followed here, and the node it was on, when another, is
        told to drop its copy quietly.
        """

    def spend_invitation(room: Room, invite: str) -> Deferred[None]:
        """Spend C{invite} on C{room}, once cluster-wide: InvalidInvitationError if unknown, spent or expired."""

    def check_available() -> None:
        """Raise ClusterUnavailableError when the cluster is known to be unreachable now (what a mint checks)."""

    def invitation_minted(room: Room, invite: str, ttl: float) -> None:
        """C{invite} was minted for C{room} on this node, valid C{ttl} seconds: recorded cluster-wide."""

    def entered(member: Member) -> None:
        """C{member} is now in its room on this node (a host with its new room, or a joiner)."""

    def abandoned(room: Room, name: str) -> None:
        """
        A create or join of member C{name} that L{claim} or L{admit}
        accepted did not complete (the store rolled it back): undone cluster-wide.
        """

    def member_left(member: Member, reason: LeaveReason) -> None:
        """C{member} left its room on this node; the room goes on."""

    def room_closed(room: Room, members: list[Member], reason: CloseReason) -> None:
        """
        C{room} is closed on this node, C{members} were its local members:
        cluster-wide when it is this node's doing (its host left here, the
        server stops), only here when the cluster closed it or the node's
        last member of a replica left.
        """


class INumberedLater(Interface):
    """
    A room history (L{IHistory}) whose C{append} answers
    C{chatd.daemon.history.UNNUMBERED}: the message is handed to a shared
    log that numbers and stores it in its own time (a cluster room's,
    chatd.daemon.cluster.store.SharedHistory). What numbers delivery
    members' messages asks it for the number before acknowledging.
    """

    def when_numbered() -> Deferred[int | None]:
        """
        The number the message appended last gets, once the shared log stored
        it; None when it could not be stored (nothing may acknowledge it).
        Called right after that C{append}, before any other.
        """

    def tag_next(client: str, message_id: int) -> None:
        """
        The next C{append} is a delivery member's SEND: its client id and
        message id go into the shared log with it, so that the duplicate
        window of a node the member resumes on learns the number it got.
        Called right before that C{append}; forgotten by it.
        """


class IClusterNode(Interface):
    """
    A node of a cluster (chatd.daemon.cluster.node.ClusterNode), handed to
    the controller that serves its rooms: the store consults its claims, and
    it relays and tells what the other nodes publish.
    """

    claims = Attribute("The node's IRoomClaims, which the controller gives its room store.")

    def attach(server: object) -> None:
        """Serve C{server}'s rooms (a chatd.daemon.controller.ChatServer): called once, by its constructor."""


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
        """
        Join C{name}, by password or invitation when it needs one; or, for
        a native request with a resume credential, take back the place of
        the member it names (InvalidPasswordError when the credential is
        not that live member's).
        """

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

    def moved_away(room: Room, name: str) -> None:
        """
        Member C{name} of C{room} resumed on another node of the cluster:
        its copy here is dropped without a leave (the observer is told it as
        a resume by its stand-in), its host role, if any, goes with it.
        """

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
