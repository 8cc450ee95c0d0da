"""
What one legacy message costs the relay in instructions, counted by
callgrind: repeatable to a few tenths of a percent whatever else the machine
is doing, where a timing on a busy two-core machine is not.

    python -m tests.relay_instructions [--room 10] [--messages 6400]

It runs itself twice under C{valgrind --tool=callgrind} (C{PYTHONHASHSEED=0}),
relaying no message and then C{--messages}, and prints the difference per
message. Each run relays a model-dialect datagram through
RelayProtocol.datagramReceived to a room of C{--room} legacy members on the
daemon's own batching port (chatd.daemon.fastudp), bound to real loopback
sockets, with the reactor's clock (time.time); the datagrams are handed over
in batches of 32, as the port's read loop does, without the recvmmsg call.
Only user-space instructions are counted: the kernel's side of sendmmsg is
not, which is the same for every tree. Run it from two trees with
PYTHONPATH to compare them. Not a test: a benchmark (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

from twisted.internet.task import Clock

from chatd.daemon.controller import ChatServer
from chatd.daemon.fastudp import BatchedUDPPort
from chatd.daemon.rooms import Member
from chatd.protocol.datagrams import MAX_DATAGRAM, encode_legacy
from chatd.protocol.payloads import Dialect, RoomRequest
from tests.helpers import FAST

BATCH = 32
"""Datagrams handed over per simulated read, as recvmmsg would."""


class _NoReactor:
    """The port's reactor: it is never read from (datagrams are handed over directly)."""

    def addReader(self, reader: object) -> None:  # noqa: N802 - the interface's name
        pass

    def removeReader(self, reader: object) -> None:  # noqa: N802 - the interface's name
        pass


def relay_messages(count: int, room_size: int) -> None:
    """Relay C{count} legacy messages to a room of C{room_size} on the batching port."""
    clock = Clock()
    clock.seconds = time.time  # type: ignore[method-assign]  # as the reactor's: a C function
    unlimited = replace(FAST, messages_per_s=1e12, message_burst=1e12, bytes_per_s=1e15, byte_burst=1e15)
    server = ChatServer(clock, unlimited)
    port = BatchedUDPPort(0, server.relay, "127.0.0.1", _NoReactor(), MAX_DATAGRAM + 1, batch=True)  # type: ignore[arg-type]
    port.startListening()
    sockets = []
    members: list[Member] = []
    for index in range(room_size):
        member_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        member_socket.bind(("127.0.0.1", 0))
        sockets.append(member_socket)
        request = RoomRequest(f"m{index}")
        store = server.store
        entering = (
            store.create_room("r", request, Dialect.MODEL)
            if index == 0
            else store.join_room("r", request, Dialect.MODEL)
        )
        entering.addCallback(members.append)
        store.bind_address(members[-1], member_socket.getsockname())
    datagram = encode_legacy("r", members[0].token, "x" * 100)
    source = sockets[0].getsockname()
    relay = server.relay
    before = relay.stats.sent  # the join notices, sent as datagrams to members without TCP
    done = 0
    while done < count:
        batch = min(BATCH, count - done)
        port._in_read = True
        for _ in range(batch):
            relay.datagramReceived(datagram, source)
        port._in_read = False
        port._flush()
        done += batch
    relayed = relay.stats.sent - before
    if relayed != (room_size - 1) * count:
        raise SystemExit(f"relayed {relayed} copies, not {(room_size - 1) * count}: the count is of no use")
    port.stopListening()
    for member_socket in sockets:
        member_socket.close()


def _instructions(count: int, room_size: int) -> int:
    """The instructions callgrind counts for a run relaying C{count} messages."""
    argv = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "tests.relay_instructions", "--run", str(count), "--room", str(room_size),
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=600, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no count: {done.stderr[-500:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.relay_instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--room", type=int, default=10)
    parser.add_argument("--messages", type=int, default=6400)
    parser.add_argument("--run", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.run is not None:
        relay_messages(arguments.run, arguments.room)
        return
    base = _instructions(0, arguments.room)
    loaded = _instructions(arguments.messages, arguments.room)
    per_message = (loaded - base) / arguments.messages
    print(f"legacy  {per_message:8.0f} instructions per message, room of {arguments.room}")


if __name__ == "__main__":
    main()
