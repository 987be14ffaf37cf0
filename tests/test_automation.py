"""phoenix.automation and the preview/up/refresh/destroy/drift commands, up to the pulumi binary.

Layers Phoenix owns are tested directly: config keys and values, results typed from the SDK's
own PreviewResult/UpResult/OutputValue/EngineEvent objects, the missing-binary path (one line,
exit 1, no traceback), bad input refused before the CLI starts. The whole path through
Pulumi's Automation API SDK runs against a stand-in `pulumi` (FAKE_PULUMI below) that answers
in the formats the SDK parses and records every call, so the tests can assert what Phoenix
sends (a secret only on stdin, --expect-no-changes and --refresh for drift). A test with the
real CLI runs where it is installed and says why it is skipped where it is not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pulumi import automation as auto

from phoenix import automation
from phoenix.automation import PhoenixStack, PulumiMissing
from phoenix.exits import Exit

ROOT = Path(__file__).resolve().parent.parent
PHOENIX = [sys.executable, "-m", "phoenix.cli"]
SECRET = "s3cr3t-proxmox-password-for-tests"

FAKE_PULUMI = r'''#!PYTHON
"""A stand-in for the `pulumi` CLI, for testing phoenix.automation up to the binary.

It answers the commands Pulumi's Automation API SDK issues, in the formats the SDK parses:
`version`, `stack select|init`, `config set|set-all|--json`, `preview`/`up`/`refresh`/
`destroy` (engine events written to the `--event-log` file as JSON lines: prelude, one
resourcePreEvent per step, the summaryEvent, a cancelEvent), `stack output --json
[--show-secrets]` (secrets masked as "[secret]" without it) and `stack history --json`.
What the engine would do comes from a scenario file ($FAKE_PULUMI_SCENARIO, JSON); every
call (argv, and stdin when the CLI would read it) is appended to $FAKE_PULUMI_LOG.

