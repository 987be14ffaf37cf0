"""The collector policy (phoenix.collector): the `phoenix` command collects nothing while it starts
and plans exactly what a library caller plans; a library caller's collector is left as it was."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from phoenix.cli import main
from phoenix.collector import GC_FIRST_THRESHOLD

#: Runs the `phoenix` console script's entry point (pyproject.toml) and reports, as JSON on stderr,
#: how many collections happened from its start until the run's work started (nothing frozen
#: yet), and after.
EXECUTABLE = """
import gc, json, sys
seen = {"start-up": 0, "work": 0}
def count(phase, info):
    if phase == "start":
        seen["work" if gc.get_freeze_count() else "start-up"] += 1
sys.argv = ["phoenix", *sys.argv[1:]]
from phoenix.__main__ import main
gc.callbacks.append(count)
code = main()
print(json.dumps({**seen, "enabled": gc.isenabled(), "threshold": gc.get_threshold()[0]}), file=sys.stderr)
sys.exit(code)
"""


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mode & 0o7777, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_phoenix_command_collects_only_during_its_run_and_plans_what_the_library_plans(tmp_path):
    done = subprocess.run([sys.executable, "-c", EXECUTABLE, "plan", "--stack", "dev", "--out", str(tmp_path / "cmd")],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stderr.strip().splitlines()[-1])
    # Start-up (imports, parsing, the model) is not walked; the run is, at the engine's threshold:
    # a large stack's garbage is still collected.
    assert seen["start-up"] == 0, seen
    assert seen["work"] >= 1, seen
    assert seen["enabled"] and seen["threshold"] == GC_FIRST_THRESHOLD, seen

    assert main(["plan", "--stack", "dev", "--out", str(tmp_path / "lib")]) == 0
    assert (tmp_path / "cmd" / "plan.json").read_bytes() == (tmp_path / "lib" / "plan.json").read_bytes()
    assert tree(tmp_path / "cmd" / "files") == tree(tmp_path / "lib" / "files")


def test_a_command_run_in_process_leaves_the_callers_collector_as_it_was(tmp_path):
    """Tests and Automation API hosts call phoenix.cli.main in a longer-lived process: nothing of
    theirs is frozen, and the collector runs as they had it."""
    before = (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count())
    assert main(["plan", "--stack", "dev", "--out", str(tmp_path / "plan")]) == 0
    assert main(["validate"]) == 0
    assert (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()) == before


def test_every_other_command_turns_the_collector_back_on_before_its_work():
    """`phoenix up` can stream an engine's events for many minutes: it must not run without a
    collector. `validate` stands for every command but `plan`."""
    code = EXECUTABLE.replace("code = main()", "from phoenix import cli\n"
                              "real = cli.cmd_validate\n"
                              "def probe(args):\n"
                              "    print('collector on:', gc.isenabled(), 'frozen:', gc.get_freeze_count() > 0)\n"
                              "    return real(args)\n"
                              "cli.cmd_validate = probe\n"
                              "code = main()")
    done = subprocess.run([sys.executable, "-c", code, "validate"], capture_output=True, text=True, cwd=ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "collector on: True frozen: True" in done.stdout
