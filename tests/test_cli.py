"""The `phoenix` command: every subcommand has --help, ends with a code of phoenix/exits.py, never
shows a traceback for bad input (one `error: <key>: <problem>` line per problem), works on the dev
stack by default, and never deletes a directory that is not one of its plans."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT, shipped_plan
from phoenix.cli import main, parser
from phoenix.exits import Exit
from phoenix.plan.outdir import MARKER

PHOENIX = [sys.executable, "-m", "phoenix.cli"]


def run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``phoenix ARGV``: in this process (fast; an uncaught exception fails the test as a
    traceback would), or as a real process when the environment must differ."""
    if env is not None:
        return subprocess.run([*PHOENIX, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                              check=False)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:          # argparse: --help and usage errors
            code = exit_.code if isinstance(exit_.code, int) else 2
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def commands() -> list[str]:
    sub = next(a for a in parser()._actions if a.dest == "command")
    return sorted(sub.choices)


def test_the_installed_entry_point_runs():
    done = subprocess.run([*PHOENIX, "validate", "--stack", "no-such-stack"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_every_command_has_help():
    for name in commands():
        done = run(name, "--help")
        assert done.returncode == 0, (name, done.stderr)
        assert done.stdout.startswith(f"usage: phoenix {name}"), name
    assert run("--help").returncode == 0


def test_no_or_unknown_command_is_bad_input():
    for argv in ((), ("frobnicate",), ("plan", "--stack", "dev", "--config-file", "x"), ("diff", "only-one")):
        done = run(*argv)
        assert done.returncode == 2 and "Traceback" not in done.stderr, argv


@pytest.fixture(scope="module")
def bad_stack(tmp_path_factory):
    """A stack file with two problems: a duplicate guest id and an unknown key."""
    path = tmp_path_factory.mktemp("bad") / "Pulumi.bad.yaml"
    text = (ROOT / "Pulumi.dev.yaml").read_text().replace("id: 101,", "id: 100,", 1)
    text = text.replace("  phoenix:domains:", "  phoenix:domainz: {}\n  phoenix:domains:", 1)
    path.write_text(text.replace("configs/catalog/dev.yaml", str(ROOT / "configs/catalog/dev.yaml")))
    return path


def bad_inputs(bad_stack) -> dict[str, list[list[str]]]:
    """At least one bad-input case for every command (the test below checks none is missing)."""
    return {
        "plan": [["--config-file", str(bad_stack)], ["--stack", "no-such-stack"]],
        "validate": [["--config-file", str(bad_stack)], ["--stack", "no-such-stack"]],
        "graph": [["--config-file", str(bad_stack)], ["--stack", "dev", "--format", "png"]],
        "diff": [["/nonexistent/a", "/nonexistent/b"]],
        "docs": [["--format", "html"]],
        "preview": [["--stack", "no-such-stack"]],
        "drift": [["--stack", "no-such-stack"]],
        "up": [["--stack", "dev"]],                     # no --yes
        "destroy": [["--stack", "dev"]],                # no --yes
        "refresh": [["--stack", "dev", "--secret-env", "nonsense"]],
        "verify": [["--config-file", str(bad_stack)], ["--stack", "dev", "--outside-source", "not-an-address"]],
        "state-export": [["--stack", "dev"], ["--stack", "dev", "--out", str(ROOT / "README.md")]],   # exists
    }


def test_bad_input_exits_2_with_one_line_per_problem_and_no_traceback(bad_stack):
    cases = bad_inputs(bad_stack)
    assert set(cases) == set(commands()), "every command needs a bad-input case here"
    for name, argvs in cases.items():
        for argv in argvs:
            done = run(name, *argv)
            assert done.returncode == 2, (name, argv, done.stderr)
            assert "Traceback" not in done.stderr, (name, argv)
            lines = done.stderr.strip().splitlines()
            assert lines, (name, argv)
            if "usage:" not in done.stderr:          # argparse's own usage errors aside
                assert all(line.startswith("error: ") for line in lines), (name, lines)


def test_a_bad_stack_names_each_key(bad_stack):
    for name in ("plan", "validate", "graph"):
        done = run(name, "--config-file", str(bad_stack))
        assert "error: phoenix:guests[1].id: guest id 100 is already used by guests[0]" in done.stderr
        assert "error: phoenix:domainz: unknown key (a typo?)" in done.stderr


def test_validate_ok():
    done = run("validate", "--stack", "dev")
    assert done.returncode == 0, done.stderr
    assert "stack 'dev' is valid: 7 guests" in done.stdout


# -- graph ----------------------------------------------------------------------------------------
def test_graph_mermaid_and_dot_show_every_guest_and_flow():
    topo = shipped_plan("dev").topo
    mermaid = run("graph", "--stack", "dev")
    assert mermaid.returncode == 0 and mermaid.stdout.startswith("flowchart LR")
    dot = run("graph", "--stack", "dev", "--format", "dot")
    assert dot.returncode == 0 and dot.stdout.startswith("digraph phoenix {")
    for g in topo.lab.guests:
        assert f"g_{g.name.replace('-', '_')}[" in mermaid.stdout
        assert f'"g_{g.name}" [label="{g.name} (' in dot.stdout
    for f in topo.flows:
        if f.source != "guests" and f.port != 22:
            assert f"{f.port}/{f.proto}" in dot.stdout, f
    for role in {g.role for g in topo.lab.guests}:
        assert f"subgraph cluster_{role} {{" in dot.stdout


def test_graph_svg_and_png_rendered_by_graphviz(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed (Debian: apt-get install graphviz; "
                    "scripts/install-debian-deps.sh lists it)")
    svg = run("graph", "--stack", "cluster", "--format", "svg")
    assert svg.returncode == 0, svg.stderr
    root = ET.fromstring(svg.stdout.encode())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = " ".join(t for t in root.itertext())
    for g in shipped_plan("cluster").topo.lab.guests:
        assert g.name in text
    out = tmp_path / "lab.png"
    png = run("graph", "--stack", "dev", "--format", "png", "--out", str(out))
    assert png.returncode == 0, png.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_graph_without_graphviz_fails_with_one_line():
    keep = [p for p in os.environ["PATH"].split(os.pathsep) if p and not os.path.exists(os.path.join(p, "dot"))]
    done = run("graph", "--stack", "dev", "--format", "svg", env={**os.environ, "PATH": os.pathsep.join(keep)})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "apt-get install graphviz" in done.stderr


# -- docs ------------------------------------------------------------------------------------------
def test_docs_check_and_regenerate(tmp_path):
    assert run("docs", "--check").returncode == 0
    stale = tmp_path / "ref.md"
    stale.write_text("# old\n")
    done = run("docs", "--check", "--out", str(stale))
    assert done.returncode == 1 and "is stale: regenerate it with `phoenix docs`" in done.stderr
    assert run("docs", "--out", str(stale)).returncode == 0
    assert run("docs", "--check", "--out", str(stale)).returncode == 0


# -- the dev stack by default ----------------------------------------------------------------------
def test_commands_without_a_stack_work_on_the_dev_stack(tmp_path):
    done = run("validate")
    assert done.returncode == Exit.OK and "stack 'dev' is valid: 7 guests" in done.stdout, done.stderr
    assert run("graph").stdout == run("graph", "--stack", "dev").stdout
    out = tmp_path / "plan"
    done = run("plan", "--out", str(out))
    assert done.returncode == Exit.OK, done.stderr
    assert done.stdout.startswith("Phoenix plan for stack 'dev': ")


# -- plan --out: new, empty, or a previous plan; nothing else is touched -----------------------------
def tree(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_plan_out_refuses_a_checkout_and_deletes_nothing(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "phoenix").mkdir(parents=True)
    (checkout / "README.md").write_text("# a checkout\n")
    (checkout / "phoenix" / "cli.py").write_text("print('mine')\n")
    before = tree(checkout)
    done = subprocess.run([*PHOENIX, "plan", "--stack", "dev", "--out", "."], cwd=checkout, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == Exit.BAD_INPUT, done.stderr
    assert done.stderr == (f"error: --out: . is not empty and is not a previous plan (it has no {MARKER}): "
                           "give a new or empty directory; nothing was deleted\n")
    assert tree(checkout) == before


def test_plan_out_into_an_empty_directory_and_over_a_previous_plan(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert run("plan", "--out", str(out)).returncode == Exit.OK
    assert (out / MARKER).is_file() and (out / "plan.json").is_file()
    first = (out / "plan.json").read_bytes()
    stale = out / "files" / "dns" / "etc" / "stale.conf"       # what an older plan pushed, gone since
    stale.write_text("old\n")
    notes = out / "notes.txt"                                  # the operator's own file, beside the plan
    notes.write_text("keep me\n")
    assert run("plan", "--out", str(out)).returncode == Exit.OK
    assert not stale.exists() and (out / "plan.json").read_bytes() == first
    assert notes.read_text() == "keep me\n"


def test_plan_out_replaces_a_plan_written_before_plans_were_marked(tmp_path):
    """`make plan` after an upgrade: build/dev holds an older plan (no marker) and nothing else."""
    out = tmp_path / "build" / "dev"
    (out / "files" / "dns").mkdir(parents=True)
    (out / "plan.json").write_text("{}\n")
    (out / "topology.mmd").write_text("flowchart LR\n")
    assert run("plan", "--out", str(out)).returncode == Exit.OK
    assert (out / MARKER).is_file() and json.loads((out / "plan.json").read_text())["stack"] == "dev"
    (out / MARKER).unlink()
    (out / "mine.txt").write_text("x")                       # now not only what a plan writes
    assert run("plan", "--out", str(out)).returncode == Exit.BAD_INPUT
    assert (out / "plan.json").is_file() and (out / "mine.txt").is_file()


def test_plan_out_refuses_a_file(tmp_path):
    target = tmp_path / "plan.txt"
    target.write_text("x")
    done = run("plan", "--out", str(target))
    assert done.returncode == Exit.BAD_INPUT
    assert done.stderr == f"error: --out: {target} exists and is not a directory\n"
    assert target.read_text() == "x"
