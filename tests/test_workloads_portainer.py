"""The Portainer VM and the agent VMs under the mock runtime: files, secrecy, dependencies,
cloud-init and compose validity, and what adding an agent changes."""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
from importlib import resources

import jsonschema
import pytest
import yaml

from conftest import SCHEMAS, edited, stack_config
from phoenix.plan.engine import is_secret
from phoenix.plan.writer import pushed_files, tier_of
from phoenix.render import workloads as wl
from phoenix.stackfile import StackConfig

PASSWORD = "correct-horse-battery-staple-42"
KEY = "phoenix:portainerAdminPassword"
DIR = "/etc/phoenix/portainer"


def planned(stack: StackConfig):
    """``make_plan`` with a fixed admin password: the plan's own placeholder differs per plan,
    which would hide what really changed between two plans (and what to look for)."""
    from phoenix.loader import load_stack
    from phoenix.plan import with_placeholder_secrets
    from phoenix.plan.engine import run_program
    from phoenix.plan.writer import Plan, collect_secrets
    from phoenix.program import deploy
    stack, _ = with_placeholder_secrets(stack)
    stack = StackConfig(stack.name, {**stack.values, KEY: PASSWORD}, stack.secret_keys, stack.root)
    loaded = load_stack(stack)
    run = run_program(stack, lambda: deploy(loaded))
    return Plan(run, loaded.topo, collect_secrets(run, {KEY: PASSWORD}), [])


@pytest.fixture(scope="module")
def plan():
    return planned(stack_config("cluster"))


@pytest.fixture(scope="module")
def files(plan):
    return pushed_files(plan.run, plan.topo)


def agent_secret(plan) -> str:
    return plan.run.named("portainer-agent-secret").outputs["result"]


# -- secrecy ---------------------------------------------------------------------------------
def test_admin_password_and_agent_secret_are_secret_and_never_on_a_command_line(plan):
    secret_values = [PASSWORD, agent_secret(plan)]
    carriers = {"portainer-portainer-server"} | {f"{a.name}-portainer-agent" for a in plan.topo.agents}
    for r in plan.run.resources:
        for key in ("create", "delete", "update", "triggers", "environment"):
            text = json.dumps(r.value(key))
            assert not any(v in text for v in secret_values), f"{r.name}.{key} carries a secret"
        if r.name in carriers:
            assert is_secret(r.inputs["stdin"]), r.name            # the bundle is a Pulumi secret
    document = json.dumps(plan.document())
    assert not any(v in document for v in secret_values)        # nor in plan.json
    assert "portainerAdminPassword" in document and "<<secret" not in document.split('"resources"')[0]


def test_secret_files_are_root_only_and_share_one_agent_secret(plan, files):
    secret = agent_secret(plan)
    password = files["portainer"][f"{DIR}/admin-password"][0]
    assert password.content == PASSWORD and password.mode == 0o600 and password.owner == "root"
    for guest in ["portainer", *(a.name for a in plan.topo.agents)]:
        env = files[guest][f"{DIR}/agent-secret.env"][0]
        assert env.content == f"AGENT_SECRET={secret}\n" and env.mode == 0o600 and env.owner == "root"


# -- the server ------------------------------------------------------------------------------
def test_portainer_compose_pins_the_image_inits_and_keeps_data_on_a_named_volume(plan, files):
    doc = yaml.safe_load(files["portainer"][f"{DIR}/compose.yaml"][0].content)
    svc = doc["services"]["portainer"]
    assert svc["image"] == f"portainer/portainer-ce:{plan.topo.lab.portainer.version}"
    assert svc["init"] is True                                    # trap 18
    assert "portainer_data:/data" in svc["volumes"] and "portainer_data" in doc["volumes"]
    cmd = svc["command"]
    assert cmd[cmd.index("--admin-password-file") + 1] == wl.PORTAINER_PASSWORD_MOUNT
    assert f"{wl.PORTAINER_PASSWORD_FILE}:{wl.PORTAINER_PASSWORD_MOUNT}:ro" in svc["volumes"]
    assert cmd[cmd.index("--sslcert") + 1] == "/certs/portainer-ui.crt"   # Step-CA's certificate
    assert "/etc/phoenix/tls:/certs:ro" in svc["volumes"]
    assert svc["env_file"] == [f"{DIR}/agent-secret.env"]        # the server shares AGENT_SECRET
    ui = next(s for s in plan.topo.lab.services if "portainer" in s.guests)
    assert svc["ports"] == [f"{ui.port}:9443"]                   # the catalog's port
    assert "--admin-password" not in cmd                          # never the password itself


