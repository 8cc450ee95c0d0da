"""
chatd-attack (C{python -m chatd.bench.attack}): attack a live chatd the way an
adversary would, one attack at a time, and measure what each costs the
daemon and its legitimate users:

 - the daemon's RSS (VmRSS of /proc/PID/status, with C{--server-pid}) before
   the attack, its peak during it, right after it and after its cleanup;
 - the delivery % of a legitimate pair: two members of their own room, from
   their own address (127.0.0.2), one sending numbered messages at
   C{--legit-rate} per second during the attack, the other counting what
   arrives (received / sent, after a drain wait of at most C{--drain} s);
 - the attack's own counters (answers, refusals, closes, bytes...).

The attackers use other loopback addresses (127.0.0.3, 127.0.0.4, and
127.0.1.x for the presence-churn members), so that a daemon started with
C{--limit-loopback} applies its per-address limits to them and not to the
legitimate pair. Only loopback is ever contacted. Every attack is bounded
in count and time and stops by itself; each cleans up its rooms after.

Attacks (C{--attack}, comma-separated; default all): C{pipelined},
C{never-reads}, C{invitations}, C{presence-churn}, C{room-squat},
C{garbage}, C{forgery}, C{password-creates}; their counters are described
in C{chatd.bench.attack_tcp} and C{chatd.bench.attack_floods}.

Unlike the rest of chatd.bench, which imports nothing of chatd so that it can
load any server of the family, this tool is a chatd client like chatd-chat:
the native legitimate pair and the forgery use chatd's pure client-side
codecs (C{chatd.protocol.seal}, C{chatd.protocol.datagrams}, C{chatd.protocol.errors}) to seal, open and
imitate sealed datagrams exactly as docs/protocol.md describes them. It
imports nothing of the daemon (no Twisted).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from chatd.bench.arguments import port_number, positive, positive_int
from chatd.bench.attack_floods import Forgery, Garbage, PasswordCreates, RoomSquat
from chatd.bench.attack_legit import LEGIT_ADDRESS, Delivery, LegitPair, PairError, make_pair
from chatd.bench.attack_tcp import Attack, Invitations, NeverReads, Pipelined, PresenceChurn, unique
from chatd.bench.attack_wire import ExchangeError, Target, rss_kb

PROG = "python -m chatd.bench.attack"
ATTACKS: dict[str, Callable[[], Attack]] = {
    "pipelined": Pipelined,
    "never-reads": NeverReads,
    "invitations": Invitations,
    "presence-churn": PresenceChurn,
    "room-squat": RoomSquat,
    "garbage": Garbage,
    "forgery": Forgery,
    "password-creates": PasswordCreates,
}
ATTACKER = "127.0.0.3"
BYSTANDER = "127.0.0.4"
SETTLE = 0.5
"""Seconds after a cleanup before the retained RSS is read: the daemon needs a moment to close what was closed."""


@dataclass
class AttackReport:
    attack: str
    legit_dialect: str
    duration_s: float
    rss_before_kb: int | None = None
    rss_peak_kb: int | None = None
    rss_after_kb: int | None = None
    rss_end_kb: int | None = None
    legit_sent: int = 0
    legit_received: int = 0
    delivery_pct: float | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def delivery_percent(delivery: Delivery) -> float | None:
    percent = delivery.percent
    return None if percent is None else round(percent, 1)


class RssSampler(threading.Thread):
    """The daemon's highest RSS, read every INTERVAL s until stopped."""

    INTERVAL = 0.1

    def __init__(self, pid: int | None) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.peak: int | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        while self.pid is not None:
            value = rss_kb(self.pid)
            if value is not None and (self.peak is None or value > self.peak):
                self.peak = value
            if self.stopped.wait(self.INTERVAL):
                return


