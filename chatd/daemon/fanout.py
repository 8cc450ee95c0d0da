"""
Fan-outs: one payload sent to a room's addresses, all but the sender's.

The relay sends through an L{IFanoutTransport}. chatd's batching port
(L{chatd.daemon.fastudp.BatchedUDPPort}) provides it, with L{Fanout}: the
room's sockaddrs encoded once, and a message's copies queued in one call of
the port's L{send_copies<chatd.daemon.fastudp.BatchedUDPPort.send_copies>}.
Any other datagram transport (Twisted's stock UDP port, a test's fake) is
adapted by L{WriteEachTransport}, whose L{WriteEachFanout} writes once per
address; L{fanout_transport} picks one or the other, by C{providedBy}.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import IUDPTransport
from zope.interface import implementer

from chatd.daemon.interfaces import IFanout, IFanoutTransport
from chatd.daemon.mmsg import MAX_UDP_PAYLOAD
from chatd.daemon.sockaddr import SOCKADDR_LEN, Address, encode_sockaddr

if TYPE_CHECKING:
    from chatd.daemon.fastudp import BatchedUDPPort


@implementer(IFanout)
class Fanout:
    """
    Destinations prepared once on a batching port for sending one payload
    to all of them but one, again and again, as a relay does for every
    message of a room.

    Each address is encoded to its sockaddr once, into one buffer, and the
    pointers to them are laid out twice in a row (the ring): "everyone but
    the i-th" is then the contiguous run of n - 1 pointers from i + 1, which
    the port copies into its batch with one strided store, so a copy costs
    no Python work at all. An address that is not a numeric address of the
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
        length = SOCKADDR_LEN[port.family]
        self._names = ctypes.create_string_buffer(b"".join(encoded), max(1, len(encoded) * length))
        base = ctypes.addressof(self._names)
        pointers = (ctypes.c_void_p * (2 * self.size))(*(base + (i % self.size) * length for i in range(2 * self.size)))
        self._pointers = pointers
        self.ring = memoryview(pointers).cast("B").cast("P")
        """The destinations' sockaddr pointers, twice in a row: kept alive by this object."""

    def send(self, data: bytes, skip: int = -1) -> int:
        """
        Send C{data} to every address but C{addresses[skip]} (to all with -1)
        and return how many failed. A failure is counted, never raised, and
        costs the other addresses nothing. Within the port's read the copies
        join its batch; outside it they go at once, in one sendmmsg.
        """
        # Runs for every relayed message: one call of the port for all copies.
        if len(data) > MAX_UDP_PAYLOAD:
            return write_each(self._port.write, data, self.addresses, skip)
        position = self._position[skip] if skip >= 0 else -1
        if position >= 0:
            self._port.send_copies(data, self.ring, position + 1, self.size - 1, self)
            return self.invalid
        self._port.send_copies(data, self.ring, 0, self.size, self)
        return self.invalid - (skip >= 0)


@implementer(IFanout)
class WriteEachFanout:
    """L{IFanout} on any transport: a write per address (Twisted's stock UDP port)."""

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


@implementer(IFanoutTransport)
class WriteEachTransport:
    """
    Any datagram transport (Twisted's stock UDP port, a test's fake) adapted
    to L{IFanoutTransport}: its fan-outs write once per address, and it
    never reports refused sends (each is raised at its write).
    """

    def __init__(self, transport: IUDPTransport) -> None:
        self.transport = transport
        self.write = transport.write

    def fanout(self, addresses: Sequence[Address]) -> WriteEachFanout:
        return WriteEachFanout(self.transport.write, addresses)

    def report_refused_sends(self, listener: Callable[[int, int], None] | None) -> None:
        pass


def fanout_transport(transport: IUDPTransport | IFanoutTransport) -> IFanoutTransport:
    """C{transport} itself if it provides L{IFanoutTransport}, else adapted by L{WriteEachTransport}."""
    if IFanoutTransport.providedBy(transport):
        return transport
    return WriteEachTransport(transport)
