"""
What chatd-bench reads of the machine: the CPU time of the server process and
of the whole machine from C{/proc}, the CPUs this process may use, and the
limit on open files (raised for the member sockets).
"""

from __future__ import annotations

import os
import resource

from chatd.bench import stats
from chatd.bench.errors import BenchError


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
