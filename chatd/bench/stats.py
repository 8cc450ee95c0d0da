"""
The arithmetic of chatd-bench, kept free of I/O so that it can be tested on its
own: latency histograms and percentiles, rates, loss, CPU shares from /proc
text, the generator-saturation rule, and the text table and JSON renderings
of a run's report (the report's fields are described in C{chatd.bench}).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

FINE_BUCKETS_US = 2048
"""Latencies below this many µs are kept to the µs; above, to 11 significant bits (< 0.1 %)."""
SATURATION_PCT = 90.0
"""A worker (one thread, so at most one core) this busy may be what limits the run."""
RATE_SHORTFALL = 0.95
"""In open loop, offering less than this share of the asked rate means the generator fell behind."""
MACHINE_BUSY_PCT = 95.0
SHARED_MACHINE_PCT = 80.0
"""All CPUs this busy, and the server under SATURATION_PCT: the generator took the CPU the server lacked."""
LOSS_WARNING_PCT = 1.0


def latency_bucket_us(latency_ns: int) -> int:
    """
    The histogram bucket of a latency: its lower bound in µs.

    Exact to the µs up to 2 ms; above, the low bits are dropped so that a
    bucket is at most 0.1 % wide. A run of any length then needs at most some
    twenty thousand buckets, where a list of every sample would grow with it.
    """
    micros = max(0, latency_ns) // 1000
    if micros < FINE_BUCKETS_US:
        return micros
    shift = micros.bit_length() - FINE_BUCKETS_US.bit_length()
    return (micros >> shift) << shift


def merge_histograms(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            merged[bucket] = merged.get(bucket, 0) + count
    return merged


def percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
    """
    The nearest-rank percentile (C{fraction} from 0 to 1) of a bucket histogram:
    the smallest bucket at or below which at least that share of the samples
    lie. C{None} without samples.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is not between 0 and 1")
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return float(bucket)
    raise AssertionError("unreachable: the ranks add up to the total")


def per_second(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def loss_percent(expected: int, delivered: int) -> float:
    """Share of the expected copies that did not arrive in time, in % (0 when nothing was expected)."""
    if expected <= 0:
        return 0.0
    return 100.0 * max(0, expected - delivered) / expected


def proc_stat_ticks(stat_text: str) -> int:
    """
    utime + stime, in clock ticks, from the text of /proc/PID/stat.

    The command name (field 2) is in parentheses and may hold spaces and
    parentheses itself, so the fields are counted after the last ")".
    """
    rest = stat_text[stat_text.rindex(")") + 1 :].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def cpu_percent(ticks_before: int, ticks_after: int, ticks_per_second: float, seconds: float) -> float:
    """CPU used over a wall-clock interval, in % of one core."""
    if seconds <= 0 or ticks_per_second <= 0:
        return 0.0
    return 100.0 * (ticks_after - ticks_before) / ticks_per_second / seconds


def machine_cpu_times(proc_stat_text: str) -> tuple[int, int]:
    """(busy, total) ticks summed over all CPUs, from the text of /proc/stat; idle and iowait are not busy."""
    for line in proc_stat_text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(value) for value in parts[1:9]]
            total = sum(values)
            return total - values[3] - values[4], total
    raise ValueError("no aggregate cpu line in /proc/stat")


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    if total <= 0:
        return None
    return 100.0 * (after[0] - before[0]) / total


def saturation(
    worker_cpu_pct: Sequence[float],
    cores: int,
    rate: float | None,
    sent_per_s: float,
    server_cpu_pct: float | None = None,
    machine_busy_pct: float | None = None,
) -> tuple[bool, str | None]:
    """
    Whether the generator may itself have limited the run, and why.

    Each worker is one thread, so one at or above 90 % of a core limits its
    share of the load; the workers together near 100 % of the cores they could
    use (fewer when there are fewer CPUs than workers) limit the whole; in
    open loop, offering clearly less than the asked rate means the generator
    fell behind; and a machine whose CPUs are nearly all busy while the server
    uses well under a core means the generator, sharing the machine, took
    the CPU the server could have used.
    """
    reasons: list[str] = []
    busiest = max(worker_cpu_pct, default=0.0)
    total = sum(worker_cpu_pct)
    usable = max(1, min(cores, len(worker_cpu_pct)))
    if busiest >= SATURATION_PCT:
        reasons.append(f"a worker process used {busiest:.0f} % of a core")
    elif total >= SATURATION_PCT * usable:
        reasons.append(f"the workers used {total:.0f} % CPU, {total / usable:.0f} % of the {usable} cores they had")
    elif (
        server_cpu_pct is not None
        and machine_busy_pct is not None
        and server_cpu_pct < SATURATION_PCT
        and machine_busy_pct >= SHARED_MACHINE_PCT
    ):
        reasons.append(
            f"the machine's CPUs were {machine_busy_pct:.0f} % busy while the server used {server_cpu_pct:.0f} %"
            f" of a core: the workers ({total:.0f} % CPU) took the rest"
        )
    if rate is not None and rate > 0 and sent_per_s < RATE_SHORTFALL * rate:
        reasons.append(f"it offered {sent_per_s:,.0f} messages/s of the {rate:,.0f}/s asked for")
    if not reasons:
        return False, None
    return True, "; ".join(reasons) + " (use more --workers, a lighter scenario, or another machine for the generator)"


