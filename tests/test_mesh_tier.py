"""The mesh tier under the mock runtime: its steps, their order and dependencies, secrecy, and the
blast radius of a catalog change."""

from __future__ import annotations

import json

import pytest

from conftest import edited, shipped_plan
from phoenix.plan import make_plan
from phoenix.plan.engine import is_secret, reveal
from phoenix.plan.writer import COMMAND, bundle_of, tier_of
from phoenix.render import mesh

GUEST_TYPES = {"proxmoxve:index/containerLegacy:ContainerLegacy", "proxmoxve:index/vmLegacy:VmLegacy"}


def step(plan, name: str):
    return plan.run.named(f"{plan.topo.mesh.name}-{name}")


def names_of(plan, urns) -> set[str]:
    by_urn = {r.urn: r.name for r in plan.run.resources}
    return {by_urn[u] for u in urns}


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_three_steps_on_the_mesh_guest_in_order(stack):
    plan = shipped_plan(stack)
    mesh_guest = plan.topo.mesh
    install, static, dynamic = (step(plan, s) for s in ("traefik-install", "traefik-static", "traefik-dynamic"))
    for r in (install, static, dynamic):
        assert r.type == COMMAND
        assert r.value("connection")["host"] == str(mesh_guest.address)
        assert tier_of(r, plan.run) == "Mesh"
        # After the guest's bootstrap and its root of trust.
        assert {f"{mesh_guest.name}-bootstrap", f"{mesh_guest.name}-trust"} <= names_of(plan, r.dependencies)
    assert f"{mesh_guest.name}-traefik-install" in names_of(plan, static.dependencies)
    deps = names_of(plan, dynamic.dependencies)
    assert f"{mesh_guest.name}-traefik-static" in deps
    # Step-CA answers and the internal view resolves the mesh's name before certificates are asked for.
    assert f"{plan.topo.ca.name}-step-ca-health" in deps
    assert f"{plan.topo.dns.name}-bind-config" in deps


def test_each_step_pushes_its_own_files_with_its_own_hooks(dev_plan):
    files = {r.name: {f.path: f for f in bundle_of(r)} for r in dev_plan.run.by_type(COMMAND)
             if r.name.startswith(f"{dev_plan.topo.mesh.name}-traefik")}
    install, static, dynamic = (files[f"mesh-{s}"] for s in ("traefik-install", "traefik-static", "traefik-dynamic"))
    assert list(install) == [f"{mesh.SCRIPTS}/traefik-install.sh"]
    assert set(static) == {mesh.STATIC_PATH, mesh.UNIT_PATH, mesh.HEALTH_SCRIPT, mesh.USERS_PATH,
                           mesh.GATEWAY_CLIENT_CA_PATH}
    # the one CA the gateway entrypoint trusts: the PKI tier's gateway client CA, not the Phoenix root
    assert static[mesh.GATEWAY_CLIENT_CA_PATH].content == \
        dev_plan.run.named("gateway-client-ca-cert").outputs["certPem"]
    assert set(dynamic) == {mesh.DYNAMIC_PATH, mesh.EXPECTED_PATH}
    # The dynamic file lands in the directory the file provider watches: no restart, no reload hook.
    assert mesh.DYNAMIC_PATH.startswith(mesh.DYNAMIC_DIR + "/")
    create = step(dev_plan, "traefik-dynamic").value("create")
    assert "--reload" not in create and f"--health 'bash {mesh.HEALTH_SCRIPT} {mesh.EXPECTED_PATH}'" in create
    assert "systemctl restart traefik" in step(dev_plan, "traefik-static").value("create")
    for f in (static[mesh.STATIC_PATH], dynamic[mesh.DYNAMIC_PATH], static[mesh.USERS_PATH]):
        assert (f.mode, f.owner, f.group) == (0o640, "root", mesh.USER)


def test_the_install_step_pins_the_release_and_its_checksum(dev_plan):
    text = bundle_of(step(dev_plan, "traefik-install"))[0].content
    version = dev_plan.topo.lab.mesh.traefik_version
    assert f'url="{mesh.release_url(version)}"' in text
    assert f"traefik_v{version}_linux_amd64.tar.gz" in mesh.release_url(version)
    assert text.index("sha256sum --check") < text.index("tar -xzf")


