"""
How many members one chatd holds: join N native members that keep their TCP
control connections open, and measure the time it took and the server's
resident memory per member.

    python -m chatd.bench.members --count 10000 --tcp-port 9001 --server-pid PID

Members join rooms of C{--room-size} (the first of each room creates it), in
the native dialect, so the server keeps every connection as the member's
presence. The server needs room for them: --max-connections and
--max-connections-per-host above N (loopback is exempt from the connection
rate limit). The members only hold their connections; nothing is sent on UDP,
so the run must end well within the server's idle timeout. Standard library
only, loopback only unless --allow-remote.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from chatd.bench.setup_rooms import OP_CREATE, OP_JOIN, STATE_ACKNOWLEDGE, STATE_COMPLETE, request_frame, split_frame


@dataclass(frozen=True, slots=True)
class MembersReport:
    members: int
    rooms: int
    join_seconds: float
    joins_per_s: float
    server_rss_before_kib: int | None
    server_rss_after_kib: int | None
    rss_per_member_bytes: float | None


def rss_kib(pid: int) -> int | None:
    """The resident set size of process C{pid} in KiB, from /proc; None where unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def raise_own_open_files(needed: int) -> None:
    """This process holds one socket per member: ask for enough descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed + 64
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def enter(host: str, port: int, room: str, user: str, create: bool, timeout: float) -> socket.socket:
    """One native member in C{room}, its TCP connection left open; raises on any refusal."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        payload = json.dumps({"chatd": 1, "username": user}).encode("utf-8")
        sock.sendall(request_frame(room, OP_CREATE if create else OP_JOIN, payload))
        buffer = bytearray()
        while True:
            frame = split_frame(buffer)
            if frame is None:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"the server closed {user}'s connection")
                buffer += chunk
                continue
            _, state, body, length = frame
            del buffer[:length]
            if state == STATE_ACKNOWLEDGE and (not body or body[0] != 0):
                raise ConnectionError(f"{user} refused: {body[1:].decode('utf-8', 'replace') or body[:1].hex()}")
            if state == STATE_COMPLETE:
                return sock
    except BaseException:
        sock.close()
        raise


def run(
    host: str, port: int, count: int, room_size: int, server_pid: int | None, parallel: int, timeout: float
) -> MembersReport:
    raise_own_open_files(count)
    prefix = f"mem{int(time.time()) % 100000}-"
    rooms = [f"{prefix}{start // room_size}" for start in range(0, count, room_size)]
    before = rss_kib(server_pid) if server_pid else None
    held: list[socket.socket] = []
    started = time.monotonic()
    try:
        # Creators first, so that every join finds its room.
        hosts = [(room, f"h{index}") for index, room in enumerate(rooms)]
        with ThreadPoolExecutor(parallel) as pool:
            held += pool.map(lambda job: enter(host, port, job[0], job[1], True, timeout), hosts)
            joiners = [
                (rooms[index // room_size], f"m{index}")
                for index in range(count)
                if index % room_size  # the room's first member is its host
            ]
            held += pool.map(lambda job: enter(host, port, job[0], job[1], False, timeout), joiners)
        elapsed = time.monotonic() - started
        after = rss_kib(server_pid) if server_pid else None
    finally:
        for sock in held:
            sock.close()
    per_member = (after - before) * 1024 / count if before is not None and after is not None else None
    return MembersReport(count, len(rooms), elapsed, count / elapsed, before, after, per_member)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chatd.bench.members", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tcp-port", type=int, default=9001)
    parser.add_argument("--count", type=int, default=10000, help="members to join (default 10000)")
    parser.add_argument("--room-size", type=int, default=100, help="members per room (default 100)")
    parser.add_argument("--server-pid", type=int, help="the server's PID, for its resident memory")
    parser.add_argument("--parallel", type=int, default=32, help="joins in flight (default 32)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per join (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--allow-remote", action="store_true", help="allow a host that is not loopback")
    arguments = parser.parse_args(argv)
    if arguments.count < 1 or not 1 <= arguments.room_size <= arguments.count:
        parser.error("need --count >= 1 and 1 <= --room-size <= --count")
    if not arguments.allow_remote and arguments.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("this is a load generator: give --allow-remote to aim it beyond loopback")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        report = run(
            arguments.host,
            arguments.tcp_port,
            arguments.count,
            arguments.room_size,
            arguments.server_pid,
            arguments.parallel,
            arguments.timeout,
        )
    except (OSError, ConnectionError) as error:
        print(f"chatd-bench members: {error}", file=sys.stderr)
        return 1
    if arguments.json:
        print(json.dumps(asdict(report)))
    else:
        print(f"{report.members} members in {report.rooms} rooms joined in {report.join_seconds:.2f} s")
        print(f"  {report.joins_per_s:,.0f} joins/s")
        if report.rss_per_member_bytes is not None:
            print(
                f"  server RSS {report.server_rss_before_kib:,} KiB -> {report.server_rss_after_kib:,} KiB:"
                f" {report.rss_per_member_bytes:,.0f} bytes per member"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
