"""The day-two matrix: what each change an operator makes to a running lab does, step by step.

Each case plans a shipped stack as it runs (the base), makes one change (to the config, to the
code, or to the lab itself: a secret rotated with ``pulumi up --replace``, a guest rebuilt
outside Pulumi and read back by ``pulumi up --refresh``), plans again under the mock runtime
and diffs the two with the providers' replace rules (``phoenix.diff.rules``). The outcome is the
steps `pulumi up` would run, in its order (``phoenix.diff.steps``), and the hazards it would
refuse (``phoenix.diff.hazards``). docs/day-two.md is generated from these outcomes
(``python -m phoenix.daytwo``) and tests/test_day_two.py checks it against them, so the
document cannot drift from what the code does.

A refresh is modelled from the provider's Read: a guest rebuilt outside Pulumi keeps its
config (the rebuild made it as the program says) but Proxmox gave it a new MAC address, which
``containerRead``/``ReadNetworkDeviceObjects`` read back (the plan's fact ``rebuilt:<guest>``).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from phoenix import diff as plan_diff
from phoenix.plan import make_plan
from phoenix.resource_types import COMMAND, GUEST_TYPES
from phoenix.stackfile import PROJECT_ROOT, StackConfig, expand_catalog, read_stack_file

DOC = PROJECT_ROOT / "docs" / "day-two.md"
Edit = Callable[[dict], None]


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    stack: str
    #: what the operator does, and what the lab does in return (prose for the document)
    action: str
    effect: str
    edit: Edit | None = None
    #: a change to the code instead: replace ``module.name`` with ``wrap(original)`` while planning
    patch: tuple[str, str, Callable] | None = None
    facts: dict = field(default_factory=dict)
    #: ``pulumi up --replace`` of these resources
    replace: tuple[str, ...] = ()
    #: hazard kinds the change must be refused with (empty: it must apply cleanly)
    refused: frozenset = frozenset()


@dataclass
class Outcome:
    case: Case
    diff: plan_diff.PlanDiff
    steps: list[tuple[str, str, str]]
    base: plan_diff.Snapshot
    new: plan_diff.Snapshot


def edited_stack(name: str, edit: Edit | None) -> StackConfig:
    stack = read_stack_file(PROJECT_ROOT / f"Pulumi.{name}.yaml")
    if edit is None:
        return stack
    raw = copy.deepcopy(expand_catalog(stack.phoenix(), stack.root))
    edit(raw)
    values = {k: v for k, v in stack.values.items() if not k.startswith("phoenix:") or k in stack.secret_keys}
    values.update({f"phoenix:{k}": v for k, v in raw.items()})
    return StackConfig(stack.name, values, set(stack.secret_keys), stack.root)


@contextmanager
def patched(patch: tuple[str, str, Callable] | None) -> Iterator[None]:
    if patch is None:
        with nullcontext():
            yield
        return
    module, name, wrap = patch
    target = __import__(module, fromlist=[name])
    with mock.patch.object(target, name, wrap(getattr(target, name))):
        yield


# -- the edits ---------------------------------------------------------------------------------
def _guest(raw: dict, name: str) -> dict:
    return next(g for g in raw["guests"] if g["name"] == name)


def move(guest: str, node: str) -> Edit:
    def edit(raw: dict) -> None:
        _guest(raw, guest)["node"] = node
    return edit


def proxmox(**values) -> Edit:
    def edit(raw: dict) -> None:
        raw["proxmox"].update(values)
    return edit


def bump_cloud_image(raw: dict) -> None:
    image = raw["images"]["debian-12-cloud"]
    image["url"] = ("https://cloud.debian.org/images/cloud/bookworm/20250428-2096/"
                    "debian-12-genericcloud-amd64-20250428-2096.qcow2")
    image["fileName"] = "debian-12-genericcloud-amd64-20250428-2096.qcow2"


def add_service(raw: dict) -> None:
    raw["services"].append({"name": "notes", "guests": ["agent-1"], "port": 8444, "protocol": "http",
                            "health": "/healthz", "public": True, "publicHost": "notes.lab.example.com"})


def resilience(**values) -> Edit:
    def edit(raw: dict) -> None:
        raw.setdefault("resilience", {}).update(values)
    return edit


def remove_service(name: str) -> Edit:
    def edit(raw: dict) -> None:
        raw["services"] = [s for s in raw["services"] if s["name"] != name]
    return edit


def add_replica(service: str, guest: str) -> Edit:
    def edit(raw: dict) -> None:
        next(s for s in raw["services"] if s["name"] == service)["guests"].append(guest)
    return edit


def user_data_line(render: Callable) -> Callable:
    """The user-data template with one more line, as an edit of configs/guests/user-data.yaml.j2."""
    return lambda *args, **kwargs: render(*args, **kwargs) + "# edited on day two\n"


CASES: tuple[Case, ...] = (
    Case("user-data", "Edit VM user-data", "dev",
         "change configs/guests/user-data.yaml.j2 (or what it is rendered from)",
         "a new snippet file beside the old one on the node; the running VMs keep theirs (cloud-init "
         "reads user-data at first boot only); no VM is replaced",
         patch=("components.guests", "render_user_data", user_data_line)),
    Case("move-vm", "Move a VM to another node", "cluster", "`node: pve3` on agent-2",
         "the VM is migrated with its disks (migrate=True); its snippet and image are made on the new node "
         "first; every step on it runs again through the new jump host, changing nothing",
         edit=move("agent-2", "pve3")),
    Case("move-container", "Move a container to another node", "cluster", "`node: pve1` on mesh",
         "refused: the provider cannot migrate a container and would re-create it empty; migrate it with "
         "`pct migrate`, then re-import it (below)",
         edit=move("mesh", "pve1"), refused=frozenset({"move"})),
    Case("datastore", "Change the guests' datastore", "cluster", "`proxmox.datastore: local-zfs`",
         "refused for the containers (their root disks would be re-created empty): move each with "
         "`pct move-volume` first; VM disks would be moved in place",
         edit=proxmox(datastore="local-zfs"), refused=frozenset({"disk"})),
    Case("snippet-datastore", "Change the snippet datastore", "dev", "`proxmox.snippetDatastore: shared`",
         "the snippets are written to the new datastore; the VMs keep the ones they booted with",
         edit=proxmox(snippetDatastore="shared")),
    Case("image", "Bump an image", "cluster", "a newer dated cloud image (url, fileName, checksum)",
         "each node downloads the new image (the old file is deleted first: its name is its identity); "
         "running guests keep their disks (import_from is read at creation only)",
         edit=bump_cloud_image),
    Case("add-service", "Add a service", "dev", "one catalog entry (`notes` on agent-1, public)",
         "DNS records, a mesh router, a gateway server block, firewall rules: updates only",
         edit=add_service),
    Case("remove-service", "Remove a service", "cluster", "delete the `embed` entry",
         "its steps are deleted (its unit stops and goes); DNS, mesh, gateway, sidecar and firewall "
         "drop it", edit=remove_service("embed")),
    Case("replicas", "Add a replica", "cluster", "`llm` on gpu-a, gpu-b and gpu-c",
         "the new replica's unit, user and certificate on gpu-c; the mesh balances over three",
         edit=add_replica("llm", "gpu-c")),
    Case("agent-secret", "Rotate the Portainer agent secret", "dev",
         "`pulumi up --replace <urn of portainer-agent-secret>`",
         "a new secret; the Portainer server and every agent get it (their steps update)",
         facts={"replaced:portainer-agent-secret": "1"}, replace=("portainer-agent-secret",)),
    Case("rebuilt", "Rebuild a guest outside Pulumi, then refresh", "dev",
         "mesh re-created by hand (same VMID), then `pulumi up --refresh`",
         "the refresh reads its new MAC address: every step on it and its firewall run again",
         facts={"rebuilt:mesh": "1"}),
    # HA, replication and backups (components/resilience.py): none of them is an input of a guest.
    Case("ha-guest", "Take a guest out of HA", "cluster", "`resilience.guests.mesh: {ha: false}`",
         "its HA resource is deleted (Proxmox stops managing it, the container keeps running) and its "
         "group no longer names it; no guest is touched",
         edit=resilience(guests={"agent-3": {"nodeBound": True}, "mesh": {"ha": False}})),
    Case("backup-policy", "Change the backup schedule and retention", "dev",
         "`resilience.backup.schedule: sat 04:00` and `retention: {keepDaily: 14}`",
         "the backup job is updated in place; nothing else changes",
         edit=resilience(backup={"storage": "nas", "schedule": "sat 04:00", "retention": {"keepDaily": 14}})),
)

_bases: dict[str, plan_diff.Snapshot] = {}


def base_snapshot(stack: str) -> plan_diff.Snapshot:
    if stack not in _bases:
        _bases[stack] = plan_diff.snapshot(make_plan(edited_stack(stack, None)))
    return _bases[stack]


def run(case: Case) -> Outcome:
    base = base_snapshot(case.stack)
    with patched(case.patch):
        new = plan_diff.snapshot(make_plan(edited_stack(case.stack, case.edit), facts=case.facts or None))
    result = plan_diff.diff(base, new, replace=case.replace)
    return Outcome(case, result, plan_diff.execution_order(result, base, new), base, new)


# -- the document --------------------------------------------------------------------------------
HEADER = """# Day two: what each change does to the lab

