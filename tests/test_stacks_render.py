"""Compose stacks, pure: the compose file of the shipped examples (pinned image, TLS sidecar with
the agent's certificate, volumes, no secret values), the request Portainer gets, the deploy
script, and bad catalog entries refused with one keyed line each."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import edited, stack_config
from phoenix.errors import ConfigError
from phoenix.model import parse_lab
from phoenix.render import stacks as st
from phoenix.stackfile import expand_catalog
from phoenix.topology import build, tls_paths
from portainer_standin import dotenv

SECRET = "grafana-admin-Pa$$word-1"
CHECK_JSONSCHEMA = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "check-jsonschema"


def topo_of(stack):
    return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))


#: the dev stack's example for these tests (the cluster stack ships the same one for ai.example.org).
GRAFANA = {"name": "grafana", "guests": ["agent-1"], "port": 3443, "health": "/api/health", "public": True,
           "publicHost": "grafana.lab.example.com", "websocket": True,
           "compose": {"image": "grafana/grafana-oss:11.3.1", "containerPort": 3000,
                       "volumes": ["grafana-data:/var/lib/grafana"],
                       "environment": {"GF_SERVER_ROOT_URL": "https://grafana.lab.example.com/",
                                       "GF_ANALYTICS_REPORTING_ENABLED": "false"},
                       "secretEnvironment": {"GF_SECURITY_ADMIN_PASSWORD": "phoenix:grafanaAdminPassword"}}}


def add_grafana(raw: dict) -> None:
    raw["services"].append(json.loads(json.dumps(GRAFANA)))


@pytest.fixture(scope="module")
def dev():
    return topo_of(edited("dev", add_grafana))


@pytest.fixture(scope="module")
def cluster():
    return topo_of(stack_config("cluster"))


def only_stack(topo, service: str):
    [(s, agent)] = [(s, a) for s, a in st.stacks(topo) if s.name == service]
    return s, agent


def with_service(entry: dict, name: str = "dev"):
    return edited(name, lambda raw: raw["services"].append(entry))


def problems_of(stack) -> list[str]:
    with pytest.raises(ConfigError) as info:
        topo_of(stack)
    return info.value.problems


WHOAMI = {"name": "whoami", "guests": ["agent-1"], "port": 8444, "health": "/health",
          "compose": {"image": "traefik/whoami:v1.10.3", "containerPort": 80}}


# -- the compose file --------------------------------------------------------------------------
def test_a_stack_runs_the_pinned_app_behind_a_tls_sidecar_with_the_agents_certificate(dev):
    s, agent = only_stack(dev, "grafana")
    assert agent.name == "agent-1" and agent.role == "agent"
    doc = yaml.safe_load(st.compose_text(dev, s, agent))
    app, tls = doc["services"]["app"], doc["services"]["tls"]
    assert app["image"] == "grafana/grafana-oss:11.3.1"                   # as pinned in the catalog
    assert "ports" not in app and app["expose"] == ["3000"]                # reachable only on the stack's network
    assert tls["ports"] == ["3443:3443"]                                   # the catalog port, on the agent
    cert = tls_paths("grafana")
    assert tls["volumes"] == [f"{cert.cert}:/run/phoenix/tls/cert.pem:ro", f"{cert.key}:/run/phoenix/tls/key.pem:ro"]
    assert tls["image"] == dev.lab.portainer.stack_tls_image == "nginx:1.27.3-alpine"
    assert tls["depends_on"] == ["app"] and app["init"] is True
    conf = tls["environment"]["PHOENIX_NGINX_CONF"].replace("$$", "$")
    assert "listen 3443 ssl;" in conf and "set $phoenix_app http://app:3000;" in conf
    assert "ssl_certificate /run/phoenix/tls/cert.pem;" in conf and "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    assert "$$PHOENIX_NGINX_CONF" in tls["command"][2]                     # the shell reads it, not compose
    assert app["volumes"] == ["grafana-data:/var/lib/grafana"] and doc["volumes"] == {"grafana-data": {}}
    assert app["environment"] == {"GF_ANALYTICS_REPORTING_ENABLED": "false",
                                  "GF_SERVER_ROOT_URL": "https://grafana.lab.example.com/",
                                  "GF_SECURITY_ADMIN_PASSWORD": "${GF_SECURITY_ADMIN_PASSWORD}"}


def test_the_request_carries_the_secret_in_env_and_the_compose_file_never(dev):
    s, agent = only_stack(dev, "grafana")
    body = st.request_body(dev, s, agent, {"grafanaAdminPassword": SECRET}, "201")
    assert body["Name"] == "phoenix-grafana"
    assert SECRET not in body["StackFileContent"]
    assert body["StackFileContent"] == st.compose_text(dev, s, agent)
    assert body["Env"] == [                 # as compose's dotenv parser reads back SECRET exactly
        {"name": "GF_SECURITY_ADMIN_PASSWORD", "value": '"grafana-admin-Pa\\$\\$word-1"'},
        {"name": "PHOENIX_AGENT_VM", "value": "201"},
        {"name": "PHOENIX_COMPOSE_SHA256", "value": hashlib.sha256(body["StackFileContent"].encode()).hexdigest()}]
    files = {f.path: f for f in st.stack_files(dev, s, agent, {"grafanaAdminPassword": SECRET}, "201")}
    request = files["/etc/phoenix/portainer/stacks/agent-1/grafana.json"]
    assert json.loads(request.content) == body and request.mode == 0o600 and request.owner == "root"
    assert files["/usr/local/lib/phoenix/stack-grafana-agent-1.sh"].mode == 0o700


# -- stack.env: what compose reads back -------------------------------------------------------------
DOTENV_CASES = json.loads((Path(__file__).parent / "portainer_standin" / "dotenv_cases.json").read_text())


def test_the_dotenv_port_answers_as_compose_go_does():
    """The stand-in's port of compose-go's dotenv parser (what docker compose reads
    ``stack.env`` with) gives what the real Go code gave for every recorded env file, errors
    included (the file's ``origin`` says how they were recorded)."""
    lookup = DOTENV_CASES["lookup"].get
    assert len(DOTENV_CASES["cases"]) > 300
    for case in DOTENV_CASES["cases"]:
        try:
            got = {"env": dotenv.parse(case["input"], lookup)}
        except ValueError as err:
            got = {"error": str(err)}
        assert got == {k: v for k, v in case.items() if k in ("env", "error")}, case["input"]


def test_real_compose_read_back_every_quoted_value_and_mangled_most_unquoted_ones():
    """The recorded answers of the real Go parser: each value as ``dotenv_value`` quotes it came
    back as it was; the same values written unquoted (as Portainer writes whatever it gets)
    mostly did not."""
    quoted = [c for c in DOTENV_CASES["cases"] if "quoted" in c]
    assert len(quoted) == 225
    for c in quoted:
        assert c["input"] == f"K={st.dotenv_value(c['quoted'])}\n" and c["env"] == {"K": c["quoted"]}
    unquoted = [c for c in DOTENV_CASES["cases"] if "unquoted" in c]
    mangled = [c for c in unquoted if c.get("env") != {"K": c["unquoted"]}]
    assert len(unquoted) == 100 and len(mangled) > 40


NASTY = ["pa$$word", "a #b", "trailing ", " leading", "q\"uo'te", "back\\slash", "\\$X", "${HOME}", "$PATH",
         "new\nline", "cr\rlf", "tab\there", "\\n", "ends\\", "'", '"', "#", " ", "", "\\0101", "ünï\u00a0cødé",
         "x\u0085y", "plain-Value_1.2:3@4%5+6=7,8/9"]


@pytest.mark.parametrize("value", NASTY)
def test_every_env_value_comes_back_from_stack_env_byte_for_byte(value):
    """Portainer writes ``name=value`` unquoted; ``dotenv_value`` makes what it writes read back
    as the value itself (with the real parser's rules, ported). Unquoted, most of these would
    not: the reason for the quoting."""
    assert dotenv.parse(f"K={st.dotenv_value(value)}\n", lambda k: "from-the-process") == {"K": value}


def test_the_quoting_round_trips_random_values_and_leaves_plain_ones_alone():
    rnd = random.Random(7)
    alphabet = list("aZ09 _-=#$\\\"'{}:?+!\t\n\r`;&|<>()*~^") + ["\u00e9", "\u2713", "\u00a0", "\u0085"]
    for _ in range(2000):
        value = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24)))
        assert dotenv.parse(f"K={st.dotenv_value(value)}\n") == {"K": value}, repr(value)
    assert st.dotenv_value("0123abcdef") == "0123abcdef"        # digests and ids: no churn


