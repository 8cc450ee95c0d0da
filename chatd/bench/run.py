"""
One chatd-bench run: set up the rooms, start the worker processes, show the
progress line, collect the workers' counts and build the report.

Every wait has a deadline; the workers are killed on any error, on Ctrl-C and
on SIGTERM; the rooms the run created are closed at the end (the host of each
sends C{/exit}), so that repeated runs do not fill the server with idle rooms.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import secrets
import socket
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TextIO

from chatd.bench import scenarios, stats, worker
from chatd.bench.config import PROG, Config
from chatd.bench.errors import BenchError
from chatd.bench.member_sockets import bind_members, close_rooms, datagram_head, probe_server
from chatd.bench.probes import available_cpus, machine_times, raise_file_limit, server_ticks
from chatd.bench.setup_rooms import OP_CREATE, OP_JOIN, MemberRequest, RoomSetup, SetupError

READY_TIMEOUT = 15.0
RESULT_GRACE = 10.0
"""Seconds past the workers' own end to wait for their results."""
JOIN_TIMEOUT = 3.0
START_DELAY_NS = 50_000_000
"""From "go" to the first message: every worker has the go by then."""


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
