"""The Portainer scripts (server password, agent registration) run for real against the
Portainer stand-in (``portainer_standin``: Portainer 2.21.4's handlers, cited there) and agents
that answer as the Portainer agent does.

Run only through the namespace wrapper (loopback only):

    bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_workloads_portainer_lab.py

What runs is the plan's own bash scripts with real bash, curl, jq and flock; their guest paths
are remapped into a temporary directory, ``docker``/``docker-compose`` are stubs, and
``curl``/``jq`` are wrapped to record every command line they get (no password or token may
appear there).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import edited
from lab import Processes, add_loopback_addresses, require_isolated, require_tools
from phoenix.model import parse_lab
from phoenix.render import workloads as wl
from phoenix.stackfile import expand_catalog
from phoenix.topology import build
from portainer_standin import ScriptLab

pytestmark = pytest.mark.lab

PASSWORD = "first-password-1234"


def topo_with(edit=None):
    stack = edited("dev", edit or (lambda raw: None))
    return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))


class PortainerLab(ScriptLab):
    def __init__(self, root: Path, topo):
        super().__init__(root, topo)
        self.exe("docker", 'case "$1" in info) exit 0;; *) exit 1;; esac\n')   # `docker compose` absent
        self.exe("docker-compose", f'echo "docker-compose $*" >> {root}/compose.log\n')

    def set_password(self, password: str) -> None:
        """The stack's admin password file, as the server step pushes it."""
        self.lay([f for f in wl.portainer_server_files(self.topo, password, "x") if f.path.endswith("admin-password")])

    def current(self) -> str:
        """The admin password the server step last made Portainer's."""
        return (self.root / "var/lib/phoenix/portainer/admin-password.current").read_text()

    def logins(self) -> list[dict]:
        return self.state()["logins"]

    def environments(self) -> list[dict]:
        return self.state()["endpoints"]

    def delete_environments(self) -> None:
        for ep in self.environments():
            assert self.run(wl.registration_script(self.topo, self.topo.lab.guest(ep["Name"])),
                            "delete").returncode == 0


@pytest.fixture(scope="module")
def plab(tmp_path_factory):
    require_isolated()
    require_tools("curl", "jq", "bash", "flock")
    lab = PortainerLab(tmp_path_factory.mktemp("portainer-lab"), topo_with())
    procs = Processes()
    try:
        lab.start_portainer(procs, PASSWORD)
        lab.start_agent(procs, lab.topo.agents[0])
        yield lab
    finally:
        procs.stop_all()


# -- the server and its admin password -------------------------------------------------------
def test_server_script_keeps_the_first_start_password_and_changes_it_when_the_stack_does(plab):
    topo = plab.topo
    out = plab.run(wl.portainer_server_script(topo))
    assert out.returncode == 0, out.stderr
    assert "the admin password is the stack's" in out.stdout
    assert "up -d --remove-orphans" in (plab.root / "compose.log").read_text()
    current = plab.root / "var/lib/phoenix/portainer/admin-password.current"
    assert current.read_text() == PASSWORD and oct(current.stat().st_mode & 0o777) == "0o600"
    # the stack's password changes: the script changes Portainer's with the previous one
    new = "second-password-5678"
    plab.set_password(new)
    before = len(plab.logins())
    out = plab.run(wl.portainer_server_script(topo))
    assert out.returncode == 0, out.stderr
    assert [u["password"] for u in plab.state()["users"]] == [new]
    assert current.read_text() == new
    # the new password failed, the previous one logged in, then the new one: three logins
    assert [entry["status"] for entry in plab.logins()[before:]] == [422, 200, 200]
    out = plab.run(wl.portainer_server_script(topo))          # and again: nothing to do
    assert out.returncode == 0 and "PUT" not in " ".join(plab.state()["log"][-3:])
    assert new not in plab.argv() and PASSWORD not in plab.argv()


def test_a_password_portainer_would_refuse_stops_the_server_step_before_portainer_starts(plab):
    compose_log = plab.root / "compose.log"
    runs = compose_log.read_text().count("up -d")
    plab.set_password("short-pw-11")            # 11 bytes: Portainer 2.21 wants 12
    try:
        out = plab.run(wl.portainer_server_script(plab.topo))
        assert out.returncode != 0
        assert "phoenix:portainerAdminPassword has 11 bytes; Portainer 2.21.4 wants at least 12" in out.stderr
        assert compose_log.read_text().count("up -d") == runs          # nothing was started
    finally:
        plab.set_password((plab.root / "var/lib/phoenix/portainer/admin-password.current").read_text())


def test_portainer_itself_refuses_a_short_password_change(plab):
    """What the check above spares the operator: the stand-in refuses as users/user_update_password.go does."""
    status, body = plab.portainer.call("POST", "/api/auth", {"username": "admin", "password": plab.current()})
    assert status == 200                                     # field names in any case, as Go decodes them
    status, answer = plab.portainer.call("PUT", "/api/users/1/passwd",
                                         {"password": plab.current(), "newPassword": "short-pw-11"}, body["jwt"])
    assert (status, answer["message"]) == (400, "Password does not meet the minimum strength requirements")


