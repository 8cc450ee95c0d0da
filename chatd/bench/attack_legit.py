"""
The legitimate pair of chatd-attack: two members of one room, from their own
address (127.0.0.2), one sending numbered messages at a steady rate while an
attack runs and the other counting what arrives. Delivery % is received /
sent, after a bounded drain wait.

The model pair speaks the legacy datagrams in clear; the native pair seals
its datagrams with ChaCha20-Poly1305 under the keys of its complete frames,
using chatd's own client-side codecs (C{chatd.protocol.seal}, C{chatd.protocol.datagrams}).
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from chatd.bench.attack_wire import (
    OP_CREATE,
    OP_JOIN,
    STATUS_SUCCESS,
    Entered,
    ExchangeError,
    create_frame,
    enter,
    join_frame,
    legacy_datagram,
    model_enter,
)
from chatd.protocol.datagrams import FrameType, decode_relay_body
from chatd.protocol.errors import ProtocolError
from chatd.protocol.seal import Channel, Direction

LEGIT_ADDRESS = "127.0.0.2"
_NUMBERED = re.compile(rb"legit (\d+)$")
BIND_TIMEOUT = 3.0
"""Seconds a native member may wait for the KEEPALIVE_ACK that says its address is bound."""


class PairError(Exception):
    """The legitimate pair could not be set up: the measurement cannot be made."""


@dataclass(frozen=True)
class Delivery:
    sent: int
    received: int

    @property
    def percent(self) -> float | None:
        """Received in % of sent; None when nothing was sent (no figure rather than a false 0 or 100)."""
        return 100.0 * self.received / self.sent if self.sent else None


def message_text(sequence: int) -> str:
    return f"legit {sequence}"


def sequence_of(text: bytes) -> int | None:
    """The number of a legit message in a relayed text (C{"<user>: legit N"} or C{"legit N"})."""
    match = _NUMBERED.search(text)
    return int(match.group(1)) if match else None


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LEGIT_ADDRESS, 0))
    return sock


class LegitPair(ABC):
    """Two members in one room; subclasses say how to enter, encode and decode."""

    dialect = ""
    sender_key_id: int | None = None

    def __init__(self, tcp_port: int, udp_port: int, room: str) -> None:
        self.tcp_port = tcp_port
        self.server = ("127.0.0.1", udp_port)
        self.room = room
        self.sender_udp = udp_socket()
        self.receiver_udp = udp_socket()

    @abstractmethod
    def encode(self, sequence: int) -> bytes: ...

    @abstractmethod
    def decode(self, datagram: bytes) -> int | None: ...

    def close(self) -> None:
        self.sender_udp.close()
        self.receiver_udp.close()

    def measure(self, duration: float, rate: float, drain: float, stop: threading.Event | None = None) -> Delivery:
        """Send for C{duration} s at C{rate}/s while counting arrivals; then wait up to C{drain} s for the rest."""
        received: set[int] = set()
        sending_done = threading.Event()
        sent = 0

        def receive() -> None:
            self.receiver_udp.settimeout(0.05)
            drain_deadline: float | None = None
            while True:
                if sending_done.is_set():
                    drain_deadline = drain_deadline or time.monotonic() + drain
                    if len(received) >= sent or time.monotonic() > drain_deadline:
                        return
                try:
                    datagram = self.receiver_udp.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                sequence = self.decode(datagram)
                if sequence is not None:
                    received.add(sequence)

        receiver = threading.Thread(target=receive, name="legit-receiver", daemon=True)
        receiver.start()
        started = time.monotonic()
        interval = 1.0 / rate
        while time.monotonic() - started < duration and not (stop is not None and stop.is_set()):
            # Paced from the start time, so a late wake-up does not lower the rate.
            pause = started + sent * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with contextlib.suppress(OSError):
                self.sender_udp.sendto(self.encode(sent), self.server)
            sent += 1
        sending_done.set()
        receiver.join(drain + 1.0)
        return Delivery(sent, len(received))


class ModelPair(LegitPair):
    dialect = "model"

    def __init__(self, tcp_port: int, udp_port: int, room: str) -> None:
        super().__init__(tcp_port, udp_port, room)
        try:
            self.sender_token = self._enter(create_frame(room, "alice"), OP_CREATE, self.sender_udp)
            self.receiver_token = self._enter(join_frame(room, "bob"), OP_JOIN, self.receiver_udp)
        except BaseException:
            self.close()
            raise

    def _enter(self, frame: bytes, operation: int, udp: socket.socket) -> str:
        try:
            status, token = model_enter(LEGIT_ADDRESS, self.tcp_port, frame, operation, udp.getsockname()[1])
        except (OSError, ExchangeError) as error:
            raise PairError(f"the legit pair could not enter room {self.room!r}: {error}") from error
        if status != STATUS_SUCCESS:
            raise PairError(f"the legit pair was refused room {self.room!r}: status {status}")
        return token

    def encode(self, sequence: int) -> bytes:
        return legacy_datagram(self.room, self.sender_token, message_text(sequence))

    def decode(self, datagram: bytes) -> int | None:
        return sequence_of(datagram)

    def close(self) -> None:
        # The host's /exit closes the room, so that rooms do not pile up over the attacks.
        with contextlib.suppress(OSError, AttributeError):
            self.sender_udp.sendto(legacy_datagram(self.room, self.sender_token, "/exit"), self.server)
        super().close()


class NativePair(LegitPair):
    dialect = "native"

    def __init__(self, tcp_port: int, udp_port: int, room: str) -> None:
        super().__init__(tcp_port, udp_port, room)
        self.connections: list[Entered] = []
        try:
            self.sender = self._enter(create_frame(room, "alice", native=True), OP_CREATE, self.sender_udp)
            self.receiver = self._enter(join_frame(room, "bob", native=True), OP_JOIN, self.receiver_udp)
        except BaseException:
            self.close()
            raise
        self.sender_key_id = self.sender.key_id

    def _enter(self, frame: bytes, operation: int, udp: socket.socket) -> Channel:
        try:
            status, entered = enter(LEGIT_ADDRESS, self.tcp_port, frame, operation)
        except (OSError, ExchangeError) as error:
            raise PairError(f"the legit pair could not enter room {self.room!r}: {error}") from error
        if entered is None:
            raise PairError(f"the legit pair was refused room {self.room!r}: status {status}")
        # The TCP connection is the native member's presence: it stays open until close().
        self.connections.append(entered)
        details = entered.native_details()
        channel = Channel(base64.b64decode(details["key"]), int(details["key_id"]), Direction.TO_SERVER)
        self._bind(channel, udp)
        return channel

    def _bind(self, channel: Channel, udp: socket.socket) -> None:
        """A KEEPALIVE binds the member's UDP address; its ACK says so. Bounded, with a few retries."""
        deadline = time.monotonic() + BIND_TIMEOUT
        udp.settimeout(0.2)
        while time.monotonic() < deadline:
            udp.sendto(channel.seal(FrameType.KEEPALIVE, b""), self.server)
            try:
                frame_type, _body = channel.open(udp.recv(65536))
            except (TimeoutError, ProtocolError):
                continue
            if frame_type == FrameType.KEEPALIVE_ACK:
                return
        raise PairError(f"no KEEPALIVE_ACK within {BIND_TIMEOUT:g} s: UDP to the server does not work")

    def encode(self, sequence: int) -> bytes:
        return self.sender.seal(FrameType.MESSAGE, message_text(sequence).encode("ascii"))

    def decode(self, datagram: bytes) -> int | None:
        try:
            frame_type, body = self.receiver.open(datagram)
            if frame_type != FrameType.RELAY:
                return None
            return sequence_of(decode_relay_body(body).text.encode("utf-8"))
        except ProtocolError:
            return None

    def close(self) -> None:
        for entered in getattr(self, "connections", []):
            entered.sock.close()
        super().close()


def make_pair(dialect: str, tcp_port: int, udp_port: int, room: str) -> LegitPair:
    return NativePair(tcp_port, udp_port, room) if dialect == "native" else ModelPair(tcp_port, udp_port, room)
