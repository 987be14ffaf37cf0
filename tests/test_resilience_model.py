"""phoenix:resilience in the model: defaults per role, and what Proxmox cannot do refused by key.

Each refusal is one ``phoenix:<key>: ...`` line (exit 2 of every command), checked here through
the one loader, on copies of the shipped stacks with one change each.
"""

from __future__ import annotations

import pytest

from conftest import edited, stack_config
from phoenix.errors import ConfigError
from phoenix.loader import load_stack
from phoenix.model.resilience import plan_resilience
from phoenix.model.resilience_checks import resilience_warnings
from phoenix.render.resilience import placements, summary_lines


def refused(stack: str, edit) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_stack(edited(stack, edit))
    return err.value.problems


def loaded(stack: str, edit=None):
    return load_stack(edited(stack, edit) if edit else stack_config(stack))


def resilience(**values):
    def edit(raw: dict) -> None:
        raw.setdefault("resilience", {}).update(values)
    return edit


def both(*edits):
    def edit(raw: dict) -> None:
        for e in edits:
            e(raw)
    return edit


def guests(**overrides):
    def edit(raw: dict) -> None:
        found = raw.setdefault("resilience", {}).setdefault("guests", {})
        for name, value in overrides.items():
            found[name.replace("_", "-")] = value
    return edit


def proxmox(**values):
    def edit(raw: dict) -> None:
        raw["proxmox"].update(values)
    return edit


# -- the shipped stacks -----------------------------------------------------------------------------
def test_the_cluster_stack_makes_the_singleton_tiers_portainer_and_the_agents_highly_available():
    lab = loaded("cluster").lab
    plan = plan_resilience(lab)
    assert plan.ha_enabled and plan.placement == "groups"
    ha = {p.guest: p for p in plan.ha_guests}
    assert set(ha) == {"dns", "gateway", "mesh", "ca", "portainer", "agent-1", "agent-2"}
    for name, p in ha.items():
        g = lab.guest(name)
        # its own node first, then every other node (Ceph RBD: every node has its disks)
        assert p.placement[0] == g.node and sorted(p.placement) == ["pve1", "pve2", "pve3"]
        assert p.disks == "shared" and p.sid == f"{'ct' if g.kind == 'lxc' else 'vm'}:{g.id}"
    # GPU guests stay on their node's hardware: the containers by role, agent-3 declared
    bound = {p.guest: p.node_bound for p in plan.guests.values() if p.node_bound}
    assert set(bound) == {"gpu-a", "gpu-b", "gpu-c", "agent-3"}
    assert bound["agent-3"] == "the PCI mapping rtx-4090 (0000:41:00.0 on pve3)"
    assert {p.guest for p in plan.backed_up} == {g.name for g in lab.guests}
    assert [w for w in resilience_warnings(lab)] == [
        "phoenix:resilience.guests.agent-3: node-bound (the PCI mapping rtx-4090 (0000:41:00.0 on pve3)): not "
        "highly available; while pve3 is down, agent-3 is down (its backup can be restored on another node by "
        "hand: docs/restore-drill.md)"]


def test_the_dev_stack_has_no_ha_on_one_node_and_backs_up_every_guest_to_the_nas():
    lab = loaded("dev").lab
    plan = plan_resilience(lab)
    assert not plan.ha_enabled and plan.ha_guests == []
    assert {p.guest for p in plan.backed_up} == {g.name for g in lab.guests}
    assert summary_lines(lab, "dev") == [
        "high availability: off (1 node, no QDevice): a guest is down while its node is",
        "backups: job phoenix-dev at 03:00 to nas (snapshot, zstd; keep last 3, daily 7, weekly 4): "
        "dns, gateway, mesh, ca, gpu-llm, portainer, agent-1"]
    assert resilience_warnings(lab) == []


# -- quorum --------------------------------------------------------------------------------------
def test_ha_on_one_node_is_refused_naming_the_key():
    assert refused("dev", resilience(ha={"enabled": True})) == [
        "phoenix:resilience.ha.enabled: HA needs a cluster that keeps quorum without any one node: three nodes "
        "or more, or two and a QDevice (resilience.qdevice: true); this stack has 1 (pve)"]


