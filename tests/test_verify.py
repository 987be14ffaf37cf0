"""`phoenix verify`: the checks it derives from the model, and a lab it passes and fails against.

The pure tests read the checks ``plan_checks`` makes for both shipped stacks (no network).
The lab tests run inside the isolated namespace: BIND with the DNS tier's own files, and
Python TLS stand-ins for the gateway (a certificate from a test "public" CA), the mesh
(Phoenix CA; mTLS on the gateway entrypoint; routes by Host to the backends, verifying them),
Step-CA's /health, the backends and Portainer's API. verify passes; then one hop at a time is
broken and exactly the checks that depend on that hop fail.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, SHIPPED_STACKS, stack_config
from lab import Processes, add_loopback_addresses, require_isolated, require_tools
from phoenix.model import parse_lab
from phoenix.pki import fingerprint_sha256
from phoenix.stackfile import expand_catalog
from phoenix.topology import CA_HEALTH_PATH, MESH_PING_PATH, build
from phoenix.verify import (
    PORTAINER_ENDPOINTS,
    Check,
    VerifyOptions,
    all_checks,
    main,
    make_probes,
    plan_checks,
    run_checks,
    summary,
)
from phoenix.verify_probes import query_a
from testpki import TestCA, pem, save

#: the lab root's key, for the tests that sign a gateway client CA of their own under it
_ROOT_KEY: list[str] = []


def topology(name: str):
    stack = stack_config(name)
    return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))


def by_key(checks) -> dict:
    return {(c.check, c.target): c for c in checks}


# == what verify checks (pure) ====================================================================
def expected_checks(lab) -> dict[tuple[str, str], dict]:
    """The checks a user would list for a stack, written from the raw model (not the topology)."""
    internal, public_address = lab.domains.internal, str(lab.network.public_address)
    role = {g.role: g for g in lab.guests}
    dns_at, mesh_at = str(role["dns"].address), str(role["mesh"].address)
    mesh_name = f"{role['mesh'].name}.{internal}"
    names = {f"{g.name}.{internal}": (str(g.address),) for g in lab.guests}
    service_names = {}
    for s in lab.services:      # a service's names lead to the mesh, which balances over the replicas
        for n in (s.name, *s.aliases):
            names[f"{n}.{internal}"] = (mesh_at,)
            service_names[f"{n}.{internal}"] = s
    out: dict[tuple[str, str], dict] = {}
    for s in lab.services:
        if s.public:
            out[("dns/external", s.public_host)] = dict(address=dns_at, port=53, expect=(public_address,))
            out[("dns/internal", s.public_host)] = dict(address=dns_at, expect=(str(role["gateway"].address),))
            out[("https/public", s.public_host)] = dict(address=public_address, port=443, server_name=s.public_host,
                                                       host=s.public_host, path=s.health, trust="public")
    for name, s in service_names.items():     # dialled as a guest dials it: SNI and Host are the name
        out[("service/internal", name)] = dict(address=mesh_at, port=lab.mesh.internal_port, server_name=name,
                                               host=name, path=s.health, trust="phoenix", skip=None)
    out[("pki/gateway-client-cert", f"{role['gateway'].name}.{internal}")] = dict(
        expect=(f"{role['gateway'].name}.{internal}",),
        skip="not checked: give --gateway-client-cert (the stack output gatewayClientCertificate.chainPem)")
    out[("tls/no-tls1.1", f"{public_address}:443")] = dict(address=public_address, port=443)
    for name, addrs in names.items():
        out[("dns/internal", name)] = dict(address=dns_at, port=53, expect=addrs)
        out[("dns/external-nxdomain", name)] = dict(address=dns_at, port=53, expect=())
    out[("ca/health", f"{role['ca'].name}.{internal}")] = dict(
        address=str(role["ca"].address), port=lab.pki.ca_port, server_name=f"ca.{internal}", path=CA_HEALTH_PATH,
        trust="phoenix")
    # Traefik's ping: plain on its metrics entrypoint, and behind mTLS for the gateway.
    out[("mesh/ping", f"{mesh_name}:{lab.mesh.metrics_port}")] = dict(address=mesh_at, trust=None, path=MESH_PING_PATH,
                                                                     skip=None)
    out[("mesh/ping", f"{mesh_name}:{lab.mesh.gateway_port}")] = dict(address=mesh_at, trust="phoenix",
                                                                     server_name=mesh_name, path=MESH_PING_PATH)
    for g in lab.guests:
        if g.role == "agent":
            out[("portainer/agent", g.name)] = dict(
                address=mesh_at, port=lab.mesh.internal_port, path=PORTAINER_ENDPOINTS,
                host=f"portainer-ui.{internal}", expect=(f"tcp://{g.address}:{lab.portainer.agent_port}",
                                                         f"tcp://{g.name}.{internal}:{lab.portainer.agent_port}"))
    return out


@pytest.mark.parametrize("stack", SHIPPED_STACKS)
def test_plan_checks_cover_every_name_with_addresses_from_the_model(stack):
    topo = topology(stack)
    checks = plan_checks(topo, VerifyOptions())
    got = by_key(checks)
    want = expected_checks(topo.lab)
    assert len(got) == len(checks), "two checks with the same kind and target"
    assert sorted(got) == sorted(want)
    for key, fields in want.items():
        for name, value in fields.items():
            assert getattr(got[key], name) == value, (key, name)
    # Nothing is dialled that the model does not name.
    known = {str(g.address) for g in topo.lab.guests} | {str(topo.lab.network.public_address)}
    assert {c.address for c in checks if c.address} <= known   # a file check dials nothing


def test_dev_checks_read_as_a_user_would_write_them():
    dev = by_key(plan_checks(topology("dev")))
    assert dev[("dns/external", "chat.lab.example.com")].expect == ("203.0.113.10",)
    assert dev[("dns/internal", "chat.lab.example.com")].expect == ("10.20.0.11",)
    assert dev[("dns/internal", "chat.lab.internal")].expect == ("10.20.0.12",)      # alias of llm: the mesh
    assert dev[("dns/internal", "gpu-llm.lab.internal")].expect == ("10.20.0.20",)   # the guest: itself
    assert dev[("service/internal", "llm.lab.internal")] == Check(
        "service/internal", "llm.lab.internal", "10.20.0.12", 443, server_name="llm.lab.internal",
        host="llm.lab.internal", path="/health", trust="phoenix")
    assert dev[("service/internal", "chat.lab.internal")].server_name == "chat.lab.internal"
    assert dev[("https/public", "portainer.lab.example.com")].path == "/api/system/status"
    assert dev[("ca/health", "ca.lab.internal")].address == "10.20.0.13"
    cluster = by_key(plan_checks(topology("cluster")))
    assert cluster[("dns/internal", "llm.ai.internal")].expect == ("10.30.0.12",)   # the mesh, not the replicas


def test_sources_pick_the_view_and_credentials_turn_skips_into_checks(tmp_path):
    topo = topology("dev")
    bare = plan_checks(topo, VerifyOptions())
    skipped = {(c.check, c.target): c.skip for c in bare if c.skip}
    assert skipped == {
        ("mesh/ping", "mesh.lab.internal:8443"):
            "not checked: this entrypoint wants a client certificate (give --client-cert/--client-key)",
        ("portainer/agent", "agent-1"):
            "not checked: no credentials (give --portainer-password-file or --portainer-api-key-file)",
        ("pki/gateway-client-cert", "gateway.lab.internal"):
            "not checked: give --gateway-client-cert (the stack output gatewayClientCertificate.chainPem)"}
    options = VerifyOptions(outside_source="192.0.2.50", inside_source="10.20.0.250", client_cert="c.pem",
                            portainer_password_file="pw", root_ca="root.pem", root_fingerprint="AB:" * 31 + "AB",
                            gateway_client_cert="gw.pem")
    checks = plan_checks(topo, options)
    assert not [c for c in checks if c.skip]
    for c in checks:
        if c.check in ("dns/external", "dns/external-nxdomain"):
            assert c.source == "192.0.2.50", c
        elif c.check == "dns/internal":
            assert c.source == "10.20.0.250", c
    assert by_key(checks)[("pki/root-fingerprint", "root.pem")].expect == ("ab" * 32,)


def test_a_skipped_check_is_a_skip_line_counted_in_the_summary():
    check = Check("portainer/agent", "agent-1", skip="not checked: no credentials")
    results = list(run_checks([check], probes=None))
    assert [r.line for r in results] == ["skip portainer/agent agent-1: not checked: no credentials"]
    assert summary(results) == "0 passed, 0 failed, 1 skipped"


def test_bad_input_is_refused_with_one_line_per_problem_and_exit_2(capsys):
    code = main(["--stack", "dev", "--outside-source", "10.20.0.5", "--inside-source", "192.0.2.1",
                 "--root-ca", "/nonexistent/root.pem", "--timeout", "0", "--root-fingerprint", "xyz"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.splitlines() == sorted([
        "error: --inside-source: 192.0.2.1 is outside the internal networks (10.20.0.0/24, 192.168.1.0/24); "
        "the internal view would not answer it",
        "error: --outside-source: 10.20.0.5 is inside the internal networks (10.20.0.0/24, 192.168.1.0/24); "
        "the external view would not answer it",
        "error: --root-ca: no such file /nonexistent/root.pem",
        "error: --root-fingerprint: must be the SHA-256 of the root (64 hex digits)",
        "error: --timeout: 0.0 must be more than 0 and at most 120 seconds"])
    assert main(["--config-file", "/nonexistent/Pulumi.x.yaml"]) == 2
    assert capsys.readouterr().err == "error: /nonexistent/Pulumi.x.yaml: no such stack file\n"


# == the lab ======================================================================================
OUTSIDE, INSIDE = "192.0.2.50", "10.20.0.250"     # a client on the internet; an operator on the lab network
PORTAINER_PASSWORD, PORTAINER_TOKEN = "correct horse battery", "jwt-of-the-test"
PORTAINER_API_KEY = "ptr_key-of-the-test"


def issue(ca: TestCA, out: Path, stem: str, names: list[str], client: bool = False) -> tuple[str, str]:
    """A leaf from ``ca`` for ``names`` as files ``<stem>.crt`` (with the chain) and ``<stem>.key``."""
    crt, key = save(ca.issue(names, client=client), out / f"{stem}.crt", out / f"{stem}.key")
    return str(crt), str(key)


def server_context(cert: tuple[str, str], client_ca: Path | None = None, allow_tls11: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    if allow_tls11:   # the misconfigured gateway of one test
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Handler(BaseHTTPRequestHandler):
    timeout = 5

    def setup(self):
        self.request.settimeout(self.timeout)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()   # a refused handshake ends here (quietly, see handle_error)
        super().setup()

    def do_GET(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        status, body = self.server.answer(self)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


class StandIn(ThreadingHTTPServer):
    """A TLS (or plain) HTTP server in a thread; ``tls()`` is asked per connection, so a test can
    swap certificates or protocol versions without a restart."""
    daemon_threads = True
    handler = Handler   # what answers a connection (tests/e2e_harness.py streams with its own)

    def __init__(self, address: str, port: int, tls, answer):
        self.tls, self.answer = tls, answer
        super().__init__((address, port), self.handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def get_request(self):
        sock, peer = self.socket.accept()
        ctx = self.tls()
        return (ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False) if ctx else sock), peer

    def handle_error(self, request, client_address):
        pass   # failed handshakes are what some tests provoke

    def stop(self):
        self.shutdown()
        self.server_close()


def forward(h: Handler, address: str, port: int, server_name: str, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    """Proxy the request as the gateway and the mesh do: TLS verified for ``server_name``, Host kept."""
    try:
        sock = socket.create_connection((address, port), timeout=3)
        conn = http.client.HTTPConnection(h.host)
        conn.sock = ctx.wrap_socket(sock, server_hostname=server_name)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("connection", "keep-alive")}
        conn.request(h.command, h.path, body=h.body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, ssl.SSLError) as err:
        return 502, f"bad gateway: {err}".encode()


def client_context(root: Path, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(root))
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


@dataclass
class Lab:
    topo: object
    options: VerifyOptions
    named: subprocess.Popen
    zone_dir: Path
    state: dict = field(default_factory=dict)

    def verify(self, **changes) -> list:
        options = dataclasses.replace(self.options, **changes)
        return list(run_checks(plan_checks(self.topo, options), make_probes(self.topo, options), options.workers))

    def failing(self, **changes) -> set[tuple[str, str]]:
        return {(r.check, r.target) for r in self.verify(**changes) if r.ok is False}

    def cli(self, *extra: str) -> subprocess.CompletedProcess:
        o = self.options
        argv = ["--stack", "dev", "--outside-source", o.outside_source, "--inside-source", o.inside_source,
                "--root-ca", o.root_ca, "--public-ca", o.public_ca, "--timeout", str(o.timeout), *extra]
        return subprocess.run([sys.executable, "-m", "phoenix.verify", *argv], capture_output=True, text=True,
                              cwd=ROOT, timeout=60, check=False)


def start_named(topo, d: Path, procs: Processes, mounts: list[str]) -> tuple[subprocess.Popen, Path]:
    """BIND with the DNS tier's own files, laid at their guest paths (private mount namespace)."""
    from phoenix.render import dns as dns_tier
    etc, lib, cache = d / "etc-bind", d / "var-lib-bind", d / "var-cache-bind"
    shutil.copytree("/etc/bind", etc, ignore=shutil.ignore_patterns("rndc.key"))
    lib.mkdir()
    cache.mkdir()
    subprocess.run(["rndc-confgen", "-a", "-c", str(etc / "rndc.key")], check=True, capture_output=True)
    layout = {"/etc/bind/": etc, "/var/lib/bind/": lib}
    for f in dns_tier.config_files(topo, "c2VjcmV0LW9mLXRoZS12ZXJpZnktbGFiLXRzaWcta2V5"):
        for prefix, where in layout.items():
            if f.path.startswith(prefix):
                target = where / f.path[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f.content)
    for z in dns_tier.zones(topo):
        if z.dynamic:   # what the DNS tier's check step seeds on the first push
            shutil.copy(etc / z.file[len("/etc/bind/"):], lib / z.live[len("/var/lib/bind/"):])
    for src, dst in ((etc, "/etc/bind"), (lib, "/var/lib/bind"), (cache, "/var/cache/bind")):
        subprocess.run(["mount", "--bind", str(src), dst], check=True)
        mounts.append(dst)
    with open(d / "named.log", "w") as log:      # named writes to its own copy
        proc = procs.start(["named", "-g", "-c", "/etc/bind/named.conf"], stdout=log, stderr=subprocess.STDOUT)
    dns_at = str(topo.dns.address)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if query_a(dns_at, 53, topo.guest_fqdn(topo.dns), INSIDE, 0.5)[0] == "NOERROR":
                return proc, etc / dns_tier.ZONE_DIR[len("/etc/bind/"):]
        except Exception:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    raise AssertionError("named did not come up:\n" + (d / "named.log").read_text()[-3000:])


