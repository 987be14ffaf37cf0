"""phoenix-apply run again: a bundle already in place reloads nothing; anything else applies in full.

The real script (configs/common/phoenix-apply.sh) with its ``--root`` and state directory in
tmp_path; its hooks append to files, so a test sees which of them ran. The end-to-end lab
(tests/test_e2e_lab.py) checks the same on every step of the plan: a second replay restarts
no service.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT
from phoenix.bundle import GuestFile, pack

SCRIPT = ROOT / "configs/common/phoenix-apply.sh"
FILES = [GuestFile("/etc/demo/demo.conf", "listen 80;\n", 0o644),
         GuestFile("/usr/local/lib/phoenix/demo-check.sh", "#!/bin/bash\nexit 0\n", 0o700)]


class Step:
    """One step's phoenix-apply in tmp_path: run it, and read which hooks ran."""

    def __init__(self, tmp: Path):
        self.root, self.state, self.log = tmp / "root", tmp / "state", tmp / "hooks.log"
        self.root.mkdir()

    def hooks(self, health: str = "health") -> list[str]:
        return ["--check", f"echo check >> {self.log}", "--reload", f"echo reload >> {self.log}",
                "--health", f"echo {health} >> {self.log}"]

    def apply(self, files=FILES, hooks=None) -> subprocess.CompletedProcess:
        self.log.write_text("")
        return subprocess.run(["bash", str(SCRIPT), "demo", "--root", str(self.root), *(hooks or self.hooks())],
                              input=pack(files), capture_output=True, text=True,
                              env={**os.environ, "PHOENIX_STATE": str(self.state)}, check=False)

    def ran(self) -> list[str]:
        return self.log.read_text().split()


@pytest.fixture
def step(tmp_path):
    s = Step(tmp_path)
    first = s.apply()
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "phoenix-apply demo: 2 files applied"
    assert s.ran() == ["check", "reload", "health"]
    return s


def test_the_same_bundle_again_runs_the_check_only_and_says_unchanged(step):
    again = step.apply()
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "phoenix-apply demo: unchanged (2 files); not reloaded"
    assert step.ran() == ["check"]


def test_a_changed_file_applies_and_reloads(step):
    done = step.apply([replace(FILES[0], content="listen 8080;\n"), FILES[1]])
    assert "2 files applied" in done.stdout and step.ran() == ["check", "reload", "health"]


def test_a_file_changed_on_the_guest_is_put_back_and_reloaded(step):
    conf = step.root / "etc/demo/demo.conf"
    conf.write_text("edited by hand\n")
    done = step.apply()
    assert "2 files applied" in done.stdout and step.ran() == ["check", "reload", "health"]
    assert conf.read_text() == "listen 80;\n"
    conf.chmod(0o600)     # a mode is part of what is applied too
    assert "2 files applied" in step.apply().stdout


def test_other_hooks_for_the_same_files_apply_in_full(step):
    done = step.apply(hooks=step.hooks(health="new-health"))
    assert "2 files applied" in done.stdout and step.ran() == ["check", "reload", "new-health"]


def test_a_run_cut_short_after_the_swap_reloads_when_run_again(step):
    """The files are in place but the run never finished (no record of a full apply): the
    service may still run the old ones, so a re-run reloads."""
    (step.state / "demo/applied").unlink()
    done = step.apply()
    assert "2 files applied" in done.stdout and step.ran() == ["check", "reload", "health"]


def test_a_failing_check_on_an_unchanged_bundle_fails_and_changes_nothing(step):
    """The check is the step's own action (a certificate, an install): when it fails, the run
    fails, even with nothing to swap."""
    flag = step.root / "broken"
    hooks = step.hooks()
    hooks[1] = f"test ! -e {flag} || {{ echo 'certificate expired' >&2; false; }}"
    assert "2 files applied" in step.apply(hooks=hooks).stdout
    flag.touch()
    done = step.apply(hooks=hooks)
    assert done.returncode == 1, done.stdout
    assert done.stderr.splitlines() == ["phoenix-apply demo: check failed; no file was changed",
                                        "certificate expired"]
    assert step.ran() == [] and (step.root / "etc/demo/demo.conf").read_text() == "listen 80;\n"
