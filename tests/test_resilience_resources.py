"""The resilience tier under Pulumi's mock runtime: HA resources, groups or rules, replication jobs and
the backup job, with typed Args, their inputs, what they hang on, and that no change of theirs
replaces a guest."""

from __future__ import annotations

import importlib

import pytest

from conftest import edited, shipped_plan, stack_config
from phoenix import diff as plan_diff
from phoenix.model.resilience import plan_resilience
from phoenix.plan import make_plan
from phoenix.plan.engine import reveal
from phoenix.resource_types import BACKUP_JOB, GUEST_TYPES, HA_GROUP, HA_RESOURCE, HA_RULE, REPLICATION
from test_guests_resources import check_keys

ARGS_OF = {
    HA_RESOURCE: ("pulumi_proxmoxve", "HaresourceArgs"),
    HA_GROUP: ("pulumi_proxmoxve", "HagroupArgs"),
    HA_RULE: ("pulumi_proxmoxve", "HaruleArgs"),
    REPLICATION: ("pulumi_proxmoxve", "ReplicationArgs"),
    BACKUP_JOB: ("pulumi_proxmoxve.backup", "JobArgs"),
}
TIER = "phoenix:tier:Resilience"


def variant(stack: str, *edits):
    def edit(raw: dict) -> None:
        for e in edits:
            e(raw)
    return make_plan(edited(stack, edit))


def set_in(path: str, value):
    def edit(raw: dict) -> None:
        node = raw
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return edit


_plans: dict = {}


def plan_of(name: str):
    """The shipped stacks and the variants every test here reads, planned once."""
    if name not in _plans:
        _plans[name] = {
            "dev": lambda: shipped_plan("dev"),
            "cluster": lambda: shipped_plan("cluster"),
            "rules": lambda: variant("cluster", set_in("resilience.ha.placement", "rules")),
            "zfs": lambda: variant("cluster", set_in("proxmox.datastore", "local-zfs")),
        }[name]()
    return _plans[name]


def guest_urn(plan, name: str) -> str:
    return next(r.urn for r in plan.run.resources if r.name == name and r.type in GUEST_TYPES)


@pytest.mark.parametrize("name", ["dev", "cluster", "rules", "zfs"])
def test_every_input_is_a_field_of_its_typed_args_class(name):
    plan = plan_of(name)
    problems, checked = [], 0
    for r in plan.run.resources:
        if r.type in ARGS_OF:
            module = importlib.import_module(ARGS_OF[r.type][0])
            problems += check_keys({k: v for k, v in reveal(r.inputs).items() if k != "__defaults"},
                                   getattr(module, ARGS_OF[r.type][1]), module, r.name)
            checked += 1
            assert r.parent.endswith(f"{TIER}::resilience"), r.parent
    assert checked and problems == []


def test_each_ha_guest_is_an_ha_resource_named_by_its_guests_own_vmid():
    plan = plan_of("cluster")
    lab = plan.topo.lab
    found = {r.name.removesuffix("-ha"): r for r in plan.run.by_type(HA_RESOURCE)}
    assert set(found) == {"dns", "gateway", "mesh", "ca", "portainer", "agent-1", "agent-2"}
    groups = {r.value("group"): r for r in plan.run.by_type(HA_GROUP)}
    for name, r in found.items():
        g, urn = lab.guest(name), guest_urn(plan, name)
        assert r.value("resourceId") == f"{'ct' if g.kind == 'lxc' else 'vm'}:{g.id}"
        assert r.property_dependencies["resourceId"] == [urn]       # from the guest's vm_id output
        assert urn in r.dependencies and r.replace_with == [urn]
        assert r.delete_before_replace and r.replace_on_changes == ["resourceId"]
        assert r.value("state") == "started" and r.value("maxRestart") == 1 and r.value("maxRelocate") == 1
        group = groups[r.value("group")]
        assert group.urn in r.property_dependencies["group"]
        nodes = group.value("nodes")
        assert max(nodes, key=nodes.get) == g.node                  # its own node first
        assert group.value("restricted") is True and group.value("noFailback") is False
        assert "failback" not in r.inputs                            # Proxmox VE 8: the group's
    assert len(groups) == 3 and all(gr.replace_on_changes == ["group"] for gr in groups.values())


