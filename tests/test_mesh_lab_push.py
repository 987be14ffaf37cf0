"""The plan's dynamic step and the mesh's health check against the real Traefik (isolated
network namespace only; tests/mesh_harness.py brings the dev stack's mesh up by its plan).

A push is the plan's ``<mesh>-traefik-dynamic`` step, its exact command through phoenix-apply:
the dynamic file is swapped in, Traefik's file provider takes it up, and the step's health
check (configs/mesh/traefik-health.sh.j2) decides. It passes on a healthy mesh; it fails,
naming what is wrong, when Traefik rejected the file, when Traefik disabled a router, and when
the mesh serves no certificate under the Phoenix root; a failed push is rolled back and
Traefik keeps serving the routes it had.

Run: bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_mesh_lab_push.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway_harness import with_file
from lab import wait_until
from mesh_harness import mesh_lab
from phoenix.render import mesh as m

pytestmark = pytest.mark.lab
lab = mesh_lab(["dev"])


def within(seconds: int) -> dict:
    """The health check's patience (90 s on a guest): a failing push fails within seconds here."""
    return {"PHOENIX_HEALTH_TIMEOUT": str(seconds)}


def service_host(lab) -> str:
    return lab.topo.fqdn(lab.topo.lab.services[0].name)


def still_serving(lab) -> None:
    """Traefik runs the plan's dynamic file again (its marker loaded), every router enabled, and
    serves the routes."""
    assert Path(m.DYNAMIC_PATH).read_text() == lab.files[lab.mesh][m.DYNAMIC_PATH][0].content
    marker = next(f"{n}@file" for n in lab.planned_dynamic()["http"]["middlewares"]
                  if n.startswith(m.CONFIG_MARKER_PREFIX))

    def restored() -> bool:
        raw = lab.rawdata()
        return marker in raw["middlewares"] and all(r["status"] == "enabled" for r in raw["routers"].values())
    wait_until(restored, 10, "Traefik back on the plan's dynamic file")
    status, _h, body = lab.request("internal", service_host(lab))
    assert status == 200 and json.loads(body)["service"] == lab.topo.lab.services[0].name


def edited_push(lab, edit) -> str:
    """The plan's bundle of the dynamic step for a configuration changed by ``edit`` (on the
    plan's, parsed), both files as the renderer writes them: the dynamic file with its own
    marker (``mesh.mark``), and what the health check expects of it."""
    doc = lab.planned_dynamic()
    edit(doc)
    m.mark(doc)
    bundle = with_file(lab.bundle(lab.mesh, "traefik-dynamic"), m.DYNAMIC_PATH, lambda _text: m.to_yaml(doc))
    return with_file(bundle, m.EXPECTED_PATH, lambda _text: m.expected_text(lab.topo, doc))


def health(lab, *args: str, timeout: int = 5) -> subprocess.CompletedProcess:
    """The mesh's health check, as phoenix-apply runs it."""
    return subprocess.run(["bash", m.HEALTH_SCRIPT, *args], capture_output=True, text=True, timeout=60,
                          env={**lab.env, **within(timeout)}, check=False)


def test_the_dynamic_step_passes_on_the_running_mesh(lab):
    pushed = lab.results[f"{lab.mesh}-traefik-dynamic"]          # the bring-up's push, health included
    assert pushed.returncode == 0 and "files applied" in pushed.stdout
    assert lab.apply(lab.mesh, "traefik-dynamic").returncode == 0   # a replay
    checked = health(lab, m.EXPECTED_PATH)
    assert checked.returncode == 0, checked.stderr
    still_serving(lab)


def test_a_file_traefik_rejects_is_rolled_back_naming_what_is_missing(lab):
    """A new service whose file Traefik cannot decode (an invalid duration): the file provider
    keeps the old configuration, the health check misses the new service, the push restores."""
    first = lab.topo.lab.services[0].name

    def add_service(doc):
        http = doc["http"]
        http["routers"]["extra-internal"] = {**http["routers"][f"{first}-internal"], "service": "extra",
                                             "rule": f"Host(`{lab.topo.fqdn('extra')}`)"}
        http["services"]["extra"] = json.loads(json.dumps(http["services"][first]))
        balancer = http["services"]["extra"].setdefault("loadBalancer", {})
        balancer["healthCheck"] = {"path": "/", "interval": "ten seconds"}
    result = lab.apply(lab.mesh, "traefik-dynamic", edited_push(lab, add_service), env=within(4), check=False)
    assert result.returncode == 1
    assert "traefik-dynamic: health failed; previous files restored" in result.stderr
    assert f"the running configuration lacks entries of {m.EXPECTED_PATH}" in result.stderr
    assert "first missing: extra-internal@file" in result.stderr
    still_serving(lab)


def test_a_router_traefik_disabled_is_rolled_back_naming_its_error(lab):
    """A middleware name with a typo: Traefik loads the file but disables the router using it."""
    router = f"{lab.topo.lab.services[0].name}-internal"

    def typo(doc):
        doc["http"]["routers"][router]["middlewares"] = [m.RETRY, "circuit-breakr"]
    # Time enough for Traefik to take the file up (its file provider waits 2 s for more changes).
    result = lab.apply(lab.mesh, "traefik-dynamic", edited_push(lab, typo), env=within(10), check=False)
    assert result.returncode == 1
    assert "traefik-health: Traefik disabled part of the configuration" in result.stderr
    assert f'router {router}@file: middleware "circuit-breakr@file" does not exist' in result.stderr
    still_serving(lab)


def test_the_health_check_fails_without_a_certificate_under_the_phoenix_root(lab):
    """Step-CA unreachable at Traefik's first start (no stored certificate): Traefik serves its
    own self-signed default certificate, which the check refuses; and a Traefik that does not
    answer at all fails the check too."""
    store, saved = Path(m.ACME_STORAGE), lab.tmp / "acme.json.saved"
    shutil.copy2(store, saved)
    try:
        assert lab.systemctl("stop", "step-ca").returncode == 0
        assert lab.systemctl("stop", "traefik").returncode == 0
        down = health(lab, timeout=2)
        assert down.returncode == 1 and "Traefik does not answer" in down.stderr
        store.write_text("")   # a first start: nothing stored yet
        assert lab.systemctl("start", "traefik").returncode == 0
        out = health(lab, m.EXPECTED_PATH)
        assert out.returncode == 1
        assert f"no certificate for {lab.topo.mesh_name} that verifies against the Phoenix root" in out.stderr
    finally:
        lab.systemctl("stop", "traefik")
        shutil.copy2(saved, store)
        lab.systemctl("start", "step-ca")
        lab.systemctl("start", "traefik")
    assert health(lab, m.EXPECTED_PATH).returncode == 0
    still_serving(lab)
