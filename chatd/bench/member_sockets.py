"""
The members' side of the network: probe the server's TCP port for the local
address to use, bind one connected UDP socket per member, build the head of a
chat datagram, and close the run's rooms at the end (each host sends
C{/exit}).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Sequence

from chatd.bench.config import Config
from chatd.bench.errors import BenchError

PROBE_TIMEOUT = 3.0
RECEIVE_BUFFER = 1 << 20


def probe_server(config: Config) -> str:
    """Connect once to the server's TCP port; the local address it used is the one the members bind."""
    try:
        with socket.create_connection((config.address, config.tcp_port), timeout=PROBE_TIMEOUT) as probe:
            return str(probe.getsockname()[0])
    except TimeoutError as error:
        raise BenchError(
            f"the server at {config.host}:{config.tcp_port} did not accept a TCP connection within {PROBE_TIMEOUT:g} s"
        ) from error
    except OSError as error:
        raise BenchError(
            f"cannot reach the server at {config.host}:{config.tcp_port} over TCP: {error.strerror or error}"
        ) from error


def bind_members(config: Config, local_address: str, count: int) -> list[socket.socket]:
    """One UDP socket per member, on a free port of the local address, connected to the server's UDP port."""
    sockets: list[socket.socket] = []
    ready = 0  # sockets bound and connected
    try:
        while ready < count:
            sock = socket.socket(config.family, socket.SOCK_DGRAM)
            sockets.append(sock)
            # Bursts of fan-out must not overflow the default buffer; the kernel caps this at rmem_max.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((local_address, 0))
            sock.connect((config.address, config.udp_port))
            sock.setblocking(False)
            ready += 1
    except OSError as error:
        for sock in sockets:
            sock.close()
        if error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise BenchError(
                f"ran out of local UDP ports after {ready} of {count} member sockets (see"
                " /proc/sys/net/ipv4/ip_local_port_range): use fewer rooms or members"
            ) from error
        if error.errno in (errno.EMFILE, errno.ENFILE):
            raise BenchError(f"too many open files after {ready} member sockets: raise `ulimit -n`") from error
        raise BenchError(f"cannot open member socket {ready}: {error.strerror or error}") from error
    return sockets


def datagram_head(room: str, token: str) -> bytes:
    """[room size][token size][room][token]: the legacy datagram up to the message."""
    name = room.encode("utf-8")
    secret = token.encode("utf-8")
    return bytes([len(name), len(secret)]) + name + secret


def close_rooms(
    config: Config, sockets: Sequence[socket.socket], tokens: dict[int, str], room_names: Sequence[str]
) -> None:
    """Each registered host sends /exit, which closes its room on a model server."""
    for room, name in enumerate(room_names):
        host = room * config.members
        token = tokens.get(host)
        if token is None or host >= len(sockets):
            continue
        with contextlib.suppress(OSError):
            sockets[host].send(datagram_head(name, token) + b"/exit")
