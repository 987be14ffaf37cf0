"""The TLS sidecar of services that cannot serve TLS (``run.tls: sidecar``), run for real with
the cluster plan's own files, inside an isolated network namespace: Debian's nginx with the
generated stream config (``nginx -t``, then serving), the services' stand-ins started with the
arguments of their generated units, certificates with exactly the SANs the plan's certificate
steps request, under a test root and intermediate.

It proves what the mesh relies on: a client verifying the name the mesh's servers transport
verifies, against the root, reaches the service through its catalog port; the service itself
listens on loopback only; the sidecar's health check passes, and fails naming the port when
the certificate there is from another CA.

Run: bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_workloads_sidecar_lab.py
"""

from __future__ import annotations

import re
import shlex
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shipped_plan
from lab import Processes, add_loopback_addresses, require_isolated, require_tools, wait_port
from phoenix.plan.writer import pushed_files
from phoenix.render import mesh
from phoenix.render import workloads as wl
from phoenix.topology import TLS_DIR
from testpki import TestCA, save

pytestmark = pytest.mark.lab
GUEST = "gpu-c"

#: a service as its unit starts it: only the listen options matter here (TEI says --hostname,
#: whisper-server --host). Answers its health path, and echoes the size of a POSTed body.
STAND_IN = r'''
import argparse, http.server, sys
p = argparse.ArgumentParser()
p.add_argument("--hostname", "--host", dest="host", required=True)
p.add_argument("--port", type=int, required=True)
args, _ = p.parse_known_args(sys.argv[1:])

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, body):
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(b"ok " + sys.argv[1].encode())
    def do_POST(self):
        self.reply(str(len(self.rfile.read(int(self.headers["Content-Length"])))).encode())
    def log_message(self, *a):
        pass

http.server.ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
'''


# -- the plan's files for the guest, re-rooted into the test's directory ---------------------------
def requested_sans(obtain_script: str) -> list[str]:
    """The names a certificate step asks Step-CA for (certbot's -d arguments)."""
    line = next(x for x in obtain_script.splitlines() if " certonly " in x)
    words = shlex.split(line)
    return [words[i + 1] for i, w in enumerate(words) if w == "-d"]


def mesh_server_name(topo, service: str) -> str:
    dyn = mesh.dynamic_config(topo)["http"]
    lb = dyn["services"][service]["loadBalancer"]
    return dyn["serversTransports"][lb["serversTransport"]]["serverName"]


