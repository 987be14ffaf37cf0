"""`phoenix state-export`: the stack's state, secrets encrypted, in a new 0600 file.

Runs the command through the Automation API against a stand-in `pulumi` (like
tests/test_automation.py's): it answers `version`, `stack select` and `stack export` in the
CLI's formats, records every call, and (as the real CLI does) prints secrets in clear only when
asked with `--show-secrets`. So the test proves what Phoenix asks for and what it writes, not
what a real backend holds; a run with the real CLI is at the end, where it is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from phoenix.errors import Failed
from phoenix.exits import Exit
from phoenix.state_export import check_state, secret_values

PHOENIX = [sys.executable, "-m", "phoenix.cli"]
#: what the stand-in's state holds in clear, and must never reach the file.
ROOT_KEY = "-----BEGIN EC " + "PRIVATE KEY-----fake-root-key-----END EC PRIVATE KEY-----"

FAKE = r'''#!PYTHON
"""A stand-in `pulumi` for `stack export` (and what the Automation API asks before it)."""
import json, os, sys
args = [a for a in sys.argv[1:] if a != "--non-interactive"]
with open(os.environ["FAKE_PULUMI_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
if args == ["version"]:
    print("v3.200.0"); sys.exit(0)
if args[:2] == ["stack", "select"]:
    name = args[args.index("--stack") + 1] if "--stack" in args else args[-1]
    if name != "dev":
        print(f"error: no stack named '{name}' found", file=sys.stderr); sys.exit(255)
    sys.exit(0)
if args[:2] == ["stack", "export"]:
    if os.environ.get("FAKE_PULUMI_FAIL"):
        print("error: the backend is unreachable", file=sys.stderr); sys.exit(255)
    sig = "4dabf18193072939515e22adb298388d"
    secret = ({sig: "1b47061264138c4ac30d75fd1eb44270", "plaintext": json.dumps(os.environ["ROOT_KEY"])}
              if "--show-secrets" in args else
              {sig: "1b47061264138c4ac30d75fd1eb44270", "ciphertext": "v1:c2VjcmV0LWJ5dGVz:ZW5jcnlwdGVk"})
    print(json.dumps({"version": 3, "deployment": {
        "manifest": {"time": "2026-01-01T00:00:00Z"},
        "secrets_providers": {"type": "passphrase", "state": {"salt": "v1:abc:def"}},
        "resources": [
            {"urn": "urn:pulumi:dev::phoenix::pulumi:pulumi:Stack::phoenix-dev", "type": "pulumi:pulumi:Stack"},
            {"urn": "urn:pulumi:dev::phoenix::phoenix:tier:Pki$tls:index/privateKey:PrivateKey::root-ca-key",
             "type": "tls:index/privateKey:PrivateKey", "outputs": {"privateKeyPem": secret}}]}}, indent=4))
    sys.exit(0)
print(f"fake pulumi: unsupported {args}", file=sys.stderr); sys.exit(2)
'''


@pytest.fixture
def fake_pulumi(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "pulumi"
    exe.write_text(FAKE.replace("#!PYTHON", "#!" + sys.executable, 1))
    exe.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_PULUMI_LOG": str(log),
           "ROOT_KEY": ROOT_KEY, "PULUMI_SKIP_UPDATE_CHECK": "true"}

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return env, calls


def run(env, *argv, umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run([*PHOENIX, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.umask(umask), check=False)


def test_the_export_is_a_new_0600_file_with_every_secret_encrypted(tmp_path, fake_pulumi):
    env, calls = fake_pulumi
    out = tmp_path / "dev-state.json"
    done = run(env, "state-export", "--stack", "dev", "--out", str(out), umask=0)   # even with a wide-open umask
    assert done.returncode == Exit.OK, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert ROOT_KEY not in text and "fake-root-key" not in text and "plaintext" not in text
    doc = json.loads(text)
    [secret] = secret_values(doc)
    assert secret["ciphertext"].startswith("v1:")
    # exactly `pulumi stack export` (never the SDK's export_stack, which adds --show-secrets)
    exports = [c for c in calls() if c[:2] == ["stack", "export"]]
    assert exports == [["stack", "export", "--stack", "dev"]]
    assert done.stdout.splitlines() == [
        f"state of stack 'dev' written to {out} (mode 0600): 2 resources, 1 secrets, all encrypted by the "
        "stack's secrets provider (passphrase)",
        "restoring it needs this stack's passphrase (PULUMI_CONFIG_PASSPHRASE) and its Pulumi.dev.yaml (its "
        "encryptionsalt): keep the passphrase apart from this file"]
    assert ROOT_KEY not in done.stdout + done.stderr


def test_an_existing_file_is_never_overwritten(tmp_path, fake_pulumi):
    env, calls = fake_pulumi
    out = tmp_path / "keep.json"
    out.write_text("precious\n")
    done = run(env, "state-export", "--stack", "dev", "--out", str(out))
    assert done.returncode == Exit.BAD_INPUT and done.stderr == f"error: --out: {out} exists; an export never " \
                                                                "overwrites a file\n"
    assert out.read_text() == "precious\n" and calls() == []       # refused before pulumi ran
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    assert run(env, "state-export", "--stack", "dev", "--out", str(link)).returncode == Exit.BAD_INPUT
    assert not (tmp_path / "elsewhere.json").exists()


def test_a_failed_export_or_an_unknown_stack_writes_nothing(tmp_path, fake_pulumi):
    env, _ = fake_pulumi
    out = tmp_path / "state.json"
    done = run({**env, "FAKE_PULUMI_FAIL": "1"}, "state-export", "--stack", "dev", "--out", str(out))
    assert done.returncode == Exit.FAILED and not out.exists()
    assert done.stderr == "error: pulumi stack export --stack dev failed: the backend is unreachable\n"
    done = run(env, "state-export", "--stack", "prod", "--out", str(out))
    assert done.returncode == Exit.BAD_INPUT and "no stack named 'prod'" in done.stderr and not out.exists()


def test_a_state_with_a_secret_in_clear_is_refused():
    sig = "4dabf18193072939515e22adb298388d"
    clear = json.dumps({"deployment": {"resources": [{"outputs": {"k": {sig: "x", "plaintext": "\"s\""}}}]}})
    with pytest.raises(Failed, match="1 secret"):
        check_state(clear)
    with pytest.raises(Failed, match="no state"):
        check_state("Resources: 3 unchanged")


def test_without_pulumi_it_is_one_line_and_exit_1(tmp_path):
    keep = [p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "pulumi").exists()]
    done = run({**os.environ, "PATH": os.pathsep.join(keep)}, "state-export", "--out", str(tmp_path / "s.json"))
    assert done.returncode == Exit.FAILED and done.stderr.count("\n") == 1 and "get.pulumi.com" in done.stderr


def test_with_the_real_cli_the_export_of_a_local_stack_keeps_secrets_encrypted(tmp_path):
    if shutil.which("pulumi") is None:
        pytest.skip("the pulumi CLI is not installed (https://www.pulumi.com/docs/install/)")
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: phoenix-export-test\nruntime: python\n")
    env = {**os.environ, "PULUMI_BACKEND_URL": f"file://{tmp_path / 'backend'}",
           "PULUMI_CONFIG_PASSPHRASE": "test-passphrase", "PULUMI_SKIP_UPDATE_CHECK": "true"}
    (tmp_path / "backend").mkdir()
    subprocess.run(["pulumi", "stack", "init", "dev", "--non-interactive"], cwd=project, env=env, check=True,
                   capture_output=True)
    done = subprocess.run([*PHOENIX, "state-export", "--stack", "dev", "--cwd", str(project), "--out",
                           str(tmp_path / "state.json")], cwd=ROOT, env=env, capture_output=True, text=True,
                           check=False)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
    check_state((tmp_path / "state.json").read_text())