# -- registration ------------------------------------------------------------------------------
def test_registration_creates_leaves_alone_updates_and_deletes(plab):
    topo, agent = plab.topo, plab.topo.agents[0]
    script = wl.registration_script(topo, agent)
    out = plab.run(script)
    assert out.returncode == 0, out.stderr + out.stdout
    [ep] = plab.environments()
    assert ep["Name"] == agent.name and ep["URL"] == f"tcp://{agent.address}:9001"
    assert ep["Type"] == 2 and ep["TLSConfig"] == {"TLS": True, "TLSSkipVerify": True}
    assert ep["Agent"]["Version"] == "2.21.4"                           # Portainer asked the agent
    assert any(line.startswith("POST /api/endpoints multipart/form-data -> 200") for line in plab.state()["log"])
    # a second run leaves it alone
    log_before = len(plab.state()["log"])
    assert plab.run(script).returncode == 0
    assert not [line for line in plab.state()["log"][log_before:] if line.startswith(("POST /api/endpoints", "PUT"))]
    assert len(plab.environments()) == 1
    # the agent moves: the environment is updated in place (an update does not ask the agent)
    moved = topo_with(lambda raw: next(g for g in raw["guests"] if g["name"] == agent.name)
                      .update(address="10.20.0.99"))
    out = plab.run(wl.registration_script(moved, moved.agents[0]))
    assert out.returncode == 0, out.stderr
    [ep2] = plab.environments()
    assert ep2["Id"] == ep["Id"] and ep2["URL"] == "tcp://10.20.0.99:9001"
    # destroy: removed, and a second delete is a no-op
    assert plab.run(script, "delete").returncode == 0
    assert plab.environments() == []
    out = plab.run(script, "delete")
    assert out.returncode == 0 and "removed" not in out.stdout
    assert "Bearer" not in plab.argv()                          # the token never on a command line


def test_an_agent_that_is_down_is_named_and_nothing_is_registered(plab):
    down = topo_with(lambda raw: next(g for g in raw["guests"] if g["name"] == "agent-1").update(address="10.20.0.97"))
    add_loopback_addresses("10.20.0.97")             # the VM is there; its agent is not
    out = plab.run(wl.registration_script(down, down.agents[0]))
    assert out.returncode != 0
    assert "Portainer cannot reach agent agent-1 at tcp://10.20.0.97:9001, so it does not register it" in out.stderr
    assert "HTTP 500: Unable to get environment type" in out.stderr and "connection refused" in out.stderr
    assert plab.environments() == []


def test_an_agent_with_another_secret_is_refused_with_the_reason(plab):
    procs = Processes()
    other = topo_with(lambda raw: next(g for g in raw["guests"] if g["name"] == "agent-1").update(address="10.20.0.98"))
    try:
        plab.start_agent(procs, other.agents[0], secret="not-portainers-secret")
        out = plab.run(wl.registration_script(other, other.agents[0]))
    finally:
        procs.stop_all()
    assert out.returncode != 0
    assert "agent agent-1 at tcp://10.20.0.98:9001 answers but refuses Portainer" in out.stderr
    assert "(Agent already paired with another Portainer instance)" in out.stderr
    assert "AGENT_SECRET differs" in out.stderr
    assert plab.environments() == []


def test_an_environment_registered_meanwhile_is_taken_as_it_is(plab):
    """Another run registers the agent between this run's look-up and its create: Portainer
    answers 409 (unique_name.go); the script checks the one that exists instead of failing."""
    script = wl.registration_script(plab.topo, plab.topo.agents[0])
    with plab.another_run_before("--form-string", script) as ran:
        out = plab.run(script)
    assert ran.exists() and out.returncode == 0, out.stderr
    assert "environment agent-1 (tcp://10.20.0.31:9001) is registered" in out.stdout
    assert any("POST /api/endpoints multipart/form-data -> 409" in line for line in plab.state()["log"])
    assert len(plab.environments()) == 1
    plab.delete_environments()


def test_portainer_wants_form_fields_and_tls_for_an_agent(plab):
    """Trap 14, as endpoint_create.go has it: JSON is not read (no Name: 400), and without TLS
    Portainer's ping does not trust the agent's own certificate (500). The registration sends
    form fields with TLS and TLSSkipVerify; this is why."""
    lib = wl.PORTAINER_API_LIB
    out = plab.run(f""". {lib}
portainer_login
portainer_json POST /endpoints <<<'{{"Name": "agent-1", "EndpointCreationType": 2, "URL": "tcp://10.20.0.31:9001"}}' ||
  echo "json: $(portainer_error)"
portainer_api POST /endpoints --form-string Name=agent-1 --form-string EndpointCreationType=2 \\
  --form-string URL=tcp://10.20.0.31:9001 || echo "no tls: $(portainer_error)"
""")
    assert "json: HTTP 400: Invalid request payload (Invalid environment name)" in out.stdout, out.stderr
    assert "no tls: HTTP 500: Unable to get environment type" in out.stdout
    assert "certificate verify failed" in out.stdout or "failed to verify certificate" in out.stdout
    assert plab.environments() == []


