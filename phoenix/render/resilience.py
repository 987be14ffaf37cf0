"""Resilience as Proxmox sees it: HA placements (groups or rules), ids, what each role keeps, and the
lines the plan summary and the stack output show. Pure: the model in, values out.

The model decides who is highly available and where (``phoenix.model.resilience``); here those
decisions get the names Proxmox keeps them under. Every id carries the stack's name, so two
stacks on one cluster never take each other's HA groups, rules or backup jobs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from phoenix.model.resilience import GuestPlan, ResiliencePlan, plan_resilience
from phoenix.render.dns import DYNAMIC_DIR
from phoenix.render.gateway import LETSENCRYPT
from phoenix.render.mesh.names import STATE_DIR as TRAEFIK_STATE_DIR
from phoenix.render.trust import CA_DATA
from phoenix.render.workloads import state_directory

#: Proxmox config ids (HA groups and rules, jobs): ``pve-configid``, at most this long.
MAX_ID = 64
#: where Docker keeps named volumes (Portainer's database, the compose stacks' data).
DOCKER_VOLUMES = "/var/lib/docker/volumes"


def state_paths(lab, guest) -> list[str]:
    """Where a guest keeps what ``ROLE_STATE`` says (what a restore brings back, the drill rolls back)."""
    role = guest.role
    if role == "dns":
        return [DYNAMIC_DIR]
    if role == "gateway":
        return [LETSENCRYPT]
    if role == "mesh":
        return [TRAEFIK_STATE_DIR]
    if role == "ca":
        return [CA_DATA]
    if role == "gpu":
        return [state_directory(s) for s in lab.services if guest.name in s.guests and s.run is not None]
    return [DOCKER_VOLUMES]


def slug(text: str) -> str:
    """A stack name as Proxmox ids may hold it (letters, digits, '-')."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "stack"


def _bounded(text: str) -> str:
    if len(text) <= MAX_ID:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[:MAX_ID - 11].rstrip('-')}-{digest}"


def backup_job_id(stack: str) -> str:
    return _bounded(f"phoenix-{slug(stack)}")


@dataclass(frozen=True)
class Placement:
    """One HA group (Proxmox VE 8) or node-affinity rule (9): where its guests may run, by priority."""
    id: str
    nodes: dict[str, int]
    guests: tuple[str, ...]


def placements(plan: ResiliencePlan, stack: str) -> list[Placement]:
    """One placement per distinct node order, shared by every HA guest with that order. Each
    lists exactly the nodes that have the guest's disks (restricted/strict): HA never starts a
    guest where it would not find them."""
    by_order: dict[tuple[str, ...], list[str]] = {}
    for p in plan.ha_guests:
        by_order.setdefault(p.placement, []).append(p.guest)
    out = []
    for order, guests in by_order.items():
        nodes = {node: len(order) - i for i, node in enumerate(order)}
        out.append(Placement(_bounded(f"phoenix-{slug(stack)}-{'-'.join(order)}"), nodes, tuple(guests)))
    return out


def placement_of(guest: str, found: list[Placement]) -> Placement:
    return next(p for p in found if guest in p.guests)


def replication_job(vmid: int, index: int) -> str:
    """A replication job's id: ``<vmid>-<job number>`` (pvesr; the provider's validator)."""
    return f"{vmid}-{index}"


def disks_text(p: GuestPlan) -> str:
    if p.disks == "shared":
        return f"shared {p.storage}"
    if p.disks == "replicated":
        return f"{p.storage} replicated to {', '.join(p.replicate_to)}"
    return f"local {p.storage}"


def summary_lines(lab, stack: str) -> list[str]:
    """What the plan summary says about HA, replication and backups (one line each)."""
    plan = plan_resilience(lab)
    res = lab.resilience
    out = []
    if plan.ha_enabled:
        kind = "HA groups (Proxmox VE 8)" if plan.placement == "groups" else "HA rules (Proxmox VE 9)"
        out.append(f"high availability, {kind}: " + ", ".join(
            f"{p.guest}[{p.sid}] {' > '.join(p.placement)} ({disks_text(p)})" for p in plan.ha_guests))
        bound = [p for p in plan.guests.values() if p.node_bound]
        if bound:
            out.append("not highly available: " + ", ".join(f"{p.guest} ({p.node_bound})" for p in bound))
    else:
        nodes = len(lab.proxmox.nodes)
        out.append(f"high availability: off ({nodes} node{'s' if nodes != 1 else ''}"
                   f"{'' if res.qdevice else ', no QDevice'}): a guest is down while its node is")
    for p in plan.replicated:
        out.append(f"replication: {p.guest} -> {', '.join(p.replicate_to)} every {res.replication.schedule}")
    if res.backup.enabled:
        keep = ", ".join(f"{k.removeprefix('keep-')} {v}" for k, v in res.backup.retention.prune_backups().items())
        out.append(f"backups: job {backup_job_id(stack)} at {res.backup.schedule} to {res.backup.storage} "
                   f"({res.backup.mode}, {res.backup.compress}; keep {keep}): "
                   + ", ".join(p.guest for p in plan.backed_up))
    else:
        out.append("backups: none")
    return out


def stack_output(lab, stack: str) -> dict:
    """The ``resilience`` stack output: what an operator needs at hand when a node is gone."""
    plan = plan_resilience(lab)
    res = lab.resilience
    found = placements(plan, stack)
    return {
        "ha": {"enabled": plan.ha_enabled, "placement": plan.placement,
               "guests": {p.guest: {"sid": p.sid, "nodes": list(p.placement), "disks": disks_text(p),
                                    "placement": placement_of(p.guest, found).id} for p in plan.ha_guests},
               "nodeBound": {p.guest: p.node_bound for p in plan.guests.values() if p.node_bound}},
        "replication": {p.guest: {"to": list(p.replicate_to), "schedule": res.replication.schedule}
                        for p in plan.replicated},
        "backup": ({"job": backup_job_id(stack), "storage": res.backup.storage, "schedule": res.backup.schedule,
                    "guests": {p.guest: lab.guest(p.guest).id for p in plan.backed_up}}
                   if res.backup.enabled else None),
    }
