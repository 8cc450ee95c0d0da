"""
A UDP port of chatd's own for the relay: drains the socket on every reactor
wake-up and, on Linux, moves datagrams in batches with recvmmsg/sendmmsg.

Twisted's stock UDP port costs, per datagram, a recvfrom and, per recipient,
a Port.write that re-checks the address before its sendto. A relay that fans
one datagram out to a room spends most of its time there. This port is an
IReadDescriptor added to the reactor with addReader, so the rest of chatd
does not change: it calls C{protocol.datagramReceived(data, addr)} with the
same C{addr} tuples as the stock port (C{(host, port)} for IPv4, C{(host,
port, flowinfo, scope_id)} for IPv6), and the protocol writes back through
C{transport.write(data, addr)}.

On Linux with recvmmsg, one C{doRead}:

  - receives up to L{RECV_BATCH} datagrams per system call into buffers
    allocated once, of C{max_packet_size} bytes each (a longer datagram is
    cut to that size, so a limit + 1 buffer shows it as oversized, as the
    stock port does);
  - decodes each source address through a small bounded cache from the raw
    sockaddr bytes to the tuple, so a member that keeps sending is decoded once;
  - queues what the protocol writes meanwhile (one copy per distinct payload:
    a fan-out of the same bytes is copied once) and sends the queue with one
    sendmmsg per L{SEND_BATCH} datagrams at the end of each received batch;
  - takes a room's worth of copies of one payload in one call through a
    L{chatd.daemon.fanout.Fanout} prepared for the room
    (C{port.fanout(addresses)}, then L{BatchedUDPPort.send_copies}): the
    destinations are encoded once, when the room changes, and queueing N
    copies is two slice stores, with no Python work per copy;
  - stops at EAGAIN, or after L{MAX_PER_WAKEUP} datagrams so that TCP
    connections get their turn.

Elsewhere (or with C{batch=False}) it reads with a plain recvfrom loop and
sends each write at once with sendto. A write outside C{doRead} (a notice
caused by a TCP event, say) is always sent at once: nothing would flush it.

The port provides L{IFanoutTransport}, the relay's view of its transport;
Twisted's stock port is adapted to it by L{chatd.daemon.fanout.WriteEachTransport}.
The system calls and their buffers are L{chatd.daemon.mmsg}'s, the sockaddr
codec L{chatd.daemon.sockaddr}'s.

Send errors behave as the stock port's where they can: an address that is
not a numeric address of the socket's family raises InvalidAddressError and
an oversized datagram MessageLengthError, at the write. A datagram the kernel
refuses at the batch's sendmmsg can no longer be reported to its writer; it
is skipped (the rest of the batch still goes), counted in L{send_errors},
and reported to the listener registered with L{report_refused_sends} (the
relay's counters count a copy as sent when it is queued).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Final

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, MessageLengthError
from twisted.internet.interfaces import IListeningPort, IReactorFDSet, IReadDescriptor
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.daemon.fanout import Fanout, WriteEachFanout
from chatd.daemon.interfaces import IFanoutTransport
from chatd.daemon.mmsg import (
    HAVE_MMSG,
    IOV,
    IOV_SIZE,
    MAX_PER_WAKEUP,
    MAX_UDP_PAYLOAD,
    MMSG,
    MMSG_SIZE,
    NAME_STRIDE,
    RECEIVED,
    RECV_BATCH,
    SEND_BATCH,
    ReceiveBuffers,
    SendBuffers,
)
from chatd.daemon.sockaddr import SOCKADDR_LEN, SOCKADDR_SIZE, Address, decode_sockaddr, encode_sockaddr

__all__ = [
    "ADDRESS_CACHE_SIZE",
    "HAVE_MMSG",
    "MAX_PER_WAKEUP",
    "RCVBUF",
    "RECV_BATCH",
    "SEND_ARENA",
    "SEND_BATCH",
    "BatchedUDPPort",
]

RCVBUF: Final = 4 * 1024 * 1024
"""SO_RCVBUF asked for: a burst of some thousands of small datagrams waits instead of being dropped."""
ADDRESS_CACHE_SIZE: Final = 4096
"""Source and destination addresses remembered, each way; the cache starts over when full."""
SEND_ARENA: Final = 512 * 1024
"""Bytes of queued payloads per flush; a larger single payload is sent on its own."""

_BLOCKED: Final = (errno.EAGAIN, errno.EWOULDBLOCK)
# ICMP errors from earlier sends surface on later calls of an unconnected
# socket on some systems: they say nothing about the datagram at hand.
_IGNORED_RECV_ERRORS: Final = frozenset((errno.ECONNREFUSED, errno.ECONNRESET, errno.ENETUNREACH, errno.EHOSTUNREACH))


@implementer(IReadDescriptor, IListeningPort, IFanoutTransport)
class BatchedUDPPort:
    """
    A listening UDP port driving a DatagramProtocol, drained per wake-up and
    batched with recvmmsg/sendmmsg where the system has them.
    """

    _log = Logger()

    def __init__(
        self,
        port: int,
        protocol: AbstractDatagramProtocol,
        interface: str,
        reactor: IReactorFDSet,
        max_packet_size: int,
        batch: bool | None = None,
        rcvbuf: int = RCVBUF,
        max_per_wakeup: int = MAX_PER_WAKEUP,
    ) -> None:
        """
        C{batch}: use recvmmsg/sendmmsg (True), a plain recvfrom loop and
        sendto (False), or whichever the system has (None). True where they
        are missing is a ValueError.
        """
        if batch and not HAVE_MMSG:
            raise ValueError("recvmmsg/sendmmsg are not available here")
        self.batched = HAVE_MMSG if batch is None else batch
        self._port = port
        self.protocol = protocol
        self._interface = interface
        self._reactor = reactor
        self._max_packet_size = max_packet_size
        self._rcvbuf = rcvbuf
        self._max_per_wakeup = max_per_wakeup
        self.family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        self._socket: socket.socket | None = None
        self._log_prefix = f"{type(protocol).__name__} (UDP)"
        self._fd = -1
        self.rcvbuf_granted = 0
        """SO_RCVBUF as the kernel set it (Linux reports twice what it grants for its bookkeeping)."""
        self.send_errors = 0
        """Datagrams queued in a batch that the kernel refused at sendmmsg."""
        self.protocol_errors = 0
        """Exceptions the protocol raised from datagramReceived (logged, never let out of doRead)."""
        self._sources: dict[bytes, Address] = {}
        self._destinations: dict[Address, tuple[int, ctypes.Array[ctypes.c_char]]] = {}
        """Each destination's sockaddr, encoded once: its address in memory, and the buffer that holds it."""
        self._in_read = False
        self._queued = 0
        self._arena_used = 0
        self._last_data: bytes | None = None
        self._last_base = 0
        self._pinned: list[object] = []
        """Fan-outs that queued copies point into: kept alive until the queue is sent."""
        self._refused_listener: Callable[[int, int], None] | None = None
        """Told of the datagrams the kernel refused at a batch's sendmmsg (L{report_refused_sends})."""
        if self.batched:
            self._setup_buffers()

    def _setup_buffers(self) -> None:
        # Everything the system calls read or write is allocated here, once,
        # and reached afterwards through memoryviews and struct.pack_into.
        self._received = ReceiveBuffers(self._max_packet_size)
        self._sarena = ctypes.create_string_buffer(SEND_ARENA)
        self._sarena_view = memoryview(self._sarena).cast("B")
        self._sarena_base = ctypes.addressof(self._sarena)
        # Every destination of this port is a sockaddr of its family, of one
        # length: set once, so that a fan-out only stores the pointers.
        self._sent = SendBuffers(SEND_BATCH, SOCKADDR_LEN[self.family])
        self._sname_view = self._sent.names
        self._siov_view = self._sent.iovs

    # -- IListeningPort -----------------------------------------------------

    def startListening(self) -> None:  # noqa: N802 - the interface\'s name
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.bind((self._interface, self._port))
        except OSError as error:
            sock.close()
            raise CannotListenError(self._interface, self._port, error) from error
        sock.setblocking(False)
        # Linux caps the size at net.core.rmem_max; some systems refuse more than their maximum instead.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
        self.rcvbuf_granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._socket = sock
        self._fd = sock.fileno()
        self._log.info(
            "UDP port {udp_port}: {io} I/O, SO_RCVBUF {granted} bytes (asked for {requested})",
            event="udp_port",
            udp_port=self.getHost().port,
            io="recvmmsg/sendmmsg" if self.batched else "recvfrom/sendto",
            granted=self.rcvbuf_granted,
            requested=self._rcvbuf,
        )
        self.protocol.makeConnection(self)  # type: ignore[arg-type]
        self._reactor.addReader(self)

    def stopListening(self) -> Deferred[None]:  # noqa: N802 - the interface\'s name
        """Stop at once: the socket is closed, and the port free again, when this returns."""
        self.connectionLost(None)
        return succeed(None)

    def getHost(self) -> IPv4Address | IPv6Address:  # noqa: N802 - the interface\'s name
        assert self._socket is not None, "the port is not listening"
        if self.family == socket.AF_INET6:
            host, port, flowinfo, scope = self._socket.getsockname()
            return IPv6Address("UDP", host, port, flowinfo, scope)
        host, port = self._socket.getsockname()
        return IPv4Address("UDP", host, port)

    # -- IReadDescriptor ----------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - the interface\'s name
        # Asked on every wake-up by the reactor: built once.
        return self._log_prefix

    def connectionLost(self, reason: Failure | None) -> None:  # noqa: N802 - the interface\'s name
        sock, self._socket = self._socket, None
        if sock is None:
            return
        self._flush()
        self._reactor.removeReader(self)
        self._fd = -1
        sock.close()
        self.protocol.doStop()

    def doRead(self) -> None:  # noqa: N802 - the interface\'s name
        if self.batched:
            self._read_batches()
        else:
            self._read_plain()

    def _read_batches(self) -> None:
        assert MMSG is not None
        recvmmsg = MMSG.recvmmsg
        buffers = self._received
        rview, names, meta, slot = buffers.view, buffers.names, buffers.meta, buffers.slot
        sources = self._sources
        deliver = self.protocol.datagramReceived
        budget = self._max_per_wakeup
        while budget > 0 and self._socket is not None:
            wanted = min(RECV_BATCH, budget)
            count = buffers.receive(recvmmsg, self._fd, wanted)
            if count < 0:
                error = ctypes.get_errno()
                if error == errno.EINTR or error in _IGNORED_RECV_ERRORS:
                    continue
                if error not in _BLOCKED:
                    self._log.error(
                        "recvmmsg failed: {error}", event="udp_read_error", error=errno.errorcode.get(error)
                    )
                return
            self._in_read = True
            try:
                for i in range(count):
                    namelen, length = RECEIVED.unpack_from(meta, i * MMSG_SIZE)
                    start = i * SOCKADDR_SIZE
                    raw = names[start : start + namelen].tobytes()
                    addr = sources.get(raw)
                    if addr is None:
                        addr = self._new_source(raw)
                        if addr is None:
                            continue
                    start = i * slot
                    try:
                        deliver(rview[start : start + length].tobytes(), addr)
                    except Exception:
                        self._protocol_failed(addr)
            finally:
                self._in_read = False
                self._flush()
            # A partial batch does not mean the socket is empty: the peers
            # answered while it was handled. One more call that finds nothing
            # costs less than a turn of the reactor that finds one datagram.
            budget -= count

    def _new_source(self, raw: bytes) -> Address | None:
        try:
            addr = decode_sockaddr(raw)
        except (ValueError, struct.error):
            return None
        if len(self._sources) >= ADDRESS_CACHE_SIZE:
            # Bounded against floods from many sources; starting over is
            # cheaper than keeping an order, and a live source is decoded again once.
            self._sources.clear()
        self._sources[raw] = addr
        return addr

    def _read_plain(self) -> None:
        budget = self._max_per_wakeup
        size = self._max_packet_size
        while budget > 0 and self._socket is not None:
            try:
                data, addr = self._socket.recvfrom(size)
            except OSError as error:
                if error.errno == errno.EINTR or error.errno in _IGNORED_RECV_ERRORS:
                    continue
                if error.errno not in _BLOCKED:
                    self._log.error("recvfrom failed: {error}", event="udp_read_error", error=str(error))
                return
            budget -= 1
            self._deliver(data, addr)

    def _deliver(self, data: bytes, addr: Address) -> None:
        try:
            self.protocol.datagramReceived(data, addr)
        except Exception:
            self._protocol_failed(addr)

    def _protocol_failed(self, addr: Address) -> None:
        # One bad datagram, or a bug, must not stop the port or the batch.
        self.protocol_errors += 1
        self._log.failure("the protocol failed on a datagram from {host}", host=addr[0])

    # -- the transport side -------------------------------------------------

    def write(self, data: bytes, addr: Address) -> None:
        if not (self._in_read and self.batched):
            self._send_now(data, addr)
            return
        destination = self._destinations.get(addr)
        if destination is None:
            destination = self._new_destination(addr)
        size = len(data)
        if size > MAX_UDP_PAYLOAD:
            raise MessageLengthError("message too long")
        if self._queued == SEND_BATCH:
            self._flush()
        base = self._payload_base(data)
        index = self._queued
        self._sname_view[index * NAME_STRIDE] = destination[0]
        IOV.pack_into(self._siov_view, index * IOV_SIZE, base, size)
        self._queued = index + 1

    def _payload_base(self, data: bytes) -> int:
        """
        Where C{data} lies in the send arena. A fan-out queues the same bytes
        object for every recipient: it is copied in once, and every copy
        points at it. A full arena is sent first.
        """
        if data is not self._last_data:
            size = len(data)
            used = self._arena_used
            if used + size > SEND_ARENA:
                self._flush()
                used = 0
            self._sarena_view[used : used + size] = data
            self._last_data = data
            self._last_base = self._sarena_base + used
            self._arena_used = used + size
        return self._last_base

    def fanout(self, addresses: Sequence[Address]) -> Fanout | WriteEachFanout:
        """
        Prepare C{addresses} for repeated sends of one payload to all of
        them but one (L{Fanout.send}): what a relay does for every message
        of a room whose membership changes rarely. Without batching, a
        write per address.
        """
        if not self.batched:
            return WriteEachFanout(self.write, addresses)
        return Fanout(self, addresses)

    def send_copies(self, data: bytes, ring: memoryview, start: int, count: int, owner: object) -> None:
        """
        Send C{data} to the C{count} destinations whose sockaddr pointers
        are C{ring[start : start + count]} (a pointer view, as a L{Fanout}
        holds), C{owner} holding the memory they point into: the port keeps
        it until they are sent. Within the read the copies join the batch;
        outside it they go at once. For a batching port only, and at most
        L{MAX_UDP_PAYLOAD} bytes (L{Fanout.send} sees to both).
        """
        size = len(data)
        while count:
            if self._queued == SEND_BATCH:
                self._flush()
            if data is not self._last_data:
                # Where the payload lies in the send arena: _payload_base,
                # written out because it runs for every relayed message.
                used = self._arena_used
                if used + size > SEND_ARENA:
                    self._flush()
                    used = 0
                self._sarena_view[used : used + size] = data
                self._last_data = data
                self._last_base = self._sarena_base + used
                self._arena_used = used + size
            iov = IOV.pack(self._last_base, size)
            # Queued copies point into the owner's address buffer: kept
            # until they are sent, even if the relay drops the fan-out.
            self._pinned.append(owner)
            index = self._queued
            chunk = SEND_BATCH - index
            if chunk > count:
                chunk = count
            end = index + chunk
            # Every copy's msg_name is one strided store from the ring, and
            # every copy's iovec the same pair: no Python work per copy.
            self._sname_view[index * NAME_STRIDE : end * NAME_STRIDE : NAME_STRIDE] = ring[start : start + chunk]
            self._siov_view[index * IOV_SIZE : end * IOV_SIZE] = iov * chunk
            self._queued = end
            start += chunk
            count -= chunk
        if not self._in_read:
            # Nothing else would send them: a write outside doRead goes at once.
            self._flush()

    def report_refused_sends(self, listener: Callable[[int, int], None] | None) -> None:
        """See L{IFanoutTransport.report_refused_sends}: the relay registers its counters' correction."""
        self._refused_listener = listener

    def _new_destination(self, addr: Address) -> tuple[int, ctypes.Array[ctypes.c_char]]:
        raw = encode_sockaddr(self.family, addr)
        if len(self._destinations) >= ADDRESS_CACHE_SIZE:
            # Queued datagrams point into these buffers: send them before forgetting.
            self._flush()
            self._destinations.clear()
        buffer = ctypes.create_string_buffer(raw, len(raw))
        # Its length is the family's, set in every mmsghdr once: only the pointer is stored per copy.
        destination = (ctypes.addressof(buffer), buffer)
        self._destinations[addr] = destination
        return destination

    def _send_now(self, data: bytes, addr: Address) -> None:
        """Send one datagram with sendto, with the stock port's errors."""
        if self._socket is None:
            raise OSError(errno.EBADF, "the port is closed")
        if addr not in self._destinations:
            self._new_destination(addr)  # Validates: no DNS look-up, the family's addresses only.
        while True:
            try:
                self._socket.sendto(data, addr)
                return
            except InterruptedError:
                continue
            except ConnectionRefusedError:
                # An ICMP error left by an earlier datagram: not this one's.
                return
            except OSError as error:
                if error.errno == errno.EMSGSIZE:
                    raise MessageLengthError("message too long") from error
                raise

    def _flush(self) -> None:
        count, self._queued = self._queued, 0
        self._arena_used = 0
        self._last_data = None
        if not count or self._socket is None or MMSG is None:
            self._pinned.clear()
            return
        sendmmsg = MMSG.sendmmsg
        base = self._sent.address
        first = refused = refused_bytes = 0
        while first < count:
            sent = sendmmsg(self._fd, base + first * MMSG_SIZE, count - first, 0)
            if sent > 0:
                first += sent
                continue
            error = ctypes.get_errno()
            if error == errno.EINTR:
                continue
            # The first datagram left was refused (its destination, or a
            # full buffer): skip it, as the stock port's write would have
            # failed for it alone, and send the others.
            refused += 1
            refused_bytes += self._sent.length(first)
            first += 1
        # Only now may the fan-outs the queue pointed into be freed.
        self._pinned.clear()
        if refused:
            self.send_errors += refused
            # The writer counted these as sent when it queued them: tell it.
            listener = self._refused_listener
            if listener is not None:
                listener(refused, refused_bytes)