def test_plain_values_with_a_dollar_stay_literal_and_the_command_is_split_into_words():
    entry = {**WHOAMI, "compose": {**WHOAMI["compose"], "environment": {"GREETING": "costs $5"},
                                   "command": "--port 80 --name 'who am i'"}}
    topo = topo_of(with_service(entry))
    s, agent = only_stack(topo, "whoami")
    app = yaml.safe_load(st.compose_text(topo, s, agent))["services"]["app"]
    assert app["environment"] == {"GREETING": "costs $$5"}
    assert app["command"] == ["--port", "80", "--name", "who am i"]


def test_a_plain_http_stack_publishes_the_app_on_the_catalog_port_without_a_sidecar():
    topo = topo_of(with_service({**WHOAMI, "protocol": "http"}))
    s, agent = only_stack(topo, "whoami")
    doc = yaml.safe_load(st.compose_text(topo, s, agent))
    assert list(doc["services"]) == ["app"] and doc["services"]["app"]["ports"] == ["8444:80"]
    assert "containers=1" in st.deploy_script(topo, s, agent)


def test_the_cluster_stack_ships_a_public_and_an_internal_example(cluster):
    assert [(s.name, a.name) for s, a in st.stacks(cluster)] == [("grafana", "agent-1"), ("qdrant", "agent-2")]
    grafana, _ = only_stack(cluster, "grafana")
    assert grafana.public and grafana.public_host == "grafana.ai.example.org"
    s, agent = only_stack(cluster, "qdrant")
    assert agent.name == "agent-2" and not s.public
    app = yaml.safe_load(st.compose_text(cluster, s, agent))["services"]["app"]
    assert "/srv/phoenix/qdrant/snapshots:/qdrant/snapshots" in app["volumes"]
    assert app["environment"]["QDRANT__SERVICE__API_KEY"] == "${QDRANT__SERVICE__API_KEY}"


