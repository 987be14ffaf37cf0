"""Compose stacks for real: the deploy script against the Portainer stand-in
(``portainer_standin``: Portainer 2.21.4's stacks handlers and what its docker compose does on
the agent, cited there), and the TLS sidecar's config served by real nginx.

Run only through the namespace wrapper (loopback only):

    bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_stacks_lab.py

The agent is registered by the plan's own registration script (Portainer asks the agent
first); each deploy writes ``stack.env`` as Portainer does and "runs" compose on the agent's
engine in the stand-in: interpolation through compose-go's dotenv parser (ported), orphans
left running, published ports held. What runs is the plan's own bash script with real bash,
curl and jq; guest paths are remapped into a temporary directory, and ``curl`` and ``jq`` are
wrapped to record every command line they get (no secret or token may appear there).
"""

from __future__ import annotations

import json
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
from portainer_standin import ScriptLab, dotenv
from test_stacks_render import add_grafana
from testpki import TestCA, save

pytestmark = pytest.mark.lab

PORTAINER_PASSWORD = "portainer-admin-pass-1234"
#: what dotenv would mangle unquoted: `$`, ` #`, quotes, a backslash, trailing space
SECRET = "gr@fana $ecret #1 \"q\" 'x' \\ end "
NEW_SECRET = "grafana-admin-Rotated-9902"
AGENT_VM = "201"
APP, SIDECAR = "phoenix-grafana-app-1", "phoenix-grafana-tls"


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


def plain_http(raw):
    next(s for s in raw["services"] if s["name"] == "grafana")["protocol"] = "http"


class StacksLab(ScriptLab):
    def deploy(self, topo, secret: str = SECRET, *args: str, **env: str) -> subprocess.CompletedProcess:
        """Push the step's files (as phoenix-apply would) and run its script."""
        s, agent = grafana(topo)
        self.lay(st.stack_files(topo, s, agent, {"grafanaAdminPassword": secret}, AGENT_VM))
        return self.run_step(topo, *args, **env)

    def run_step(self, topo, *args: str, **env: str) -> subprocess.CompletedProcess:
        s, agent = grafana(topo)
        script = Path(self.remap(st.script_path(s, agent)))
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=self.env(**env),
                              timeout=120, check=False)

    def calls_since(self, mark: int) -> list[str]:
        return self.state()["log"][mark:]

    def containers(self) -> dict[str, dict]:
        """The agent VM's containers, by name (the engine the agent's URL points at)."""
        agent = self.topo.lab.guest("agent-1")
        return {c["Names"][0][1:]: c for c in self.state()["engines"].get(f"{agent.address}:9001", [])}

    def env_of(self, container: str) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.containers()[container]["Env"])

    def token(self) -> str:
        status, body = self.portainer.call("POST", "/api/auth", {"Username": "admin", "Password": PORTAINER_PASSWORD})
        assert status == 200, body
        return body["jwt"]


@pytest.fixture(scope="module")
def slab(tmp_path_factory):
    require_isolated()
    require_tools("curl", "jq", "bash", "flock")
    topo = topo_with()
    lab = StacksLab(tmp_path_factory.mktemp("stacks-lab"), topo)
    procs = Processes()
    try:
        # Portainer knows one other environment; agent-1 is registered by the plan's own script.
        lab.start_portainer(procs, PORTAINER_PASSWORD,
                            endpoints=[{"Id": 3, "Name": "other", "URL": "tcp://10.20.0.99:9001", "Type": 2,
                                        "TLSConfig": {"TLS": True, "TLSSkipVerify": True}}])
        lab.start_agent(procs, topo.lab.guest("agent-1"))
        registered = lab.run(wl.registration_script(topo, topo.lab.guest("agent-1")))
        assert registered.returncode == 0, registered.stderr
        yield lab
    finally:
        procs.stop_all()


def environment_id(slab) -> int:
    return next(e["Id"] for e in slab.state()["endpoints"] if e["Name"] == "agent-1")


def test_deploy_creates_the_stack_and_the_secret_reaches_the_container_byte_for_byte(slab):
    out = slab.deploy(slab.topo)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "created stack phoenix-grafana on agent-1" in out.stdout and "stack phoenix-grafana runs" in out.stdout
    [stack] = slab.state()["stacks"]
    s, agent = grafana(slab.topo)
    assert stack["Name"] == "phoenix-grafana" and stack["EndpointId"] == environment_id(slab) != 3
    assert stack["_file"] == st.compose_text(slab.topo, s, agent)
    # Portainer wrote stack.env unquoted, name=value; compose read it back exactly
    line = f"GF_SECURITY_ADMIN_PASSWORD={st.dotenv_value(SECRET)}\n"
    assert line in stack["_stack_env"]
    assert slab.env_of(APP)["GF_SECURITY_ADMIN_PASSWORD"] == SECRET
    # what the value unquoted (as Phoenix sent it before) would have given the container
    assert dotenv.parse(f"K={SECRET}\n") == {"K": "gr@fana "}
    assert f"POST /api/stacks/create/standalone/string?endpointId={environment_id(slab)} application/json -> 200" \
        in slab.state()["log"]
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
    app_before = slab.containers()[APP]["Id"]
    mark = len(slab.state()["log"])
    out = slab.deploy(changed)
    assert out.returncode == 0, out.stderr
    assert "updated stack phoenix-grafana on agent-1" in out.stdout
    [after] = slab.state()["stacks"]
    assert after["Id"] == before["Id"] and "grafana/grafana-oss:11.3.2" in after["_file"]
    app = slab.containers()[APP]
    assert app["Image"] == "grafana/grafana-oss:11.3.2" and app["Id"] != app_before
    assert f"PUT /api/stacks/{before['Id']}?endpointId={environment_id(slab)} application/json -> 200" \
        in slab.calls_since(mark)
    slab.topo = changed


