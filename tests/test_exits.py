"""One table of exit codes (phoenix/exits.py): README shows it, the deploy workflow branches on it,
and every command ends through it (`phoenix verify` as `python -m phoenix.verify` too)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT
from phoenix.exits import TABLE, Exit


def readme_table() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", text.split("| exit | meaning |", 1)[1], re.M)
    return {int(code): meaning for code, meaning in rows}


def test_readme_shows_the_table_the_commands_use():
    assert readme_table() == {int(code): meaning for code, meaning in TABLE.items()}
    assert set(TABLE) == set(Exit)
    assert len({int(c) for c in Exit}) == len(Exit), "two meanings share a code"


def drift_step() -> str:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    steps = doc["jobs"]["up"]["steps"]
    return next(s["run"] for s in steps if "phoenix drift" in s.get("run", ""))


def run_drift_step(tmp_path: Path, code: int) -> subprocess.CompletedProcess:
    """The workflow's drift step, as the runner runs it (bash -e), with a `phoenix` that exits ``code``."""
    fake = tmp_path / ".venv" / "bin" / "phoenix"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text(f"#!/bin/sh\nexit {code}\n")
    fake.chmod(0o755)
    return subprocess.run(["bash", "-e", "-c", drift_step()], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "STACK": "dev"}, timeout=30, check=False)


def test_the_deploy_workflow_tells_drift_from_a_check_that_could_not_run(tmp_path):
    ok = run_drift_step(tmp_path, Exit.OK)
    assert ok.returncode == 0 and "no drift" in ok.stdout
    drift = run_drift_step(tmp_path, Exit.DRIFT)
    assert drift.returncode == Exit.DRIFT and "::error::drift: stack dev differs" in drift.stdout
    for code in (Exit.FAILED, Exit.BAD_INPUT):
        failed = run_drift_step(tmp_path, code)
        assert failed.returncode == code and f"could not run (exit {int(code)})" in failed.stdout


def test_verify_as_a_module_ends_through_the_same_table():
    done = subprocess.run([sys.executable, "-m", "phoenix.verify", "--stack", "dev", "--timeout", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == Exit.BAD_INPUT, done.stderr
    assert done.stderr == "error: --timeout: 0.0 must be more than 0 and at most 120 seconds\n"
