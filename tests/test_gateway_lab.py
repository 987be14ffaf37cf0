"""The gateway's plan against real servers, inside an isolated network namespace.

Run only through the namespace wrapper (loopback only, private mounts):

    bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_gateway_lab.py

What runs is the plan itself: the gateway guest's recorded steps (their exact ``create``
commands and bundles) go through phoenix-apply as on the guest, over copy-on-write copies
of this machine's /etc, /var, /run and /usr/local (Debian's nginx and certbot trees
included). nginx starts as Debian's package leaves it (its default site on port 80), then
the plan takes it over. Stand-ins for what is not here:

* systemd: a ``systemctl`` on PATH doing what Debian's units do (``nginx -s reload``);
* the trust tier: the plan's Phoenix root file; for the client certificate towards the mesh,
  the plan's placeholder comes first (the mesh refuses it), then the trust tier's own deploy
  hook from the plan installs one signed by the plan's intermediate (Step-CA is not run);
* the mesh: a TLS server on the mesh's address and gateway entrypoint port, with a
  certificate for the mesh's name from the plan's PKI, requiring a client certificate;
* Let's Encrypt: Pebble (its directory replaces the one line ``server =`` of the plan's
  certbot configuration), resolving public names through a tiny resolver on 127.0.0.1;
  renewal runs what Debian's certbot timer runs.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shlex
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from components.gateway import STEP_NGINX
from conftest import shipped_plan
from gateway_harness import (
    WS_GUID,
    GatewayLab,
    GuestRoot,
    brought_up,
    client_context,
    file_leaf,
    https,
    read_head,
    run_step,
    served_leaf,
    tls_socket,
    with_file,
    ws_frame,
    ws_read,
)
from lab import Processes, require_isolated, require_tools, wait_until
from phoenix.plan.writer import bundle_of
from phoenix.render import gateway as gw
from testpki import TestCA

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def glab(tmp_path_factory):
    require_isolated()
    require_tools("nginx", "pebble", "certbot", "openssl", "curl")
    with brought_up(GatewayLab(shipped_plan("dev"), tmp_path_factory.mktemp("gateway-lab"), Processes())) as lab:
        yield lab


@pytest.fixture(scope="module")
def issued(glab):
    """The gateway's certificate, obtained from Pebble by the plan's certbot step."""
    glab.obtain_certificate()
    return glab


# ---- nginx on the plan's files -------------------------------------------------------------
def test_plan_steps_take_over_debians_nginx(glab):
    """nginx -t passes on the plan's files laid over Debian's tree, and nginx serves them."""
    applied = glab.results[STEP_NGINX]
    assert "files applied" in applied.stdout
    check = subprocess.run(["nginx", "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0 and "syntax is ok" in check.stderr, check.stderr
    # Debian's default site (listen 80 default_server) is still on disk and does not clash.
    assert Path("/etc/nginx/sites-enabled/default").exists()
    dump = subprocess.run(["nginx", "-T"], capture_output=True, text=True, check=False).stdout
    assert "# configuration file /etc/nginx/sites-enabled/default" not in dump
    for path in (gw.NGINX_CONF, gw.SITES_CONF):
        assert Path(path).read_text() == glab.files[path].content
    # until the first issuance: the placeholder, at the path nginx reads
    assert os.readlink(gw.PUBLIC_CERT_LINK) == gw.PLACEHOLDER_DIR
    leaf = x509.load_der_x509_certificate(served_leaf(glab.servers[0].host, glab.gateway_address))
    assert "placeholder" in leaf.subject.rfc4514_string()


def test_cluster_stack_passes_nginx_t_too(glab, tmp_path):
    """The other shipped stack's nginx files (three hosts, a wildcard certificate) on the same tree."""
    plan = shipped_plan("cluster")
    nginx_step = plan.run.named(f"{plan.topo.gateway.name}-{STEP_NGINX}")
    root = GuestRoot(tmp_path, dirs=("/etc",))   # over the dev gateway's /etc, for this test only
    root.mount()
    try:
        for f in bundle_of(nginx_step):
            root.write(f.path, f.content, f.mode)
        check = subprocess.run(["nginx", "-t"], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        assert all(f"server_name {h};" in Path(gw.SITES_CONF).read_text() for h in plan.topo.public_hosts)
    finally:
        root.unmount()


def test_mesh_refuses_the_placeholder_client_certificate(glab):
    """Before Step-CA's certificate replaces the placeholder, nothing is proxied (502)."""
    assert glab.status_with_placeholder_client == 502


def test_https_end_to_end_with_host_and_forwarded_headers(glab):
    for server in glab.servers:
        status, headers, body, _ = https(server.host, "/v1/models?x=1", source="127.0.0.2")
        assert status == 200, body
        seen = json.loads(body)
        assert seen["host"] == server.host and seen["path"] == "/v1/models?x=1"
        assert seen["client"] == glab.topo.guest_fqdn(glab.topo.gateway)   # mTLS to the mesh
        fwd = {k.lower(): v for k, v in seen["forwarded"].items()}
        assert fwd["x-forwarded-proto"] == "https" and fwd["x-forwarded-host"] == server.host
        assert fwd["x-forwarded-for"] == "127.0.0.2" and fwd["x-real-ip"] == "127.0.0.2"


def test_client_supplied_forwarded_for_is_replaced(glab):
    host = glab.servers[0].host
    _, _, body, _ = https(host, headers={"X-Forwarded-For": "6.6.6.6"}, source="127.0.0.2")
    assert json.loads(body)["forwarded"]["X-Forwarded-For"] == "127.0.0.2"


def test_http2_is_offered(glab):
    with tls_socket(glab, glab.servers[0].host, client_context(alpn=("h2", "http/1.1"))) as s:
        assert s.selected_alpn_protocol() == "h2"


def test_port_80_redirects_except_the_acme_challenge(glab):
    host = glab.servers[0].host
    conn = http.client.HTTPConnection(host, 80, timeout=5)
    conn.request("GET", "/chat?q=1")
    resp = conn.getresponse()
    assert resp.status == 301 and resp.headers["Location"] == f"https://{host}/chat?q=1"
    resp.read()
    conn.request("GET", "/.well-known/acme-challenge/not-there")
    assert conn.getresponse().status == 404      # served from the webroot, not redirected
    conn.close()


def test_port_80_answers_http_01_for_the_public_names_only(glab):
    """Let's Encrypt validates the public names here. The gateway's internal name gets nothing:
    its one internal certificate (towards the mesh) is the program's, not Step-CA's by HTTP-01."""
    token = Path(gw.ACME_WEBROOT) / ".well-known/acme-challenge/phoenix-test-token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("key-authorization")
    try:
        for name in [s.host for s in glab.servers]:
            conn = http.client.HTTPConnection(glab.gateway_address, 80, timeout=5)
            conn.request("GET", "/.well-known/acme-challenge/phoenix-test-token", headers={"Host": name})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"key-authorization"), name
            conn.close()
        for name in gw.client_certificate_names(glab.topo):
            with socket.create_connection((glab.gateway_address, 80), timeout=5) as s:
                s.sendall(f"GET /.well-known/acme-challenge/phoenix-test-token HTTP/1.1\r\nHost: {name}\r\n\r\n"
                          .encode())
                assert s.recv(1024) == b"", name      # the default server: 444, closed without an answer
    finally:
        token.unlink()


