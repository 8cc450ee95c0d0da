"""
C{chatd-chat}: the command line of the chat clients.

One command, two faces: the terminal app (urwid) by default, and with
C{--line} the line mode for scripts and bots. The flags that name a room skip
the screens that would ask for it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chatd.client.chat_client import (
    DEFAULT_HOST,
    DEFAULT_TCP_PORT,
    DEFAULT_UDP_PORT,
    ChatClient,
    IChatListener,
)
from chatd.client.servers import ServerAddress, ServerSpecError, parse_server
from chatd.client.tls import TrustPolicy
from chatd.client.tls_arguments import DEFAULT_TLS_PORT, add_tls_arguments, trust_policy


@dataclass(frozen=True, slots=True)
class ChatArguments:
    host: str = DEFAULT_HOST
    tcp_port: int = DEFAULT_TCP_PORT
    udp_port: int = DEFAULT_UDP_PORT
    room: str | None = None
    name: str | None = None
    password: str | None = None
    invite: str | None = None
    create: bool = False
    native_only: bool = False
    """With create (and TLS): a room only native clients may join, every datagram sealed."""
    line: bool = False
    json: bool = False
    tls: TrustPolicy | None = None
    """How to trust the server over TLS (tcp_port is then its TLS port); None: plain TCP."""
    servers: tuple[ServerAddress, ...] = ()
    """
    Every C{--server}, in order (the first is also C{host} and the ports);
    empty when the server was named by C{--host} and the port options.
    """


def client_for(
    reactor: Any, arguments: ChatArguments, host: str, tcp_port: int, udp_port: int, listener: IChatListener
) -> ChatClient:
    """
    A client of the server at C{host} and its ports (the terminal app's room
    screen may have changed them), then the other C{--server}s in order, with
    the arguments' TLS and native-only choices, asking for the "delivery" feature.
    """
    servers = (ServerAddress(host, tcp_port, udp_port), *arguments.servers[1:])
    # Both faces ask for reliable delivery; a server without it answers as before.
    return ChatClient(reactor, listener=listener, tls=arguments.tls, delivery=True, servers=servers)


def make_client(reactor: Any, arguments: ChatArguments, listener: IChatListener) -> ChatClient:
    """The client both faces use, over TLS when the arguments ask for it."""
    return client_for(reactor, arguments, arguments.host, arguments.tcp_port, arguments.udp_port, listener)


PROGRAM = "chatd-chat"
"""The command's name: argparse's and line mode's standard error lines start with it."""
MAIN_MODULE = "chatd.tui.main"
"""Where chatd-chat starts (C{python -m chatd.tui.main}): it runs the terminal app or line mode."""


