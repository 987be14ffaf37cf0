"""The day-two matrix under the mock runtime with the providers' replace rules (phoenix/daytwo.py).

For every change an operator makes to a running lab: the exact steps `pulumi up` would run, in
its order; no step that destroys a guest (its disks) unless the change is refused with a hazard;
every guest that is new (created, replaced, rebuilt) gets every one of its steps again, after
it. docs/day-two.md is generated from these outcomes and must match them.
"""

from __future__ import annotations

import pytest

from phoenix import daytwo
from phoenix.diff import COMMAND, GUEST_TYPES
from phoenix.resource_types import DOWNLOAD, FILE, GUEST_FIREWALL_TYPES, VM


@pytest.fixture(scope="module")
def outcomes() -> dict[str, daytwo.Outcome]:
    return {case.id: daytwo.run(case) for case in daytwo.CASES}


def changed(o: daytwo.Outcome, kind: str | None = None) -> dict[str, str]:
    return {c.name: c.kind for c in o.diff.changes if kind is None or c.type == kind}


def guest_of_step(o: daytwo.Outcome, name: str) -> str | None:
    c = next((c for c in o.diff.changes if c.name == name and c.type == COMMAND), None)
    return c.guest if c else None


def commands_on(snap, guest: str) -> set[str]:
    from phoenix.diff import _guest_of, guest_index
    index = guest_index(snap)
    return {e["name"] for e in snap.resources.values() if e["type"] == COMMAND and _guest_of(e, index) == guest}


def test_the_document_is_generated_from_the_matrix(outcomes):
    expected = daytwo.render([outcomes[c.id] for c in daytwo.CASES])
    assert daytwo.DOC.read_text() == expected, "docs/day-two.md is stale: run `python -m phoenix.daytwo`"


@pytest.mark.parametrize("case", daytwo.CASES, ids=lambda c: c.id)
def test_each_change_applies_without_loss_or_is_refused_as_expected(outcomes, case):
    o = outcomes[case.id]
    print(daytwo.render([o]))
    kinds = {h.kind for h in o.diff.hazards}
    if case.refused:
        assert case.refused <= kinds, o.diff.hazards
        return
    assert not o.diff.hazards, [h.line() for h in o.diff.hazards]
    # No step destroys a guest (and its disks).
    assert not [s for s in o.steps if s[2] in GUEST_TYPES and s[0] in ("delete", "delete-replaced")]
    # Every guest that is new gets all its steps again, after it.
    position = {(op, name): i for i, (op, name, _) in enumerate(o.steps)}
    for op, name, kind in o.steps:
        if kind in GUEST_TYPES and op in ("create", "create-replacement"):
            for step in commands_on(o.new, name):
                later = position.get(("create-replacement", step), position.get(("create", step)))
                assert later is not None and later > position[(op, name)], (name, step)


def test_a_user_data_edit_is_a_new_snippet_and_no_vm_changes(outcomes):
    o = outcomes["user-data"]
    assert changed(o) == {"portainer-user-data": "replace", "agent-1-user-data": "replace"}
    for name in ("portainer", "agent-1"):
        old = next(e for e in o.base.resources.values() if e["name"] == f"{name}-user-data")
        new = next(e for e in o.new.resources.values() if e["name"] == f"{name}-user-data")
        # a new path, never the old one rewritten; the old file stays for the VM that boots from it
        assert old["inputs"]["sourceRaw"]["fileName"] != new["inputs"]["sourceRaw"]["fileName"]
        assert old["retainOnDelete"] and new["retainOnDelete"]
        vm = next(e for e in o.new.resources.values() if e["name"] == name and e["type"] == VM)
        assert "initialization.userDataFileId" in vm["ignoreChanges"]
    creates = [i for i, s in enumerate(o.steps) if s[0] == "create-replacement"]
    deletes = [i for i, s in enumerate(o.steps) if s[0] == "delete-replaced"]
    assert max(creates) < min(deletes)         # every new snippet exists before an old one goes


def test_moving_a_vm_migrates_it_and_re_runs_its_steps_through_the_new_node(outcomes):
    o = outcomes["move-vm"]
    kinds = changed(o)
    assert kinds["agent-2"] == "update"                       # migrate=True: no re-creation
    vm = next(c for c in o.diff.changes if c.name == "agent-2")
    # import_from names the image on the new node: read at creation only, no re-import
    assert vm.fields == ["disks[0].importFrom", "nodeName"] and not vm.reasons
    assert kinds["agent-2-user-data"] == "replace"            # a snippet on the new node
    order = [s[1] for s in o.steps]
    assert order.index("agent-2-user-data") < order.index("agent-2")
    steps = commands_on(o.new, "agent-2")
    assert {n for n, k in changed(o, COMMAND).items() if k == "update"} == steps
    for c in o.diff.changes:
        if c.type == COMMAND:
            assert c.fields == ["connection.proxy.host"], (c.name, c.fields)