def run_attack(attack: Attack, target: Target, options: argparse.Namespace) -> AttackReport:
    dialect = "native" if attack.needs_native else options.legit_dialect
    report = AttackReport(attack.name, dialect, options.duration)
    report.rss_before_kb = rss_kb(target.server_pid)
    pair: LegitPair | None = None
    sampler = RssSampler(target.server_pid)
    try:
        pair = make_pair(dialect, target.tcp_port, target.udp_port, unique("legit"))
        target.sender_key_id = pair.sender_key_id
        attack.prepare(target)
        measured: list[Delivery] = []
        legit = threading.Thread(
            target=lambda: measured.append(pair.measure(options.duration, options.legit_rate, options.drain)),
            name="legit-pair",
            daemon=True,
        )
        sampler.start()
        legit.start()
        report.counters = attack.run(target)
        legit.join(options.duration + options.drain + 5.0)
        report.rss_after_kb = rss_kb(target.server_pid)
        if measured:
            report.legit_sent, report.legit_received = measured[0].sent, measured[0].received
            report.delivery_pct = delivery_percent(measured[0])
    except (OSError, ExchangeError, PairError) as error:
        report.error = f"{type(error).__name__}: {error}"
    finally:
        sampler.stopped.set()
        attack.cleanup()
        if pair is not None:
            pair.close()
        time.sleep(SETTLE)
        report.rss_end_kb = rss_kb(target.server_pid)
        report.rss_peak_kb = sampler.peak
    return report


def brief(counters: dict[str, Any], width: int = 70) -> str:
    """The counters on one line for the table; --json has them whole."""
    text = ", ".join(f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in counters.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def render_table(reports: Sequence[AttackReport], counter_width: int = 70) -> str:
    header = ("attack", "legit", "RSS before", "peak", "after", "end MiB", "sent", "recv", "deliv %", "counters")
    rows = [header]
    for report in reports:
        percent = "-" if report.delivery_pct is None else f"{report.delivery_pct:.1f}"
        rows.append(
            (
                report.attack,
                report.legit_dialect,
                mib(report.rss_before_kb),
                mib(report.rss_peak_kb),
                mib(report.rss_after_kb),
                mib(report.rss_end_kb),
                str(report.legit_sent),
                str(report.legit_received),
                percent,
                report.error or brief(report.counters, counter_width),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = []
    for row in rows:
        # Names left-aligned, numbers right-aligned; the counters, last, are not padded.
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:-1], widths[2:], strict=True)]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def render_json(reports: Sequence[AttackReport], options: argparse.Namespace) -> str:
    document = {
        "tcp_port": options.tcp_port,
        "udp_port": options.udp_port,
        "server_pid": options.server_pid,
        "duration_s": options.duration,
        "legit_rate": options.legit_rate,
        "legit_address": LEGIT_ADDRESS,
        "attacker_address": ATTACKER,
        "flood_rate": options.rate,
        "attacks": [asdict(report) for report in reports],
    }
    return json.dumps(document, indent=2)


def attack_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ATTACKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown attack {', '.join(unknown) or text!r}; know {', '.join(ATTACKS)}")
    return names


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Attack a live chatd on 127.0.0.1 and measure its RSS and a legitimate pair's delivery.",
    )
    parser.add_argument("--tcp-port", type=port_number, default=9001)
    parser.add_argument("--udp-port", type=port_number, default=9002)
    parser.add_argument(
        "--server-pid", type=positive_int, help="the daemon's process id, for its RSS (/proc/PID/status)"
    )
    parser.add_argument(
        "--attack", type=attack_names, default=list(ATTACKS), help=f"comma-separated: {', '.join(ATTACKS)}"
    )
    parser.add_argument("--duration", type=positive, default=5.0, help="seconds per attack (default 5)")
    parser.add_argument(
        "--legit-dialect", choices=("model", "native"), default="native", help="forgery is always native"
    )
    parser.add_argument(
        "--legit-rate",
        type=positive,
        default=15.0,
        help="legit messages per second (default 15: under chatd's default limit of 20/s per member,"
        " so that an unattacked daemon delivers 100%%)",
    )
    parser.add_argument("--drain", type=positive, default=2.0, help="seconds to wait for the last legit messages")
    parser.add_argument(
        "--rate", type=positive, default=20_000.0, help="datagrams/s of garbage and forgery (default 20000)"
    )
    parser.add_argument("--members", type=positive_int, default=250, help="presence-churn room size (default 250)")
    parser.add_argument("--connections", type=positive_int, default=8, help="never-reads connections (default 8)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = make_parser().parse_args(argv)
    reports = []
    for name in options.attack:
        target = Target(
            tcp_port=options.tcp_port,
            udp_port=options.udp_port,
            duration=options.duration,
            rate=options.rate,
            attacker=ATTACKER,
            bystander=BYSTANDER,
            server_pid=options.server_pid,
            members=options.members,
            connections=options.connections,
        )
        if not options.json:
            print(f"{name}...", file=sys.stderr, flush=True)
        reports.append(run_attack(ATTACKS[name](), target, options))
    print(render_json(reports, options) if options.json else render_table(reports))
    return 1 if any(report.error for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