def start_stand_ins(topo, pki: dict, state: dict) -> list[StandIn]:
    lab, mesh_at = topo.lab, str(topo.mesh.address)
    ep = topo.entrypoints
    phoenix = client_context(pki["root"])
    to_mesh = client_context(pki["root"], pki["gateway-client"])
    routes = {}
    for route in topo.routes:
        hosts = [route.host] + ([] if route.public else [topo.fqdn(a) for a in topo.service(route.service).aliases])
        routes.update({(h, route.entrypoint.port): route for h in hosts})
    ctx = {name: server_context(cert) for name, cert in pki.items() if isinstance(cert, tuple)}
    gateway_tls11 = server_context(pki["gateway"], allow_tls11=True)
    mesh_mtls = server_context(pki["mesh"], client_ca=pki["gateway-client-ca"])
    # Traefik (Go's crypto/x509) takes every caFiles certificate as a trust anchor, the gateway
    # client CA (an intermediate) included: so does this stand-in.
    mesh_mtls.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN

    def gateway(h):
        if h.host in topo.public_hosts:
            return forward(h, mesh_at, ep["gateway"].port, topo.mesh_name, to_mesh)
        return 404, b"no such site"

    def mesh(port):
        def answer(h):
            if port == ep["gateway"].port and h.host == topo.mesh_name and h.path == "/ping":
                return 200, b"OK"
            route = routes.get((h.host, port))
            if route is None:
                return 404, b"404 page not found"
            backend = route.backends[0]
            port_to = backend.port + state["upstream_port_shift"].get(route.service, 0)
            return forward(h, backend.address, port_to,
                           topo.replica_tls_name(topo.service(route.service), backend.guest), phoenix)
        return answer

    def portainer(service):
        def answer(h):
            if h.path == service.health:
                return (200, b'{"Version": "2.21.4"}') if state["health"] else (404, b"")
            if h.path == "/api/auth" and h.command == "POST":
                if json.loads(h.body).get("password") != PORTAINER_PASSWORD:
                    return 422, b'{"message": "Invalid credentials"}'
                return 200, json.dumps({"jwt": PORTAINER_TOKEN}).encode()
            if h.path == "/api/endpoints":
                if (h.headers.get("Authorization") != f"Bearer {PORTAINER_TOKEN}"
                        and h.headers.get("X-API-Key") != PORTAINER_API_KEY):
                    return 401, b'{"message": "Unauthorized"}'
                return 200, json.dumps([{"Id": i + 1, "Name": a.name, "Type": 2, "Status": state["agent_status"],
                                         "URL": f"tcp://{a.address}:{lab.portainer.agent_port}"}
                                        for i, a in enumerate(topo.agents)]).encode()
            return 404, b""
        return answer

    def service_answer(service):
        return lambda h: (200, b"ok") if h.path == service.health and state["health"] else (404, b"")

    servers = [
        StandIn(str(lab.network.public_address), 443,
                lambda: gateway_tls11 if state["gateway_tls11"] else ctx[state["gateway_cert"]], gateway),
        StandIn(mesh_at, ep["gateway"].port, lambda: mesh_mtls, mesh(ep["gateway"].port)),
        StandIn(mesh_at, ep["internal"].port, lambda: ctx["mesh"], mesh(ep["internal"].port)),
        StandIn(mesh_at, lab.mesh.metrics_port, lambda: None,
                lambda h: (200, b"OK") if h.path == "/ping" else (404, b"")),
        StandIn(str(topo.ca.address), lab.pki.ca_port, lambda: ctx["ca"],
                lambda h: (200, b'{"status":"ok"}') if h.path == "/health" and state["ca_health"] else (404, b"")),
    ]
    for s in lab.services:
        answer = portainer(s) if topo.portainer and topo.portainer.name in s.guests else service_answer(s)
        for b in topo.backends(s):
            servers.append(StandIn(b.address, b.port, lambda s=s: ctx[state["backend_cert"].get(s.name, s.name)],
                                   answer))
    return servers


