"""Log observers for chatd's structured events (twisted.logger)."""

from __future__ import annotations

import sys
from collections import Counter
from typing import IO

from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger, jsonFileLogObserver


def json_observer(path: str) -> ILogObserver:
    """
    One JSON object per event (RFC 7464 record separators) to C{path}, or to
    standard output for C{"-"}. The file stays open for the life of the process.
    """
    out: IO[str] = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115
    return jsonFileLogObserver(out)


def json_stdout_observer() -> ILogObserver:
    """For C{twistd --logger=chatd.daemon.logs.json_stdout_observer}: every event as JSON on stdout."""
    return jsonFileLogObserver(sys.stdout)


class CountedWarnings:
    """
    Counts events by reason, and warns about them at a bounded rate: at most
    one warning per reason per C{interval} seconds, saying how many more of
    that reason happened since the last one. For what an attacker can cause
    at will (garbage datagrams, connection floods), so that a flood costs a
    counter increment and never a log line each.

    Subclasses give the message: C{format} may use C{reason}, C{since} and
    the fields passed to L{record}. C{since} is empty when nothing was kept
    quiet since the last warning (a "0 more" says nothing), and otherwise
    C{since_format} with C{suppressed} filled in, a whole clause. The
    event also carries C{suppressed} as a number, 0 included.
    """

    _log = Logger()
    format = "{reason}{since}"
    since_format = " ({suppressed} more of these since the last warning)"
    event = "counted"

    def __init__(self, clock: IReactorTime, interval: float = 10.0) -> None:
        self._clock = clock
        self._interval = interval
        self.counts: Counter[str] = Counter()
        self._quiet_until: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def record(self, reason: str, **fields: object) -> None:
        self.counts[reason] += 1
        now = self._clock.seconds()
        if now < self._quiet_until.get(reason, 0.0):
            self._suppressed[reason] += 1
            return
        self._quiet_until[reason] = now + self._interval
        suppressed = self._suppressed.pop(reason, 0)
        since = self.since_format.format(suppressed=suppressed) if suppressed else ""
        self._log.warn(self.format, event=self.event, reason=reason, suppressed=suppressed, since=since, **fields)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
