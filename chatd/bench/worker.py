"""
One worker process of chatd-bench: it sends its members' messages and
receives the copies that reach them.

The main process binds and registers every member's UDP socket, then forks the
workers; each keeps the sockets of its own members and closes the others. A
worker is a single-threaded loop over C{selectors} (epoll on Linux) with
non-blocking, connected sockets, so it only ever sees datagrams from the
server's UDP port.

Messages are text, padded with C{x} to the message size::

    seq=<n> t=<monotonic ns> s=<sender member index> xxx...

C{seq} counts each sender's messages from 1. On receipt the worker drops the
server's C{"<username>: "} prefix (everything up to the first C{": "}),
checks the sender (another member of the receiver's room), the length, and
duplicates (per receiver and sender: the highest seq seen and a bitmask of
the 63 before it), and takes the latency from C{t}: CLOCK_MONOTONIC is the
same clock in every process. A copy counts as delivered when it arrives
within the expiry; later ones are "late".

Load:

 - open loop (C{rate}): the worker sends its share of the total rate, on a
   schedule from the start time, whatever comes back;
 - closed loop (C{window}): the worker keeps its share of the window in
   flight. A message leaves the window when every copy has arrived or it has
   expired. Its copies may be received by other workers, so receivers count
   them in shared memory, one cell per (receiving worker, sending worker,
   ring slot), each cell written by one process only, holding
   C{(message number << 16) | copies}; the receiver then pokes the sender
   through a pipe so that it need not poll.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from chatd.bench.stats import FINE_BUCKETS_US, WorkerResult

MESSAGE = re.compile(rb"seq=(\d{1,20}) t=(\d{1,20}) s=(\d{1,10}) ")
PREFIX_LIMIT = 300
"""Where to look for the ": " after the user name (chatd names are at most 255 bytes)."""
RECV_SLACK = 512
RECV_BATCH = 64
"""Datagrams read from one socket before the others get their turn."""
SEND_BURST = 512
"""Open loop: the most messages sent in one go when behind schedule, so that receiving is not starved."""
SCAN_LIMIT = 32
"""Closed loop: completions are looked for among the oldest this many unfinished messages."""
TICK_NS = 50_000_000
"""The longest a worker sleeps: progress counters are refreshed at least this often."""
GO_TIMEOUT = 30.0
DRAIN_LIMIT = 10_000
"""Notices queued before the start: a member gets one per later join, so at most a room's size."""
MASK64 = (1 << 64) - 1
FINE_SHIFT = FINE_BUCKETS_US.bit_length()


@dataclass
class WorkerPlan:
    """Everything a worker needs; it reaches the worker by fork, not by pickling."""

    index: int
    workers: int
    rooms: int
    members: int
    local: list[int]
    """The members (k = room * members + position) whose sockets this worker owns."""
    senders: list[int]
    """The local members in sending order."""
    heads: dict[int, bytes]
    """Per local member: the datagram's [room size][token size][room][token]."""
    sockets: Sequence[socket.socket]
    """All members' sockets, indexed by k; the worker closes those of other workers."""
    window: int | None
    """This worker's share of the window (closed loop), or None."""
    rate: float | None
    """This worker's share of the rate in messages/s (open loop), or None."""
    size: int
    expire_ns: int
    warmup_ns: int
    duration_ns: int
    worker_of: list[int]
    sender_position: list[int]
    """Per member k: its place in its worker's sending order."""
    senders_in: list[int]
    """Per worker: how many members it sends from."""
    ring: int
    """Closed loop: slots per (receiving, sending) worker pair, a power of two."""
    acks: Any
    """Closed loop: the shared array of copy counters (ctypes array of uint64), or None."""
    wake_read: int | None
    wake_write: list[int | None]
    """Per worker: the write end of its wake-up pipe, if it sends in closed loop."""
    progress: Any
    """Shared array of int64: per worker [messages sent, copies delivered], for the progress line."""