def in_private_mount_namespace() -> bool:
    """Does an ancestor process live in another mount namespace (so our bind mounts stay ours)?"""
    mine, pid = os.readlink("/proc/self/ns/mnt"), os.getppid()
    while pid > 1:
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") != mine:
                return True
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_isolated()
    require_tools("named", "rndc-confgen", "mount")
    if not in_private_mount_namespace():
        pytest.skip("not in a private mount namespace (run via scripts/in-netns.sh): cannot lay /etc/bind")
    topo = topology("dev")
    d = tmp_path_factory.mktemp("verify-lab")
    add_loopback_addresses(*(str(g.address) for g in topo.lab.guests), str(topo.lab.network.public_address),
                           OUTSIDE, INSIDE)
    root = TestCA("Phoenix Test Root")
    _ROOT_KEY[:] = [pem(root.key)]
    intermediate = TestCA("Phoenix Test Intermediate", parent=root)
    gateway_ca = TestCA("Phoenix Test Gateway Client CA", parent=root, days=400)   # signs the gateway's alone
    public_root, other_root = TestCA("Test Public ACME Root"), TestCA("Some Other CA")
    root_file, public_file = root.write_cert(d / "phoenix-root.pem"), public_root.write_cert(d / "public-root.pem")
    pki = {"root": root_file,
           "gateway": issue(public_root, d, "gateway-public", topo.public_hosts),
           "gateway-elsewhere": issue(other_root, d, "gateway-elsewhere", topo.public_hosts),
           "gateway-client": save(gateway_ca.issue([topo.guest_fqdn(topo.gateway)], client=True, days=365),
                                  d / "gateway-client.crt", d / "gateway-client.key"),
           "gateway-client-ca": gateway_ca.write_cert(d / "gateway-client-ca.pem"),
           # the mesh's certificates: its own name, and every service's names (one stand-in certificate)
           "mesh": issue(intermediate, d, "mesh", [topo.mesh_name, str(topo.mesh.address),
                                                   *(n for s in topo.lab.services for n in topo.service_names(s))]),
           "ca": issue(intermediate, d, "ca", topo.ca_sans)}
    for s in topo.lab.services:
        names = [topo.guest_fqdn(topo.lab.guest(g)) for g in s.guests]
        pki[s.name] = issue(intermediate, d, s.name, names)
        pki[f"{s.name}-elsewhere"] = issue(other_root, d, f"{s.name}-elsewhere", names)
    (d / "portainer-password").write_text(PORTAINER_PASSWORD + "\n")
    state = {"gateway_tls11": False, "gateway_cert": "gateway", "backend_cert": {}, "ca_health": True,
             "health": True, "agent_status": 1, "upstream_port_shift": {}}
    procs, mounts, servers = Processes(), [], []
    try:
        named, zone_dir = start_named(topo, d, procs, mounts)
        servers = start_stand_ins(topo, pki, state)
        client = tuple(map(str, pki["gateway-client"]))
        options = VerifyOptions(outside_source=OUTSIDE, inside_source=INSIDE, root_ca=str(root_file),
                                root_fingerprint=fingerprint_sha256(root.cert_pem),
                                public_ca=str(public_file), client_cert=client[0], client_key=client[1],
                                gateway_client_cert=client[0],
                                portainer_password_file=str(d / "portainer-password"), timeout=2.0)
        yield Lab(topo, options, named, zone_dir, state)
    finally:
        for server in servers:
            server.stop()
        procs.stop_all()
        for target in reversed(mounts):
            subprocess.run(["umount", target], check=False)


