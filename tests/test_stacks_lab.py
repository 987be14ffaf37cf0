"""Compose stacks for real: the deploy script against a stand-in of Portainer's stacks API, and
the TLS sidecar's config served by real nginx.

Run only through the namespace wrapper (loopback only):

    bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_stacks_lab.py

No Portainer or Docker engine is available here, so a small HTTPS server plays Portainer's API
as Portainer 2.21 serves it (JSON login; stacks created by ``POST /api/stacks/create/standalone/
string?endpointId=N`` with Name/StackFileContent/Env, updated by ``PUT /api/stacks/{id}?endpointId=N``,
removed by ``DELETE /api/stacks/{id}?endpointId=N``; containers through the environment's Docker
proxy). It checks each compose file with Debian's docker-compose, with the stack's Env as the
environment, as Portainer's compose would read it. What runs is the plan's own bash script with
real bash, curl and jq; guest paths are remapped into a temporary directory, and ``curl`` and
``jq`` are wrapped to record every command line they get (no secret or token may appear there).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import edited
from lab import Processes, require_isolated, require_tools, wait_port
from phoenix.model import parse_lab
from phoenix.render import stacks as st
from phoenix.render import workloads as wl
from phoenix.stackfile import expand_catalog
from phoenix.topology import build
from portainer_standin import PortainerApi, ScriptLab
from portainer_standin import serve as serve_api
from test_stacks_render import add_grafana
from testpki import TestCA, save

pytestmark = pytest.mark.lab

PORTAINER_PASSWORD = "portainer-admin-pass-1234"
SECRET = "grafana-admin-Secret-7731"
NEW_SECRET = "grafana-admin-Rotated-9902"
AGENT_VM = "201"


def topo_with(edit=None):
    def dev_with_grafana(raw):
        add_grafana(raw)
        if edit:
            edit(raw)
    stack = edited("dev", dev_with_grafana)
    return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))


def grafana(topo):
    [(s, agent)] = [(s, a) for s, a in st.stacks(topo) if s.name == "grafana"]
    return s, agent


# -- the stand-in ------------------------------------------------------------------------------
def serve(cert: str, key: str, password: str, endpoints: str) -> None:  # pragma: no cover - child process
    import re
    import shutil
    import tempfile
    from urllib.parse import parse_qs, urlsplit

    import yaml

    state = {"endpoints": {e["Id"]: e for e in json.loads(endpoints)}, "stacks": {}, "log": [], "next": 1}

    def compose_problem(text: str, env: list) -> str | None:
        """Portainer runs compose with the stack's Env; an unreadable file or an unset variable fails."""
        if not shutil.which("docker-compose"):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "docker-compose.yml"
            path.write_text(text)
            out = subprocess.run(["docker-compose", "-f", str(path), "config", "-q"], capture_output=True, text=True,
                                 env={"PATH": os.environ["PATH"], **{e["name"]: e["value"] for e in env}})
        if out.returncode != 0 or "is not set" in out.stderr:
            return out.stderr.strip() or "invalid compose file"
        return None

    def containers(stack) -> list:
        doc = yaml.safe_load(stack["StackFileContent"])
        out = []
        for name, svc in doc["services"].items():
            running = stack["Status"] == 1 and "crashloop" not in svc["image"]
            out.append({"Names": [f"/{stack['Name']}-{name}-1"], "Image": svc["image"],
                        "State": "running" if running else ("restarting" if stack["Status"] == 1 else "exited"),
                        "Labels": {"com.docker.compose.project": stack["Name"], "com.docker.compose.service": name}})
        return out

    class Api(PortainerApi):
        def handle_any(self, method):
            url = urlsplit(self.path)
            path, query = url.path, parse_qs(url.query)
            state["log"].append(f"{method} {path}{'?' + url.query if url.query else ''} "
                                f"{(self.headers.get('Content-Type') or '').split(';')[0]}".rstrip())
            if path == "/_state":
                return self.reply(200, {"stacks": list(state["stacks"].values()), "log": state["log"]})
            m = re.fullmatch(r"/_stop/(\d+)", path)
            if m:
                state["stacks"][int(m.group(1))]["Status"] = 2
                return self.reply(200, {})
            if path == "/api/system/status":
                return self.reply(200, {"Version": "2.21.4"})
            if path == "/api/auth" and method == "POST":
                body = self.json_body() or {}
                if body.get("Username") != "admin" or body.get("Password") != password:
                    return self.reply(422, {"message": "Invalid credentials"})
                return self.logged_in()
            if not self.authed():
                return
            if path == "/api/endpoints" and method == "GET":
                return self.reply(200, list(state["endpoints"].values()))
            if path == "/api/stacks" and method == "GET":
                return self.reply(200, [{k: v for k, v in s.items() if k != "StackFileContent"}
                                        for s in state["stacks"].values()])
            if path == "/api/stacks/create/standalone/string" and method == "POST":
                body = self.json_body()
                endpoint = int((query.get("endpointId") or ["0"])[0])
                if body is None or not body.get("Name") or not body.get("StackFileContent"):
                    return self.reply(400, {"message": "Invalid request payload"})
                if endpoint not in state["endpoints"]:
                    return self.reply(404, {"message": "Unable to find an environment with the specified identifier"})
                if any(s["Name"] == body["Name"] and s["EndpointId"] == endpoint for s in state["stacks"].values()):
                    return self.reply(409, {"message": f"A stack with the normalized name '{body['Name']}' already exists"})
                problem = compose_problem(body["StackFileContent"], body.get("Env") or [])
                if problem:
                    return self.reply(500, {"message": "Failed to deploy a stack", "details": problem})
                sid = state["next"]
                state["next"] += 1
                state["stacks"][sid] = {"Id": sid, "Name": body["Name"], "Type": 2, "EndpointId": endpoint,
                                        "Env": body.get("Env") or [], "Status": 1,
                                        "StackFileContent": body["StackFileContent"]}
                return self.reply(200, state["stacks"][sid])
            m = re.fullmatch(r"/api/stacks/(\d+)(/start)?", path)
            if m and int(m.group(1)) in state["stacks"]:
                stack = state["stacks"][int(m.group(1))]
                if str(stack["EndpointId"]) != (query.get("endpointId") or [""])[0]:
                    return self.reply(400, {"message": "Invalid query parameter: endpointId"})
                if m.group(2) and method == "POST":
                    stack["Status"] = 1
                    return self.reply(200, stack)
                if method == "DELETE":
                    del state["stacks"][stack["Id"]]
                    return self.reply(204)
                if method == "PUT":
                    body = self.json_body()
                    if body is None or not body.get("StackFileContent"):
                        return self.reply(400, {"message": "Invalid request payload"})
                    problem = compose_problem(body["StackFileContent"], body.get("Env") or [])
                    if problem:
                        return self.reply(500, {"message": "Failed to deploy a stack", "details": problem})
                    stack.update(StackFileContent=body["StackFileContent"], Env=body.get("Env") or [], Status=1,
                                 Prune=body.get("Prune"))
                    return self.reply(200, stack)
            m = re.fullmatch(r"/api/endpoints/(\d+)/docker/containers/json", path)
            if m and method == "GET":
                labels = json.loads((query.get("filters") or ["{}"])[0]).get("label", [])
                found = [c for s in state["stacks"].values() if s["EndpointId"] == int(m.group(1))
                         for c in containers(s)]
                found = [c for c in found if all("=" in lbl and c["Labels"].get(lbl.split("=", 1)[0]) ==
                                                 lbl.split("=", 1)[1] for lbl in labels)]
                return self.reply(200, found)
            return self.reply(404, {"message": "Not found"})

    serve_api(Api, cert, key)


