"""Hostile and careless input: nothing a catalog or a stack says can inject, collide or silently
change meaning.

The corpus (tests/hostile/cases.yaml) edits a copy of the dev stack, one case at a time; each
goes through the real command (``phoenix plan --config-file <copy> --out <dir>``) and must be
refused as a user sees it: exit 2, one ``error: <key>: ...`` line per problem and one naming the
case's key, no traceback, and no plan directory. Then what the model lets through is checked
where it lands: the reserved names against every path the shipped plans push, the lab's own
ports against the firewall's flows.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, shipped_plan
from phoenix.cli import main
from phoenix.model.names import RESERVED_SERVICE_NAMES
from phoenix.model.ports import lab_ports

CASES = yaml.safe_load((ROOT / "tests" / "hostile" / "cases.yaml").read_text())
CLASSES = {"control", "newline", "format", "shell", "reserved", "collision", "coercion", "huge", "traversal", "port"}


def _walk(doc, path: str):
    """(parent, last key) of ``path`` (``a.b[0].c``, keys may hold ':') in ``doc``."""
    parts = [p for p in re.findall(r"[^.\[\]]+|\[\d+\]", path)]
    keys = [int(p[1:-1]) if p.startswith("[") else p for p in parts]
    node = doc
    for k in keys[:-1]:
        node = node[k]
    return node, keys[-1]


def _value(case: dict):
    if "repeat" in case:
        prefix, unit, times = case["repeat"]
        return prefix + unit * times
    if "nest" in case:
        value = "x"
        for _ in range(case["nest"]):
            value = [value]
        return value
    if "range" in case:
        stem, count = case["range"]
        return [f"{stem}{i}" for i in range(count)]
    return copy.deepcopy(case["value"])


def hostile_copy(case: dict, where: Path) -> Path:
    """The dev stack and its catalog in ``where``, with the case's edit: the stack file's path."""
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    catalog_rel = stack["config"]["phoenix:catalog"]
    catalog = yaml.safe_load((ROOT / catalog_rel).read_text())
    docs = {"stack": stack["config"], "catalog": catalog}
    if "raw" not in case:
        if "append" in case:
            parent, key = _walk(docs[case["file"]], case["append"] + ".x")
            parent.append(_value(case))
        else:
            parent, key = _walk(docs[case["file"]], case["set"])
            parent[key] = _value(case)
    (where / Path(catalog_rel).parent).mkdir(parents=True, exist_ok=True)
    catalog_text = yaml.safe_dump(catalog)  # escaped: a raw NEL would be a YAML line break
    if case.get("raw") and case["file"] == "catalog":
        catalog_text = case["raw"].replace("{digits}", "1" * case["digits"])
    (where / catalog_rel).write_text(catalog_text)
    path = where / "Pulumi.hostile.yaml"
    path.write_text(yaml.safe_dump(stack))
    return path


def test_the_corpus_covers_every_class_the_issue_names():
    assert {c["class"] for c in CASES} == CLASSES
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_the_plan_refuses_it_naming_the_key(case, tmp_path, capsys):
    config = hostile_copy(case, tmp_path / "stack")
    out = tmp_path / "plan"
    code = main(["plan", "--config-file", str(config), "--out", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, f"exit {code}; stdout: {captured.out[-500:]}; stderr: {captured.err[-500:]}"
    assert lines and all(line.startswith("error: ") for line in lines), captured.err
    named = f"error: {case['key']}"        # the key, or a key inside it (an item of a list nested too deep)
    assert any(line.startswith(named) and line[len(named)] in ":[." for line in lines), lines
    assert "Traceback" not in captured.err + captured.out
    assert all(len(line) < 2000 for line in lines), "an error line quotes a huge value"
    assert not out.exists(), "something was written to --out"


def test_a_few_through_the_installed_command(tmp_path):
    """The same as a user runs it: the console script, in a process of its own."""
    import subprocess
    exe = shutil.which("phoenix", path=str(ROOT / ".venv" / "bin")) or str(ROOT / ".venv" / "bin" / "phoenix")
    for case in [c for c in CASES if c["id"] in ("env-value-cr", "format-padding-4gb", "integer-5000-digits")]:
        config = hostile_copy(case, tmp_path / case["id"])
        done = subprocess.run([exe, "plan", "--config-file", str(config), "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2, done.stderr
        assert f"error: {case['key']}: " in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "out").exists()


# -- the lists the model checks against, against what the lab really uses ----------------------------
_SERVICE_DERIVED = [
    (re.compile(r"^/var/lib/([a-z0-9][a-z0-9.-]*)(?:/|$)"), "a state directory"),
    (re.compile(r"^/etc/systemd/system/phoenix-([a-z0-9-]+)\.(?:service|timer)$"), "a unit"),
    (re.compile(r"^/etc/phoenix/tls/([a-z0-9-]+)(?:\.crt|\.key|/)"), "a certificate"),
    (re.compile(r"^/etc/sysusers\.d/phoenix-([a-z0-9-]+)\.conf$"), "a system user"),
]
_MENTIONED = re.compile(r"(/var/lib/[a-z0-9][a-z0-9.-]*|/etc/phoenix/tls/[a-z0-9-]+(?:\.crt|\.key))")


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_no_path_the_lab_uses_is_a_name_a_service_may_take(stack):
    """Every path the plan pushes or its files name, of the forms a service's name becomes
    (``/var/lib/<name>``, ``phoenix-<name>.service``, ``/etc/phoenix/tls/<name>.crt``): the
    catalog's own services aside, each <name> is reserved."""
    plan = shipped_plan(stack)
    from phoenix.plan.writer import pushed_files
    services = {s.name for s in plan.topo.lab.services}
    found: dict[str, str] = {}
    for guest, files in pushed_files(plan.run, plan.topo).items():
        for path, (f, step) in files.items():
            for candidate in [path, *_MENTIONED.findall(f.content)]:
                for pattern, what in _SERVICE_DERIVED:
                    m = pattern.match(candidate)
                    if m and m.group(1) not in services:
                        found.setdefault(m.group(1), f"{what}: {candidate} ({guest}, {step})")
    assert found, "the patterns match nothing: the test would pass whatever the lab did"
    unreserved = {name: where for name, where in found.items() if name not in RESERVED_SERVICE_NAMES}
    assert unreserved == {}


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_every_port_the_lab_opens_into_a_guest_is_one_no_service_may_take(stack):
    """The firewall's flows into each guest that are not to a catalog service are the lab's
    own (the tiers, ACME HTTP-01, SSH): each is in ``lab_ports`` for that guest."""
    topo = shipped_plan(stack).topo
    reserved = lab_ports(topo.lab)
    catalog = {(g, s.port) for s in topo.lab.services for g in s.guests}
    for flow in topo.flows:
        if flow.target == "any" or (flow.target, flow.port) in catalog:
            continue
        assert flow.port in reserved[flow.target], (flow.target, flow.port, flow.purpose)
    for g in topo.acme_clients:                    # certbot --standalone or Traefik answer HTTP-01 on 80
        assert 80 in reserved[g.name], g.name
