"""The config reference (docs/config-reference.md), generated from the model's JSON Schema.

Types, bounds, patterns, enums and defaults come from ``phoenix.model.json_schema()``; the
one-line notes come from the model's own ``#:`` comments and class docstrings, so the
reference says nothing the model does not. ``phoenix docs`` rewrites the file and
``phoenix docs --check`` (and a test) fail when it is stale.
"""

from __future__ import annotations

import ast
import inspect
import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from phoenix import model
from phoenix.model import catalog, fields, lab

#: the modules whose classes are the schema (their ``#:`` comments are the notes).
SCHEMA_MODULES = (lab, catalog)

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "config-reference.md"
#: the firewall matrix, beside the reference (``phoenix docs`` writes both).
MATRIX_NAME = "firewall-matrix.md"
#: the stack the matrix is drawn for.
MATRIX_STACK = "dev"
_FORMATS = {"ipv4": "IPv4 address", "ipv4network": "IPv4 network (CIDR)", "ipv4-network": "IPv4 network (CIDR)"}


def field_notes() -> dict[str, dict[str, str]]:
    """class name -> field name (snake_case) -> the ``#:`` comment above it in the model's modules."""
    notes: dict[str, dict[str, str]] = {}
    for module in SCHEMA_MODULES:
        notes.update(_module_notes(inspect.getsource(module)))
    return notes


def _module_notes(source: str) -> dict[str, dict[str, str]]:
    tree = ast.parse(source)
    lines = source.splitlines()
    notes: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        found = notes.setdefault(node.name, {})
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                comment: list[str] = []
                i = stmt.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#:"):
                    comment.insert(0, lines[i].strip()[2:].strip())
                    i -= 1
                if comment:
                    found[stmt.target.id] = " ".join(comment)
    return notes


def _ref(node: dict) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def type_text(node: dict) -> str:
    """A JSON Schema node as a short human type: ``integer, 1..65535``, ``list of Guest``..."""
    if "anyOf" in node:
        kinds = [n for n in node["anyOf"] if n.get("type") != "null"]
        text = " or ".join(type_text(n) for n in kinds)
        return f"{text} (optional)" if len(kinds) < len(node["anyOf"]) else text
    ref = _ref(node)
    if ref:
        return f"[{ref}](#{ref.lower()})"
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    kind = node.get("type", "any")
    if kind == "array":
        text = "list of " + type_text(node.get("items", {}))
        if node.get("minItems"):
            text += f" (at least {node['minItems']})"
        return text
    if kind == "object":
        inner = node.get("additionalProperties")
        return f"map of name to {type_text(inner)}" if isinstance(inner, dict) else "mapping"
    text = _FORMATS.get(node.get("format", ""), kind)
    lo, hi = node.get("minimum"), node.get("maximum")
    if lo is not None or hi is not None:
        text += f", {'' if lo is None else lo}..{'' if hi is None else hi}"
    if "pattern" in node:
        text += f", matching `{node['pattern']}`"
    return text


def _default(cls: type[BaseModel], name: str) -> str:
    info = cls.model_fields[name]
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    value = json.loads(json.dumps(value, default=str))
    if value is None:
        return "none"
    if value in ([], {}):
        return "empty"
    return f"`{json.dumps(value)}`"


_VALIDATED = {fields._hostname_label.__name__: "DNS label (a-z, 0-9, '-')", fields._domain.__name__: "domain name",
              catalog._health_path.__name__: "URL path (/segment/..., letters, digits and ._~-; optional ?query)",
              catalog._body_size.__name__: "size (1 to 999999, optionally k, m or g)",
              catalog._run_command.__name__: "command (an absolute path, then words; placeholders {name} only)"}


def _validated_as(annotation: Any) -> str | None:
    """What an ``AfterValidator`` in the annotation checks (the schema cannot say)."""
    for meta in getattr(annotation, "__metadata__", ()) or ():
        name = getattr(getattr(meta, "func", None), "__name__", "")
        if name in _VALIDATED:
            return _VALIDATED[name]
    for arg in typing.get_args(annotation):
        found = _validated_as(arg)
        if found:
            return found
    return None


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(cls: type[BaseModel], schema: dict, notes: dict[str, str]) -> list[str]:
    rows = ["| key | type | default | notes |", "|---|---|---|---|"]
    hints = typing.get_type_hints(cls, include_extras=True)
    for name, info in cls.model_fields.items():
        key = info.alias or name
        kind = type_text(schema["properties"][key])
        checked = _validated_as(hints.get(name)) or next(
            (_VALIDATED.get(getattr(getattr(m, "func", None), "__name__", "")) for m in info.metadata
             if getattr(getattr(m, "func", None), "__name__", "") in _VALIDATED), None)
        if checked:
            kind = kind.replace("string", checked, 1)
        rows.append(f"| `{key}` | {_cell(kind)} | {_cell(_default(cls, name))} | {_cell(notes.get(name, ''))} |")
    return rows


