"""
The daemon's tunables, in one typed place: what twistd options fill in.

Each setting is declared once, as a field of L{Settings} made by L{setting}:
its name, type, default, help text, option (and short option), coercer and
check. chatd.daemon.tap derives the twistd options from these declarations
(L{OPTIONS}), builds the settings from them (L{Settings.from_options}) and
checks them (L{Settings.invalid_value}, then L{Settings.contradiction}); this
module imports no C{twisted.python.usage}.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, TypeVar, get_type_hints

from chatd.daemon import ratelimit
from chatd.daemon.cluster.directory import DEFAULT_NODE_TTL, DEFAULT_REAP_GRACE
from chatd.daemon.cluster.redis_url import parse_redis_url
from chatd.daemon.fastudp import HAVE_MMSG
from chatd.daemon.history import DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_MESSAGES, DEFAULT_HISTORY_ON_JOIN
from chatd.daemon.passwords import DEFAULT_COST
from chatd.protocol.datagrams import MAX_DATAGRAM
from chatd.protocol.payloads import DEFAULT_MAX_ROOM_NAME, DEFAULT_MAX_USER_NAME
from chatd.protocol.wire import DEFAULT_MAX_PAYLOAD

KEEPALIVES_PER_IDLE_TIMEOUT = 2
"""
The idle timeout must span this many keepalive intervals: a native member
whose one keepalive is lost (UDP) is still in its room when the next arrives.
"""

UDP_IO_CHOICES = ("batched", "twisted")
"""How the UDP port does its I/O: chatd's own batching port (chatd.daemon.fastudp), or Twisted's stock one."""
DEFAULT_UDP_IO = "batched" if HAVE_MMSG else "twisted"
"""Batched where recvmmsg/sendmmsg exist (Linux); elsewhere the stock port, which is as fast as a plain loop."""

MAX_NODE_NAME = 100
"""The longest node name (--node): it is in Redis keys and in every member's record."""

_T = TypeVar("_T")

Check = Callable[[str, Any], str | None]
"""
A check of one setting's value: given its option as spelled (C{--max-rooms})
and the value, what is wrong with it in one line naming the option, or None.
"""


def port(value: str) -> int:
    """The coercer of port options."""
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError(f"{number} is not a port number")
    return number


port.coerceDoc = "From 0 to 65535; 0 lets the system pick."  # type: ignore[attr-defined]