# -- the lab -----------------------------------------------------------------------------------
class StacksLab(ScriptLab):
    def deploy(self, topo, secret: str = SECRET, *args: str, **env: str) -> subprocess.CompletedProcess:
        """Push the step's files (as phoenix-apply would) and run its script."""
        s, agent = grafana(topo)
        self.lay(st.stack_files(topo, s, agent, {"grafanaAdminPassword": secret}, AGENT_VM))
        return self.run(topo, *args, **env)

    def run(self, topo, *args: str, **env: str) -> subprocess.CompletedProcess:
        s, agent = grafana(topo)
        script = Path(self.remap(st.script_path(s, agent)))
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=self.env(**env),
                              timeout=120)

    def calls_since(self, mark: int) -> list[str]:
        return self.state()["log"][mark:]


@pytest.fixture(scope="module")
def slab(tmp_path_factory):
    require_isolated()
    require_tools("curl", "jq", "bash")
    topo = topo_with()
    root = tmp_path_factory.mktemp("stacks-lab")
    lab = StacksLab(root, topo)
    # Portainer knows the agent as the workloads tier registered it (and one other environment).
    endpoints = [{"Id": 3, "Name": "other", "URL": "tcp://10.20.0.99:9001", "Type": 2},
                 {"Id": 7, "Name": "agent-1", "URL": wl.agent_url(topo, topo.lab.guest("agent-1")), "Type": 2}]
    procs = Processes()
    try:
        lab.start_portainer(procs, __file__, PORTAINER_PASSWORD, json.dumps(endpoints))
        yield lab
    finally:
        procs.stop_all()