def test_a_service_removed_from_the_stack_stops_and_frees_its_port(slab):
    """https -> http: the TLS sidecar leaves the compose file and the app publishes the port
    itself. Portainer's update alone would leave the sidecar running on that port (``up -d``
    without --remove-orphans) and fail the app's; the deploy stops the stack first."""
    http = topo_with(plain_http)
    out = slab.deploy(http)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "stopped stack phoenix-grafana on agent-1: its service(s) tls are no longer in the compose file" \
        in out.stdout
    containers = slab.containers()
    assert SIDECAR not in containers                                          # its container is gone
    assert [p["PublicPort"] for p in containers[APP]["Ports"]] == [3443]      # the port is the app's now
    assert slab.env_of(APP)["GF_SECURITY_ADMIN_PASSWORD"] == SECRET
    # and back: the sidecar returns, the app stops publishing
    out = slab.deploy(slab.topo)
    assert out.returncode == 0, out.stderr
    assert "stopped" not in out.stdout and set(slab.containers()) == {APP, SIDECAR}


def test_the_stand_in_keeps_an_orphan_running_as_portainer_does(slab):
    """What the deploy above works around: Portainer 2.21's update ignores Prune and leaves the
    sidecar holding the port, so compose fails and Portainer takes the stack down."""
    http_doc = topo_with(plain_http)
    s, agent = grafana(http_doc)
    body = st.request_body(http_doc, s, agent, {"grafanaAdminPassword": SECRET}, AGENT_VM)
    [stack] = slab.state()["stacks"]
    token = slab.token()
    status, answer = slab.portainer.call(
        "PUT", f"/api/stacks/{stack['Id']}?endpointId={environment_id(slab)}",
        {"StackFileContent": body["StackFileContent"], "Env": body["Env"], "Prune": True}, token)
    assert status == 500 and "port is already allocated" in answer["message"]
    assert slab.containers() == {}                                 # the failed up was followed by down
    assert slab.state()["stacks"][0]["_file"] == stack["_file"]    # the stored stack is unchanged
    assert "Found orphan containers" in " ".join(slab.state()["warnings"])
    # active in Portainer, no containers on the agent: the next deploy brings them back
    out = slab.deploy(slab.topo)
    assert out.returncode == 0, out.stderr
    assert "redeployed stack phoenix-grafana on agent-1: service(s) app tls had no container" in out.stdout
    assert set(slab.containers()) == {APP, SIDECAR}


def test_a_rotated_secret_updates_the_stack_and_a_stopped_one_is_started(slab):
    out = slab.deploy(slab.topo, NEW_SECRET)
    assert out.returncode == 0 and "updated stack" in out.stdout, out.stderr
    [stack] = slab.state()["stacks"]
    assert {"name": "GF_SECURITY_ADMIN_PASSWORD", "value": NEW_SECRET} in stack["Env"]
    assert slab.env_of(APP)["GF_SECURITY_ADMIN_PASSWORD"] == NEW_SECRET
    status, _ = slab.portainer.call("POST", f"/api/stacks/{stack['Id']}/stop?endpointId={environment_id(slab)}",
                                    token=slab.token())
    assert status == 200 and slab.containers() == {}
    out = slab.deploy(slab.topo, NEW_SECRET)
    assert out.returncode == 0 and "started stack" in out.stdout, out.stderr
    assert slab.state()["stacks"][0]["Status"] == 1 and set(slab.containers()) == {APP, SIDECAR}


def test_a_stack_whose_containers_do_not_run_fails_the_step_with_their_states(slab):
    def crashing(raw):
        next(s for s in raw["services"] if s["name"] == "grafana")["compose"]["image"] = "example/crashloop:1.0"
    out = slab.deploy(topo_with(crashing), NEW_SECRET, PHOENIX_START_WAIT="2")
    assert out.returncode != 0
    assert "its 2 container(s) are not running after 2 s (app: restarting, tls: running)" in out.stderr
    assert slab.deploy(slab.topo, NEW_SECRET).returncode == 0          # the previous version back