def run(plan: WorkerPlan, conn: Connection) -> None:
    """The worker process's entry point: ready, wait for go, run, report."""
    # Ctrl-C reaches the whole process group; the main process decides and
    # terminates us, with SIGTERM, whose handler (inherited from the main
    # process by fork) must be the default one here: die at once, quietly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    mine = set(plan.local)
    for k, sock in enumerate(plan.sockets):
        if k not in mine:
            sock.close()
    try:
        drain([plan.sockets[k] for k in plan.local])
        conn.send(("ready", None))
        if not conn.poll(GO_TIMEOUT):
            return
        message = conn.recv()
        if message[0] != "go":
            return
        result = Worker(plan).run(int(message[1]))
        conn.send(("result", result))
    except (EOFError, BrokenPipeError):
        # The main process is gone; nothing to report to.
        pass
    except Exception as error:
        with contextlib.suppress(OSError):
            conn.send(("error", f"worker {plan.index} failed: {type(error).__name__}: {error}"))
    finally:
        for k in plan.local:
            plan.sockets[k].close()
        conn.close()


def drain(sockets: Sequence[socket.socket], limit: int = DRAIN_LIMIT) -> int:
    """Read and discard what is queued (the join notices of the setup), at most C{limit} per socket; how many."""
    count = 0
    for sock in sockets:
        for _ in range(limit):
            try:
                sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                continue
            count += 1
    return count


