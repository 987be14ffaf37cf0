"""The resilience rules: what Proxmox cannot do, refused one line per problem naming the key, and
what it does badly, as plan warnings (see ``phoenix.model.resilience`` for the rules' reasons)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from phoenix.errors import problem
from phoenix.model.resilience import (
    BACKUP_TYPES,
    REPLICABLE,
    ROLE_STATE,
    SNIPPET_TYPES,
    GuestResilience,
    gpu_devices,
    plan_resilience,
    quorum_without_a_node,
    storage_nodes,
    storage_of,
)

if TYPE_CHECKING:
    from phoenix.model.lab import Lab


# -- what Proxmox cannot do (refused) and what it does badly (warnings) ----------------------------
def resilience_problems(lab: Lab) -> list[str]:
    res, at = lab.resilience, "phoenix:resilience"
    out: list[str] = []
    nodes = [n.name for n in lab.proxmox.nodes]
    guests = {g.name: g for g in lab.guests}
    for name in res.guests:
        if name not in guests:
            out.append(problem(f"{at}.guests.{name}", f"unknown guest {name!r}"))
    for sid, st in res.storage.items():
        for node in st.nodes or ():
            if node not in nodes:
                out.append(problem(f"{at}.storage.{sid}.nodes", f"unknown node {node!r} (known: {', '.join(nodes)})"))
    if res.qdevice and len(nodes) != 2:
        out.append(problem(f"{at}.qdevice", f"a QDevice is the third vote of a two-node cluster; this stack has "
                           f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}"))
    if res.ha.enabled and not quorum_without_a_node(lab):
        out.append(problem(f"{at}.ha.enabled", f"HA needs a cluster that keeps quorum without any one node: three "
                           f"nodes or more, or two and a QDevice (resilience.qdevice: true); this stack has "
                           f"{len(nodes)} ({', '.join(nodes)})"))
    plan = plan_resilience(lab)
    storage = storage_of(lab, lab.proxmox.datastore)
    if storage is None and (plan.ha_guests or any(o.replicate_to for o in res.guests.values())):
        out.append(problem("phoenix:proxmox.datastore", f"HA and replication depend on what storage "
                           f"{lab.proxmox.datastore!r} is: declare its type in {at}.storage "
                           f"({lab.proxmox.datastore}: {{type: rbd}}, zfspool, nfs, ...)"))
    for name, own in res.guests.items():
        g, p = guests.get(name), plan.guests.get(name)
        if g is None or p is None:
            continue
        where = f"{at}.guests.{name}"
        if own.ha and not plan.ha_enabled:
            out.append(problem(f"{where}.ha", f"HA is off for this stack ({len(nodes)} node"
                               f"{'s' if len(nodes) != 1 else ''}{', no QDevice' if not res.qdevice else ''}): "
                               "no guest can be highly available"))
        if own.ha and own.node_bound:
            out.append(problem(f"{where}.ha", "a nodeBound guest cannot be highly available"))
        elif own.ha and gpu_devices(g):
            out.append(problem(f"{where}.ha", f"{name} passes through {gpu_devices(g)}: HA would restart it on a "
                               "node without them, so it cannot fail over; declare it nodeBound: true instead"))
        for key, listed in (("failover", own.failover), ("replicateTo", own.replicate_to)):
            for node in listed or ():
                if node not in nodes:
                    out.append(problem(f"{where}.{key}", f"unknown node {node!r} (known: {', '.join(nodes)})"))
                elif node == g.node:
                    out.append(problem(f"{where}.{key}", f"{node} is the guest's own node"))
        if own.replicate_to and storage is not None:
            if storage.type != REPLICABLE or storage.is_shared:
                out.append(problem(f"{where}.replicateTo", f"storage replication needs local ZFS (a zfspool storage) "
                                   f"on both nodes; {lab.proxmox.datastore} is {storage.type}"
                                   + (" and shared: every node has the disks already" if storage.is_shared else "")))
            else:
                missing = [n for n in own.replicate_to if n in nodes and n not in storage_nodes(lab, storage)]
                if missing:
                    out.append(problem(f"{where}.replicateTo", f"{lab.proxmox.datastore} is not on "
                                       f"{', '.join(missing)} (its nodes: {', '.join(storage_nodes(lab, storage))}): "
                                       "replication needs the zfspool on both nodes"))
        if own.failover and p.ha and p.disks == "shared" and storage is not None:
            missing = [n for n in own.failover if n in nodes and n not in storage_nodes(lab, storage)]
            if missing:
                out.append(problem(f"{where}.failover", f"{lab.proxmox.datastore} is not on {', '.join(missing)} "
                                   f"(its nodes: {', '.join(storage_nodes(lab, storage))}): {name}'s disks are not "
                                   "there"))
        if own.failover and p.ha and p.disks == "replicated":
            extra = [n for n in own.failover if n not in p.replicate_to]
            if extra:
                out.append(problem(f"{where}.failover", f"{', '.join(extra)} would not have {name}'s disks: it is "
                                   f"replicated to {', '.join(p.replicate_to)} only"))
    for p in plan.ha_guests:
        g = guests[p.guest]
        declared = res.guests.get(p.guest)
        if declared is None or declared.ha is None:
            bound = gpu_devices(g)
            if bound:   # the role's default would make it HA: say so, at the guest
                article = "an" if g.role[0] in "aeiou" else "a"
                out.append(problem(f"{at}.guests.{g.name}", f"{g.name} is {article} {g.role} guest (HA by "
                                   f"{at}.ha.roles) but "
                                   f"passes through {bound}: declare it nodeBound: true, or ha: false"))
        if storage is not None and p.disks == "local":
            kind = f"{storage.type}, local to each node" if storage.type != REPLICABLE else \
                "zfspool, not replicated to another node"
            out.append(problem(f"{at}.guests.{g.name}", f"{g.name} is highly available but its disks are on "
                               f"{lab.proxmox.datastore} ({kind}): no other node could start it; use shared storage, "
                               "or local ZFS replicated to another node (replicateTo)"))
    ha_vms = [p.guest for p in plan.ha_guests if guests[p.guest].kind == "vm"]
    snippets = storage_of(lab, lab.proxmox.snippet_datastore)
    if ha_vms and (snippets is None or not (snippets.is_shared and snippets.type in SNIPPET_TYPES)):
        what = "of unknown type" if snippets is None else (
            f"a {snippets.type} storage" + ("" if snippets.is_shared else " local to each node"))
        out.append(problem("phoenix:proxmox.snippetDatastore",
                           f"{lab.proxmox.snippet_datastore!r} is {what}, but VM{'s' if len(ha_vms) > 1 else ''} "
                           f"{', '.join(ha_vms)} {'are' if len(ha_vms) > 1 else 'is'} highly available: Proxmox reads "
                           "a VM's cloud-init snippet at every start, so on another node it would not start; use a "
                           f"shared storage that allows snippets (cephfs, nfs) and declare it in {at}.storage"))
    out += _backup_problems(lab)
    return list(dict.fromkeys(out))


def _backup_problems(lab: Lab) -> list[str]:
    backup, at = lab.resilience.backup, "phoenix:resilience.backup.storage"
    if not backup.enabled:
        return []
    st = storage_of(lab, backup.storage)
    if st is None:
        return [problem(at, f"the type of storage {backup.storage!r} is not known: declare it in "
                        f"phoenix:resilience.storage ({backup.storage}: {{type: pbs}}, nfs, cifs, dir, ...)")]
    if st.type not in BACKUP_TYPES:
        return [problem(at, f"{backup.storage} is a {st.type} storage, which cannot hold backups; use a Proxmox "
                        "Backup Server (pbs), nfs, cifs, cephfs or a directory")]
    return []


def resilience_warnings(lab: Lab) -> list[str]:
    """What a valid stack does that an operator should know before a node dies."""
    plan = plan_resilience(lab)
    res, out = lab.resilience, []
    if plan.ha_enabled:
        for p in plan.guests.values():
            if p.node_bound and res.guests.get(p.guest, GuestResilience()).node_bound:
                out.append(problem(f"phoenix:resilience.guests.{p.guest}",
                                   f"node-bound ({p.node_bound}): not highly available; while {p.node} is down, "
                                   f"{p.guest} is down (its backup can be restored on another node by hand: "
                                   "docs/restore-drill.md)"))
    if res.backup.enabled:
        st = storage_of(lab, res.backup.storage)
        if st is not None and not st.is_shared:
            out.append(problem("phoenix:resilience.backup.storage",
                               f"{res.backup.storage} is a {st.type} storage on each node's own disks: a backup there "
                               "is lost with the node or the disk; use a Proxmox Backup Server or a network share"))
        for p in plan.guests.values():
            role = lab.guest(p.guest).role
            if not p.backup and role in ROLE_STATE:
                out.append(problem(f"phoenix:resilience.guests.{p.guest}",
                                   f"in no backup, and it holds {ROLE_STATE[role].what}"))
    else:
        out.append(problem("phoenix:resilience.backup.enabled", "false: nothing is backed up (the CA's database, "
                           "Portainer's data, the DNS journal and the model caches exist only on the guests)"))
    return out