@pytest.fixture
def broken(lab):
    """Restore the lab's state after a test broke one hop."""
    saved = json.loads(json.dumps(lab.state))
    yield lab.state
    lab.state.clear()
    lab.state.update(saved)


def edit_zone(lab: Lab, zone_file: str, old: str, new: str) -> str:
    """Edit an internal-view zone file and reload named (SIGHUP); returns the old text."""
    path = lab.zone_dir / zone_file
    text = path.read_text()
    assert old in text, f"{old!r} not in {zone_file}"
    path.write_text(text.replace(old, new))
    lab.named.send_signal(signal.SIGHUP)
    return text


def wait_answer(lab: Lab, name: str, want: tuple[str, list[str]]) -> None:
    dns_at = str(lab.topo.dns.address)
    deadline = time.monotonic() + 10
    while (got := query_a(dns_at, 53, name, INSIDE, 1.0)) != want:
        assert time.monotonic() < deadline, f"named still answers {got} for {name}"
        time.sleep(0.1)


@pytest.mark.lab
def test_verify_passes_against_a_working_lab(lab):
    results = lab.verify()
    assert [r.line for r in results if r.ok is not True] == []
    assert len(results) == len(plan_checks(lab.topo, lab.options))
    lines = [r.line for r in results]
    assert "ok   dns/external chat.lab.example.com -> 203.0.113.10" in lines
    assert "ok   dns/internal chat.lab.internal -> 10.20.0.12" in lines
    assert any(line.startswith("ok   service/internal chat.lab.internal -> HTTP 200 /health via 10.20.0.12:443 ")
               for line in lines)
    [gateway_cert] = [line for line in lines if line.startswith("ok   pki/gateway-client-cert ")]
    assert "-> gateway.lab.internal, signed by Phoenix Test Gateway Client CA; expires " in gateway_cert
    assert "ok   dns/external-nxdomain gpu-llm.lab.internal -> NXDOMAIN from 10.20.0.10" in lines
    assert "ok   portainer/agent agent-1 -> environment 'agent-1' up (tcp://10.20.0.31:9001)" in lines
    assert any(line.startswith("ok   tls/no-tls1.1 203.0.113.10:443 -> refused") for line in lines)