def test_the_server_step_waits_for_its_certificate(plan):
    server = plan.run.named("portainer-portainer-server")
    assert plan.run.urn_of("portainer-cert-portainer-ui") in server.dependencies
    cert_script = pushed_files(plan.run, plan.topo)["portainer"]["/usr/local/lib/phoenix/cert-portainer-ui.sh"]
    # its own guest's name (portainer-ui.ai.internal resolves to the mesh, which holds that one)
    assert "-d portainer.ai.internal " in cert_script[0].content and "-d portainer-ui." not in cert_script[0].content


def test_agents_run_the_pinned_agent_on_the_agent_port(plan, files):
    lab = plan.topo.lab
    for a in plan.topo.agents:
        doc = yaml.safe_load(files[a.name][f"{DIR}/agent-compose.yaml"][0].content)
        svc = doc["services"]["agent"]
        assert svc["image"] == f"portainer/agent:{lab.portainer.agent_version}"
        assert svc["init"] is True
        assert svc["ports"] == [f"{lab.portainer.agent_port}:{lab.portainer.agent_port}"]
        assert svc["environment"] == {"AGENT_PORT": str(lab.portainer.agent_port)}
        assert svc["env_file"] == [f"{DIR}/agent-secret.env"]


def test_registration_depends_on_the_server_and_the_agent_and_removes_on_destroy(plan, files):
    run = plan.run
    for a in plan.topo.agents:
        reg = run.named(f"portainer-register-{a.name}")
        assert run.urn_of("portainer-portainer-server") in reg.dependencies
        assert run.urn_of(f"{a.name}-portainer-agent") in reg.dependencies
        assert reg.value("connection")["host"] == str(plan.topo.portainer.address)   # runs on the Portainer VM
        script = f"/usr/local/lib/phoenix/register-{a.name}.sh"
        assert reg.value("delete") == f"[ ! -f {script} ] || bash {script} delete"
        text = files["portainer"][script][0].content
        assert f"url='tcp://{a.address}:{plan.topo.lab.portainer.agent_port}'" in text   # trap 14
        for field in ("EndpointCreationType=2", '"URL=$url"', "TLS=true", "TLSSkipVerify=true", '"Name=$name"'):
            assert f"--form-string {field}" in text                 # form fields, not JSON


# -- validity --------------------------------------------------------------------------------
def user_data(plan) -> dict[str, str]:
    return {r.name.removesuffix("-user-data"): r.value("sourceRaw")["data"]
            for r in plan.run.by_type("proxmoxve:index/fileLegacy:FileLegacy")}


def test_user_data_validates_against_the_cloud_config_schema(plan):
    schema = json.loads((SCHEMAS / "cloud-init-cloud-config-v1.json").read_text())
    docs = user_data(plan)
    assert set(docs) == {g.name for g in plan.topo.lab.guests if g.kind == "vm"}
    for text in docs.values():
        assert text.startswith("#cloud-config\n")
        doc = yaml.safe_load(text)
        jsonschema.validate(doc, schema)
        daemon = next(f for f in doc["write_files"] if f["path"] == "/etc/docker/daemon.json")
        assert "hosts" not in json.loads(daemon["content"])      # trap 15
        assert {"docker.io", "docker-compose", "jq", "qemu-guest-agent"} <= set(doc["packages"])
    bad = yaml.safe_load(next(iter(docs.values())))
    bad["write_file"] = []                                        # the schema does catch a typo
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_user_data_passes_debians_cloud_init_schema(plan, tmp_path):
    if not shutil.which("cloud-init"):
        pytest.skip("cloud-init is not installed (make deps)")
    docs = user_data(plan)
    for name in ("portainer", plan.topo.agents[0].name):     # the two shapes (Docker roles)
        text = docs[name]
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        out = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True,
                             check=False)
        assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"
    path = tmp_path / "broken.yaml"
    path.write_text("#cloud-config\npackages: docker.io\nruncmd: 5\n")
    assert subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True,
                          check=False).returncode != 0


def compose_files(plan, files) -> dict[str, str]:
    """The server's compose file and an agent's (every agent's has the same shape)."""
    agent = plan.topo.agents[0].name
    return {"portainer": files["portainer"][f"{DIR}/compose.yaml"][0].content,
            agent: files[agent][f"{DIR}/agent-compose.yaml"][0].content}


def test_compose_files_validate_against_the_compose_specification(plan, files):
    # The Compose Specification's own JSON Schema (compose-spec/compose-spec, as vendored by
    # check-jsonschema from SchemaStore).
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    for guest, text in compose_files(plan, files).items():
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(text))]
        assert not errors, f"{guest}: {errors}"
    assert list(validator.iter_errors({"services": {"x": {"image": "a", "inti": True}}}))  # it can fail