Generated by `python -m phoenix.daytwo` from the day-two matrix (`phoenix/daytwo.py`), which
tests/test_day_two.py runs and checks against this file: each case plans a shipped stack, makes
one change, plans again under the mock runtime and diffs the two with the providers' replace
rules (`phoenix/diff/rules.py`, read from bpg/terraform-provider-proxmox and pulumi-command).
Steps are listed in the order `pulumi up` runs them (`phoenix/diff/steps.py`). `phoenix diff BASE NEW`
(and a plan made with `--against`) reports the same, and refuses (exit 2) what would lose a
guest, its data or a protected resource.

Operations: `create`, `update` (a step re-runs: phoenix-apply installs what changed and reloads
only then), `create-replacement`/`delete-replaced` (a replacement; delete-first when the old and
the new cannot exist together), `delete`.
"""

FOOTER = """
## Procedures for what the provider cannot do in place

### Moving a container

bpg's container resource has no `migrate` (`node_name` is ForceNew), so the plan diff refuses
the change. Move it with Proxmox, then tell Pulumi where it is:

1. `pct migrate <id> <node> --restart` on the node that has it (`--target-storage` for local disks).
2. Set `node:` of the guest in the stack file.
3. Tell the state where it is now (the provider reads a container at the node its state names):

   ```sh
   pulumi stack export --file state.json
   jq --arg name mesh --arg node pve1 '(.deployment.resources[]
        | select(.type == "proxmoxve:index/containerLegacy:ContainerLegacy" and (.urn | endswith("::" + $name)))
        | .inputs.nodeName, .outputs.nodeName) |= $node' state.json > moved.json
   pulumi stack import --file moved.json
   ```
