"""Replacement hazards: what a diff would make `pulumi up` do that loses a guest, its data or a
resource the lab cannot lose. ``phoenix diff`` and ``phoenix plan --against`` report each as an
error (exit 2); ``phoenix plan`` reports the ones one plan shows on its own (``static_hazards``).

* ``create-first``: a replacement that creates the new resource before deleting the old one while
  both would have the same identity (a guest's VMID, a file's path on a node, a firewall's
  guest, a step whose delete undoes its create). Proxmox refuses the second guest or file, or
  the old resource's delete removes what the new one just made.
* ``protected``: a protected resource replaced or deleted (Pulumi stops the update there).
* ``move``: a guest changing node without migration. The provider re-creates a container on a
  node change (bpg container.go: ``node_name`` ForceNew, no ``migrate``), and a VM unless
  ``migrate`` is true: both destroy the guest's disks.
* ``disk``: a container's root disk to another datastore (``disk.datastore_id`` ForceNew) or
  any guest disk shrinking: the guest is re-created and its disk is lost.
* ``self-renewing``: a protected certificate with early renewal: pulumi-tls renews by
  replacement, so the day it is due every update would ask to replace a protected resource.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from phoenix import resource_types as t
from phoenix.errors import problem

if TYPE_CHECKING:
    from phoenix.diff.compute import PlanDiff
    from phoenix.diff.snapshot import Snapshot

#: input paths that make up a resource's identity where Proxmox holds it: two resources with the
#: same identity cannot exist at once, and deleting one removes the other's.
IDENTITY: dict[str, tuple[str, ...]] = {
    t.CONTAINER: ("vmId",),                    # VMIDs are unique in the cluster
    t.VM: ("vmId",),
    t.DOWNLOAD: ("nodeName", "datastoreId", "fileName"),
    t.FILE: ("nodeName", "datastoreId", "sourceRaw.fileName", "sourceFile.path"),
    t.FIREWALL_RULES: ("vmId", "containerId"),
    t.FIREWALL_OPTIONS: ("vmId", "containerId"),
    t.FIREWALL_IPSET: ("vmId", "containerId", "name"),
    t.PCI_MAPPING: ("name",),
    t.CLUSTER_FIREWALL: (),                   # one per cluster
    t.HA_RESOURCE: ("resourceId",),           # one HA resource per guest (ct:<vmid>)
    t.HA_GROUP: ("group",),
    t.HA_RULE: ("rule",),
    t.REPLICATION: ("resourceId",),           # <vmid>-<job number>
    t.BACKUP_JOB: ("resourceId",),
}
#: the procedure for what the provider cannot do in place (docs/day-two.md has it in full).
CONTAINER_MOVE = ("migrate it yourself (`pct migrate {id} {to} --restart` on {frm}), then re-import it "
                  "at its new node (docs/day-two.md, 'Moving a container')")
CONTAINER_DATASTORE = ("move its root disk yourself (`pct move-volume {id} rootfs {to} --delete`), then "
                       "`pulumi up --refresh` reads the new datastore (docs/day-two.md, 'Changing a datastore')")


@dataclass(frozen=True)
class Hazard:
    kind: str          # create-first | protected | move | disk | self-renewing
    resource: str      # the resource's name
    message: str

    def line(self) -> str:
        return problem(self.resource, f"{self.message} [{self.kind}]")


def _value(inputs: dict, path: str) -> Any:
    node: Any = inputs
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def identity(entry: dict) -> tuple | None:
    """A resource's identity where Proxmox holds it, or None when it has none of its own (two
    can exist side by side: a key, a certificate)."""
    inputs = entry.get("inputs") or {}
    if entry["type"] == t.COMMAND:
        # a step with a delete command: its delete undoes what any create of it made
        return ("delete", inputs.get("connection", {}).get("host")) if inputs.get("delete") else None
    if entry["type"] not in IDENTITY:
        return None
    return tuple(_value(inputs, p) for p in IDENTITY[entry["type"]])


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _guest_hazards(name: str, old: dict, new: dict) -> list[Hazard]:
    out = []
    a, b = old.get("inputs") or {}, new.get("inputs") or {}
    if a.get("nodeName") != b.get("nodeName"):
        if new["type"] == t.CONTAINER:
            out.append(Hazard("move", name, f"container {name} would move {a.get('nodeName')} -> {b.get('nodeName')}: "
                              "the provider cannot migrate a container and would destroy and re-create it with "
                              "an empty disk; " + CONTAINER_MOVE.format(id=b.get("vmId"), to=b.get("nodeName"),
                                                                         frm=a.get("nodeName"))))
        elif b.get("migrate") is not True:
            out.append(Hazard("move", name, f"VM {name} would move {a.get('nodeName')} -> {b.get('nodeName')} without "
                              "migrate: the provider would destroy and re-create it; set migrate=True"))
    if new["type"] == t.CONTAINER:
        was, now = _value(a, "disk.datastoreId"), _value(b, "disk.datastoreId")
        if was != now:
            out.append(Hazard("disk", name, f"container {name}'s root disk would go {was} -> {now}: the provider "
                              "re-creates the container for that and its disk is lost; " + CONTAINER_DATASTORE.format(
                                  id=b.get("vmId"), to=now)))
        sizes = [(_value(a, "disk.size"), _value(b, "disk.size"))]
    else:
        # the disks both sides have (an added or removed disk is no shrink)
        sizes = [(x.get("size"), y.get("size"))
                 for x, y in zip(a.get("disks") or [], b.get("disks") or [], strict=False)]
    for was, now in sizes:
        if _number(now) < _number(was):
            out.append(Hazard("disk", name, f"{name}'s disk would shrink {was} -> {now} GiB: a disk cannot shrink, the "
                              "provider would re-create the guest and its disk is lost; keep the size"))
    return out


def hazards(d: PlanDiff, base: Snapshot, new: Snapshot) -> list[Hazard]:
    """Every hazard of going from ``base`` to ``new``, in the diff's order."""
    out: list[Hazard] = []
    for c in d.changes:
        old_entry, new_entry = base.resources.get(c.key), new.resources.get(c.key)
        if c.kind in ("replace", "delete") and old_entry and old_entry.get("protect"):
            out.append(Hazard("protected", c.name, f"{c.name} is protected and would be {c.kind}d "
                              f"({'; '.join(c.reasons) or 'removed from the program'}): Pulumi refuses, the update "
                              "stops there; see docs/upgrading.md for the procedure"))
        if old_entry and new_entry and c.type in t.GUEST_TYPES:
            out += _guest_hazards(c.name, old_entry, new_entry)
        if c.kind == "replace" and old_entry and new_entry and not new_entry.get("deleteBeforeReplace"):
            before, after = identity(old_entry), identity(new_entry)
            if before is not None and before == after:
                out.append(Hazard("create-first", c.name, f"{c.name} would be replaced create-first while its identity "
                                  f"({', '.join(map(str, before)) or 'one per cluster'}) stays the same: the new one "
                                  "cannot exist beside the old one, or the old one's delete removes it; "
                                  "replace it delete-first (delete_before_replace)"))
    return _unique(out)


def static_hazards(resources: Iterable[dict]) -> list[Hazard]:
    """What one plan shows on its own: protected certificates that would renew themselves."""
    out = []
    for r in resources:
        hours = (r.get("inputs") or {}).get("earlyRenewalHours")
        if r.get("protect") and r["type"] in (t.SELF_SIGNED_CERT, t.LOCALLY_SIGNED_CERT) and _number(hours) > 0:
            out.append(Hazard("self-renewing", r["name"], f"{r['name']} is protected but renews early "
                              f"({hours} hours before it expires) by replacing itself: that day every update "
                              "would fail; set early_renewal_hours=0 and rotate it by the documented procedure "
                              "(docs/upgrading.md)"))
    return out


def _unique(found: list[Hazard]) -> list[Hazard]:
    return list(dict.fromkeys(found))