@dataclass
class WorkerResult:
    """What one worker process counted. Counts of messages and copies are of the measured window."""

    index: int
    sent: int = 0
    """Messages sent with a send time in the window."""
    sent_total: int = 0
    expected: int = 0
    """Copies the messages of C{sent} should produce: one per other member of the room."""
    delivered: int = 0
    """Copies of measured messages received within the expiry (first copies only)."""
    received_in_window: int = 0
    """Valid copies, of any message, received during the window: the throughput figure."""
    late: int = 0
    duplicates: int = 0
    reordered: int = 0
    misdelivered: int = 0
    wrong_len: int = 0
    unparsed: int = 0
    send_errors: int = 0
    refused: int = 0
    """Sends or receives that failed with "connection refused": the server's UDP port is closed."""
    latency_hist: dict[int, int] = field(default_factory=dict)
    latency_sum_ns: int = 0
    latency_max_ns: int = 0
    cpu_s: float = 0.0
    cpu_interval_s: float = 0.0

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.cpu_interval_s if self.cpu_interval_s > 0 else 0.0


COUNTERS = tuple(
    each.name
    for each in fields(WorkerResult)
    if each.name not in ("index", "latency_hist", "latency_max_ns", "cpu_s", "cpu_interval_s")
)


def combine(results: Sequence[WorkerResult]) -> WorkerResult:
    """The counters of all workers added up (index -1); CPU is kept per worker, not here."""
    total = WorkerResult(-1)
    for result in results:
        for name in COUNTERS:
            setattr(total, name, getattr(total, name) + getattr(result, name))
        total.latency_max_ns = max(total.latency_max_ns, result.latency_max_ns)
    total.latency_hist = merge_histograms(result.latency_hist for result in results)
    return total


@dataclass(frozen=True)
class RunInfo:
    """What the run was asked to do, and what the setup and the CPU probes found."""

    scenario: str
    host: str
    tcp_port: int
    udp_port: int
    rooms: int
    members: int
    window: int | None
    rate: float | None
    size: int
    workers: int
    duration_s: float
    warmup_s: float
    expire_s: float
    setup_s: float
    server_pid: int | None
    server_cpu_pct: float | None
    machine_cpu_busy_pct: float | None
    cores: int


def build_report(info: RunInfo, results: Sequence[WorkerResult], notes: Sequence[str] = ()) -> dict[str, Any]:
    """The report of a run: the JSON object C{--json} prints, which the table is rendered from."""
    total = combine(results)
    duration = info.duration_s
    sent_per_s = per_second(total.sent, duration)
    worker_cpu = [round(result.cpu_pct, 1) for result in sorted(results, key=lambda each: each.index)]
    saturated, why = saturation(
        worker_cpu, info.cores, info.rate, sent_per_s, info.server_cpu_pct, info.machine_cpu_busy_pct
    )
    hist = total.latency_hist
    samples = sum(hist.values())
    members_total = info.rooms * info.members
    warnings = list(notes)
    if saturated:
        warnings.append(f"the generator, not the server, may be the bottleneck: {why}")
    elif info.machine_cpu_busy_pct is not None and info.machine_cpu_busy_pct >= MACHINE_BUSY_PCT:
        warnings.append(
            f"the machine's CPUs were {info.machine_cpu_busy_pct:.0f} % busy: the generator and the server"
            " competed for CPU, so the figures are a lower bound"
        )
    elif (
        info.window is not None
        and info.window > 1
        and info.server_cpu_pct is not None
        and info.server_cpu_pct < SATURATION_PCT
    ):
        warnings.append(
            f"neither the server ({info.server_cpu_pct:.0f} % of a core) nor the generator was saturated: only"
            f" {info.window} messages are in flight at a time (--window); a larger window loads the server more"
        )
    if total.refused:
        warnings.append(
            f"{total.refused} sends or receives were refused: nothing listens on UDP port {info.udp_port}"
            " (wrong --udp-port, or the server stopped)"
        )
    loss = loss_percent(total.expected, total.delivered)
    if total.sent and not total.delivered:
        warnings.append("no message was delivered: check --udp-port, and that the server relays to this host")
    elif loss >= LOSS_WARNING_PCT:
        warnings.append(
            f"{loss:.1f} % of the copies were lost: the server dropped messages, or a socket buffer overflowed"
            " (chatd drops what a member sends above --messages-per-s / --message-burst / --bytes-per-s and"
            " logs the drops)"
        )
    if total.misdelivered or total.wrong_len:
        warnings.append(
            f"the server misdelivered {total.misdelivered} copies and altered the length of {total.wrong_len}"
        )

    def latency(fraction: float) -> float | None:
        return percentile(hist, fraction)

    return {
        "scenario": info.scenario,
        "host": info.host,
        "tcp_port": info.tcp_port,
        "udp_port": info.udp_port,
        "rooms": info.rooms,
        "members": info.members,
        "members_total": members_total,
        "mode": "rate" if info.rate is not None else "window",
        "window": info.window,
        "rate": info.rate,
        "size": info.size,
        "workers": info.workers,
        "duration_s": duration,
        "warmup_s": info.warmup_s,
        "expire_s": info.expire_s,
        "setup_s": round(info.setup_s, 4),
        "joins_per_s": round(per_second(members_total, info.setup_s), 1),
        "sent": total.sent,
        "sent_per_s": round(sent_per_s, 1),
        "expected": total.expected,
        "delivered": total.delivered,
        "lost": max(0, total.expected - total.delivered),
        "loss_pct": round(loss, 4),
        "delivered_per_s": round(per_second(total.received_in_window, duration), 1),
        "latency_us": {
            "p50": latency(0.5),
            "p90": latency(0.9),
            "p99": latency(0.99),
            "p999": latency(0.999),
            "max": round(total.latency_max_ns / 1000, 1) if samples else None,
            "mean": round(total.latency_sum_ns / samples / 1000, 1) if samples else None,
        },
        "late": total.late,
        "duplicates": total.duplicates,
        "reordered": total.reordered,
        "misdelivered": total.misdelivered,
        "wrong_len": total.wrong_len,
        "unparsed": total.unparsed,
        "send_errors": total.send_errors,
        "server_pid": info.server_pid,
        "server_cpu_pct": None if info.server_cpu_pct is None else round(info.server_cpu_pct, 1),
        "generator_cpu_pct": round(sum(worker_cpu), 1),
        "generator_cpu_pct_per_worker": worker_cpu,
        "machine_cpu_busy_pct": None if info.machine_cpu_busy_pct is None else round(info.machine_cpu_busy_pct, 1),
        "generator_saturated": saturated,
        "warnings": warnings,
    }


