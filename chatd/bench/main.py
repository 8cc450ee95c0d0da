"""
The chatd-bench command: parse the options, set up the rooms, run the worker
processes, collect their counts and print the report.

Every wait has a deadline; the workers are killed on any error, on Ctrl-C and
on SIGTERM; the rooms the run created are closed at the end (the host of each
sends C{/exit}), so that repeated runs do not fill the server with idle rooms.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import multiprocessing
import multiprocessing.connection
import os
import resource
import secrets
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, TextIO

from chatd.bench import scenarios, stats, worker
from chatd.bench.scenarios import SCENARIOS
from chatd.bench.setup_rooms import OP_CREATE, OP_JOIN, MemberRequest, RoomSetup, SetupError

PROG = "chatd-bench"
PROBE_TIMEOUT = 3.0
READY_TIMEOUT = 15.0
RESULT_GRACE = 10.0
"""Seconds past the workers' own end to wait for their results."""
JOIN_TIMEOUT = 3.0
START_DELAY_NS = 50_000_000
"""From "go" to the first message: every worker has the go by then."""
RECEIVE_BUFFER = 1 << 20


class BenchError(Exception):
    """A failure to report as one line, without a traceback."""


class Interrupted(BaseException):
    """SIGTERM: unwind like Ctrl-C, so that the workers are killed and the rooms closed."""


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


@dataclass(frozen=True)
class Config:
    scenario: str
    rooms: int
    members: int
    window: int | None
    rate: float | None
    duration: float
    warmup: float
    expire: float
    size: int
    workers: int
    host: str
    address: str
    family: int
    tcp_port: int
    udp_port: int
    password: str
    server_pid: int | None
    json: bool
    quiet: bool
    setup_parallel: int
    setup_timeout: float
    request_timeout: float


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a non-negative number")
    return value


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


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


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Progress:
    """The progress line on stderr: rewritten in place on a terminal, a line a second otherwise."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.interval = 0.1 if self.tty else 1.0
        self.last = 0.0
        self.shown = False

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K")
        else:
            self.stream.write(f"{text}\n")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self.shown = False


def read_text(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


def server_ticks(pid: int) -> int | None:
    text = read_text(f"/proc/{pid}/stat")
    if text is None:
        return None
    try:
        return stats.proc_stat_ticks(text)
    except (ValueError, IndexError):
        return None


def machine_times() -> tuple[int, int] | None:
    text = read_text("/proc/stat")
    if text is None:
        return None
    try:
        return stats.machine_cpu_times(text)
    except ValueError:
        return None


def raise_file_limit(needed: int) -> None:
    """Raise the soft limit on open files towards the hard one; fail clearly if even that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        if target < needed:
            raise BenchError(f"this run needs about {needed} open files but `ulimit -n` allows {target}")


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


