"""
The lossy benchmark: native members with reliable delivery chatting through
the impairment proxy (chatd.bench.impair), at several loss rates, against a
running daemon.

    python -m chatd.bench.lossy --tcp-port 9001 --udp-port 9002 --loss 0,0.05,0.2

For each loss rate, a new room gets C{--members} members (chatd's own client
library, asking for the "delivery" feature). Their datagrams go through one
proxy that loses that share of them in each direction, and reorders and
duplicates some. Each member sends C{--messages} messages at C{--rate} a second.
Every receiver records what it shows, in the order it shows it. The figures,
per loss rate, over every (message, other member) pair:

- delivered: the share of pairs where the message was shown (the target is 100 %);
- duplicates: pairs shown more than once (target 0);
- order violations: shown messages whose room sequence number is not above
  the one shown before (target 0);
- latency: from the sender's send() to the receiver's showing it, p50 and p99
  (the same machine's clock at both ends);
- what the proxy dropped and the members sent again.

A run ends when every member has shown every message it should, or at
C{--timeout} after the last send. What is not shown by then counts as not
delivered. The output is a table, or with C{--json} one JSON object per loss
rate.

This tool is a client of chatd, so it uses chatd.client (an exception to the
rule that the benchmark imports nothing of chatd, written in setup.cfg's
import contracts, as for the attack tool).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import deferLater, react
from zope.interface import implementer

from chatd.bench.arguments import non_negative, port_number, positive, positive_int
from chatd.bench.impair import Direction, Impairment, ImpairmentProxy
from chatd.client.chat_client import ChatClient, IChatListener
from chatd.client.events import ChatEvent, MessageReceived

PROG = "python -m chatd.bench.lossy"
SETTLE = 0.5
"""Seconds the members wait after entering before they talk: the history request and the path settle."""


class NoDeliveryError(Exception):
    """The server does not offer reliable delivery: nothing to measure."""


@dataclass
class Shown:
    """One receiver's record: (sender, index) of each message in the order shown, and when."""

    order: list[tuple[str, int, int | None]] = field(default_factory=list)
    at: dict[tuple[str, int], list[float]] = field(default_factory=dict)


@implementer(IChatListener)
class Recorder:
    """Records the messages of the run (text C{"<index> ..."}) as its member shows them."""

    def __init__(self, shown: Shown) -> None:
        self.shown = shown

    def chat_event(self, event: ChatEvent) -> None:
        if not isinstance(event, MessageReceived) or event.history:
            return
        index_text, _, _ = event.text.partition(" ")
        if not index_text.isdigit():
            return
        key = (event.sender, int(index_text))
        self.shown.order.append((event.sender, int(index_text), event.seq))
        self.shown.at.setdefault(key, []).append(time.monotonic())


@dataclass(frozen=True)
class Figures:
    loss: float
    members: int
    messages: int
    pairs: int
    delivered: int
    duplicates: int
    order_violations: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    dropped_by_proxy: int
    retransmissions: int
    repaired: int
    seconds: float

    @property
    def delivered_share(self) -> float:
        return self.delivered / self.pairs if self.pairs else 1.0

    def as_json(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "members": self.members,
            "messages_each": self.messages,
            "pairs": self.pairs,
            "delivered": self.delivered,
            "delivered_pct": round(100 * self.delivered_share, 3),
            "duplicates": self.duplicates,
            "order_violations": self.order_violations,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "dropped_by_proxy": self.dropped_by_proxy,
            "retransmissions": self.retransmissions,
            "repaired": self.repaired,
            "seconds": round(self.seconds, 2),
        }


def count_figures(
    names: Sequence[str],
    messages: int,
    sent_at: dict[tuple[str, int], float],
    shown: dict[str, Shown],
) -> tuple[int, int, int, list[float]]:
    """Delivered pairs, duplicate pairs, order violations and latencies (seconds) of one run. Pure."""
    delivered = duplicates = violations = 0
    latencies: list[float] = []
    for receiver in names:
        record = shown[receiver]
        last_seq = 0
        for _sender, _index, seq in record.order:
            if seq is not None:
                if seq <= last_seq:
                    violations += 1
                last_seq = max(last_seq, seq)
        for sender in names:
            if sender == receiver:
                continue
            for index in range(messages):
                times = record.at.get((sender, index), [])
                if times:
                    delivered += 1
                    latencies.append(times[0] - sent_at[(sender, index)])
                duplicates += max(0, len(times) - 1)
    return delivered, duplicates, violations, latencies


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile of C{values} (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]


