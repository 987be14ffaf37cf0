"""The offline plan: what `make plan` writes, that it is complete, deterministic and holds no secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, shipped_plan


def write(plan, out: Path) -> dict:
    plan.write(out)
    return json.loads((out / "plan.json").read_text())


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "dev"
    proc = subprocess.run([sys.executable, "-m", "phoenix", "plan", "--stack", "dev", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_cli_plan_prints_a_summary(dev_dir):
    _, stdout = dev_dir
    assert stdout.startswith("Phoenix plan for stack 'dev': ")
    assert "  Guests" in stdout and "  Pki" in stdout
    assert "guests (7): dns[100], gateway[101], mesh[102], ca[103]" in stdout
    assert "public entry points: https://chat.lab.example.com/" in stdout


def test_plan_json_lists_every_resource_with_parent_dependencies_and_inputs(dev_dir):
    out, _ = dev_dir
    doc = json.loads((out / "plan.json").read_text())
    urns = {r["urn"] for r in doc["resources"]}
    for r in doc["resources"]:
        assert set(r) >= {"urn", "type", "name", "parent", "dependencies", "inputs", "secretInputs"}
        assert all(d in urns for d in r["dependencies"]), r["name"]
    guests = [r for r in doc["resources"] if r["type"].endswith(("ContainerLegacy", "VmLegacy"))]
    assert sorted(r["inputs"]["vmId"] for r in guests) == [100, 101, 102, 103, 110, 200, 201]


def test_secrets_are_markers_in_plan_json_and_listed(dev_dir):
    out, _ = dev_dir
    doc = json.loads((out / "plan.json").read_text())
    provider = next(r for r in doc["resources"] if r["type"] == "pulumi:providers:proxmoxve")
    assert provider["inputs"]["password"] == "[secret]"
    assert "password" in provider["secretInputs"]
    assert "phoenix:proxmoxPassword" in doc["secrets"]
    assert "root-ca-key.privateKeyPem" in doc["secrets"]


def test_no_secret_value_anywhere_in_the_plan_output(dev_dir):
    """Every secret the run knows (config secrets, keys, generated passwords) is absent from disk."""
    out, _ = dev_dir
    plan = shipped_plan("dev")
    secrets = [v for v in plan.secrets.values if len(v) >= 8]
    assert len(secrets) >= 8
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text()
            leaked = [plan.secrets.values[s] for s in secrets if s in text]
            assert not leaked, f"{path} holds {leaked}"
    # And the PEM private key header never appears outside --with-secrets.
    assert not [p for p in out.rglob("*") if p.is_file() and "PRIVATE KEY-----" in p.read_text()
                and "<<secret:" not in p.read_text()]


def test_pushed_files_are_laid_out_per_guest(dev_dir):
    out, _ = dev_dir
    plan = shipped_plan("dev")
    for g in plan.topo.lab.guests:
        apply = out / "files" / g.name / "usr/local/sbin/phoenix-apply"
        assert apply.read_text().startswith("#!/bin/bash")
    # Every file on disk is exactly what a bundle of some step carries (secrets aside).
    from phoenix.plan.writer import pushed_files
    files = pushed_files(plan.run, plan.topo)
    for guest, by_path in files.items():
        for path, (f, _step) in by_path.items():
            on_disk = (out / "files" / guest / path.lstrip("/")).read_text()
            assert on_disk == plan.secrets.redact(f.content)


def test_topology_picture(dev_dir):
    out, _ = dev_dir
    text = (out / "topology.mmd").read_text()
    assert text.startswith("flowchart LR")
    for name in ("gateway", "mesh", "ca", "dns", "gpu_llm", "portainer", "agent_1"):
        assert f"g_{name}[" in text
    assert 'internet -- "80/tcp, 443/tcp" --> g_gateway' in text
    assert "Root CA" in text and "Intermediate CA" in text


def test_plans_are_deterministic(tmp_path):
    from conftest import stack_config
    from phoenix.plan import make_plan
    a = write(shipped_plan("dev"), tmp_path / "a")
    b = write(make_plan(stack_config("dev")), tmp_path / "b")
    assert a == b
    for path in (tmp_path / "a" / "files").rglob("*"):
        if path.is_file():
            twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
            assert twin.read_text() == path.read_text(), path


def test_with_secrets_writes_key_material_for_local_experiments(tmp_path):
    plan = shipped_plan("dev")
    plan.write(tmp_path / "s", with_secrets=True)
    key = (tmp_path / "s" / "secrets" / "root-ca-key.privateKeyPem").read_text()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    assert load_pem_private_key(key.encode(), None).public_key() is not None   # a real key
    assert oct((tmp_path / "s" / "secrets").stat().st_mode & 0o777) == "0o700"


def test_cluster_stack_plans_cleanly(cluster_plan):
    lab = cluster_plan.topo.lab
    assert len(lab.proxmox.nodes) == 3
    assert len([s for s in lab.services if s.gpu]) >= 3 and len(lab.role("agent")) >= 3
    nodes = {r.value("nodeName") for r in cluster_plan.run.resources
             if r.type.endswith(("ContainerLegacy", "VmLegacy"))}
    assert nodes == {"pve1", "pve2", "pve3"}



def test_plan_json_shows_each_bundle_as_the_digest_and_paths_of_what_the_step_pushes(dev_dir, dev_plan):
    from phoenix.bundle import digest, unpack
    from phoenix.plan.writer import COMMAND
    out, _ = dev_dir
    doc = json.loads((out / "plan.json").read_text())
    shown = {r["urn"]: r["inputs"]["stdin"]["phoenix:bundle"] for r in doc["resources"]
             if isinstance(r["inputs"].get("stdin"), dict)}
    steps = [r for r in dev_plan.run.by_type(COMMAND) if r.value("stdin")]
    assert len(steps) >= 30 and set(shown) == {r.urn for r in steps}
    for r in steps:
        files = unpack(r.value("stdin"))
        assert shown[r.urn] == {"digest": digest(files), "files": sorted(f.path for f in files)}


def test_summary_counts_every_resource_under_its_tier(dev_dir):
    """The summary's per-tier counts, recomputed from plan.json's parents."""
    from collections import Counter
    out, stdout = dev_dir
    doc = json.loads((out / "plan.json").read_text())
    by_urn = {r["urn"]: r for r in doc["resources"]}

    def tier(r: dict) -> str:
        while r["parent"] in by_urn:
            r = by_urn[r["parent"]]
        return r["type"].split(":")[-1] if r["type"].startswith("phoenix:tier:") else "stack"

    counts = Counter(tier(r) for r in doc["resources"] if not r["type"].startswith("phoenix:tier:"))
    assert stdout.startswith(f"Phoenix plan for stack 'dev': {sum(counts.values())} resources\n")
    for name, n in counts.items():
        assert f"\n  {name:<10} {n:>4}\n" in stdout


def test_a_plan_leaves_the_garbage_collector_as_it_found_it():
    """The engine collects less often while the program runs (bench/plan_bench.py), and only then:
    the tests and the Automation API run plans in a longer-lived process."""
    import gc

    from conftest import stack_config
    from phoenix.collector import GC_FIRST_THRESHOLD
    from phoenix.plan import with_placeholder_secrets
    from phoenix.plan.engine import run_program
    before = gc.get_threshold()
    seen = []
    run_program(with_placeholder_secrets(stack_config("dev"))[0], program=lambda: seen.append(gc.get_threshold()))
    assert seen == [(GC_FIRST_THRESHOLD, *before[1:])]
    assert gc.get_threshold() == before


def test_compiled_templates_are_cached_privately_and_change_nothing(tmp_path):
    """Two plans in fresh processes with a template cache in XDG_CACHE_HOME: the second one reads
    the compiled templates; both write the same plan. A cache folder others can write is not used."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    outs = []
    for i in range(2):
        out = tmp_path / f"plan{i}"
        done = subprocess.run([sys.executable, "-m", "phoenix.cli", "plan", "--stack", "dev", "--out", str(out)],
                              capture_output=True, text=True, cwd=ROOT, env=env, check=False)
        assert done.returncode == 0, done.stderr
        outs.append((out / "plan.json").read_text())
    assert outs[0] == outs[1]
    (folder,) = (tmp_path / "cache" / "phoenix").iterdir()
    assert folder.stat().st_mode & 0o777 == 0o700 and len(list(folder.iterdir())) >= 20
    shared = tmp_path / "shared"
    (shared / "phoenix" / folder.name).mkdir(parents=True, mode=0o777)
    (shared / "phoenix" / folder.name).chmod(0o777)
    done = subprocess.run([sys.executable, "-c", "from phoenix.render import environment; "
                           "print(environment().bytecode_cache)"],
                          capture_output=True, text=True, cwd=ROOT, env={**env, "XDG_CACHE_HOME": str(shared)},
                          check=False)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stdout + done.stderr
