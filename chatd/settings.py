"""The daemon's tunables, in one typed place: what twistd options fill in."""

from __future__ import annotations

from dataclasses import dataclass

from chatd import ratelimit
from chatd.fastudp import HAVE_MMSG
from chatd.passwords import DEFAULT_COST
from chatd.payloads import DEFAULT_MAX_ROOM_NAME, DEFAULT_MAX_USER_NAME
from chatd.wire import DEFAULT_MAX_PAYLOAD

UDP_IO_CHOICES = ("batched", "twisted")
"""How the UDP port does its I/O: chatd's own batching port (chatd.fastudp), or Twisted's stock one."""
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