def test_moving_a_container_is_refused_with_the_procedure(outcomes):
    o = outcomes["move-container"]
    (hazard,) = [h for h in o.diff.hazards if h.kind == "move"]
    assert hazard.resource == "mesh" and "pct migrate 102 pve1" in hazard.message
    assert "docs/day-two.md" in hazard.message


def test_a_container_datastore_change_is_refused_for_every_container(outcomes):
    o = outcomes["datastore"]
    lab = daytwo.edited_stack("cluster", None)
    from phoenix.model import parse_lab
    containers = {g.name for g in parse_lab(daytwo.expand_catalog(lab.phoenix(), lab.root)).guests if g.kind == "lxc"}
    assert {h.resource for h in o.diff.hazards if h.kind == "disk"} == containers
    assert {h.resource for h in o.diff.hazards if h.kind == "protected"} == {"ca"}
    # the VMs' disks move in place
    assert {c.name: c.kind for c in o.diff.changes if c.type == VM} == {
        "portainer": "update", "agent-1": "update", "agent-2": "update", "agent-3": "update"}


def test_an_image_bump_replaces_the_downloads_delete_first_and_no_guest(outcomes):
    o = outcomes["image"]
    downloads = changed(o, DOWNLOAD)
    assert downloads and set(downloads.values()) == {"replace"}
    for name in downloads:
        ops = [s[0] for s in o.steps if s[1] == name]
        assert ops == ["delete-replaced", "create-replacement"]
    assert set(changed(o, VM).values()) == {"update"} and not o.diff.replaced_guests


def test_removing_a_service_stops_its_unit(outcomes):
    o = outcomes["remove-service"]
    deleted = {n for n, k in changed(o).items() if k == "delete"}
    assert deleted == {"gpu-c-svc-embed", "gpu-c-svc-embed-user", "gpu-c-cert-embed"}
    svc = next(e for e in o.base.resources.values() if e["name"] == "gpu-c-svc-embed")
    assert "systemctl disable --now phoenix-embed.service" in svc["inputs"]["delete"]
    assert svc["deleteBeforeReplace"]
    # routing to it goes before it stops
    order = [s[1] for s in o.steps]
    assert order.index("mesh-traefik-dynamic") < order.index("gpu-c-svc-embed")


def test_a_new_replica_gets_its_unit_user_and_certificate(outcomes):
    o = outcomes["replicas"]
    assert {n for n, k in changed(o).items() if k == "create"} == {
        "gpu-c-svc-llm", "gpu-c-svc-llm-user", "gpu-c-cert-llm"}
    assert {n for n, k in changed(o).items() if k == "update"} == {"gpu-c-firewall-rules", "mesh-traefik-dynamic"}


def test_rotating_the_agent_secret_updates_exactly_the_steps_that_carry_it(outcomes):
    o = outcomes["agent-secret"]
    marker = "<<secret:portainer-agent-secret.result>>"
    carrying = {e["name"] for e in o.new.resources.values() if e["type"] == COMMAND
                and any(marker in o.new.files.get(guest_of_step(o, e["name"]) or "", {}).get(p, "")
                        for p in (e["inputs"].get("stdin") or {}).get("phoenix:bundle", {}).get("files", []))}
    assert carrying and changed(o, COMMAND) == {name: "update" for name in carrying}


def test_a_guest_rebuilt_outside_pulumi_is_configured_again_after_a_refresh(outcomes):
    o = outcomes["rebuilt"]
    steps = commands_on(o.new, "mesh")
    firewall = {e["name"] for e in o.new.resources.values() if e["type"] in GUEST_FIREWALL_TYPES
                and e["name"].startswith("mesh-")}
    assert changed(o) == {name: "replace" for name in steps | firewall}
    assert not o.diff.replaced_guests                   # the guest itself is what it should be
    order = [(s[0], s[1]) for s in o.steps]
    # the firewall is back (delete-first: its identity is the VMID) before any step runs
    first_step = min(order.index(("create-replacement", s)) for s in steps)
    for name in firewall:
        assert order.index(("delete-replaced", name)) < order.index(("create-replacement", name)) < first_step


def test_no_applied_change_leaves_a_snippet_the_vm_needs_deleted(outcomes):
    """A snippet's delete never removes the file its VM boots from: old snippets are kept."""
    for o in outcomes.values():
        for op, name, kind in o.steps:
            if kind == FILE and op in ("delete", "delete-replaced"):
                entry = next(e for e in o.base.resources.values() if e["name"] == name and e["type"] == kind)
                assert entry["retainOnDelete"], (o.case.id, name)
