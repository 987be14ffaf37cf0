"""Plan diffs: what `pulumi up` would do between two offline plans, and every pushed file that changed.

A plan (``phoenix plan``) is deterministic: the same config gives a byte-identical plan.json
and files/. So the difference of two plans is exactly what a change of config or code does:
resources created, updated, replaced or deleted, and the files each guest would receive.

Replacement is judged the way the engine judges it: an input path listed in the resource's
recorded ``replaceOnChanges`` (remote commands: ``triggers[*]``), or an input the provider
itself replaces on change (``REPLACE_RULES``, from the providers' schemas, sources noted).
A replaced resource gets a new id; whatever takes that id as an input follows it (a command
whose trigger is a replaced guest is replaced too). Each replacement names its reason.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from phoenix.errors import ConfigError, problem

GUEST_TYPES = ("proxmoxve:index/containerLegacy:ContainerLegacy", "proxmoxve:index/vmLegacy:VmLegacy")
COMMAND = "command:remote:Command"
BUNDLE = "stdin.phoenix:bundle"
KINDS = ("create", "update", "replace", "delete")
_SYMBOL = {"create": "+", "update": "~", "replace": "+-", "delete": "-"}


# -- what the providers replace on change ----------------------------------------------------
@dataclass(frozen=True)
class ReplaceRule:
    """Input paths (camelCase, ``[*]`` for any index) a provider cannot change in place."""
    paths: tuple[str, ...] = ()
    #: every input path replaces, except these (pulumi-tls, pulumi-random).
    all_except: Optional[tuple[str, ...]] = None
    #: numeric paths that replace only when they decrease (disks grow in place, never shrink).
    shrink: tuple[str, ...] = ()
    #: where the rule comes from: short (in reasons) and in full (in the docs).
    cite: str = ""
    source: str = ""


_BPG = "bpg/terraform-provider-proxmox"
REPLACE_RULES: dict[str, ReplaceRule] = {
    "proxmoxve:index/containerLegacy:ContainerLegacy": ReplaceRule(
        paths=("nodeName", "vmId", "unprivileged", "template", "poolId", "clone",
               "operatingSystem", "initialization.userAccount", "disk.datastoreId",
               "mountPoints[*].size"),
        shrink=("disk.size",), cite="bpg container.go",
        source=f"{_BPG} proxmoxtf/resource/container/container.go (ForceNew; vm_id by CustomizeDiff; "
               "root disk grows in place since PR #2321, mount points replace, issue #2995)"),
    "proxmoxve:index/vmLegacy:VmLegacy": ReplaceRule(
        paths=("vmId", "nodeName", "template", "clone", "efiDisk", "tpmState",
               "initialization.userAccount", "initialization.userDataFileId",
               "initialization.vendorDataFileId", "initialization.networkDataFileId",
               "initialization.metaDataFileId", "initialization.type", "disks[*].fileId"),
        shrink=("disks[*].size",), cite="bpg vm/schema.go",
        source=f"{_BPG} proxmoxtf/resource/vm/schema.go and vm/disk/schema.go (ForceNew; vm_id and "
               "node_name by CustomizeDiff, node_name only without migrate)"),
    "proxmoxve:index/fileLegacy:FileLegacy": ReplaceRule(
        paths=("nodeName", "datastoreId", "contentType", "sourceRaw", "sourceFile"), cite="bpg file.go",
        source=f"{_BPG} proxmoxtf/resource/file.go (source_raw, source_file: ForceNew)"),
    "proxmoxve:download/file:File": ReplaceRule(
        paths=("contentType", "fileName", "datastoreId", "nodeName", "url", "checksum",
               "checksumAlgorithm", "decompressionAlgorithm"), cite="bpg download_file.go",
        source=f"{_BPG} fwprovider/nodes/resource_download_file.go (RequiresReplace)"),
    "tls:index/privateKey:PrivateKey": ReplaceRule(
        all_except=(), cite="terraform-provider-tls",
        source="hashicorp/terraform-provider-tls: every argument requires replacement"),
    "tls:index/selfSignedCert:SelfSignedCert": ReplaceRule(
        all_except=("earlyRenewalHours",), cite="terraform-provider-tls",
        source="hashicorp/terraform-provider-tls (RequiresReplace)"),
    "tls:index/certRequest:CertRequest": ReplaceRule(
        all_except=(), cite="terraform-provider-tls",
        source="hashicorp/terraform-provider-tls (RequiresReplace)"),
    "tls:index/locallySignedCert:LocallySignedCert": ReplaceRule(
        all_except=("earlyRenewalHours",), cite="terraform-provider-tls",
        source="hashicorp/terraform-provider-tls (RequiresReplace)"),
    "random:index/randomPassword:RandomPassword": ReplaceRule(
        all_except=(), cite="terraform-provider-random",
        source="hashicorp/terraform-provider-random: every argument requires replacement"),
    "random:index/randomBytes:RandomBytes": ReplaceRule(
        all_except=(), cite="terraform-provider-random",
        source="hashicorp/terraform-provider-random (RequiresReplace)"),
}


def _pattern(path: str) -> re.Pattern:
    return re.compile(re.escape(path).replace(r"\[\*\]", r"\[\d+\]") + r"(?=$|[.\[])")


def path_matches(path: str, pattern: str) -> bool:
    """Does a changed leaf ``path`` fall under ``pattern`` (Pulumi property-path syntax)?"""
    return bool(_pattern(pattern).match(path))


# -- snapshots: one plan, from a directory or in process --------------------------------------
@dataclass
class Snapshot:
    stack: str
    resources: dict[str, dict]                 # key (URN without the stack) -> plan.json entry
    files: dict[str, dict[str, str]]           # guest -> absolute path -> text (secrets redacted)
    outputs: dict = field(default_factory=dict)


def _key(urn: str) -> str:
    # urn:pulumi:<stack>::<project>::<type chain>::<name>: two stacks' plans compare by the rest.
    parts = urn.split("::", 1)
    return parts[1] if len(parts) == 2 else urn


def from_document(doc: dict, files: dict[str, dict[str, str]]) -> Snapshot:
    return Snapshot(doc.get("stack", "?"), {_key(r["urn"]): r for r in doc.get("resources", [])},
                    files, doc.get("outputs", {}))


def load(directory: Path | str) -> Snapshot:
    """A plan written by ``phoenix plan --out DIR`` (plan.json and files/)."""
    directory = Path(directory)
    try:
        doc = json.loads((directory / "plan.json").read_text())
    except FileNotFoundError:
        raise ConfigError([problem(str(directory), "not a Phoenix plan (no plan.json); "
                                   "make one with `phoenix plan --stack NAME --out DIR`")]) from None
    except json.JSONDecodeError as err:
        raise ConfigError([problem(str(directory / "plan.json"), f"not valid JSON: {err}")]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("resources"), list):
        raise ConfigError([problem(str(directory / "plan.json"), "not a Phoenix plan (no resources list)")])
    files: dict[str, dict[str, str]] = defaultdict(dict)
    root = directory / "files"
    if root.is_dir():
        for guest_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for f in sorted(p for p in guest_dir.rglob("*") if p.is_file()):
                files[guest_dir.name]["/" + str(f.relative_to(guest_dir))] = f.read_text(errors="replace")
    return from_document(doc, dict(files))


def snapshot(plan) -> Snapshot:
    """The same snapshot ``load`` gives for ``plan.write(dir)``, without writing it."""
    from phoenix.plan.writer import pushed_files
    files = {guest: {path: plan.secrets.redact(f.content) for path, (f, _step) in by_path.items()}
             for guest, by_path in pushed_files(plan.run, plan.topo).items()}
    # Round-trip through JSON so values compare exactly as they do when read from plan.json.
    return from_document(json.loads(json.dumps(plan.document(), sort_keys=True)), files)


# -- the diff ---------------------------------------------------------------------------------
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
    guest: Optional[str]
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
    return node["type"].split(":")[-1] if node["type"].startswith("phoenix:tier:") else "stack"


def _guest_of(entry: dict, guest_ids: dict[Any, str]) -> Optional[str]:
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


def replacement_reasons(entry: dict, paths: Iterable[str], old: dict, new: dict) -> list[str]:
    """Why changing ``paths`` replaces this resource (empty: it is an update)."""
    rule = REPLACE_RULES.get(entry["type"])
    reasons = []
    for path in paths:
        for pattern in entry.get("replaceOnChanges") or []:
            if path_matches(path, pattern):
                reasons.append(f"{path} changed (replaceOnChanges: {pattern})")
        if rule is None:
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


def diff(base: Snapshot, new: Snapshot) -> PlanDiff:
    by_urn = {r["urn"]: r for r in list(base.resources.values()) + list(new.resources.values())}
    guest_ids = guest_index(base, new)
    flat = {side: {k: flatten(r.get("inputs", {})) for k, r in snap.resources.items()}
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

    _follow_replacements(changes, new, flat["new"], make)
    files = diff_files(base, new)
    _attach_files(changes, new, files)
    outputs = sorted(k for k in base.outputs.keys() | new.outputs.keys()
                     if base.outputs.get(k) != new.outputs.get(k))
    order = {k: i for i, k in enumerate(KINDS)}
    ordered = sorted(changes.values(), key=lambda c: (order[c.kind], c.tier, c.guest or "", c.name))
    return PlanDiff(base.stack, new.stack, ordered, files, outputs)


def _follow_replacements(changes: dict[str, Change], new: Snapshot, flat_new: dict[str, dict],
                         make) -> None:
    """A replaced resource gets a new id: inputs that hold that id change with it."""
    queue = [k for k, c in changes.items() if c.kind == "replace"]
    done: set[str] = set()
    while queue:
        key = queue.pop(0)
        if key in done or key not in new.resources:
            continue
        done.add(key)
        name = new.resources[key]["name"]
        planned_id = f"{name}-id"     # the id the plan engine gives every resource
        for other, entry in new.resources.items():
            if other == key or (other in changes and changes[other].kind in ("create", "replace")):
                continue
            paths = [p for p, v in flat_new[other].items() if v == planned_id and not _ignored(p, entry)]
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
                change.reasons.append(f"{', '.join(_collapse(paths))} will take the new id of {name}")


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


# -- rendering --------------------------------------------------------------------------------
def _headline(d: PlanDiff) -> str:
    counts = d.counts()
    parts = [f"{counts['create']} to create", f"{counts['update']} to update",
             f"{counts['replace']} to replace", f"{counts['delete']} to delete"]
    guests = d.replaced_guests
    tail = ("no guest replaced" if not guests else
            f"GUESTS REPLACED OR DELETED: {', '.join(c.name for c in guests)}")
    return f"{', '.join(parts)}; {len(d.files)} pushed files changed; {tail}"


def _why(c: Change) -> str:
    bits = []
    if c.files:
        bits.append("files: " + ", ".join(c.files))
    elif c.fields and not (c.kind == "replace" and c.reasons):
        shown = [f"{k}: +{a} -{r} entries" for k, (a, r) in sorted(c.lists.items())]
        shown += [f for f in c.fields if f.split("[", 1)[0] not in c.lists]
        bits.append("changed: " + ", ".join(shown[:8]) + (" ..." if len(shown) > 8 else ""))
    bits += c.reasons
    return "; ".join(bits)


def render_plain(d: PlanDiff, files: bool = True) -> str:
    title = d.new if d.base == d.new else f"{d.base} -> {d.new}"
    lines = [f"Phoenix plan diff ({title}): {_headline(d)}"]
    if d.empty:
        lines.append("no changes")
    for c in d.changes:
        where = f"[{c.tier}{', ' + c.guest if c.guest else ''}]"
        lines.append(f"  {_SYMBOL[c.kind]:<2} {c.kind:<8} {c.name}  ({c.type}) {where}")
        if _why(c):
            lines.append(f"       {_why(c)}")
    if d.outputs:
        lines.append("stack outputs changed: " + ", ".join(d.outputs))
    if files and d.files:
        for guest, changed in _by_guest(d.files):
            lines.append(f"=== {guest}: {len(changed)} file(s) changed")
            lines += [f.diff.rstrip("\n") for f in changed]
    return "\n".join(lines) + "\n"


def _by_guest(files: list[FileChange]) -> list[tuple[str, list[FileChange]]]:
    grouped: dict[str, list[FileChange]] = defaultdict(list)
    for f in files:
        grouped[f.guest].append(f)
    return sorted(grouped.items())


#: a GitHub comment holds at most 65536 characters; leave room for the rest of the comment.
MARKDOWN_FILE_BUDGET = 50_000


def render_markdown(d: PlanDiff, files: bool = True) -> str:
    title = d.new if d.base == d.new else f"{d.base} → {d.new}"
    out = [f"### Phoenix plan diff: `{title}`", "", f"**{_headline(d)}**", ""]
    if d.empty:
        out.append("No changes: this pull request does not change what Phoenix deploys.")
        return "\n".join(out) + "\n"
    if d.changes:
        out += ["| | action | resource | type | tier | guest | why |", "|---|---|---|---|---|---|---|"]
        for c in d.changes:
            why = _why(c).replace("|", "\\|")
            out.append(f"| `{_SYMBOL[c.kind]}` | {c.kind} | `{c.name}` | `{c.type}` | {c.tier} "
                       f"| {c.guest or ''} | {why} |")
        out.append("")
    if d.outputs:
        out += ["Stack outputs changed: " + ", ".join(f"`{o}`" for o in d.outputs), ""]
    if files and d.files:
        budget = MARKDOWN_FILE_BUDGET
        for guest, changed in _by_guest(d.files):
            out += [f"<details><summary><b>{guest}</b>: {len(changed)} file(s) changed</summary>", ""]
            for f in changed:
                body = f.diff.replace("```", "`\u200b``")
                if len(body) > budget:
                    out.append(f"`{f.path}` ({f.status}): diff too long for a comment; run "
                               "`phoenix diff` locally")
                    continue
                budget -= len(body)
                out += [f"`{f.path}` ({f.status})", "", "```diff", body.rstrip("\n"), "```", ""]
            out += ["</details>", ""]
    return "\n".join(out) + "\n"
