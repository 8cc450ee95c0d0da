"""The daemon's tunables, in one typed place: what twistd options fill in."""

from __future__ import annotations

from dataclasses import dataclass

from chatd.daemon import ratelimit
from chatd.daemon.fastudp import HAVE_MMSG
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


@dataclass(frozen=True, slots=True)
class Settings:
    interface: str = "127.0.0.1"
    tcp_port: int = 9001
    udp_port: int = 9002
    tls_port: int = 9003
    """TCP port for native clients over TLS, when a certificate is given."""
    tls_cert: str | None = None
    tls_key: str | None = None
    idle_timeout: float = 300.0
    """Seconds without a datagram (message or keepalive) before a member is removed."""
    sweep_interval: float = 20.0
    """Seconds between sweeps for idle members (and expired invitations and limits)."""
    stats_interval: float = 60.0
    """Seconds between two C{stats} log events (the counters); apart from the sweep, which may run far more often."""
    handshake_timeout: float = 30.0
    """Seconds a new TCP connection has to create or join a room."""
    frame_timeout: float = 10.0
    """Seconds a started frame has to arrive whole."""
    keepalive_interval: float = 30.0
    """What native clients are told to use between keepalives."""
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_room_name: int = DEFAULT_MAX_ROOM_NAME
    max_user_name: int = DEFAULT_MAX_USER_NAME
    max_rooms: int = 1000
    max_members: int = 256
    max_connections: int = 10000
    max_connections_per_host: int = 1000
    invite_ttl: float = 3600.0
    password_cost: int = DEFAULT_COST
    shutdown_grace: float = 1.0
    """Seconds the service waits at stop for TCP connections to flush and close."""
    log_frames: bool = False
    """Log every TCP frame sent and received, decoded, at debug level."""
    legacy: bool = True
    """Serve the model and seed dialects (plain text on the wire) besides the native one."""
    messages_per_s: float = ratelimit.DEFAULT_MESSAGES_PER_S
    message_burst: float = ratelimit.DEFAULT_MESSAGE_BURST
    bytes_per_s: float = ratelimit.DEFAULT_BYTES_PER_S
    byte_burst: float = ratelimit.DEFAULT_BYTE_BURST
    connections_per_s: float = ratelimit.DEFAULT_CONNECTIONS_PER_S
    """New TCP connections per second from one address (loopback exempt unless limit_loopback)."""
    connection_burst: float = ratelimit.DEFAULT_CONNECTION_BURST
    password_attempts_per_min: float = ratelimit.DEFAULT_JOIN_FAILURES_PER_S * 60
    """Joins that need a password or invitation, per minute from one address."""
    password_attempt_burst: float = ratelimit.DEFAULT_JOIN_FAILURE_BURST
    limit_loopback: bool = False
    """Apply the per-address limits to loopback too (they are exempt by default, as in ergo)."""
    metrics_port: int | None = None
    """TCP port of the Prometheus metrics endpoint (0: any free one); None turns it off."""
    udp_io: str = DEFAULT_UDP_IO
    """One of UDP_IO_CHOICES."""
    metrics_interface: str = "127.0.0.1"
    """Address the metrics endpoint listens on: loopback unless the scraper is elsewhere."""
    send_queue: int = 256 * 1024
    """
    Most bytes waiting to be sent to one TCP peer (an IRC server's sendq):
    over it the connection is not read until the peer catches up.
    """
    send_queue_timeout: float = 5.0
    """Seconds a TCP peer may stay over send_queue before it is disconnected (aborted)."""
    max_invitations: int = 100
    """Most live (unspent, unexpired) invitations one room holds."""
    max_rooms_per_host: int = 10
    """Most open rooms created from one address (loopback exempt unless limit_loopback)."""
    max_hashing: int = 4
    """
    Most password hashes (scrypt, for creates and joins alike) computed at
    once in the whole daemon: each holds 128 * r * N bytes (16 MiB at the
    default cost) while it runs.
    """
    max_hashing_per_host: int = 1
    """Most password hashes computed at once for one address (loopback exempt unless limit_loopback)."""
    auth_failures_per_s: float = 5.0
    """
    Sealed datagrams that fail authentication, per second, tolerated per key
    id (from sources other than its member's address) and per source address;
    past that, datagrams from those are dropped before any decryption.
    """
    auth_failure_burst: float = 20.0
    presence_interval: float = 1.0
    """
    Seconds over which a room's join and leave notices are coalesced: the first
    change goes out at once, later ones in one batch at the end of the interval.
    """

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
        if self.message_burst < 1:
            return f"--message-burst {self.message_burst:g} is less than 1: no member could ever send a message"
        if self.byte_burst < MAX_DATAGRAM:
            return (
                f"--byte-burst {self.byte_burst:g} is less than a datagram ({MAX_DATAGRAM} bytes):"
                " the longest messages the relay accepts would always be dropped"
            )
        if self.tls_cert and self.tls_port != 0 and self.tls_port == self.tcp_port:
            return f"--tls-port and --tcp-port are both {self.tcp_port}: they need a port each"
        if self.metrics_port and self.metrics_interface == self.interface:
            for name, port in (("--tcp-port", self.tcp_port), ("--tls-port", self.tls_port if self.tls_cert else 0)):
                if port == self.metrics_port:
                    return f"--metrics-port and {name} are both {port} on {self.interface}: they need a port each"
        return None
