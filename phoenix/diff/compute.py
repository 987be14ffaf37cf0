"""The diff of two snapshots: resources created, updated, replaced (each with its reason) or deleted,
and every pushed file that changed."""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from phoenix.diff.render import render_markdown, render_plain
from phoenix.diff.rules import TRIGGER, path_matches, replacement_reasons
from phoenix.diff.snapshot import Snapshot
from phoenix.resource_types import COMMAND, GUEST_TYPES, TIER_PREFIX

#: a command's pushed files, as plan.json lists them (one input path for the whole bundle).
BUNDLE = "stdin.phoenix:bundle"
KINDS = ("create", "update", "replace", "delete")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value} if prefix else {}


@dataclass
class Change:
    kind: str                      # create | update | replace | delete
    key: str
    type: str
    name: str
    tier: str
    guest: str | None
    fields: list[str] = field(default_factory=list)     # changed input paths (collapsed)
    reasons: list[str] = field(default_factory=list)    # why a replacement, or what follows what
    files: list[str] = field(default_factory=list)      # pushed files that changed (commands)
    #: list inputs that changed, as (entries added, entries removed): rules, tags, disks...
    lists: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def is_guest(self) -> bool:
        return self.type in GUEST_TYPES


@dataclass
class FileChange:
    guest: str
    path: str
    status: str            # added | removed | modified
    diff: str


@dataclass
class PlanDiff:
    base: str
    new: str
    changes: list[Change]
    files: list[FileChange]
    outputs: list[str]     # names of stack outputs that changed
    #: what `pulumi up` would do that loses a guest or its data (``phoenix.diff.hazards``)
    hazards: list = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found = Counter(c.kind for c in self.changes)
        return {k: found.get(k, 0) for k in KINDS}

    def by_kind(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]

    @property
    def replaced_guests(self) -> list[Change]:
        return [c for c in self.changes if c.is_guest and c.kind in ("replace", "delete")]

    @property
    def empty(self) -> bool:
        return not (self.changes or self.files or self.outputs)

    def render(self, fmt: str = "plain", files: bool = True) -> str:
        return render_markdown(self, files) if fmt == "markdown" else render_plain(self, files)


def _tier(entry: dict, resources_by_urn: dict[str, dict]) -> str:
    node, seen = entry, set()
    while node.get("parent") and node["parent"] in resources_by_urn and node["urn"] not in seen:
        seen.add(node["urn"])
        node = resources_by_urn[node["parent"]]
    return node["type"].split(":")[-1] if node["type"].startswith(TIER_PREFIX) else "stack"


def _guest_of(entry: dict, guest_ids: dict[Any, str]) -> str | None:
    """The guest a resource is about: a command's trigger is its guest's id (``push`` and
    ``script`` set it); firewall resources name the guest by ``vmId``/``containerId``."""
    if entry["type"] in GUEST_TYPES:
        return entry["name"]
    inputs = entry.get("inputs", {})
    for value in flatten(inputs.get("triggers", [])).values():
        if value in guest_ids:
            return guest_ids[value]
    for key in ("containerId", "vmId"):
        if isinstance(inputs.get(key), int) and ("vmid", inputs[key]) in guest_ids:
            return guest_ids[("vmid", inputs[key])]
    return None


def guest_index(*snaps: Snapshot) -> dict[Any, str]:
    """Guest names by planned id (``<name>-id``) and by ``("vmid", n)``."""
    found: dict[Any, str] = {}
    for snap in snaps:
        for r in snap.resources.values():
            if r["type"] in GUEST_TYPES:
                found[f"{r['name']}-id"] = r["name"]
                if isinstance(r.get("inputs", {}).get("vmId"), int):
                    found[("vmid", r["inputs"]["vmId"])] = r["name"]
    return found


def _flat_entry(entry: dict) -> dict[str, Any]:
    """A resource's inputs by path, and its ``replacementTrigger`` option (``TRIGGER``)."""
    out = flatten(entry.get("inputs", {}))
    if entry.get("replacementTrigger") is not None:
        out.update(flatten(entry["replacementTrigger"], TRIGGER) or {TRIGGER: entry["replacementTrigger"]})
    return out


def _collapse(paths: Iterable[str]) -> list[str]:
    return sorted({"stdin" if p.startswith(BUNDLE) else p for p in paths})


def _list_changes(old: dict, new: dict, paths: list[str]) -> dict[str, tuple[int, int]]:
    """For changed top-level list inputs: how many entries came and went (order aside)."""
    out = {}
    for key in {p.split("[", 1)[0] for p in paths if "[" in p and "." not in p.split("[", 1)[0]}:
        a, b = old.get(key), new.get(key)
        if isinstance(a, list) and isinstance(b, list):
            before = Counter(json.dumps(x, sort_keys=True) for x in a)
            after = Counter(json.dumps(x, sort_keys=True) for x in b)
            out[key] = (sum((after - before).values()), sum((before - after).values()))
    return out


def _ignored(path: str, entry: dict) -> bool:
    return any(path_matches(path, p) for p in entry.get("ignoreChanges") or [])