def test_unknown_host_names_are_refused(glab):
    unknown = f"unknown.{glab.topo.lab.domains.public}"
    with socket.create_connection((glab.gateway_address, 80), timeout=5) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {unknown}\r\n\r\n".encode())
        assert s.recv(1024) == b""                   # 444: closed without an answer
    for sni in (unknown, None):                      # TLS: handshake rejected
        with pytest.raises(ssl.SSLError):
            tls_socket(glab, sni).close()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        https(glab.servers[0].host, headers={"Host": unknown})   # known SNI, unknown Host


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_1_1_refused_1_2_and_1_3_accepted(glab):
    host = glab.servers[0].host

    def context(version):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")     # let this client offer TLS 1.1 at all
        ctx.minimum_version = ctx.maximum_version = version
        return ctx

    with pytest.raises(ssl.SSLError) as refused:
        tls_socket(glab, host, context(ssl.TLSVersion.TLSv1_1)).close()
    assert "PROTOCOL_VERSION" in str(refused.value).upper()    # the server's alert
    for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        with tls_socket(glab, host, context(version)) as s:
            assert s.version() == name


def test_hsts_and_security_headers(glab):
    status, headers, _, _ = https(glab.servers[0].host)
    assert status == 200
    assert headers["Strict-Transport-Security"] == f"max-age={glab.topo.lab.gateway.hsts_max_age}; includeSubDomains"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "nginx/" not in headers.get("Server", "")


