"""Log observers for chatd's structured events (twisted.logger)."""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer(path: str) -> ILogObserver:
    """
    One JSON object per event (RFC 7464 record separators) to C{path}, or to
    standard output for C{"-"}. The file stays open for the life of the process.
    """
    out: IO[str] = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115
    return jsonFileLogObserver(out)


def json_stdout_observer() -> ILogObserver:
    """For C{twistd --logger=chatd.logs.json_stdout_observer}: every event as JSON on stdout."""
    return jsonFileLogObserver(sys.stdout)
