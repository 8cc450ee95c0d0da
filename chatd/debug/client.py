"""
The telnet-style debug client: type requests as words, see every byte.

C{chatd-debug [--host 127.0.0.1] [--tcp-port 9001] [--udp-port 9002]} (or
C{python -m chatd.debug.client}) connects to a chatd, reads one command a line
from stdin and prints every TCP frame and UDP datagram it sends or receives
twice: decoded, and as hex with the fields split by C{|} (the hex can be
pasted back into C{raw} or C{udpraw}). Native datagrams are sealed
(chatd.protocol.seal): C{nsay} and C{keepalive} seal with the UDP key the last native
complete create, join or rekey frame handed out, and what arrives is opened
with it; the key id is shown, never the key. Type C{help} for the commands.

The network side lives here: L{ServerConnection} (the TCP connection),
L{ServerDatagrams} (the UDP port), L{Console} (stdin and stdout) and
L{DebugClient}, which ties them to the session; and L{main}, the console
script. They only move bytes and carry actions out. What a typed line asks
for and what the client learns from the server are decided in
L{chatd.debug.commands}; how bytes are shown is in L{chatd.debug.describe}.
Both are pure, so they are tested without a reactor.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NoReturn

from twisted.internet import task
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import CannotListenError, ConnectError, ConnectionDone, MessageLengthError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure
from typing_extensions import override

from chatd.client.stdio_lines import StdioLines
from chatd.client.tls import ChatTLSCreator, TrustPolicy, explain_tls_failure, tls_endpoint
from chatd.client.tls_arguments import DEFAULT_TLS_PORT, add_tls_arguments, trust_policy
from chatd.debug.commands import (
    DIALECT_NOTES,
    Action,
    ChangeDialect,
    CommandError,
    Connect,
    SendBytes,
    SendDatagram,
    SendFrame,
    SendSealed,
    Session,
    Show,
    advance,
    learn,
    open_datagram,
    parse_command,
)
from chatd.debug.describe import (
    RECEIVE_LIMIT,
    Opened,
    Opening,
    describe_datagram,
    describe_frame,
    describe_header,
    describe_tcp_bytes,
    frame_hex,
    frame_size,
    plural,
    report,
)
from chatd.protocol.errors import ProtocolError
from chatd.protocol.payloads import Dialect
from chatd.protocol.wire import Frame, FrameDecoder, Operation, SizeEncoding, State, encode_frame

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TCP_PORT = 9001
DEFAULT_UDP_PORT = 9002
"""The daemon's default TLS port (twistd chatd --tls-port), as chatd-chat's."""
MAX_UDP_PACKET = 65535
"""Any datagram at all, so that an oversized one shows as such."""
CLOSE_TIMEOUT = 5.0
"""Seconds to wait for a connection (or stdout) to close cleanly before giving up on it."""

_REGISTER_HINTS = {
    Dialect.MODEL: "port (2 raw bytes, then the server closes TCP)",
    Dialect.SEED: "register (operation 3)",
    Dialect.NATIVE: "keepalive (the first sealed datagram registers)",
}


def _answered_in(frame: Frame) -> Dialect:
    """
    The dialect the server took the connection for, as its complete frame
    shows it: an ASCII size is the seed dialect's, a JSON object the native
    one's. Not the dialect typed requests are written in now: a request sent
    with raw, or before a dialect command, may have been in another.
    """
    if frame.encoding is SizeEncoding.ASCII:
        return Dialect.SEED
    if frame.payload.lstrip().startswith(b"{"):
        return Dialect.NATIVE
    return Dialect.MODEL


# -- the network side ----------------------------------------------------------------


def _host_port(address: IAddress) -> tuple[str, int]:
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host, address.port
    return str(address), 0


def _show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def client_endpoint(reactor: IReactorTCP, host: str, port: int) -> IStreamClientEndpoint:
    """An endpoint for an IPv4 or IPv6 literal, or a host name (either family)."""
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=10)
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=10)
    return HostnameEndpoint(reactor, host, port, timeout=10)


class ServerConnection(Protocol):
    """The TCP connection: feeds a FrameDecoder, hands each frame and its bytes on."""

    def __init__(self, client: DebugClient) -> None:
        self._client = client
        self._decoder = FrameDecoder(RECEIVE_LIMIT)
        self._pending = bytearray()
        """Received bytes not yet handed on: exactly what the decoder holds."""
        self.closed_by_us = False
        self.lost = False
        self._lost_waiters: list[Deferred[None]] = []

    @override
    def dataReceived(self, data: bytes) -> None:
        self._pending += data
        self._decoder.feed(data)
        while True:
            try:
                item = self._decoder.next()
            except ProtocolError as error:
                # A refused frame of known length is skipped; a refused header
                # loses the framing, so everything received so far goes with it.
                size = frame_size(bytes(self._pending)) or len(self._pending)
                self._client.refused_received(self._take(size), error)
                self._decoder = FrameDecoder(RECEIVE_LIMIT)
                self._decoder.feed(bytes(self._pending))
                continue
            if item is None:
                return
            assert isinstance(item, Frame)
            self._client.frame_received(item, self._take(len(self._pending) - self._decoder.buffered))

    def _take(self, count: int) -> bytes:
        data = bytes(self._pending[:count])
        del self._pending[:count]
        return data

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self._client.connection_lost(self, reason, bytes(self._pending))
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def when_lost(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self.lost:
            waiter.callback(None)
        else:
            self._lost_waiters.append(waiter)
        return waiter

    def close(self) -> None:
        self.closed_by_us = True
        if not self.lost and self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        if not self.lost and ITCPTransport.providedBy(self.transport):
            self.transport.abortConnection()


class ServerDatagrams(DatagramProtocol):
    """The UDP port: every datagram that arrives goes to the client."""

    noisy = False

    def __init__(self, client: DebugClient) -> None:
        self._client = client

    @override
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._client.datagram_received(datagram, (str(addr[0]), int(addr[1])))

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.write(data, address)


class DebugClient:
    """
    One debugging session: a TCP connection, a UDP port and the L{Session}.

    Everything it prints goes through C{write} (one call per entry, possibly
    several lines), so tests can collect it. Lines come in through
    L{handle_line}; L{stopped} fires once L{shutdown} has closed everything.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        write: Callable[[str], None],
        host: str = DEFAULT_HOST,
        tcp_port: int = DEFAULT_TCP_PORT,
        udp_port: int = DEFAULT_UDP_PORT,
        tls: TrustPolicy | None = None,
    ) -> None:
        """C{tls}: connect to the server's TLS port (C{tcp_port}), trusting it so; None: plain TCP."""
        self._reactor = reactor
        self.tls = tls
        self._tls_creator: ChatTLSCreator | None = None
        self._write = write
        self.host = host
        self.tcp_port = tcp_port
        self.udp_port = udp_port
        self.session = Session()
        self.connection: ServerConnection | None = None
        self._connecting = False
        self._datagrams: ServerDatagrams | None = None
        self._listener: IListeningPort | None = None
        self._server_udp: tuple[str, int] | None = None
        self._greeted = False
        self._stopping = False
        self.stopped: Deferred[None] = Deferred()

    # -- connecting --------------------------------------------------------------

    async def connect(self) -> bool:
        """Open the TCP connection (and, the first time, the UDP port); False if that failed."""
        self._connecting = True
        where = _show_address(self.host, self.tcp_port)
        try:
            if self.tls is None:
                endpoint = client_endpoint(self._reactor, self.host, self.tcp_port)
            else:
                endpoint, self._tls_creator = tls_endpoint(self._reactor, self.host, self.tcp_port, self.tls)
            protocol: ServerConnection = await connectProtocol(endpoint, ServerConnection(self))
        except (ConnectError, OSError) as error:
            self._write(f"!! cannot connect to {where}: {error}")
            return False
        finally:
            self._connecting = False
        if self._stopping:
            protocol.close()
            return False
        self.attach(protocol)
        return True

    def attach(self, protocol: ServerConnection) -> None:
        """Use a connected L{ServerConnection}; the first one also opens the UDP port beside it."""
        self.connection = protocol
        assert protocol.transport is not None
        local_host, local_port = _host_port(protocol.transport.getHost())
        server_host, server_port = _host_port(protocol.transport.getPeer())
        self._server_udp = (server_host, self.udp_port)
        self._write(
            f"-- connected to {_show_address(server_host, server_port)} from {_show_address(local_host, local_port)}"
        )
        if self._listener is None and not self._greeted:
            self._listen_udp(local_host)
        if not self._greeted:
            self._greeted = True
            dialect = self.session.dialect
            self._write(f"-- dialect {dialect.value} ({DIALECT_NOTES[dialect]}); type help for the commands")

    def _listen_udp(self, local_host: str) -> None:
        # The TCP connection's own address: the same family and interface, so
        # the server sees datagrams come from the host it saw connect.
        if not IReactorUDP.providedBy(self._reactor):
            self._write("!! this reactor cannot do UDP: no datagrams")
            return
        reactor = IReactorUDP(self._reactor)
        datagrams = ServerDatagrams(self)
        try:
            listener = reactor.listenUDP(0, datagrams, local_host, MAX_UDP_PACKET)
        except CannotListenError as error:
            self._write(f"!! cannot listen for UDP on {local_host}: {error}")
            return
        self._listener, self._datagrams = listener, datagrams
        _, port = _host_port(listener.getHost())
        self.session = replace(self.session, local_udp_port=port)
        assert self._server_udp is not None
        self._write(
            f"-- UDP: listening on {_show_address(local_host, port)}, sending to {_show_address(*self._server_udp)}"
        )

    # -- commands ----------------------------------------------------------------

    def handle_line(self, line: str) -> None:
        """Carry out one typed line; every error is printed, none is raised."""
        try:
            action = parse_command(line, self.session)
            if action is not None:
                self._perform(action)
        except CommandError as error:
            self._write(f"!! {error}")
        except Exception as error:
            # A bug here must not end the session the developer is debugging with.
            self._write(f"!! internal error of the debug client: {type(error).__name__}: {error}")

    def _perform(self, action: Action) -> None:
        if isinstance(action, SendFrame):
            self._send_tcp(encode_frame(action.frame))
        elif isinstance(action, SendBytes):
            self._send_tcp(action.data)
        elif isinstance(action, SendDatagram):
            self._send_udp(action.data, open_datagram(self.session, action.data, sent=True))
        elif isinstance(action, SendSealed):
            channel = self.session.channel
            assert channel is not None, "parse_command checks for a key"
            self._udp_target()
            self._send_udp(channel.seal(action.frame_type, action.body), Opened(action.frame_type, action.body))
        elif isinstance(action, ChangeDialect):
            self.session = advance(self.session, action)
            self._write(f"-- dialect {action.dialect.value} ({DIALECT_NOTES[action.dialect]})")
        elif isinstance(action, Show):
            self._write(action.text)
        elif isinstance(action, Connect):
            if self.connection is not None or self._connecting:
                raise CommandError("already connected (or connecting)")
            Deferred.fromCoroutine(self.connect()).addErrback(self._connect_failed)
        else:
            self.shutdown()

    def _connect_failed(self, failure: Failure) -> None:
        self._write(f"!! cannot connect: {failure.getErrorMessage()}")

    def _send_tcp(self, data: bytes) -> None:
        connection = self.connection
        if connection is None or connection.closed_by_us:
            raise CommandError("not connected to the server; type connect to open a new connection")
        self._write(report(f">> TCP {plural(len(data), 'byte')}", describe_tcp_bytes(data)))
        connection.send(data)

    def _udp_target(self) -> tuple[ServerDatagrams, tuple[str, int]]:
        if self._datagrams is None or self._server_udp is None:
            raise CommandError("no UDP port to send from")
        return self._datagrams, self._server_udp

    def _send_udp(self, data: bytes, opening: Opening | None) -> None:
        datagrams, server = self._udp_target()
        described = describe_datagram(data, sent=True, opening=opening)
        self._write(report(f">> UDP to {_show_address(*server)}, {plural(len(data), 'byte')}", described))
        try:
            datagrams.send(data, server)
        except (OSError, MessageLengthError) as error:
            self._write(f"!! the datagram was not sent: {error}")

    # -- what the server sends ----------------------------------------------------

    def frame_received(self, frame: Frame, data: bytes) -> None:
        self._write(report(f"<< TCP {plural(len(data), 'byte')}", f"{describe_frame(frame)}\nhex {frame_hex(data)}"))
        before, self.session = self.session, learn(self.session, frame)
        session = self.session
        channel = session.channel
        if session.token != before.token or session.room != before.room:
            if channel is None:
                self._write(
                    f"-- token for room {session.room!r}: {session.token} (say uses it); "
                    f"to register your UDP address: {_REGISTER_HINTS[_answered_in(frame)]}"
                )
                if _answered_in(frame) is Dialect.NATIVE:
                    self._write(
                        '!! the complete frame has no usable UDP key ("key", "key_id"): nsay and keepalive cannot seal'
                    )
            else:
                self._write(
                    f"-- token for room {session.room!r}: {session.token} (never sent on UDP); "
                    f"UDP key id {channel.key_id} (nsay and keepalive seal with it); "
                    f"to register your UDP address: {_REGISTER_HINTS[Dialect.NATIVE]}"
                )
        elif channel is not before.channel and channel is not None:
            self._write(
                f"-- new UDP key id {channel.key_id} for room {session.room!r} "
                "(nsay and keepalive seal with it, counters from 0; the old key no longer works)"
            )
        elif frame.operation is Operation.REKEY and frame.state is State.COMPLETE:
            kept = "no key" if channel is None else f"key id {channel.key_id}"
            self._write(f'!! the complete rekey frame has no usable UDP key ("key", "key_id"); still {kept}')
        if session.invite != before.invite:
            self._write(
                f"-- invitation to room {frame.room!r}: {self.session.invite} "
                f"(whoever has it can: accept {shlex.quote(frame.room)} USER {self.session.invite})"
            )

    def refused_received(self, data: bytes, error: ProtocolError) -> None:
        self._write(
            report(
                f"!! << TCP {plural(len(data), 'byte')} the frame codec refuses: {error}",
                f"{describe_header(data)}\nhex {frame_hex(data)}",
            )
        )

    def connection_lost(self, connection: ServerConnection, reason: Failure, leftover: bytes) -> None:
        if self.connection is connection:
            self.connection = None
        if leftover:
            self._write(
                report(
                    f"!! {plural(len(leftover), 'byte')} received that never became a whole frame",
                    f"hex {leftover.hex()}",
                )
            )
        if connection.closed_by_us:
            self._write("-- TCP connection closed")
        elif reason.check(ConnectionDone):
            self._write("-- the server closed the TCP connection (type connect for a new one)")
        else:
            # Over TLS a refused certificate or a failed handshake ends the connection: say which.
            refusal = explain_tls_failure(reason, self._tls_creator) if self.tls is not None else None
            why = str(refusal) if refusal is not None else reason.getErrorMessage()
            self._write(f"!! TCP connection lost: {why} (type connect for a new one)")

    def datagram_received(self, data: bytes, source: tuple[str, int]) -> None:
        headline = f"<< UDP from {_show_address(*source)}, {plural(len(data), 'byte')}"
        if source != self._server_udp:
            headline += " (not the server's UDP address)"
        opening = open_datagram(self.session, data, sent=False)
        self._write(report(headline, describe_datagram(data, sent=False, opening=opening)))

    # -- the end -----------------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """Close the connection and the UDP port, then fire L{stopped}; safe to call again."""
        if not self._stopping:
            self._stopping = True
            Deferred.fromCoroutine(self._shutdown())
        return self.stopped

    async def _shutdown(self) -> None:
        connection = self.connection
        if connection is not None:
            lost = connection.when_lost()
            connection.close()
            try:
                await lost.addTimeout(CLOSE_TIMEOUT, IReactorTime(self._reactor))
            except TimeoutError:
                connection.abort()
        listener, self._listener, self._datagrams = self._listener, None, None
        stopping = None if listener is None else listener.stopListening()
        if stopping is not None:
            await stopping
        self.stopped.callback(None)