@pytest.mark.lab
def test_cli_prints_a_line_per_check_a_summary_and_json(lab):
    done = lab.cli("--json", "--portainer-password-file", lab.options.portainer_password_file,
                   "--client-cert", lab.options.client_cert, "--client-key", lab.options.client_key,
                   "--gateway-client-cert", lab.options.gateway_client_cert,
                   "--root-fingerprint", lab.options.root_fingerprint)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    # cert/* entries also give the days their certificate has left (phoenix.verify_expiry)
    assert {tuple(sorted(r)) for r in doc if not r["check"].startswith("cert/")} == {
        ("check", "detail", "ok", "target")}
    assert {tuple(sorted(r)) for r in doc if r["check"].startswith("cert/")} == {
        ("check", "days", "detail", "ok", "target")}
    assert all(r["ok"] is True for r in doc) and len(doc) == len(all_checks(lab.topo, lab.options))
    # Without credentials: Portainer and the mTLS ping are skipped, not failed.
    done = lab.cli()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "skip portainer/agent agent-1: not checked: no credentials (give --portainer-password-file or " \
           "--portainer-api-key-file)" in lines
    assert "skip pki/gateway-client-cert gateway.lab.internal: not checked: give --gateway-client-cert (the stack " \
           "output gatewayClientCertificate.chainPem)" in lines
    # no fingerprint check without --root-fingerprint, no client certificate's expiry without the file
    passed = len(all_checks(lab.topo, dataclasses.replace(lab.options, gateway_client_cert=None))) - 3 - 1
    assert lines[-1] == f"{passed} passed, 0 failed, 3 skipped"


