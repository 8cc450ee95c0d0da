"""
What a cluster's Redis costs per relayed message: the numbers the scaling
model of docs/cluster.md rests on.

    python -m tests.cluster_cost [--posts 20000] [--window 64] [--rooms 10] [--batch 1]

It starts its own redis-server (loopback, a free port, no persistence, in a
temporary directory), then, on one txredisapi connection standing for a
node, posts C{--posts} messages of 100 bytes with C{RoomLog.post} (the one
Lua script a cross-node message costs: number, append to the room's stream,
publish) spread over C{--rooms} rooms, C{--window} in flight, while a
second node's L{ClusterBus} subscribed to every room receives them. It
prints:

- posts per second through one node's connection, and the round trip's
  p50 and p99 (from the post to its number coming back);
- post to delivery at the other node's bus: p50 and p99 (what cross-node
  relaying adds to a message, without the nodes' own work);
- redis-server's CPU seconds per post (INFO's used_cpu_sys + used_cpu_user
  over the run), and the posts per second one Redis core would carry at
  that cost: where Redis becomes the limit.

Then the same with C{--window 1} (one post at a time: the latency without
queueing). With C{--batch N}, each call is a C{RoomLog.post_batch} of N
messages of a room (what a node's batcher sends, chatd.daemon.cluster.batch),
and the figures are per message. Not a test: a benchmark (docs/performance.md, docs/cluster.md).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint

from chatd.daemon.cluster.bus import ClusterBus
from chatd.daemon.cluster.envelope import Envelope, Posted, TemplateFramer
from chatd.daemon.cluster.log import RoomBatch, RoomLog
from chatd.daemon.cluster.redis_url import connect
from chatd.daemon.history import new_epoch
from tests.redis_server import RedisServer

TEXT = b"x" * 100


def _quantile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _cpu_seconds(redis: Any) -> float:
    info = await redis.execute_command("INFO", "cpu")
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


async def _run(reactor: Any, server: RedisServer, posts: int, window: int, rooms: int, batch: int = 1) -> None:
    posts = posts // batch * batch
    sender = await connect(server.url, reactor, 5.0)
    receiver = await connect(server.url, reactor, 5.0)
    log = RoomLog(sender, clock=reactor, max_messages=512)
    bus = ClusterBus(
        HostnameEndpoint(reactor, "127.0.0.1", server.port), clock=reactor, redis=receiver, node="receiver"
    )
    bus.startService()
    await bus.when_connected(5.0)
    names = [f"room{index}" for index in range(rooms)]
    epochs = {name: new_epoch() for name in names}
    arrived: dict[tuple[str, int], float] = {}
    done: defer.Deferred[None] = defer.Deferred()

    def handler(envelope: Envelope) -> None:
        if isinstance(envelope, Posted):
            arrived[(envelope.room, envelope.seq)] = time.perf_counter()
            if len(arrived) == posts and not done.called:
                done.callback(None)

    for name in names:
        await log.begin(name, epochs[name])
        await bus.subscribe(name, handler, epoch=epochs[name], since=0)
    sent: dict[tuple[str, int], float] = {}
    round_trips: list[float] = []
    cpu_before = await _cpu_seconds(sender)
    started = time.perf_counter()
    semaphore = defer.DeferredSemaphore(window)

    framers = {name: TemplateFramer(name, epochs[name], "sender") for name in names}

    async def one(index: int) -> None:
        room = names[index % rooms]
        began = time.perf_counter()
        if batch == 1:
            seq = await log.post(room, epochs[room], b"ann", TEXT, int(time.time() * 1000), "sender")
            numbers = [seq]
        else:
            now = int(time.time() * 1000)
            framed = b"".join(framers[room].frame(now, b"ann", TEXT, "", 0) for _ in range(batch))
            (first,) = await log.post_batch([RoomBatch(room, epochs[room], framed, batch)])
            assert isinstance(first, int)
            numbers = list(range(first, first + batch))
        round_trips.append(time.perf_counter() - began)
        for seq in numbers:
            sent[(room, seq)] = began

    await defer.gatherResults([semaphore.run(one, index) for index in range(posts // batch)])
    elapsed = time.perf_counter() - started
    done.addTimeout(30, reactor)
    await done
    cpu = await _cpu_seconds(sender) - cpu_before
    delivery = [arrived[key] - began for key, began in sent.items() if key in arrived]
    print(
        f"window {window:3}, batch {batch:3}: {posts / elapsed:9,.0f} messages/s through one connection;"
        f" round trip p50 {_quantile(round_trips, 0.5) * 1e3:.2f} ms, p99 {_quantile(round_trips, 0.99) * 1e3:.2f} ms;"
        f" post to the other node's bus p50 {_quantile(delivery, 0.5) * 1e3:.2f} ms,"
        f" p99 {_quantile(delivery, 0.99) * 1e3:.2f} ms;"
        f" Redis {cpu / posts * 1e6:.1f} us CPU per post (one core: {posts / cpu:,.0f} posts/s)"
    )
    await bus.stopService()
    await sender.disconnect()
    await receiver.disconnect()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1, help="messages per script call (RoomLog.post_batch)")
    arguments = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="chatd-cluster-cost-"))
    server = RedisServer(directory, persistent=False)
    server.start()
    try:

        async def both(reactor: Any) -> None:
            await _run(reactor, server, arguments.posts, arguments.window, arguments.rooms, arguments.batch)
            await _run(reactor, server, min(arguments.posts, 2_000), 1, arguments.rooms, arguments.batch)

        task.react(lambda reactor: defer.ensureDeferred(both(reactor)))
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