async def run_one(reactor: Any, arguments: argparse.Namespace, loss: float, number: int) -> Figures:
    impairment = Impairment(loss=loss, duplicate=arguments.duplicate, reorder_ms=arguments.reorder_ms)
    # One daemon, or the nodes of a cluster (--also-node): member i talks to
    # node i modulo their number, each node's UDP through a proxy of its own.
    nodes = [(arguments.tcp_port, arguments.udp_port), *arguments.also_node]
    proxies = [
        ImpairmentProxy(
            reactor,
            (arguments.host, udp_port),
            seed=arguments.seed + number + 1000 * index,
            to_server=impairment,
            to_client=impairment,
        )
        for index, (_, udp_port) in enumerate(nodes)
    ]
    proxy_ports = [proxy.listen(0, arguments.host) for proxy in proxies]
    names = [f"m{index}" for index in range(arguments.members)]
    shown = {name: Shown() for name in names}
    clients = {
        name: ChatClient(
            reactor,
            arguments.host,
            nodes[index % len(nodes)][0],
            proxy_ports[index % len(nodes)],
            Recorder(shown[name]),
            reconnect=False,
            delivery=True,
        )
        for index, name in enumerate(names)
    }
    room = f"lossy-{int(time.time())}-{number}"
    started = time.monotonic()
    try:
        await clients[names[0]].create(room, names[0])
        await gatherResults([clients[name].join(room, name) for name in names[1:]])
        if not all(client.delivery for client in clients.values()):
            raise NoDeliveryError(f"{PROG}: the server did not grant the 'delivery' feature ")
        await deferLater(reactor, SETTLE, lambda: None)
        sent_at: dict[tuple[str, int], float] = {}
        interval = 1.0 / arguments.rate
        for index in range(arguments.messages):
            for name in names:
                sent_at[(name, index)] = time.monotonic()
                clients[name].send(f"{index} from {name}")
            await deferLater(reactor, interval, lambda: None)
        expected = (len(names) - 1) * arguments.messages
        deadline = time.monotonic() + arguments.timeout
        while time.monotonic() < deadline:
            if all(len(shown[name].at) >= expected for name in names):
                break
            await deferLater(reactor, 0.05, lambda: None)
        seconds = time.monotonic() - started
        delivered, duplicates, violations, latencies = count_figures(names, arguments.messages, sent_at, shown)
        stats = [client.delivery_stats for client in clients.values()]
        dropped = sum(proxy.counters(direction).dropped for proxy in proxies for direction in Direction)
        return Figures(
            loss=loss,
            members=len(names),
            messages=arguments.messages,
            pairs=len(names) * expected,
            delivered=delivered,
            duplicates=duplicates,
            order_violations=violations,
            latency_p50_ms=_ms(percentile(latencies, 0.5)),
            latency_p99_ms=_ms(percentile(latencies, 0.99)),
            dropped_by_proxy=dropped,
            retransmissions=sum(s.retransmissions for s in stats if s is not None),
            repaired=sum(s.repaired for s in stats if s is not None),
            seconds=seconds,
        )
    finally:
        for client in clients.values():
            # A member that cannot leave cleanly changes no figure.
            with contextlib.suppress(Exception):
                await client.leave()
        for proxy in proxies:
            await proxy.stop()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def node_ports(text: str) -> tuple[int, int]:
    """C{TCP:UDP}: another node's two ports."""
    tcp, separator, udp = text.partition(":")
    if not separator:
        raise argparse.ArgumentTypeError(f"{text!r} is not TCP:UDP")
    return port_number(tcp), port_number(udp)


def loss_rates(text: str) -> list[float]:
    rates = [float(part) for part in text.split(",") if part.strip()]
    if not rates or not all(0 <= rate < 1 for rate in rates):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of loss rates in [0, 1)")
    return rates


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].strip() if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1", help="the daemon's address, an IP (default 127.0.0.1)")
    parser.add_argument("--tcp-port", type=port_number, default=9001, help="the daemon's TCP port (9001)")
    parser.add_argument("--udp-port", type=port_number, default=9002, help="the daemon's UDP port (9002)")
    parser.add_argument(
        "--also-node",
        type=node_ports,
        action="append",
        default=[],
        metavar="TCP:UDP",
        help="another node of the same cluster (chatd --redis), on --host: members are spread over the nodes in turn",
    )
    parser.add_argument("--loss", type=loss_rates, default=[0.0, 0.05, 0.2], help="loss rates, each way (0,0.05,0.2)")
    parser.add_argument("--duplicate", type=non_negative, default=0.01, help="share duplicated, each way (0.01)")
    parser.add_argument("--reorder-ms", type=non_negative, default=20.0, help="extra random delay, ms (20)")
    parser.add_argument("--members", type=positive_int, default=3, help="members in the room (3)")
    parser.add_argument("--messages", type=positive_int, default=200, help="messages each member sends (200)")
    parser.add_argument(
        "--rate",
        type=positive,
        default=10.0,
        help="messages a second each member sends (10: half the daemon's default limit of 20 a member,"
        " so that what loss adds, retransmissions and repairs, stays within it)",
    )
    parser.add_argument("--timeout", type=positive, default=30.0, help="seconds to wait after the last send (30)")
    parser.add_argument("--seed", type=int, default=1, help="the proxy's seed (1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per loss rate instead of a table")
    return parser


def print_table(figures: Sequence[Figures]) -> None:
    print("loss  delivered  duplicates  order  p50 ms  p99 ms  dropped  resent  repaired  seconds")
    for f in figures:
        print(
            f"{f.loss:4.0%}  {100 * f.delivered_share:8.2f}%  {f.duplicates:10d}  {f.order_violations:5d}"
            f"  {_cell(f.latency_p50_ms)}  {_cell(f.latency_p99_ms)}  {f.dropped_by_proxy:7d}"
            f"  {f.retransmissions:6d}  {f.repaired:8d}  {f.seconds:7.1f}"
        )


def _cell(value: float | None) -> str:
    return f"{value:6.1f}" if value is not None else "     -"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = make_parser().parse_args(argv)
    status = 0

    async def everything(reactor: Any) -> None:
        nonlocal status
        figures = []
        try:
            for number, loss in enumerate(arguments.loss):
                result = await run_one(reactor, arguments, loss, number)
                figures.append(result)
                if arguments.json:
                    print(json.dumps(result.as_json()), flush=True)
        except NoDeliveryError as error:
            print(error, file=sys.stderr)
            status = 1
            return
        if not arguments.json:
            print_table(figures)

    def start(reactor: Any) -> Deferred[None]:
        return ensureDeferred(everything(reactor))

    try:
        react(start)
    except SystemExit as done:
        if done.code:
            return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
