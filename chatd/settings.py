"""The daemon's tunables, in one typed place: what twistd options fill in."""

from __future__ import annotations

from dataclasses import dataclass

from chatd.passwords import DEFAULT_COST
from chatd.payloads import DEFAULT_MAX_ROOM_NAME, DEFAULT_MAX_USER_NAME
from chatd.wire import DEFAULT_MAX_PAYLOAD


@dataclass(frozen=True, slots=True)
class Settings:
    interface: str = "127.0.0.1"
    tcp_port: int = 9001
    udp_port: int = 9002
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
