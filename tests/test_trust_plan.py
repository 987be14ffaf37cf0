"""The trust tier under the mock runtime: order, secrecy, and where the root key may never go."""

from __future__ import annotations

import json

import pytest

from conftest import edited, shipped_plan, stack_config
from phoenix.errors import ConfigError
from phoenix.plan.engine import run_program
from phoenix.plan.writer import COMMAND, command_guest, pushed_files
from phoenix.render import trust as r
from phoenix.topology import CA_HEALTH_PATH, ROOT_CA_TRUST_PATH
from test_trust_support import WEBROOT_CERT, dev_trust_run, first_tiers, trust_run, webroot_guest

CA_CONFIG, CA_HEALTH, CA_INSTALL = "step-ca-config", "step-ca-health", "step-ca-install"


@pytest.fixture(scope="module")
def dev():
    return dev_trust_run()


def urn(run, name: str) -> str:
    return run.named(name).urn


def pem_lines(pem: str) -> list[str]:
    return [line for line in pem.strip().splitlines() if not line.startswith("-----")]


def holds(text: str, pem: str) -> bool:
    """Does ``text`` carry the key of ``pem`` (its whole base64 body, however the lines wrap)?"""
    return "".join(pem_lines(pem)) in "".join(text.split())


# -- order -------------------------------------------------------------------------------------------
def test_root_and_intermediate_exist_before_the_cas_configuration(dev):
    run, ca = dev.run, dev.topo.ca.name
    config = run.named(f"{ca}-{CA_CONFIG}")
    for before in ("root-ca-cert", "intermediate-ca-cert", f"{ca}-{CA_INSTALL}", f"{ca}-trust", f"{ca}-bootstrap"):
        assert urn(run, before) in config.dependencies, before
    assert run.named("root-ca-key").protect and run.named("root-ca-cert").protect
    health = run.named(f"{ca}-{CA_HEALTH}")
    assert urn(run, f"{ca}-{CA_CONFIG}") in health.dependencies


def test_every_guest_trusts_the_root_right_after_its_bootstrap_and_never_waits_for_the_ca(dev):
    run, topo = dev.run, dev.topo
    ca = topo.ca.name
    on_ca = {r.urn for r in dev.commands_on(ca)} | {urn(run, ca)}
    for g in topo.lab.guests:
        trust = run.named(f"{g.name}-trust")
        assert urn(run, f"{g.name}-bootstrap") in trust.dependencies
        if g.name != ca:
            assert not on_ca & set(trust.dependencies), f"{g.name} waits for the CA guest to trust"


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_every_later_step_on_a_guest_waits_for_its_trust(stack):
    """In the whole program (every tier): any step on a guest after bootstrap waits for trust."""
    plan = shipped_plan(stack)
    run, topo = plan.run, plan.topo
    for g in topo.lab.guests:
        trust = urn(run, f"{g.name}-trust")
        for cmd in run.by_type(COMMAND):
            if command_guest(cmd, topo) != g.name or cmd.name in (f"{g.name}-bootstrap", f"{g.name}-trust"):
                continue
            assert trust in cmd.dependencies, f"{cmd.name} does not wait for {g.name}'s trust"


def test_the_root_each_guest_trusts_is_the_programs_own(dev_plan):
    root, fingerprint = dev_plan.run.outputs["rootCaCertificate"], dev_plan.run.outputs["rootCaFingerprint"]
    files = pushed_files(dev_plan.run, dev_plan.topo)
    for g in dev_plan.topo.lab.guests:
        mine = {p: f for p, (f, _) in files[g.name].items()}
        assert mine[ROOT_CA_TRUST_PATH].content == root and mine[r.ROOT_PATH].content == root
        assert f"expected={fingerprint}" in mine[r.TRUST_CHECK].content
        defaults = json.loads(mine["/root/.step/config/defaults.json"].content)
        assert defaults["fingerprint"] == fingerprint and defaults["ca-url"] == dev_plan.topo.ca_url


def test_certificates_wait_for_the_cas_health_certbot_and_the_guests_trust(dev):
    run = dev.run
    cert = run.named("mesh-cert-mesh")
    for before in ("ca-step-ca-health", "mesh-acme-client", "mesh-trust", "mesh-bootstrap"):
        assert urn(run, before) in cert.dependencies, before
    webroot = run.named(f"{webroot_guest(dev.topo)}-cert-{WEBROOT_CERT}")
    assert urn(run, "ca-step-ca-health") in webroot.dependencies