def test_a_guest_asking_for_ha_where_ha_is_off_is_refused():
    [line] = refused("dev", guests(ca={"ha": True}))
    assert line.startswith("phoenix:resilience.guests.ca.ha: HA is off for this stack (1 node, no QDevice)")


def two_nodes(raw: dict) -> None:
    raw["proxmox"]["nodes"] = raw["proxmox"]["nodes"][:2]
    for g in raw["guests"]:
        if g["node"] == "pve3":
            g["node"] = "pve2"
    raw["resilience"]["guests"]["agent-3"] = {"nodeBound": True}


def test_two_nodes_need_a_qdevice_for_ha_and_get_it_with_one():
    assert not plan_resilience(loaded("cluster", two_nodes).lab).ha_enabled      # auto: off
    assert refused("cluster", both(two_nodes, resilience(ha={"enabled": True}))) == [
        "phoenix:resilience.ha.enabled: HA needs a cluster that keeps quorum without any one node: three nodes "
        "or more, or two and a QDevice (resilience.qdevice: true); this stack has 2 (pve1, pve2)"]
    plan = plan_resilience(loaded("cluster", both(two_nodes, resilience(qdevice=True))).lab)
    assert plan.ha_enabled and plan.guests["ca"].placement == ("pve2", "pve1")
    assert refused("dev", resilience(qdevice=True)) == [
        "phoenix:resilience.qdevice: a QDevice is the third vote of a two-node cluster; this stack has 1 node"]


# -- disks: shared storage, replicated local ZFS, nothing else --------------------------------------
def test_ha_on_local_lvm_is_refused_for_each_guest():
    problems = refused("cluster", proxmox(datastore="local-lvm"))
    assert "phoenix:resilience.guests.ca: ca is highly available but its disks are on local-lvm (lvmthin, local " \
           "to each node): no other node could start it; use shared storage, or local ZFS replicated to another " \
           "node (replicateTo)" in problems
    assert {p.split(":")[1].split(".")[-1] for p in problems} == {
        "dns", "gateway", "mesh", "ca", "portainer", "agent-1", "agent-2"}


def test_an_undeclared_storage_type_is_refused_where_ha_depends_on_it():
    def undeclared(raw: dict) -> None:
        del raw["resilience"]["storage"]["ceph-vm"]
    assert refused("cluster", undeclared) == [
        "phoenix:proxmox.datastore: HA and replication depend on what storage 'ceph-vm' is: declare its type in "
        "phoenix:resilience.storage (ceph-vm: {type: rbd}, zfspool, nfs, ...)"]


def test_ha_on_local_zfs_replicates_each_guest_to_the_next_node_and_fails_over_only_there():
    lab = loaded("cluster", proxmox(datastore="local-zfs")).lab
    plan = plan_resilience(lab)
    assert plan.guests["dns"].replicate_to == ("pve2",) and plan.guests["dns"].placement == ("pve1", "pve2")
    assert plan.guests["mesh"].replicate_to == ("pve3",) and plan.guests["mesh"].placement == ("pve2", "pve3")
    assert plan.guests["ca"].replicate_to == ("pve1",) and plan.guests["ca"].placement == ("pve3", "pve1")
    assert plan.guests["gpu-a"].replicate_to == ()             # not HA: nothing to replicate for
    lines = summary_lines(lab, "cluster")
    assert "replication: ca -> pve1 every */15" in lines
    assert "ca[ct:103] pve3 > pve1 (local-zfs replicated to pve1)" in lines[0]
    # a named target, on the schedule of the stack
    lab = loaded("cluster", both(proxmox(datastore="local-zfs"), guests(ca={"replicateTo": ["pve2"]}),
                                 resilience(replication={"schedule": "*/5"}))).lab
    assert plan_resilience(lab).guests["ca"].placement == ("pve3", "pve2")
    assert "replication: ca -> pve2 every */5" in summary_lines(lab, "cluster")