@pytest.mark.lab
@pytest.mark.parametrize("days, client, name, want", [
    (30, True, "gateway.lab.internal", "due for renewal since "),        # inside the 60-day early-renewal window
    (-0.02, True, "gateway.lab.internal", ": expired; the mesh refuses the gateway (run pulumi up"),   # 29 min ago
    (365, True, "mesh.lab.internal", "it is for mesh.lab.internal, not the gateway (gateway.lab.internal)"),
    (365, False, "gateway.lab.internal", "it is not a client certificate (no clientAuth key usage)"),
])
def test_a_gateway_client_certificate_due_expired_or_wrong_fails_its_check(lab, tmp_path, days, client, name, want):
    ca = TestCA("Phoenix Test Gateway Client CA", parent=TestCA.from_pem(
        Path(lab.options.root_ca).read_text(), _ROOT_KEY[0]), days=400)
    chain, _key = ca.issue([name], client=client, days=days)
    (tmp_path / "gw.pem").write_text(chain)
    [result] = [r for r in lab.verify(gateway_client_cert=str(tmp_path / "gw.pem"))
                if r.check == "pki/gateway-client-cert"]
    assert result.ok is False and want in result.detail, result.detail


@pytest.mark.lab
def test_a_gateway_client_certificate_under_another_root_fails_its_check(lab, tmp_path):
    other = TestCA("Another Gateway CA", parent=TestCA("Not The Phoenix Root"))
    (tmp_path / "gw.pem").write_text(other.issue(["gateway.lab.internal"], client=True, days=365)[0])
    [result] = [r for r in lab.verify(gateway_client_cert=str(tmp_path / "gw.pem"))
                if r.check == "pki/gateway-client-cert"]
    assert result.ok is False, result.line


