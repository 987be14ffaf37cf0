"""The mesh's health check against live stand-ins for Traefik (isolated network namespace only):
it passes when Traefik answers, holds the pushed routes and serves a certificate under the
Phoenix root, and fails, naming what is wrong, when the dynamic file was not taken up or the
certificate is not the Step-CA one. Its failure is what makes phoenix-apply restore the old file.

Run: bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_mesh_lab.py
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import shipped_plan
from lab import require_isolated, wait_port
from phoenix.render import render
from phoenix.render.mesh import expected_entries
from testpki import TestCA, save

pytestmark = pytest.mark.lab
HTTP_PORT, TLS_PORT = 18082, 19443

STANDIN = r'''
import http.server, json, ssl, sys, threading
http_port, tls_port, rawdata, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/ping":
            body = b"OK"
        elif self.path == "/api/rawdata":
            body = open(rawdata, "rb").read()
        else:
            self.send_response(404); self.end_headers(); return
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

plain = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
tls = http.server.ThreadingHTTPServer(("127.0.0.1", tls_port), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=plain.serve_forever, daemon=True).start()
tls.serve_forever()
'''


@pytest.fixture
def lab(tmp_path, procs):
    require_isolated()
    topo = shipped_plan("dev").topo
    entries = expected_entries(topo)

    def start(rawdata_entries, root_matches: bool = True, serve: bool = True, disabled: str = ""):
        # Stand-ins for the Phoenix root and the certificate Step-CA issues for the mesh's name.
        root = TestCA("Phoenix Root (test)")
        save(root.issue([topo.mesh_name]), tmp_path / "leaf.pem", tmp_path / "leaf.key")
        (root if root_matches else TestCA("Some other CA")).write_cert(tmp_path / "root.pem")
        # What Traefik's /api/rawdata looks like: names and URLs as JSON strings.
        routers = {e: {"status": "enabled"} for e in rawdata_entries}
        if disabled:
            routers[next(iter(routers))] = {"status": "disabled", "err": [disabled]}
        (tmp_path / "rawdata.json").write_text(json.dumps({"routers": routers}, separators=(",", ":")))
        (tmp_path / "standin.py").write_text(STANDIN)
        if serve:
            procs.start([sys.executable, str(tmp_path / "standin.py"), str(HTTP_PORT), str(TLS_PORT),
                         str(tmp_path / "rawdata.json"), str(tmp_path / "leaf.pem"), str(tmp_path / "leaf.key")])
            wait_port("127.0.0.1", HTTP_PORT)
            wait_port("127.0.0.1", TLS_PORT)
        script = tmp_path / "traefik-health.sh"
        script.write_text(render("mesh/traefik-health.sh.j2",
                                 ping_url=f"http://127.0.0.1:{HTTP_PORT}/ping",
                                 rawdata_url=f"http://127.0.0.1:{HTTP_PORT}/api/rawdata",
                                 mesh_name=topo.mesh_name, internal_port=TLS_PORT,
                                 root_ca=str(tmp_path / "root.pem")))
        (tmp_path / "expected.txt").write_text("\n".join(entries) + "\n")

    def check(*args) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(tmp_path / "traefik-health.sh"), *args], capture_output=True,
                              text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "PHOENIX_HEALTH_TIMEOUT": "3"})

    return start, check, entries, tmp_path


def test_healthy_mesh_passes(lab):
    start, check, entries, tmp = lab
    start(entries)
    assert check().returncode == 0
    out = check(str(tmp / "expected.txt"))
    assert out.returncode == 0, out.stderr


def test_a_dynamic_file_not_taken_up_fails_naming_what_is_missing(lab):
    start, check, entries, tmp = lab
    start([e for e in entries if e != "https://10.20.0.20:8000"])   # Traefik still runs the old routes
    out = check(str(tmp / "expected.txt"))
    assert out.returncode == 1
    assert "the running configuration lacks entries" in out.stderr
    assert "first missing: https://10.20.0.20:8000" in out.stderr


def test_a_router_traefik_disabled_fails_with_its_error(lab):
    start, check, entries, tmp = lab
    start(entries, disabled='middleware "circuit-breakr@file" does not exist')
    out = check(str(tmp / "expected.txt"))
    assert out.returncode == 1
    assert 'Traefik disabled part of the configuration: "err":["middleware \\"circuit-breakr@file\\" ' \
           'does not exist"' in out.stderr


def test_a_certificate_not_under_the_phoenix_root_fails(lab):
    start, check, entries, tmp = lab
    start(entries, root_matches=False)
    out = check(str(tmp / "expected.txt"))
    assert out.returncode == 1
    assert "no certificate for mesh.lab.internal that verifies against the Phoenix root" in out.stderr


def test_no_answer_fails(lab):
    start, check, entries, _tmp = lab
    start(entries, serve=False)
    out = check()
    assert out.returncode == 1 and "does not answer" in out.stderr