def test_replication_needs_local_zfs_on_both_nodes():
    assert refused("cluster", guests(ca={"replicateTo": ["pve1"]})) == [
        "phoenix:resilience.guests.ca.replicateTo: storage replication needs local ZFS (a zfspool storage) on both "
        "nodes; ceph-vm is rbd and shared: every node has the disks already"]
    assert "phoenix:resilience.guests.ca.replicateTo: storage replication needs local ZFS (a zfspool storage) on " \
           "both nodes; local-lvm is lvmthin" in refused(
               "cluster", both(proxmox(datastore="local-lvm"), guests(ca={"replicateTo": ["pve1"]})))

    def zfs_on_two(raw: dict) -> None:
        raw["proxmox"]["datastore"] = "tank"
        raw["resilience"]["storage"]["tank"] = {"type": "zfspool", "nodes": ["pve1", "pve3"]}
        raw["resilience"]["guests"]["ca"] = {"replicateTo": ["pve2"]}
        for name in ("dns", "gateway", "mesh", "portainer", "agent-1", "agent-2"):
            raw["resilience"]["guests"][name] = {"ha": False}
    assert refused("cluster", zfs_on_two) == [
        "phoenix:resilience.guests.ca.replicateTo: tank is not on pve2 (its nodes: pve1, pve3): replication needs "
        "the zfspool on both nodes"]


def test_failover_and_replication_targets_are_known_other_nodes():
    problems = refused("cluster", both(proxmox(datastore="local-zfs"),
                                       guests(ca={"replicateTo": ["pve3"], "failover": ["pve9"]})))
    assert "phoenix:resilience.guests.ca.replicateTo: pve3 is the guest's own node" in problems
    assert "phoenix:resilience.guests.ca.failover: unknown node 'pve9' (known: pve1, pve2, pve3)" in problems
    assert refused("cluster", both(proxmox(datastore="local-zfs"),
                                   guests(ca={"replicateTo": ["pve1"], "failover": ["pve1", "pve2"]}))) == [
        "phoenix:resilience.guests.ca.failover: pve2 would not have ca's disks: it is replicated to pve1 only"]


# -- GPU guests and VMs ---------------------------------------------------------------------------------
def test_a_gpu_guest_cannot_fail_over():
    [line] = refused("cluster", guests(gpu_a={"ha": True}))
    assert line == ("phoenix:resilience.guests.gpu-a.ha: gpu-a passes through GPU devices /dev/nvidia0, /dev/nvidia1 "
                    "of pve1: HA would restart it on a node without them, so it cannot fail over; declare it "
                    "nodeBound: true instead")

    def undeclared(raw: dict) -> None:
        del raw["resilience"]["guests"]["agent-3"]
    assert refused("cluster", undeclared) == [
        "phoenix:resilience.guests.agent-3: agent-3 is an agent guest (HA by phoenix:resilience.ha.roles) but "
        "passes through the PCI mapping rtx-4090 (0000:41:00.0 on pve3): declare it nodeBound: true, or ha: false"]
    # declared node-bound: accepted, with the warning the plan prints
    lab = loaded("cluster", guests(gpu_a={"nodeBound": True})).lab
    assert any(w.startswith("phoenix:resilience.guests.gpu-a: node-bound (GPU devices /dev/nvidia0, /dev/nvidia1 "
                            "of pve1): not highly available; while pve1 is down, gpu-a is down")
               for w in resilience_warnings(lab))


def test_ha_vms_need_their_cloud_init_snippets_on_shared_storage():
    assert refused("cluster", proxmox(snippetDatastore="local")) == [
        "phoenix:proxmox.snippetDatastore: 'local' is a dir storage local to each node, but VMs portainer, agent-1, "
        "agent-2 are highly available: Proxmox reads a VM's cloud-init snippet at every start, so on another node "
        "it would not start; use a shared storage that allows snippets (cephfs, nfs) and declare it in "
        "phoenix:resilience.storage"]
    assert "phoenix:proxmox.snippetDatastore: 'ceph-vm' is a rbd storage, but VMs" in refused(
        "cluster", proxmox(snippetDatastore="ceph-vm"))[0]
    # without HA VMs the snippets may stay local
    loaded("cluster", both(proxmox(snippetDatastore="local"),
                           guests(portainer={"ha": False}, agent_1={"ha": False}, agent_2={"ha": False})))


def test_unknown_guests_and_storage_nodes_are_refused():
    assert refused("cluster", guests(nosuch={"ha": False})) == [
        "phoenix:resilience.guests.nosuch: unknown guest 'nosuch'"]

    def bad_nodes(raw: dict) -> None:
        raw["resilience"]["storage"]["pbs"]["nodes"] = ["pve4"]
    assert refused("cluster", bad_nodes) == [
        "phoenix:resilience.storage.pbs.nodes: unknown node 'pve4' (known: pve1, pve2, pve3)"]
    assert refused("cluster", resilience(storage={"x": {"type": "floppy"}}))[0].startswith(
        "phoenix:resilience.storage.x.type: ")