def command_words(
    argv0: str | None = None, search_path: str | None = None, working_directory: str | None = None
) -> list[str]:
    """
    The words that start this program again, as someone on this machine
    would type them: C{chatd-chat} when that name finds this very program on
    the PATH; the path it was started by when it is not (C{.venv/bin/chatd-chat}
    after the README's set-up, which puts nothing on the PATH), made absolute
    if it leads out of the working directory; C{python -m chatd.tui.main} for
    that way of starting it. Anything else (a test runner, a program using
    the library) gets the bare name, as the docs write it.

    C{argv0}, C{search_path} and C{working_directory} default to this
    process's C{sys.argv[0]}, C{$PATH} and current directory.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    working_directory = os.getcwd() if working_directory is None else working_directory
    name = os.path.basename(argv0)
    if name == "main.py" and os.path.basename(os.path.dirname(argv0)) == "tui":
        return [_as_typed(sys.executable, working_directory), "-m", MAIN_MODULE]
    if name != PROGRAM or os.sep not in argv0:
        return [PROGRAM]
    program = os.path.join(working_directory, argv0)
    found = shutil.which(PROGRAM, path=os.environ.get("PATH", os.defpath) if search_path is None else search_path)
    if found is not None and os.path.realpath(os.path.join(working_directory, found)) == os.path.realpath(program):
        return [PROGRAM]
    return [_as_typed(argv0, working_directory)]


def _as_typed(path: str, working_directory: str) -> str:
    # A path inside the working directory stays as short as it was typed; one
    # that climbs out of it (../x) would only work from here: absolute instead.
    if os.path.isabs(path):
        return path
    relative = os.path.normpath(path)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return os.path.normpath(os.path.join(working_directory, path))
    return relative if os.sep in relative else os.curdir + os.sep + relative


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (1-65535)")
    return port


def parse_arguments(argv: Sequence[str] | None = None) -> ChatArguments:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Chat in a chatd room: a terminal app, or with --line a line mode for scripts and bots.",
    )
    parser.add_argument("--host", help=f"the server's address or name (default {DEFAULT_HOST})")
    parser.add_argument("--tcp-port", type=_port, default=DEFAULT_TCP_PORT, help="the server's TCP port (9001)")
    parser.add_argument("--udp-port", type=_port, default=DEFAULT_UDP_PORT, help="the server's UDP port (9002)")
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="HOST[:TCP[:UDP]]",
        help="a server to use, instead of --host; repeat it for the nodes of a cluster: the client enters on the"
        " first that answers and, when its connection is lost, resumes on the same one or the next"
        " (ports left out: --tcp-port, or the TLS port, and --udp-port; an IPv6 address with ports in [ ])",
    )
    parser.add_argument("--room", help="the room to create or join")
    parser.add_argument("--name", help="your user name in the room")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password", help="the room's password")
    secret.add_argument("--invite", help="an invitation token from the room's host")
    parser.add_argument("--create", action="store_true", help="create the room (you become its host)")
    parser.add_argument(
        "--native-only",
        action="store_true",
        help="with --create, over TLS: a room only native clients can join, so that every datagram is sealed",
    )
    add_tls_arguments(
        parser,
        "Connect to the server's TLS port (native protocol, sealed UDP). Any of these turns TLS on; without a"
        " trust option the certificate is pinned on first use, as SSH does (docs/security.md).",
        _port,
    )
    parser.add_argument("--line", action="store_true", help="line mode: send stdin's lines, print events to stdout")
    parser.add_argument("--json", action="store_true", help="with --line: print each event as one JSON object")
    args = parser.parse_args(argv)
    if args.json and not args.line:
        parser.error("--json needs --line")
    if args.line and not (args.room and args.name):
        parser.error("--line needs --room and --name")
    if args.create and args.invite:
        parser.error("--invite is for joining, not --create")
    if args.native_only and not args.create:
        parser.error("--native-only is for --create: it makes the room native-only")
    policy = trust_policy(args, parser.error)
    if args.native_only and policy is None:
        # The server would refuse it (NOT_PERMITTED): a room's UDP key only
        # crosses the network protected over TLS. Say so before connecting.
        parser.error(
            "--native-only needs TLS: the server creates native-only rooms only on its TLS port"
            " (add --tls-port, or a --tls-* trust option)"
        )
    tcp_port = args.tcp_port
    if policy is not None:
        tcp_port = args.tls_port or DEFAULT_TLS_PORT
    servers = _servers(args.server, tcp_port, args.udp_port, parser.error)
    if servers and args.host is not None:
        parser.error("--server and --host name the server twice: give every server with --server")
    first = servers[0] if servers else ServerAddress(args.host or DEFAULT_HOST, tcp_port, args.udp_port)
    return ChatArguments(
        host=first.host,
        tcp_port=first.tcp_port,
        udp_port=first.udp_port,
        room=args.room,
        name=args.name,
        password=args.password,
        invite=args.invite,
        create=args.create,
        native_only=args.native_only,
        line=args.line,
        json=args.json,
        tls=policy,
        servers=servers,
    )


def _servers(specs: list[str], tcp_port: int, udp_port: int, error: Any) -> tuple[ServerAddress, ...]:
    """Each C{--server}, its left-out ports filled in; a usage error for one that cannot be read."""
    servers = []
    for spec in specs:
        try:
            servers.append(parse_server(spec, tcp_port, udp_port))
        except ServerSpecError as refusal:
            error(f"--server {refusal}")
    return tuple(servers)