def compose_variants(dev, cluster) -> dict[str, str]:
    http = topo_of(with_service({**WHOAMI, "protocol": "http"}))
    return {"grafana": st.compose_text(dev, *only_stack(dev, "grafana")),
            "grafana-cluster": st.compose_text(cluster, *only_stack(cluster, "grafana")),
            "qdrant": st.compose_text(cluster, *only_stack(cluster, "qdrant")),
            "whoami-http": st.compose_text(http, *only_stack(http, "whoami"))}


def test_compose_files_validate_against_the_compose_spec_schema(dev, cluster, tmp_path):
    if not CHECK_JSONSCHEMA.exists():
        pytest.skip("check-jsonschema is not in .venv (pip install -e '.[test]')")
    for name, text in compose_variants(dev, cluster).items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        out = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
                             capture_output=True, text=True, check=False)
        assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"
    broken = tmp_path / "broken.yaml"        # the schema does catch a misspelt key
    broken.write_text(compose_variants(dev, cluster)["grafana"].replace("depends_on:", "depend_on:"))
    assert subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(broken)],
                          capture_output=True, check=False).returncode != 0


def test_compose_files_pass_debians_docker_compose_config_with_the_secret_interpolated(dev, cluster, tmp_path):
    """What the agent's compose (and Portainer) reads: the secret comes from the environment,
    the sidecar's nginx variables survive interpolation."""
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose is not installed (make deps)")
    env = {"PATH": "/usr/bin:/bin", "GF_SECURITY_ADMIN_PASSWORD": "from-portainer-env",
           "QDRANT__SERVICE__API_KEY": "from-portainer-env"}
    for name, text in compose_variants(dev, cluster).items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        out = subprocess.run(["docker-compose", "-p", f"phoenix-{name}", "-f", str(path), "config"],
                             capture_output=True, text=True, env=env, timeout=60, check=False)
        assert out.returncode == 0, f"{name}: {out.stderr}"
        assert "is not set" not in out.stderr, out.stderr          # every ${VAR} has its value
        resolved = yaml.safe_load(out.stdout)["services"]
        if name != "whoami-http":
            assert "from-portainer-env" in json.dumps(resolved["app"]["environment"])
            # config prints compose syntax again ($ as $$): the container gets nginx's own $host
            assert "proxy_set_header Host $$host;" in resolved["tls"]["environment"]["PHOENIX_NGINX_CONF"]


