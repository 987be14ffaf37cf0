"""Snapshots: one plan, read from its directory (``phoenix plan --out DIR``) or taken in process."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from phoenix.errors import ConfigError, problem


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

