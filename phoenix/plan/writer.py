"""Turning a recorded run into the offline plan: plan.json, pushed files, the picture, a summary.

Secrets never reach the output: secret inputs become ``[secret]`` (their keys listed), and
every known secret value (config secrets, secret outputs of keys and random values) is
replaced by ``<<secret:NAME>>`` wherever it appears, pushed files included.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phoenix.bundle import GuestFile, digest, unpack
from phoenix.errors import ConfigError, problem
from phoenix.plan.engine import Recorded, Run, is_secret, reveal
from phoenix.render.resilience import summary_lines as resilience_summary
from phoenix.resource_types import COMMAND
from phoenix.topology import Topology

if TYPE_CHECKING:
    from phoenix.plan.stream import FileStream

SECRET_MARKER = "[secret]"


@dataclass
class Secrets:
    """Known secret values by name, longest first so a value inside another is caught."""
    values: dict[str, str] = field(default_factory=dict)
    _longest_first: list[str] | None = field(default=None, repr=False, compare=False)

    def add(self, name: str, value: Any) -> None:
        if isinstance(value, str) and len(value) >= 8:
            self.values.setdefault(value, name)
            if value.endswith("\n"):
                self.values.setdefault(value.rstrip("\n"), name)

    def redact(self, text: str) -> str:
        # Sorted once per set of values (they only ever grow), not once per text.
        if self._longest_first is None or len(self._longest_first) != len(self.values):
            self._longest_first = sorted(self.values, key=len, reverse=True)
        for value in self._longest_first:
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
    """The files a step pushes, or None when its stdin is not a bundle."""
    stdin = r.value("stdin")
    if not isinstance(stdin, str) or not stdin:
        return None
    try:
        return unpack(stdin)
    except ValueError:   # base64 and UTF-8 errors are ValueErrors too
        return None


def guest_names_by_address(topo: Topology) -> dict[str, str]:
    return {str(g.address): g.name for g in topo.lab.guests}


def command_guest(r: Recorded, topo: Topology | None, by_address: dict[str, str] | None = None) -> str | None:
    """The guest a step runs on (by its connection's address): looked up in ``by_address``
    (``guest_names_by_address``, made once for many lookups) when given, else in ``topo``."""
    host = (r.value("connection") or {}).get("host")
    if host is None:
        return None
    if by_address is None:
        if topo is None:
            raise TypeError("command_guest needs a topology or an address map")
        by_address = guest_names_by_address(topo)
    return by_address.get(host)


def step_bundles(run: Run) -> dict[str, list[GuestFile]]:
    """urn -> the files of every remote step that pushes a bundle: each bundle unpacked once."""
    out = {}
    for r in run.by_type(COMMAND):
        files = bundle_of(r)
        if files is not None:
            out[r.urn] = files
    return out


def pushed_files(run: Run, topo: Topology, bundles: dict[str, list[GuestFile]] | None = None,
                 ) -> dict[str, dict[str, tuple[GuestFile, str]]]:
    """guest -> path -> (file, the step that pushes it). ``bundles``: ``step_bundles(run)``
    when the caller has it already."""
    bundles = step_bundles(run) if bundles is None else bundles
    by_address = guest_names_by_address(topo)
    out: dict[str, dict[str, tuple[GuestFile, str]]] = defaultdict(dict)
    clashes: list[str] = []
    for r in run.by_type(COMMAND):
        files = bundles.get(r.urn)
        guest = command_guest(r, topo, by_address)
        if files is None or guest is None:
            continue
        mine = out[guest]
        for f in files:
            prior = mine.get(f.path)
            if prior is not None and prior[1] != r.name:
                # One owner per path: the later push would silently replace the earlier's file.
                clashes.append(problem(f"{guest}:{f.path}", f"pushed by both step {prior[1]} and step {r.name}"))
            mine[f.path] = (f, r.name)
    if clashes:
        raise ConfigError(clashes)
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


#: the parts of a remote step's ``connection`` (secret as a whole: it holds the deploy key) that
#: are no secret and that a plan diff must see: where the step runs and through which jump host.
CONNECTION_SHOWN = ("host", "port", "user", "dialErrorLimit", "perDialTimeout")


def _scrub_connection(value: Any) -> Any:
    shown = reveal(value)
    if not isinstance(shown, dict):
        return SECRET_MARKER
    out = {k: shown[k] for k in CONNECTION_SHOWN if k in shown}
    if isinstance(shown.get("proxy"), dict):
        out["proxy"] = {k: shown["proxy"][k] for k in CONNECTION_SHOWN if k in shown["proxy"]}
    return {**out, "(the rest)": SECRET_MARKER}


def resource_entry(r: Recorded, secrets: Secrets, files: list[GuestFile] | None = None) -> dict:
    """One resource of plan.json; ``files``: its bundle, shown as a digest and the paths."""
    inputs = {k: (_scrub_connection(v) if k == "connection" and r.type == COMMAND else _scrub(v, secrets))
              for k, v in sorted(r.inputs.items()) if not (files is not None and k == "stdin")}
    if files is not None:
        inputs["stdin"] = {"phoenix:bundle": {"digest": digest(files), "files": sorted(f.path for f in files)}}
    return {
        "urn": r.urn, "type": r.type, "name": r.name, "parent": r.parent or None,
        "dependencies": r.dependencies, "protect": r.protect,
        "inputs": inputs, "secretInputs": r.secret_paths(),
        "secretOutputs": sorted(r.secret_outputs),
        "replaceOnChanges": r.replace_on_changes, "ignoreChanges": r.ignore_changes,
        "deleteBeforeReplace": r.delete_before_replace,
        # Lifecycle options and create-time outputs the plan diff reads (phoenix.diff: replacements
        # that follow a guest, hazards).
        "replaceWith": r.replace_with, "retainOnDelete": r.retain_on_delete,
        "deletedWith": r.deleted_with or None, "computed": r.computed,
        "replacementTrigger": _scrub(r.replacement_trigger, secrets),
    }


def tiers(run: Run) -> dict[str, str]:
    """urn -> the tier a resource belongs to: its outermost ancestor's (itself when it has none),
    when that is a ``phoenix:tier:*`` component, else "stack". One pass, each urn once."""
    by_urn = {x.urn: x for x in run.resources}
    out: dict[str, str] = {}

    def tier(r: Recorded) -> str:
        if r.urn not in out:
            parent = by_urn.get(r.parent) if r.parent else None
            out[r.urn] = (tier(parent) if parent is not None
                          else r.type.split(":")[-1] if r.type.startswith("phoenix:tier:") else "stack")
        return out[r.urn]

    for r in run.resources:
        tier(r)
    return out


def tier_of(r: Recorded, run: Run) -> str:
    return tiers(run)[r.urn]


@dataclass
class Plan:
    run: Run
    topo: Topology
    secrets: Secrets
    warnings: list[str]
    #: files/ being written while the program ran (``phoenix.plan.stream``), for ``write``
    stream: FileStream | None = None

    @cached_property
    def bundles(self) -> dict[str, list[GuestFile]]:
        """urn -> files of every step that pushes a bundle (plan.json and files/ share it)."""
        return step_bundles(self.run)

    def document(self) -> dict:
        return {
            "stack": self.run.stack,
            # Registration order is async and varies; URN order makes plans comparable.
            "resources": [resource_entry(r, self.secrets, self.bundles.get(r.urn))
                          for r in sorted(self.run.resources, key=lambda r: r.urn)],
            "outputs": {k: _scrub(v, self.secrets) for k, v in sorted(self.run.outputs.items())},
            "secrets": sorted(set(self.secrets.values.values())),
            "warnings": self.warnings,
        }

    def write(self, out: Path, with_secrets: bool = False) -> dict:
        """Write the plan into ``out``; returns plan.json's document (the caller reads it there,
        not back from the file). The pushed files come from ``stream`` when it wrote them for
        this very call (``phoenix.plan.stream``), else they are written here."""
        # Only a new, empty or previous plan directory (phoenix.plan.outdir); refused otherwise.
        from phoenix.plan.outdir import STAGING, prepare
        stream = self.stream if self.stream is not None and (self.stream.out, self.stream.with_secrets) == (
            out, with_secrets) else None
        try:
            pushed = pushed_files(self.run, self.topo, self.bundles)   # refuses two owners of a path: before any write
            # plan.json's text is made while the stream writes its last files.
            doc = self.document()
            plan_json = json.dumps(doc, indent=2, sort_keys=True) + "\n"
            if stream is not None:
                stream.finish()
        except BaseException:
            self.close_stream()
            raise
        if stream is None:
            self.close_stream()       # written for another directory or mode: not these files
        prepare(out, self.run.stack, keep=STAGING if stream is not None else None)
        if stream is not None:
            os.rename(stream.staging, out / "files")
            self.stream = None
        else:
            _write_files(out / "files", pushed, self.secrets, with_secrets)
        (out / "plan.json").write_text(plan_json)
        from phoenix.plan.graph import mermaid
        (out / "topology.mmd").write_text(mermaid(self.topo))
        if with_secrets:
            secret_dir = out / "secrets"
            secret_dir.mkdir(mode=0o700)
            for value, name in self.secrets.values.items():
                # Created owner-only: never readable by others, not even for an instant.
                write_private(str(secret_dir / name.replace("/", "_")), value, 0o600)
        return doc

    def close_stream(self) -> None:
        """Stop the file stream, if any, and remove what it wrote (the plan is not written)."""
        if self.stream is not None:
            self.stream.abort()
            self.stream = None

    def summary(self) -> str:
        tier = tiers(self.run)
        counts = Counter(tier[r.urn] for r in self.run.resources if r.custom)
        lab = self.topo.lab
        lines = [f"Phoenix plan for stack {self.run.stack!r}: {sum(counts.values())} resources"]
        lines += [f"  {name:<10} {count:>4}" for name, count in sorted(counts.items())]
        lines.append(f"guests ({len(lab.guests)}): " + ", ".join(f"{g.name}[{g.id}]" for g in lab.guests))
        lines.append(f"services ({len(lab.services)}): " + ", ".join(s.name for s in lab.services))
        lines.append("public entry points: " + (", ".join(f"https://{h}/" for h in self.topo.public_hosts) or "none"))
        lines += resilience_summary(lab, self.run.stack)
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def current_umask() -> int:
    """The process's umask (reading it means setting it: restored at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_private(target: str, text: str, mode: int, umask: int | None = None) -> None:
    """A file created with ``mode`` (never readable by others, even for an instant), whatever the
    umask (``umask``: the process's, when the caller has read it already)."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        # A new file has ``mode`` less the umask; a file left by an interrupted plan keeps its own.
        # Changing the mode is a metadata write, as costly as the file itself: only when needed.
        if mode & ~(current_umask() if umask is None else umask) != mode or os.fstat(fd).st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _write_files(root: Path, pushed: dict[str, dict[str, tuple[GuestFile, str]]], secrets: Secrets,
                 with_secrets: bool) -> None:
    """files/GUEST/PATH for every pushed file: redacted, or as pushed (``with_secrets``, owner-only)."""
    mode = 0o600 if with_secrets else 0o644
    umask = current_umask()
    root.mkdir(parents=True)
    made: set[str] = set()
    for guest, files in pushed.items():
        for path, (f, _step) in files.items():
            target = os.path.join(root, guest, path.lstrip("/"))
            folder = os.path.dirname(target)
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            write_private(target, f.content if with_secrets else secrets.redact(f.content), mode, umask)
