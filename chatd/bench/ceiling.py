"""
The interpreter's ceiling: how fast a minimal UDP relay written in Python can
go on this machine, to be measured side by side with the C reference relay of
the benchmark kit (../shared/bench: relay_c and relayload).

    python -m chatd.bench.ceiling relay --udp-port P --ctl-port C
    python -m chatd.bench.ceiling compare --bench-dir DIR [--scenario room10,rooms100x5,room200] [--reps 3]

This module holds the relay, and is the entry point of both subcommands: it
parses the command line and hands C{compare} to C{chatd.bench.ceiling_compare},
which runs the two relays against relayload and prints the comparison.

C{relay} is the minimal relay: Twisted's epoll reactor and one
IReadDescriptor that moves datagrams with recvmmsg/sendmmsg through ctypes,
as chatd's batching port does, but with none of chatd's checks, counters or
rate limits. It makes the checks relay_c makes and nothing more (the token
belongs to the room, the source is the registered address, the datagram fits
in 4096 bytes) and sends each other member of the room what chatd sends a
legacy member, C{m<index in the room>: <message>}. It speaks relay_c's
control protocol: it listens on 127.0.0.1:C, accepts one TCP connection,
reads C{room token udp_port} lines until C{GO} and answers C{OK <n>}; then it
serves UDP on 127.0.0.1:P until SIGTERM or SIGINT (exit status 0).

Per reactor wake-up it reads up to L{RECV_BATCH} datagrams per recvmmsg call
until EAGAIN or L{MAX_PER_WAKEUP} datagrams. Every copy a received batch
produces goes out through one queue: the C{m<k>: } prefix is written into the
receive buffer just before the message (so the message is never copied), each
copy's destination is one strided store from the room's ring of addresses,
and the queue is sent with as few sendmmsg calls as the kernel allows
(L{SEND_BATCH} datagrams per call).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import signal
import socket
import struct
import sys
from collections.abc import Iterable, Sequence
from types import FrameType
from typing import Final, NamedTuple

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.bench import ceiling_compare
from chatd.daemon.mmsg import (
    IOV,
    IOV_SIZE,
    MAX_PER_WAKEUP,
    MMSG,
    MMSG_SIZE,
    NAME_STRIDE,
    RECEIVED,
    RECV_BATCH,
    SEND_BATCH,
    ReceiveBuffers,
    SendBuffers,
)
from chatd.daemon.sockaddr import SOCKADDR_LEN, SOCKADDR_SIZE, encode_sockaddr

PROG = "python -m chatd.bench.ceiling"
HOST: Final = "127.0.0.1"

MAX_DATAGRAM: Final = 4096
"""Longest datagram relayed, as relay_c's MAXDGRAM: a longer one is dropped."""
HEADROOM: Final = 16
"""Bytes before each receive slot, so that the C{m<k>: } prefix always fits in front of the message."""
QUEUE_LIMIT: Final = 16 * SEND_BATCH
"""Copies queued at most before they are sent (unless one message alone has more)."""
SOCKADDR_IN_SIZE: Final = SOCKADDR_LEN[socket.AF_INET]
_SOURCE: Final = struct.Struct("=Q")
"""sin_family, sin_port and sin_addr of a sockaddr_in as one number: what identifies a source."""
REGISTER_TIMEOUT: Final = 60.0


class Registration(NamedTuple):
    room: bytes
    token: bytes
    port: int


class Member(NamedTuple):
    source: int
    """The registered address, as L{_SOURCE} reads a received sockaddr."""
    prefix: bytes
    """C{m<index in the room>: }, what chatd puts before a legacy member's message."""
    ring: memoryview
    """The room's destinations: pointers to sockaddrs, the room's list twice in a row."""
    first: int
    """Where in C{ring} the other members start (they are the next C{copies} entries)."""
    copies: int


