"""
The address tuples of the UDP side, and their raw Linux sockaddr form.

L{Address} is what C{socket.recvfrom} gives and C{sendto} takes: C{(host,
port)} for IPv4, C{(host, port, flowinfo, scope_id)} for IPv6; Twisted's
ports hand the same tuples to C{DatagramProtocol.datagramReceived}. The
codec turns them into the C{sockaddr_in} and C{sockaddr_in6} bytes that
recvmmsg fills and sendmmsg reads (L{chatd.daemon.mmsg}), without a system
call or a DNS look-up.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any, Final

from twisted.internet.error import InvalidAddressError

Address = tuple[Any, ...]
"""(host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6: what socket.recvfrom gives."""

SOCKADDR_SIZE: Final = 32
"""Room for a sockaddr_in6 (28 bytes), rounded up: the largest source address a port sees."""
SOCKADDR_LEN: Final = {socket.AF_INET: 16, socket.AF_INET6: 28}
"""sizeof(sockaddr_in) and sizeof(sockaddr_in6): what encode_sockaddr gives for each family."""
_FAMILY: Final = struct.Struct("=H")
"""sa_family_t in host order, as Linux lays out sockaddr_in and sockaddr_in6."""


def decode_sockaddr(raw: bytes) -> Address:
    """
    The address tuple socket.recvfrom would give for a raw Linux sockaddr_in
    or sockaddr_in6. Raises ValueError (or struct.error, for fewer than two
    bytes) for anything else.
    """
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
