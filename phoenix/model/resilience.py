"""Resilience: which guests Proxmox HA keeps running, how their disks reach another node, and the backups.

``phoenix:resilience`` in the stack (``Resilience``), with defaults per role; ``plan_resilience``
derives what each guest gets (a pure function of the model), and ``resilience_checks`` refuses
what Proxmox cannot do, one line per problem naming the key:

* HA needs a quorum that survives the loss of a node: three nodes or more, or two and a
  corosync QDevice (``qdevice: true``). Below that HA is off, and asking for it is refused.
* HA restarts a guest on another node only where its disks are: on shared storage (Ceph RBD,
  NFS, ...), or on local ZFS replicated to that node (``pvesr``: storage replication needs a
  ``zfspool`` storage on both nodes). Any other local storage is refused for an HA guest. So
  Phoenix must know each storage's type (``storage``; Proxmox's installer defaults ``local``,
  ``local-lvm`` and ``local-zfs`` are known).
* A VM reads its cloud-init snippet at every start (qemu-server Cloudinit.pm
  ``read_cloudinit_snippets_file``): an HA VM needs its snippet datastore on shared storage, or it
  would not start on the node HA picks.
* A guest with passed-through GPU devices (an LXC's ``/dev/nvidia*``, a VM's PCI mapping) is bound
  to its node's hardware: HA for it is refused, unless it is declared ``nodeBound`` (a warning:
  it is down while its node is).
* Backups (vzdump jobs) need a storage that holds backups; one on the node's own disks is a
  warning (it is lost with the node or the disk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from phoenix.model.fields import Email, Label, Role, StorageId, Strict, matching

if TYPE_CHECKING:
    from phoenix.model.lab import Guest, Lab

#: a Proxmox calendar event (systemd-like: ``02:30``, ``sat 03:00``, ``*/15``, ``mon..fri 21:00``).
Schedule = Annotated[str, *matching(r"[A-Za-z0-9*/:,. ~-]{1,64}", "a Proxmox calendar event (02:30, sat 03:00, */15)",
                                    64)]

StorageType = Literal["dir", "nfs", "cifs", "cephfs", "glusterfs", "btrfs", "rbd", "zfspool", "zfs", "lvm",
                      "lvmthin", "iscsi", "iscsidirect", "pbs"]
#: storage types every node sees the same (Proxmox's ``shared`` storages; ``zfs`` is ZFS over iSCSI).
SHARED_TYPES = frozenset({"nfs", "cifs", "cephfs", "glusterfs", "rbd", "zfs", "iscsi", "iscsidirect", "pbs"})
#: storage types that can hold vzdump backups (content ``backup``).
BACKUP_TYPES = frozenset({"dir", "nfs", "cifs", "cephfs", "glusterfs", "btrfs", "pbs"})
#: storage types that can hold snippets (files: cloud-init user-data).
SNIPPET_TYPES = frozenset({"dir", "nfs", "cifs", "cephfs", "glusterfs", "btrfs"})
#: the one storage type storage replication works with (pvesr: ZFS send/receive).
REPLICABLE = "zfspool"
#: what a fresh Proxmox VE install has, so a stack that uses them needs no declaration.
INSTALLER_STORAGE: dict[str, StorageType] = {"local": "dir", "local-lvm": "lvmthin", "local-zfs": "zfspool"}
#: the roles HA keeps running by default: the singleton tiers, Portainer, and the agents (each
#: runs compose stacks no other agent has).
HA_ROLES: tuple[Role, ...] = ("dns", "gateway", "mesh", "ca", "portainer", "agent")
#: every role holds state a rebuild cannot regenerate (``ROLE_STATE``).
BACKUP_ROLES: tuple[Role, ...] = ("dns", "gateway", "mesh", "ca", "gpu", "portainer", "agent")


@dataclass(frozen=True)
class RoleState:
    """What a role's guest holds that no ``pulumi up`` can make again, in words."""
    what: str
    #: how it comes back after a restore from an older backup (docs/restore-drill.md)
    after_restore: str


ROLE_STATE: dict[str, RoleState] = {
    "dns": RoleState("the external zone's dynamic copy and journal (RFC 2136 updates)",
                     "the DNS step pushes the zones again; a changed dynamic zone replaces named's copy and "
                     "its journal"),
    "gateway": RoleState("its Let's Encrypt account and certificates (re-issuing is rate limited)",
                         "the certificate step renews what is due or missing"),
    "mesh": RoleState("Traefik's ACME store (its certificates from Step-CA)",
                      "Traefik orders what its store lacks from Step-CA"),
    "ca": RoleState("Step-CA's database (issued certificates, ACME accounts)",
                    "the CA steps push its configuration and intermediate again"),
    "gpu": RoleState("the services' model caches (downloads of many GB)",
                     "the service steps install units, users and certificates again"),
    "portainer": RoleState("Portainer's database (users, environments, stacks)",
                           "the server step sets the admin password; the register steps add missing environments"),
    "agent": RoleState("its compose stacks' volumes", "the stack steps deploy the stacks again through Portainer"),
}


