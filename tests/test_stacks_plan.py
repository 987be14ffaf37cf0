"""Compose stacks under the mock runtime: each stack's deploy step runs on the Portainer VM after
its agent's registration and certificate, its secrets are Pulumi secrets that never reach a
command line or the plan, a changed compose file changes only its own stack's step, and DNS,
mesh, gateway and firewall follow from the same catalog entry."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import edited
from phoenix.plan.engine import is_secret
from phoenix.plan.writer import pushed_files
from phoenix.render import stacks as st
from phoenix.stackfile import StackConfig
from test_stacks_render import add_grafana

GRAFANA_PASSWORD = "grafana-admin-Secret-7731"
WHOAMI_TOKEN = "whoami-token-Secret-0042"
SECRETS = {"phoenix:grafanaAdminPassword": GRAFANA_PASSWORD, "phoenix:whoamiToken": WHOAMI_TOKEN}


# -- running the program with the stacks' secrets --------------------------------------------
def with_secrets(stack: StackConfig, secrets: dict[str, str]) -> StackConfig:
    return StackConfig(stack.name, {**stack.values, **secrets}, stack.secret_keys | set(secrets), stack.root)


def plan_of(stack: StackConfig, secrets: dict[str, str] = SECRETS):
    from phoenix.plan import make_plan
    return make_plan(with_secrets(stack, {k: v for k, v in secrets.items() if k in needed_keys(stack)}))


def needed_keys(stack: StackConfig) -> set[str]:
    from phoenix.model import parse_lab
    from phoenix.stackfile import expand_catalog
    return {f"phoenix:{k}" for k in st.required_secrets(parse_lab(expand_catalog(stack.phoenix(), stack.root)))}


WHOAMI = {"name": "whoami", "guests": ["agent-1", "agent-2"], "port": 8444, "health": "/health",
          "compose": {"image": "traefik/whoami:v1.10.3", "containerPort": 80,
                      "secretEnvironment": {"WHOAMI_TOKEN": "phoenix:whoamiToken"}}}


def two_agents_three_stacks(raw: dict) -> None:
    """dev, plus a second agent, grafana on agent-1 and a replicated stack on both agents."""
    add_grafana(raw)
    raw["guests"].append({"id": 202, "name": "agent-2", "role": "agent", "node": "pve", "address": "10.20.0.32",
                          "cores": 2, "memory": 4096, "disk": 32, "image": "debian-12-cloud"})
    raw["services"].append(json.loads(json.dumps(WHOAMI)))


@pytest.fixture(scope="module")
def plan():
    return plan_of(edited("dev", two_agents_three_stacks))


@pytest.fixture(scope="module")
def files(plan):
    return pushed_files(plan.run, plan.topo)


STEPS = {("grafana", "agent-1"), ("whoami", "agent-1"), ("whoami", "agent-2")}


# -- placement and order -----------------------------------------------------------------------
def test_one_deploy_step_per_service_and_agent_runs_on_the_portainer_vm(plan):
    steps = {r.name for r in plan.run.resources if r.name.startswith("portainer-stack-")}
    assert steps == {f"portainer-stack-{s}-{a}" for s, a in STEPS}
    for s, a in STEPS:
        step = plan.run.named(f"portainer-stack-{s}-{a}")
        assert step.value("connection")["host"] == str(plan.topo.portainer.address)
        assert plan.run.by_type("phoenix:tier:Stacks")[0].urn == step.parent


def test_each_stack_is_deployed_after_its_own_agents_registration_and_certificate(plan):
    run = plan.run
    for s, a in STEPS:
        deps = run.named(f"portainer-stack-{s}-{a}").dependencies
        assert run.urn_of(f"portainer-register-{a}") in deps
        other = ({"agent-1", "agent-2"} - {a}).pop()
        assert run.urn_of(f"portainer-register-{other}") not in deps
        assert run.urn_of(f"{a}-cert-{s}") in deps          # the sidecar bind-mounts its files
        assert run.urn_of(a) in deps                        # a replaced agent VM gets its stack again


def test_certificates_are_obtained_on_the_agent_one_at_a_time_for_names_it_can_prove(plan, files):
    run, topo = plan.run, plan.topo
    for s, a in STEPS:
        cert = run.named(f"{a}-cert-{s}")
        assert cert.value("connection")["host"] == str(topo.lab.guest(a).address)
        assert run.urn_of(f"{a}-acme-client") in cert.dependencies
        assert run.urn_of("ca-step-ca-health") in cert.dependencies
    assert run.urn_of("agent-1-cert-grafana") in run.named("agent-1-cert-whoami").dependencies  # port 80, one at a time
    grafana = files["agent-1"]["/usr/local/lib/phoenix/cert-grafana.sh"][0].content
    # grafana.lab.internal resolves to the mesh: the agent proves (and the mesh verifies) its own name
    assert "-d agent-1.lab.internal --standalone --http-01-port 80" in grafana and "-d grafana." not in grafana
    # replicated: the same, per agent
    whoami = files["agent-2"]["/usr/local/lib/phoenix/cert-whoami.sh"][0].content
    assert "-d agent-2.lab.internal --standalone" in whoami and "-d whoami.lab.internal" not in whoami
    hook = files["agent-1"]["/usr/local/lib/phoenix/acme-deploy-grafana.sh"][0].content
    assert "docker restart phoenix-grafana-tls" in hook            # a renewal reaches the sidecar


def test_the_pushed_compose_file_is_the_rendered_one_and_mounts_that_certificate(plan, files):
    request = json.loads(files["portainer"]["/etc/phoenix/portainer/stacks/agent-2/whoami.json"][0].content)
    compose = yaml.safe_load(request["StackFileContent"])
    assert compose["services"]["tls"]["volumes"][0] == "/etc/phoenix/tls/whoami.crt:/run/phoenix/tls/cert.pem:ro"
    assert {e["name"]: e["value"] for e in request["Env"]}["PHOENIX_AGENT_VM"] == "agent-2-id"  # the mock engine's id


# -- secrets -----------------------------------------------------------------------------------
def test_stack_secrets_are_pulumi_secrets_and_never_on_a_command_line(plan, files, tmp_path):
    for r in plan.run.resources:
        for key in ("create", "delete", "update", "triggers", "environment", "connection"):
            text = json.dumps(r.value(key))
            assert GRAFANA_PASSWORD not in text and WHOAMI_TOKEN not in text, f"{r.name}.{key}"
    for s, a in STEPS:
        step = plan.run.named(f"portainer-stack-{s}-{a}")
        assert is_secret(step.inputs["stdin"]), step.name
        script = f"/usr/local/lib/phoenix/stack-{s}-{a}.sh"
        assert step.value("delete") == f"[ ! -f {script} ] || bash {script} delete"
    request = files["portainer"]["/etc/phoenix/portainer/stacks/agent-1/grafana.json"][0]
    assert request.mode == 0o600 and GRAFANA_PASSWORD in request.content   # root-only, on stdin to Portainer
    assert GRAFANA_PASSWORD not in json.loads(request.content)["StackFileContent"]
    document = json.dumps(plan.document())
    assert GRAFANA_PASSWORD not in document and WHOAMI_TOKEN not in document
    plan.write(tmp_path / "plan")
    written = "".join(p.read_text() for p in (tmp_path / "plan").rglob("*") if p.is_file())
    assert GRAFANA_PASSWORD not in written and "<<secret:phoenix:grafanaAdminPassword>>" in written


def test_a_stack_without_secrets_is_planned_in_the_clear():
    def no_secret(raw):
        two_agents_three_stacks(raw)
        raw["services"][-1]["compose"].pop("secretEnvironment")
        raw["services"] = [s for s in raw["services"] if s["name"] != "grafana"]
    plan = plan_of(edited("dev", no_secret))
    step = plan.run.named("portainer-stack-whoami-agent-1")
    assert not is_secret(step.inputs["stdin"])


def test_a_missing_stack_secret_stops_a_real_deployment_with_its_key():
    """The real program refuses a stack secret that is not set, naming it, before any resource."""
    import pulumi

    from phoenix.plan import with_placeholder_secrets
    from phoenix.plan.engine import run_program
    stack, _ = with_placeholder_secrets(edited("dev", add_grafana))
    del stack.values["phoenix:grafanaAdminPassword"]        # as `pulumi up` sees an unset key
    with pytest.raises(pulumi.RunError) as info:
        run_program(stack)                                   # what `pulumi up` runs
    assert ("phoenix:grafanaAdminPassword: required secret is missing (the compose stack of grafana); set it "
            "with: pulumi config set --secret phoenix:grafanaAdminPassword ...") in str(info.value)
    assert info.value.phoenix_registered == []     # nothing exists, of any tier


# -- what a change changes ---------------------------------------------------------------------
def test_changing_one_stacks_compose_changes_only_that_stacks_deploy_step(plan):
    def new_tag(raw):
        two_agents_three_stacks(raw)
        next(s for s in raw["services"] if s["name"] == "grafana")["compose"]["image"] = "grafana/grafana-oss:11.3.2"
    changed_plan = plan_of(edited("dev", new_tag))
    before = {r["urn"]: r for r in plan.document()["resources"]}
    after = {r["urn"]: r for r in changed_plan.document()["resources"]}
    assert set(before) == set(after)
    changed = sorted(after[u]["name"] for u in after if after[u] != before[u])
    assert changed == ["portainer-stack-grafana-agent-1"]
    urn = changed_plan.run.urn_of("portainer-stack-grafana-agent-1")
    assert before[urn]["inputs"]["triggers"] == after[urn]["inputs"]["triggers"]     # an update, not a replace
    assert before[urn]["inputs"]["create"] == after[urn]["inputs"]["create"]
    old = pushed_files(plan.run, plan.topo)["portainer"]["/etc/phoenix/portainer/stacks/agent-1/grafana.json"][0]
    new = pushed_files(changed_plan.run, changed_plan.topo)["portainer"][
        "/etc/phoenix/portainer/stacks/agent-1/grafana.json"][0]
    old_env, new_env = ({e["name"]: e["value"] for e in json.loads(f.content)["Env"]} for f in (old, new))
    assert old_env["PHOENIX_COMPOSE_SHA256"] != new_env["PHOENIX_COMPOSE_SHA256"]  # the script sees the change


# -- the rest comes from the catalog entry -----------------------------------------------------
def test_dns_mesh_gateway_and_firewall_follow_from_the_catalog_entry(plan, files):
    topo = plan.topo
    agent = topo.lab.guest("agent-1")
    internal = files["dns"]["/etc/bind/phoenix/zones/db.lab.internal.internal"][0].content
    # the services' names lead to the mesh, which balances over the agents
    assert f"grafana.lab.internal. IN A {topo.mesh.address}" in internal
    assert f"whoami.lab.internal. IN A {topo.mesh.address}" in internal
    assert "whoami.lab.internal. IN A 10.20.0.3" not in internal
    dynamic = yaml.safe_load(files["mesh"]["/etc/traefik/dynamic/phoenix.yaml"][0].content)["http"]
    servers = dynamic["services"]["grafana"]["loadBalancer"]["servers"]
    assert servers == [{"url": f"https://{agent.address}:3443"}]
    assert dynamic["services"]["grafana"]["loadBalancer"]["healthCheck"]["path"] == "/api/health"
    transport = dynamic["serversTransports"][dynamic["services"]["grafana"]["loadBalancer"]["serversTransport"]]
    assert transport["serverName"] == "agent-1.lab.internal" and not transport["insecureSkipVerify"]
    gateway = files["gateway"]["/etc/nginx/conf.d/phoenix-gateway.conf"][0].content
    assert "server_name grafana.lab.example.com;" in gateway
    assert "whoami" not in gateway                                   # internal only: no public server block
    rules = plan.run.named("agent-1-firewall-rules").value("rules")
    inbound = {(r["source"], r["dport"]) for r in rules if r["type"] == "in"}
    assert {(f"{topo.mesh.address}/32", "3443"), (f"{topo.mesh.address}/32", "8444"),
            (f"{topo.ca.address}/32", "80")} <= inbound
