"""
A real redis-server for the tests that need one (docs/cluster.md): started
by the test on a free loopback port in a temporary directory, stopped (and
the directory removed) by the test's cleanup. No mock stands in for it.

    server = RedisServer.start_for(self)        # in a trial TestCase's setUp
    server.url                                  # redis://127.0.0.1:PORT/0
    server.stop(); server.restart()             # Redis lost and back, same port and data

Every wait is bounded (L{READY_TIMEOUT}); a server that does not answer
fails the test with one sentence, never a hang. redis-server comes from
Debian's package, which C{.ci/setup dev} installs when it is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

READY_TIMEOUT = 10.0
"""Seconds a redis-server may take to start answering, or to stop."""
PORT_ATTEMPTS = 5
"""Free ports tried in turn: another process may take the one picked before redis-server binds it."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    """Whether a Redis server answers PING on C{port} (within half a second)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1, its data (an append-only file) in a temporary directory."""

    def __init__(self, directory: Path, *, persistent: bool = True) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise AssertionError("redis-server is not installed: run 'sh .ci/setup dev', which installs it")
        self.executable = executable
        self.directory = directory
        self.persistent = persistent
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start_for(cls, test: SynchronousTestCase, *, persistent: bool = True) -> RedisServer:
        """A started server whose process and directory C{test}'s cleanup removes."""
        directory = Path(tempfile.mkdtemp(prefix="chatd-redis-"))
        test.addCleanup(shutil.rmtree, directory, True)
        server = cls(directory, persistent=persistent)
        test.addCleanup(server.stop)
        server.start()
        return server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start on a free port (tried up to L{PORT_ATTEMPTS} times), or on the port it had (L{restart})."""
        attempts = PORT_ATTEMPTS if self.port == 0 else 1
        for _ in range(attempts):
            port = self.port or _free_port()
            if self._start_on(port):
                self.port = port
                return
        raise AssertionError(f"redis-server did not start on 127.0.0.1 within {READY_TIMEOUT:g} s; see {self.log}")

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def _start_on(self, port: int) -> bool:
        argv = [
            self.executable,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--logfile", str(self.log),
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--protected-mode", "yes",
            "--daemonize", "no",
        ]  # fmt: skip
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                # It exited: most likely the port was taken in the meantime.
                return False
            if _ping(port):
                self._process = process
                return True
            time.sleep(0.02)
        process.kill()
        process.wait(READY_TIMEOUT)
        return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after L{READY_TIMEOUT}); nothing if it is not running."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(READY_TIMEOUT)

    def kill(self) -> None:
        """Stop the server at once (SIGKILL), as a crash would."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(READY_TIMEOUT)

    def restart(self) -> None:
        """Start again on the same port, with the same data."""
        self.stop()
        self.start()
