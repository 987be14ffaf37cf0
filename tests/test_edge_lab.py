"""The public edge with real servers: the gateway's nginx proxying to the real Traefik, whose
backends echo what reaches them (isolated network namespace only).

The plan is the edge stack of tests/test_hostile_render.py (the dev stack with a service at the
edges of what the model accepts), so nginx (``nginx -t`` in the plan's own step) and Traefik (the
plan's dynamic step and its health check) read those values too. tests/mesh_harness.py brings
up the mesh, the CA, DNS and the backends; the gateway guest runs here in a network namespace of
its own (Traefik holds port 80 of the lab's), linked to the lab's by a veth pair, with its
client address beside it: the plan's gateway steps run there through phoenix-apply as on the
guest, systemd's part played by a ``systemctl`` that does what Debian's nginx unit does.

What a user checks: a client-supplied ``X-Forwarded-For``, ``Forwarded``, ``X-Original-URL`` (and
the rest of the forwarding headers) never reaches a backend; Traefik trusts forwarding headers
from the gateway only, on its gateway entrypoint only; ``/phoenix-health`` answers the gateway
itself and no one else.

Run: bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_edge_lab.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import edited
from gateway_harness import SYSTEMCTL, gateway_steps
from lab import Processes, require_isolated, require_tools, wait_until
from mesh_harness import MeshLab
from phoenix.plan import make_plan
from phoenix.render import gateway as gw
from test_hostile_render import EDGE_HEALTH, edge

pytestmark = pytest.mark.lab

#: a client on the internet (benchmarking range, RFC 2544), beside the gateway in its namespace.
CLIENT = "198.18.0.9"
#: what a hostile client sends: each value marked, so any that reaches a backend is seen.
HOSTILE = {name: f"evil-{name.lower()}" for name in (
    "X-Forwarded-For", "Forwarded", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Proto",
    "X-Forwarded-Host", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Forwarded-Uri",
    "X-Forwarded-Ssl", "X-Real-IP", "X-Forwarded-Method", "X-Original-Host", "True-Client-IP")}


class GatewayNamespace:
    """The gateway guest: a network namespace with the gateway's and a client's address, a veth
    to the lab's namespace (routes to the mesh only), nginx and the plan's gateway steps."""

    LINK, PEER = "phx-gw", "phx-gw-in"

    def __init__(self, mesh: MeshLab, tmp: Path, procs: Processes):
        self.mesh, self.tmp, self.procs = mesh, tmp, procs
        self.topo = mesh.topo
        self.address = str(self.topo.gateway.address)
        self.steps = gateway_steps(mesh.plan)
        self.ns = ""
        shim = tmp / "bin"
        shim.mkdir()
        (shim / "systemctl").write_text(SYSTEMCTL)
        (shim / "systemctl").chmod(0o755)
        self.env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PHOENIX_STATE": str(tmp / "state")}

    def inside(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.ns}", "--", *argv]

    def up(self) -> None:
        holder = self.procs.start(["unshare", "--net", "--", "sleep", "infinity"])
        mine = os.readlink("/proc/self/ns/net")
        ns = f"/proc/{holder.pid}/ns/net"
        wait_until(lambda: os.path.exists(ns) and os.readlink(ns) != mine, 5, "the gateway's namespace", 0.02)
        self.ns = ns
        mesh = self.mesh.mesh_address
        # The lab played the gateway on its own lo: from now on the gateway lives over the veth.
        subprocess.run(["ip", "addr", "del", f"{self.address}/32", "dev", "lo"], capture_output=True, check=False)
        for argv in (["ip", "link", "add", self.LINK, "type", "veth", "peer", "name", self.PEER,
                      "netns", str(holder.pid)],
                     ["ip", "link", "set", self.LINK, "up"],
                     ["ip", "route", "add", f"{self.address}/32", "dev", self.LINK, "src", mesh],
                     self.inside("ip", "link", "set", "lo", "up"),
                     self.inside("ip", "addr", "add", f"{self.address}/32", "dev", "lo"),
                     self.inside("ip", "addr", "add", f"{CLIENT}/32", "dev", "lo"),
                     self.inside("ip", "link", "set", self.PEER, "up"),
                     self.inside("ip", "route", "add", f"{mesh}/32", "dev", self.PEER, "src", self.address)):
            subprocess.run(argv, check=True, capture_output=True, text=True)
        # nginx as Debian's package leaves it running, then the plan takes it over.
        self.nginx = self.procs.start(self.inside("nginx", "-g", "daemon off;"))
        wait_until(lambda: self.curl("http://127.0.0.1/", check=False)[0] != "000", 10, "Debian's nginx", 0.1)
        for step in ("nginx-install", "public-cert-placeholder", "nginx"):
            self.apply(step)
        # The gateway's client certificate towards the mesh, as its trust-tier step leaves it.
        cert, key = self.mesh.gateway_client_cert()
        Path(gw.CLIENT_TLS.cert).write_text(cert.read_text())
        Path(gw.CLIENT_TLS.key).write_text(key.read_text())
        subprocess.run(self.inside("nginx", "-s", "reload"), check=True, capture_output=True)
        host = self.topo.public_hosts[0]
        wait_until(lambda: self.get(host, "/")[0] == "200", 20, "nginx to proxy with its client certificate", 0.2)

    def apply(self, step: str) -> None:
        r = self.steps[step]
        done = subprocess.run(self.inside("bash", "-c", r.value("create")), input=r.value("stdin"), text=True,
                              capture_output=True, env=self.env, timeout=120, check=False)
        assert done.returncode == 0, f"step {step} failed:\n{done.stdout}\n{done.stderr}"

    def curl(self, url: str, *args: str, source: str = "127.0.0.1", check: bool = True) -> tuple[str, str]:
        """(status, body) of curl in the gateway's namespace, from ``source``."""
        done = subprocess.run(self.inside("curl", "-sk", "--max-time", "10", "--interface", source,
                                          "-o", "-", "-w", "\n%{http_code}", *args, url),
                              capture_output=True, text=True, timeout=30, check=False)
        body, _, status = done.stdout.rpartition("\n")
        if check:
            assert status != "000", done.stderr
        return status, body

    def get(self, host: str, path: str, headers: dict | None = None, source: str = CLIENT) -> tuple[str, str]:
        """A client's HTTPS request to the gateway for ``host``."""
        args = ["--resolve", f"{host}:443:{self.address}"]
        for k, v in (headers or {}).items():
            args += ["-H", f"{k}: {v}"]
        return self.curl(f"https://{host}{path}", *args, source=source, check=False)

    def down(self) -> None:
        subprocess.run(["ip", "link", "del", self.LINK], capture_output=True, check=False)


