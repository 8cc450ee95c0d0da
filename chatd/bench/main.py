"""
The chatd-bench command: parse and check the options, run the benchmark
(C{chatd.bench.run}) and print the report, as a table or as JSON.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Sequence

from chatd.bench import scenarios, stats
from chatd.bench.arguments import non_negative, port_number, positive, positive_int
from chatd.bench.config import PROG, Config
from chatd.bench.errors import BenchError, Interrupted, interrupt
from chatd.bench.probes import available_cpus
from chatd.bench.run import Progress, Run
from chatd.bench.scenarios import SCENARIOS

EPILOG = f"""\
scenarios (--rooms and --members override the layout):
{scenarios.scenario_table()}

load: --window W keeps W messages in flight in total, split evenly among the
worker processes (each keeps its share in flight; a message leaves the window
when all its copies arrived or it expired); --rate N sends N messages/s in
total, open loop. Every member sends, round-robin.

server limits: a server that limits what one member may send drops the excess,
and that shows here as loss. chatd does (--messages-per-s, --message-burst,
--bytes-per-s, --byte-burst): to measure its relay rather than its limiter,
start it with those raised. The setup also needs room for R rooms and M
members per room (chatd: --max-rooms, --max-members).

output: a table, or with --json one JSON object: scenario, rooms, members,
duration_s, sent, sent_per_s, expected, delivered, lost, loss_pct,
delivered_per_s (copies received per second), latency_us {{p50, p90, p99, p999,
max, mean}}, setup_s, joins_per_s, server_cpu_pct (null without --server-pid),
generator_cpu_pct, workers, generator_saturated, warnings, and more (see the
chatd.bench module). Exit status 0, 1 on an error (or when nothing was
delivered), 2 on bad options, 130 when interrupted.
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Load a chatd (or another server of its family, model dialect) with chat traffic and"
        " measure throughput, loss, latency and CPU.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default=scenarios.DEFAULT_SCENARIO,
        help=f"the layout and default load, below ({scenarios.DEFAULT_SCENARIO})",
    )
    parser.add_argument("--rooms", type=positive_int, help="rooms (overrides the scenario)")
    parser.add_argument("--members", type=int, help="members per room, creator included, >= 2")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--window", type=positive_int, help="closed loop: messages in flight in total")
    load.add_argument("--rate", type=positive, help="open loop: messages per second in total")
    parser.add_argument("--duration", type=positive, default=3.0, help="seconds measured (default 3, at most 60)")
    parser.add_argument("--warmup", type=non_negative, default=1.0, help="seconds of load before measuring (1)")
    parser.add_argument("--expire", type=positive, default=0.5, help="seconds after which a copy is lost (0.5)")
    parser.add_argument("--size", type=int, default=100, help="message bytes (64 to 4000, default 100)")
    parser.add_argument("--workers", type=positive_int, help="worker processes (default: one per CPU)")
    parser.add_argument("--host", default="127.0.0.1", help="server address (loopback only without --allow-remote)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    parser.add_argument("--tcp-port", type=port_number, default=9001, help="server TCP port (9001)")
    parser.add_argument("--udp-port", type=port_number, default=9002, help="server UDP port (9002)")
    parser.add_argument("--password", default="", help="room password, sent on create and join")
    parser.add_argument("--server-pid", type=positive_int, help="the server's PID, for its CPU use (local only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    parser.add_argument("--setup-parallel", type=positive_int, default=64, help="concurrent TCP requests (64)")
    parser.add_argument("--setup-timeout", type=positive, default=60.0, help="seconds for the whole setup (60)")
    parser.add_argument("--request-timeout", type=positive, default=10.0, help="seconds per create/join (10)")
    return parser


def resolve(host: str, allow_remote: bool) -> tuple[str, int]:
    """(address, family) of C{host}; refuses a non-loopback address unless allowed."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise BenchError(f"cannot resolve {host!r}: {error.strerror}") from error
    family, _type, _proto, _name, sockaddr = infos[0]
    address = str(sockaddr[0])
    if not allow_remote:
        remote = [str(info[4][0]) for info in infos if not ipaddress.ip_address(str(info[4][0])).is_loopback]
        if remote:
            raise BenchError(
                f"{host} ({remote[0]}) is not a loopback address: this is a load generator; give --allow-remote"
                " to load a server you are allowed to load"
            )
    return address, int(family)


def make_config(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> Config:
    scenario = SCENARIOS[arguments.scenario]
    rooms = arguments.rooms if arguments.rooms is not None else scenario.rooms
    members = arguments.members if arguments.members is not None else scenario.members
    if not 2 <= members <= scenarios.MAX_MEMBERS_PER_ROOM:
        parser.error(f"--members must be from 2 to {scenarios.MAX_MEMBERS_PER_ROOM}")
    if rooms * members > scenarios.MAX_TOTAL_MEMBERS:
        parser.error(f"rooms x members must be at most {scenarios.MAX_TOTAL_MEMBERS}")
    if arguments.duration > scenarios.MAX_DURATION:
        parser.error(f"--duration is at most {scenarios.MAX_DURATION:g} s")
    if arguments.warmup > scenarios.MAX_WARMUP:
        parser.error(f"--warmup is at most {scenarios.MAX_WARMUP:g} s")
    if arguments.expire > scenarios.MAX_EXPIRE:
        parser.error(f"--expire is at most {scenarios.MAX_EXPIRE:g} s")
    if not scenarios.MIN_SIZE <= arguments.size <= scenarios.MAX_SIZE:
        parser.error(f"--size must be from {scenarios.MIN_SIZE} to {scenarios.MAX_SIZE}")
    window = arguments.window
    if window is not None and window > scenarios.MAX_WINDOW:
        parser.error(f"--window is at most {scenarios.MAX_WINDOW}")
    rate = arguments.rate
    if rate is None and window is None:
        window = scenario.window
    workers = arguments.workers or scenario.workers or available_cpus()
    try:
        address, family = resolve(arguments.host, arguments.allow_remote)
    except BenchError as error:
        parser.error(str(error))
    return Config(
        scenario=arguments.scenario,
        rooms=rooms,
        members=members,
        window=window,
        rate=rate,
        duration=arguments.duration,
        warmup=arguments.warmup,
        expire=arguments.expire,
        size=arguments.size,
        workers=min(workers, rooms * members),
        host=arguments.host,
        address=address,
        family=family,
        tcp_port=arguments.tcp_port,
        udp_port=arguments.udp_port,
        password=arguments.password,
        server_pid=arguments.server_pid,
        json=arguments.json,
        quiet=arguments.quiet,
        setup_parallel=arguments.setup_parallel,
        setup_timeout=arguments.setup_timeout,
        request_timeout=arguments.request_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    arguments = parser.parse_args(argv)
    config = make_config(parser, arguments)
    progress = Progress(sys.stderr, enabled=not config.quiet)
    previous = signal.signal(signal.SIGTERM, interrupt)
    run = Run(config, progress)
    try:
        report = run.execute()
    except BenchError as error:
        progress.clear()
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        progress.clear()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        run.close()
        signal.signal(signal.SIGTERM, previous)
    try:
        if config.json:
            print(stats.render_json(report), flush=True)
            for warning in report["warnings"]:
                print(f"{PROG}: warning: {warning}", file=sys.stderr)
        else:
            print(stats.render_table(report), flush=True)
    except BrokenPipeError:
        # The reader (| head) went away: not an error of the run. Point stdout
        # at /dev/null so that the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if report["delivered"] else 1


if __name__ == "__main__":
    sys.exit(main())