def test_on_proxmox_ve_9_node_affinity_rules_place_the_ha_resources():
    plan = plan_of("rules")
    assert plan.run.by_type(HA_GROUP) == []
    ha = {r.urn: r for r in plan.run.by_type(HA_RESOURCE)}
    assert all(r.value("failback") is True and "group" not in r.inputs for r in ha.values())
    rules = plan.run.by_type(HA_RULE)
    assert len(rules) == 3
    covered = []
    for rule in rules:
        assert rule.value("type") == "node-affinity" and rule.value("strict") is True
        members = rule.property_dependencies["resources"]
        assert set(members) <= set(ha) and set(members) <= set(rule.dependencies)
        assert sorted(rule.value("resources")) == sorted(ha[u].value("resourceId") for u in members)
        covered += rule.value("resources")
    assert sorted(covered) == sorted(r.value("resourceId") for r in ha.values())


def test_local_zfs_guests_replicate_to_their_failover_node_before_ha_takes_them():
    plan = plan_of("zfs")
    jobs = {r.name: r for r in plan.run.by_type(REPLICATION)}
    assert set(jobs) == {"dns-replication-pve2", "gateway-replication-pve2", "mesh-replication-pve3",
                         "ca-replication-pve1", "portainer-replication-pve3", "agent-1-replication-pve2",
                         "agent-2-replication-pve3"}
    ca = jobs["ca-replication-pve1"]
    assert ca.value("resourceId") == "103-0" and ca.value("target") == "pve1" and ca.value("type") == "local"
    assert ca.value("schedule") == "*/15" and ca.property_dependencies["resourceId"] == [guest_urn(plan, "ca")]
    assert ca.replace_with == [guest_urn(plan, "ca")] and ca.delete_before_replace
    assert ca.urn in plan.run.named("ca-ha").dependencies
    group = next(r for r in plan.run.by_type(HA_GROUP) if r.value("group") == plan.run.named("ca-ha").value("group"))
    assert group.value("nodes") == {"pve3": 2, "pve1": 1}                # only where its disks are


@pytest.mark.parametrize("name", ["dev", "cluster"])
def test_one_backup_job_per_stack_covers_every_guest_the_model_backs_up(name):
    plan = plan_of(name)
    lab = plan.topo.lab
    [job] = plan.run.by_type(BACKUP_JOB)
    b = lab.resilience.backup
    assert job.value("resourceId") == f"phoenix-{name}"
    assert job.value("vmids") == [str(lab.guest(p.guest).id) for p in plan_resilience(lab).backed_up]
    assert sorted(job.property_dependencies["vmids"]) == sorted(guest_urn(plan, g.name) for g in lab.guests)
    assert job.value("storage") == b.storage and job.value("schedule") == b.schedule
    assert job.value("mode") == "snapshot" and job.value("compress") == "zstd" and job.value("remove") is True
    assert job.value("pruneBackups") == b.retention.prune_backups()
    assert job.value("mailtos") == list(b.notify.mail_to) and job.value("mailnotification") == "failure"
    assert job.value("enabled") is True and job.value("all") is False and job.value("repeatMissed") is True
    assert plan.run.outputs["resilience"]["backup"]["job"] == f"phoenix-{name}"


def test_the_dev_stack_has_backups_and_no_ha_resources():
    plan = plan_of("dev")
    assert [r.type for r in plan.run.resources if r.parent.endswith(f"{TIER}::resilience")] == [BACKUP_JOB]
    assert plan.run.outputs["resilience"]["ha"]["enabled"] is False


def test_the_stack_output_says_where_each_ha_guest_may_run():
    out = plan_of("cluster").run.outputs["resilience"]
    assert out["ha"]["guests"]["ca"] == {"sid": "ct:103", "nodes": ["pve3", "pve1", "pve2"], "disks": "shared ceph-vm",
                                         "placement": "phoenix-cluster-pve3-pve1-pve2"}
    assert set(out["ha"]["nodeBound"]) == {"gpu-a", "gpu-b", "gpu-c", "agent-3"}


