"""The order `pulumi up` runs a diff's changes in, as Pulumi's engine orders them.

Modelled on the engine's step generator (pulumi/pulumi pkg/resource/deploy/step_generator.go):
resources are processed in dependency order; a create-first replacement creates the new
resource in place and deletes the old one at the end, with the other deletions, in reverse
dependency order; a delete-first replacement first deletes every dependent that its replacement
replaces too (``calculateDependentReplacements``: dependents in reverse dependency order), then
the resource itself, and creates the new one in its place. Each step is ``(op, name)`` with
the engine's operation names: ``(op, name, type)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from phoenix.diff.snapshot import _key

if TYPE_CHECKING:
    from phoenix.diff.compute import PlanDiff
    from phoenix.diff.snapshot import Snapshot

CREATE, UPDATE, DELETE = "create", "update", "delete"
CREATE_REPLACEMENT, DELETE_REPLACED = "create-replacement", "delete-replaced"


def _dependencies(snap: Snapshot) -> dict[str, set[str]]:
    keys = set(snap.resources)
    out = {}
    for key, entry in snap.resources.items():
        deps = {_key(u) for u in entry.get("dependencies") or []}
        if entry.get("parent"):
            deps.add(_key(entry["parent"]))
        out[key] = {d for d in deps if d in keys and d != key}
    return out


def dependency_order(snap: Snapshot) -> list[str]:
    """Keys in an order where every resource comes after what it depends on (ties by key)."""
    deps = _dependencies(snap)
    done: list[str] = []
    seen: set[str] = set()

    def visit(key: str, stack: tuple = ()) -> None:
        if key in seen or key in stack:
            return
        for d in sorted(deps.get(key, ())):
            visit(d, stack + (key,))
        seen.add(key)
        done.append(key)

    for key in sorted(snap.resources):
        visit(key)
    return done


def _dependents(snap: Snapshot) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {k: set() for k in snap.resources}
    for key, deps in _dependencies(snap).items():
        for d in deps:
            out[d].add(key)
    return out


def execution_order(d: PlanDiff, base: Snapshot, new: Snapshot) -> list[tuple[str, str, str]]:
    changes = {c.key: c for c in d.changes}
    names = {k: (e["name"], e["type"]) for snap in (base, new) for k, e in snap.resources.items()}
    replaced = {k for k, c in changes.items() if c.kind == "replace"}
    old_order = dependency_order(base)
    position = {k: i for i, k in enumerate(old_order)}
    dependents = _dependents(base)          # the engine uses the last snapshot's graph for this
    steps: list[tuple[str, str, str]] = []
    deleted: set[str] = set()
    pending: list[str] = []

    def cascade(root: str) -> list[str]:
        found, queue = set(), [root]
        while queue:
            for dep in dependents.get(queue.pop(), ()):
                if dep in replaced and dep not in found:
                    found.add(dep)
                    queue.append(dep)
        return sorted(found, key=lambda k: position.get(k, 0), reverse=True)

    for key in dependency_order(new):
        c = changes.get(key)
        if c is None or c.kind == DELETE:
            continue
        if c.kind in (CREATE, UPDATE):
            steps.append((c.kind, *names[key]))
            continue
        if new.resources[key].get("deleteBeforeReplace") and key not in deleted:
            for dep in cascade(key):
                if dep not in deleted:
                    steps.append((DELETE_REPLACED, *names[dep]))
                    deleted.add(dep)
            steps.append((DELETE_REPLACED, *names[key]))
            deleted.add(key)
        elif key not in deleted:
            pending.append(key)
        steps.append((CREATE_REPLACEMENT, *names[key]))
    gone = [k for k, c in changes.items() if c.kind == DELETE] + pending
    for key in sorted(gone, key=lambda k: position.get(k, 0), reverse=True):
        steps.append((DELETE if changes[key].kind == DELETE else DELETE_REPLACED, *names[key]))
    return steps