def render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False)


def _micros(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} µs"


def render_table(report: Mapping[str, Any]) -> str:
    """The report as the aligned text that chatd-bench prints by default."""
    load = (
        f"open loop at {report['rate']:,.0f} messages/s"
        if report["mode"] == "rate"
        else f"closed loop, {report['window']} in flight"
    )
    rooms = report["rooms"]
    lat = report["latency_us"]
    server_cpu = report["server_cpu_pct"]
    per_worker = ", ".join(f"{pct:.0f}" for pct in report["generator_cpu_pct_per_worker"])
    anomalies = [
        f"{name.replace('_', ' ')} {report[name]:,}"
        for name in ("late", "duplicates", "reordered", "misdelivered", "wrong_len", "unparsed", "send_errors")
        if report[name]
    ]
    rows = [
        (
            "scenario",
            f"{report['scenario']}: {rooms} room{'s' if rooms != 1 else ''} x {report['members']} members,"
            f" {load}, {report['size']}-byte messages",
        ),
        (
            "run",
            f"{report['duration_s']:g} s measured after {report['warmup_s']:g} s warm-up, {report['workers']}"
            f" worker process{'es' if report['workers'] != 1 else ''}; server {report['host']}"
            f" TCP {report['tcp_port']} / UDP {report['udp_port']}",
        ),
        (
            "setup",
            f"{report['members_total']:,} members in {report['setup_s']:.3f} s: {report['joins_per_s']:,.0f} joins/s",
        ),
        ("sent", f"{report['sent']:,} messages: {report['sent_per_s']:,.0f}/s"),
        (
            "delivered",
            f"{report['delivered_per_s']:,.0f} copies/s ({report['delivered']:,} copies of the sent messages in time)",
        ),
        (
            "lost",
            f"{report['lost']:,} of {report['expected']:,} copies: {report['loss_pct']:.3f} %"
            f" (not arrived within {report['expire_s']:g} s)",
        ),
        (
            "latency",
            f"p50 {_micros(lat['p50'])}, p99 {_micros(lat['p99'])}, p99.9 {_micros(lat['p999'])}"
            f" (max {_micros(lat['max'])})",
        ),
        (
            "server CPU",
            "unknown (give --server-pid)"
            if server_cpu is None
            else f"{server_cpu:.1f} % of one core (pid {report['server_pid']})",
        ),
        ("generator CPU", f"{report['generator_cpu_pct']:.1f} % (per worker: {per_worker})"),
    ]
    if report["machine_cpu_busy_pct"] is not None:
        rows.append(("machine CPU", f"{report['machine_cpu_busy_pct']:.0f} % busy over all CPUs"))
    rows.append(("anomalies", ", ".join(anomalies) if anomalies else "none"))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    lines.extend(f"warning: {warning}" for warning in report["warnings"])
    return "\n".join(lines)


def progress_setup(done: int, total: int) -> str:
    return f"setting up rooms: {done}/{total} members"


def progress_sending(elapsed: float, planned: float, delivered: int, warming: bool) -> str:
    phase = "warming up" if warming else "sending"
    return f"{phase}: {elapsed:.1f}/{planned:.1f} s, {delivered:,} copies delivered so far"