def test_deploy_creates_the_stack_on_the_agents_environment(slab):
    out = slab.deploy(slab.topo)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "created stack phoenix-grafana on agent-1" in out.stdout and "stack phoenix-grafana runs" in out.stdout
    [stack] = slab.state()["stacks"]
    s, agent = grafana(slab.topo)
    assert stack["Name"] == "phoenix-grafana" and stack["EndpointId"] == 7      # agent-1's environment
    assert stack["StackFileContent"] == st.compose_text(slab.topo, s, agent)
    assert {"name": "GF_SECURITY_ADMIN_PASSWORD", "value": SECRET} in stack["Env"]
    assert "POST /api/stacks/create/standalone/string?endpointId=7 application/json" in slab.state()["log"]
    assert "--max-time\x00900\x00" in slab.argv()          # Portainer pulls the images before it answers


def test_a_second_run_leaves_the_stack_alone(slab):
    mark = len(slab.state()["log"])
    out = slab.deploy(slab.topo)
    assert out.returncode == 0, out.stderr
    assert "is up to date" in out.stdout
    assert not [c for c in slab.calls_since(mark) if c.startswith(("POST /api/stacks", "PUT", "DELETE"))]


def test_a_changed_compose_file_updates_the_stack_in_place(slab):
    def new_tag(raw):
        next(s for s in raw["services"] if s["name"] == "grafana")["compose"]["image"] = "grafana/grafana-oss:11.3.2"
    changed = topo_with(new_tag)
    [before] = slab.state()["stacks"]
    mark = len(slab.state()["log"])
    out = slab.deploy(changed)
    assert out.returncode == 0, out.stderr
    assert "updated stack phoenix-grafana on agent-1" in out.stdout
    [after] = slab.state()["stacks"]
    assert after["Id"] == before["Id"] and "grafana/grafana-oss:11.3.2" in after["StackFileContent"]
    assert after["Prune"] is True
    assert f"PUT /api/stacks/{before['Id']}?endpointId=7 application/json" in slab.calls_since(mark)
    slab.topo = changed


def test_a_rotated_secret_updates_the_stack_and_a_stopped_one_is_started(slab):
    out = slab.deploy(slab.topo, NEW_SECRET)
    assert out.returncode == 0 and "updated stack" in out.stdout, out.stderr
    [stack] = slab.state()["stacks"]
    assert {"name": "GF_SECURITY_ADMIN_PASSWORD", "value": NEW_SECRET} in stack["Env"]
    slab.get(f"/_stop/{stack['Id']}")
    out = slab.deploy(slab.topo, NEW_SECRET)
    assert out.returncode == 0 and "started stack" in out.stdout, out.stderr
    assert slab.state()["stacks"][0]["Status"] == 1


def test_a_stack_whose_containers_do_not_run_fails_the_step_with_their_states(slab):
    def crashing(raw):
        next(s for s in raw["services"] if s["name"] == "grafana")["compose"]["image"] = "example/crashloop:1.0"
    out = slab.deploy(topo_with(crashing), NEW_SECRET, PHOENIX_START_WAIT="2")
    assert out.returncode != 0
    assert "its 2 container(s) are not running after 2 s (app: restarting, tls: running)" in out.stderr
    assert slab.deploy(slab.topo, NEW_SECRET).returncode == 0          # the previous version back


def test_portainer_refusing_a_compose_file_fails_with_its_message(slab):
    s, agent = grafana(slab.topo)
    slab.lay(st.stack_files(slab.topo, s, agent, {"grafanaAdminPassword": NEW_SECRET}, AGENT_VM))
    request = Path(slab.remap(st.request_path(s, agent)))
    body = json.loads(request.read_text())
    body["Env"] = [e for e in body["Env"] if e["name"] != "GF_SECURITY_ADMIN_PASSWORD"]   # an unset ${VAR}
    request.write_text(json.dumps(body))
    out = slab.run(slab.topo)
    assert out.returncode != 0
    assert "Portainer refused to update stack phoenix-grafana on agent-1" in out.stderr
    assert "GF_SECURITY_ADMIN_PASSWORD" in out.stderr


