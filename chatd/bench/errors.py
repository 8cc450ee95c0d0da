"""
The ways a benchmark command ends early: L{BenchError}, reported as one line,
and L{Interrupted}, which the SIGTERM handler L{interrupt} raises so that the
run unwinds as on Ctrl-C. Shared by C{chatd-bench} and the ceiling
comparison.
"""

from __future__ import annotations

from types import FrameType


class BenchError(Exception):
    """A failure to report as one line, without a traceback."""


class Interrupted(BaseException):
    """SIGTERM: unwind like Ctrl-C, so that the workers are killed and the rooms closed."""


def interrupt(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM handler: raise L{Interrupted}."""
    raise Interrupted()
