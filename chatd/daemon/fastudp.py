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
    L{Fanout} prepared for the room (C{port.fanout(addresses)}): the
    destinations are encoded once, when the room changes, and queueing N
    copies is two slice stores, with no Python work per copy;
  - stops at EAGAIN, or after L{MAX_PER_WAKEUP} datagrams so that TCP
    connections get their turn.

Elsewhere (or with C{batch=False}) it reads with a plain recvfrom loop and
sends each write at once with sendto. A write outside C{doRead} (a notice
caused by a TCP event, say) is always sent at once: nothing would flush it.
L{WriteEachFanout} gives any other transport (Twisted's stock port) the
same fan-out interface, a write per address.

Send errors behave as the stock port's where they can: an address that is
not a numeric address of the socket's family raises InvalidAddressError and
an oversized datagram MessageLengthError, at the write. A datagram the kernel
refuses at the batch's sendmmsg can no longer be reported to its writer; it
is skipped (the rest of the batch still goes), counted in L{send_errors},
and reported to a protocol that has C{sends_refused(count, size)} (the relay
counts a copy as sent when it queues it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import IListeningPort, IReactorFDSet, IReadDescriptor
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

Address = tuple[Any, ...]
"""(host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6: what socket.recvfrom gives."""

RECV_BATCH: Final = 64
"""Datagrams per recvmmsg call."""
SEND_BATCH: Final = 1024
"""Datagrams per sendmmsg call at most (the kernel's UIO_MAXIOV)."""
MAX_PER_WAKEUP: Final = 256
"""Datagrams read per doRead at most: past that, the reactor polls TCP before reading on."""
RCVBUF: Final = 4 * 1024 * 1024
"""SO_RCVBUF asked for: a burst of some thousands of small datagrams waits instead of being dropped."""
ADDRESS_CACHE_SIZE: Final = 4096
"""Source and destination addresses remembered, each way; the cache starts over when full."""
SEND_ARENA: Final = 512 * 1024
"""Bytes of queued payloads per flush; a larger single payload is sent on its own."""

_SOCKADDR_SIZE: Final = 32
"""Room for a sockaddr_in6 (28 bytes), rounded up: the largest source address a port sees."""
_BLOCKED: Final = (errno.EAGAIN, errno.EWOULDBLOCK)
# ICMP errors from earlier sends surface on later calls of an unconnected
# socket on some systems: they say nothing about the datagram at hand.
_IGNORED_RECV_ERRORS: Final = frozenset((errno.ECONNREFUSED, errno.ECONNRESET, errno.ENETUNREACH, errno.EHOSTUNREACH))


class _IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


_MMSG_SIZE: Final = ctypes.sizeof(_MMsgHdr)
_IOV_SIZE: Final = ctypes.sizeof(_IOVec)
_NAMELEN_AT: Final = _MsgHdr.msg_namelen.offset
_LEN_AT: Final = _MMsgHdr.msg_len.offset
_RECEIVED: Final = struct.Struct(f"={_NAMELEN_AT}xI{_LEN_AT - _NAMELEN_AT - 4}xI")
"""msg_namelen and msg_len of one mmsghdr: what the kernel wrote for a received datagram."""
_IOV: Final = struct.Struct("@PN")
"""One iovec: base and length."""
_FAMILY: Final = struct.Struct("=H")
"""sa_family_t in host order, as Linux lays out sockaddr_in and sockaddr_in6."""
_POINTER_SIZE: Final = ctypes.sizeof(ctypes.c_void_p)
_NAME_STRIDE: Final = _MMSG_SIZE // _POINTER_SIZE
"""mmsghdrs counted in pointers: msg_name, the first field, of consecutive entries is this far apart."""
assert _MMSG_SIZE % _POINTER_SIZE == 0
_SOCKADDR_LEN: Final = {socket.AF_INET: 16, socket.AF_INET6: 28}
"""sizeof(sockaddr_in) and sizeof(sockaddr_in6): what encode_sockaddr gives for each family."""


def _load_mmsg() -> tuple[Any, Any] | None:
    """libc's recvmmsg and sendmmsg through ctypes, or None where there are none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_MMSG: Final = _load_mmsg()
HAVE_MMSG: Final = _MMSG is not None
"""recvmmsg and sendmmsg are usable here: batched I/O is the default."""


def decode_sockaddr(raw: bytes) -> Address:
    """The address tuple socket.recvfrom would give for a raw Linux sockaddr_in or sockaddr_in6."""
    (family,) = _FAMILY.unpack_from(raw)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6:
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        scope = int.from_bytes(raw[24:28], sys.byteorder)
        if scope:
            # As CPython's getnameinfo(NI_NUMERICHOST) spells a scoped address.
            try:
                host += "%" + socket.if_indextoname(scope)
            except OSError:
                host += f"%{scope}"
        return (host, port, int.from_bytes(raw[4:8], "big"), scope)
    raise ValueError(f"address family {family} is not IPv4 or IPv6")


def encode_sockaddr(family: int, addr: Address) -> bytes:
    """
    The raw sockaddr for C{addr} on a socket of C{family}. Raises
    InvalidAddressError, as the stock port's write does, for anything but a
    numeric address of that family and a port from 0 to 65535: a host name
    would mean a blocking DNS look-up per datagram.
    """
    try:
        host, port = addr[0], addr[1]
        if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError
        if family == socket.AF_INET:
            return _FAMILY.pack(family) + port.to_bytes(2, "big") + socket.inet_pton(family, host) + bytes(8)
        name, _, scope_name = host.partition("%")
        scope = addr[3] if len(addr) > 3 else 0
        if scope_name and not scope:
            scope = int(scope_name) if scope_name.isdigit() else socket.if_nametoindex(scope_name)
        flowinfo = addr[2] if len(addr) > 2 else 0
        return (
            _FAMILY.pack(family)
            + port.to_bytes(2, "big")
            + flowinfo.to_bytes(4, "big")
            + socket.inet_pton(family, name)
            + scope.to_bytes(4, sys.byteorder)
        )
    except (ValueError, TypeError, OSError, OverflowError, IndexError):
        raise InvalidAddressError(addr, "not a numeric address of the port's family") from None


class ReceiveBuffers:
    """
    Everything recvmmsg fills, allocated once and reached through
    memoryviews: L{RECV_BATCH} slots of C{headroom + size} bytes, each
    datagram read C{headroom} bytes into its slot (room to write something
    in front of it without a copy), the source addresses, L{_SOCKADDR_SIZE}
    bytes each, and the mmsghdrs pointing at them (C{meta}: msg_namelen and
    msg_len of datagram i are L{_RECEIVED} at i * L{_MMSG_SIZE}).
    """

    def __init__(self, size: int, headroom: int = 0) -> None:
        self.slot = headroom + size
        self._data = ctypes.create_string_buffer(RECV_BATCH * self.slot)
        self.base = ctypes.addressof(self._data)
        self.view = memoryview(self._data).cast("B")
        self._names = ctypes.create_string_buffer(RECV_BATCH * _SOCKADDR_SIZE)
        self.names = memoryview(self._names).cast("B")
        self._iov = (_IOVec * RECV_BATCH)()
        self._msgs = (_MMsgHdr * RECV_BATCH)()
        for i in range(RECV_BATCH):
            self._iov[i].iov_base = self.base + i * self.slot + headroom
            self._iov[i].iov_len = size
            header = self._msgs[i].msg_hdr
            header.msg_name = ctypes.addressof(self._names) + i * _SOCKADDR_SIZE
            header.msg_namelen = _SOCKADDR_SIZE
            header.msg_iov = ctypes.addressof(self._iov[i])
            header.msg_iovlen = 1
        # The kernel overwrites msg_namelen: restored from this copy before each call.
        self._template = bytes(self._msgs)
        self._address = ctypes.addressof(self._msgs)
        self.meta = memoryview(self._msgs).cast("B")

    def receive(self, recvmmsg: Any, fd: int, wanted: int) -> int:
        """One non-blocking recvmmsg for up to C{wanted} datagrams: how many came, or -1 (see ctypes.get_errno)."""
        ctypes.memmove(self._msgs, self._template, len(self._template))
        result: int = recvmmsg(fd, self._address, wanted, socket.MSG_DONTWAIT, None)
        return result


@implementer(IReadDescriptor, IListeningPort)
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
        self._pinned: list[Fanout] = []
        """Fan-outs that queued copies point into: kept alive until the queue is sent."""
        if self.batched:
            self._setup_buffers()

    def _setup_buffers(self) -> None:
        # Everything the system calls read or write is allocated here, once,
        # and reached afterwards through memoryviews and struct.pack_into.
        self._received = ReceiveBuffers(self._max_packet_size)
        self._sarena = ctypes.create_string_buffer(SEND_ARENA)
        self._sarena_view = memoryview(self._sarena).cast("B")
        self._sarena_base = ctypes.addressof(self._sarena)
        self._siov = (_IOVec * SEND_BATCH)()
        self._siov_view = memoryview(self._siov).cast("B")
        self._smsgs = (_MMsgHdr * SEND_BATCH)()
        self._smsgs_view = memoryview(self._smsgs).cast("B")
        # Every destination of this port is a sockaddr of its family, of one
        # length: set once, so that a fan-out only stores the pointers.
        for i in range(SEND_BATCH):
            header = self._smsgs[i].msg_hdr
            header.msg_iov = ctypes.addressof(self._siov[i])
            header.msg_iovlen = 1
            header.msg_namelen = _SOCKADDR_LEN[self.family]
        self._sname_view = self._smsgs_view.cast("P")

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
        assert _MMSG is not None
        recvmmsg = _MMSG[0]
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
                    namelen, length = _RECEIVED.unpack_from(meta, i * _MMSG_SIZE)
                    start = i * _SOCKADDR_SIZE
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
        if size > 65507:
            raise MessageLengthError("message too long")
        if self._queued == SEND_BATCH:
            self._flush()
        base = self._payload_base(data)
        index = self._queued
        self._sname_view[index * _NAME_STRIDE] = destination[0]
        _IOV.pack_into(self._siov_view, index * _IOV_SIZE, base, size)
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

    def fanout(self, addresses: Sequence[Address]) -> Fanout:
        """
        Prepare C{addresses} for repeated sends of one payload to all of
        them but one (L{Fanout.send}): what a relay does for every message
        of a room whose membership changes rarely.
        """
        return Fanout(self, addresses)

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
        if not count or self._socket is None or _MMSG is None:
            self._pinned.clear()
            return
        sendmmsg = _MMSG[1]
        base = ctypes.addressof(self._smsgs)
        first = refused = refused_bytes = 0
        while first < count:
            sent = sendmmsg(self._fd, base + first * _MMSG_SIZE, count - first, 0)
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
            refused_bytes += _IOV.unpack_from(self._siov_view, first * _IOV_SIZE)[1]
            first += 1
        # Only now may the fan-outs the queue pointed into be freed.
        self._pinned.clear()
        if refused:
            self.send_errors += refused
            # The writer counted these as sent when it queued them: tell it.
            report = getattr(self.protocol, "sends_refused", None)
            if report is not None:
                report(refused, refused_bytes)


class Fanout:
    """
    Destinations prepared once for sending one payload to all of them but
    one, again and again, as a relay does for every message of a room.

    Each address is encoded to its sockaddr once, into one buffer, and the
    pointers to them are laid out twice in a row (the ring): "everyone but
    the i-th" is then the contiguous run of n - 1 pointers from i + 1, which
    the port copies into a batch with one strided store, so a copy costs no
    Python work at all. An address that is not a numeric address of the
    port's family is left out and counted as failed at every send, as a
    write to it would have failed.
    """

    def __init__(self, port: BatchedUDPPort, addresses: Sequence[Address]) -> None:
        self._port = port
        self.addresses = tuple(addresses)
        encoded: list[bytes] = []
        self._position: list[int] = []
        """Where each of C{addresses} is among the valid ones; -1 for an invalid one."""
        for addr in self.addresses:
            try:
                raw = encode_sockaddr(port.family, addr)
            except InvalidAddressError:
                self._position.append(-1)
                continue
            self._position.append(len(encoded))
            encoded.append(raw)
        self.invalid = len(self.addresses) - len(encoded)
        """Addresses that cannot be sent to: each send fails for them."""
        self.size = len(encoded)
        length = _SOCKADDR_LEN[port.family]
        self._names = ctypes.create_string_buffer(b"".join(encoded), max(1, len(encoded) * length))
        base = ctypes.addressof(self._names)
        pointers = (ctypes.c_void_p * (2 * self.size))(*(base + (i % self.size) * length for i in range(2 * self.size)))
        self._pointers = pointers
        self.ring = memoryview(pointers).cast("B").cast("P")

    def send(self, data: bytes, skip: int = -1) -> int:
        """
        Send C{data} to every address but C{addresses[skip]} (to all with -1)
        and return how many failed. A failure is counted, never raised, and
        costs the other addresses nothing. Within C{doRead} the copies join
        the batch; outside it they go at once, in one sendmmsg.
        """
        # Runs for every relayed message: the port's queue is filled from
        # here, in one Python call (this class is the port's own helper).
        port = self._port
        size = len(data)
        if not port.batched or size > 65507:
            return write_each(port.write, data, self.addresses, skip)
        position = self._position[skip] if skip >= 0 else -1
        if position >= 0:
            ring_start, count, failed = position + 1, self.size - 1, self.invalid
        else:
            ring_start, count, failed = 0, self.size, self.invalid - (skip >= 0)
        ring, names, iovs = self.ring, port._sname_view, port._siov_view
        while count:
            if port._queued == SEND_BATCH:
                port._flush()
            iov = _IOV.pack(port._payload_base(data), size)
            # Queued copies point into this fan-out's address buffer: the
            # port keeps it until they are sent, even if the relay drops it.
            port._pinned.append(self)
            index = port._queued
            chunk = min(count, SEND_BATCH - index)
            # Every copy's msg_name is one strided store from the ring, and
            # every copy's iovec the same pair: no Python work per copy.
            names[index * _NAME_STRIDE : (index + chunk) * _NAME_STRIDE : _NAME_STRIDE] = ring[
                ring_start : ring_start + chunk
            ]
            iovs[index * _IOV_SIZE : (index + chunk) * _IOV_SIZE] = iov * chunk
            port._queued = index + chunk
            ring_start += chunk
            count -= chunk
        if not port._in_read:
            # Nothing else would send them: a write outside doRead goes at once.
            port._flush()
        return failed


class WriteEachFanout:
    """L{Fanout}'s interface on any transport: a write per address (Twisted's stock UDP port)."""

    def __init__(self, write: Callable[[bytes, Address], None], addresses: Sequence[Address]) -> None:
        self._write = write
        self.addresses = tuple(addresses)

    def send(self, data: bytes, skip: int = -1) -> int:
        return write_each(self._write, data, self.addresses, skip)


def write_each(write: Callable[[bytes, Address], None], data: bytes, addresses: Sequence[Address], skip: int) -> int:
    """Write C{data} to every address but C{addresses[skip]}; return how many writes failed (never raise)."""
    failed = 0
    for i, addr in enumerate(addresses):
        if i == skip:
            continue
        try:
            write(data, addr)
        except (OSError, MessageLengthError, InvalidAddressError):
            failed += 1
    return failed
