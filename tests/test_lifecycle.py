"""Replacement semantics in the offline plan: what `pulumi up` does when something must be replaced.

Pulumi replaces create-first unless told otherwise, and the provider's delete of the old resource
then removes what has the same identity (a VMID, a file's path, a guest's firewall). Checked
here on the shipped stacks' plans, resource by resource, and through `phoenix diff`, which
reports every replacement hazard as an error.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys

import pytest

from conftest import ROOT, edited, shipped_plan
from phoenix import diff
from phoenix.plan import make_plan
from phoenix.plan.engine import reveal
from phoenix.resource_types import (
    COMMAND,
    CONTAINER,
    DOWNLOAD,
    FILE,
    GUEST_FIREWALL_TYPES,
    GUEST_TYPES,
    SELF_SIGNED_CERT,
    VM,
)


def test_every_resource_with_a_fixed_identity_is_replaced_delete_first(any_plan):
    """Guests (explicit VMID), images (a fixed file name on the node) and guest firewalls (the
    guest's VMID): a second one cannot exist beside the first."""
    fixed = [r for r in any_plan.run.resources if r.type in (*GUEST_TYPES, DOWNLOAD, *GUEST_FIREWALL_TYPES)]
    assert len(fixed) > 20
    assert [r.name for r in fixed if not r.delete_before_replace] == []


def test_guests_keep_the_template_and_user_data_they_were_created_with_and_vms_migrate(any_plan):
    for r in any_plan.run.resources:
        if r.type == CONTAINER:
            assert r.ignore_changes == ["operatingSystem"]
        if r.type == VM:
            assert "initialization.userDataFileId" in r.ignore_changes
            assert r.value("migrate") is True           # a node change migrates, never re-creates


def test_user_data_snippets_are_named_by_their_content_and_kept(any_plan):
    snippets = any_plan.run.by_type(FILE)
    assert snippets
    for r in snippets:
        raw = r.value("sourceRaw")
        digest = hashlib.sha256(raw["data"].encode()).hexdigest()[:16]
        assert raw["fileName"].endswith(f"-user-data-{digest}.yaml")
        assert r.retain_on_delete and not r.delete_before_replace   # a new file beside the old one


def test_guest_firewalls_follow_their_guest(any_plan):
    """Named by the guest resource's outputs, replaced with it, and with a new MAC address (a guest
    rebuilt outside Pulumi, read back by a refresh)."""
    run = any_plan.run
    checked = 0
    for r in run.resources:
        if r.type not in GUEST_FIREWALL_TYPES:
            continue
        key = "containerId" if "containerId" in r.inputs else "vmId"
        guest = next(g for g in run.resources if g.type in GUEST_TYPES and g.urn in r.property_dependencies[key])
        assert r.property_dependencies["nodeName"] == [guest.urn]
        assert r.value(key) == guest.value("vmId")
        assert r.replace_with == [guest.urn]
        assert r.replacement_trigger == next(iter(guest.computed.values()))
        checked += 1
    assert checked >= 2 * len(any_plan.topo.lab.guests)


def test_every_remote_step_reruns_on_a_new_guest_and_never_passes_its_previous_output(any_plan):
    run = any_plan.run
    macs = {next(iter(g.computed.values())): g.name for g in run.resources if g.type in GUEST_TYPES}
    commands = run.by_type(COMMAND)
    assert len(commands) > 30
    for r in commands:
        assert r.value("addPreviousOutputInEnv") is False, r.name
        if r.name.startswith("gpu-probe-"):
            continue                                # runs on a node, not a guest
        triggers = r.value("triggers")
        assert any(t in macs for t in triggers), (r.name, triggers)
        assert r.replace_on_changes == ["triggers[*]"]
        # a step that deletes something is replaced delete-first, or its old delete undoes the new create
        assert r.delete_before_replace == bool(r.value("delete")), r.name


def test_the_protected_root_never_renews_itself(any_plan):
    root = any_plan.run.named("root-ca-cert", SELF_SIGNED_CERT)
    assert root.protect and root.value("earlyRenewalHours") == 0
    assert diff.static_hazards(any_plan.document()["resources"]) == []


def test_a_protected_certificate_with_early_renewal_is_a_plan_hazard():
    doc = shipped_plan("dev").document()
    root = copy.deepcopy(next(r for r in doc["resources"] if r["name"] == "root-ca-cert"))
    root["inputs"]["earlyRenewalHours"] = 8760
    (hazard,) = diff.static_hazards([root])
    assert hazard.kind == "self-renewing" and hazard.resource == "root-ca-cert"
    assert "docs/upgrading.md" in hazard.message


# -- hazards ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base():
    return diff.snapshot(shipped_plan("dev"))


def test_a_create_first_replacement_of_a_fixed_identity_is_a_hazard(base):
    """The hazard rule itself: the same change with delete-first off is refused."""
    def privileged(raw):
        next(g for g in raw["guests"] if g["name"] == "mesh")["disk"] = 4      # shrink: a replacement
    new = diff.snapshot(make_plan(edited("dev", privileged)))
    with_dbr = diff.diff(base, new)
    assert {h.kind for h in with_dbr.hazards} == {"disk"}       # the loss itself, not create-first
    careless = copy.deepcopy(new)
    for entry in careless.resources.values():
        entry["deleteBeforeReplace"] = False
    kinds = {(h.kind, h.resource) for h in diff.diff(base, careless).hazards}
    assert ("create-first", "mesh") in kinds and ("create-first", "mesh-firewall-rules") in kinds


def test_replacing_a_protected_resource_is_a_hazard(base):
    def renumber(raw):
        next(g for g in raw["guests"] if g["role"] == "ca")["id"] = 153
    result = diff.diff(base, diff.snapshot(make_plan(edited("dev", renumber))))
    assert [h.resource for h in result.hazards if h.kind == "protected"] == ["ca"]


def test_phoenix_diff_reports_hazards_as_errors_after_the_diff(tmp_path):
    def move(raw):
        next(g for g in raw["guests"] if g["name"] == "gateway")["node"] = "pve2"
        raw["proxmox"]["nodes"].append({"name": "pve2", "address": "192.168.1.11"})
    shipped_plan("dev").write(tmp_path / "base")
    make_plan(edited("dev", move)).write(tmp_path / "new")
    done = subprocess.run([sys.executable, "-m", "phoenix.cli", "diff", str(tmp_path / "base"),
                           str(tmp_path / "new"), "--no-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert "HAZARDS (1)" in done.stdout and "+- replace  gateway" in done.stdout
    assert done.stderr.startswith("error: gateway: container gateway would move pve -> pve2")
    assert "pct migrate 101 pve2" in done.stderr and done.stderr.count("\n") == 1
    same = subprocess.run([sys.executable, "-m", "phoenix.cli", "diff", str(tmp_path / "base"),
                           str(tmp_path / "base")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert same.returncode == 0 and "no changes" in same.stdout


def test_plan_json_shows_where_a_step_runs_but_no_key(dev_plan):
    doc = dev_plan.document()
    step = next(r for r in doc["resources"] if r["name"] == "agent-1-bootstrap")
    conn = step["inputs"]["connection"]
    assert conn["host"] == "10.20.0.31" and conn["proxy"]["host"] == "192.168.1.10"
    assert conn["(the rest)"] == "[secret]"
    key = reveal(dev_plan.run.named("deploy-key").outputs["privateKeyOpenssh"])
    assert key.strip().splitlines()[1] not in json.dumps(doc)