@pytest.mark.lab
def test_a_wrong_internal_record_fails_exactly_its_check(lab):
    name = lab.topo.guest_fqdn(lab.topo.lab.guest("gpu-llm"))
    old = edit_zone(lab, "db.lab.internal.internal", f"{name}. IN A 10.20.0.20", f"{name}. IN A 10.20.0.99")
    try:
        wait_answer(lab, name, ("NOERROR", ["10.20.0.99"]))
        results = {(r.check, r.target): r for r in lab.verify()}
        assert {k for k, r in results.items() if r.ok is False} == {("dns/internal", name)}
        assert results[("dns/internal", name)].line == \
            f"FAIL dns/internal {name}: got 10.20.0.99, expected 10.20.0.20"
    finally:
        (lab.zone_dir / "db.lab.internal.internal").write_text(old)
        lab.named.send_signal(signal.SIGHUP)
        wait_answer(lab, name, ("NOERROR", ["10.20.0.20"]))


@pytest.mark.lab
def test_a_missing_alias_record_fails_exactly_its_check(lab):
    old = edit_zone(lab, "db.lab.internal.internal", "chat.lab.internal. IN CNAME llm.lab.internal.\n", "")
    try:
        wait_answer(lab, "chat.lab.internal", ("NXDOMAIN", []))
        assert lab.failing() == {("dns/internal", "chat.lab.internal")}
    finally:
        (lab.zone_dir / "db.lab.internal.internal").write_text(old)
        lab.named.send_signal(signal.SIGHUP)
        wait_answer(lab, "chat.lab.internal", ("NOERROR", ["10.20.0.12"]))


@pytest.mark.lab
def test_a_backend_certificate_from_another_ca_fails_the_routes_through_it(lab, broken):
    broken["backend_cert"] = {"llm": "llm-elsewhere"}
    assert lab.failing() == {("service/internal", "llm.lab.internal"), ("service/internal", "chat.lab.internal"),
                             ("https/public", "chat.lab.example.com")}