def test_a_port_taken_on_the_agent_fails_the_deploy_with_portainers_message(slab):
    agent = slab.topo.lab.guest("agent-1")
    [stack] = slab.state()["stacks"]          # while the stack is stopped, someone takes its port
    slab.portainer.call("POST", f"/api/stacks/{stack['Id']}/stop?endpointId={environment_id(slab)}", token=slab.token())
    slab.portainer.run_by_hand(f"{agent.address}:9001", "someones-nginx", "nginx:1.27", [3443])
    out = slab.deploy(slab.topo, "another-rotation-5512")
    assert out.returncode != 0
    assert ("Portainer could not update stack phoenix-grafana on agent-1: HTTP 500: failed to deploy a stack"
            in out.stderr)
    assert "Bind for 0.0.0.0:3443 failed: port is already allocated" in out.stderr
    assert "phoenix-grafana is not running until a deploy succeeds" in out.stderr
    assert set(slab.containers()) == {"someones-nginx"}               # Portainer took the stack down
    slab.portainer.remove_by_hand(f"{agent.address}:9001", "someones-nginx")
    out = slab.deploy(slab.topo, NEW_SECRET)
    assert out.returncode == 0, out.stderr


def test_an_unregistered_agent_is_named(slab):
    def moved(raw):
        next(g for g in raw["guests"] if g["name"] == "agent-1")["address"] = "10.20.0.98"
    out = slab.deploy(topo_with(moved), NEW_SECRET, PHOENIX_REGISTRATION_WAIT="0")
    assert out.returncode != 0
    assert "agent agent-1 is not registered in Portainer as environment tcp://10.20.0.98:9001" in out.stderr


def test_delete_removes_the_stack_its_containers_and_its_request_and_is_safe_twice(slab):
    s, agent = grafana(slab.topo)
    slab.lay(st.stack_files(slab.topo, s, agent, {"grafanaAdminPassword": NEW_SECRET}, AGENT_VM))
    [stack] = slab.state()["stacks"]
    mark = len(slab.state()["log"])
    out = slab.run_step(slab.topo, "delete")
    assert out.returncode == 0 and "removed stack phoenix-grafana from agent-1" in out.stdout, out.stderr
    assert slab.state()["stacks"] == [] and slab.containers() == {}
    assert f"DELETE /api/stacks/{stack['Id']}?endpointId={environment_id(slab)}  -> 204" in slab.calls_since(mark)
    assert not Path(slab.remap(st.request_path(s, agent))).exists()    # no secret left behind
    out = slab.run_step(slab.topo, "delete")
    assert out.returncode == 0 and "nothing to remove" in out.stdout


def test_a_stack_created_meanwhile_is_taken_as_it_is(slab):
    """Another run creates the stack between this run's look-up and its create: Portainer
    answers 409 (create_compose_stack.go, stackExistsError); the deploy checks the existing one."""
    s, agent = grafana(slab.topo)
    with slab.another_run_before("/stacks/create/standalone/string", st.deploy_script(slab.topo, s, agent)) as ran:
        out = slab.deploy(slab.topo, NEW_SECRET)
    assert ran.exists() and out.returncode == 0, out.stderr
    assert "stack phoenix-grafana on agent-1 is up to date" in out.stdout
    assert any("/api/stacks/create/standalone/string" in line and line.endswith("-> 409")
               for line in slab.state()["log"])
    assert len(slab.state()["stacks"]) == 1 and set(slab.containers()) == {APP, SIDECAR}


def test_the_steps_logged_in_once_and_no_secret_or_token_was_on_a_command_line(slab):
    logins = [e for e in slab.state()["logins"] if e["status"] == 200]
    assert len(logins) <= 6            # the registration's, and the test's own to play an operator
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
    with (socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
          ctx.wrap_socket(sock, server_hostname=name) as tls):
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
    # what the agent's certificate step asks for: its guest's name (the service's resolves to the mesh)
    cert, key = save(agent_ca.issue([topo.guest_fqdn(agent)]), tmp_path / "agent.crt", tmp_path / "agent.key")
    conf = st.sidecar_config(s, upstream=f"127.0.0.1:{BACKEND_PORT}", resolver="127.0.0.1", cert=str(cert),
                             key=str(key))
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "sidecar.conf").write_text(conf)
    temps = "\n".join(f"    {d}_temp_path {prefix}/{d}-temp;" for d in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                        "scgi"))
    (prefix / "nginx.conf").write_text(
        f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log {prefix}/access.log;\n{temps}\n    include {prefix}/sidecar.conf;\n}}\n")
    check = subprocess.run(["nginx", "-t", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    procs.start([sys.executable, __file__, "backend"])
    procs.start(["nginx", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"])
    wait_port("127.0.0.1", BACKEND_PORT, 10)
    wait_port("127.0.0.1", s.port, 10)
    name = topo.replica_tls_name(s, agent.name)                    # what the mesh verifies: the agent's name
    status, body = https_get(s.port, name, s.health, ca)
    assert status == 200 and body == {"path": "/api/health", "host": name, "proto": "https"}
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(s.port, "other.lab.internal", s.health, ca)           # a name the certificate does not carry
    other_root = TestCA("other test root").write_cert(tmp_path / "other-root.crt")
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(s.port, name, s.health, other_root)                  # verified against the right root only


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        backend()
