"""The offline plan: what `make plan` writes, that it is complete, deterministic and holds no secret."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, shipped_plan
from phoenix.bundle import unpack


def write(plan, out: Path) -> dict:
    plan.write(out)
    return json.loads((out / "plan.json").read_text())


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "dev"
    proc = subprocess.run([sys.executable, "-m", "phoenix.cli", "plan", "--stack", "dev", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
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
    from phoenix.plan import make_plan
    from conftest import stack_config
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


def test_bundles_round_trip():
    from phoenix.bundle import GuestFile, digest, pack
    files = [GuestFile("/etc/b.conf", "b\n"), GuestFile("/etc/a.key", "k", 0o640, "root", "ssl-cert")]
    again = unpack(pack(files))
    assert sorted(again, key=lambda f: f.path) == sorted(files, key=lambda f: f.path)
    assert pack(files) == pack(list(reversed(files)))
    assert digest(files) != digest(files[:1])
    with pytest.raises(ValueError):
        GuestFile("etc/relative", "x")