4. `pulumi preview --refresh` (or `phoenix diff BASE NEW`) now shows no replacement; `pulumi up --refresh`
   reads the container at its new node. It is the same guest (same MAC address), so no step
   re-runs; its firewall rules follow it (they name it by its outputs).

### Changing a datastore

A container's root disk cannot change datastore in place through the provider
(`disk.datastore_id` ForceNew). Move each disk with `pct move-volume <id> rootfs <storage>
--delete`, set `proxmox.datastore`, then `pulumi up --refresh`: the provider reads the disk's new
datastore back and nothing is replaced. VM disks are moved by the provider itself.

### Rotating the root certificate

See docs/upgrading.md.
"""


def step_note(outcome: Outcome, op: str, name: str, kind: str) -> str:
    """What a step does beyond its name: what a deletion runs or keeps."""
    if op not in ("delete", "delete-replaced"):
        return ""
    entry = next((e for e in outcome.base.resources.values() if e["name"] == name and e["type"] == kind), {})
    if entry.get("retainOnDelete"):
        return "; kept on the node (retainOnDelete)"
    if kind == COMMAND:
        return "; runs its delete command" if (entry.get("inputs") or {}).get("delete") else "; nothing runs"
    if kind in GUEST_TYPES:
        return "; destroys the guest and its disks"
    return ""


def _step_lines(outcome: Outcome) -> list[str]:
    return [f"{i}. `{op}` {name} ({kind.split(':')[-1]}{step_note(outcome, op, name, kind)})"
            for i, (op, name, kind) in enumerate(outcome.steps, 1)]


def render(outcomes: list[Outcome]) -> str:
    out = [HEADER, "| change | stack | what the lab does | steps | outcome |", "|---|---|---|---|---|"]
    for o in outcomes:
        verdict = ("refused: " + ", ".join(sorted({h.kind for h in o.diff.hazards}))
                   if o.diff.hazards else "applies")
        out.append(f"| [{o.case.title}](#{o.case.id}) | {o.case.stack} | {o.case.effect} | {len(o.steps)} "
                   f"| {verdict} |")
    for o in outcomes:
        out += ["", f'<a id="{o.case.id}"></a>', f"## {o.case.title}", "",
                f"Change: {o.case.action} (stack `{o.case.stack}`).", "", f"What it does: {o.case.effect}.", ""]
        if o.diff.hazards:
            out.append("Refused by the plan diff (exit 2):")
            out += [f"- `{h.resource}` ({h.kind}): {h.message}" for h in o.diff.hazards]
            out.append("")
        counts = o.diff.counts()
        out.append(f"{counts['create']} to create, {counts['update']} to update, {counts['replace']} to replace, "
                   f"{counts['delete']} to delete; in order:")
        out.append("")
        out += _step_lines(o) or ["(nothing)"]
    return "\n".join(out) + "\n" + FOOTER


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phoenix.daytwo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DOC), help=f"where to write the matrix (default {DOC})")
    args = p.parse_args(argv)
    Path(args.out).write_text(render([run(c) for c in CASES]))
    print(f"day-two matrix written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