class Storage(Strict):
    """A Proxmox storage (Datacenter > Storage) as Phoenix needs to know it."""
    type: StorageType
    #: a ``dir``/``lvm`` storage the operator marked shared (the same files from every node); the
    #: default follows the type.
    shared: bool | None = None
    #: the nodes that have it (Datacenter > Storage > Nodes); default every node.
    nodes: Annotated[list[Label], Field(min_length=1, max_length=256)] | None = None

    @property
    def is_shared(self) -> bool:
        return self.type in SHARED_TYPES if self.shared is None else self.shared


class GuestResilience(Strict):
    """One guest's overrides (``resilience.guests.<name>``)."""
    #: HA for this guest (default: its role is in ``ha.roles`` and it has no GPU devices).
    ha: bool | None = None
    #: the nodes HA may restart it on, in order of preference after its own node (default: every
    #: node that has its disks).
    failover: Annotated[list[Label], Field(min_length=1, max_length=255)] | None = None
    #: replicate its disks (local ZFS) to these nodes on ``replication.schedule`` (default for an
    #: HA guest on local ZFS: the next node that has the storage).
    replicate_to: Annotated[list[Label], Field(min_length=1, max_length=16)] | None = None
    #: in the backup job (default: its role is in ``backup.roles``).
    backup: bool | None = None
    #: bound to its node (GPU devices, local hardware): never HA, a plan warning says so.
    node_bound: bool = False


class Ha(Strict):
    #: default: on when the cluster keeps quorum without any one node (3+ nodes, or a QDevice).
    enabled: bool | None = None
    #: how the preferred node is told to HA: ``groups`` (Proxmox VE 8) or ``rules`` (node-affinity
    #: rules, Proxmox VE 9, where HA groups are gone).
    placement: Literal["groups", "rules"] = "groups"
    roles: Annotated[list[Role], Field(max_length=16)] = Field(default_factory=lambda: list(HA_ROLES))
    #: restarts on the same node before relocating, and relocations before giving up.
    max_restart: Annotated[int, Field(ge=0, le=10)] = 1
    max_relocate: Annotated[int, Field(ge=0, le=10)] = 1


class Replication(Strict):
    #: how often each replicated guest's disks are sent (minutes of data a failover may lose).
    schedule: Schedule = "*/15"
    #: MB/s per job (none: unlimited).
    rate_limit: Annotated[float, Field(gt=0, le=100000)] | None = None


class Retention(Strict):
    """vzdump's prune options (``prune-backups``): how many backups each guest keeps. A retention
    given in the stack is exactly what it says (the default keeps last 3, daily 7, weekly 4,
    monthly 6)."""
    keep_last: Annotated[int, Field(ge=1, le=10000)] | None = None
    keep_hourly: Annotated[int, Field(ge=1, le=10000)] | None = None
    keep_daily: Annotated[int, Field(ge=1, le=10000)] | None = None
    keep_weekly: Annotated[int, Field(ge=1, le=10000)] | None = None
    keep_monthly: Annotated[int, Field(ge=1, le=10000)] | None = None
    keep_yearly: Annotated[int, Field(ge=1, le=10000)] | None = None

    def prune_backups(self) -> dict[str, str]:
        """As the backup job's ``prune_backups`` map (``keep-daily=7``...)."""
        return {name.replace("_", "-"): str(value) for name, value in self
                if value is not None}


class Notification(Strict):
    mail_to: Annotated[list[Email], Field(max_length=16)] = Field(default_factory=list)
    when: Literal["always", "failure"] = "failure"


class Backup(Strict):
    enabled: bool = True
    #: a storage that holds backups (a Proxmox Backup Server, NFS, CIFS, CephFS, a directory).
    storage: StorageId = "local"
    #: when the job runs (a Proxmox calendar event; ``02:30`` is every day at 02:30).
    schedule: Schedule = "02:30"
    #: ``snapshot`` keeps the guest running (a storage snapshot, or a suspend where none).
    mode: Literal["snapshot", "suspend", "stop"] = "snapshot"
    compress: Literal["zstd", "gzip", "lzo", "0"] = "zstd"
    retention: Retention = Retention(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=6)
    notify: Notification = Notification()
    roles: Annotated[list[Role], Field(max_length=16)] = Field(default_factory=lambda: list(BACKUP_ROLES))

    @model_validator(mode="after")
    def _keeps_something(self) -> Backup:
        if not self.retention.prune_backups():
            raise ValueError("retention keeps nothing: give at least one keep* option (keepLast: 3)")
        return self


class Resilience(Strict):
    #: each storage the stack uses that is not one of Proxmox's installer defaults, by id.
    storage: Annotated[dict[StorageId, Storage], Field(max_length=256)] = Field(default_factory=dict)
    #: a corosync QDevice gives a two-node cluster the third vote HA needs.
    qdevice: bool = False
    ha: Ha = Ha()
    replication: Replication = Replication()
    backup: Backup = Backup()
    guests: Annotated[dict[Label, GuestResilience], Field(max_length=100_000)] = Field(default_factory=dict)
    #: ``phoenix verify`` fails a certificate with fewer days left (or, one that lives shorter
    #: than four times that, with less than a quarter of its lifetime left).
    certificate_min_days: Annotated[int, Field(ge=1, le=365)] = 14