def diff(base: Snapshot, new: Snapshot, replace: Iterable[str] = ()) -> PlanDiff:
    """``replace``: names of resources replaced on request (``pulumi up --replace URN``)."""
    by_urn = {r["urn"]: r for r in list(base.resources.values()) + list(new.resources.values())}
    guest_ids = guest_index(base, new)
    flat = {side: {k: _flat_entry(r) for k, r in snap.resources.items()}
            for side, snap in (("old", base), ("new", new))}

    def make(kind: str, key: str, entry: dict) -> Change:
        return Change(kind, key, entry["type"], entry["name"], _tier(entry, by_urn),
                      _guest_of(entry, guest_ids))

    changes: dict[str, Change] = {}
    for key in base.resources.keys() - new.resources.keys():
        changes[key] = make("delete", key, base.resources[key])
    for key in new.resources.keys() - base.resources.keys():
        changes[key] = make("create", key, new.resources[key])
    for key in base.resources.keys() & new.resources.keys():
        entry, old, cur = new.resources[key], flat["old"][key], flat["new"][key]
        paths = [p for p in sorted(old.keys() | cur.keys())
                 if old.get(p) != cur.get(p) and not _ignored(p, entry)]
        if not paths:
            continue
        reasons = replacement_reasons(entry, paths, old, cur)
        changes[key] = make("replace" if reasons else "update", key, entry)
        changes[key].fields, changes[key].reasons = _collapse(paths), reasons
        changes[key].lists = _list_changes(base.resources[key].get("inputs", {}), entry.get("inputs", {}), paths)

    for key, entry in new.resources.items():
        if entry["name"] in replace and key in base.resources:
            change = changes.get(key) or make("replace", key, entry)
            change.kind, changes[key] = "replace", change
            change.reasons.append("replaced on request (pulumi up --replace)")
    _follow_replacements(changes, new, flat["new"], make, base)
    files = diff_files(base, new)
    _attach_files(changes, new, files)
    outputs = sorted(k for k in base.outputs.keys() | new.outputs.keys()
                     if base.outputs.get(k) != new.outputs.get(k))
    order = {k: i for i, k in enumerate(KINDS)}
    ordered = sorted(changes.values(), key=lambda c: (order[c.kind], c.tier, c.guest or "", c.name))
    result = PlanDiff(base.stack, new.stack, ordered, files, outputs)
    from phoenix.diff.hazards import hazards
    result.hazards = hazards(result, base, new)
    return result


def created_values(*entries: dict | None) -> set:
    """What a resource gets when it is created, which a replacement changes: its id (the plan
    engine's ``<name>-id``) and the outputs its provider computes (a guest's MAC address)."""
    found: set = set()
    for entry in entries:
        if entry:
            found.add(f"{entry['name']}-id")
            found |= {v for v in (entry.get("computed") or {}).values() if isinstance(v, str) and v}
    return found


def _replaced_with(entry: dict, key: str) -> bool:
    from phoenix.diff.snapshot import _key
    return any(_key(urn) == key for urn in entry.get("replaceWith") or [])


def _follow_replacements(changes: dict[str, Change], new: Snapshot, flat_new: dict[str, dict],
                         make, base: Snapshot | None = None) -> None:
    """A replaced resource gets a new id and new computed outputs (a guest's MAC address):
    inputs that hold them change with it; resources that say ``replaceWith`` it are replaced too."""
    queue = [k for k, c in changes.items() if c.kind == "replace"]
    done: set[str] = set()
    while queue:
        key = queue.pop(0)
        if key in done or key not in new.resources:
            continue
        done.add(key)
        name = new.resources[key]["name"]
        created = created_values(new.resources[key], base.resources.get(key) if base else None)
        for other, entry in new.resources.items():
            if other == key or (other in changes and changes[other].kind in ("create", "replace")):
                continue
            if _replaced_with(entry, key):
                change = changes.get(other) or make("update", other, entry)
                changes[other] = change
                change.kind = "replace"
                change.reasons.append(f"replaceWith {name}: follows {name}, which is replaced")
                queue.append(other)
                continue
            paths = [p for p, v in flat_new[other].items() if v in created and not _ignored(p, entry)]
            if not paths:
                continue
            reasons = replacement_reasons(entry, paths, {}, {})
            change = changes.get(other)
            if change is None:
                change = changes[other] = make("update", other, entry)
            change.fields = sorted(set(change.fields) | set(_collapse(paths)))
            if reasons:
                change.kind = "replace"
                change.reasons += [f"{r.split(' changed', 1)[0]} follows {name}, which is replaced"
                                   for r in reasons]
                queue.append(other)
            else:
                change.reasons.append(f"{', '.join(_collapse(paths))} will take the new id or outputs of {name}")


def diff_files(base: Snapshot, new: Snapshot) -> list[FileChange]:
    out = []
    for guest in sorted(base.files.keys() | new.files.keys()):
        old_files, new_files = base.files.get(guest, {}), new.files.get(guest, {})
        for path in sorted(old_files.keys() | new_files.keys()):
            a, b = old_files.get(path), new_files.get(path)
            if a == b:
                continue
            status = "added" if a is None else "removed" if b is None else "modified"
            text = "".join(difflib.unified_diff(
                (a or "").splitlines(keepends=True), (b or "").splitlines(keepends=True),
                fromfile="/dev/null" if a is None else f"a/{guest}{path}",
                tofile="/dev/null" if b is None else f"b/{guest}{path}"))
            if text and not text.endswith("\n"):
                text += "\n"
            out.append(FileChange(guest, path, status, text))
    return out


def _attach_files(changes: dict[str, Change], new: Snapshot, files: list[FileChange]) -> None:
    changed = {(f.guest, f.path) for f in files}
    for change in changes.values():
        if change.type != COMMAND or change.guest is None or change.key not in new.resources:
            continue
        bundle = new.resources[change.key].get("inputs", {}).get("stdin") or {}
        paths = (bundle.get("phoenix:bundle") or {}).get("files", []) if isinstance(bundle, dict) else []
        change.files = [p for p in paths if (change.guest, p) in changed]
        if "stdin" in change.fields and not change.files and change.kind == "update":
            change.reasons.append("its files differ only in secret values or file modes, which the "
                                  "plan does not show")