def test_the_deploy_script_passes_shellcheck(dev, tmp_path):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (make deps)")
    http = topo_of(with_service({**WHOAMI, "protocol": "http"}))
    for topo, service in ((dev, "grafana"), (http, "whoami")):
        path = tmp_path / f"{service}.sh"
        path.write_text(st.deploy_script(topo, *only_stack(topo, service)))
        out = subprocess.run(["shellcheck", "-x", str(path)], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stdout


def test_streaming_and_limits_reach_the_sidecar():
    entry = {**WHOAMI, "streaming": True, "timeout": 900, "maxBodySize": "200m"}
    topo = topo_of(with_service(entry))
    s, _ = only_stack(topo, "whoami")
    conf = st.sidecar_config(s)
    assert "proxy_buffering off;" in conf and "proxy_read_timeout 900s;" in conf
    assert "client_max_body_size 200m;" in conf
    assert "proxy_buffering" not in st.sidecar_config(only_stack(topo_of(with_service(WHOAMI)), "whoami")[0])


# -- bad input ---------------------------------------------------------------------------------
def compose_with(**changes):
    return {**WHOAMI, "compose": {**WHOAMI["compose"], **changes}}


@pytest.mark.parametrize("entry, line", [
    (compose_with(image="traefik/whoami"),
     "{at}.compose.image: image 'traefik/whoami' is not pinned: give a version tag "
     "(traefik/whoami:1.2.3) or a digest (traefik/whoami@sha256:...)"),
    (compose_with(image="traefik/whoami:latest"),
     "{at}.compose.image: image 'traefik/whoami:latest' is not pinned: 'latest' moves; "
     "give a version tag or a digest"),
    (compose_with(image="registry.lab:5000/whoami@sha256:1234"),
     "{at}.compose.image: image 'registry.lab:5000/whoami@sha256:1234': a digest pin is "
     "@sha256: and 64 lowercase hex digits"),
    ({**WHOAMI, "guests": ["agent-9"]}, "{at}.guests[0]: unknown guest 'agent-9'"),
    ({**WHOAMI, "guests": ["gpu-llm"]},
     "{at}.guests[0]: 'gpu-llm' is a gpu guest, not an agent VM: compose stacks run on the "
     "agents' Docker through Portainer"),
    ({**WHOAMI, "port": 80},
     "{at}.port: port 80 on guest 'agent-1' is taken by the lab itself (certbot answers Step-CA's "
     "HTTP-01 challenge there when it renews a certificate)"),
    (compose_with(volumes=["/etc:/host-etc"]),
     "{at}.compose.volumes[0]: volume '/etc:/host-etc': a host path must be under /srv/phoenix/ "
     "(or use a named volume)"),
    (compose_with(volumes=["/srv/phoenix/../../etc:/x"]),
     "{at}.compose.volumes[0]: volume '/srv/phoenix/../../etc:/x': a host path must be under "
     "/srv/phoenix/ (or use a named volume)"),
    (compose_with(secretEnvironment={"TOKEN": "whoamiToken"}),
     "{at}.compose.secretEnvironment: TOKEN: 'whoamiToken' must name a Pulumi config secret "
     "as phoenix:<key>"),
    (compose_with(secretEnvironment={"TOKEN": "phoenix:proxmoxPassword"}),
     "{at}.compose.secretEnvironment: TOKEN: phoenix:proxmoxPassword is Phoenix's own "
     "credential; give the stack a secret of its own"),
    (compose_with(environment={"PHOENIX_COMPOSE_SHA256": "x"}),
     "{at}.compose.environment: 'PHOENIX_COMPOSE_SHA256': names starting with PHOENIX_ are "
     "Phoenix's own"),
    (compose_with(environment={"PORT": 80}),
     "{at}.compose.environment.PORT: must be text, not int"),
])
def test_bad_compose_entries_are_refused_with_one_keyed_line(entry, line):
    stack = stack_config("dev")
    at = f"phoenix:services[{len(expand_catalog(stack.phoenix(), stack.root)['services'])}]"   # the added entry
    problems = problems_of(with_service(entry))
    assert line.format(at=at) in problems, problems


def test_a_service_cannot_be_both_a_gpu_unit_and_a_compose_stack():
    def both(raw):
        llm = next(s for s in raw["services"] if s["name"] == "llm")
        llm["compose"] = WHOAMI["compose"]
    problems = problems_of(edited("dev", both))
    assert "phoenix:services[0].compose: a service runs either as a GPU unit (run) or as a compose stack " \
           "(compose), not both" in problems


def test_a_missing_or_plain_stack_secret_is_named_with_its_key(dev):
    assert st.required_secrets(dev.lab) == {"grafanaAdminPassword": ["grafana"]}
    from phoenix.model import secret_problems

    def stack_lines(is_set, is_secret):
        return [p for p in secret_problems(dev.lab, is_set, is_secret) if "grafana" in p]
    missing = stack_lines(lambda k: False, lambda k: False)
    assert missing == ["phoenix:grafanaAdminPassword: required secret is missing (the compose stack of grafana); "
                       "set it with: pulumi config set --secret phoenix:grafanaAdminPassword ..."]
    plain = stack_lines(lambda k: True, lambda k: False)
    assert plain == ["phoenix:grafanaAdminPassword: must be a secret (the compose stack of grafana); "
                     "set it again with --secret"]
    assert stack_lines(lambda k: True, lambda k: True) == []