# -- the root key never leaves the program ------------------------------------------------------------
def _root_key_leaks(run, topo) -> list[str]:
    key = run.named("root-ca-key").outputs["privateKeyPem"]
    assert pem_lines(key) and holds(key.replace("\n", "\r\n"), key)   # the detector itself works
    leaks = []
    for guest, files in pushed_files(run, topo).items():
        for path, (f, step) in files.items():
            if holds(f.content, key):
                leaks.append(f"{guest}:{path} ({step})")
    for cmd in run.by_type(COMMAND):
        for field in ("create", "update", "delete", "stdin"):
            value = cmd.value(field)
            if isinstance(value, str) and holds(value, key):
                leaks.append(f"{cmd.name}.{field}")
    return leaks


def test_no_root_key_in_any_pushed_file_or_command_trust_run(dev):
    assert _root_key_leaks(dev.run, dev.topo) == []


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_no_root_key_in_any_pushed_file_or_command(stack):
    plan = shipped_plan(stack)
    assert _root_key_leaks(plan.run, plan.topo) == []


def test_the_intermediate_key_reaches_only_the_ca_for_user_step_only(dev):
    run, topo = dev.run, dev.topo
    plain = run.named("intermediate-ca-key").outputs["privateKeyPem"]
    holders = [f"{guest}:{path}" for guest, files in dev.files().items()
               for path, (f, _) in files.items() if holds(f.content, plain)]
    assert holders == [f"{topo.ca.name}:{r.CA_KEY}"]
    key = dev.files()[topo.ca.name][r.CA_KEY][0]
    assert (key.mode, key.owner, key.group) == (0o400, "step", "step")


# -- secrets -------------------------------------------------------------------------------------------
def test_secrets_are_pulumi_secrets_and_never_on_a_command_line(dev):
    run, ca = dev.run, dev.topo.ca.name
    config = run.named(f"{ca}-{CA_CONFIG}")
    assert "stdin" in config.secret_paths()
    assert "privateKeyPem" in run.named("step-ca-jwk-key").secret_outputs
    assert "privateKeyPem" in run.named("intermediate-ca-key").secret_outputs
    password = run.named("step-ca-provisioner-password").outputs["result"]
    assert "result" in run.named("step-ca-provisioner-password").secret_outputs
    keys = [run.named(n).outputs["privateKeyPem"] for n in ("intermediate-ca-key", "step-ca-jwk-key")]
    for cmd in run.by_type(COMMAND):
        for field in ("create", "update", "delete"):
            value = cmd.value(field) or ""
            assert password not in value and not any(holds(value, k) for k in keys), \
                f"a secret on {cmd.name}'s command line"
    pushed = "".join(f.content for files in dev.files().values() for f, _ in files.values())
    assert password not in pushed, "provisioner password pushed in clear"
    assert not holds(pushed, keys[1]), "provisioner private key pushed in clear"


def test_the_plan_shows_the_cas_files_with_secrets_redacted(dev_plan, tmp_path):
    dev_plan.write(tmp_path)
    ca = tmp_path / "files" / dev_plan.topo.ca.name
    config = json.loads((ca / r.CA_JSON.lstrip("/")).read_text())
    assert config["authority"]["provisioners"][0]["challenges"] == ["http-01", "dns-01"]
    assert (ca / r.STEP_CA_UNIT.lstrip("/")).exists() and (ca / r.CA_DEFAULTS.lstrip("/")).exists()
    assert (ca / r.CA_KEY.lstrip("/")).read_text().startswith("<<secret:intermediate-ca-key")
    document = (tmp_path / "plan.json").read_text()
    assert dev_plan.run.named("step-ca-provisioner-password").outputs["result"] not in document
    picture = (tmp_path / "topology.mmd").read_text()
    assert "Root CA" in picture and "Intermediate CA" in picture and "held by" in picture


def test_exports_name_the_cas_health_url(dev_plan):
    assert dev_plan.run.outputs["caHealthUrl"] == f"{dev_plan.topo.ca_url}{CA_HEALTH_PATH}"
    assert dev_plan.run.outputs["acmeDirectory"] == dev_plan.topo.acme_directory
    assert len(dev_plan.run.outputs["rootCaFingerprint"]) == 64