Not a Pulumi engine: it proves what Phoenix sends and how it reads the answers, not what a
real update does. Tests that need the real CLI are marked and skipped without it."""
from __future__ import annotations

import json
import os
import sys
import time

SCENARIO = {"changes": {"same": 1}, "steps": [], "outputs": {}, "secretOutputs": [], "version": "3.200.0",
            "stacks": ["dev", "cluster"]}
NOW = "2026-01-01T00:00:00.000Z"


def scenario() -> dict:
    path = os.environ.get("FAKE_PULUMI_SCENARIO")
    found = dict(SCENARIO)
    if path and os.path.exists(path):
        with open(path) as f:
            found.update(json.load(f))
    return found


def log(entry: dict) -> None:
    with open(os.environ["FAKE_PULUMI_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\n")


def known_stacks(sc: dict) -> list[str]:
    """The backend's stacks: the scenario's, and those `stack init` made."""
    made = os.environ["FAKE_PULUMI_LOG"] + ".stacks"
    return [*sc.get("stacks", ["dev", "cluster"]),
            *(open(made).read().split() if os.path.exists(made) else [])]


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def events(path: str, sc: dict) -> None:
    seq = 0

    def emit(**event):
        nonlocal seq
        seq += 1
        f.write(json.dumps({"sequence": seq, "timestamp": int(time.time()), **event}) + "\n")
        f.flush()

    with open(path, "a") as f:
        emit(preludeEvent={"config": {}})
        for step in sc["steps"]:
            emit(resourcePreEvent={"metadata": {"op": step["op"], "urn": step["urn"], "type": step["type"],
                                                "provider": "", "diffs": step.get("diffs", [])},
                                   "planning": True})
        emit(summaryEvent={"maybeCorrupt": False, "durationSeconds": 1,
                           "resourceChanges": sc["changes"], "PolicyPacks": {}})
        emit(cancelEvent={})


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--non-interactive"]
    sc = scenario()
    entry = {"argv": argv}
    if args[:2] == ["config", "set"] and len([a for a in args[2:] if not a.startswith("-")
                                               and a != flag(args, "--stack")]) == 1:
        entry["stdin"] = sys.stdin.read()     # `config set KEY` with no value reads stdin
    log(entry)
    if args == ["version"]:
        print("v" + sc["version"])
        return 0
    if args[:2] == ["stack", "select"]:
        # As the real CLI: a name the backend does not know is an error (the SDK's StackNotFoundError).
        name = flag(args, "--stack") or args[-1]
        if name not in known_stacks(sc):
            print(f"error: no stack named '{name}' found", file=sys.stderr)
            return 255
        return 0
    if args[:2] == ["stack", "init"]:
        with open(os.environ["FAKE_PULUMI_LOG"] + ".stacks", "a") as f:
            f.write(args[2] + "\n")
        return 0
    if args[:2] in (["config", "set"], ["config", "set-all"]):
        return 0
    if args[:1] == ["config"] and "--json" in args:
        print(json.dumps(sc.get("config", {})))
        return 0
    if args[:1] and args[0] in ("preview", "up", "refresh", "destroy"):
        op = args[0]
        if sc.get("fail"):                    # the engine fails before any step (a locked stack, say)
            print(sc["fail"], file=sys.stderr)
            return 255
        print(f"{'Previewing update' if op == 'preview' else op.capitalize()} ({flag(args, '--stack') or 'dev'})")
        for step in sc["steps"]:
            print(f"  {step['op']} {step['urn'].rsplit('::', 1)[-1]}")
        if flag(args, "--event-log"):
            events(flag(args, "--event-log"), sc)
        changed = any(v for k, v in sc["changes"].items() if k != "same")
        if "--expect-no-changes" in args and changed:
            print("error: no changes were expected but changes were proposed", file=sys.stderr)
            return 255
        print("Resources: " + ", ".join(f"{v} {k}" for k, v in sc["changes"].items()))
        return 0
    if args[:2] == ["stack", "output"]:
        shown = "--show-secrets" in args
        print(json.dumps({k: (v if shown or k not in sc["secretOutputs"] else "[secret]")
                          for k, v in sc["outputs"].items()}))
        return 0
    if args[:2] == ["stack", "history"]:
        print(json.dumps([{"kind": "update", "startTime": NOW, "endTime": NOW, "message": "",
                           "environment": {}, "config": {}, "result": "succeeded", "version": 2,
                           "resourceChanges": sc["changes"]}]))
        return 0
    print(f"fake pulumi: unsupported command {args}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture
def fake_pulumi(tmp_path, monkeypatch):
    """Put the stand-in `pulumi` first on PATH; returns (set_scenario, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "pulumi"
    exe.write_text(FAKE_PULUMI.replace("#!PYTHON", "#!" + sys.executable, 1))
    exe.chmod(0o755)
    log, scenario = tmp_path / "calls.jsonl", tmp_path / "scenario.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(log))
    monkeypatch.setenv("FAKE_PULUMI_SCENARIO", str(scenario))
    monkeypatch.setenv("PULUMI_SKIP_UPDATE_CHECK", "true")

    def set_scenario(**values):
        scenario.write_text(json.dumps(values))

    def calls() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return set_scenario, calls


def without_pulumi_env() -> dict:
    """The environment with every PATH entry that holds a `pulumi` removed."""
    keep = [p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "pulumi").exists()]
    return {**os.environ, "PATH": os.pathsep.join(keep)}


URN = "urn:pulumi:dev::phoenix::phoenix:tier:Gateway$command:remote:Command::gateway-nginx-sites"
CHANGED = {"changes": {"update": 1, "create": 1, "same": 30},
           "steps": [{"op": "update", "urn": URN, "type": "command:remote:Command", "diffs": ["stdin"]},
                     {"op": "create", "urn": URN.replace("gateway-nginx-sites", "agent-1-cert"),
                      "type": "command:remote:Command"}],
           "outputs": {"caUrl": "https://10.20.0.13:9000", "rootCaCertificate": "-----BEGIN CERTIFICATE-----x"},
           "secretOutputs": ["rootCaCertificate"]}