class Lab:
    def __init__(self, d: Path, procs: Processes):
        self.d, self.procs = d, procs
        plan = shipped_plan("cluster")
        self.topo = plan.topo
        self.guest = self.topo.lab.guest(GUEST)
        self.files = {path: f.content for path, (f, _step) in pushed_files(plan.run, plan.topo)[GUEST].items()}
        self.services = [s for s in wl.gpu_services_on(self.topo, self.guest) if s.tls_termination == "sidecar"]
        (d / "tls").mkdir()
        (d / "logs").mkdir()
        # root -> intermediate -> leaves, as Step-CA issues them; and the same from another CA
        root = TestCA("Phoenix Test Root")
        self.ca = TestCA("Phoenix Test Root Intermediate", parent=root)
        self.other = TestCA("Some Other CA Intermediate", parent=TestCA("Some Other CA"))
        root.write_cert(d / "tls" / "phoenix-root.crt")
        for s in self.services:
            self.issue(s.name, self.ca)
        self.conf = d / "nginx.conf"
        self.conf.write_text(self.reroot(self.files[wl.SIDECAR_CONF]))
        self.health = d / "tls-sidecar-health.sh"
        self.health.write_text(self.reroot(self.files[wl.SIDECAR_HEALTH]))
        self.nginx = None

    def reroot(self, text: str) -> str:
        """Guest paths that do not exist here, moved under the test's directory (nothing else)."""
        return (text.replace(f"{TLS_DIR}/", f"{self.d}/tls/").replace("/run/nginx.pid", f"{self.d}/nginx.pid")
                .replace("/var/log/nginx/error.log", f"{self.d}/logs/error.log"))

    def issue(self, service: str, ca: TestCA) -> list[str]:
        """Leaf + intermediate (certbot's fullchain.pem) and key, where tls_paths() puts them."""
        sans = requested_sans(self.files[f"{wl.SCRIPTS}/cert-{service}.sh"])
        save(ca.issue(sans), self.d / "tls" / f"{service}.crt", self.d / "tls" / f"{service}.key")
        return sans

    def start(self) -> None:
        for s in self.services:
            unit = self.files[f"/etc/systemd/system/{wl.unit_name(s)}"]
            argv = shlex.split(next(x for x in unit.splitlines() if x.startswith("ExecStart=")).split("=", 1)[1])
            script = self.d / f"stand-in-{s.name}.py"
            script.write_text(STAND_IN)
            self.procs.start([sys.executable, str(script), s.name, *argv[1:]])
            wait_port(wl.LOOPBACK, s.app_port)
        self.nginx = self.procs.start(["nginx", "-c", str(self.conf), "-g", "daemon off;"])
        for s in self.services:
            wait_port(str(self.guest.address), s.port)

    def reload(self) -> None:
        out = subprocess.run(["nginx", "-c", str(self.conf), "-s", "reload"], capture_output=True, text=True,
                             check=False)
        assert out.returncode == 0, out.stderr

    def check_health(self) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.health)], capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", "PHOENIX_HEALTH_TIMEOUT": "2"}, check=False)

    def as_the_mesh(self, service, path: str, data: bytes | None = None) -> tuple[int, bytes]:
        """A request the way the mesh's servers transport makes it: to the guest's address, the
        transport's serverName verified against the root."""
        name = mesh_server_name(self.topo, service.name)
        ctx = ssl.create_default_context(cafile=str(self.d / "tls" / "phoenix-root.crt"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        raw = socket.create_connection((str(self.guest.address), service.port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            head = f"{'POST' if data else 'GET'} {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n"
            head += f"Content-Length: {len(data)}\r\n" if data else ""
            tls.sendall(head.encode() + b"\r\n" + (data or b""))
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
        assert reply, f"no HTTP answer from {service.name} through the sidecar"
        status = int(reply.split(b" ", 2)[1])
        return status, reply.split(b"\r\n\r\n", 1)[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_isolated()
    require_tools("nginx", "openssl")
    if not Path("/usr/lib/nginx/modules/ngx_stream_module.so").exists():
        pytest.skip("libnginx-mod-stream is not installed (scripts/install-debian-deps.sh installs it)")
    procs = Processes()
    try:
        the_lab = Lab(tmp_path_factory.mktemp("sidecar"), procs)
        add_loopback_addresses(str(the_lab.guest.address))
        the_lab.start()
        yield the_lab
    finally:
        procs.stop_all()


def test_the_cluster_runs_two_services_behind_the_sidecar_on_gpu_c(lab):
    assert [s.name for s in lab.services] == ["embed", "whisper"]
    assert [(s.port, s.app_port) for s in lab.services] == [(8001, 18001), (8002, 18002)]


def test_nginx_accepts_the_generated_config(lab):
    out = subprocess.run(["nginx", "-t", "-c", str(lab.conf)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "syntax is ok" in out.stderr and "test is successful" in out.stderr


def test_the_mesh_reaches_each_service_through_the_sidecar_verifying_its_name(lab):
    for s in lab.services:
        # the guest's name: the one the replica proves to Step-CA (the service's resolves to the mesh)
        assert mesh_server_name(lab.topo, s.name) == f"{lab.guest.name}.ai.internal"
        status, body = lab.as_the_mesh(s, s.health)
        assert (status, body) == (200, f"ok {s.name}".encode())
    # the stream proxy passes bodies as they are: a 3 MB upload arrives whole
    whisper = next(s for s in lab.services if s.name == "whisper")
    assert lab.as_the_mesh(whisper, "/inference", b"x" * 3_000_000) == (200, b"3000000")


def test_the_services_listen_on_loopback_only(lab):
    for s in lab.services:
        with socket.create_connection((wl.LOOPBACK, s.app_port), timeout=2):
            pass
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((str(lab.guest.address), s.app_port), timeout=2)
        # the catalog port listens and speaks TLS only: a plain HTTP request gets no HTTP answer
        with socket.create_connection((str(lab.guest.address), s.port), timeout=2) as plain:
            plain.sendall(f"GET {s.health} HTTP/1.1\r\nHost: {s.name}\r\n\r\n".encode())
            try:
                answer = plain.recv(64)
            except (ConnectionResetError, TimeoutError):
                answer = b""
        assert not answer.startswith(b"HTTP/"), answer


def test_the_sidecar_health_check_passes(lab):
    out = lab.check_health()
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"tls-sidecar: port {s.port} ({s.name}) serves {lab.guest.name}.ai.internal"
                                       for s in lab.services]


def test_a_certificate_from_another_ca_fails_the_health_check_naming_the_port(lab):
    embed = next(s for s in lab.services if s.name == "embed")
    lab.issue("embed", lab.other)
    try:
        lab.reload()
        out = None
        for _ in range(20):     # the reload takes effect when the new workers answer
            out = lab.check_health()
            if out.returncode != 0:
                break
        assert out.returncode == 1
        assert re.search(rf"^tls-sidecar: port 8001 \(embed\) serves no certificate for {lab.guest.name}\.ai\.internal "
                         r"under the Phoenix root: .*verify error", out.stderr, re.M), out.stderr
        assert "port 8002" not in out.stderr
        with pytest.raises(ssl.SSLCertVerificationError):
            lab.as_the_mesh(embed, embed.health)
    finally:
        lab.issue("embed", lab.ca)
        lab.reload()