def parse_registration(line: bytes) -> Registration | None:
    """One C{room token udp_port} line, or None for a line relay_c would skip."""
    parts = line.split()
    if len(parts) < 3 or not parts[2].isdigit():
        return None
    room, token, port = parts[0], parts[1], int(parts[2])
    if len(room) > 255 or len(token) > 255 or not 0 < port < 65536:
        return None
    return Registration(room, token, port)


def datagram_head(room: bytes, token: bytes) -> bytes:
    """C{[room_len][token_len][room][token]}: a datagram up to its message."""
    return bytes((len(room), len(token))) + room + token


def sockaddr(port: int) -> bytes:
    return encode_sockaddr(socket.AF_INET, (HOST, port))


def build_members(registrations: Iterable[Registration]) -> tuple[dict[bytes, Member], list[object]]:
    """
    The members by their datagram head (room and token: one look-up makes
    relay_c's two checks), and the ctypes buffers their rings point into,
    which must be kept alive. Rooms keep the order of registration.
    """
    rooms: dict[bytes, list[Registration]] = {}
    for registration in registrations:
        rooms.setdefault(registration.room, []).append(registration)
    members: dict[bytes, Member] = {}
    buffers: list[object] = []
    for registered in rooms.values():
        count = len(registered)
        names = ctypes.create_string_buffer(b"".join(sockaddr(r.port) for r in registered), count * SOCKADDR_IN_SIZE)
        base = ctypes.addressof(names)
        pointers = (ctypes.c_void_p * (2 * count))(*(base + (i % count) * SOCKADDR_IN_SIZE for i in range(2 * count)))
        buffers += [names, pointers]
        ring = memoryview(pointers).cast("B").cast("P")
        for index, r in enumerate(registered):
            prefix = b"m%d: " % index
            assert len(prefix) <= HEADROOM
            (source,) = _SOURCE.unpack_from(sockaddr(r.port))
            members[datagram_head(r.room, r.token)] = Member(source, prefix, ring, index + 1, count - 1)
    return members, buffers


def register(listener: socket.socket, timeout: float) -> list[Registration]:
    """Accept one control connection, read registrations until C{GO} (or its end), answer C{OK <n>}."""
    listener.settimeout(timeout)
    connection, _peer = listener.accept()
    with connection:
        connection.settimeout(timeout)
        registrations: list[Registration] = []
        with connection.makefile("rwb") as stream:
            for line in stream:
                if line.startswith(b"GO"):
                    break
                registration = parse_registration(line)
                if registration is not None:
                    registrations.append(registration)
            stream.write(b"OK %d\n" % len(registrations))
            stream.flush()
    return registrations