def ip_address(option: str, value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{option}: {value!r} is not an IP address"
    return None


def more_than_zero(option: str, value: float) -> str | None:
    return None if value > 0 else f"{option} must be more than 0"


def positive_number(option: str, value: float) -> str | None:
    return None if 0 < value < math.inf else f"{option} must be a positive number"


def at_least_one(option: str, value: int) -> str | None:
    return None if value >= 1 else f"{option} must be at least 1"


def not_negative(option: str, value: int) -> str | None:
    return None if value >= 0 else f"{option} must be at least 0"


def name_length(option: str, value: int) -> str | None:
    return None if 1 <= value <= 255 else f"{option} must be from 1 to 255"


def power_of_two(option: str, value: int) -> str | None:
    return None if value >= 2 and not value & (value - 1) else f"{option} must be a power of 2"


def redis_url(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_redis_url(value)
    except ValueError as error:
        return f"{option}: {error}"
    return None


def node_name(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_NODE_NAME or not value.isprintable() or any(c.isspace() for c in value):
        return f"{option} must be 1 to {MAX_NODE_NAME} printable characters without spaces"
    return None


def web_origins_complaint(option: str, value: str | None) -> str | None:
    """What is wrong with an origin list: each must be http(s)://host[:port], nothing after."""
    for origin in (value or "").split(","):
        origin = origin.strip()
        if not origin:
            continue
        scheme, _, rest = origin.partition("://")
        if scheme.lower() not in ("http", "https") or not rest or "/" in rest.rstrip("/") or "@" in rest:
            return f"{option}: {origin!r} is not an origin such as https://chat.example.org"
    return None


def one_of(*choices: str) -> Check:
    def check(option: str, value: str) -> str | None:
        return None if value in choices else f"{option} must be one of {', '.join(choices)}"

    return check


@dataclass(frozen=True, slots=True)
class Declaration:
    """What L{setting} (or L{unexposed}) says of a field beyond its name, type and default."""

    help: str
    """The option's help text (C{--help}); for an unexposed setting, why it has no option."""
    exposed: bool = True
    """Whether the setting has a command-line option."""
    name: str | None = None
    """The long option, when not the field's name with dashes (a flag for a setting that is on by default)."""
    short: str | None = None
    coerce: Callable[[str], Any] | None = None
    """Turns the option's text into the value; by default int or float after the field's type."""
    check: Check | None = None


_DECLARATION = "chatd.setting"
"""The key of a field's L{Declaration} in its metadata."""


def setting(
    default: _T,
    help: str,
    *,
    short: str | None = None,
    name: str | None = None,
    coerce: Callable[[str], Any] | None = None,
    check: Check | None = None,
) -> _T:
    """
    Declare a setting that has a command-line option: C{--} and the field's
    name with dashes (or C{--name}). A C{bool} field's option is a flag that
    turns the default around, so one that is on by default names itself
    (C{name="no-legacy"}).
    """
    declaration = Declaration(help=help, name=name, short=short, coerce=coerce, check=check)
    return field(default=default, metadata={_DECLARATION: declaration})


def unexposed(default: _T, why: str) -> _T:
    """Declare a setting that has no command-line option, and why."""
    return field(default=default, metadata={_DECLARATION: Declaration(help=why, exposed=False)})


@dataclass(frozen=True, slots=True)
class Settings:
    """
    Every setting, declared once (L{setting}): adding one is adding a field
    here, and a test. Usable directly, unchecked: C{Settings(max_rooms=3)}.
    """

    interface: str = setting(
        "127.0.0.1", "Address to listen on for TCP and UDP (IPv4 or IPv6, e.g. ::1).", short="i", check=ip_address
    )
    tcp_port: int = setting(9001, "TCP port for room operations.", short="t", coerce=port)
    udp_port: int = setting(9002, "UDP port for chat messages.", short="u", coerce=port)
    tls_port: int = setting(9003, "TCP port for native clients over TLS (with --tls-cert).", coerce=port)
    """TCP port for native clients over TLS, when a certificate is given."""
    tls_cert: str | None = setting(None, "PEM certificate (chain) for TLS; make one with chatd-cert.")
    tls_key: str | None = setting(None, "PEM private key of --tls-cert.")
    idle_timeout: float = setting(
        300.0,
        "Seconds without activity before a member is removed; at least twice --keepalive-interval,"
        " and no shorter than --sweep-interval.",
        check=more_than_zero,
    )
    """Seconds without a datagram (message or keepalive) before a member is removed."""
    sweep_interval: float = setting(20.0, "Seconds between sweeps for idle members.", check=more_than_zero)
    """Seconds between sweeps for idle members (and expired invitations and limits)."""
    stats_interval: float = setting(60.0, "Seconds between two 'stats' log lines (the counters).", check=more_than_zero)
    """Seconds between two C{stats} log events (the counters); apart from the sweep, which may run far more often."""
    handshake_timeout: float = setting(30.0, "Seconds a connection has to enter a room.", check=more_than_zero)
    """Seconds a new TCP connection has to create or join a room."""
    frame_timeout: float = setting(10.0, "Seconds a started TCP frame has to arrive whole.", check=more_than_zero)
    keepalive_interval: float = setting(
        30.0,
        "Seconds between keepalives, as told to native clients; at most half --idle-timeout.",
        check=more_than_zero,
    )
    """What native clients are told to use between keepalives."""
    max_payload: int = setting(DEFAULT_MAX_PAYLOAD, "Largest TCP payload accepted, in bytes.", check=at_least_one)
    max_room_name: int = setting(
        DEFAULT_MAX_ROOM_NAME, "Longest room name, in UTF-8 bytes (at most 255).", check=name_length
    )
    max_user_name: int = setting(
        DEFAULT_MAX_USER_NAME, "Longest user name, in UTF-8 bytes (at most 255).", check=name_length
    )
    max_rooms: int = setting(1000, "Most rooms open at once.", check=at_least_one)
    max_members: int = setting(256, "Most members in one room.", check=at_least_one)
    max_connections: int = setting(10000, "Most TCP connections open at once.", check=at_least_one)
    max_connections_per_host: int = setting(
        1000, "Most TCP connections open at once from one address.", check=at_least_one
    )
    invite_ttl: float = setting(3600.0, "Seconds an invitation token stays valid.", check=more_than_zero)
    password_cost: int = setting(DEFAULT_COST, "scrypt cost N for room passwords (a power of 2).", check=power_of_two)
    shutdown_grace: float = unexposed(
        1.0, "No option: chatd promises to exit within about a second of SIGTERM (README); tests shorten it."
    )
    """Seconds the service waits at stop for TCP connections to flush and close."""
    log_frames: bool = setting(
        False, "Log every TCP frame sent and received, decoded (secrets redacted), at debug level."
    )
    """Log every TCP frame sent and received, decoded, at debug level."""
    legacy: bool = setting(
        True,
        "Serve native clients only: refuse the model and seed dialects (plain text on the wire).",
        name="no-legacy",
    )
    """Serve the model and seed dialects (plain text on the wire) besides the native one."""
    messages_per_s: float = setting(
        ratelimit.DEFAULT_MESSAGES_PER_S, "Messages per second one member may send.", check=positive_number
    )
    message_burst: float = setting(
        ratelimit.DEFAULT_MESSAGE_BURST, "Messages one member may send at once (at least 1).", check=positive_number
    )
    bytes_per_s: float = setting(
        ratelimit.DEFAULT_BYTES_PER_S, "Message bytes per second one member may send.", check=positive_number
    )
    byte_burst: float = setting(
        ratelimit.DEFAULT_BYTE_BURST,
        "Message bytes one member may send at once (at least 4096, a datagram).",
        check=positive_number,
    )
    connections_per_s: float = setting(
        ratelimit.DEFAULT_CONNECTIONS_PER_S,
        "New TCP connections per second from one address.",
        check=positive_number,
    )
    """New TCP connections per second from one address (loopback exempt unless limit_loopback)."""
    connection_burst: float = setting(
        ratelimit.DEFAULT_CONNECTION_BURST, "New TCP connections at once from one address.", check=positive_number
    )
    password_attempts_per_min: float = setting(
        ratelimit.DEFAULT_JOIN_FAILURES_PER_S * 60,
        "Joins with a password or invitation per minute from one address.",
        check=positive_number,
    )
    """Joins that need a password or invitation, per minute from one address."""
    password_attempt_burst: float = setting(
        ratelimit.DEFAULT_JOIN_FAILURE_BURST,
        "Joins with a password or invitation at once from one address.",
        check=positive_number,
    )
    limit_loopback: bool = setting(False, "Apply the per-address limits to loopback addresses too (exempt by default).")
    """Apply the per-address limits to loopback too (they are exempt by default, as in ergo)."""
    metrics_port: int | None = setting(
        None, "TCP port for Prometheus metrics at /metrics (0: any free port); off unless given.", coerce=port
    )
    """TCP port of the Prometheus metrics endpoint (0: any free one); None turns it off."""
    udp_io: str = setting(
        DEFAULT_UDP_IO,
        "UDP I/O: 'batched' (chatd's own port, recvmmsg/sendmmsg; the default on Linux)"
        " or 'twisted' (Twisted's stock UDP port).",
        check=one_of(*UDP_IO_CHOICES),
    )
    """One of UDP_IO_CHOICES."""
    metrics_interface: str = setting(
        "127.0.0.1", "Address the metrics endpoint listens on (IPv4 or IPv6).", check=ip_address
    )
    """Address the metrics endpoint listens on: loopback unless the scraper is elsewhere."""
    send_queue: int = setting(
        256 * 1024,
        "Most bytes waiting to be sent to one TCP peer; over it the peer is not read.",
        check=at_least_one,
    )
    """
    Most bytes waiting to be sent to one TCP peer (an IRC server's sendq):
    over it the connection is not read until the peer catches up.
    """
    send_queue_timeout: float = setting(
        5.0, "Seconds a TCP peer may stay over --send-queue before it is disconnected.", check=more_than_zero
    )
    """Seconds a TCP peer may stay over send_queue before it is disconnected (aborted)."""
    max_invitations: int = setting(100, "Most live invitations per room.", check=at_least_one)
    """Most live (unspent, unexpired) invitations one room holds."""
    max_rooms_per_host: int = setting(10, "Most open rooms created from one address.", check=at_least_one)
    """Most open rooms created from one address (loopback exempt unless limit_loopback)."""
    max_hashing: int = setting(4, "Most password hashes computed at once.", check=at_least_one)
    """
    Most password hashes (scrypt, for creates and joins alike) computed at
    once in the whole daemon: each holds 128 * r * N bytes (16 MiB at the
    default cost) while it runs.
    """
    max_hashing_per_host: int = setting(1, "Most password hashes computed at once for one address.", check=at_least_one)
    """Most password hashes computed at once for one address (loopback exempt unless limit_loopback)."""
    auth_failures_per_s: float = setting(
        5.0,
        "Unauthenticated sealed datagrams per second tolerated per key id and per source address.",
        check=positive_number,
    )
    """
    Sealed datagrams that fail authentication, per second, tolerated per key
    id (from sources other than its member's address) and per source address;
    past that, datagrams from those are dropped before any decryption.
    """
    auth_failure_burst: float = setting(
        20.0,
        "Unauthenticated sealed datagrams at once tolerated per key id and per source address.",
        check=positive_number,
    )
    presence_interval: float = setting(
        1.0, "Seconds over which a room's join and leave notices are coalesced.", check=more_than_zero
    )
    """
    Seconds over which a room's join and leave notices are coalesced: the first
    change goes out at once, later ones in one batch at the end of the interval.
    """
    history_messages: int = setting(
        DEFAULT_HISTORY_MESSAGES, "Most messages a room's history keeps (for repair and joins).", check=at_least_one
    )
    """Most messages one room's history ring holds (reliable delivery); the oldest go first."""
    history_bytes: int = setting(
        DEFAULT_HISTORY_BYTES,
        "Most bytes of names and texts a room's history keeps (the newest message is always kept).",
        check=at_least_one,
    )
    """
    Most bytes of senders' names and texts one room's history holds; the
    oldest go first. Over all rooms: --max-rooms times this, at most.
    """
    history_on_join: int = setting(
        DEFAULT_HISTORY_ON_JOIN, "Messages of history offered to a member as it enters (0: none).", check=not_negative
    )
    """How many of the latest messages held a member with the delivery feature is offered as it enters a room."""
    redis: str | None = setting(
        None,
        "Keep rooms in Redis and relay with the other nodes using it: redis://HOST:PORT/DB"
        " (docs/cluster.md); off unless given.",
        check=redis_url,
    )
    """Where the cluster's Redis is; None runs one node with everything in memory."""
    node: str | None = setting(
        None, "This node's name in the cluster (with --redis); HOST:PID unless given.", check=node_name
    )
    """This node's name in Redis; None means the host name and the process id (L{Settings.node_name})."""
    node_grace: float = setting(
        DEFAULT_REAP_GRACE,
        "Seconds a node of the cluster may go without a heartbeat before its members are removed"
        " and the rooms it hosted released (with --redis).",
        check=positive_number,
    )
    """How long a dead node's members keep their places, for their clients to resume elsewhere (docs/cluster.md 3)."""

    web_port: int | None = setting(
        None,
        "TCP port for the web page and its WebSocket (https/wss with --tls-cert; 0: any free port); off unless given.",
        coerce=port,
    )
    """The browser gateway's port (chatd.daemon.web, docs/web.md), on --interface; None turns it off."""
    web_origin: str | None = setting(
        None,
        "Origins besides the page's own whose pages may open a chat WebSocket, comma-separated"
        " (e.g. https://chat.example.org); the page's own origin is always allowed.",
        check=web_origins_complaint,
    )
    """Extra allowed Origin values, comma-separated; see L{web_origins}."""

    @property
    def node_name(self) -> str:
        """The node's name in the cluster: --node, or this host's name and the process id."""
        return self.node if self.node is not None else f"{socket.gethostname()}:{os.getpid()}"

    def web_origins(self) -> tuple[str, ...]:
        """The origins of --web-origin, one by one (none when it is not given)."""
        return tuple(origin.strip() for origin in (self.web_origin or "").split(",") if origin.strip())

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> Settings:
        """
        The settings of parsed command-line options, keyed by long option
        (a twistd Options): a flag given turns its setting's default around.
        """
        given: dict[str, Any] = {}
        for option in OPTIONS:
            value = values[option.name]
            given[option.field] = (not option.default if value else option.default) if option.flag else value
        return cls(**given)

    def invalid_value(self) -> str | None:
        """
        The first value its setting's check refuses, in one line naming the
        option, or None. Each value is judged alone; see L{contradiction}.
        """
        for option in OPTIONS:
            if option.check is not None:
                complaint = option.check(f"--{option.name}", getattr(self, option.field))
                if complaint is not None:
                    return complaint
        return None

    def contradiction(self) -> str | None:
        """
        What makes these settings contradict each other, in one line naming
        the options, or None. Each value may be fine alone; together they
        would make the daemon do what nobody asked for (docs/security.md,
        "Settings that contradict each other").
        """
        needed = KEEPALIVES_PER_IDLE_TIMEOUT * self.keepalive_interval
        if self.idle_timeout < needed:
            return (
                f"--idle-timeout {self.idle_timeout:g} is shorter than {KEEPALIVES_PER_IDLE_TIMEOUT} keepalive"
                f" intervals ({needed:g} s): a native member that loses one keepalive would be removed"
                " (a host's room closed); raise --idle-timeout or lower --keepalive-interval"
            )
        if self.sweep_interval > self.idle_timeout:
            return (
                f"--sweep-interval {self.sweep_interval:g} is longer than --idle-timeout {self.idle_timeout:g}:"
                f" silent members would stay up to {self.idle_timeout + self.sweep_interval:g} s;"
                " lower --sweep-interval"
            )
        if self.node is not None and self.redis is None:
            return "--node names this daemon in a cluster: it needs --redis"
        if self.node_grace < DEFAULT_NODE_TTL:
            return (
                f"--node-grace {self.node_grace:g} is shorter than a heartbeat's lifetime ({DEFAULT_NODE_TTL:g} s):"
                " live nodes would be taken for dead and their members removed; raise --node-grace"
            )
        if self.message_burst < 1:
            return f"--message-burst {self.message_burst:g} is less than 1: no member could ever send a message"
        if self.byte_burst < MAX_DATAGRAM:
            return (
                f"--byte-burst {self.byte_burst:g} is less than a datagram ({MAX_DATAGRAM} bytes):"
                " the longest messages the relay accepts would always be dropped"
            )
        if self.tls_cert and self.tls_port != 0 and self.tls_port == self.tcp_port:
            return f"--tls-port and --tcp-port are both {self.tcp_port}: they need a port each"
        if self.web_port:
            taken = (("--tcp-port", self.tcp_port), ("--tls-port", self.tls_port if self.tls_cert else 0))
            for name, port in taken:
                if port == self.web_port:
                    return f"--web-port and {name} are both {port}: they need a port each"
            if self.metrics_port == self.web_port and self.metrics_interface == self.interface:
                return (
                    f"--web-port and --metrics-port are both {self.web_port} on {self.interface}: they need a port each"
                )
        if self.metrics_port and self.metrics_interface == self.interface:
            for name, port in (("--tcp-port", self.tcp_port), ("--tls-port", self.tls_port if self.tls_cert else 0)):
                if port == self.metrics_port:
                    return f"--metrics-port and {name} are both {port} on {self.interface}: they need a port each"
        return None


@dataclass(frozen=True, slots=True)
class Option:
    """A command-line option, as derived from a setting's declaration: what twistd options are made of."""

    field: str
    """The name of the L{Settings} field."""
    name: str
    """The long option, without C{--}."""
    short: str | None
    default: Any
    help: str
    flag: bool
    """Whether it is a flag (a C{bool} setting), which takes no value and turns the default around."""
    coerce: Callable[[str], Any] | None
    check: Check | None


_COERCERS: dict[object, Callable[[str], Any]] = {int: int, float: float}


def declaration(setting_field: Field[Any]) -> Declaration:
    """The declaration of a field of L{Settings}; one declared without L{setting} or L{unexposed} is a TypeError."""
    declared = setting_field.metadata.get(_DECLARATION)
    if not isinstance(declared, Declaration):
        raise TypeError(f"{setting_field.name} is not declared with setting() or unexposed()")
    return declared


def options_of(settings_class: type[Any]) -> tuple[Option, ...]:
    """
    The command-line options of a dataclass whose fields are declared with
    L{setting} or L{unexposed} (L{Settings}'s are L{OPTIONS}), in field order.
    A declaration that makes no option (a field of a type with no coercer, say)
    is a TypeError, raised at import.
    """
    types = get_type_hints(settings_class)
    options = []
    for setting_field in fields(settings_class):
        declared = declaration(setting_field)
        if not declared.exposed:
            continue
        kind = types[setting_field.name]
        flag = kind is bool
        coerce = declared.coerce or _COERCERS.get(kind)
        if coerce is None and not flag and kind not in (str, str | None):
            raise TypeError(f"{setting_field.name}: no coercer for {kind}")
        if flag and setting_field.default is True and declared.name is None:
            raise TypeError(f"{setting_field.name}: a flag for a setting that is on by default needs a name")
        options.append(
            Option(
                field=setting_field.name,
                name=declared.name or setting_field.name.replace("_", "-"),
                short=declared.short,
                default=setting_field.default,
                help=declared.help,
                flag=flag,
                coerce=coerce,
                check=declared.check,
            )
        )
    return tuple(options)


OPTIONS = options_of(Settings)
"""Every exposed setting's command-line option, in the order of the fields."""