def test_compose_files_pass_debians_docker_compose_config(plan, files, tmp_path):
    """The guest's own compose (Debian 12's docker-compose 1.29) reads them without an engine."""
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose is not installed (make deps)")
    for guest, text in compose_files(plan, files).items():
        root = tmp_path / guest
        # the env file the compose file names must exist: lay the guest's files under a root
        for path, (f, _) in files[guest].items():
            if path.startswith(DIR):
                target = root / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f.content)
        compose = root / "compose.yaml"
        compose.write_text(text.replace(DIR, str(root / DIR.lstrip("/"))))
        out = subprocess.run(["docker-compose", "-f", str(compose), "config"], capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, f"{guest}: {out.stderr}"
        assert "init: true" in out.stdout and "AGENT_SECRET:" in out.stdout


# -- the admin password's rule -------------------------------------------------------------------
@pytest.mark.parametrize("password, refused", [("short-pw-11", True), ("ünïcødé-10", False),
                                                ("exactly-12by", False)])
def test_an_admin_password_portainer_would_refuse_is_refused_before_anything_exists(password, refused):
    """Portainer 2.21 wants 12 bytes (RequiredPasswordLength): a shorter phoenix:portainerAdminPassword
    is one keyed line, without the value, and no plan; bytes, not characters, count."""
    from phoenix.errors import ConfigError
    from phoenix.plan import make_plan
    base = stack_config("dev")
    stack = StackConfig(base.name, {**base.values, KEY: password}, set(base.secret_keys) | {KEY}, base.root)
    if not refused:
        assert make_plan(stack).run.named("portainer-portainer-server") is not None
        return
    with pytest.raises(ConfigError) as info:
        make_plan(stack)
    assert info.value.problems == [
        "phoenix:portainerAdminPassword: Portainer 2.21 wants at least 12 bytes (this one has 11); set a longer "
        "one with: pulumi config set --secret phoenix:portainerAdminPassword ..."]
    assert password not in str(info.value)


# -- adding an agent -------------------------------------------------------------------------
def test_adding_an_agent_adds_its_vm_registration_and_firewall_and_changes_nothing_else(plan):
    def add(raw):
        raw["guests"].append({"id": 204, "name": "agent-4", "role": "agent", "node": "pve1",
                              "address": "10.30.0.34", "cores": 4, "memory": 8192, "disk": 64,
                              "image": "debian-12-cloud"})
    base = plan
    grown = planned(edited("cluster", add))
    before = {r["urn"]: r for r in base.document()["resources"]}
    after = {r["urn"]: r for r in grown.document()["resources"]}
    assert set(before) <= set(after)                              # nothing removed
    added = sorted(after[u]["name"] for u in set(after) - set(before))
    assert added == sorted(["agent-4", "agent-4-user-data", "agent-4-bootstrap", "agent-4-trust",
                            "agent-4-portainer-agent", "portainer-register-agent-4",
                            "agent-4-firewall-rules", "agent-4-firewall-options", "agent-4-ipfilter",
                            "agent-4-ha"])                            # an agent is HA in the cluster stack
    rules = next(r for r in after.values() if r["name"] == "agent-4-firewall-rules")["inputs"]["rules"]
    assert {(x["source"], x["dport"]) for x in rules if x["type"] == "in" and x["dport"] == "9001"} == \
        {("10.30.0.30/32", "9001")}
    changed = [u for u in before if before[u] != after[u]]
    by_urn = {r.urn: r for r in grown.run.resources}
    # Only the DNS tier may change (the internal view names every guest), and only by the new name;
    # and the resilience tier (the backup job's guests, the HA group that now places agent-4 too).
    assert all(tier_of(by_urn[u], grown.run) in ("Dns", "Resilience") for u in changed), \
        [before[u]["name"] for u in changed]
    old_files, new_files = pushed_files(base.run, base.topo), pushed_files(grown.run, grown.topo)
    explained = False
    for guest, paths in new_files.items():
        if guest == "agent-4":
            continue
        for path, (f, step) in paths.items():
            if path not in old_files[guest]:          # a new step's file (the registration script)
                assert step in added, (guest, path)
                continue
            old = old_files[guest][path][0].content
            if old != f.content:
                assert tier_of(grown.run.named(step), grown.run) == "Dns", (guest, path)
                added_lines = [line for line in difflib.ndiff(old.splitlines(), f.content.splitlines())
                               if line.startswith("+ ")]
                explained |= any("agent-4" in line and "10.30.0.34" in line for line in added_lines)
    assert explained or not changed, "the DNS change does not add the new agent's record"