@pytest.mark.lab
def test_a_wrong_upstream_port_in_the_mesh_fails_the_routes_through_it(lab, broken):
    broken["upstream_port_shift"] = {"portainer-ui": 1}
    results = {(r.check, r.target): r for r in lab.verify()}
    assert {k for k, r in results.items() if r.ok is False} == {
        ("service/internal", "portainer-ui.lab.internal"), ("https/public", "portainer.lab.example.com"),
        ("portainer/agent", "agent-1")}
    assert results[("service/internal", "portainer-ui.lab.internal")].detail.startswith(
        "HTTP 502 for /api/system/status from 10.20.0.12:443")


@pytest.mark.lab
def test_without_an_outside_source_from_inside_the_external_checks_say_why(lab):
    results = lab.verify(outside_source=None)
    failed = {(r.check, r.target): r.detail for r in results if r.ok is False}
    external = {(c.check, c.target) for c in plan_checks(lab.topo, lab.options)
                if c.check in ("dns/external", "dns/external-nxdomain")}
    assert set(failed) == external
    assert all(d.startswith("this query leaves from 10.20.0.10, inside the internal networks: the external view "
                            "would not answer it; give --outside-source") for d in failed.values())


@pytest.mark.lab
def test_a_gateway_certificate_the_client_does_not_trust_fails_the_public_checks(lab, broken):
    broken["gateway_cert"] = "gateway-elsewhere"
    results = {(r.check, r.target): r for r in lab.verify()}
    failed = {k for k, r in results.items() if r.ok is False}
    assert failed == {("https/public", h) for h in lab.topo.public_hosts}
    assert "certificate not trusted" in results[("https/public", "chat.lab.example.com")].detail


@pytest.mark.lab
def test_tls11_accepted_at_the_gateway_fails_exactly_that_check(lab, broken):
    broken["gateway_tls11"] = True
    results = {(r.check, r.target): r for r in lab.verify()}
    assert {k for k, r in results.items() if r.ok is False} == {("tls/no-tls1.1", "203.0.113.10:443")}
    assert results[("tls/no-tls1.1", "203.0.113.10:443")].detail.startswith("203.0.113.10:443 accepted TLSv1.1")


@pytest.mark.lab
def test_a_missing_health_answer_fails_exactly_that_check(lab, broken):
    broken["ca_health"] = False
    assert lab.failing() == {("ca/health", "ca.lab.internal")}


@pytest.mark.lab
def test_an_agent_that_is_down_fails_its_portainer_check(lab, broken):
    broken["agent_status"] = 2
    results = {(r.check, r.target): r for r in lab.verify()}
    assert {k for k, r in results.items() if r.ok is False} == {("portainer/agent", "agent-1")}
    assert results[("portainer/agent", "agent-1")].detail == \
        "environment 'agent-1' (tcp://10.20.0.31:9001) is down (Portainer status 2)"


@pytest.mark.lab
def test_portainer_is_listed_with_an_api_key_as_well(lab, tmp_path):
    key = tmp_path / "portainer-api-key"
    key.write_text(PORTAINER_API_KEY + "\n")
    results = {(r.check, r.target): r for r in lab.verify(portainer_password_file=None,
                                                          portainer_api_key_file=str(key))}
    assert results[("portainer/agent", "agent-1")].ok is True
    key.write_text("ptr_wrong\n")
    detail = next(r.detail for r in lab.verify(portainer_password_file=None, portainer_api_key_file=str(key))
                  if r.check == "portainer/agent")
    assert detail == "GET /api/endpoints answered HTTP 401 (10.20.0.12:443)"


@pytest.mark.lab
def test_a_wrong_root_fails_every_phoenix_check_and_the_fingerprint(lab, tmp_path):
    other = TestCA("Not The Phoenix Root").write_cert(tmp_path / "other-root.pem")
    failed = lab.failing(root_ca=str(other))
    phoenix = {(c.check, c.target) for c in plan_checks(lab.topo, lab.options) if c.trust == "phoenix"}
    assert failed == phoenix | {("pki/root-fingerprint", str(other))}
    # Without --root-ca the system store cannot know the Phoenix root: the line says what to give.
    results = lab.verify(root_ca=None, root_fingerprint=None)
    ca = next(r for r in results if r.check == "ca/health")
    assert ca.ok is False and ca.detail.endswith("; verified against the system store: give --root-ca")