# -- re-running changes nothing; a change touches only what it must ------------------------------------
def test_a_second_run_pushes_the_same_bytes(dev):
    again = trust_run(stack_config("dev"))
    for cmd in dev.run.by_type(COMMAND):
        assert again.run.named(cmd.name).value("stdin") == cmd.value("stdin"), cmd.name


def test_a_lifetime_change_touches_only_the_ca_config_and_certificate_steps(dev):
    changed = trust_run(edited("dev", lambda raw: raw.update(pki={"leafLifetimeHours": 12})))
    differ = sorted(c.name for c in dev.run.by_type(COMMAND)
                    if changed.run.named(c.name).value("stdin") != c.value("stdin"))
    assert differ == sorted(["ca-step-ca-config", f"{webroot_guest(dev.topo)}-cert-{WEBROOT_CERT}", "mesh-cert-mesh"])


# -- bad requests and missing inputs ---------------------------------------------------------------------
def _run_with(body):
    from phoenix.loader import load_stack
    from phoenix.plan import with_placeholder_secrets
    stack, _ = with_placeholder_secrets(stack_config("dev"))
    loaded = load_stack(stack)
    with pytest.raises(ConfigError) as err:
        run_program(stack, lambda: body(first_tiers(loaded)))
    return err.value.problems


def test_internal_certificate_refuses_what_step_ca_could_not_issue():
    from components.trust import internal_certificate

    def body(first):
        trust, issuer = first.trust()
        internal_certificate(issuer, first.guests["mesh"], name="bad", owner="root", group="root", reload="",
                             parent=trust, sans=["10.20.0.12", "mesh.example.org", "nowhere.lab.internal"])
    problems = _run_with(body)
    at = "internal_certificate('bad' on 'mesh')"
    assert f"{at}: SAN 10.20.0.12 is an address; ACME (certbot) issues for DNS names only" in problems
    assert f"{at}: SAN mesh.example.org is outside the CA's allowed domains (one label below lab.internal)" \
        in problems
    assert f"{at}: SAN nowhere.lab.internal has no record in the internal view; Step-CA could not reach it" in problems
    # the CA's policy is exactly the names the lab asks for: a name the mesh does not ask for is refused
    assert (f"{at}: SAN nowhere.lab.internal is not a name mesh asks Step-CA for (topology.step_ca_names; the CA's "
            "policy allows exactly those)") in problems


def test_internal_certificate_refuses_a_guest_step_ca_cannot_reach_on_port_80():
    from components.trust import internal_certificate

    def body(first):
        trust, issuer = first.trust()
        internal_certificate(issuer, first.guests["dns"], name="dns", sans=["dns.lab.internal"], owner="root",
                             group="bind", reload="", parent=trust)
    problems = _run_with(body)
    assert any("does not let the CA reach dns:80" in p for p in problems), problems
    assert any("dns is not an ACME client" in p for p in problems), problems


def test_a_name_shared_by_replicas_cannot_be_proven_by_one_of_them():
    from phoenix.model import parse_lab
    from phoenix.stackfile import expand_catalog
    from phoenix.topology import build
    stack = stack_config("cluster")
    topo = build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))
    assert r.shared_sans(topo, "gpu-a", ["llm.ai.internal", "gpu-a.ai.internal"]) == ["llm.ai.internal"]
    # a service's name resolves to the mesh, even where it runs once: only the mesh proves it
    assert r.shared_sans(topo, "gpu-c", ["embed.ai.internal", "gpu-c.ai.internal"]) == ["embed.ai.internal"]
    assert r.shared_sans(topo, topo.mesh.name, ["embed.ai.internal", "llm.ai.internal"]) == []


def test_the_provisioner_key_is_sealed_off_the_event_loop_and_stays_secret():
    """Sealing is PBKDF2 at step's 100,000 rounds (components/trust.py): it runs on a worker
    thread while the loop goes on, and what it returns keeps the secrecy of its inputs."""
    import threading

    import pulumi

    from components.base import off_loop
    from phoenix.plan import with_placeholder_secrets
    from phoenix.plan.engine import SECRET_SIG, SECRET_VALUE

    def program():
        values = pulumi.Output.all(pulumi.Output.secret("password"), "key")
        pulumi.export("sealed", off_loop(values, lambda password, key: (
            threading.current_thread() is not threading.main_thread(), f"{key}:{password}")))
    run = run_program(with_placeholder_secrets(stack_config("dev"))[0], program=program)
    assert run.outputs["sealed"] == {SECRET_SIG: SECRET_VALUE, "value": (True, "key:password")}