def test_an_unregistered_agent_is_named(slab):
    def moved(raw):
        next(g for g in raw["guests"] if g["name"] == "agent-1")["address"] = "10.20.0.98"
    out = slab.deploy(topo_with(moved), NEW_SECRET, PHOENIX_REGISTRATION_WAIT="0")
    assert out.returncode != 0
    assert "agent agent-1 is not registered in Portainer as environment tcp://10.20.0.98:9001" in out.stderr


def test_delete_removes_the_stack_and_its_request_and_is_safe_twice(slab):
    s, agent = grafana(slab.topo)
    slab.lay(st.stack_files(slab.topo, s, agent, {"grafanaAdminPassword": NEW_SECRET}, AGENT_VM))
    [stack] = slab.state()["stacks"]
    mark = len(slab.state()["log"])
    out = slab.run(slab.topo, "delete")
    assert out.returncode == 0 and "removed stack phoenix-grafana from agent-1" in out.stdout, out.stderr
    assert slab.state()["stacks"] == []
    assert f"DELETE /api/stacks/{stack['Id']}?endpointId=7" in slab.calls_since(mark)
    assert not Path(slab.remap(st.request_path(s, agent))).exists()    # no secret left behind
    out = slab.run(slab.topo, "delete")
    assert out.returncode == 0 and "nothing to remove" in out.stdout


def test_no_secret_or_token_was_ever_on_a_command_line(slab):
    argv = slab.argv()
    assert argv.count("curl\0") >= 20                                   # every call went through the wrapper
    for value in (SECRET, NEW_SECRET, PORTAINER_PASSWORD, "Bearer"):
        assert value not in argv


# -- the TLS sidecar, served by real nginx -----------------------------------------------------
BACKEND_PORT = 13000


def backend() -> None:  # pragma: no cover - child process
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class App(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"path": self.path, "host": self.headers.get("Host"),
                               "proto": self.headers.get("X-Forwarded-Proto")}).encode()
            self.send_response(200 if self.path == "/api/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer(("127.0.0.1", BACKEND_PORT), App).serve_forever()


def https_get(port: int, name: str, path: str, cafile: Path) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body.strip() else {}


def test_the_sidecar_serves_the_catalog_port_with_the_agents_certificate(tmp_path, procs):
    require_isolated()
    require_tools("nginx")
    topo = topo_with()
    s, agent = grafana(topo)
    agent_ca = TestCA("agent test root")
    ca = agent_ca.write_cert(tmp_path / "agent-root.crt")
    cert, key = save(agent_ca.issue([topo.service_fqdn(s), topo.guest_fqdn(agent)]), tmp_path / "agent.crt",
                     tmp_path / "agent.key")
    conf = st.sidecar_config(s, upstream=f"127.0.0.1:{BACKEND_PORT}", resolver="127.0.0.1", cert=str(cert),
                             key=str(key))
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "sidecar.conf").write_text(conf)
    temps = "\n".join(f"    {d}_temp_path {prefix}/{d}-temp;" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(
        f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log {prefix}/access.log;\n{temps}\n    include {prefix}/sidecar.conf;\n}}\n")
    check = subprocess.run(["nginx", "-t", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    procs.start([sys.executable, __file__, "backend"])
    procs.start(["nginx", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"])
    wait_port("127.0.0.1", BACKEND_PORT, 10)
    wait_port("127.0.0.1", s.port, 10)
    for name in (topo.service_fqdn(s), topo.guest_fqdn(agent)):   # what the mesh verifies, and the agent's name
        status, body = https_get(s.port, name, s.health, ca)
        assert status == 200 and body == {"path": "/api/health", "host": name, "proto": "https"}
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(s.port, "other.lab.internal", s.health, ca)           # a name the certificate does not carry
    other_root = TestCA("other test root").write_cert(tmp_path / "other-root.crt")
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(s.port, topo.service_fqdn(s), s.health, other_root)   # verified against the right root only


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:6])
    elif sys.argv[1] == "backend":
        backend()