# -- what each guest gets (pure) ----------------------------------------------------------------
@dataclass(frozen=True)
class GuestPlan:
    guest: str
    sid: str                          # the HA resource id: ct:<vmid> or vm:<vmid>
    node: str                         # where it runs (its preferred node)
    ha: bool
    #: nodes HA may restart it on, in order, after ``node``; ``restricted``: only those
    failover: tuple[str, ...] = ()
    restricted: bool = False
    #: ``shared``, ``replicated`` or ``local`` (its disks are on ``storage``)
    disks: str = "local"
    storage: str = ""
    replicate_to: tuple[str, ...] = ()
    backup: bool = False
    #: why it cannot fail over (GPU devices, a declaration), when it cannot
    node_bound: str = ""

    @property
    def placement(self) -> tuple[str, ...]:
        return (self.node, *self.failover)


@dataclass(frozen=True)
class ResiliencePlan:
    ha_enabled: bool
    placement: str                    # groups | rules
    guests: dict[str, GuestPlan]

    @property
    def ha_guests(self) -> list[GuestPlan]:
        return [p for p in self.guests.values() if p.ha]

    @property
    def replicated(self) -> list[GuestPlan]:
        return [p for p in self.guests.values() if p.replicate_to]

    @property
    def backed_up(self) -> list[GuestPlan]:
        return [p for p in self.guests.values() if p.backup]


def storage_of(lab: Lab, storage_id: str) -> Storage | None:
    """The storage as declared, or as Proxmox's installer makes it; None when unknown."""
    declared = lab.resilience.storage.get(storage_id)
    if declared is not None:
        return declared
    kind = INSTALLER_STORAGE.get(storage_id)
    return Storage(type=kind) if kind else None


def storage_nodes(lab: Lab, storage: Storage) -> list[str]:
    return list(storage.nodes) if storage.nodes else [n.name for n in lab.proxmox.nodes]


def quorum_without_a_node(lab: Lab) -> bool:
    """Does the cluster keep quorum when any one node is lost (what HA needs)?"""
    nodes = len(lab.proxmox.nodes)
    return nodes >= 3 or (nodes == 2 and lab.resilience.qdevice)


def gpu_devices(g: Guest) -> str:
    """What binds a guest to its node's hardware, in words ('' when nothing does)."""
    if g.gpus:
        return f"GPU devices {', '.join(f'/dev/nvidia{i}' for i in g.gpus)} of {g.node}"
    if g.gpu_mapping:
        return f"the PCI mapping {g.gpu_mapping} ({g.gpu_pci_path} on {g.node})"
    return ""


def plan_resilience(lab: Lab) -> ResiliencePlan:
    """What HA, replication and backup each guest gets. Assumes ``resilience_problems`` found
    nothing; on a refused model it still returns a plan (for the error messages' sake)."""
    res = lab.resilience
    # HA asked for without quorum is refused by the checks; the plan never has it.
    enabled = quorum_without_a_node(lab) and res.ha.enabled is not False
    nodes = [n.name for n in lab.proxmox.nodes]
    storage = storage_of(lab, lab.proxmox.datastore)
    out: dict[str, GuestPlan] = {}
    for g in lab.guests:
        own = res.guests.get(g.name, GuestResilience())
        hardware = gpu_devices(g)
        # A GPU guest whose role HA covers stays HA here, so that the checks refuse it by name.
        wants = own.ha if own.ha is not None else g.role in res.ha.roles
        ha = bool(enabled and wants and not own.node_bound)
        bound = (hardware or "declared nodeBound") if own.node_bound else (hardware if not ha else "")
        disks, where, replicate = "local", [], tuple(own.replicate_to or ())
        if storage is not None:
            have = [n for n in storage_nodes(lab, storage) if n != g.node and n in nodes]
            if storage.is_shared:
                disks, where = "shared", have
            elif storage.type == REPLICABLE:
                if not replicate and ha and have:
                    # the next node after the guest's own that has the storage
                    after = nodes[nodes.index(g.node) + 1:] + nodes[:nodes.index(g.node)] if g.node in nodes else nodes
                    replicate = (next(n for n in after if n in have),)
                disks, where = ("replicated", list(replicate)) if replicate else ("local", [])
        failover = tuple(own.failover) if own.failover else tuple(where)
        out[g.name] = GuestPlan(
            guest=g.name, sid=f"{'ct' if g.kind == 'lxc' else 'vm'}:{g.id}", node=g.node, ha=ha,
            failover=failover if ha else (), restricted=ha,
            disks=disks, storage=lab.proxmox.datastore, replicate_to=replicate,
            backup=res.backup.enabled and (own.backup if own.backup is not None else g.role in res.backup.roles),
            node_bound=bound)
    return ResiliencePlan(enabled, res.ha.placement, out)
