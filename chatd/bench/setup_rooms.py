"""
Creating the benchmark's rooms over TCP, in the model dialect, many at once.

Member 0 of each room creates it (operation 1), the others join (operation 2),
each with the JSON payload C{{"username": ..., "password": ...}} and a binary
size field. Each waits for the acknowledge (status 0) and the complete frame
(the token), sends its UDP port as 2 raw big-endian bytes, and waits for the
server to close the connection: a model server closes it once it has
recorded the port, so the member is then certainly registered.

Standard library only, and independent of chatd's own codecs, so that the
generator can load any server of this family. All requests run as one
non-blocking state machine over C{selectors}, up to C{parallel} connections
at a time; joins of a room start as soon as its creator has its token.
Every step has a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

HEADER_SIZE = 32
OP_CREATE = 1
OP_JOIN = 2
STATE_REQUEST = 0
STATE_ACKNOWLEDGE = 1
STATE_COMPLETE = 2
MAX_REPLY_PAYLOAD = 1 << 16
CLOSE_WAIT = 2.0
"""Seconds to wait for the server to close after the port bytes; a server that keeps it open is not waited for."""

STATUS_NAMES = {
    0: "success",
    1: "room exists",
    2: "room not found",
    3: "invalid password",
    4: "malformed request",
    5: "user name taken",
    6: "rate limited",
    7: "server full",
    8: "room full",
    9: "not permitted",
    10: "unsupported version",
    11: "request too large",
    12: "invalid name",
    13: "timed out",
    14: "invalid invitation",
    15: "internal error",
}
HINTS = {
    1: "another run may have left its rooms: wait, or restart the server",
    3: "give the room's --password",
    6: "the server limits requests per address (chatd: --connections-per-s, --connection-burst,"
    " --password-attempts-per-min, --password-attempt-burst)",
    7: "the server holds its limit of rooms or connections (chatd: --max-rooms, --max-connections-per-host)",
    8: "the room holds its limit of members (chatd: --max-members)",
    12: "the server refuses the room or user names (chatd: --max-room-name, --max-user-name)",
}


class SetupError(Exception):
    """The rooms could not be set up; the message says why, for the user."""


@dataclass(frozen=True)
class MemberRequest:
    index: int
    """k = room * members + position in the room."""
    room: str
    user: str
    operation: int
    udp_port: int


def request_frame(room: str, operation: int, payload: bytes) -> bytes:
    """A client frame of the model dialect: 32-byte header with a big-endian size over 29 bytes, then the body."""
    name = room.encode("utf-8")
    if len(name) > 255:
        raise ValueError(f"room name {room!r} is longer than 255 bytes")
    return bytes([len(name), operation, STATE_REQUEST]) + len(payload).to_bytes(29, "big") + name + payload


def model_payload(user: str, password: str) -> bytes:
    return json.dumps({"username": user, "password": password}).encode("utf-8")


def payload_size(field_bytes: bytes) -> int:
    """
    The OperationPayloadSize of a reply: big-endian, or ASCII digits padded
    with NULs (a server of the family may answer that way; the first byte tells).
    """
    if 0x30 <= field_bytes[0] <= 0x39:
        digits = field_bytes.rstrip(b"\x00")
        if not digits.isdigit():
            raise SetupError(f"the server sent a malformed size field {field_bytes!r}")
        return int(digits)
    return int.from_bytes(field_bytes, "big")


def split_frame(buffer: bytes | bytearray) -> tuple[int, int, bytes, int] | None:
    """(operation, state, payload, frame length) of the first whole frame in C{buffer}, or None if incomplete."""
    if len(buffer) < HEADER_SIZE:
        return None
    size = payload_size(bytes(buffer[3:HEADER_SIZE]))
    if size > MAX_REPLY_PAYLOAD:
        raise SetupError(f"the server announced a {size}-byte reply")
    length = HEADER_SIZE + buffer[0] + size
    if len(buffer) < length:
        return None
    return buffer[1], buffer[2], bytes(buffer[HEADER_SIZE + buffer[0] : length]), length


def describe_status(status: int | None) -> str:
    if status is None:
        return "an empty acknowledge"
    return f"status {status} ({STATUS_NAMES.get(status, 'unknown status')})"


def connect_error(error: int, host: str, port: int) -> SetupError:
    if error == errno.EADDRNOTAVAIL:
        return SetupError(
            f"no free local port for a TCP connection to {host}:{port} (ports exhausted; see"
            " /proc/sys/net/ipv4/ip_local_port_range): wait a minute, or lower --setup-parallel"
        )
    if error in (errno.EMFILE, errno.ENFILE):
        return SetupError("too many open files for another TCP connection: raise `ulimit -n`")
    return SetupError(f"cannot connect to the server at {host}:{port} over TCP: {os.strerror(error)}")


@dataclass
class _Connection:
    request: MemberRequest
    sock: socket.socket
    deadline: float
    phase: str = "connecting"
    """connecting, sending, reading, sending-port, closing."""
    outgoing: bytes = b""
    incoming: bytearray = field(default_factory=bytearray)


@dataclass
class SetupResult:
    tokens: dict[int, str]
    seconds: float
    kept_open: int
    """Connections the server had not closed within CLOSE_WAIT s of the port bytes (closed by us then)."""


class RoomSetup:
    """
    Runs the create and join requests of C{requests} against C{address}.

    C{tokens} fills in as members register, so that the caller can close the
    rooms that exist even when the setup fails halfway.
    """

    def __init__(
        self,
        address: tuple[str, int],
        family: int,
        requests: list[MemberRequest],
        password: str,
        parallel: int,
        request_timeout: float,
        total_timeout: float,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.address = address
        self.family = family
        self.requests = requests
        self.password = password
        self.parallel = max(1, parallel)
        self.request_timeout = request_timeout
        self.total_timeout = total_timeout
        self.progress = progress
        self.tokens: dict[int, str] = {}
        self.kept_open = 0
        self._selector = selectors.DefaultSelector()
        self._open: dict[int, _Connection] = {}
        self._done = 0

    def run(self) -> SetupResult:
        started = time.monotonic()
        try:
            self._run(started + self.total_timeout)
        finally:
            for connection in list(self._open.values()):
                self._close(connection)
            self._selector.close()
        return SetupResult(dict(self.tokens), time.monotonic() - started, self.kept_open)

    def _run(self, overall: float) -> None:
        # Creators first; a room's joins are queued when its creator has its token.
        creators = deque(request for request in self.requests if request.operation == OP_CREATE)
        joins_of: dict[str, list[MemberRequest]] = {}
        for request in self.requests:
            if request.operation == OP_JOIN:
                joins_of.setdefault(request.room, []).append(request)
        ready: deque[MemberRequest] = deque()
        total = len(self.requests)
        while self._done < total:
            now = time.monotonic()
            if now > overall:
                raise SetupError(
                    f"the setup took longer than {self.total_timeout:g} s ({self._done} of {total} members"
                    " registered): the server is too slow or stuck; see --setup-timeout"
                )
            while len(self._open) < self.parallel and (ready or creators):
                self._start((ready or creators).popleft())
            for connection in list(self._open.values()):
                if now > connection.deadline:
                    self._expired(connection)
            events = self._selector.select(timeout=0.05)
            for key, _mask in events:
                selected = self._open.get(key.fd)
                if selected is None:
                    continue
                token_before = selected.request.index in self.tokens
                self._step(selected)
                request = selected.request
                if not token_before and request.index in self.tokens and request.operation == OP_CREATE:
                    ready.extend(joins_of.pop(request.room, []))
            if not self._open and not ready and not creators and self._done < total:
                raise SetupError("internal error: setup requests were lost")

    def _start(self, request: MemberRequest) -> None:
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as error:
            raise connect_error(error.errno or 0, *self.address) from error
        sock.setblocking(False)
        failure = sock.connect_ex(self.address)
        if failure not in (0, errno.EINPROGRESS):
            sock.close()
            raise connect_error(failure, *self.address)
        connection = _Connection(request, sock, time.monotonic() + self.request_timeout)
        connection.outgoing = request_frame(request.room, request.operation, model_payload(request.user, self.password))
        self._open[sock.fileno()] = connection
        self._selector.register(sock, selectors.EVENT_WRITE)

    def _close(self, connection: _Connection) -> None:
        self._open.pop(connection.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        connection.sock.close()

    def _finish(self, connection: _Connection) -> None:
        self._close(connection)
        self._done += 1
        if self.progress is not None:
            self.progress(self._done, len(self.requests))

    def _what(self, request: MemberRequest) -> str:
        verb = "create" if request.operation == OP_CREATE else "join"
        return f"{verb} of room {request.room!r} as {request.user!r}"

    def _expired(self, connection: _Connection) -> None:
        if connection.phase == "closing":
            # The port bytes are sent; a server that keeps the connection open
            # (not the model dialect) has had its chance to read them.
            self.kept_open += 1
            self._finish(connection)
            return
        raise SetupError(
            f"{self._what(connection.request)}: no answer within {self.request_timeout:g} s"
            f" (while {connection.phase}); see --setup-timeout"
        )

    def _step(self, connection: _Connection) -> None:
        sock = connection.sock
        try:
            if connection.phase == "connecting":
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise connect_error(error, *self.address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection.phase = "sending"
            if connection.phase in ("sending", "sending-port"):
                self._send(connection)
                return
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionError as error:
            if connection.phase == "closing":
                self._finish(connection)
                return
            raise SetupError(f"{self._what(connection.request)}: the connection failed: {error}") from error
        if connection.phase == "closing":
            if not data:
                self._finish(connection)
            # Anything else the server sends now is not for a model client; it is ignored.
            return
        if not data:
            raise SetupError(f"{self._what(connection.request)}: the server closed the connection without a token")
        connection.incoming += data
        self._read_replies(connection)

    def _send(self, connection: _Connection) -> None:
        sent = connection.sock.send(connection.outgoing)
        connection.outgoing = connection.outgoing[sent:]
        if connection.outgoing:
            self._selector.modify(connection.sock, selectors.EVENT_WRITE)
            return
        if connection.phase == "sending":
            connection.phase = "reading"
        else:
            connection.phase = "closing"
            connection.deadline = min(connection.deadline, time.monotonic() + CLOSE_WAIT)
        self._selector.modify(connection.sock, selectors.EVENT_READ)

    def _read_replies(self, connection: _Connection) -> None:
        request = connection.request
        while True:
            frame = split_frame(connection.incoming)
            if frame is None:
                return
            _operation, state, payload, length = frame
            del connection.incoming[:length]
            if state == STATE_ACKNOWLEDGE:
                status = payload[0] if payload else None
                if status != 0:
                    hint = HINTS.get(status or 0)
                    raise SetupError(
                        f"the server refused the {self._what(request)}: {describe_status(status)}"
                        + (f"; {hint}" if hint else "")
                    )
            elif state == STATE_COMPLETE:
                token = payload.decode("utf-8", "replace")
                if not token or len(payload) > 255:
                    raise SetupError(f"{self._what(request)}: the server sent an unusable token {payload[:60]!r}")
                self.tokens[request.index] = token
                connection.outgoing = request.udp_port.to_bytes(2, "big")
                connection.phase = "sending-port"
                self._send(connection)
                return
            else:
                raise SetupError(f"{self._what(request)}: unexpected frame from the server (state {state})")
