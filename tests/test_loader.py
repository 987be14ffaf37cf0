"""One loader: a stack file and its catalog are read once, relative to the stack file, and what is
validated, audited and pushed is one model, parsed, rendered and audited once per plan.

The user's view first: a stack copied out of the project with its catalog (the llm service moved
to port 8123) plans to files that all say 8123; a catalog that exists only beside the stack
works; a missing one is one line and exit 2. Then the counts, and `pulumi up`'s own path (the
engine's config) giving the very resources the offline plan gives.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, edited, shipped_plan
from phoenix.exits import Exit
from phoenix.render import mesh as mesh_render
from phoenix.render.workloads import unit_name
from phoenix.resource_types import COMMAND

PORT = 8123
LLM = "10.20.0.20"


def copy_stack(where: Path, catalog_path: str) -> Path:
    """The dev stack file, copied to ``where`` with its catalog at ``catalog_path`` beside it, the
    llm service on ``PORT`` there (the project's own catalog keeps port 8000)."""
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    doc["config"]["phoenix:catalog"] = catalog_path
    catalog = yaml.safe_load((ROOT / "configs" / "catalog" / "dev.yaml").read_text())
    llm = next(s for s in catalog["services"] if s["name"] == "llm")
    assert llm["port"] != PORT
    llm["port"] = PORT
    (where / catalog_path).parent.mkdir(parents=True, exist_ok=True)
    (where / catalog_path).write_text(yaml.safe_dump(catalog))
    stack = where / "Pulumi.lab.yaml"
    stack.write_text(yaml.safe_dump(doc))
    return stack


def phoenix(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phoenix.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("catalog_path", ["configs/catalog/dev.yaml", "catalogs/only-here.yaml"])
def test_a_stack_copied_outside_the_project_pushes_what_was_validated(tmp_path, catalog_path):
    """Beside a copied stack, the catalog it names is the one validated, audited and pushed, whether
    the project has a file of that name (with other values) or not."""
    elsewhere = tmp_path / "elsewhere"
    stack = copy_stack(elsewhere, catalog_path)
    out = tmp_path / "plan"
    done = phoenix("plan", "--config-file", str(stack), "--out", str(out), cwd=ROOT)
    assert done.returncode == Exit.OK, done.stderr
    assert "Traceback" not in done.stderr

    # The route audit the command printed.
    audit = [line for line in done.stdout.splitlines() if "mesh -> backend: router llm-" in line]
    assert audit and all(f"https://{LLM}:{PORT}:" in line for line in audit), audit
    # The mesh's dynamic file (Traefik's servers) and the health check's expected backends.
    files = out / "files"
    dynamic = yaml.safe_load((files / "mesh" / mesh_render.DYNAMIC_PATH.lstrip("/")).read_text())
    assert dynamic["http"]["services"]["llm"]["loadBalancer"]["servers"] == [{"url": f"https://{LLM}:{PORT}"}]
    assert f"https://{LLM}:{PORT}\n" in (files / "mesh" / mesh_render.EXPECTED_PATH.lstrip("/")).read_text()
    # The service's systemd unit on its guest listens there.
    llm = next(s for s in shipped_plan("dev").topo.lab.services if s.name == "llm")
    unit = (files / "gpu-llm" / "etc" / "systemd" / "system" / unit_name(llm)).read_text()
    assert f"--port {PORT}" in unit and "--port 8000" not in unit
    # The guest's firewall lets the mesh in on that port, and on no other service port.
    doc = json.loads((out / "plan.json").read_text())
    rules = next(r for r in doc["resources"] if r["name"] == "gpu-llm-firewall-rules")
    ports = {rule["dport"] for rule in rules["inputs"]["rules"] if rule.get("source") == "10.20.0.12/32"}
    assert ports == {str(PORT)}
    # And nothing anywhere still names the project catalog's port for the llm.
    assert not [p for p in files.rglob("*") if p.is_file() and f"{LLM}:8000" in p.read_text()]


def test_a_missing_catalog_is_one_line_and_exit_2(tmp_path):
    stack = copy_stack(tmp_path, "configs/catalog/dev.yaml")
    (tmp_path / "configs" / "catalog" / "dev.yaml").unlink()
    for command in ("plan", "validate", "graph"):
        done = phoenix(command, "--config-file", str(stack), "--out", str(tmp_path / "out"), cwd=ROOT) \
            if command == "plan" else phoenix(command, "--config-file", str(stack), cwd=ROOT)
        assert done.returncode == Exit.BAD_INPUT, (command, done.stderr)
        assert done.stderr == (f"error: phoenix:catalog: no such file configs/catalog/dev.yaml (paths are relative "
                               f"to the stack file's directory, {tmp_path.resolve()})\n"), command
    assert not (tmp_path / "out").exists()


# -- once per plan ---------------------------------------------------------------------------------
COUNTED = [
    ("phoenix.model.parse", "parse_lab"),
    ("phoenix.render.dns", "zones"),
    ("phoenix.render.dns", "view_answers"),
    ("phoenix.render.gateway", "server_blocks"),
    ("phoenix.render.gateway", "nginx_files"),
    ("phoenix.render.mesh", "static_config"),
    ("phoenix.render.mesh", "dynamic_config"),
    ("phoenix.render.firewall", "guest_rules"),
    ("phoenix.render.backends", "backend_certificates"),
    ("phoenix.audit", "audit"),
]
NAMES = [name for _, name in COUNTED]


@pytest.fixture
def calls(monkeypatch):
    """How often each counted function ran (wherever it was called from)."""
    import importlib
    counts = dict.fromkeys(NAMES, 0)
    for module_name, name in COUNTED:
        module = importlib.import_module(module_name)
        real = getattr(module, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)
        # Modules that imported the name before the patch hold the original: patch them too.
        for holder in ("phoenix.loader", "phoenix.model", "phoenix.artifacts", "phoenix.plan"):
            held = importlib.import_module(holder)
            if getattr(held, name, None) is real:
                monkeypatch.setattr(held, name, counted)
    return counts


def test_a_plan_parses_renders_and_audits_once(calls, tmp_path):
    from phoenix.cli import main
    assert main(["plan", "--stack", "cluster", "--out", str(tmp_path / "out")]) == Exit.OK
    assert calls == dict.fromkeys(NAMES, 1)


def test_validate_parses_renders_and_audits_once(calls):
    from phoenix.cli import main
    assert main(["validate", "--stack", "cluster"]) == Exit.OK
    assert calls == {**dict.fromkeys(NAMES, 1), "nginx_files": 0}      # validate pushes nothing


# -- `pulumi up`'s path: the engine's config ------------------------------------------------------------
PINS = {"pki": {"stepCaSha256": "a" * 64, "stepCliSha256": "b" * 64}, "mesh": {"traefikSha256": "c" * 64}}


def pinned(raw: dict) -> None:
    for key, values in PINS.items():
        raw.setdefault(key, {}).update(values)
    for i, image in enumerate(raw["images"].values()):     # the placeholder a deployment refuses
        image["checksum"] = f"{i:x}" * 128


def test_the_program_under_pulumi_up_deploys_what_the_plan_shows():
    """`pulumi up` runs phoenix.program.main on the engine's config (objects as JSON strings, the
    catalog beside the project's stack file); the offline plan loads the stack file itself. Both
    register the same resources with the same inputs."""
    from phoenix.plan import make_plan, with_placeholder_secrets
    from phoenix.plan.engine import run_program
    stack = edited("dev", pinned)
    plan = make_plan(stack)
    engine_stack, _ = with_placeholder_secrets(stack)
    run = run_program(engine_stack)                 # phoenix.program.main(stack.root)
    by_urn = {r.urn: r for r in run.resources}
    assert set(by_urn) == {r.urn for r in plan.run.resources}
    for r in plan.run.resources:
        if r.type == COMMAND:
            assert by_urn[r.urn].value("stdin") == r.value("stdin"), r.name
        assert by_urn[r.urn].dependencies == r.dependencies, r.name


def test_pulumi_up_refuses_a_misspelt_top_level_key_as_validate_does():
    import pulumi

    from phoenix.plan import with_placeholder_secrets
    from phoenix.plan.engine import run_program
    stack, _ = with_placeholder_secrets(edited("dev", pinned))
    stack.values["phoenix:gatway"] = json.dumps({"rateLimitPerSecond": 5})
    with pytest.raises(pulumi.RunError) as info:
        run_program(stack)
    assert "phoenix:gatway: unknown key (a typo?)" in str(info.value)
    assert info.value.phoenix_registered == []


def test_the_plan_prints_the_audit_of_the_files_it_wrote(tmp_path):
    """Every backend URL the audit lines name is in the dynamic file the plan wrote, and back."""
    done = phoenix("plan", "--stack", "cluster", "--out", str(tmp_path / "plan"), cwd=ROOT)
    assert done.returncode == Exit.OK, done.stderr
    audited = set(re.findall(r"mesh -> backend: .* -> (https?://[\d.]+:\d+): ", done.stdout))
    dynamic = yaml.safe_load((tmp_path / "plan" / "files" / "mesh" / mesh_render.DYNAMIC_PATH.lstrip("/")).read_text())
    pushed = {srv["url"] for svc in dynamic["http"]["services"].values() if "loadBalancer" in svc
              for srv in svc["loadBalancer"]["servers"]}
    assert audited == pushed