class Run:
    """One benchmark run; C{close} always leaves no process and no socket behind."""

    def __init__(self, config: Config, progress: Progress) -> None:
        self.config = config
        self.progress = progress
        self.sockets: list[socket.socket] = []
        self.tokens: dict[int, str] = {}
        self.room_names: list[str] = []
        self.processes: list[BaseProcess] = []
        self.pipes: list[int] = []
        self.notes: list[str] = []

    def close(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(JOIN_TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join(JOIN_TIMEOUT)
        close_rooms(self.config, self.sockets, self.tokens, self.room_names)
        for sock in self.sockets:
            sock.close()
        for fd in self.pipes:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pipes.clear()

    def execute(self) -> dict[str, Any]:
        config = self.config
        total = config.rooms * config.members
        if config.server_pid is not None and server_ticks(config.server_pid) is None:
            raise BenchError(f"no process {config.server_pid} to measure (--server-pid); is the server local?")
        raise_file_limit(total + config.setup_parallel + 4 * config.workers + 64)
        local_address = probe_server(config)
        self.sockets = bind_members(config, local_address, total)
        setup_seconds = self._setup(total)
        return self._load(setup_seconds)

    def _setup(self, total: int) -> float:
        config = self.config
        nonce = secrets.token_hex(3)
        self.room_names = [f"b{nonce}-{room}" for room in range(config.rooms)]
        requests = [
            MemberRequest(
                k,
                self.room_names[k // config.members],
                f"m{k}",
                OP_CREATE if k % config.members == 0 else OP_JOIN,
                int(self.sockets[k].getsockname()[1]),
            )
            for k in range(total)
        ]
        setup = RoomSetup(
            (config.address, config.tcp_port),
            config.family,
            requests,
            config.password,
            config.setup_parallel,
            config.request_timeout,
            config.setup_timeout,
            lambda done, count: self.progress.show(stats.progress_setup(done, count), force=done == count),
        )
        # Shared, so that close() can close the rooms made before a failure.
        self.tokens = setup.tokens
        try:
            result = setup.run()
        except SetupError as error:
            raise BenchError(str(error)) from error
        if result.kept_open:
            self.notes.append(
                f"the server kept {result.kept_open} setup connections open after the port bytes;"
                " a model-dialect server closes them"
            )
        return result.seconds

    def _plans(self) -> list[worker.WorkerPlan]:
        config = self.config
        count = config.workers
        blocks = scenarios.assign_members(config.rooms, config.members, count)
        total = config.rooms * config.members
        worker_of = [0] * total
        sender_position = [0] * total
        order = [scenarios.sender_order(block, config.members) for block in blocks]
        for index, senders in enumerate(order):
            for position, k in enumerate(senders):
                worker_of[k] = index
                sender_position[k] = position
        windows: list[int | None] = [None] * count
        rates: list[float | None] = [None] * count
        ring = 0
        acks: Any = None
        wake_read: list[int | None] = [None] * count
        wake_write: list[int | None] = [None] * count
        context = multiprocessing.get_context("fork")
        if config.window is not None:
            shares = scenarios.split_evenly(config.window, count)
            windows = list(shares)
            # Four times the largest share: a slot is reused long after its message left the window.
            ring = 1 << max(6, (4 * max(shares)).bit_length())
            acks = context.RawArray("Q", count * count * ring)
            for index, share in enumerate(shares):
                if share:
                    read_end, write_end = os.pipe()
                    os.set_blocking(read_end, False)
                    os.set_blocking(write_end, False)
                    self.pipes += [read_end, write_end]
                    wake_read[index], wake_write[index] = read_end, write_end
        else:
            assert config.rate is not None
            rates = [config.rate * len(senders) / total for senders in order]
        progress = context.RawArray("q", 2 * count)
        heads = {k: datagram_head(self.room_names[k // config.members], self.tokens[k]) for k in range(total)}
        return [
            worker.WorkerPlan(
                index=index,
                workers=count,
                rooms=config.rooms,
                members=config.members,
                local=blocks[index],
                senders=order[index],
                heads={k: heads[k] for k in blocks[index]},
                sockets=self.sockets,
                window=windows[index],
                rate=rates[index],
                size=config.size,
                expire_ns=int(config.expire * 1e9),
                warmup_ns=int(config.warmup * 1e9),
                duration_ns=int(config.duration * 1e9),
                worker_of=worker_of,
                sender_position=sender_position,
                senders_in=[len(senders) for senders in order],
                ring=ring,
                acks=acks,
                wake_read=wake_read[index],
                wake_write=wake_write,
                progress=progress,
            )
            for index in range(count)
        ]

    def _start_workers(self, plans: list[worker.WorkerPlan]) -> list[Connection]:
        context = multiprocessing.get_context("fork")
        connections: list[Connection] = []
        for plan in plans:
            parent, child = context.Pipe()
            process = context.Process(
                target=worker.run, args=(plan, child), name=f"{PROG}-worker-{plan.index}", daemon=True
            )
            process.start()
            child.close()
            self.processes.append(process)
            connections.append(parent)
        return connections

    def _receive(self, connection: Connection, index: int) -> tuple[str, Any]:
        try:
            message: tuple[str, Any] = connection.recv()
        except (EOFError, OSError) as error:
            code = self.processes[index].exitcode
            raise BenchError(f"worker {index} ended unexpectedly (exit status {code})") from error
        if message[0] == "error":
            raise BenchError(str(message[1]))
        return message

    def _load(self, setup_seconds: float) -> dict[str, Any]:
        config = self.config
        plans = self._plans()
        connections = self._start_workers(plans)
        index_of = {id(connection): index for index, connection in enumerate(connections)}
        waiting = list(connections)
        deadline = time.monotonic() + READY_TIMEOUT
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{len(waiting)} worker processes did not start within {READY_TIMEOUT:g} s")
            for ready in multiprocessing.connection.wait(waiting, left):
                assert isinstance(ready, Connection)
                self._receive(ready, index_of[id(ready)])
                waiting.remove(ready)
        start_ns = time.monotonic_ns() + START_DELAY_NS
        for connection in connections:
            connection.send(("go", start_ns))
        measure_ns = start_ns + int(config.warmup * 1e9)
        end_ns = measure_ns + int(config.duration * 1e9)
        stop_ns = end_ns + int(config.expire * 1e9) + 100_000_000
        deadline_ns = stop_ns + int(RESULT_GRACE * 1e9)
        progress = memoryview(plans[0].progress).cast("B").cast("q")
        results: dict[int, stats.WorkerResult] = {}
        server_before = server_after = None
        machine_before = machine_after = None
        measured_before = measured_after = False
        waiting = list(connections)
        try:
            while waiting:
                now = time.monotonic_ns()
                if not measured_before and now >= measure_ns:
                    measured_before = True
                    if config.server_pid is not None:
                        server_before = server_ticks(config.server_pid)
                    machine_before = machine_times()
                if not measured_after and now >= end_ns:
                    measured_after = True
                    if config.server_pid is not None:
                        server_after = server_ticks(config.server_pid)
                    machine_after = machine_times()
                if now > deadline_ns:
                    raise BenchError(f"{len(waiting)} worker processes did not report in time")
                delivered = sum(progress[2 * index + 1] for index in range(config.workers))
                self.progress.show(
                    stats.progress_sending(
                        max(0.0, (now - start_ns) / 1e9), (end_ns - start_ns) / 1e9, delivered, now < measure_ns
                    )
                )
                wake = deadline_ns
                for moment in (measure_ns, end_ns):
                    if now < moment:
                        wake = min(wake, moment)
                timeout = max(0.0, min((wake - now) / 1e9, self.progress.interval))
                for ready in multiprocessing.connection.wait(waiting, timeout):
                    assert isinstance(ready, Connection)
                    index = index_of[id(ready)]
                    _kind, result = self._receive(ready, index)
                    results[index] = result
                    waiting.remove(ready)
        finally:
            progress.release()
        self.progress.clear()

        hertz = float(os.sysconf("SC_CLK_TCK"))
        server_cpu = None
        if config.server_pid is not None:
            if server_before is None or server_after is None:
                self.notes.append(f"could not read the CPU use of process {config.server_pid}: did it exit?")
            else:
                server_cpu = stats.cpu_percent(server_before, server_after, hertz, config.duration)
        machine_busy = None
        if machine_before is not None and machine_after is not None:
            machine_busy = stats.busy_percent(machine_before, machine_after)
        info = stats.RunInfo(
            scenario=config.scenario,
            host=config.host,
            tcp_port=config.tcp_port,
            udp_port=config.udp_port,
            rooms=config.rooms,
            members=config.members,
            window=config.window,
            rate=config.rate,
            size=config.size,
            workers=config.workers,
            duration_s=config.duration,
            warmup_s=config.warmup,
            expire_s=config.expire,
            setup_s=setup_seconds,
            server_pid=config.server_pid,
            server_cpu_pct=server_cpu,
            machine_cpu_busy_pct=machine_busy,
            cores=available_cpus(),
        )
        return stats.build_report(info, [results[index] for index in sorted(results)], self.notes)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted()


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    arguments = parser.parse_args(argv)
    config = make_config(parser, arguments)
    progress = Progress(sys.stderr, enabled=not config.quiet)
    previous = signal.signal(signal.SIGTERM, _interrupt)
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