# -- backups ---------------------------------------------------------------------------------------------
def test_backups_need_a_storage_that_holds_backups():
    assert refused("cluster", resilience(backup={"storage": "ceph-vm"})) == [
        "phoenix:resilience.backup.storage: ceph-vm is a rbd storage, which cannot hold backups; use a Proxmox "
        "Backup Server (pbs), nfs, cifs, cephfs or a directory"]
    assert refused("dev", resilience(backup={"storage": "tape"})) == [
        "phoenix:resilience.backup.storage: the type of storage 'tape' is not known: declare it in "
        "phoenix:resilience.storage (tape: {type: pbs}, nfs, cifs, dir, ...)"]
    assert refused("dev", resilience(backup={"storage": "nas", "retention": {}})) == [
        "phoenix:resilience.backup: retention keeps nothing: give at least one keep* option (keepLast: 3)"]
    assert refused("dev", resilience(backup={"storage": "nas", "schedule": "02:30; rm -rf /"}))[0].startswith(
        "phoenix:resilience.backup.schedule: ")
    assert refused("dev", resilience(backup={"storage": "nas", "mode": "hot"}))[0].startswith(
        "phoenix:resilience.backup.mode: ")


def test_a_backup_on_the_nodes_own_disk_or_a_guest_left_out_is_a_warning():
    def local(raw: dict) -> None:
        raw["resilience"]["backup"]["storage"] = "local"
        raw["resilience"]["guests"] = {"ca": {"backup": False}}
    warnings = resilience_warnings(loaded("dev", local).lab)
    assert warnings == [
        "phoenix:resilience.backup.storage: local is a dir storage on each node's own disks: a backup there is lost "
        "with the node or the disk; use a Proxmox Backup Server or a network share",
        "phoenix:resilience.guests.ca: in no backup, and it holds Step-CA's database (issued certificates, ACME "
        "accounts)"]
    plan = make_dev_plan(local)
    assert all(f"warning: {w}" in plan.summary().splitlines() for w in warnings)


def make_dev_plan(edit):
    from phoenix.plan import make_plan
    return make_plan(edited("dev", edit))


# -- placements ---------------------------------------------------------------------------------------
def test_guests_with_the_same_node_order_share_one_placement_named_after_the_stack():
    found = placements(plan_resilience(loaded("cluster").lab), "cluster")
    assert {p.id: p.guests for p in found} == {
        "phoenix-cluster-pve1-pve2-pve3": ("dns", "gateway", "agent-1"),
        "phoenix-cluster-pve2-pve1-pve3": ("mesh", "portainer", "agent-2"),
        "phoenix-cluster-pve3-pve1-pve2": ("ca",)}
    assert {p.id: p.nodes for p in found}["phoenix-cluster-pve3-pve1-pve2"] == {"pve3": 3, "pve1": 2, "pve2": 1}
    long = placements(plan_resilience(loaded("cluster").lab), "a" * 80)
    assert all(len(p.id) <= 64 for p in long) and len({p.id for p in long}) == 3


def test_the_docs_say_what_each_role_keeps_as_the_model_does():
    from conftest import ROOT
    from phoenix.model.resilience import ROLE_STATE
    page = (ROOT / "docs" / "ha-and-backups.md").read_text()
    for role, state in ROLE_STATE.items():
        assert f"| {role} | {state.what} | {state.after_restore} |" in page, role
    assert set(ROLE_STATE) == {"dns", "gateway", "mesh", "ca", "gpu", "portainer", "agent"}


def test_a_failover_node_without_the_shared_storage_is_refused():
    def restricted(raw: dict) -> None:
        raw["resilience"]["storage"]["ceph-vm"]["nodes"] = ["pve1", "pve3"]
        raw["resilience"]["guests"]["ca"] = {"failover": ["pve2"]}
    problems = refused("cluster", restricted)
    assert "phoenix:resilience.guests.ca.failover: ceph-vm is not on pve2 (its nodes: pve1, pve3): ca's disks are " \
           "not there" in problems
