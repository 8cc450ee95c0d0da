"""
A refused TLS certificate as chatd-chat --line prints it: one line on
standard error, with no newline escaped into it (line mode writes every
report as one line, so a message with newlines came out with literal \\n).
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IReactorProcess

from tests.client.test_line_mode import REPO_ROOT, LineProcess
from tests.test_security import _ServiceCase
from tests.waiting import bounded

WRONG_FINGERPRINT = "SHA256:" + ":".join(["00"] * 32)


class RefusedCertificateLineTests(_ServiceCase):
    timeout = 60

    async def test_wrong_fingerprint_is_one_clean_line(self) -> None:
        cert = self.certificate()
        service = self.serve(cert)
        assert service.tls_port is not None
        process = LineProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "chatd.tui.main",
            "--line",
            "--room",
            "hoge",
            "--name",
            "ann",
            "--create",
        ]
        command += ["--udp-port", str(service.udp_port), "--tls-port", str(service.tls_port)]
        command += ["--tls-fingerprint", WRONG_FINGERPRINT]
        IReactorProcess(_reactor).spawnProcess(process, sys.executable, command, env=env, path=str(REPO_ROOT))
        self.addCleanup(self._kill, process)
        process.close_stdin()
        status = await bounded(process.ended, "chatd-chat --line exits")
        self.assertEqual(status, 1)
        lines = process.stderr.decode("utf-8").splitlines()
        self.assertEqual(len(lines), 1, lines)
        (line,) = lines
        self.assertNotIn("\\n", line)
        self.assertTrue(line.startswith("chatd-chat: cannot create room hoge: The TLS certificate of"), line)
        self.assertIn(f"(expected {WRONG_FINGERPRINT}, presented {cert.fingerprint})", line)

    async def _kill(self, process: LineProcess) -> None:
        if not process.ended.called:
            assert process.transport is not None
            process.transport.signalProcess("KILL")
        await process.ended