class Worker:
    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.result = WorkerResult(plan.index)

    def run(self, start_ns: int) -> WorkerResult:
        # memoryview indexing is cheaper than a ctypes array's.
        shared = self.plan.acks if self.plan.acks is not None else (b"\0" * 8)
        acks = memoryview(shared).cast("B").cast("Q")
        progress = memoryview(self.plan.progress).cast("B").cast("q")
        try:
            self._loop(start_ns, acks, progress)
        finally:
            acks.release()
            progress.release()
        return self.result

    def _copies_by_worker(self) -> list[list[int]]:
        """Per room: how many of its members each worker holds."""
        plan = self.plan
        counts = [[0] * plan.workers for _ in range(plan.rooms)]
        for k, worker in enumerate(plan.worker_of):
            counts[k // plan.members][worker] += 1
        return counts

    def _loop(self, start_ns: int, acks: memoryview, progress: memoryview) -> None:
        # One long function on purpose: the per-datagram path runs on local
        # variables, which CPython reads far faster than attributes.
        plan = self.plan
        result = self.result
        me = plan.index
        members = plan.members
        total_members = plan.rooms * members
        size = plan.size
        expire_ns = plan.expire_ns
        measure_ns = start_ns + plan.warmup_ns
        end_ns = measure_ns + plan.duration_ns
        # The drain: copies of the last messages may arrive up to the expiry after them.
        stop_ns = end_ns + expire_ns + 100_000_000
        fan = members - 1
        window = plan.window
        rate = plan.rate
        ring = plan.ring
        mask = ring - 1
        workers = plan.workers
        wake_write = plan.wake_write
        monotonic_ns = time.monotonic_ns
        closed = plan.acks is not None

        selector = selectors.DefaultSelector()
        for k in plan.local:
            # Per receiver: its index, its room, and per sender the duplicate state.
            selector.register(plan.sockets[k], selectors.EVENT_READ, (k, k // members, {}))
        if plan.wake_read is not None:
            selector.register(plan.wake_read, selectors.EVENT_READ, None)
        select = selector.select

        # Senders: (socket, datagram head, k, [(acks offset, copies expected there)]).
        by_worker = self._copies_by_worker() if closed else []
        senders: list[tuple[socket.socket, bytes, int, tuple[tuple[int, int], ...]]] = []
        for k in plan.senders:
            expected: tuple[tuple[int, int], ...] = ()
            if closed:
                per_worker = by_worker[k // members]
                expected = tuple(
                    ((v * workers + me) * ring, per_worker[v] - (1 if v == me else 0))
                    for v in range(workers)
                    if per_worker[v] - (1 if v == me else 0) > 0
                )
            senders.append((plan.sockets[k], plan.heads[k], k, expected))
        sender_count = len(senders)
        if (window or 0) <= 0 and (rate or 0.0) <= 0.0:
            sender_count = 0
        # Closed loop, per sender k: (sender's worker's sender count, k's position, acks offset).
        where: list[tuple[int, int, int]] = []
        if closed:
            where = [
                (plan.senders_in[plan.worker_of[k]], plan.sender_position[k], (me * workers + plan.worker_of[k]) * ring)
                for k in range(total_members)
            ]
        touched: set[int] = set()
        pending: dict[int, tuple[int, tuple[tuple[int, int], ...]]] = {}
        pad = b"x" * size
        receive_size = size + RECV_SLACK
        match = MESSAGE.match
        hist = result.latency_hist

        sent = sent_total = expected_copies = send_errors = refused = 0
        delivered = in_window = valid = late = duplicates = reordered = misdelivered = wrong_len = unparsed = 0
        latency_sum = latency_max = 0
        number = 0  # this worker's message counter; sender = senders[number % count]
        cpu_start = cpu_end = 0.0
        wall_start = wall_end = 0
        measuring = finished = False
        next_progress = 0
        now = monotonic_ns()
        while now < stop_ns:
            if not measuring and now >= measure_ns:
                measuring = True
                cpu_start, wall_start = time.process_time(), now
            if measuring and not finished and now >= end_ns:
                finished = True
                cpu_end, wall_end = time.process_time(), now
            timeout = min(stop_ns - now, TICK_NS)
            for moment in (start_ns, measure_ns, end_ns):
                if now < moment:
                    timeout = min(timeout, moment - now)

            if now < end_ns and now >= start_ns and sender_count:
                if window is not None:
                    if pending:
                        # Retire messages whose copies have all arrived, or that expired.
                        retired = []
                        unfinished = 0
                        for key, (sent_at, expected) in pending.items():
                            slot = key & mask
                            tag = key << 16
                            for offset, copies in expected:
                                if acks[offset + slot] != tag | copies:
                                    break
                            else:
                                retired.append(key)
                                continue
                            if now - sent_at > expire_ns:
                                retired.append(key)
                                continue
                            unfinished += 1
                            if unfinished >= SCAN_LIMIT:
                                break
                        for key in retired:
                            del pending[key]
                    budget = window - len(pending)
                else:
                    assert rate is not None
                    due = int((now - start_ns) * rate / 1e9)
                    budget = min(due - number, SEND_BURST)
                for _ in range(max(0, budget)):
                    sock, head, k, expected = senders[number % sender_count]
                    seq = number // sender_count + 1
                    sent_at = monotonic_ns()
                    text = b"seq=%d t=%d s=%d " % (seq, sent_at, k)
                    try:
                        sock.send(head + text + pad[: size - len(text)])
                    except ConnectionRefusedError:
                        refused += 1
                        number += 1
                        continue
                    except OSError:
                        send_errors += 1
                        number += 1
                        continue
                    if window is not None:
                        pending[number] = (sent_at, expected)
                    number += 1
                    sent_total += 1
                    if measure_ns <= sent_at < end_ns:
                        sent += 1
                        expected_copies += fan
                now = monotonic_ns()
                if window is not None:
                    if pending and len(pending) >= window:
                        oldest = next(iter(pending.values()))[0]
                        timeout = min(timeout, max(0, oldest + expire_ns - now))
                    elif not pending:
                        # Every send failed (refused): try again soon, without spinning.
                        timeout = min(timeout, 1_000_000)
                else:
                    assert rate is not None
                    next_due = start_ns + int((number + 1) * 1e9 / rate)
                    timeout = min(timeout, max(0, next_due - now))

            for selected, _events in select(max(0, timeout) / 1e9):
                receiver = selected.data
                if receiver is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(selected.fd, 65536)
                    continue
                receiving: socket.socket = selected.fileobj  # type: ignore[assignment]
                receiver_k, room, seen = receiver
                for _ in range(RECV_BATCH):
                    try:
                        data = receiving.recv(receive_size)
                    except (BlockingIOError, InterruptedError):
                        break
                    except ConnectionRefusedError:
                        refused += 1
                        continue
                    arrived = monotonic_ns()
                    colon = data.find(b": ", 0, PREFIX_LIMIT)
                    begin = colon + 2 if colon >= 0 else 0
                    parsed = match(data, begin)
                    if parsed is None:
                        unparsed += 1  # notices and anything else not ours
                        continue
                    if len(data) - begin != size:
                        wrong_len += 1
                        continue
                    seq = int(parsed[1])
                    sent_at = int(parsed[2])
                    sender = int(parsed[3])
                    if sender >= total_members or sender == receiver_k or sender // members != room or seq < 1:
                        misdelivered += 1
                        continue
                    state = seen.get(sender, 0)
                    highest = state >> 64
                    if seq > highest:
                        gap = seq - highest
                        seen[sender] = (seq << 64) | ((((state & MASK64) << gap) | 1) & MASK64 if gap < 64 else 1)
                    else:
                        gap = highest - seq
                        # Beyond the bitmask, an old seq is taken for a duplicate: it
                        # would be far past its expiry anyway.
                        if gap >= 64 or (state >> gap) & 1:
                            duplicates += 1
                            continue
                        seen[sender] = state | (1 << gap)
                        reordered += 1
                    latency = arrived - sent_at
                    if latency < 0:
                        misdelivered += 1
                        continue
                    if latency > expire_ns:
                        late += 1
                        continue
                    valid += 1
                    if measure_ns <= arrived < end_ns:
                        in_window += 1
                    if measure_ns <= sent_at < end_ns:
                        delivered += 1
                        micros = latency // 1000
                        if micros >= FINE_BUCKETS_US:
                            shift = micros.bit_length() - FINE_SHIFT
                            micros = (micros >> shift) << shift
                        hist[micros] = hist.get(micros, 0) + 1
                        latency_sum += latency
                        if latency > latency_max:
                            latency_max = latency
                    if closed:
                        count, position, offset = where[sender]
                        key = (seq - 1) * count + position
                        cell = offset + (key & mask)
                        value = acks[cell]
                        acks[cell] = value + 1 if value >> 16 == key else (key << 16) | 1
                        touched.add(plan.worker_of[sender])
            if touched:
                for worker in touched:
                    fd = wake_write[worker]
                    if worker != me and fd is not None:
                        # A full pipe means the sender has wake-ups pending anyway.
                        with contextlib.suppress(BlockingIOError):
                            os.write(fd, b"!")
                touched.clear()
            now = monotonic_ns()
            if now >= next_progress:
                progress[2 * me] = sent_total
                progress[2 * me + 1] = valid
                next_progress = now + TICK_NS
        selector.close()
        if not finished:
            cpu_end, wall_end = time.process_time(), now
        progress[2 * me] = sent_total
        progress[2 * me + 1] = valid

        result.sent = sent
        result.sent_total = sent_total
        result.expected = expected_copies
        result.delivered = delivered
        result.received_in_window = in_window
        result.late = late
        result.duplicates = duplicates
        result.reordered = reordered
        result.misdelivered = misdelivered
        result.wrong_len = wrong_len
        result.unparsed = unparsed
        result.send_errors = send_errors
        result.refused = refused
        result.latency_sum_ns = latency_sum
        result.latency_max_ns = latency_max
        result.cpu_s = cpu_end - cpu_start
        result.cpu_interval_s = (wall_end - wall_start) / 1e9
