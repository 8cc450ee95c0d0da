"""
The TCP side of chatd-attack: frames, blocking reads with deadlines, and the
short create/join exchanges that every attack and the legitimate pair need.

Standard library only. Model-dialect frames come from C{setup_rooms} (binary
size field); native requests are the same frames with C{"chatd": 1} in the
JSON payload. Every socket has a timeout and every loop a deadline.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from chatd.bench.setup_rooms import STATE_ACKNOWLEDGE, STATE_COMPLETE, request_frame, split_frame

OP_CREATE = 1
OP_JOIN = 2
OP_INVITE = 4
OP_NOTICE = 5
STATUS_SUCCESS = 0
STATUS_RATE_LIMITED = 6
STEP_TIMEOUT = 5.0
"""Seconds any single exchange with the server may take before it counts as unanswered."""
_TCP_INFO_STATE = struct.Struct("B")
TCP_STATES = {1: "established", 7: "closed", 8: "close-wait", 4: "fin-wait-1", 5: "fin-wait-2"}


Counters = dict[str, Any]
"""What one attack reports: counter name to a number, text, list or None (JSON-ready)."""


@dataclass
class Target:
    """What every attack needs to know: where the daemon is, for how long and from where to attack."""

    tcp_port: int
    udp_port: int
    duration: float
    rate: float
    """Datagrams per second of the UDP floods."""
    attacker: str
    """The attacker's own address; per-address limits (with --limit-loopback) apply to it."""
    bystander: str
    """Another address, for the probe that asks whether someone else is still served."""
    server_pid: int | None = None
    sender_key_id: int | None = None
    """The legit sender's live key id (native pair), which the forgery names."""
    members: int = 250
    connections: int = 8


class ExchangeError(Exception):
    """An exchange with the server did not end as a client expects (no answer, closed, unreadable)."""


def join_payload(user: str, native: bool, password: str | None = None) -> bytes:
    """The create/join JSON payload; C{"chatd": 1} makes the connection native."""
    document: dict[str, Any] = {"username": user}
    if password is not None:
        document["password"] = password
    if native:
        document["chatd"] = 1
    return json.dumps(document).encode("utf-8")


def create_frame(room: str, user: str, native: bool = False, password: str | None = None) -> bytes:
    return request_frame(room, OP_CREATE, join_payload(user, native, password))


def join_frame(room: str, user: str, native: bool = False, password: str | None = None) -> bytes:
    return request_frame(room, OP_JOIN, join_payload(user, native, password))


def invite_frame(room: str) -> bytes:
    return request_frame(room, OP_INVITE, b"")


def connect_from(source: str, port: int, timeout: float = STEP_TIMEOUT) -> socket.socket:
    """A TCP connection from C{source} (a loopback address) to the daemon on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def tcp_state(sock: socket.socket) -> str:
    """The kernel's TCP state of C{sock} (Linux TCP_INFO), to see a server's close without reading."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return "unknown"
    (state,) = _TCP_INFO_STATE.unpack_from(info)
    return TCP_STATES.get(state, f"state-{state}")


@dataclass
class FrameReader:
    """Reads whole frames from a blocking socket, never past a deadline."""

    sock: socket.socket
    buffer: bytearray

    @classmethod
    def of(cls, sock: socket.socket) -> FrameReader:
        return cls(sock, bytearray())

    def next(self, deadline: float) -> tuple[int, int, bytes] | None:
        """(operation, state, payload) of the next frame; None at EOF or past the deadline."""
        while True:
            frame = split_frame(self.buffer)
            if frame is not None:
                operation, state, payload, length = frame
                del self.buffer[:length]
                return operation, state, payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ConnectionError):
                return None
            if not data:
                return None
            self.buffer += data

    def answer(self, operation: int, deadline: float) -> tuple[int, bytes]:
        """
        The status of the next acknowledge for C{operation} and the payload of
        its complete frame (empty on a refusal). Notices in between are
        skipped: they can arrive at any time once a member is in a room.
        """
        while True:
            frame = self.next(deadline)
            if frame is None:
                raise ExchangeError("no answer (closed or timed out)")
            frame_operation, state, payload = frame
            if state == STATE_ACKNOWLEDGE:
                status = payload[0] if payload else -1
                # A refusal frame at connection time answers no request: operation 0.
                if frame_operation not in (operation, 0):
                    continue
                if status != STATUS_SUCCESS:
                    return status, b""
            elif state == STATE_COMPLETE and frame_operation == operation:
                return STATUS_SUCCESS, payload


@dataclass
class Entered:
    """A connection that entered a room: its socket, reader and complete payload."""

    sock: socket.socket
    reader: FrameReader
    complete: bytes

    def native_details(self) -> dict[str, Any]:
        details = json.loads(self.complete)
        if not isinstance(details, dict):
            raise ExchangeError("the complete frame is not a JSON object")
        return details


def enter(
    source: str,
    tcp_port: int,
    frame: bytes,
    operation: int,
    timeout: float = STEP_TIMEOUT,
) -> tuple[int, Entered | None]:
    """
    Connect from C{source}, send one create or join and read its answer: the
    status, and the connection if it entered (the caller then owns it).
    """
    sock = connect_from(source, tcp_port, timeout)
    try:
        sock.sendall(frame)
        reader = FrameReader.of(sock)
        status, complete = reader.answer(operation, time.monotonic() + timeout)
    except (OSError, ExchangeError):
        sock.close()
        raise
    if status != STATUS_SUCCESS:
        sock.close()
        return status, None
    return status, Entered(sock, reader, complete)


def model_enter(source: str, tcp_port: int, frame: bytes, operation: int, udp_port: int) -> tuple[int, str]:
    """A model-dialect create or join, with its 2 port bytes: the status and the token ("" on a refusal)."""
    status, entered = enter(source, tcp_port, frame, operation)
    if entered is None:
        return status, ""
    with entered.sock:
        entered.sock.sendall(udp_port.to_bytes(2, "big"))
        # The server closes once it has the port; waiting for that makes the
        # registration certain before the first datagram.
        entered.reader.next(time.monotonic() + 1.0)
    return status, entered.complete.decode("ascii", "replace")


def probe_create(source: str, tcp_port: int, room: str) -> tuple[int, float]:
    """
    Can someone else still create a room? A native create from C{source}: its
    status and seconds to the answer. The room closes at once (its host leaves).
    """
    started = time.monotonic()
    try:
        status, entered = enter(source, tcp_port, create_frame(room, "probe", native=True), OP_CREATE)
    except (OSError, ExchangeError):
        return -1, time.monotonic() - started
    seconds = time.monotonic() - started
    if entered is not None:
        entered.sock.close()
    return status, seconds


def legacy_datagram(room: str, token: str, message: str) -> bytes:
    """[room size][token size][room][token][message]: a model or seed member's chat datagram."""
    room_bytes = room.encode("utf-8")
    token_bytes = token.encode("ascii")
    return bytes((len(room_bytes), len(token_bytes))) + room_bytes + token_bytes + message.encode("utf-8")


def rss_kb(pid: int | None) -> int | None:
    """The resident set size of process C{pid} in KiB (VmRSS of /proc/PID/status), None if unreadable."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
