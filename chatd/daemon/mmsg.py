"""
recvmmsg and sendmmsg through ctypes: the system-call layer of chatd's
batching UDP port (L{chatd.daemon.fastudp}) and of the benchmark's ceiling
relay (L{chatd.bench.ceiling}).

Linux's C{struct mmsghdr} array is laid out here once (L{MMsgHdr},
L{IOVec}), with the offsets and C{struct} formats that let Python read and
write it through memoryviews with no ctypes call per datagram:

  - L{ReceiveBuffers}: L{RECV_BATCH} receive slots, their source sockaddrs
    and the mmsghdrs pointing at them, for one recvmmsg call;
  - L{SendBuffers}: a queue of mmsghdrs whose destinations (msg_name) and
    payloads (one iovec each) are pointers stored by the caller, for
    sendmmsg; every destination of one socket has its family's length.

L{MMSG} holds the two functions, or None where there are none (not Linux):
L{HAVE_MMSG} says which.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
import sys
from typing import Any, Final, NamedTuple

from chatd.daemon.sockaddr import SOCKADDR_SIZE

RECV_BATCH: Final = 64
"""Datagrams per recvmmsg call."""
SEND_BATCH: Final = 1024
"""Datagrams per sendmmsg call at most (the kernel's UIO_MAXIOV)."""
MAX_PER_WAKEUP: Final = 256
"""Datagrams read per reactor wake-up at most: past that, the reactor polls TCP before reading on."""
MAX_UDP_PAYLOAD: Final = 65507
"""The longest UDP payload (over IPv4): a longer datagram is a MessageLengthError, as on the stock port."""


class IOVec(ctypes.Structure):
    """C{struct iovec}."""

    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class MsgHdr(ctypes.Structure):
    """C{struct msghdr}."""

    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class MMsgHdr(ctypes.Structure):
    """C{struct mmsghdr}: one datagram of a recvmmsg or sendmmsg call."""

    _fields_ = (("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint))


MMSG_SIZE: Final = ctypes.sizeof(MMsgHdr)
"""Bytes of one mmsghdr: datagram i's is at i * MMSG_SIZE."""
IOV_SIZE: Final = ctypes.sizeof(IOVec)
"""Bytes of one iovec."""
_NAMELEN_AT: Final = MsgHdr.msg_namelen.offset
_LEN_AT: Final = MMsgHdr.msg_len.offset
RECEIVED: Final = struct.Struct(f"={_NAMELEN_AT}xI{_LEN_AT - _NAMELEN_AT - 4}xI")
"""msg_namelen and msg_len of one mmsghdr: what the kernel wrote for a received datagram."""
IOV: Final = struct.Struct("@PN")
"""One iovec: base and length."""
_POINTER_SIZE: Final = ctypes.sizeof(ctypes.c_void_p)
NAME_STRIDE: Final = MMSG_SIZE // _POINTER_SIZE
"""mmsghdrs counted in pointers: msg_name, the first field, of consecutive entries is this far apart."""
assert MMSG_SIZE % _POINTER_SIZE == 0


class MMsgCalls(NamedTuple):
    """libc's recvmmsg and sendmmsg, as ctypes functions that set errno (see ctypes.get_errno)."""

    recvmmsg: Any
    sendmmsg: Any


def load_mmsg() -> MMsgCalls | None:
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
    return MMsgCalls(recvmmsg, sendmmsg)


MMSG: Final = load_mmsg()
"""recvmmsg and sendmmsg, or None where the system has none."""
HAVE_MMSG: Final = MMSG is not None
"""recvmmsg and sendmmsg are usable here: batched I/O is the default."""


class ReceiveBuffers:
    """
    Everything recvmmsg fills, allocated once and reached through
    memoryviews: L{RECV_BATCH} slots of C{headroom + size} bytes, each
    datagram read C{headroom} bytes into its slot (room to write something
    in front of it without a copy), the source addresses, L{SOCKADDR_SIZE}
    bytes each, and the mmsghdrs pointing at them (C{meta}: msg_namelen and
    msg_len of datagram i are L{RECEIVED} at i * L{MMSG_SIZE}).
    """

    def __init__(self, size: int, headroom: int = 0) -> None:
        self.slot = headroom + size
        self._data = ctypes.create_string_buffer(RECV_BATCH * self.slot)
        self.base = ctypes.addressof(self._data)
        self.view = memoryview(self._data).cast("B")
        self._names = ctypes.create_string_buffer(RECV_BATCH * SOCKADDR_SIZE)
        self.names = memoryview(self._names).cast("B")
        self._iov = (IOVec * RECV_BATCH)()
        self._msgs = (MMsgHdr * RECV_BATCH)()
        for i in range(RECV_BATCH):
            self._iov[i].iov_base = self.base + i * self.slot + headroom
            self._iov[i].iov_len = size
            header = self._msgs[i].msg_hdr
            header.msg_name = ctypes.addressof(self._names) + i * SOCKADDR_SIZE
            header.msg_namelen = SOCKADDR_SIZE
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


class SendBuffers:
    """
    C{capacity} mmsghdrs for sendmmsg, each with one iovec, allocated once.
    Every destination has the same length (C{namelen}: the socket family's
    sockaddr), set once, so that queueing a datagram is two stores: its
    destination's address in C{names} at i * L{NAME_STRIDE} (a pointer
    view: a room's worth is one strided slice store) and its iovec,
    L{IOV} at i * L{IOV_SIZE} in C{iovs}. C{address} is the first
    mmsghdr's, for sendmmsg.
    """

    def __init__(self, capacity: int, namelen: int) -> None:
        self.capacity = capacity
        self._iov = (IOVec * capacity)()
        self.iovs = memoryview(self._iov).cast("B")
        self._msgs = (MMsgHdr * capacity)()
        for i in range(capacity):
            header = self._msgs[i].msg_hdr
            header.msg_iov = ctypes.addressof(self._iov[i])
            header.msg_iovlen = 1
            header.msg_namelen = namelen
        self.names = memoryview(self._msgs).cast("B").cast("P")
        self.address = ctypes.addressof(self._msgs)

    def length(self, index: int) -> int:
        """The payload length queued at C{index}."""
        length: int = IOV.unpack_from(self.iovs, index * IOV_SIZE)[1]
        return length
