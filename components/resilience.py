"""ResilienceTier: Proxmox HA for the guests that must survive a node, storage replication for the
disks that are not on shared storage, and the stack's scheduled backup job.

What each guest gets is the model's (``phoenix.model.resilience.plan_resilience``); ids and
placements are ``phoenix.render.resilience``'s. Per HA guest, an HA resource (``ct:<vmid>`` or
``vm:<vmid>``, state ``started``) placed by an HA group (Proxmox VE 8: restricted to the nodes
that have its disks, its own node first, failback on) or a node-affinity rule (Proxmox VE 9:
strict, the same nodes and priorities). Per replicated guest, a replication job per target node
(``<vmid>-<n>``). One vzdump job per stack for every guest the model backs up.

Dependencies, and why:

* Every resource here names its guest by the guest resource's own ``vm_id`` output, not by the
  model's number: Pulumi then knows they hang on the guest (property dependencies), and deletes
  them before it deletes the guest. Proxmox refuses to destroy a container that is an HA resource
  or has replication jobs unless the delete purges them (pve-container API2/LXC.pm
  ``destroy_vm``), and the provider's container delete does not purge (bpg
  proxmox/nodes/containers/containers.go ``DeleteContainer``).
* They are replaced with their guest (``replace_with``), delete-first: their id is the guest's
  VMID, which the old and the new resource would share.
* The HA resource waits for the guest's replication jobs: HA must not recover a guest onto a
  node before its disks are there.
* An HA resource's ``resource_id`` and an HA group's ``group`` are their identity, but the
  provider updates them in place under the old id (its Update sends the state's id: bpg
  fwprovider/cluster/ha/resource_haresource.go, resource_hagroup.go): Phoenix replaces them
  on change instead (``replace_on_changes``).

Nothing here is an input of a guest: no change to HA, replication or backups can replace one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pulumi
import pulumi_proxmoxve as pve

from components.base import Context, Guests
from phoenix.model.resilience import plan_resilience
from phoenix.render.resilience import Placement, backup_job_id, placement_of, placements, replication_job, stack_output


@dataclass(frozen=True)
class ResilienceArgs:
    #: every guest's handle: HA, replication and backups name the guest by its resource's outputs.
    guests: Guests


def _sid(kind: str) -> Callable[[int], str]:
    return lambda vmid: f"{kind}:{int(vmid)}"


def _replication_id(index: int) -> Callable[[int], str]:
    return lambda vmid: replication_job(int(vmid), index)     # numbers arrive as floats under mocks


class ResilienceTier(pulumi.ComponentResource):
    """Outputs: ``ha`` (HA resources by guest), ``placements`` (groups or rules by id),
    ``replications`` (jobs by guest), ``backup`` (the job, or None) and ``exports``."""

    def __init__(self, name: str, ctx: Context, args: ResilienceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Resilience", name, None, opts)
        lab = ctx.lab
        res = lab.resilience
        stack = pulumi.get_stack()
        plan = plan_resilience(lab)
        pve_opts = pulumi.ResourceOptions(parent=self, provider=ctx.provider)

        def options(**kw) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions.merge(pve_opts, pulumi.ResourceOptions(**kw))

        comment = f"managed by Phoenix (stack {stack})"
        self.replications: dict[str, list[pve.Replication]] = {}
        for p in plan.replicated:
            guest = args.guests[p.guest].resource
            self.replications[p.guest] = [
                pve.Replication(
                    f"{p.guest}-replication-{target}",
                    pve.ReplicationArgs(
                        resource_id=guest.vm_id.apply(_replication_id(i)),
                        target=target, type="local", schedule=res.replication.schedule,
                        rate=res.replication.rate_limit, comment=f"{p.guest} to {target}, {comment}"),
                    opts=options(depends_on=[guest], replace_with=[guest], delete_before_replace=True))
                for i, target in enumerate(p.replicate_to)]

        found = placements(plan, stack)
        self.placements: dict[str, pve.Hagroup | pve.Harule] = {}
        groups = plan.placement == "groups"
        if groups:
            for pl in found:
                self.placements[pl.id] = pve.Hagroup(
                    f"ha-group-{'-'.join(pl.nodes)}",
                    pve.HagroupArgs(group=pl.id, nodes=pl.nodes, restricted=True, no_failback=False,
                                    comment=f"{', '.join(pl.guests)}: {comment}"),
                    opts=options(replace_on_changes=["group"], delete_before_replace=True))

        self.ha: dict[str, pve.Haresource] = {}
        for p in plan.ha_guests:
            handle = args.guests[p.guest]
            guest = handle.resource
            group = self.placements[placement_of(p.guest, found).id] if groups else None
            self.ha[p.guest] = pve.Haresource(
                f"{p.guest}-ha",
                pve.HaresourceArgs(
                    resource_id=guest.vm_id.apply(_sid(p.sid.split(":")[0])), state="started",
                    group=group.group if isinstance(group, pve.Hagroup) else None,
                    # Proxmox VE 9 keeps failback per resource (groups carry it on 8: no_failback).
                    failback=None if groups else True,
                    max_restart=res.ha.max_restart, max_relocate=res.ha.max_relocate,
                    comment=f"{p.guest} ({lab.guest(p.guest).role}), {comment}"),
                opts=options(depends_on=[guest, *self.replications.get(p.guest, [])], replace_with=[guest],
                             delete_before_replace=True, replace_on_changes=["resourceId"]))
        if not groups:
            for pl in found:
                self.placements[pl.id] = self._rule(pl, options, comment)

        self.backup = None
        backed_up = [args.guests[p.guest].resource for p in plan.backed_up]
        if res.backup.enabled and backed_up:
            b = res.backup
            self.backup = pve.backup.Job(
                "backup-job",
                pve.backup.JobArgs(
                    resource_id=backup_job_id(stack), schedule=b.schedule, storage=b.storage, enabled=True,
                    vmids=[g.vm_id.apply(lambda vmid: str(int(vmid))) for g in backed_up], all=False,
                    mode=b.mode, compress=b.compress, prune_backups=b.retention.prune_backups(), remove=True,
                    mailtos=list(b.notify.mail_to) or None,
                    mailnotification=b.notify.when if b.notify.mail_to else None,
                    # missed while the node was down: run at its next start
                    repeat_missed=True, notes_template=f"{{{{guestname}}}} ({{{{vmid}}}}), Phoenix stack {stack}"),
                opts=options(depends_on=backed_up, delete_before_replace=True))

        self.exports = {"resilience": stack_output(lab, stack)}
        self.register_outputs({})

    def _rule(self, pl: Placement, options, comment: str) -> pve.Harule:
        """A node-affinity rule (Proxmox VE 9): its resources must be HA resources already."""
        members = [self.ha[g] for g in pl.guests]
        return pve.Harule(
            f"ha-rule-{'-'.join(pl.nodes)}",
            pve.HaruleArgs(rule=pl.id, type="node-affinity", resources=[m.resource_id for m in members],
                           nodes=pl.nodes, strict=True, comment=f"{', '.join(pl.guests)}: {comment}"),
            opts=options(depends_on=members, delete_before_replace=True))
