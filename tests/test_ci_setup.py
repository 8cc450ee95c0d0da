"""
.ci/setup runs pip only when the install is out of date (.ci/install-state),
so that .ci/serve starts the daemon in about a second once set up. Run in a
scratch copy of the scripts and the two files the stamp covers, with a fake
.venv/bin/python that records how it was called: fast, and offline.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls"
"""


class InstallStateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chatd-ci-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        (self.root / ".ci").mkdir()
        for name in (".ci/setup", ".ci/install-state", "setup.cfg", "pyproject.toml"):
            shutil.copy(REPO_ROOT / name, self.root / name)
        bin_directory = self.root / ".venv" / "bin"
        bin_directory.mkdir(parents=True)
        self.python = bin_directory / "python"
        self.python.write_text(FAKE_PYTHON)
        self.python.chmod(0o755)

    def run_script(self, *argv: str) -> int:
        done = subprocess.run(["sh", *argv], cwd=self.root, capture_output=True, timeout=30, check=False)
        return done.returncode

    def up_to_date(self, extras: str = "") -> bool:
        return self.run_script(".ci/install-state", "check", extras) == 0

    def pip_runs(self) -> list[str]:
        calls = self.root / ".venv" / "calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def test_no_stamp_means_install(self) -> None:
        self.assertFalse(self.up_to_date())
        self.assertEqual(self.run_script(".ci/install-state", "record"), 0)
        self.assertTrue(self.up_to_date())

    def test_a_dev_install_serves_both(self) -> None:
        self.run_script(".ci/install-state", "record")
        self.assertFalse(self.up_to_date("dev"))
        self.run_script(".ci/install-state", "record", "dev")
        self.assertTrue(self.up_to_date("dev"))
        self.assertTrue(self.up_to_date())

    def test_a_changed_setup_cfg_or_pyproject_means_install(self) -> None:
        for name in ("setup.cfg", "pyproject.toml"):
            self.run_script(".ci/install-state", "record")
            with open(self.root / name, "a") as file:
                file.write("\n# changed\n")
            self.assertFalse(self.up_to_date(), name)

    def test_no_venv_python_means_install(self) -> None:
        self.run_script(".ci/install-state", "record")
        self.python.unlink()
        self.assertFalse(self.up_to_date())

    def test_setup_runs_pip_once(self) -> None:
        self.assertEqual(self.run_script(".ci/setup"), 0)
        (call,) = self.pip_runs()
        self.assertTrue(call.startswith("-m pip install "), call)
        self.assertIn("--editable . --config-settings editable_mode=compat", call)
        self.assertEqual(self.run_script(".ci/setup"), 0)
        self.assertEqual(len(self.pip_runs()), 1, "the second set-up found the install up to date")
        with open(self.root / "setup.cfg", "a") as file:
            file.write("\n# a new pin\n")
        self.assertEqual(self.run_script(".ci/setup"), 0)
        self.assertEqual(len(self.pip_runs()), 2)

    def test_a_failed_install_is_retried(self) -> None:
        self.python.write_text(FAKE_PYTHON + "exit 1\n")
        self.assertNotEqual(self.run_script(".ci/setup"), 0)
        self.assertFalse(self.up_to_date())
        self.python.write_text(FAKE_PYTHON)
        self.assertEqual(self.run_script(".ci/setup"), 0)
        self.assertEqual(len(self.pip_runs()), 2)
        self.assertTrue(self.up_to_date())
