"""Every `phoenix ...` command README.md and docs/*.md show works as written.

Each one (in a code block or an inline code span) is parsed by the real parser. Those that run
offline run for real: `validate`, `graph` and `plan` in this checkout (the plan's default output
goes to a temporary directory), `plan --against REF` in a temporary git repository holding a copy
of this working tree (with `origin/main` and a reflog, as a clone has), so the checkout's own git
state is never touched. The rest (`preview`, `up`, `drift`, `verify`, `diff BASE NEW`, `docs`)
need Pulumi, a lab or inputs the page names by placeholder: the parser must take them.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from phoenix.cli import main, parser
from phoenix.exits import Exit

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: what a page writes where the reader puts their own value.
PLACEHOLDERS = ("REF", "BASE", "NEW", "path/to/", "root.pem", "PVE_PASSWORD")
RUN_HERE = ("validate", "graph", "plan")


def documented_commands() -> list[tuple[str, str]]:
    """(page, command line without `.venv/bin/` and without a trailing comment)."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            for line in block.splitlines():
                line = line.strip()
                if re.match(r"(\.venv/bin/)?phoenix\s", line):
                    found.append((page.name, line.split("  #", 1)[0].strip()))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`((?:\.venv/bin/)?phoenix [^`]+)`", prose):
            found.append((page.name, " ".join(span.split())))
    return [(page, re.sub(r"^\.venv/bin/", "", line)) for page, line in found]


COMMANDS = documented_commands()


def argv_of(line: str) -> list[str]:
    words = shlex.split(line)
    assert words[0] == "phoenix", line
    return words[1:]


def runs_here(argv: list[str]) -> bool:
    return (argv[0] in RUN_HERE and "--against" not in argv
            and not any(p in word for word in argv for p in PLACEHOLDERS))


def in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_pages_show_commands_of_every_kind():
    kinds = {argv_of(line)[0] for _, line in COMMANDS}
    assert kinds >= {"validate", "plan", "graph", "drift", "verify", "diff", "up", "preview", "docs"}
    assert any("--against" in line for _, line in COMMANDS)


@pytest.mark.parametrize("page, line", COMMANDS, ids=[f"{p}: {c}" for p, c in COMMANDS])
def test_every_documented_command_parses(page, line):
    try:
        args = parser().parse_args(argv_of(line))
    except SystemExit as exit_:
        pytest.fail(f"{page} shows `{line}`, which the parser refuses (exit {exit_.code})")
    assert callable(args.func)


OFFLINE = sorted({line for _, line in COMMANDS if runs_here(argv_of(line))})


@pytest.mark.parametrize("line", OFFLINE)
def test_every_offline_command_runs_as_written(line, tmp_path, monkeypatch):
    if "--format svg" in line and shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed (Debian: apt-get install graphviz; "
                    "scripts/install-debian-deps.sh lists it)")
    monkeypatch.chdir(tmp_path)            # a plan's default output, build/<stack>, lands here
    code, out, err = in_process(argv_of(line))
    assert code == Exit.OK, f"`{line}` exited {code}: {err}"
    assert "error:" not in err
    if argv_of(line)[0] == "plan":
        assert (tmp_path / "build" / "dev" / "plan.json").is_file()


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A git repository of this working tree, two commits deep, with an origin/main."""
    repo = tmp_path_factory.mktemp("repo") / "phoenix"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", ".venv", "build", "__pycache__",
                                                               "*.egg-info", ".pytest_cache"))
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    who = ["-c", "user.name=Phoenix tests", "-c", "user.email=tests@example.invalid"]
    for argv in (["init", "--quiet", "--initial-branch=main"], ["add", "--all"],
                 [*who, "commit", "--quiet", "-m", "base"], [*who, "commit", "--quiet", "--allow-empty", "-m", "next"],
                 ["update-ref", "refs/remotes/origin/main", "HEAD"]):
        subprocess.run(["git", *argv], cwd=repo, env=env, check=True, capture_output=True)
    return repo


AGAINST = sorted({line for _, line in COMMANDS if argv_of(line)[0] == "plan" and "--against" in line})


@pytest.mark.parametrize("line", AGAINST)
def test_plan_against_a_ref_runs_as_written(line, repository, tmp_path):
    """In the repository copy; a placeholder REF is the previous commit."""
    argv = [("HEAD~1" if word == "REF" else word) for word in argv_of(line)]
    done = subprocess.run([sys.executable, "-m", "phoenix.cli", *argv, "--out", str(tmp_path / "plan")],
                          cwd=repository, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(repository)}, check=False)
    assert done.returncode == Exit.OK, f"`{line}` exited {done.returncode}: {done.stderr[-2000:]}"
    assert "no changes" in done.stdout or "No changes" in done.stdout, done.stdout[:2000]
