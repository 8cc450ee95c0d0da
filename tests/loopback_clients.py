"""
Small clients for the end-to-end tests: real sockets, chatd's own codecs.

L{ChatClient} speaks one dialect over Twisted TCP and UDP (tests/test_loopback.py);
L{BlockingClient} does the same with blocking sockets and timeouts, for a
twistd started as a subprocess (tests/daemon/test_twistd.py). L{Capture} writes the
hex of every frame and datagram to the file that C{CHATD_CAPTURE} names.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.python.failure import Failure
from typing_extensions import override

from chatd.client.tls import TrustPolicy, tls_endpoint
from chatd.protocol.datagrams import FrameType, decode_datagram, decode_relay_body, encode_legacy
from chatd.protocol.errors import ProtocolError
from chatd.protocol.payloads import NATIVE_VERSION, Dialect
from chatd.protocol.seal import HEADER_SIZE as SEALED_HEADER_SIZE
from chatd.protocol.seal import Channel, Direction, SealedHeader, Sealer, new_key
from chatd.protocol.wire import (
    HEADER_SIZE,
    Frame,
    Operation,
    SizeEncoding,
    State,
    decode_frame,
    decode_payload_size,
    encode_frame,
)

CLOCK = cast(IReactorTime, _reactor)
REACTOR_TCP = cast(IReactorTCP, _reactor)
REACTOR_UDP = cast(IReactorUDP, _reactor)
WAIT = 5.0
"""Seconds any single wait for the server may take before the test fails."""
CAPTURE_VARIABLE = "CHATD_CAPTURE"
READ_LIMIT = 1 << 20
"""The clients accept frames this large, so a server bug shows as a wrong frame, not a client error."""

Address = tuple[str, int]


# -- capture ------------------------------------------------------------------


def describe_frame(frame: Frame) -> str:
    payload = frame.payload.decode("utf-8", "backslashreplace")
    return (
        f"{frame.operation.name} {frame.state.name} room={frame.room!r}"
        f" size_encoding={frame.encoding.value} payload={payload!r}"
    )


def describe_datagram(data: bytes, sealer: Sealer | None = None, direction: Direction | None = None) -> str:
    """
    A one-line reading of a datagram in either direction, for the capture file.

    A sealed frame shows its clear header only, and what is inside it when
    the capturing client holds the key (C{sealer}): the hex column is what
    crossed the wire, the reading is what the two ends see.
    """
    try:
        decoded = decode_datagram(data)
    except ProtocolError:
        return f"text {data.decode('utf-8', 'backslashreplace')!r}"
    if isinstance(decoded, SealedHeader):
        reading = (
            f"sealed v1 key_id={decoded.key_id} counter={decoded.counter} flags={decoded.flags}"
            f" ciphertext+tag={len(data) - SEALED_HEADER_SIZE} bytes"
        )
        if sealer is None or direction is None:
            return reading
        try:
            _, frame_type, body = sealer.open(direction, data)
        except ProtocolError as error:
            return f"{reading}; does not open: {error.reason}"
        if frame_type == FrameType.RELAY:
            try:
                relayed = decode_relay_body(body)
            except ProtocolError:
                pass
            else:
                inside = f"RELAY sender={relayed.sender!r} time_ms={relayed.timestamp_ms} message={relayed.text!r}"
                return f"{reading}; opened by its client: {inside}"
        try:
            kind = FrameType(frame_type).name
        except ValueError:
            kind = str(frame_type)
        return f"{reading}; opened by its client: {kind} {body.decode('utf-8', 'backslashreplace')!r}"
    message = decoded.message.decode("utf-8", "backslashreplace")
    return f"legacy room={decoded.room!r} token={decoded.token!r} message={message!r}"


class Capture:
    """
    Appends one tab-separated line per TCP frame or datagram to a file:
    dialect, channel (tcp/udp), direction, client name, hex, and a reading.
    Does nothing when no path is given.
    """

    def __init__(self, path: str | None, label: str) -> None:
        self.path = path
        self.label = label

    @classmethod
    def from_environment(cls, label: str) -> Capture:
        return cls(os.environ.get(CAPTURE_VARIABLE) or None, label)

    def heading(self, text: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        self._write(f"# {stamp} {text}\n# dialect\tchannel\tdirection\tclient\thex\treading\n")

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def note(self, text: str) -> None:
        """A comment line (C{# text}) between the records."""
        self._write(f"# {text}\n")

    def record(self, who: str, channel: str, direction: str, data: bytes, reading: str) -> None:
        self._write(f"{self.label}\t{channel}\t{direction}\t{who}\t{data.hex()}\t{reading}\n")

    def _write(self, text: str) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(text)


NO_CAPTURE = Capture(None, "")


# -- Twisted clients ----------------------------------------------------------


def split_frame(buffer: bytearray) -> bytes | None:
    """Take one whole frame's bytes off the front of C{buffer}, or None."""
    if len(buffer) < HEADER_SIZE:
        return None
    size, _ = decode_payload_size(bytes(buffer[3:HEADER_SIZE]))
    end = HEADER_SIZE + buffer[0] + size
    if len(buffer) < end:
        return None
    raw = bytes(buffer[:end])
    del buffer[:end]
    return raw


class FrameClient(Protocol):
    """A TCP client that queues every frame the server sends."""

    def __init__(self, who: str, capture: Capture = NO_CAPTURE) -> None:
        self.who = who
        self.capture = capture
        self.frames: DeferredQueue[Frame] = DeferredQueue()
        self.received = bytearray()
        """Every byte received, whole frames or not."""
        self.lost = False
        self._buffer = bytearray()
        self._close_waiters: list[Deferred[None]] = []

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._buffer += data
        while (raw := split_frame(self._buffer)) is not None:
            frame = decode_frame(raw, READ_LIMIT)
            if self.capture.enabled:
                self.capture.record(self.who, "tcp", "server->client", raw, describe_frame(frame))
            self.frames.put(frame)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def send_frame(self, frame: Frame) -> None:
        data = encode_frame(frame)
        if self.capture.enabled:
            self.capture.record(self.who, "tcp", "client->server", data, describe_frame(frame))
        self.send_bytes(data)

    def send_bytes(self, data: bytes, reading: str = "") -> None:
        if reading and self.capture.enabled:
            self.capture.record(self.who, "tcp", "client->server", data, reading)
        transport = cast(ITransport, self.transport)
        transport.write(data)

    def next_frame(self, timeout: float = WAIT) -> Deferred[Frame]:
        return self.frames.get().addTimeout(timeout, CLOCK)

    def when_closed(self, timeout: float = WAIT) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self.lost:
            waiter.callback(None)
        else:
            self._close_waiters.append(waiter)
        return waiter.addTimeout(timeout, CLOCK)

    def close(self) -> Deferred[None]:
        if not self.lost and self.transport is not None:
            self.transport.loseConnection()
        return self.when_closed()

    @property
    def pending(self) -> int:
        """Frames received and not yet taken."""
        return len(self.frames.pending)


async def connect_tcp(host: str, port: int, client: FrameClient, tls: TrustPolicy | None = None) -> FrameClient:
    """Connect C{client} to C{host:port}: plain TCP, or TLS checked by C{tls}."""
    endpoint: IStreamClientEndpoint
    if tls is None:
        endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = endpoint_type(_reactor, host, port, timeout=int(WAIT))
    else:
        endpoint, _creator = tls_endpoint(_reactor, host, port, tls)
    connected: Deferred[FrameClient] = connectProtocol(endpoint, client)
    return await connected.addTimeout(WAIT, CLOCK)


class DatagramClient(DatagramProtocol):
    """A UDP socket on loopback that queues what it receives and sends to the server."""

    def __init__(self, who: str, server: Address, capture: Capture = NO_CAPTURE) -> None:
        self.who = who
        self.server = server
        self.capture = capture
        self.datagrams: DeferredQueue[tuple[bytes, Address]] = DeferredQueue()
        self.listening: IListeningPort | None = None
        self.sealer: Sealer | None = None
        """The owner's UDP key, so the capture can say what its sealed frames carry."""

    def listen(self, host: str) -> None:
        self.listening = REACTOR_UDP.listenUDP(0, self, interface=host, maxPacketSize=8192)

    @property
    def port(self) -> int:
        assert self.listening is not None
        number: int = self.listening.getHost().port  # type: ignore[attr-defined]
        return number

    @override
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.capture.enabled:
            reading = describe_datagram(datagram, self.sealer, Direction.TO_CLIENT)
            self.capture.record(self.who, "udp", "server->client", datagram, reading)
        self.datagrams.put((datagram, (addr[0], addr[1])))

    def send(self, data: bytes) -> None:
        if self.capture.enabled:
            reading = describe_datagram(data, self.sealer, Direction.TO_SERVER)
            self.capture.record(self.who, "udp", "client->server", data, reading)
        assert self.transport is not None
        self.transport.write(data, self.server)

    def next_datagram(self, timeout: float = WAIT) -> Deferred[tuple[bytes, Address]]:
        return self.datagrams.get().addTimeout(timeout, CLOCK)

    @property
    def pending(self) -> int:
        return len(self.datagrams.pending)

    async def stop(self) -> None:
        listening, self.listening = self.listening, None
        if listening is not None:
            stopped = listening.stopListening()
            if stopped is not None:
                await stopped


def request_payload(dialect: Dialect, name: str, password: str | None = None) -> bytes:
    """A create or join payload as each dialect's clients write it (seed: the bare name, or JSON for a password)."""
    if dialect is Dialect.SEED and password is None:
        return name.encode("utf-8")
    obj: dict[str, Any] = {"username": name}
    if dialect is Dialect.NATIVE:
        obj = {"chatd": NATIVE_VERSION, **obj}
    if password is not None:
        obj["password"] = password
    return json.dumps(obj).encode("utf-8")


def encoding_of(dialect: Dialect) -> SizeEncoding:
    return SizeEncoding.ASCII if dialect is Dialect.SEED else SizeEncoding.BINARY


class ChatClient:
    """
    One chat user of one dialect: a TCP connection (over TLS when C{tls} is
    given) and a UDP socket.

    It only sends and collects; tests/test_loopback.py decides what the
    answers must be.
    """

    def __init__(
        self,
        dialect: Dialect,
        name: str,
        host: str,
        tcp_port: int,
        udp_port: int,
        capture: Capture = NO_CAPTURE,
        tls: TrustPolicy | None = None,
    ) -> None:
        self.dialect = dialect
        self.name = name
        self.host = host
        self.tcp_port = tcp_port
        self.capture = capture
        self.tls = tls
        self.tcp = FrameClient(name, capture)
        self.udp = DatagramClient(name, (host, udp_port), capture)
        self.room = ""
        self.token = ""
        self.channel: Channel | None = None
        """A native member's UDP key, from its complete frame: seals what it sends, opens what it gets."""
        self.server_counter = 0
        """The counter the server's next sealed frame to this (native) client must carry."""

    async def open(self) -> None:
        self.udp.listen(self.host)
        await connect_tcp(self.host, self.tcp_port, self.tcp, self.tls)

    async def close(self) -> None:
        await self.tcp.close()
        await self.udp.stop()

    @property
    def encoding(self) -> SizeEncoding:
        return encoding_of(self.dialect)

    def request(self, operation: Operation, room: str, password: str | None = None, **extra: Any) -> None:
        payload = request_payload(self.dialect, self.name, password)
        if extra:
            payload = json.dumps({**json.loads(payload), **extra}).encode("utf-8")
        self.room = room
        self.tcp.send_frame(Frame(operation, State.REQUEST, room, payload, self.encoding))

    def send_port(self) -> None:
        """The model dialect's registration: the UDP port as 2 raw bytes."""
        self.tcp.send_bytes(self.udp.port.to_bytes(2, "big"), f"model UDP port {self.udp.port} (2 raw bytes)")

    def send_register(self) -> None:
        """The seed dialect's registration: operation 3 with the port in ASCII."""
        payload = str(self.udp.port).encode("ascii")
        self.tcp.send_frame(Frame(Operation.REGISTER_UDP, State.REQUEST, self.room, payload, self.encoding))

    def adopt_key(self, details: dict[str, Any]) -> Channel:
        """Keep the UDP key of a native complete frame (create, join, rekey); a new key is a new Channel."""
        key = base64.b64decode(str(details["key"]), validate=True)
        self.channel = Channel(key, int(details["key_id"]), Direction.TO_SERVER)
        self.server_counter = 0
        self.udp.sealer = Sealer(key)
        return self.channel

    @property
    def key_id(self) -> int:
        assert self.channel is not None, "no UDP key: not a native member"
        return self.channel.key_id

    def native(self, frame_type: FrameType, body: bytes = b"") -> bytes:
        """A sealed frame under this client's key, with its next counter."""
        assert self.channel is not None, "no UDP key: not a native member"
        return self.channel.seal(frame_type, body)

    def forged(self, text: str, key_id: int | None = None, counter: int | None = None) -> bytes:
        """
        What a spoofer without the key can make: a MESSAGE claiming this
        client's key id (or C{key_id}), sealed under a key of its own.
        """
        assert self.channel is not None, "no UDP key: not a native member"
        return Sealer(new_key()).seal(
            Direction.TO_SERVER,
            self.channel.key_id if key_id is None else key_id,
            self.channel.sent if counter is None else counter,
            FrameType.MESSAGE,
            text.encode("utf-8"),
        )

    def unseal(self, datagram: bytes) -> tuple[int, bytes]:
        """The frame type and body of a sealed frame from the server; raises ProtocolError as Channel.open does."""
        assert self.channel is not None, "no UDP key: not a native member"
        return self.channel.open(datagram)

    def message(self, text: str, room: str | None = None, token: str | None = None) -> bytes:
        """The datagram this client sends to say C{text} (room and token: legacy forms only)."""
        if self.dialect is Dialect.NATIVE:
            return self.native(FrameType.MESSAGE, text.encode("utf-8"))
        return encode_legacy(self.room if room is None else room, self.token if token is None else token, text)

    def say(self, text: str) -> bytes:
        """Send C{text}; the datagram that was sent."""
        data = self.message(text)
        self.udp.send(data)
        return data


# -- blocking clients, for a server in another process ------------------------


class BlockingClient:
    """A TCP connection and a UDP socket with timeouts: no reactor needed."""

    def __init__(self, host: str, tcp_port: int, udp_port: int, timeout: float = WAIT) -> None:
        self.server_udp = (host, udp_port)
        self.tcp = socket.create_connection((host, tcp_port), timeout=timeout)
        self.udp = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.settimeout(timeout)
        self.udp.bind((host, 0))
        self.udp_port: int = self.udp.getsockname()[1]

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()

    def send_frame(self, frame: Frame) -> None:
        self.tcp.sendall(encode_frame(frame))

    def read_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.tcp.recv(size - len(data))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
            data += chunk
        return bytes(data)

    def read_frame(self) -> Frame:
        header = self.read_exactly(HEADER_SIZE)
        size, _ = decode_payload_size(header[3:])
        return decode_frame(header + self.read_exactly(header[0] + size), READ_LIMIT)

    def at_eof(self) -> bool:
        """True once the server has closed the connection (waits up to the timeout)."""
        return self.tcp.recv(1) == b""

    def send_datagram(self, data: bytes) -> None:
        self.udp.sendto(data, self.server_udp)

    def recv_datagram(self) -> bytes:
        data, _ = self.udp.recvfrom(8192)
        return data


def free_ports(host: str = "127.0.0.1") -> tuple[int, int]:
    """A TCP port and a UDP port that were free a moment ago (bound to 0, then closed)."""
    ports = []
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind((host, 0))
            ports.append(probe.getsockname()[1])
    return ports[0], ports[1]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def wall_ms() -> int:
    return int(time.time() * 1000)
