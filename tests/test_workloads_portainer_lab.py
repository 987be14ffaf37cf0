"""The Portainer scripts (server password, agent registration) run for real against a stand-in.

Run only through the namespace wrapper (loopback only):

    bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_workloads_portainer_lab.py

No Portainer binary or Docker engine is available here, so a small HTTPS server plays
Portainer's API as its documentation describes it (JSON login, multipart form fields to
create an environment and 400 for JSON there, JSON updates, delete). What runs is the
plan's own bash scripts with real bash, curl and jq; their guest paths are remapped into a
temporary directory, ``docker``/``docker-compose`` are stubs, and ``curl``/``jq`` are
wrapped to record every command line they get (no password or token may appear there).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import edited
from lab import Processes, require_isolated, require_tools
from phoenix.model import parse_lab
from phoenix.render import workloads as wl
from phoenix.stackfile import expand_catalog
from phoenix.topology import build
from portainer_standin import PortainerApi, ScriptLab
from portainer_standin import serve as serve_api

pytestmark = pytest.mark.lab

PASSWORD = "first-password-1234"


def topo_with(edit=None):
    stack = edited("dev", edit or (lambda raw: None))
    return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))


# -- the stand-in ------------------------------------------------------------------------------
def serve(cert: str, key: str, password: str) -> None:  # pragma: no cover - runs in a child process
    import email.parser
    import re

    state = {"users": {1: {"Id": 1, "Username": "admin", "Role": 1, "password": password}},
             "endpoints": {}, "log": [], "next": 1}

    class Api(PortainerApi):
        def handle_any(self, method):
            path = self.path.split("?")[0]
            state["log"].append(f"{method} {path} {self.headers.get('Content-Type', '').split(';')[0]}")
            if path == "/_state":
                return self.reply(200, {"users": list(state["users"].values()),
                                        "endpoints": list(state["endpoints"].values()), "log": state["log"]})
            if path == "/api/system/status":
                return self.reply(200, {"Version": "2.21.4"})
            if path == "/api/auth" and method == "POST":
                body = self.json_body()
                if not body:
                    return self.reply(400, {"message": "Invalid request payload"})
                user = next((u for u in state["users"].values() if u["Username"] == body.get("Username")), None)
                if not user or user["password"] != body.get("Password"):
                    return self.reply(422, {"message": "Invalid credentials"})
                return self.logged_in()
            if not self.authed():
                return
            if path == "/api/users" and method == "GET":
                return self.reply(200, [{k: v for k, v in u.items() if k != "password"}
                                        for u in state["users"].values()])
            m = re.fullmatch(r"/api/users/(\d+)(/passwd)?", path)
            if m and method == "PUT":
                user, body = state["users"][int(m.group(1))], self.json_body()
                if body is None:
                    return self.reply(400, {"message": "Invalid request payload"})
                if m.group(2):
                    if body.get("password") != user["password"] or len(body.get("newPassword", "")) < 12:
                        return self.reply(403, {"message": "Specified password do not match actual password"})
                    user["password"] = body["newPassword"]
                else:
                    user["Username"] = body["username"]
                return self.reply(200, {k: v for k, v in user.items() if k != "password"})
            if path == "/api/endpoints" and method == "GET":
                return self.reply(200, list(state["endpoints"].values()))
            if path == "/api/endpoints" and method == "POST":
                ctype = self.headers.get("Content-Type") or ""
                if not ctype.startswith("multipart/form-data"):
                    return self.reply(400, {"message": "Invalid request payload"})
                msg = email.parser.BytesParser().parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + self.body())
                form = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True).decode()
                        for p in msg.get_payload()}
                if form.get("EndpointCreationType") != "2" or not form.get("Name") or not form.get("URL"):
                    return self.reply(400, {"message": f"Invalid form {form}"})
                url = form["URL"] if form["URL"].startswith("tcp://") else "tcp://" + form["URL"]
                eid = state["next"]
                state["next"] += 1
                state["endpoints"][eid] = {"Id": eid, "Name": form["Name"], "URL": url, "Type": 2,
                                           "GroupId": int(form.get("GroupID", 1)), "form": form,
                                           "TLSConfig": {"TLS": form.get("TLS") == "true",
                                                         "TLSSkipVerify": form.get("TLSSkipVerify") == "true"}}
                return self.reply(200, state["endpoints"][eid])
            m = re.fullmatch(r"/api/endpoints/(\d+)", path)
            if m and int(m.group(1)) in state["endpoints"]:
                ep = state["endpoints"][int(m.group(1))]
                if method == "DELETE":
                    del state["endpoints"][ep["Id"]]
                    return self.reply(204)
                if method == "PUT":
                    body = self.json_body()
                    if body is None:
                        return self.reply(400, {"message": "Invalid request payload"})
                    ep.update(Name=body.get("Name", ep["Name"]), URL=body.get("URL", ep["URL"]))
                    ep["TLSConfig"]["TLS"] = body.get("TLS", ep["TLSConfig"]["TLS"])
                    return self.reply(200, ep)
            return self.reply(404, {"message": "Not found"})

    serve_api(Api, cert, key)


# -- the lab -----------------------------------------------------------------------------------
class PortainerLab(ScriptLab):
    def __init__(self, root: Path, topo):
        super().__init__(root, topo)
        self.exe("docker", 'case "$1" in info) exit 0;; *) exit 1;; esac\n')   # `docker compose` absent
        self.exe("docker-compose", f'echo "docker-compose $*" >> {root}/compose.log\n')

    def run(self, name: str, text: str, *args: str) -> subprocess.CompletedProcess:
        path = self.root / f"{name}.sh"
        path.write_text(self.remap(text))
        return subprocess.run(["bash", str(path), *args], capture_output=True, text=True, env=self.env(),
                              timeout=120)


@pytest.fixture(scope="module")
def plab(tmp_path_factory):
    require_isolated()
    require_tools("curl", "jq", "bash")
    lab = PortainerLab(tmp_path_factory.mktemp("portainer-lab"), topo_with())
    procs = Processes()
    try:
        lab.start_portainer(procs, __file__, PASSWORD)
        yield lab
    finally:
        procs.stop_all()


def test_server_script_keeps_the_first_start_password_and_changes_it_when_the_stack_does(plab):
    topo = plab.topo
    out = plab.run("server", wl.portainer_server_script(topo))
    assert out.returncode == 0, out.stderr
    assert "the admin password is the stack's" in out.stdout
    assert "up -d --remove-orphans" in (plab.root / "compose.log").read_text()
    current = plab.root / "var/lib/phoenix/portainer/admin-password.current"
    assert current.read_text() == PASSWORD and oct(current.stat().st_mode & 0o777) == "0o600"
    # the stack's password changes: the script changes Portainer's with the previous one
    new = "second-password-5678"
    plab.lay([f for f in wl.portainer_server_files(topo, new, "agent-secret-for-the-lab")
              if f.path.endswith("admin-password")])
    out = plab.run("server", wl.portainer_server_script(topo))
    assert out.returncode == 0, out.stderr
    assert [u["password"] for u in plab.state()["users"]] == [new]
    assert current.read_text() == new
    out = plab.run("server", wl.portainer_server_script(topo))          # and again: nothing to do
    assert out.returncode == 0 and "PUT" not in " ".join(plab.state()["log"][-3:])
    assert new not in plab.argv() and PASSWORD not in plab.argv()


def test_registration_creates_leaves_alone_updates_and_deletes(plab):
    topo, agent = plab.topo, plab.topo.agents[0]
    script = wl.registration_script(topo, agent)
    out = plab.run("register", script)
    assert out.returncode == 0, out.stderr + out.stdout
    [ep] = plab.state()["endpoints"]
    assert ep["Name"] == agent.name and ep["URL"] == f"tcp://{agent.address}:9001"
    assert ep["form"]["EndpointCreationType"] == "2" and ep["TLSConfig"] == {"TLS": True, "TLSSkipVerify": True}
    assert "POST /api/endpoints multipart/form-data" in plab.state()["log"]
    # a second run leaves it alone
    log_before = len(plab.state()["log"])
    assert plab.run("register", script).returncode == 0
    assert not [line for line in plab.state()["log"][log_before:] if line.startswith(("POST /api/endpoints", "PUT"))]
    assert len(plab.state()["endpoints"]) == 1
    # the agent moves: the environment is updated in place
    moved = topo_with(lambda raw: next(g for g in raw["guests"] if g["name"] == agent.name)
                      .update(address="10.20.0.99"))
    out = plab.run("register", wl.registration_script(moved, moved.agents[0]))
    assert out.returncode == 0, out.stderr
    [ep2] = plab.state()["endpoints"]
    assert ep2["Id"] == ep["Id"] and ep2["URL"] == "tcp://10.20.0.99:9001"
    # destroy: removed, and a second delete is a no-op
    assert plab.run("register", script, "delete").returncode == 0
    assert plab.state()["endpoints"] == []
    out = plab.run("register", script, "delete")
    assert out.returncode == 0 and "removed" not in out.stdout
    assert plab.argv().count("curl\0") >= 6                     # every call went through the wrapper
    assert "Bearer" not in plab.argv()                          # the token never on a command line


def test_registration_fails_clearly_with_a_wrong_password(plab):
    plab.lay([f for f in wl.portainer_server_files(plab.topo, "not-the-password-0", "x")
              if f.path.endswith("admin-password")])
    try:
        out = plab.run("register", wl.registration_script(plab.topo, plab.topo.agents[0]))
        assert out.returncode != 0 and "cannot log in to Portainer as admin" in out.stderr
    finally:
        current = (plab.root / "var/lib/phoenix/portainer/admin-password.current").read_text()
        plab.lay([f for f in wl.portainer_server_files(plab.topo, current, "x") if f.path.endswith("admin-password")])


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:5])
