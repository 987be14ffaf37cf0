"""Turning a recorded run into the offline plan: plan.json, pushed files, the picture, a summary.

Secrets never reach the output: secret inputs become ``[secret]`` (their keys listed), and
every known secret value (config secrets, secret outputs of keys and random values) is
replaced by ``<<secret:NAME>>`` wherever it appears, pushed files included.
"""

from __future__ import annotations

import binascii
import json
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phoenix.bundle import GuestFile, digest, unpack
from phoenix.plan.engine import Recorded, Run, is_secret, reveal
from phoenix.topology import Topology

SECRET_MARKER = "[secret]"
COMMAND = "command:remote:Command"


@dataclass
class Secrets:
    """Known secret values by name, longest first so a value inside another is caught."""
    values: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: Any) -> None:
        if isinstance(value, str) and len(value) >= 8:
            self.values.setdefault(value, name)
            if value.endswith("\n"):
                self.values.setdefault(value.rstrip("\n"), name)

    def redact(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, f"<<secret:{self.values[value]}>>")
        return text


def collect_secrets(run: Run, config_secrets: dict[str, str]) -> Secrets:
    found = Secrets()
    for key, value in config_secrets.items():
        found.add(key, value)
    for r in run.resources:
        for key in r.secret_outputs:
            found.add(f"{r.name}.{key}", reveal(r.outputs.get(key)))
    return found


def bundle_of(r: Recorded) -> list[GuestFile] | None:
    stdin = r.value("stdin")
    if not isinstance(stdin, str) or not stdin:
        return None
    try:
        return unpack(stdin)
    except (binascii.Error, OSError, EOFError, ValueError):
        return None


def command_guest(r: Recorded, topo: Topology) -> str | None:
    conn = r.value("connection") or {}
    by_address = {str(g.address): g.name for g in topo.lab.guests}
    return by_address.get(conn.get("host"))


def pushed_files(run: Run, topo: Topology) -> dict[str, dict[str, tuple[GuestFile, str]]]:
    """guest -> path -> (file, the step that pushes it)."""
    out: dict[str, dict[str, tuple[GuestFile, str]]] = defaultdict(dict)
    for r in run.by_type(COMMAND):
        files = bundle_of(r)
        guest = command_guest(r, topo)
        if files is None or guest is None:
            continue
        for f in files:
            out[guest][f.path] = (f, r.name)
    return out


def _scrub(value: Any, secrets: Secrets) -> Any:
    if is_secret(value):
        return SECRET_MARKER
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, str):
        return secrets.redact(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def resource_entry(r: Recorded, secrets: Secrets) -> dict:
    inputs = {k: _scrub(v, secrets) for k, v in sorted(r.inputs.items())}
    files = bundle_of(r) if r.type == COMMAND else None
    if files is not None:
        inputs["stdin"] = {"phoenix:bundle": {"digest": digest(files), "files": sorted(f.path for f in files)}}
    return {
        "urn": r.urn, "type": r.type, "name": r.name, "parent": r.parent or None,
        "dependencies": r.dependencies, "protect": r.protect,
        "inputs": inputs, "secretInputs": r.secret_paths(),
        "secretOutputs": sorted(r.secret_outputs),
        "replaceOnChanges": r.replace_on_changes, "ignoreChanges": r.ignore_changes,
        "deleteBeforeReplace": r.delete_before_replace,
    }


def tier_of(r: Recorded, run: Run) -> str:
    by_urn = {x.urn: x for x in run.resources}
    node = r
    while node.parent and node.parent in by_urn:
        node = by_urn[node.parent]
    if node.type.startswith("phoenix:tier:"):
        return node.type.split(":")[-1]
    return "stack"


@dataclass
class Plan:
    run: Run
    topo: Topology
    secrets: Secrets
    warnings: list[str]

    def document(self) -> dict:
        return {
            "stack": self.run.stack,
            # Registration order is async and varies; URN order makes plans comparable.
            "resources": [resource_entry(r, self.secrets)
                          for r in sorted(self.run.resources, key=lambda r: r.urn)],
            "outputs": {k: _scrub(v, self.secrets) for k, v in sorted(self.run.outputs.items())},
            "secrets": sorted(set(self.secrets.values.values())),
            "warnings": self.warnings,
        }

    def write(self, out: Path, with_secrets: bool = False) -> None:
        if out.exists():
            shutil.rmtree(out)
        (out / "files").mkdir(parents=True)
        (out / "plan.json").write_text(json.dumps(self.document(), indent=2, sort_keys=True) + "\n")
        for guest, files in pushed_files(self.run, self.topo).items():
            for path, (f, _step) in files.items():
                target = out / "files" / guest / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f.content if with_secrets else self.secrets.redact(f.content))
                target.chmod(0o600 if with_secrets else 0o644)
        from phoenix.plan.graph import mermaid
        (out / "topology.mmd").write_text(mermaid(self.topo))
        if with_secrets:
            secret_dir = out / "secrets"
            secret_dir.mkdir(mode=0o700)
            for value, name in self.secrets.values.items():
                (secret_dir / name.replace("/", "_")).write_text(value)

    def summary(self) -> str:
        tiers = Counter(tier_of(r, self.run) for r in self.run.resources if r.custom)
        lab = self.topo.lab
        lines = [f"Phoenix plan for stack {self.run.stack!r}: {sum(tiers.values())} resources"]
        lines += [f"  {tier:<10} {count:>4}" for tier, count in sorted(tiers.items())]
        lines.append(f"guests ({len(lab.guests)}): " + ", ".join(f"{g.name}[{g.id}]" for g in lab.guests))
        lines.append(f"services ({len(lab.services)}): " + ", ".join(s.name for s in lab.services))
        lines.append("public entry points: " + (", ".join(f"https://{h}/" for h in self.topo.public_hosts) or "none"))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)