def test_request_size_limit_per_service(glab):
    small = next(s for s in glab.servers if s.max_body_size == "10m")
    large = next(s for s in glab.servers if s.max_body_size == "20m")
    body = b"x" * (15 << 20)
    with tls_socket(glab, small.host) as s:          # 15 MB is refused by its headers alone
        s.sendall(f"POST / HTTP/1.1\r\nHost: {small.host}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        assert read_head(s)[0].startswith(b"HTTP/1.1 413")
    status, _, _, _ = https(large.host, method="POST", body=body, source="127.0.0.2")
    assert status == 200


def test_server_sent_events_reach_the_client_chunk_by_chunk(glab):
    server = next(s for s in glab.servers if s.streaming)
    glab.mesh.sse_sent.clear()
    arrived = []
    with tls_socket(glab, server.host) as s:
        s.sendall(f"GET /sse HTTP/1.1\r\nHost: {server.host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        head, data = read_head(s)
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        assert b"X-Accel-Buffering: no" in head
        while len(arrived) < 3:
            while f"data: chunk {len(arrived)}".encode() in data:
                arrived.append(time.monotonic())
            if len(arrived) == 3:
                break
            chunk = s.recv(4096)
            assert chunk, "stream ended early"
            data += chunk
    sent = glab.mesh.sse_sent
    assert arrived[0] - sent[0] < 0.100, f"first chunk took {arrived[0] - sent[0]:.3f}s"
    for i in (0, 1):   # each chunk arrived before the backend sent the next one
        assert arrived[i] < sent[i + 1]


def test_websocket_upgrade(glab):
    ws = next(s for s in glab.servers if s.websocket)
    plain = next(s for s in glab.servers if not s.websocket)
    key = base64.b64encode(os.urandom(16)).decode()
    request = ("GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with tls_socket(glab, ws.host) as s:
        s.sendall(request.format(host=ws.host).encode())
        head, rest = read_head(s)
        assert head.startswith(b"HTTP/1.1 101"), head
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert f"sec-websocket-accept: {accept}".lower().encode() in head.lower()
        s.sendall(ws_frame(b"hello", mask=True))
        buf = bytearray(rest)

        def read(n):
            while len(buf) < n:
                buf.extend(s.recv(4096))
            out = bytes(buf[:n])
            del buf[:n]
            return out
        assert ws_read(read) == b"echo: hello"
    with tls_socket(glab, plain.host) as s:      # a service without websocket gets no upgrade
        s.sendall(request.format(host=plain.host).encode())
        assert read_head(s)[0].startswith(b"HTTP/1.1 426")


def test_rate_limit_is_per_client_address(glab):
    host, limits = glab.servers[0].host, glab.topo.lab.gateway
    conn = http.client.HTTPSConnection(host, 443, context=client_context(), timeout=5,
                                       source_address=("127.0.0.3", 0))
    statuses = []
    for _ in range(limits.rate_limit_burst + 60):
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
    conn.close()
    assert statuses.count(429) > 0 and set(statuses) == {200, 429}
    assert statuses.count(200) >= limits.rate_limit_burst
    assert https(host, source="127.0.0.4")[0] == 200     # another client is not limited


def test_access_log_has_upstream_timing(glab):
    host, server = glab.servers[0].host, glab.servers[0]
    https(host, "/timed", source="127.0.0.2")
    log = Path("/var/log/nginx/access.log")
    wait_until(lambda: "/timed" in log.read_text(), 5, "the access log line")
    line = [x for x in log.read_text().splitlines() if "/timed" in x][-1]
    assert f'"{host}"' in line and f"ua={server.upstream_address}:{server.upstream_port}" in line
    for field in ("rt", "uct", "uht", "urt"):
        value = line.split(f" {field}=")[1].split()[0]
        assert float(value) >= 0, line


# ---- the public certificate: Pebble, certbot, renewal ---------------------------------------
def test_certificate_from_acme_is_served(issued):
    lab, live = issued, Path(gw.LIVE_DIR)
    # nginx reads the gateway's own copy of the lineage (certbot rewrites the lineage in place)
    served = Path(os.readlink(gw.PUBLIC_CERT_LINK))
    assert served.parent == Path(gw.PUBLIC_CERT_STORE)
    assert (served / "fullchain.pem").read_text() == (live / "fullchain.pem").read_text()
    copy_key = served / "privkey.pem"
    assert copy_key.stat().st_uid == 0 and copy_key.stat().st_mode & 0o077 == 0
    for server in lab.servers:   # verified as a browser would, against the ACME CA's root
        wait_until(lambda server=server: served_leaf(server.host, lab.gateway_address) == file_leaf(live / "cert.pem"),
                   10, "nginx to serve the issued certificate")
        status, _, _, _ = https(server.host, ctx=client_context(str(lab.acme_root)), source="127.0.0.2")
        assert status == 200
    # keys stay as certbot writes them: root-only, which nginx's master (root) reads
    key = (live / "privkey.pem").resolve()
    assert key.stat().st_uid == 0 and key.stat().st_mode & 0o077 == 0
    # what Debian's timer renews with: the plan's flags, kept in the lineage's renewal conf
    renewal = Path(f"{gw.LETSENCRYPT}/renewal/{gw.CERT_NAME}.conf").read_text()
    for line in ("authenticator = webroot", f"renew_hook = {gw.DEPLOY_HOOK}", "server = https://127.0.0.1:14000/dir"):
        assert line in renewal


def renewal_command() -> list[str]:
    """What Debian's certbot timer runs: its service's ExecStart, as the plan's drop-in sets it."""
    units = [Path("/lib/systemd/system/certbot.service"), Path(gw.RENEW_DROPIN)]
    starts = [x.split("=", 1)[1] for u in units for x in u.read_text().splitlines() if x.startswith("ExecStart=")]
    return shlex.split(starts[-1])


def test_the_timer_runs_certbot_then_the_deploy_hook(issued):
    assert renewal_command() == [gw.RENEW_SCRIPT]
    script = Path(gw.RENEW_SCRIPT).read_text()
    assert script.index("certbot -q renew") < script.index(gw.DEPLOY_HOOK)


def test_forced_renewal_serves_the_new_certificate_without_a_failed_request(issued):
    lab, host = issued, issued.servers[0].host
    before = file_leaf(f"{gw.LIVE_DIR}/cert.pem")
    ctx = client_context(str(lab.acme_root))
    outcomes, stop = [], threading.Event()

    def client():   # a new TLS connection per request, at a pace under the rate limit
        deadline = time.monotonic() + 30
        while not stop.is_set() and len(outcomes) < 600 and time.monotonic() < deadline:
            try:
                status, _, _, leaf = https(host, ctx=ctx, source="127.0.0.5", timeout=5)
                outcomes.append((status, leaf))
            except (OSError, http.client.HTTPException) as err:
                outcomes.append((repr(err), None))
            time.sleep(0.03)

    worker = threading.Thread(target=client)
    worker.start()
    try:
        renew = subprocess.run(["certbot", "-q", "renew", "--force-renewal", "--no-random-sleep-on-renew"],
                               capture_output=True, text=True, env=lab.acme_env, timeout=60, check=False)
        assert renew.returncode == 0, renew.stdout + renew.stderr
        after = file_leaf(f"{gw.LIVE_DIR}/cert.pem")
        assert after != before
        wait_until(lambda: outcomes and outcomes[-1][1] == after, 10, "the renewed certificate to be served")
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join()
    failed = [o[0] for o in outcomes if o[0] != 200]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {failed[:3]}"
    served = [leaf for _, leaf in outcomes]
    assert served[0] == before and served[-1] == after
    print(f"renewal: {len(outcomes)} requests, all 200, certificate switched after request "
          f"{served.index(after) + 1}")


# ---- a bad push, a bad mesh ------------------------------------------------------------------
def test_broken_config_push_fails_with_nginx_message_and_old_config_keeps_serving(glab):
    step = glab.steps[STEP_NGINX]
    broken = with_file(step.value("stdin"), gw.SITES_CONF, lambda t: "this_is_not_a_directive on;\n" + t)
    result = run_step(step, glab.env, broken)
    assert result.returncode != 0
    assert "check failed; previous files restored" in result.stderr
    assert 'unknown directive "this_is_not_a_directive"' in result.stderr
    assert Path(gw.SITES_CONF).read_text() == glab.files[gw.SITES_CONF].content
    assert https(glab.servers[0].host, source="127.0.0.2")[0] == 200


def test_mesh_certificate_not_from_the_phoenix_ca_gives_502(glab):
    server = glab.servers[0]
    other_ca = TestCA("Some Other CA")
    chain, key = other_ca.issue([server.ssl_name])
    wrong_name = glab.pki.ca.issue(["not-the-mesh.example"])
    try:
        for served_chain, key_pem in ((chain + other_ca.cert_pem, key), wrong_name):
            glab.mesh_log_mark = Path("/var/log/nginx/error.log").stat().st_size
            glab.start_mesh(served_chain, key_pem)
            status, _, _, _ = https(server.host, source="127.0.0.2")
            assert status == 502
            errors = Path("/var/log/nginx/error.log").read_text()[glab.mesh_log_mark:]
            assert "upstream SSL certificate" in errors, errors[-500:]
    finally:
        glab.start_mesh(*glab.pki.ca.issue([server.ssl_name]))
    wait_until(lambda: https(server.host, source="127.0.0.2")[0] == 200, 5, "the real mesh to answer again")