# -- no change of theirs replaces a guest ------------------------------------------------------------
CHANGES = {
    "ha off for the mesh": ("cluster", set_in("resilience.guests.mesh", {"ha": False})),
    "ha off for the stack": ("cluster", set_in("resilience.ha.enabled", False)),
    "groups to rules": ("cluster", set_in("resilience.ha.placement", "rules")),
    "another failover order": ("cluster", set_in("resilience.guests.ca", {"failover": ["pve2", "pve1"]})),
    "backup schedule and retention": ("cluster", set_in("resilience.backup.schedule", "sat 04:00"),
                                      set_in("resilience.backup.retention", {"keepDaily": 14})),
    "backup storage": ("dev", set_in("resilience.storage.pbs", {"type": "pbs"}),
                       set_in("resilience.backup.storage", "pbs")),
    "a guest out of the backups": ("dev", set_in("resilience.guests.gpu-llm", {"backup": False})),
    "backups off": ("dev", set_in("resilience.backup.enabled", False)),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_no_ha_replication_or_backup_change_replaces_a_guest(change):
    stack, *edits = CHANGES[change]
    base = plan_diff.snapshot(plan_of(stack))
    new = plan_diff.snapshot(variant(stack, *edits))
    result = plan_diff.diff(base, new)
    touched = [c for c in result.changes if c.type in ARGS_OF]
    assert touched, f"{change}: no HA, replication or backup resource changed"
    assert [c for c in result.changes if c.type not in ARGS_OF] == [], \
        f"{change} touched more than resilience: {[(c.kind, c.name) for c in result.changes if c.type not in ARGS_OF]}"
    assert result.hazards == []
    print(change, [(c.kind, c.name, c.reasons) for c in touched])


def test_replication_target_changes_replace_the_job_delete_first_and_nothing_else():
    base = plan_diff.snapshot(plan_of("zfs"))
    new = plan_diff.snapshot(variant("cluster", set_in("proxmox.datastore", "local-zfs"),
                                     set_in("resilience.guests.ca", {"replicateTo": ["pve2"]})))
    result = plan_diff.diff(base, new)
    kinds = {(c.kind, c.name) for c in result.changes}
    assert ("delete", "ca-replication-pve1") in kinds and ("create", "ca-replication-pve2") in kinds
    assert not [c for c in result.changes if c.is_guest] and result.hazards == []


def test_a_replaced_guest_takes_its_ha_resource_and_replication_with_it():
    """Rebuilt outside Pulumi (a new MAC): the steps re-run; HA and replication are read, not
    replaced (they name the guest by VMID). Replaced by Pulumi (a new id): they follow it."""
    base = plan_diff.snapshot(plan_of("zfs"))
    rebuilt = plan_diff.snapshot(make_plan(edited("cluster", set_in("proxmox.datastore", "local-zfs")),
                                           facts={"rebuilt:ca": "1"}))
    assert not [c for c in plan_diff.diff(base, rebuilt).changes if c.type in ARGS_OF]
    replaced = plan_diff.diff(base, base, replace=("ca",))
    follow = {c.name: c for c in replaced.changes if c.type in ARGS_OF}
    assert follow["ca-ha"].kind == "replace" and follow["ca-replication-pve1"].kind == "replace"
    assert any("replaceWith ca" in r for r in follow["ca-ha"].reasons)
    steps = [name for op, name, _ in plan_diff.execution_order(replaced, base, base)]
    # deleted before the guest (Proxmox refuses to destroy an HA-managed or replicated container)
    assert steps.index("ca-ha") < steps.index("ca-replication-pve1") < steps.index("ca")


def test_the_plan_summary_lists_ha_replication_and_backups():
    text = plan_of("cluster").summary()
    assert "high availability, HA groups (Proxmox VE 8): dns[ct:100] pve1 > pve2 > pve3 (shared ceph-vm)" in text
    assert "backups: job phoenix-cluster at 02:30 to pbs" in text
    assert stack_config("cluster").phoenix()["resilience"]["ha"]["placement"] == "groups"