@pytest.fixture(scope="module")
def edge_lab(tmp_path_factory):
    require_isolated()
    require_tools("nginx", "curl", "nsenter", "unshare", "ip")
    tmp = tmp_path_factory.mktemp("edge-lab")
    procs = Processes()
    (tmp / "mesh").mkdir()
    mesh = MeshLab(make_plan(edited("dev", edge)), tmp / "mesh", procs)
    gateway = None
    try:
        mesh.up()
        (tmp / "gateway").mkdir()
        gateway = GatewayNamespace(mesh, tmp / "gateway", procs)
        gateway.up()
        yield gateway
    finally:
        if gateway:
            gateway.down()
        mesh.down()


def echoed(lab: GatewayNamespace, status_body: tuple[str, str]) -> dict[str, str]:
    status, body = status_body
    assert status == "200", body[:300]
    return {k.lower(): v for k, v in json.loads(body)["headers"].items()}


def test_no_client_forwarding_header_reaches_a_backend(edge_lab):
    for host in edge_lab.topo.public_hosts:
        got = echoed(edge_lab, edge_lab.get(host, "/echo", HOSTILE))
        leaked = {k: v for k, v in got.items() if "evil" in v}
        assert leaked == {}, f"{host}: {leaked}"
        # what the backend does see: the gateway's own values, the gateway appended by the mesh
        assert got["x-forwarded-for"] == f"{CLIENT}, {edge_lab.address}"
        assert got["x-real-ip"] == CLIENT
        assert (got["x-forwarded-proto"], got["x-forwarded-host"], got["x-forwarded-port"]) == ("https", host, "443")
        assert "forwarded" not in got and "x-original-url" not in got and "x-rewrite-url" not in got


def test_the_mesh_trusts_no_forwarding_header_on_its_internal_entrypoint(edge_lab):
    """Even from the gateway's own address: only its gateway entrypoint trusts it."""
    topo = edge_lab.topo
    s = topo.service("llm")
    name, port = topo.service_fqdn(s), topo.entrypoints["internal"].port
    status, body = edge_lab.curl(f"https://{name}:{port}/echo", "--resolve",
                                 f"{name}:{port}:{edge_lab.mesh.mesh_address}",
                                 *sum((["-H", f"{k}: {v}"] for k, v in HOSTILE.items()), []), source=edge_lab.address)
    got = echoed(edge_lab, (status, body))
    assert got["x-forwarded-for"] == edge_lab.address
    for header in ("x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix", "x-real-ip",
                   "x-forwarded-server", "x-forwarded-uri", "x-forwarded-method"):
        assert "evil" not in got.get(header, ""), header


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_gateway_health_endpoint_answers_the_gateway_only(edge_lab, scheme):
    host = edge_lab.topo.public_hosts[0]
    args = ["--resolve", f"{host}:443:{edge_lab.address}"] if scheme == "https" else []
    url = f"https://{host}{gw.HEALTH_PATH}" if scheme == "https" else f"http://127.0.0.1{gw.HEALTH_PATH}"
    assert edge_lab.curl(url, *args, source="127.0.0.1") == ("200", "ok\n")
    outside = url if scheme == "https" else f"http://{edge_lab.address}{gw.HEALTH_PATH}"
    assert edge_lab.curl(outside, *args, source=CLIENT)[0] == "403"


def test_nginx_and_traefik_took_the_edge_values(edge_lab):
    """nginx -t passed in the plan's own step (it ran); Traefik runs the plan's dynamic file and
    health-checks the service at its health path with the query, which reaches the backend."""
    sites = Path(gw.SITES_CONF).read_text()
    assert "client_max_body_size 999999g;" in sites
    backend = edge_lab.mesh.backends["llm", "gpu-llm"]
    wait_until(lambda: EDGE_HEALTH in backend.requests, 30, "Traefik's health check at the edge path")
    assert echoed(edge_lab, edge_lab.get(edge_lab.topo.public_hosts[0], "/v1/models"))["x-forwarded-proto"] == "https"
