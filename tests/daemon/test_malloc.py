"""chatd.daemon.malloc: password hashing's memory goes back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.malloc import LARGE_ALLOCATION, M_MMAP_THRESHOLD, _glibc_mallopt, return_large_blocks_to_the_system

# Hashes a password on another thread, as the daemon's pool does, and prints
# the growth of the resident set in KiB once the hash is done.
_HASH_AND_MEASURE = textwrap.dedent(
    """
    import sys, threading
    from chatd.daemon.malloc import return_large_blocks_to_the_system
    from chatd.daemon.passwords import hash_password

    def rss_kib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    if sys.argv[1] == "tuned":
        assert return_large_blocks_to_the_system()
    def hash_twice():
        # Twice: glibc serves the first large block by mmap anyway, and only
        # the dynamic threshold it raises keeps the second one.
        hash_password("secret", 2**14)
        hash_password("secret", 2**14)
    before = rss_kib()
    worker = threading.Thread(target=hash_twice)
    worker.start()
    worker.join(10)
    print(rss_kib() - before)
    """
)


class MalloptTests(SynchronousTestCase):
    def test_sets_the_mmap_threshold(self) -> None:
        calls: list[tuple[int, int]] = []

        def mallopt(parameter: int, value: int) -> int:
            calls.append((parameter, value))
            return 1

        self.assertTrue(return_large_blocks_to_the_system(mallopt))
        self.assertEqual(calls, [(M_MMAP_THRESHOLD, LARGE_ALLOCATION)])

    def test_refused(self) -> None:
        self.assertFalse(return_large_blocks_to_the_system(lambda parameter, value: 0))


class HashingMemoryTests(SynchronousTestCase):
    """A real scrypt hash on a thread, in a fresh interpreter, with and without the setting."""

    def setUp(self) -> None:
        if _glibc_mallopt() is None or not sys.platform.startswith("linux"):
            self.skipTest("needs glibc's mallopt and /proc")

    def growth_kib(self, mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _HASH_AND_MEASURE, mode], capture_output=True, text=True, timeout=30, check=True
        )
        return int(done.stdout)

    def test_the_hash_memory_is_given_back(self) -> None:
        # scrypt at the default cost holds 16 MiB: kept without the setting,
        # given back with it.
        self.assertGreater(self.growth_kib("default"), 12 * 1024)
        self.assertLess(self.growth_kib("tuned"), 4 * 1024)
