"""
What a relayed message costs a node in CPU time with --redis, against the
same relay without: what posting the node's messages to the room log adds.

    python -m tests.cluster_relay_cost [--messages 20000] [--per-turn 16] [--scenario room10,rooms100x5,room200]

For each scenario (the rooms and members of the C bench's compare.py:
room10 is 1 room of 10, rooms100x5 100 rooms of 5, room200 1 room of 200),
it builds a ChatServer with legacy (model) members bound to real loopback
sockets, its relay on the daemon's batching port (chatd.daemon.fastudp), and
relays C{--messages} datagrams, C{--per-turn} per reactor turn (as one read
of the port would bring them: compare.py keeps 16 in flight), the members
taking turns to speak. Once without a cluster; once as a ClusterNode on a
real redis-server (its own, loopback, no persistence), waiting at the end
until every message came back on the node's bus into its rooms' caches.
It prints the process's CPU time per message (time.process_time: this
process only; redis-server's work is its own), and the difference.

It runs with the tree on PYTHONPATH, so the same file measures two trees
(copy it next to the other tree's tests). Not a test: a benchmark.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint

from chatd.daemon.cluster.bus import ClusterBus
from chatd.daemon.cluster.directory import RoomDirectory
from chatd.daemon.cluster.log import RoomLog
from chatd.daemon.cluster.node import ClusterNode
from chatd.daemon.cluster.redis_url import connect
from chatd.daemon.controller import ChatServer
from chatd.daemon.fastudp import BatchedUDPPort
from chatd.daemon.rooms import Member
from chatd.protocol.datagrams import MAX_DATAGRAM, encode_legacy
from chatd.protocol.payloads import Dialect, RoomRequest
from tests.helpers import FAST
from tests.redis_server import RedisServer

SCENARIOS = {"room10": (1, 10), "rooms100x5": (100, 5), "room200": (1, 200)}
SETTINGS = replace(FAST, messages_per_s=1e12, message_burst=1e12, bytes_per_s=1e15, byte_burst=1e15, max_members=1000)


class _NoReactor:
    """The port's reactor: it is never read from (datagrams are handed over directly)."""

    def addReader(self, reader: object) -> None:  # noqa: N802 - the interface's name
        pass

    def removeReader(self, reader: object) -> None:  # noqa: N802 - the interface's name
        pass


async def _members(server: ChatServer, rooms: int, size: int, sockets: list[socket.socket]) -> list[Member]:
    members: list[Member] = []
    for room in range(rooms):
        for index in range(size):
            member_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            member_socket.bind(("127.0.0.1", 0))
            sockets.append(member_socket)
            request = RoomRequest(f"m{index}")
            name = f"r{room}"
            store = server.store
            entering = (
                store.create_room(name, request, Dialect.MODEL)
                if index == 0
                else store.join_room(name, request, Dialect.MODEL)
            )
            member = await entering
            store.bind_address(member, member_socket.getsockname())
            members.append(member)
    return members


async def _relay(reactor: Any, server: ChatServer, members: list[Member], count: int, per_turn: int) -> float:
    """Relay C{count} messages, C{per_turn} per reactor turn; the CPU seconds it took this process."""
    port = BatchedUDPPort(0, server.relay, "127.0.0.1", _NoReactor(), MAX_DATAGRAM + 1, batch=True)  # type: ignore[arg-type]
    port.startListening()
    # Speakers interleaved across rooms, as compare.py's generator does.
    by_room: dict[Any, list[Member]] = {}
    for member in members:
        by_room.setdefault(member.room, []).append(member)
    order = [
        group[turn]
        for turn in range(max(map(len, by_room.values())))
        for group in by_room.values()
        if turn < len(group)
    ]
    datagrams = []
    for member in order:
        assert member.address is not None
        datagrams.append((encode_legacy(member.room.name, member.token, "x" * 100), member.address))
    expected = {room: room.history.latest for room in by_room}
    relay = server.relay
    started = time.process_time()
    done = 0
    while done < count:
        port._in_read = True
        for index in range(done, min(done + per_turn, count)):
            datagram, source = datagrams[index % len(datagrams)]
            relay.datagramReceived(datagram, source)
            expected[order[index % len(order)].room] += 1
        port._in_read = False
        port._flush()
        done += per_turn
        await task.deferLater(reactor, 0, lambda: None)
    deadline = time.monotonic() + 60
    while any(room.history.latest < latest for room, latest in expected.items()):
        if time.monotonic() > deadline:
            raise SystemExit("the rooms' caches did not catch up within 60 s")
        # Idle, not spinning: only the work counts.
        await task.deferLater(reactor, 0.001, lambda: None)
    spent = time.process_time() - started
    port.stopListening()
    return spent


async def _single(reactor: Any, rooms: int, size: int, count: int, per_turn: int) -> float:
    server = ChatServer(reactor, SETTINGS)
    sockets: list[socket.socket] = []
    members = await _members(server, rooms, size, sockets)
    spent = await _relay(reactor, server, members, count, per_turn)
    for member_socket in sockets:
        member_socket.close()
    return spent


async def _cluster(reactor: Any, redis: RedisServer, rooms: int, size: int, count: int, per_turn: int) -> float:
    connection = await connect(redis.url, reactor, 5.0)
    directory = RoomDirectory(connection, "a", reactor, timeout=5.0)
    log = RoomLog(connection, clock=reactor, max_messages=SETTINGS.history_messages)
    bus = ClusterBus(
        TCP4ClientEndpoint(reactor, "127.0.0.1", redis.port), clock=reactor, redis=connection, log=log, node="a"
    )
    node = ClusterNode("a", clock=reactor, settings=SETTINGS, directory=directory, log=log, bus=bus)
    server = ChatServer(reactor, SETTINGS, cluster=node)
    await node.start()
    await directory.heartbeat()
    sockets: list[socket.socket] = []
    members = await _members(server, rooms, size, sockets)
    for _ in range(50):
        if all(node.following(room) for room in {member.room.name for member in members}):
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    spent = await _relay(reactor, server, members, count, per_turn)
    await server.stop()
    await node.stop()
    # The stopped node's rooms stay in the cluster (for resumes): gone, for the next scenario's names.
    await connection.execute_command("FLUSHALL")
    await connection.disconnect()
    for member_socket in sockets:
        member_socket.close()
    return spent


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster_relay_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--per-turn", type=int, default=16)
    parser.add_argument("--scenario", default=",".join(SCENARIOS))
    arguments = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="chatd-cluster-relay-cost-"))
    redis = RedisServer(directory, persistent=False)
    redis.start()
    try:

        async def run(reactor: Any) -> None:
            for name in arguments.scenario.split(","):
                rooms, size = SCENARIOS[name]
                alone = await _single(reactor, rooms, size, arguments.messages, arguments.per_turn)
                clustered = await _cluster(reactor, redis, rooms, size, arguments.messages, arguments.per_turn)
                per = 1e6 / arguments.messages
                print(
                    f"{name:10}: {alone * per:6.1f} us CPU per message alone, {clustered * per:6.1f} us with --redis"
                    f" (+{(clustered - alone) * per:.1f} us, x{clustered / alone:.2f})",
                    flush=True,
                )

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    finally:
        redis.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
