"""Bad input is refused with one clear line per problem, naming the key path, before anything exists."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, edited, stack_config
from phoenix.errors import ConfigError
from phoenix.model import json_schema, parse_lab
from phoenix.stackfile import expand_catalog


def problems_of(stack) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_lab(expand_catalog(stack.phoenix(), stack.root))
    return info.value.problems


def guest_index(raw: dict, name: str) -> int:
    return next(i for i, g in enumerate(raw["guests"]) if g["name"] == name)


def service_index(raw: dict, name: str) -> int:
    return next(i for i, s in enumerate(raw["services"]) if s["name"] == name)


def test_shipped_stacks_are_valid():
    for name in ("dev", "cluster"):
        stack = stack_config(name)
        lab = parse_lab(expand_catalog(stack.phoenix(), stack.root))
        assert lab.guests and lab.services


def test_duplicate_guest_id():
    def edit(raw):
        raw["guests"][guest_index(raw, "mesh")]["id"] = 101
    i = guest_index(edited("dev", lambda r: None).phoenix(), "mesh")
    assert f"phoenix:guests[{i}].id: guest id 101 is already used by guests[1]" in problems_of(edited("dev", edit))


def test_duplicate_address():
    def edit(raw):
        raw["guests"][guest_index(raw, "ca")]["address"] = "10.20.0.12"
    assert "phoenix:guests[3].address: 10.20.0.12 is already used by guest 'mesh'" in problems_of(edited("dev", edit))


def test_address_outside_subnet():
    def edit(raw):
        raw["guests"][guest_index(raw, "ca")]["address"] = "10.99.0.13"
    problems = problems_of(edited("dev", edit))
    assert "phoenix:guests[3].address: 10.99.0.13 is outside the network 10.20.0.0/24" in problems


def test_address_equal_to_gateway():
    def edit(raw):
        raw["guests"][guest_index(raw, "ca")]["address"] = "10.20.0.1"
    assert "phoenix:guests[3].address: 10.20.0.1 is the network gateway" in problems_of(edited("dev", edit))


@pytest.mark.parametrize("bad", ["Gateway", "gate_way", "-gw", "a" * 64])
def test_invalid_host_name(bad):
    def edit(raw):
        raw["guests"][guest_index(raw, "gateway")]["name"] = bad
    lines = problems_of(edited("dev", edit))
    assert any(line.startswith("phoenix:guests[1].name: ") and "not a valid host name label" in line
               for line in lines), lines


@pytest.mark.parametrize("bad", ["localhost", "lab..example.com", "lab.exa mple.com", "UPPER.example.com"])
def test_invalid_domain(bad):
    def edit(raw):
        raw["domains"]["public"] = bad
    lines = problems_of(edited("dev", edit))
    assert any(line.startswith("phoenix:domains.public: ") and "not a valid domain name" in line
               for line in lines), lines


def test_service_on_unknown_guest():
    def edit(raw):
        raw["services"][service_index(raw, "llm")]["guests"] = ["gpu-nope"]
    assert "phoenix:services[0].guests[0]: unknown guest 'gpu-nope'" in problems_of(edited("dev", edit))


def test_public_service_without_public_host():
    def edit(raw):
        del raw["services"][service_index(raw, "llm")]["publicHost"]
    problems = problems_of(edited("dev", edit))
    assert "phoenix:services[0].publicHost: service 'llm' is public but has no publicHost" in problems


def test_two_services_claim_one_host():
    def edit(raw):
        raw["services"][service_index(raw, "portainer-ui")]["publicHost"] = "chat.lab.example.com"
    assert ("phoenix:services[1].publicHost: chat.lab.example.com is already claimed by service 'llm'"
            in problems_of(edited("dev", edit)))


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_out_of_range(port):
    def edit(raw):
        raw["services"][service_index(raw, "llm")]["port"] = port
    lines = problems_of(edited("dev", edit))
    assert any(line.startswith("phoenix:services[0].port: Input should be") for line in lines), lines


def test_two_services_on_one_guest_and_port():
    def edit(raw):
        raw["services"].append({"name": "second", "guests": ["gpu-llm"], "port": 8000, "gpu": True,
                                "run": {"command": "/bin/true"}})
    assert ("phoenix:services[2].port: port 8000 on guest 'gpu-llm' is already used by service 'llm'"
            in problems_of(edited("dev", edit)))


def test_port_taken_by_a_tier():
    def edit(raw):
        raw["services"].append({"name": "web", "guests": ["gateway"], "port": 443})
    assert ("phoenix:services[2].port: port 443 on guest 'gateway' is taken by the lab itself (the gateway's HTTPS)"
            in problems_of(edited("dev", edit)))


def test_gpu_service_on_guest_without_gpu():
    def edit(raw):
        raw["services"][service_index(raw, "llm")]["guests"] = ["agent-1"]
    assert ("phoenix:services[0].guests[0]: GPU service 'llm' runs on 'agent-1', which has no GPU devices"
            in problems_of(edited("dev", edit)))


@pytest.mark.parametrize("where,edit,path", [
    ("top level", lambda r: r.__setitem__("gatway", {}), "phoenix:gatway"),
    ("guest", lambda r: r["guests"][0].__setitem__("adress", "10.20.0.10"), "phoenix:guests[0].adress"),
    ("service", lambda r: r["services"][0].__setitem__("helth", "/x"), "phoenix:services[0].helth"),
    ("nested run", lambda r: r["services"][0]["run"].__setitem__("modle", "x"), "phoenix:services[0].run.modle"),
    ("network", lambda r: r["network"].__setitem__("bridgee", "vmbr1"), "phoenix:network.bridgee"),
])
def test_unknown_keys_anywhere(where, edit, path):
    assert f"{path}: unknown key (a typo?)" in problems_of(edited("dev", edit)), where


def test_guest_on_unknown_node():
    def edit(raw):
        raw["guests"][guest_index(raw, "ca")]["node"] = "pve9"
    assert "phoenix:guests[3].node: unknown node 'pve9' (known: pve)" in problems_of(edited("dev", edit))


def test_every_problem_at_once():
    def edit(raw):
        raw["guests"][guest_index(raw, "ca")]["node"] = "pve9"
        raw["guests"][guest_index(raw, "mesh")]["id"] = 101
        raw["services"][0]["guests"] = ["nope"]
    lines = problems_of(edited("dev", edit))
    assert len(lines) == 3, lines


def test_cli_refuses_bad_input_with_exit_2_and_no_traceback(tmp_path):
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    doc["config"]["phoenix:guests"][2]["id"] = 101
    doc["config"]["phoenix:guests"][3]["address"] = "10.20.0.1"
    doc["config"]["phoenix:catalog"] = str(ROOT / "configs/catalog/dev.yaml")
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    proc = subprocess.run([sys.executable, "-m", "phoenix.cli", "plan", "--config-file", str(bad),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: phoenix:guests[2].id: guest id 101 is already used by guests[1]",
                     "error: phoenix:guests[3].address: 10.20.0.1 is the network gateway"]
    assert not (tmp_path / "out").exists()


def test_missing_required_secret_stops_the_program_before_any_resource():
    """The real program (not the plan's placeholders) refuses a stack without its secrets."""
    import pulumi

    from phoenix.plan.engine import run_program
    with pytest.raises(pulumi.RunError) as info:
        run_program(stack_config("dev"))
    message = str(info.value)
    assert "phoenix:proxmoxPassword: required secret is missing" in message
    assert "phoenix:portainerAdminPassword: required secret is missing" in message
    assert info.value.phoenix_registered == []


def test_secret_set_in_clear_is_refused():
    import pulumi

    from phoenix.plan.engine import run_program
    stack = stack_config("dev")
    stack.values["phoenix:proxmoxPassword"] = "hunter2hunter2"
    stack.values["phoenix:portainerAdminPassword"] = "s3cret-s3cret"
    stack.secret_keys.add("phoenix:portainerAdminPassword")
    with pytest.raises(pulumi.RunError) as info:
        run_program(stack)
    assert ("phoenix:proxmoxPassword: must be a secret (the root@pam password of the Proxmox API (or set "
            "phoenix:proxmoxApiToken)); set it again with --secret") in str(info.value)


def test_json_schema_names_every_section_by_config_key():
    schema = json_schema()
    assert set(schema["properties"]) >= {"proxmox", "network", "domains", "acme", "images", "guests",
                                         "services", "pki", "mesh", "gateway", "dns", "portainer"}
    service = schema["$defs"]["Service"]["properties"]
    assert {"publicHost", "maxBodySize", "guests"} <= set(service)
    assert schema["$defs"]["Guest"]["additionalProperties"] is False


def test_a_real_deployment_refuses_unpinned_release_checksums_before_any_resource():
    """The plan warns about missing release pins; `pulumi up` refuses them before creating anything."""
    import pulumi

    from phoenix.plan import make_plan, with_placeholder_secrets
    from phoenix.plan.engine import run_program
    warnings = make_plan(stack_config("dev")).warnings
    assert any(w.startswith("phoenix:mesh.traefikSha256: required to install Traefik") for w in warnings)
    assert any(w.startswith("phoenix:pki.stepCaSha256: required to install step-ca") for w in warnings)
    stack, _ = with_placeholder_secrets(stack_config("dev"))
    with pytest.raises(pulumi.RunError) as info:
        run_program(stack)                       # what `pulumi up` runs: phoenix.program.main
    assert "phoenix:mesh.traefikSha256: required to install Traefik 3.7.15" in str(info.value)
    assert "phoenix:pki.stepCliSha256: required to install step-cli" in str(info.value)
    assert info.value.phoenix_registered == []


def test_the_exported_json_schema_accepts_the_shipped_stacks_and_refuses_a_typo():
    """docs/phoenix.schema.json (from `phoenix docs`) is what editors validate stack files with."""
    import json

    import jsonschema
    schema = json.loads((ROOT / "docs" / "phoenix.schema.json").read_text())
    for name in ("dev", "cluster"):
        stack = stack_config(name)
        jsonschema.validate(expand_catalog(stack.phoenix(), stack.root), schema)
    raw = expand_catalog(stack_config("dev").phoenix(), ROOT)
    raw["guests"][0]["adress"] = "10.20.0.10"
    with pytest.raises(jsonschema.ValidationError, match="adress"):
        jsonschema.validate(raw, schema)


def test_a_stack_secret_naming_a_structured_setting_is_refused():
    def edit(raw):
        raw["services"].append({"name": "notes", "guests": ["agent-1"], "port": 8444,
                                "compose": {"image": "nginx:1.27.3", "containerPort": 80,
                                            "secretEnvironment": {"TOKEN": "phoenix:mesh"}}})
    assert ("phoenix:services[2].compose.secretEnvironment: TOKEN: phoenix:mesh is a structured Phoenix "
            "setting, not a secret") in problems_of(edited("dev", edit))


def test_an_api_token_in_clear_is_refused_like_any_operator_secret():
    """phoenix:proxmoxApiToken replaces the password; in plain text in a stack file it is refused."""
    from phoenix.loader import load_stack
    stack = stack_config("dev")
    stack.values["phoenix:proxmoxApiToken"] = "root@pam!phoenix=0123-4567"
    with pytest.raises(ConfigError) as info:
        load_stack(stack)
    assert ("phoenix:proxmoxApiToken: must be a secret (a Proxmox API token, instead of "
            "the password); set it again with --secret") in info.value.problems


def _with_token(stack):
    stack.values["phoenix:proxmoxApiToken"] = "root@pam!phoenix=0123-4567"
    stack.secret_keys.add("phoenix:proxmoxApiToken")
    return stack


def test_an_api_token_is_refused_while_a_guest_needs_root_at_pam_naming_both_keys():
    """Proxmox lets only root@pam (with a password) pass devices into an LXC: with a token the first
    GPU container's create would fail half way through a deployment. Refused before anything runs."""
    from phoenix.loader import load_stack
    with pytest.raises(ConfigError) as info:
        load_stack(_with_token(stack_config("cluster")))
    lab = parse_lab(expand_catalog(stack_config("cluster").phoenix(), ROOT))
    gpu = [i for i, g in enumerate(lab.guests) if g.kind == "lxc" and g.gpus]
    assert len(gpu) == 3
    lines = [p for p in info.value.problems if p.startswith("phoenix:proxmoxApiToken: ")]
    assert len(lines) == len(gpu)
    for i, line in zip(gpu, lines, strict=True):
        assert f"cannot write phoenix:guests[{i}].gpus (device passthrough" in line
        assert "root@pam with a password" in line and "phoenix:proxmoxPassword" in line


def test_an_api_token_is_accepted_when_no_guest_needs_root_at_pam():
    from phoenix.loader import load_stack

    def no_gpus(raw):
        gpu = {g["name"] for g in raw["guests"] if g.get("gpus")}
        raw["guests"] = [g for g in raw["guests"] if g["name"] not in gpu]
        raw["services"] = [s for s in raw["services"] if not set(s["guests"]) & gpu]
    loaded = load_stack(_with_token(edited("dev", no_gpus)))
    assert not any(g.gpus for g in loaded.lab.guests)