def test_dashboard_password_is_a_secret_everywhere(dev_plan):
    pw = dev_plan.run.named("mesh-dashboard-password")
    assert {"result", "bcryptHash"} <= set(pw.secret_outputs)
    password = pw.outputs["result"]
    assert len(password) == 32
    static = step(dev_plan, "traefik-static")
    assert "stdin" in static.secret_paths()          # the users file travels as a secret
    assert "stdin" not in step(dev_plan, "traefik-dynamic").secret_paths()   # routes stay reviewable
    for r in dev_plan.run.resources:
        assert password not in json.dumps(reveal({k: v for k, v in r.inputs.items() if k != "stdin"})), r.name
    assert is_secret(dev_plan.run.outputs["meshDashboardPassword"])
    assert password not in json.dumps(dev_plan.document())


def test_users_file_holds_the_bcrypt_hash_of_the_password_and_the_plan_redacts_it(tmp_path):
    """The engine hashes like pulumi-random does (a real bcrypt hash): the pushed users file verifies
    against the password, and the written plan shows neither."""
    bcrypt = pytest.importorskip("bcrypt", reason="bcrypt (PyPI) verifies the hash Traefik reads")
    plan = make_plan(edited("dev", lambda raw: None))
    pw = plan.run.named("mesh-dashboard-password")
    users = {f.path: f for f in bundle_of(step(plan, "traefik-static"))}[mesh.USERS_PATH].content
    user, _, hashed = users.strip().partition(":")
    assert user == mesh.DASHBOARD_USER
    assert hashed == pw.outputs["bcryptHash"]
    assert bcrypt.checkpw(pw.outputs["result"].encode(), hashed.encode())
    plan.write(tmp_path)
    written = (tmp_path / "files" / "mesh" / mesh.USERS_PATH.lstrip("/")).read_text()
    assert hashed not in written and "<<secret:" in written


def _replica_added(raw: dict) -> None:
    llm = next(s for s in raw["services"] if s["name"] == "llm")
    llm["guests"].append("gpu-c")


def _without_private_keys(value):
    """The fake's OpenSSH key encoding is not byte-stable between runs (random check bytes), while
    Pulumi keeps the key itself in the state: compare connections without it."""
    if isinstance(value, dict):
        return {k: _without_private_keys(v) for k, v in value.items() if k != "privateKey"}
    return value


def _comparable(r) -> str:
    inputs = _without_private_keys(reveal(r.inputs))
    if r.type == COMMAND and bundle_of(r) is not None:
        inputs["stdin"] = sorted((f.path, f.content, f.mode, f.owner, f.group) for f in bundle_of(r))
    return json.dumps(inputs, sort_keys=True, default=str)


def test_a_new_replica_changes_only_the_dynamic_step_among_mesh_and_guest_resources():
    base = shipped_plan("cluster")
    changed = make_plan(edited("cluster", _replica_added))
    assert [b.url for b in changed.topo.backends(changed.topo.service("llm"))][-1] == "https://10.30.0.22:8000"
    before = {r.urn: r for r in base.run.resources}
    after = {r.urn: r for r in changed.run.resources}
    assert before.keys() <= after.keys()      # nothing deleted
    # What is new runs the replica on its guest (the workloads tier), nothing of the mesh, no guest.
    for urn in after.keys() - before.keys():
        assert tier_of(after[urn], changed.run) not in ("Mesh", "Guests"), after[urn].name
        assert after[urn].type not in GUEST_TYPES
    watched = [u for u, r in before.items() if tier_of(r, base.run) == "Mesh" or r.type in GUEST_TYPES]
    differ = sorted(before[u].name for u in watched if _comparable(before[u]) != _comparable(after[u]))
    assert differ == ["mesh-traefik-dynamic"]
    dynamic = {f.path: f.content for f in bundle_of(after[step(base, "traefik-dynamic").urn])}
    assert "url: https://10.30.0.22:8000" in dynamic[mesh.DYNAMIC_PATH]