@implementer(IReadDescriptor)
class CeilingRelay:
    """The relay on a bound, non-blocking UDP socket, for a reactor's addReader."""

    def __init__(self, sock: socket.socket, registrations: Sequence[Registration]) -> None:
        if MMSG is None:
            raise RuntimeError("recvmmsg/sendmmsg are not available here (Linux only)")
        self._recvmmsg, self._sendmmsg = MMSG
        self._socket = sock
        self._fd = sock.fileno()
        self.members, self._buffers = build_members(registrations)
        # Receiving: RECV_BATCH slots, each headroom + datagram, and their source addresses.
        self._received = ReceiveBuffers(MAX_DATAGRAM + 1, HEADROOM)
        # Sending: a queue that holds a whole received batch's copies, up to QUEUE_LIMIT.
        fanout = max((member.copies for member in self.members.values()), default=0)
        self.capacity = max(1, fanout, min(RECV_BATCH * fanout, QUEUE_LIMIT))
        self._queue = SendBuffers(self.capacity, SOCKADDR_IN_SIZE)
        self._siov_view = self._queue.iovs
        self._snames = self._queue.names

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - the interface's name
        return "ceiling"

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - the interface's name
        pass

    def doRead(self) -> None:  # noqa: N802 - the interface's name
        recvmmsg, received = self._recvmmsg, self._received
        meta, names, rview, rbase, slot = received.meta, received.names, received.view, received.base, received.slot
        members, snames, siov, capacity = self.members, self._snames, self._siov_view, self.capacity
        budget = MAX_PER_WAKEUP
        while budget > 0:
            count = received.receive(recvmmsg, self._fd, RECV_BATCH)
            if count < 0:
                if ctypes.get_errno() == errno.EINTR:
                    continue
                return  # EAGAIN: drained
            queued = 0
            for i in range(count):
                _namelen, length = RECEIVED.unpack_from(meta, i * MMSG_SIZE)
                start = i * slot + HEADROOM
                if not 2 <= length <= MAX_DATAGRAM:
                    continue
                head = 2 + rview[start] + rview[start + 1]
                if head > length:
                    continue
                member = members.get(rview[start : start + head].tobytes())
                if member is None:
                    continue
                source, prefix, ring, first, copies = member
                if _SOURCE.unpack_from(names, i * SOCKADDR_SIZE)[0] != source or not copies:
                    continue
                # The prefix goes just before the message, over the head: "m<k>: <message>" without a copy.
                at = start + head - len(prefix)
                rview[at : start + head] = prefix
                if queued + copies > capacity:
                    self._send(queued)
                    queued = 0
                end = queued + copies
                snames[queued * NAME_STRIDE : end * NAME_STRIDE : NAME_STRIDE] = ring[first : first + copies]
                siov[queued * IOV_SIZE : end * IOV_SIZE] = IOV.pack(rbase + at, start + length - at) * copies
                queued = end
            if queued:
                self._send(queued)
            if count < RECV_BATCH:
                return
            budget -= count

    def _send(self, count: int) -> None:
        """Send the first C{count} queued copies, SEND_BATCH per sendmmsg call at most."""
        base = self._queue.address
        done = 0
        while done < count:
            sent = self._sendmmsg(self._fd, base + done * MMSG_SIZE, min(count - done, SEND_BATCH), 0)
            if sent > 0:
                done += sent
            elif ctypes.get_errno() not in (errno.EINTR, errno.EAGAIN):
                done += 1  # This copy was refused: skip it, as relay_c does.


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_relay(udp_port: int, ctl_port: int, rcvbuf: int, register_timeout: float) -> int:
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.main import installReactor

    reactor = EPollReactor()
    installReactor(reactor)
    # Until the reactor runs (and handles them itself), SIGTERM and SIGINT end the registration cleanly.
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener,
    ):
        try:
            if rcvbuf:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            udp.bind((HOST, udp_port))
            udp.setblocking(False)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, ctl_port))
            listener.listen(4)
        except OSError as error:
            print(f"{PROG} relay: cannot listen: {error}", file=sys.stderr)
            return 2
        try:
            registrations = register(listener, register_timeout)
        except (TimeoutError, OSError) as error:
            print(f"{PROG} relay: registration failed: {error}", file=sys.stderr)
            return 2
        listener.close()
        reactor.addReader(CeilingRelay(udp, registrations))
        reactor.run()
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A minimal Python relay (the interpreter's ceiling), and its comparison with the C relay.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    relay = commands.add_parser("relay", help="run the minimal relay (relay_c's control protocol)")
    relay.add_argument("--udp-port", type=int, required=True, help="UDP port on 127.0.0.1 to relay on")
    relay.add_argument("--ctl-port", type=int, required=True, help="TCP control port on 127.0.0.1")
    relay.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF of the UDP socket (default: the system's)")
    relay.add_argument(
        "--register-timeout",
        type=float,
        default=REGISTER_TIMEOUT,
        help=f"seconds to wait for the control connection and for each of its lines ({REGISTER_TIMEOUT:g})",
    )
    runs = commands.add_parser("compare", help="relayload against relay_c and against this relay, side by side")
    ceiling_compare.add_arguments(runs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    arguments = parser.parse_args(argv)
    if arguments.command == "relay":
        return run_relay(arguments.udp_port, arguments.ctl_port, arguments.rcvbuf, arguments.register_timeout)
    return ceiling_compare.run_compare(parser, arguments)


if __name__ == "__main__":
    sys.exit(main())
