"""What the providers replace on change: the rules, from their schemas (sources noted), and how a
changed input path is judged against them and against a resource's own ``replaceOnChanges``.

A replaced resource gets a new id; ``phoenix.diff.compute`` follows it to whatever holds that id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from phoenix import resource_types as t


@dataclass(frozen=True)
class ReplaceRule:
    """Input paths (camelCase, ``[*]`` for any index) a provider cannot change in place."""
    paths: tuple[str, ...] = ()
    #: every input path replaces, except these (pulumi-tls, pulumi-random).
    all_except: tuple[str, ...] | None = None
    #: numeric paths that replace only when they decrease (disks grow in place, never shrink).
    shrink: tuple[str, ...] = ()
    #: (path, input, value): ``path`` replaces unless the resource's ``input`` is ``value``
    #: (a VM's node_name replaces unless ``migrate`` is true: vm.go CustomizeDiff).
    unless: tuple[tuple[str, str, Any], ...] = ()
    #: where the rule comes from: short (in reasons) and in full (in the docs).
    cite: str = ""
    source: str = ""


_BPG = "bpg/terraform-provider-proxmox"
#: the provider source the proxmoxve rules were read from: pulumi-proxmoxve 8.x bridges bpg's
#: provider (its provider/go.mod pins v0.111.1 at the 8.3 line; 8.6 keeps these schemas).
BPG_RELEASE = "v0.111.1"
REPLACE_RULES: dict[str, ReplaceRule] = {
    t.CONTAINER: ReplaceRule(
        paths=("nodeName", "vmId", "unprivileged", "template", "poolId", "clone",
               "operatingSystem", "initialization.userAccount", "disk.datastoreId",
               "mountPoints", "mountPoints[*].size", "mountPoints[*].volume"),
        shrink=("disk.size",), cite="bpg container.go",
        source=f"{_BPG} {BPG_RELEASE} proxmoxtf/resource/container/container.go: ForceNew on node_name, "
               "unprivileged, template, pool_id, clone.*, operating_system(.template_file_id), "
               "initialization.user_account(.keys, .password), disk.datastore_id, mount_point(.size, .volume); "
               "vm_id and a shrinking disk by CustomizeDiff (ForceNewIf); no migrate: a container "
               "cannot change node in place"),
    t.VM: ReplaceRule(
        paths=("vmId", "nodeName", "template", "clone", "amdSev",
               "initialization.userDataFileId", "initialization.vendorDataFileId",
               "initialization.networkDataFileId", "initialization.metaDataFileId", "initialization.type",
               "disks[*].fileId"),
        shrink=("disks[*].size",), unless=(("nodeName", "migrate", True),), cite="bpg vm.go",
        source=f"{_BPG} {BPG_RELEASE} proxmoxtf/resource/vm/vm.go: ForceNew on amd_sev, clone.*, "
               "initialization.{user,vendor,network,meta}_data_file_id and .type; vm_id, and node_name "
               "unless migrate is true, by CustomizeDiff; vm/disk/schema.go: file_id ForceNew, "
               "import_from not (used at creation only), datastore_id moves the disk in place "
               "(vmUpdateDiskLocation); TPM version and EFI type changes by CustomizeDiff"),
    t.FILE: ReplaceRule(
        paths=("nodeName", "datastoreId", "contentType", "sourceRaw", "sourceFile"), cite="bpg file.go",
        source=f"{_BPG} {BPG_RELEASE} proxmoxtf/resource/file.go (source_raw, source_file: ForceNew)"),
    t.DOWNLOAD: ReplaceRule(
        paths=("contentType", "fileName", "datastoreId", "nodeName", "url", "checksum",
               "checksumAlgorithm", "decompressionAlgorithm"), cite="bpg download_file.go",
        source=f"{_BPG} {BPG_RELEASE} fwprovider/nodes/resource_download_file.go (RequiresReplace; size "
               "too when the file changed upstream and overwrite is true: Phoenix sets overwrite false)"),
    t.FIREWALL_RULES: ReplaceRule(
        cite="bpg firewall/rules.go",
        source=f"{_BPG} {BPG_RELEASE} proxmoxtf/resource/firewall/rules.go and selector.go: nothing is "
               "ForceNew (node_name, vm_id, container_id, rules update in place)"),
    t.FIREWALL_OPTIONS: ReplaceRule(
        cite="bpg firewall/options.go",
        source=f"{_BPG} {BPG_RELEASE} proxmoxtf/resource/firewall/options.go: nothing is ForceNew"),
    t.FIREWALL_IPSET: ReplaceRule(
        paths=("cidrs",), cite="bpg firewall/ipset.go",
        source=f"{_BPG} {BPG_RELEASE} proxmoxtf/resource/firewall/ipset.go: cidr (and each entry) ForceNew, "
               "name not"),
    t.PCI_MAPPING: ReplaceRule(
        cite="bpg hardwaremapping/resource_pci.go",
        source=f"{_BPG} {BPG_RELEASE} fwprovider/cluster/hardwaremapping/resource_pci.go: no RequiresReplace"),
    # HA, replication and backups (components/resilience.py). None of them is an input of a guest.
    t.HA_RESOURCE: ReplaceRule(
        cite="bpg ha/resource_haresource.go",
        source=f"{_BPG} {BPG_RELEASE} fwprovider/cluster/ha/resource_haresource.go: no RequiresReplace (its "
               "Update sends the state's id, so a new resource_id would change the old resource: Phoenix "
               "sets replaceOnChanges resourceId)"),
    t.HA_GROUP: ReplaceRule(
        cite="bpg ha/resource_hagroup.go",
        source=f"{_BPG} {BPG_RELEASE} fwprovider/cluster/ha/resource_hagroup.go: no RequiresReplace (Update "
               "writes to the state's group: Phoenix sets replaceOnChanges group); nodes, restricted, "
               "no_failback and comment update in place"),
    t.HA_RULE: ReplaceRule(
        paths=("rule", "type"), cite="bpg ha/resource_harule.go",
        source=f"{_BPG} {BPG_RELEASE} fwprovider/cluster/ha/resource_harule.go: rule and type RequiresReplace; "
               "resources, nodes, strict, affinity and comment update in place"),
    t.REPLICATION: ReplaceRule(
        paths=("resourceId", "target", "type"), cite="bpg replication/resource.go",
        source=f"{_BPG} {BPG_RELEASE} fwprovider/cluster/replication/resource.go: id (resource_id), target and "
               "type RequiresReplace; schedule, rate, disable and comment update in place"),
    t.BACKUP_JOB: ReplaceRule(
        paths=("resourceId",), cite="bpg backup/resource.go",
        source=f"{_BPG} {BPG_RELEASE} fwprovider/cluster/backup/resource.go: id (resource_id) RequiresReplace; "
               "everything else (schedule, storage, vmid, prune_backups, mail) updates in place"),
    t.COMMAND: ReplaceRule(
        cite="pulumi-command remote.Command",
        source="pulumi-command 1.2 sdk/python/pulumi_command/remote/command.py: replace_on_changes "
               "[\"triggers[*]\"] (recorded per resource); create, update and delete are updates"),
    t.PRIVATE_KEY: ReplaceRule(
        all_except=(), cite="terraform-provider-tls",
        source="hashicorp/terraform-provider-tls: every argument requires replacement"),
    t.SELF_SIGNED_CERT: ReplaceRule(
        all_except=("earlyRenewalHours",), cite="terraform-provider-tls",
        source="hashicorp/terraform-provider-tls (RequiresReplace)"),
    t.CERT_REQUEST: ReplaceRule(
        all_except=(), cite="terraform-provider-tls",
        source="hashicorp/terraform-provider-tls (RequiresReplace)"),
    t.LOCALLY_SIGNED_CERT: ReplaceRule(
        all_except=("earlyRenewalHours",), cite="terraform-provider-tls",
        source="hashicorp/terraform-provider-tls (RequiresReplace)"),
    t.RANDOM_PASSWORD: ReplaceRule(
        all_except=(), cite="terraform-provider-random",
        source="hashicorp/terraform-provider-random: every argument requires replacement"),
    t.RANDOM_BYTES: ReplaceRule(
        all_except=(), cite="terraform-provider-random",
        source="hashicorp/terraform-provider-random (RequiresReplace)"),
}


#: the path the diff gives a resource's ``replacement_trigger`` option: any change replaces it.
TRIGGER = "(replacementTrigger)"


def _pattern(path: str) -> re.Pattern:
    return re.compile(re.escape(path).replace(r"\[\*\]", r"\[\d+\]") + r"(?=$|[.\[])")


def path_matches(path: str, pattern: str) -> bool:
    """Does a changed leaf ``path`` fall under ``pattern`` (Pulumi property-path syntax)?"""
    return bool(_pattern(pattern).match(path))

def replacement_reasons(entry: dict, paths: Iterable[str], old: dict, new: dict) -> list[str]:
    """Why changing ``paths`` replaces this resource (empty: it is an update)."""
    rule = REPLACE_RULES.get(entry["type"])
    reasons = []
    for path in paths:
        if path.startswith(TRIGGER):
            reasons.append(f"{TRIGGER} changed (the replacement_trigger option)")
            continue
        for pattern in entry.get("replaceOnChanges") or []:
            if path_matches(path, pattern):
                reasons.append(f"{path} changed (replaceOnChanges: {pattern})")
        if rule is None:
            continue
        spared = [f"{key} is {value!r}" for p, key, value in rule.unless
                  if path_matches(path, p) and (entry.get("inputs") or {}).get(key) == value]
        if spared:
            continue
        if any(path_matches(path, p) for p in rule.paths) or (
                rule.all_except is not None and not any(path_matches(path, p) for p in rule.all_except)):
            reasons.append(f"{path} changed; the provider cannot change it in place [{rule.cite}]")
        elif any(path_matches(path, p) for p in rule.shrink) and _number(new.get(path)) < _number(old.get(path)):
            reasons.append(f"{path} shrinks {old.get(path)} -> {new.get(path)}; a disk cannot shrink "
                           f"in place [{rule.cite}]")
    return list(dict.fromkeys(reasons))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("inf")

