"""
Give password hashing's memory back to the system once a hash is done.

scrypt at chatd's cost holds 16 MiB per hash (128 * r * N bytes), allocated
by OpenSSL with malloc on a thread of the reactor's pool. glibc serves a
block that large with mmap and unmaps it on free, but only the first time:
freeing an mmapped block raises glibc's *dynamic* mmap threshold to its
size, so every later 16 MiB block comes from the thread's heap arena, and an
arena keeps what it once held. Measured with ``python -m chatd.bench.attack``:
a handful of password checks left the daemon 16 MiB larger for good, and a
flood of them (one arena per pool thread) 64 MiB and more.

Pinning the threshold (``mallopt(M_MMAP_THRESHOLD, ...)``, which also turns
the dynamic adjustment off, as setting ``MALLOC_MMAP_THRESHOLD_`` does) keeps
every large block an mmap of its own, returned whole on free. Smaller blocks,
the daemon's everyday allocations, are not affected. Elsewhere than glibc
there is no ``mallopt`` and nothing is done.
"""

from __future__ import annotations

import ctypes
from typing import Protocol

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number (malloc.h)."""
LARGE_ALLOCATION = 128 * 1024
"""Blocks at least this large are mmapped and unmapped on free: glibc's own default threshold."""


class _Mallopt(Protocol):
    def __call__(self, parameter: int, value: int, /) -> int: ...


def _glibc_mallopt() -> _Mallopt | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - a platform without a C library to load
        return None
    mallopt: _Mallopt | None = getattr(libc, "mallopt", None)
    return mallopt


def return_large_blocks_to_the_system(mallopt: _Mallopt | None = None) -> bool:
    """
    Make the C allocator give every block of L{LARGE_ALLOCATION} bytes or
    more back to the system when it is freed. Returns whether it could (True
    on glibc). C{mallopt} is for tests; by default the C library's own.
    """
    if mallopt is None:
        mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION))