# -- logins: few, one at a time, the ban detected ----------------------------------------------
def test_the_stand_in_bans_an_address_after_ten_logins_in_a_burst_for_an_hour(plab):
    """rate_limiter.go: a bucket of 10 per address; the 11th login in a burst is 403, and so is
    every login after it, right password or not, until the hour has passed."""
    plab.portainer.unban()
    statuses = [plab.portainer.call("POST", "/api/auth", {"Username": "admin", "Password": "wrong-password-0"})[0]
                for _ in range(11)]
    assert statuses == [422] * 10 + [403]
    status, body = plab.portainer.call("POST", "/api/auth", {"Username": "admin", "Password": plab.current()})
    assert status == 403 and body == {"message": "Access denied", "details": "Access denied to resource"}
    plab.portainer.unban()
    assert plab.portainer.call("POST", "/api/auth", {"Username": "admin", "Password": plab.current()})[0] == 200


def test_a_banned_address_is_reported_as_the_ban_not_as_a_wrong_password(plab):
    plab.portainer.unban()
    plab.run(wl.registration_script(plab.topo, plab.topo.agents[0]), "delete")
    (plab.root / "var/lib/phoenix/portainer/session").unlink(missing_ok=True)   # no session to reuse
    for _ in range(11):
        plab.portainer.call("POST", "/api/auth", {"Username": "admin", "Password": "wrong-password-0"})
    try:
        out = plab.run(wl.registration_script(plab.topo, plab.topo.agents[0]))
        assert out.returncode != 0
        assert "Portainer refuses logins from this VM (it answered HTTP 403: Access denied" in out.stderr
        assert "bans an address for an hour" in out.stderr and "cannot log in" not in out.stderr
        server = plab.run(wl.portainer_server_script(plab.topo))
        assert server.returncode != 0 and "Portainer refuses logins from this VM" in server.stderr
    finally:
        plab.portainer.unban()


def test_many_steps_at_once_log_in_once_and_share_the_session(plab):
    """`pulumi up` starts every registration and stack deploy side by side; they log in once,
    one at a time, and reuse that session (twelve runs here: more than the ban allows)."""
    plab.portainer.unban()
    (plab.root / "var/lib/phoenix/portainer/session").unlink(missing_ok=True)
    before = len(plab.logins())
    script = wl.registration_script(plab.topo, plab.topo.agents[0])
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: plab.run(script), range(12)))
    assert [r.returncode for r in results] == [0] * 12, [r.stderr for r in results if r.returncode]
    assert [entry["status"] for entry in plab.logins()[before:]] == [200]
    assert len(plab.environments()) == 1
    session = plab.root / "var/lib/phoenix/portainer/session"
    assert oct(session.stat().st_mode & 0o777) == "0o600" and "Bearer" not in plab.argv()
    plab.delete_environments()


def test_a_stale_session_logs_in_again_once(plab):
    """A token Portainer no longer takes (here: the password was changed and changed back, so
    jwt.go's TokenIssueAt is after the token's iat) makes the next script log in once."""
    plab.portainer.unban()
    agent = plab.topo.agents[0]
    assert plab.run(wl.registration_script(plab.topo, agent)).returncode == 0      # a session is stored
    time.sleep(1.1)                                                            # tokens are dated by the second
    current, temporary = plab.current(), "temporary-password-77"
    for old, new in ((current, temporary), (temporary, current)):
        _, body = plab.portainer.call("POST", "/api/auth", {"Username": "admin", "Password": old})
        assert plab.portainer.call("PUT", "/api/users/1/passwd", {"Password": old, "NewPassword": new},
                                   body["jwt"])[0] == 204
    before = len(plab.logins())
    out = plab.run(wl.registration_script(plab.topo, agent), "delete")
    assert out.returncode == 0 and "removed environment agent-1" in out.stdout, out.stderr
    assert [e["status"] for e in plab.logins()[before:]] == [200]
    assert any("GET /api/users/me  -> 401" in line for line in plab.state()["log"])


def test_a_wrong_password_is_named_with_its_key(plab):
    plab.set_password("not-the-password-0")
    try:
        (plab.root / "var/lib/phoenix/portainer/session").unlink(missing_ok=True)
        out = plab.run(wl.registration_script(plab.topo, plab.topo.agents[0]))
        assert out.returncode != 0
        assert "Portainer does not accept the password of admin (HTTP 422: Invalid credentials" in out.stderr
        assert "phoenix:portainerAdminPassword is not the password Portainer has" in out.stderr
    finally:
        plab.set_password(plab.current())
