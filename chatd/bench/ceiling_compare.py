"""
The comparison of the Python ceiling relay with the C reference relay of the
benchmark kit (../shared/bench: relay_c and relayload), side by side:

    python -m chatd.bench.ceiling compare --bench-dir DIR [--scenario room10,rooms100x5,room200] [--reps 3]

It runs relayload against relay_c and against the Python relay, one after the
other (the order alternates between repetitions), each relay pinned to one CPU
and relayload to another, and prints delivered copies per second, the relays'
CPU split into user time (the interpreter's share) and system time (the
kernel's), and the ratio Python / C.

This module holds the runs (the relay and relayload started, timed and
stopped; the wait for a quiet machine; the relay's CPU sampled from /proc),
their progress lines, tables and notes, and the options of C{compare}
(C{chatd.bench.ceiling} parses the command line and hands C{compare} here). It
starts the Python relay as a command, C{python -m chatd.bench.ceiling relay},
and does not import it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from chatd.bench import stats
from chatd.bench.errors import Interrupted, interrupt
from chatd.bench.probes import machine_times, read_text

RELAY_MODULE: Final = "chatd.bench.ceiling"
"""Run as C{python -m RELAY_MODULE relay --udp-port P --ctl-port C}: the Python relay."""
HOST: Final = "127.0.0.1"
"""Where both relays serve (relay_c's address), and so where free ports are looked for."""


@dataclass(frozen=True)
class Scenario:
    rooms: int
    members: int
    window: int


SCENARIOS: Final = {
    "pingpong": Scenario(1, 2, 1),
    "room10": Scenario(1, 10, 16),
    "rooms100x5": Scenario(100, 5, 16),
    "room200": Scenario(1, 200, 8),
}
"""As the kit's compare.py defines them; 100-byte text messages (relayload's default size)."""
DEFAULT_SCENARIOS: Final = "room10,rooms100x5,room200"
C_RELAY: Final = "C reference"
PYTHON_RELAY: Final = "Python ceiling"
START_TIMEOUT: Final = 15.0
"""Seconds for a relay to listen on its control port."""
STOP_GRACE: Final = 3.0
GENERATOR_GRACE: Final = 30.0
"""Seconds relayload may take beyond its warm-up and measured time."""
SETTLE: Final = 0.3
"""Seconds allowed for relayload's setup: the relay's CPU is sampled from this long into the measured window."""
QUIET_CORES: Final = 0.25
DASH: Final = "\N{EN DASH}"


class CompareError(Exception):
    """A run that could not be made: reported in its row, the other runs go on."""


def proc_cpu_ticks(stat_text: str) -> tuple[int, int]:
    """(utime, stime) in clock ticks from the text of /proc/PID/stat (fields 14 and 15, after the command name)."""
    rest = stat_text[stat_text.rindex(")") + 1 :].split()
    return int(rest[11]), int(rest[12])


def tcp_listening(proc_net_tcp: str, port: int) -> bool:
    """Whether /proc/net/tcp shows a socket listening on 127.0.0.1:C{port} (or on every address)."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1] in wanted and fields[3] == "0A":
            return True
    return False


def median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def cpu_ticks(pid: int) -> tuple[int, int] | None:
    text = read_text(f"/proc/{pid}/stat")
    return None if text is None else proc_cpu_ticks(text)


def busy_cores(interval: float = 0.4) -> float | None:
    """Cores the whole machine kept busy over C{interval} seconds."""
    before = machine_times()
    time.sleep(interval)
    after = machine_times()
    if before is None or after is None:
        return None
    busy = stats.busy_percent(before, after)
    return None if busy is None else busy * (os.cpu_count() or 1) / 100


def wait_quiet(limit: float) -> float | None:
    """Wait, at most C{limit} seconds, until other processes keep less than QUIET_CORES busy."""
    deadline = time.monotonic() + limit
    busy = busy_cores()
    while busy is not None and busy > QUIET_CORES and time.monotonic() < deadline:
        busy = busy_cores()
    return busy


@dataclass(frozen=True)
class CompareConfig:
    bench_dir: Path
    scenarios: tuple[str, ...]
    reps: int
    duration: float
    warmup: float
    cpus: tuple[int, int] | None
    """(generator, relay), or None: not pinned."""
    quiet_wait: float
    json: bool


def python_environment() -> dict[str, str]:
    """This process's environment, with this chatd importable and output block-buffered as a daemon's."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def relay_command(relay: str, bench_dir: Path, udp_port: int, ctl_port: int) -> list[str]:
    ports = ["--udp-port", str(udp_port), "--ctl-port", str(ctl_port)]
    if relay == C_RELAY:
        return [str(bench_dir / "build" / "relay_c"), *ports]
    return [sys.executable, "-m", RELAY_MODULE, "relay", *ports]


def pin(pid: int, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


def stop(process: subprocess.Popen[Any]) -> int | None:
    """SIGTERM by PID, SIGKILL after STOP_GRACE; the exit status (negative: killed by that signal)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_GRACE)
    return process.returncode


def wait_until(process: subprocess.Popen[Any], moment: float) -> bool:
    """Sleep until C{moment} (monotonic); False if C{process} ended first."""
    try:
        process.wait(max(0.0, moment - time.monotonic()))
    except subprocess.TimeoutExpired:
        return True
    return False


def tail(stream: IO[bytes], size: int = 400) -> str:
    stream.seek(0)
    return stream.read().decode("utf-8", "replace")[-size:].strip()


def run_once(config: CompareConfig, relay: str, name: str, rep: int) -> dict[str, Any]:
    """One relay against relayload in one scenario: the run's record, with C{error} set if it failed."""
    scenario = SCENARIOS[name]
    generator_cpu, relay_cpu = config.cpus if config.cpus is not None else (None, None)
    record: dict[str, Any] = {"relay": relay, "scenario": name, "rep": rep, "error": None}
    record["busy_cores_before"] = wait_quiet(config.quiet_wait) if config.quiet_wait > 0 else None
    udp_port, ctl_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    with tempfile.TemporaryFile() as relay_log:
        relay_process = subprocess.Popen(
            relay_command(relay, config.bench_dir, udp_port, ctl_port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=relay_log,
            env=python_environment(),
        )
        generator: subprocess.Popen[str] | None = None
        try:
            pin(relay_process.pid, relay_cpu)
            deadline = time.monotonic() + START_TIMEOUT
            while not tcp_listening(read_text("/proc/net/tcp") or "", ctl_port):
                if relay_process.poll() is not None or time.monotonic() > deadline:
                    raise CompareError(f"the relay did not listen on its control port: {tail(relay_log)}")
                time.sleep(0.02)
            command = [str(config.bench_dir / "build" / "relayload"), "--relay-port", str(udp_port)]
            command += ["--ctl-port", str(ctl_port), "--rooms", str(scenario.rooms)]
            command += ["--members", str(scenario.members), "--window", str(scenario.window)]
            command += ["--duration", f"{config.duration:g}", "--warmup", f"{config.warmup:g}", "--text"]
            command += ["--relay-pid", str(relay_process.pid)]
            launched = time.monotonic()
            generator = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            pin(generator.pid, generator_cpu)
            # The relay's user and system time over the measured window, SETTLE into it up to its end.
            sample_start = launched + config.warmup + SETTLE
            sample_end = launched + config.warmup + config.duration
            if wait_until(generator, sample_start):
                before, started = cpu_ticks(relay_process.pid), time.monotonic()
                if wait_until(generator, sample_end):
                    after, ended = cpu_ticks(relay_process.pid), time.monotonic()
                    if before is not None and after is not None:
                        hertz = float(os.sysconf("SC_CLK_TCK"))
                        seconds = ended - started
                        record["relay_user_pct"] = stats.cpu_percent(before[0], after[0], hertz, seconds)
                        record["relay_system_pct"] = stats.cpu_percent(before[1], after[1], hertz, seconds)
            try:
                output, errors = generator.communicate(
                    timeout=max(0.0, sample_end - time.monotonic()) + GENERATOR_GRACE
                )
            except subprocess.TimeoutExpired:
                raise CompareError("relayload did not finish in time") from None
            if generator.returncode != 0:
                raise CompareError(f"relayload exited with status {generator.returncode}: {errors.strip()[-300:]}")
            try:
                record["load"] = json.loads(output.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise CompareError(f"relayload printed no JSON line: {output.strip()[-300:]!r}") from None
        except CompareError as error:
            record["error"] = str(error)
        finally:
            if generator is not None and generator.poll() is None:
                generator.kill()
                generator.wait(STOP_GRACE)
            record["relay_exit"] = stop(relay_process)
        if record["relay_exit"] != 0 and record["error"] is None:
            record["error"] = f"the relay exited with status {record['relay_exit']}: {tail(relay_log)}"
    return record


def run_line(record: dict[str, Any]) -> str:
    """One run, as a progress line."""
    what = f"{record['relay']:>14} {record['scenario']:<10}"
    if record["error"]:
        return f"{what} ERROR {record['error']}"
    load = record["load"]
    return (
        f"{what} delivered/s {load['delivered_per_s']:>9,.0f}  loss {load['loss_pct']:.3f}%"
        f"  relay CPU {load['relay_cpu_pct']:.0f}% (user {fmt(record.get('relay_user_pct'))}%,"
        f" system {fmt(record.get('relay_system_pct'))}%)  gen CPU {load['gen_cpu_pct']:.0f}%"
    )


def fmt(value: float | None, pattern: str = ",.0f") -> str:
    return DASH if value is None else format(value, pattern)


def summary(records: Sequence[dict[str, Any]], relay: str) -> dict[str, Any] | None:
    """Medians (and the range of delivered/s) of one relay's successful runs; None if there are none."""
    done = [record for record in records if record["relay"] == relay and not record["error"]]
    if not done:
        return None
    delivered = [float(record["load"]["delivered_per_s"]) for record in done]
    return {
        "runs": len(done),
        "delivered": statistics.median(delivered),
        "min": min(delivered),
        "max": max(delivered),
        "relay_cpu": median(record["load"]["relay_cpu_pct"] for record in done),
        "user": median(record.get("relay_user_pct") for record in done),
        "system": median(record.get("relay_system_pct") for record in done),
        "generator_cpu": median(record["load"]["gen_cpu_pct"] for record in done),
    }


def notes(records: Sequence[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for record in records:
        tag = f"{record['relay']} rep {record['rep']}"
        if record["error"]:
            found.append(f"{tag}: ERROR {record['error']}")
            continue
        load = record["load"]
        if load["loss_pct"] > 0:
            found.append(f"{tag}: {load['loss_pct']:.3f} % of copies lost")
        if load.get("unparsed") or load.get("bad") or load.get("wrong_len"):
            found.append(
                f"{tag}: {load.get('unparsed', 0)} unparsed, {load.get('bad', 0)} misdelivered,"
                f" {load.get('wrong_len', 0)} of the wrong length"
            )
        if load["relay_cpu_pct"] < 90 and load["window"] > 1:
            found.append(f"{tag}: relay CPU only {load['relay_cpu_pct']:.0f} %: not saturated")
        if load["gen_cpu_pct"] > 97:
            found.append(f"{tag}: generator at {load['gen_cpu_pct']:.0f} % CPU: it may be the limit")
        foreign = sum(load.get("cpu_busy_pct", [])) - load["relay_cpu_pct"] - load["gen_cpu_pct"]
        if foreign > 30:
            found.append(f"{tag}: other processes used {foreign:.0f} % of a core: noisy run")
    return found


def render_table(name: str, records: Sequence[dict[str, Any]], duration: float) -> str:
    """The markdown table of one scenario: medians per relay, and Python / C."""
    scenario = SCENARIOS[name]
    layout = f"{scenario.rooms} room{'s' if scenario.rooms > 1 else ''} x {scenario.members} members"
    lines = [
        f"### {name}: {layout} (window {scenario.window}; 100-byte text messages; {duration:g} s measured per run;"
        " medians of the runs)",
        "",
        f"| relay | runs | delivered/s | min{DASH}max | relay CPU % | user % | system % | generator CPU % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summaries = {relay: summary(records, relay) for relay in (C_RELAY, PYTHON_RELAY)}
    for relay, found in summaries.items():
        if found is None:
            lines.append(f"| {relay} | 0 |" + f" {DASH} |" * 6)
            continue
        lines.append(
            f"| {relay} | {found['runs']} | {found['delivered']:,.0f} | {found['min']:,.0f}{DASH}{found['max']:,.0f}"
            f" | {fmt(found['relay_cpu'])} | {fmt(found['user'])} | {fmt(found['system'])}"
            f" | {fmt(found['generator_cpu'])} |"
        )
    c, python = summaries[C_RELAY], summaries[PYTHON_RELAY]
    if c is not None and python is not None and c["delivered"] > 0:
        lines.append(f"| **Python ÷ C** | | **{python['delivered'] / c['delivered']:.2f}** | | | | | |")
    found_notes = notes(records)
    if found_notes:
        lines += ["", "Notes:", *(f"- {note}" for note in found_notes)]
    return "\n".join(lines)


def compare(config: CompareConfig) -> tuple[dict[str, list[dict[str, Any]]], bool]:
    """Every run, by scenario, and whether all of them were made (False when interrupted)."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in config.scenarios}
    started = time.monotonic()
    try:
        for rep in range(config.reps):
            for name in config.scenarios:
                order = (C_RELAY, PYTHON_RELAY) if rep % 2 == 0 else (PYTHON_RELAY, C_RELAY)
                for relay in order:
                    record = run_once(config, relay, name, rep)
                    results[name].append(record)
                    elapsed = time.monotonic() - started
                    print(f"[{elapsed:5.0f} s, rep {rep}] {run_line(record)}", file=sys.stderr, flush=True)
    except (KeyboardInterrupt, Interrupted):
        return results, False
    return results, True


def parse_cpus(text: str) -> tuple[int, int]:
    try:
        generator, relay = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not GEN_CPU,RELAY_CPU") from None
    return generator, relay


def add_arguments(runs: argparse.ArgumentParser) -> None:
    """The options of the C{compare} subcommand, on its parser."""
    runs.add_argument("--bench-dir", type=Path, required=True, help="a built copy of the kit (build/relay_c, ...)")
    runs.add_argument(
        "--scenario",
        default=DEFAULT_SCENARIOS,
        help=f"comma list of {', '.join(SCENARIOS)} (default {DEFAULT_SCENARIOS})",
    )
    runs.add_argument("--reps", type=int, default=3, help="repetitions; each runs both relays (3)")
    runs.add_argument("--duration", type=float, default=3.0, help="seconds measured per run (3, at most 20)")
    runs.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (1, at most 5)")
    runs.add_argument("--cpus", type=parse_cpus, default=(0, 1), help="GEN_CPU,RELAY_CPU to pin to (0,1)")
    runs.add_argument("--no-pin", action="store_true", help="do not pin the processes")
    runs.add_argument(
        "--quiet-wait", type=float, default=10.0, help="seconds to wait for a quiet machine before each run (10)"
    )
    runs.add_argument("--json", action="store_true", help="print the raw runs as one JSON object")


def make_compare_config(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> CompareConfig:
    names = tuple(arguments.scenario.split(","))
    for name in names:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r} (choose from {', '.join(SCENARIOS)})")
    for program in ("relay_c", "relayload"):
        if not os.access(arguments.bench_dir / "build" / program, os.X_OK):
            parser.error(f"{arguments.bench_dir}/build/{program} is missing: build the kit (make) first")
    if arguments.reps < 1:
        parser.error("--reps must be at least 1")
    if not 0.5 <= arguments.duration <= 20:
        parser.error("--duration must be from 0.5 to 20 s")
    if not 0 <= arguments.warmup <= 5:
        parser.error("--warmup must be from 0 to 5 s")
    pinned = not arguments.no_pin and (os.cpu_count() or 1) >= 2
    if pinned and not set(arguments.cpus) <= os.sched_getaffinity(0):
        parser.error(f"--cpus {arguments.cpus[0]},{arguments.cpus[1]}: not CPUs this process may run on")
    return CompareConfig(
        bench_dir=arguments.bench_dir,
        scenarios=names,
        reps=arguments.reps,
        duration=arguments.duration,
        warmup=arguments.warmup,
        cpus=arguments.cpus if pinned else None,
        quiet_wait=arguments.quiet_wait,
        json=arguments.json,
    )


def run_compare(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    """The C{compare} subcommand, from its parsed options: every run, then the tables (or JSON); the exit status."""
    config = make_compare_config(parser, arguments)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        results, complete = compare(config)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not complete:
        print(f"{parser.prog}: interrupted; partial results follow", file=sys.stderr)
    if config.json:
        print(json.dumps({"complete": complete, "runs": [record for name in results for record in results[name]]}))
    else:
        print("\n\n".join(render_table(name, results[name], config.duration) for name in config.scenarios))
    return 0 if complete else 130