# -- the missing binary ------------------------------------------------------------------------
def test_missing_pulumi_is_one_clear_line_and_exit_1():
    env = without_pulumi_env()
    assert shutil.which("pulumi", path=env["PATH"]) is None
    for op in (["preview"], ["up", "--yes"], ["refresh"], ["destroy", "--yes"], ["drift"]):
        done = subprocess.run([*PHOENIX, *op, "--stack", "dev"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == Exit.FAILED, (op, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "https://www.pulumi.com/docs/install/" in lines[0]
        assert "curl -fsSL https://get.pulumi.com | sh" in lines[0]


def test_module_raises_pulumi_missing_with_the_install_hint(monkeypatch):
    monkeypatch.setenv("PATH", without_pulumi_env()["PATH"])
    with pytest.raises(PulumiMissing) as err:
        PhoenixStack("dev")
    assert "https://www.pulumi.com/docs/install/" in str(err.value)


# -- bad input, before the CLI is even looked for ------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["up", "--stack", "dev"], "pass --yes"),
    (["destroy", "--stack", "dev"], "pass --yes"),
    (["preview", "--stack", "no-such-stack"], "no such stack file"),
    (["preview", "--stack", "dev", "--secret-env", "phoenix:proxmoxPassword"], "is not KEY=ENVVAR"),
    (["preview", "--stack", "dev", "--secret-env", "phoenix:proxmoxPassword=PHOENIX_TEST_UNSET_VAR"],
     "PHOENIX_TEST_UNSET_VAR"),
])
def test_bad_input_exits_2_with_the_problem_named(argv, expected):
    done = subprocess.run([*PHOENIX, *argv], cwd=ROOT, env=without_pulumi_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert all(line.startswith("error: ") for line in done.stderr.strip().splitlines())
    assert expected in done.stderr


def test_a_bad_stack_config_is_refused_before_pulumi_runs(tmp_path, fake_pulumi):
    _, calls = fake_pulumi
    project = tmp_path / "project"
    project.mkdir()
    text = (ROOT / "Pulumi.dev.yaml").read_text().replace("id: 101,", "id: 100,", 1)
    (project / "Pulumi.dev.yaml").write_text(text)
    shutil.copytree(ROOT / "configs", project / "configs")
    done = subprocess.run([*PHOENIX, "preview", "--stack", "dev", "--cwd", str(project)], cwd=ROOT,
                          env=os.environ, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "phoenix:guests[1].id" in done.stderr
    assert calls() == []        # the pulumi CLI was never started


# -- typing results from the SDK's own objects ---------------------------------------------------
def test_preview_result_counts_by_kind_from_the_sdk_opmap():
    res = auto.PreviewResult("out", "", {auto.OpType.CREATE: 2, auto.OpType.SAME: 5, auto.OpType.REPLACE: 1})
    result = automation.from_preview(res, "dev")
    assert result.changes == {"create": 2, "same": 5, "replace": 1}
    assert result.has_changes and result.count("replace") == 1 and result.count("delete") == 0
    assert "2 to create" in result.summary() and "1 to replace" in result.summary()
    unchanged = automation.from_preview(auto.PreviewResult("", "", {auto.OpType.SAME: 7}), "dev")
    assert not unchanged.has_changes


def test_up_result_masks_secret_outputs_unless_revealed():
    summary = auto.UpdateSummary(kind="update", start_time=None, message="", environment={}, config={},
                                 result="succeeded", resource_changes={"update": 3, "same": 10})
    outputs = {"caUrl": auto.OutputValue("https://10.20.0.13:9000", False),
               "rootCaCertificate": auto.OutputValue("-----BEGIN CERTIFICATE-----", True)}
    masked = automation.from_update("up", auto.UpResult("", "", summary, outputs), "dev")
    assert masked.outputs == {"caUrl": "https://10.20.0.13:9000", "rootCaCertificate": "[secret]"}
    assert masked.secret_outputs == {"rootCaCertificate"}
    assert masked.changes == {"update": 3, "same": 10}
    shown = automation.from_update("up", auto.UpResult("", "", summary, outputs), "dev", reveal=True)
    assert shown.outputs["rootCaCertificate"] == "-----BEGIN CERTIFICATE-----"


def test_steps_come_from_the_engine_events_and_leave_out_unchanged_resources():
    def pre(op, urn, type_, diffs=()):
        return auto.EngineEvent.from_json({"sequence": 1, "timestamp": 0, "resourcePreEvent": {
            "metadata": {"op": op, "urn": urn, "type": type_, "provider": "", "diffs": list(diffs)}}})
    events = [pre("same", "urn:a::x", "t"), pre("update", URN, "command:remote:Command", ["stdin"]),
              pre("create", "urn:pulumi:dev::phoenix::pulumi:pulumi:Stack::phoenix-dev", "pulumi:pulumi:Stack")]
    result = automation.from_preview(auto.PreviewResult("", "", {"update": 1}), "dev", events)
    assert [(s.op, s.name, s.diffs) for s in result.steps] == [("update", "gateway-nginx-sites", ("stdin",))]


def test_config_keys_default_to_the_phoenix_namespace_and_values_to_json():
    assert automation.config_key("acme") == "phoenix:acme"
    assert automation.config_key("proxmoxve:endpoint") == "proxmoxve:endpoint"
    assert automation.config_text("plain") == "plain"
    assert json.loads(automation.config_text({"email": "ops@example.com"})) == {"email": "ops@example.com"}
    with pytest.raises(automation.ConfigError):
        automation.config_key("two words")


# -- the whole path through the SDK, against the stand-in CLI ------------------------------------
def test_preview_up_refresh_destroy_through_the_sdk(fake_pulumi):
    set_scenario, calls = fake_pulumi
    set_scenario(**CHANGED)
    streamed: list[str] = []
    stack = PhoenixStack("dev", on_output=streamed.append)
    stack.set_config({"acme": {"email": "ops@example.com"}}, secrets={"proxmoxPassword": SECRET})
    preview = stack.preview()
    assert preview.changes == {"update": 1, "create": 1, "same": 30}
    assert [s.op for s in preview.steps] == ["update", "create"]
    assert any("gateway-nginx-sites" in line for line in streamed)      # output streamed as it came
    up = stack.up()
    assert up.outputs == {"caUrl": "https://10.20.0.13:9000", "rootCaCertificate": "[secret]"}
    assert up.count("update") == 1
    assert stack.refresh().operation == "refresh"
    assert stack.destroy().operation == "destroy"
    argvs = [c["argv"] for c in calls()]
    verbs = [next(a for a in argv if not a.startswith("-")) for argv in argvs]
    for verb in ("preview", "up", "refresh", "destroy"):
        assert verb in verbs
        assert any(verb in argv and "--stack" in argv and argv[argv.index("--stack") + 1] == "dev"
                   for argv in argvs)
    # The secret went in on stdin, once, to `config set --secret`; never on any command line.
    assert not any(SECRET in " ".join(argv) for argv in argvs)
    secret_calls = [c for c in calls() if c.get("stdin")]
    assert len(secret_calls) == 1 and secret_calls[0]["stdin"] == SECRET
    assert {"config", "set", "--secret", "phoenix:proxmoxPassword"} <= set(secret_calls[0]["argv"])
    plain = next(c["argv"] for c in calls() if "set-all" in c["argv"])
    assert '--plaintext' in plain and 'phoenix:acme={"email": "ops@example.com"}' in plain


def test_drift_is_a_refreshing_preview_that_expects_no_changes(fake_pulumi):
    """What Phoenix sends (a refreshing preview that fails on any change) and how it decides."""
    set_scenario, calls = fake_pulumi
    set_scenario(**CHANGED)
    assert PhoenixStack("dev").drift().has_changes
    preview = next(c["argv"] for c in calls() if "preview" in c["argv"])
    assert "--expect-no-changes" in preview and "--refresh" in preview
    set_scenario(changes={"same": 32})
    assert not PhoenixStack("dev").drift().has_changes


def drift_exit(set_scenario, **scenario) -> subprocess.CompletedProcess:
    set_scenario(**scenario)
    return subprocess.run([*PHOENIX, "drift", "--quiet"], cwd=ROOT, env=os.environ,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_drift_exit_codes_tell_drift_from_no_drift_from_a_failed_check(fake_pulumi):
    """The deploy workflow acts on these: 3 drift, 0 none, 1 when pulumi could not tell (not drift)."""
    set_scenario, _ = fake_pulumi
    drift = drift_exit(set_scenario, **CHANGED)
    assert drift.returncode == Exit.DRIFT and "Traceback" not in drift.stderr
    assert "drift: stack 'dev' differs from what the program wants (2 resources)" in drift.stderr
    assert drift_exit(set_scenario, changes={"same": 32}).returncode == Exit.OK
    locked = drift_exit(set_scenario, fail="error: the stack is currently locked by 1 lock(s)")
    assert locked.returncode == Exit.FAILED, locked.stderr
    assert locked.stderr.startswith("error: pulumi drift failed: ") and "locked" in locked.stderr
    assert "drift:" not in locked.stderr


def test_cli_up_json_result_masks_secrets(fake_pulumi):
    set_scenario, _ = fake_pulumi
    set_scenario(**CHANGED)
    env = {**os.environ, "PHOENIX_TEST_PW": SECRET}
    done = subprocess.run([*PHOENIX, "up", "--stack", "dev", "--yes", "--json", "--quiet",
                           "--secret-env", "phoenix:proxmoxPassword=PHOENIX_TEST_PW"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outputs"]["rootCaCertificate"] == "[secret]" and result["secretOutputs"] == ["rootCaCertificate"]
    assert result["changes"]["update"] == 1
    assert SECRET not in done.stdout + done.stderr


# -- the real CLI, where it is installed --------------------------------------------------------
def test_real_pulumi_stack_and_secret_config(tmp_path, monkeypatch):
    if shutil.which("pulumi") is None or os.environ.get("FAKE_PULUMI_LOG"):
        pytest.skip("the pulumi CLI is not installed here (https://www.pulumi.com/docs/install/); "
                    "this test runs where it is")
    # A local file backend in tmp and a copy of the project: nothing outside tmp is touched,
    # and no operation that would reach Proxmox is run.
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".venv", ".git", "build", "__pycache__"))
    monkeypatch.setenv("PULUMI_BACKEND_URL", (tmp_path / "state").as_uri())
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "phoenix-test-passphrase")
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "home"))
    stack = PhoenixStack("dev", work_dir=project, create=True)      # a new backend: the first deploy
    stack.set_config(secrets={"proxmoxPassword": SECRET})
    assert stack.config()["phoenix:proxmoxPassword"] == "[secret]"
    assert SECRET not in (project / "Pulumi.dev.yaml").read_text()     # ciphertext only
    assert stack.stack.get_config("phoenix:proxmoxPassword").value == SECRET


# -- stacks are selected, never made up --------------------------------------------------------
@pytest.mark.parametrize("op", ["preview", "drift", "refresh", "destroy"])
def test_a_stack_name_the_backend_does_not_know_is_an_error_naming_it(fake_pulumi, op):
    """A typo in --stack must not create an empty stack (its preview would show the whole lab as
    new, its drift check would pass): exit 2, the stack named, and no `stack init`."""
    set_scenario, calls = fake_pulumi
    set_scenario(**CHANGED, stacks=["dev"])
    argv = [*PHOENIX, op, "--stack", "cluster", "--quiet"] + (["--yes"] if op == "destroy" else [])
    done = subprocess.run(argv, cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == Exit.BAD_INPUT, (done.stdout, done.stderr)
    assert "error: --stack: no stack named 'cluster' in the Pulumi backend" in done.stderr
    assert "Traceback" not in done.stderr
    argvs = [[x for x in c["argv"] if x != "--non-interactive"] for c in calls()]
    assert not any(a[:2] == ["stack", "init"] for a in argvs)
    assert not any(op in a for a in argvs if a[:1] != ["stack"])       # the operation never ran


def test_only_up_creates_a_stack_and_only_one_the_project_has_a_stack_file_for(fake_pulumi, tmp_path):
    set_scenario, calls = fake_pulumi
    set_scenario(**CHANGED, stacks=[])
    with pytest.raises(automation.StackNotFound):
        PhoenixStack("dev")                                   # select only: refused
    created = PhoenixStack("dev", create=True)                # Pulumi.dev.yaml is in the project
    assert created.name == "dev"
    argvs = ([x for x in c["argv"] if x != "--non-interactive"] for c in calls())
    inits = [a for a in argvs if a[:2] == ["stack", "init"]]
    assert [a[2] for a in inits] == ["dev"]
    with pytest.raises(automation.StackNotFound) as err:
        PhoenixStack("dve", create=True)                      # no Pulumi.dve.yaml: a typo, not a new stack
    assert "dve" in str(err.value)