def reference() -> str:
    schema = model.json_schema()
    notes = field_notes()
    defs = schema.get("$defs", {})
    out = ["# Configuration reference",
           "",
           "<!-- Generated by `phoenix docs` from phoenix.model.json_schema(); do not edit by hand. -->",
           "",
           "Every key lives in the `phoenix` namespace of `Pulumi.<stack>.yaml` (`phoenix:guests`, ...).",
           "Keys are camelCase; unknown keys are refused with the key path named. Secrets are not",
           "part of this model: set them with `pulumi config set --secret` (see deploying.md).",
           "`phoenix:catalog` may name a YAML file holding the `services` list instead of",
           "`phoenix:services`.",
           "",
           "## Top-level keys",
           ""]
    out += _table(model.Lab, schema, notes.get("Lab", {}))
    for name in sorted(defs):
        cls = getattr(model, name, None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, BaseModel):
            continue
        out += ["", f"## {name}", ""]
        doc = inspect.getdoc(cls)
        if doc and cls.__doc__ is not None and "__doc__" in cls.__dict__:
            out += [doc.splitlines()[0], ""]
        out += _table(cls, defs[name], notes.get(name, {}))
    return "\n".join(out) + "\n"


def schema_path(reference_path: Path) -> Path:
    """The model's JSON Schema beside the reference, for editors (yaml-language-server etc.)."""
    return reference_path.parent / "phoenix.schema.json"


def matrix_path(reference_path: Path) -> Path:
    return reference_path.parent / MATRIX_NAME


def write(path: Path = REFERENCE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reference())
    schema_path(path).write_text(schema_json())
    matrix_path(path).write_text(firewall_matrix())
    return path


def is_current(path: Path = REFERENCE) -> bool:
    schema, matrix = schema_path(path), matrix_path(path)
    return (path.exists() and path.read_text() == reference()
            and schema.exists() and schema.read_text() == schema_json()
            and matrix.exists() and matrix.read_text() == firewall_matrix())


def firewall_matrix(stack: str = MATRIX_STACK) -> str:
    """The firewall matrix of a shipped stack, as its guests' rules are made (``phoenix.topology``
    flows, ``phoenix.render.firewall``): who reaches what, and why."""
    from phoenix.model import parse_lab
    from phoenix.render.firewall import INPUT_POLICY, OUTPUT_POLICY, flow_rules
    from phoenix.stackfile import PROJECT_ROOT, expand_catalog, read_stack_file
    from phoenix.topology import build
    config = read_stack_file(PROJECT_ROOT / f"Pulumi.{stack}.yaml")
    topo = build(parse_lab(expand_catalog(config.phoenix(), config.root)))
    net = topo.lab.network
    kinds = {"any": "anywhere", "guests": f"the guests ({net.cidr})",
             "management": "management: " + (", ".join(topo.management_sources) or "none"),
             "nodes": "the Proxmox nodes: " + ", ".join(topo.jump_hosts)}
    roles = {g.name: g.role for g in topo.lab.guests}
    order = {g.name: i for i, g in enumerate(topo.lab.guests)}
    rows: dict[bool, list[tuple[int, int, str]]] = {True: [], False: []}
    for n, flow in enumerate(topo.flows):
        for guest, rules in flow_rules(topo, flow).items():
            port = f"{flow.port}/{flow.proto}"
            who = f"`{guest}` ({roles[guest]})"
            out = flow.target == "any"
            source = "anywhere" if out else (kinds.get(flow.source)
                                             or f"`{flow.source}` ({', '.join(r.source or 'any' for r in rules)})")
            rows[out].append((order[guest], n, f"| {who} | {port} | {_cell(source)} | {_cell(flow.purpose)} |"))
    inbound = ["| guest | port | from | why |", "|---|---|---|---|", *(r for *_, r in sorted(rows[False]))]
    outbound = ["| guest | port | to | why |", "|---|---|---|---|", *(r for *_, r in sorted(rows[True]))]
    return "\n".join([
        "# Firewall matrix",
        "",
        f"<!-- Generated by `phoenix docs` from the {stack} stack's topology (phoenix.topology flows, "
        "phoenix.render.firewall); do not edit by hand. -->",
        "",
        f"Every guest's Proxmox firewall has input policy {INPUT_POLICY} and output policy {OUTPUT_POLICY}: "
        "what no row below lets in is dropped. The rows are those of the shipped "
        f"`Pulumi.{stack}.yaml`; another stack has the same rows with its own guests, ports and networks.",
        "",
        "* Admin access (SSH, the Traefik dashboard and metrics) comes only from the networks in "
        "`phoenix:network.management`, and SSH also from the Proxmox nodes when `proxmox.sshViaNode` "
        "is on (the deploy's jump host). The guest network's gateway is not a management source: list "
        "it in `network.management` only if it is a machine of yours that needs SSH.",
        "* `phoenix verify` run from a management host reaches what it checks: Step-CA's health, the "
        "mesh's ping (metrics port) and every service's health through the mesh's internal entrypoint "
        "(the mesh's gateway entrypoint is the gateway's only).",
        "* Guest firewalls act only while the datacenter firewall is on. Phoenix changes the "
        "datacenter's options only with `phoenix:firewall.manageCluster: true` (off by default).",
        "",
        "## Inbound",
        "",
        *inbound,
        "",
        "## Outbound (kept open should an operator tighten the output policy)",
        "",
        *outbound,
    ]) + "\n"


def schema_json() -> str:
    return json.dumps(model.json_schema(), indent=2, sort_keys=True) + "\n"