class Console(StdioLines):
    """Lines from stdin to the client; the client's output to stdout."""

    def __init__(self) -> None:
        super().__init__()
        self.client: DebugClient | None = None

    def write(self, text: str) -> None:
        self.write_text(text, "backslashreplace")

    @override
    def lineReceived(self, line: bytes) -> None:
        if self.client is None:
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.write("!! that line is not valid UTF-8 (raw and udpraw take any bytes as hex)")
            return
        self.client.handle_line(text)

    @override
    def lineLengthExceeded(self, line: bytes) -> None:
        # Not the default (hang up): the rest of the session is still good.
        self.write(f"!! a line of more than {self.MAX_LENGTH} bytes was dropped")

    @override
    def input_ended(self) -> None:
        """End of input: leave, as quit does."""
        self._shutdown()

    @override
    def output_lost(self) -> None:
        """Nobody reads the output any more: leave."""
        self._shutdown()

    @override
    def stdio_lost(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        if self.client is not None:
            self.client.shutdown()


# -- main ----------------------------------------------------------------------------------


def _port_argument(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return int(text)


def _host_argument(text: str) -> str:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not host:
        raise argparse.ArgumentTypeError("the host is empty")
    return host


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chatd-debug",
        description="Talk to a chatd by hand: type requests as words, see every frame decoded and as hex.",
        epilog="Once connected, type help for the commands.",
    )
    parser.add_argument(
        "--host",
        type=_host_argument,
        default=DEFAULT_HOST,
        help=f"the server's address or name, IPv4 or IPv6 (default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--tcp-port",
        type=_port_argument,
        default=DEFAULT_TCP_PORT,
        help=f"the server's TCP port (default {DEFAULT_TCP_PORT})",
    )
    parser.add_argument(
        "--udp-port",
        type=_port_argument,
        default=DEFAULT_UDP_PORT,
        help=f"the server's UDP port (default {DEFAULT_UDP_PORT})",
    )
    add_tls_arguments(
        parser,
        "Connect to the server's TLS port instead (what a native-only room's create needs). Any of these turns"
        " TLS on; without a trust option the certificate is pinned on first use, as chatd-chat does.",
        _port_argument,
        system=False,
    )
    options = parser.parse_args(argv)
    options.tls = trust_policy(options, parser.error)
    if options.tls is not None:
        options.tcp_port = options.tls_port or DEFAULT_TLS_PORT
    return options


async def run(reactor: Any, options: argparse.Namespace) -> None:
    """Connect, then carry out typed lines until quit or the end of input."""
    console = Console()
    stdio = StandardIO(console, reactor=reactor)
    # Typed lines wait until the connection is up.
    stdio.pauseProducing()
    client = DebugClient(reactor, console.write, options.host, options.tcp_port, options.udp_port, options.tls)
    console.client = client
    connected = await client.connect()
    if connected:
        stdio.resumeProducing()
        await client.stopped
    else:
        await client.shutdown()
    await console.close(reactor)
    if not connected:
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The C{chatd-debug} console script."""
    options = parse_arguments(argv)
    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
