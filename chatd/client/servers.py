"""
The servers a client may use, and which one it tries next, sans I/O.

A client is given one server or several (the nodes of one cluster, each with
its TCP port, or TLS port, and its UDP port). It enters its room on the first
that answers, in the order given; when its connection is lost it tries the
same server again first, then the next in the list, round-robin, one server
per try, with the reconnection's backoff between tries (chatd.client.reconnect).
A node that died is so passed over after one failed try, and a node that only
dropped the connection is tried again at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """One server: its address or name, its TCP port (the TLS port over TLS) and its UDP port."""

    host: str
    tcp_port: int
    udp_port: int

    @property
    def label(self) -> str:
        """C{host:tcp_port}, an IPv6 address in brackets: how the user is told where the client is."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.tcp_port}"


DEFAULT_HOST = "127.0.0.1"
DEFAULT_TCP_PORT = 9001
DEFAULT_UDP_PORT = 9002
DEFAULT_SERVER = ServerAddress(DEFAULT_HOST, DEFAULT_TCP_PORT, DEFAULT_UDP_PORT)
"""chatd's defaults: its own address and ports when started without options."""


class ServerSpecError(ValueError):
    """A C{HOST[:TCP[:UDP]]} that cannot be read; its message says why, for a usage line."""


def parse_server(spec: str, tcp_port: int, udp_port: int) -> ServerAddress:
    """
    C{HOST[:TCP[:UDP]]} as C{--server} takes it, the ports it leaves out
    being C{tcp_port} and C{udp_port}. An IPv6 address with ports goes in
    brackets (C{[::1]:9001:9002}); one without ports may go bare (C{::1}).
    """
    text = spec.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host:
            raise ServerSpecError(f"{spec!r}: an IPv6 address in brackets needs its closing ']'")
        if rest and not rest.startswith(":"):
            raise ServerSpecError(f"{spec!r}: ports follow the address after ':'")
        ports = rest[1:].split(":") if rest else []
    elif text.count(":") > 1 and _is_ipv6(text):
        host, ports = text, []
    else:
        host, *ports = text.split(":")
    if not host:
        raise ServerSpecError(f"{spec!r} names no host")
    if len(ports) > 2:
        raise ServerSpecError(f"{spec!r}: HOST[:TCP[:UDP]] has at most two ports")
    numbers = [_port(spec, port) for port in ports]
    return ServerAddress(
        host,
        numbers[0] if numbers else tcp_port,
        numbers[1] if len(numbers) > 1 else udp_port,
    )


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port(spec: str, text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise ServerSpecError(f"{spec!r}: {text!r} is not a port number (1-65535)")
    return int(text)


class ServerList:
    """
    The servers in the order given, and the one in use: the first at the
    start of a session; L{advance} moves to the next (after the last, the
    first again).
    """

    def __init__(self, servers: Iterable[ServerAddress]) -> None:
        self.servers = tuple(dict.fromkeys(servers))
        """Each server once, in the order first given."""
        if not self.servers:
            raise ValueError("a client needs at least one server")
        self.index = 0

    @property
    def current(self) -> ServerAddress:
        return self.servers[self.index]

    def advance(self) -> ServerAddress:
        """The next server, round-robin (the same one again when there is only one)."""
        self.index = (self.index + 1) % len(self.servers)
        return self.current

    def replace_current(self, server: ServerAddress) -> None:
        """The server in use is to be reached at C{server} from now on (a program that moved it)."""
        servers = list(self.servers)
        servers[self.index] = server
        self.servers = tuple(servers)

    def restart(self) -> None:
        """A new session: the first server again."""
        self.index = 0

    def __len__(self) -> int:
        return len(self.servers)
