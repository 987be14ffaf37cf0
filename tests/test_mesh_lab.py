"""The mesh run by the real Traefik (the pinned 3.7.15) on the plan's own files, with a real
Step-CA and BIND (isolated network namespace only; tests/mesh_harness.py brings it up by the
plan's steps).

Two labs: the shipped dev stack, and the cluster stack (a replicated service, a plain-HTTP one)
with a 1 s health-check interval, so a stopped backend leaves the rotation within the test.
What is expected comes from the stack model (services, guests, names) and the plan's PKI, not
from the renderer. The plan's dynamic step and the mesh's health check against this Traefik:
tests/test_mesh_lab_push.py.

Run: bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_mesh_lab.py
"""

from __future__ import annotations

import base64
import json
import pwd
import re
import shlex
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from backend_harness import http_get, request
from lab import wait_until
from mesh_harness import OUTSIDE, mesh_lab
from phoenix.render import mesh as m
from testpki import TestCA

pytestmark = pytest.mark.lab
lab = mesh_lab(["dev", "cluster"])
dev_only = pytest.mark.parametrize("lab", ["dev"], indirect=True)
cluster_only = pytest.mark.parametrize("lab", ["cluster"], indirect=True)

#: Traefik log lines at WRN or above that are expected, with the reason; any other fails the lab.
JUSTIFIED = {
    # The dynamic file's first load, before the resolver holds a certificate: Traefik serves its
    # own default one for the second the order takes (the step's health check waits for ours).
    'unable to find certificate for domains \\"{mesh}\\": falling back to the internal generated certificate':
        "first start: the mesh's certificate is still being ordered from Step-CA",
}


def problems(lab, log: str) -> list[str]:
    """WRN/ERR/FTL lines of a Traefik log that no entry of JUSTIFIED explains."""
    reasons = [r.format(mesh=lab.topo.mesh_name) for r in JUSTIFIED]
    return [line for line in log.splitlines() if re.search(r" (WRN|ERR|FTL|PNC) ", line)
            and not any(reason in line for reason in reasons)]


def cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def dns_names(c: x509.Certificate) -> list[str]:
    return c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def routes(topo) -> list[tuple[str, str, object]]:
    """(entrypoint, Host, service) a client uses, from the model: every service by its name and
    aliases on the internal entrypoint, a public one by its public host on the gateway's."""
    out = []
    for s in topo.lab.services:
        out += [("internal", topo.fqdn(label), s) for label in (s.name, *s.aliases)]
        if s.public:
            out.append(("gateway", s.public_host, s))
    return out


def answer(lab, entrypoint: str, host: str, **kw) -> dict:
    """The backend's JSON for a request through ``entrypoint``: on the gateway entrypoint as the
    gateway's nginx sends it (SNI the mesh's name, its client certificate), else SNI = Host."""
    if entrypoint == "gateway":
        kw.setdefault("sni", lab.topo.mesh_name)
        kw.setdefault("cert", lab.client)
    status, _headers, body = lab.request(entrypoint, host, **kw)
    assert status == 200, f"{entrypoint} {host}: {status} {body[:300]!r}"
    return json.loads(body)


# -- started from the plan's files, as its unit says ----------------------------------------------
@dev_only
def test_traefik_runs_the_plans_files_as_its_unit_says(lab):
    files = {p: f for p, (f, _step) in lab.files[lab.mesh].items()}
    for path in (m.STATIC_PATH, m.DYNAMIC_PATH, m.UNIT_PATH, m.USERS_PATH):
        st = Path(path).stat()
        assert Path(path).read_text() == files[path].content, path
        assert (st.st_mode & 0o777, pwd.getpwuid(st.st_uid).pw_name) == (files[path].mode, files[path].owner), path
    unit = files[m.UNIT_PATH].content
    [exec_start] = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    [user] = re.findall(r"^User=(.*)$", unit, re.M)
    environment = dict(re.findall(r"^Environment=(\w+)=(.*)$", unit, re.M))
    assert environment == {"LEGO_CA_CERTIFICATES": m.ROOT_CA_TRUST_PATH}
    pid = lab.traefik_pid()
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == [a.encode() for a in shlex.split(exec_start)]
    assert Path(f"/proc/{pid}/exe").resolve() == Path(m.BINARY).resolve()
    env = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
    assert env["LEGO_CA_CERTIFICATES"] == m.ROOT_CA_TRUST_PATH
    # The user the plan's install script made, holding only the capability to bind port 80.
    account = pwd.getpwnam(user)
    assert (account.pw_dir, account.pw_shell) == (m.STATE_DIR, "/usr/sbin/nologin")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    assert status["Uid"].split() == [str(account.pw_uid)] * 4
    assert int(status["CapEff"], 16) == int(status["CapAmb"], 16) == 1 << 10   # CAP_NET_BIND_SERVICE
    assert http_get(f"http://{lab.mesh_address}:{m.ACME_HTTP_PORT}/")[0] == 404   # its acme entrypoint


# -- its certificate, from Step-CA by ACME ---------------------------------------------------------
@dev_only
@pytest.mark.parametrize("entrypoint", ["internal", "gateway"])
def test_the_served_certificate_is_step_cas_for_the_mesh(lab, entrypoint):
    client = lab.client if entrypoint == "gateway" else None
    chain = lab.served_chain(entrypoint, lab.topo.mesh_name, client)
    root, intermediate = cert(lab.pki.root_pem), cert(lab.pki.intermediate_pem)
    assert len(chain) == 2 and cert(chain[1]) == intermediate, "served: leaf, then the plan's intermediate"
    leaf = cert(chain[0])
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    assert dns_names(leaf) == [lab.topo.mesh_name]
    # What the gateway's nginx checks (proxy_ssl_verify, proxy_ssl_name): the Phoenix root, the name.
    ctx = ssl.create_default_context(cafile=str(lab.root_ca))
    if client:
        ctx.load_cert_chain(*client)
    with socket.create_connection((lab.mesh_address, lab.ports[entrypoint]), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=lab.topo.mesh_name) as tls:
        assert tls.getpeercert(binary_form=True) == leaf.public_bytes(Encoding.DER)
    hours = lab.topo.lab.pki.leaf_lifetime_hours
    assert hours * 3600 <= (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() <= hours * 3600 + 300
    # Step-CA issued it to Traefik's ACME client: it is the one in Traefik's store (0600, its user's).
    st = Path(m.ACME_STORAGE).stat()
    assert (st.st_mode & 0o777, pwd.getpwuid(st.st_uid).pw_name) == (0o600, m.USER)
    store = json.loads(Path(m.ACME_STORAGE).read_text())[m.RESOLVER]["Certificates"]
    [stored] = [c for c in store if c["domain"]["main"] == lab.topo.mesh_name]
    assert cert(base64.b64decode(stored["certificate"]).decode()) == leaf
    assert f"/acme/{lab.topo.lab.pki.acme_provisioner}/new-order" in lab.ca_log()
    # By HTTP-01: Step-CA resolved the mesh's name through BIND's internal view and fetched the
    # token from port 80 of the mesh's address, where only Traefik's acme entrypoint listens.
    assert f"Use solver. domain={lab.topo.mesh_name} lib=lego type=http-01" in lab.startup_log
    assert '\\"type\\":\\"http-01\\",\\"status\\":\\"valid\\"' in lab.ca_log()


@dev_only
def test_a_restart_reuses_the_stored_certificate(lab):
    mesh_name, order = lab.topo.mesh_name, f"/acme/{lab.topo.lab.pki.acme_provisioner}/new-order"
    before, store, orders = lab.served_chain("internal", mesh_name)[0], Path(m.ACME_STORAGE).read_bytes(), \
        lab.ca_log().count(order)
    old_pid, log_from = lab.traefik_pid(), len(lab.traefik_log())
    restarted = lab.systemctl("restart", "traefik")
    assert restarted.returncode == 0, restarted.stderr
    assert lab.traefik_pid() not in (None, old_pid)
    wait_until(lambda: lab.served_chain("internal", mesh_name)[:1] == [before], 15, "the stored certificate")
    # Traefik checks its stored certificates for renewal at start: it found nothing to order.
    wait_until(lambda: "Testing certificate renew" in lab.traefik_log()[log_from:], 10, "the renewal check")
    assert lab.ca_log().count(order) == orders
    assert Path(m.ACME_STORAGE).read_bytes() == store
    assert problems(lab, lab.traefik_log()[log_from:]) == []


# -- every router answers from the right backend ---------------------------------------------------
def test_every_router_answers_from_its_backend(lab):
    for entrypoint, host, s in routes(lab.topo):
        seen = set()
        for _ in range(2 * len(s.guests)):
            got = answer(lab, entrypoint, host, path="/probe?x=1")
            assert (got["service"], got["host"], got["path"]) == (s.name, host, "/probe?x=1"), (entrypoint, host)
            seen.add(got["guest"])
        assert seen == set(s.guests), f"{host}: not every replica answered"
    # A name no router serves, and an internal-only name on the gateway's entrypoint: Traefik's 404.
    assert lab.request("internal", lab.topo.fqdn("nobody"))[0] == 404
    internal_name = routes(lab.topo)[0][1]
    assert lab.request("gateway", internal_name, sni=lab.topo.mesh_name, cert=lab.client)[0] == 404


@dev_only
def test_traefiks_own_routers_answer_only_whom_they_should(lab):
    mesh_name, metrics = lab.topo.mesh_name, lab.ports[m.METRICS_ENTRYPOINT]
    # The gateway's health check of the mesh, on the gateway entrypoint.
    status, _h, body = lab.request("gateway", mesh_name, path="/ping", cert=lab.client)
    assert (status, body) == (200, b"OK")
    # The running configuration, for the guest itself only (the push's health check reads it).
    assert http_get(f"http://127.0.0.1:{metrics}/api/version")[0] == 200
    assert http_get(f"http://{lab.mesh_address}:{metrics}/api/version", source=lab.mesh_address)[0] == 404
    # The dashboard: internal networks, with the password the program made.
    password = lab.plan.run.named("mesh-dashboard-password").outputs["result"]
    auth = {"Authorization": "Basic " + base64.b64encode(f"{m.DASHBOARD_USER}:{password}".encode()).decode()}
    inside = str(lab.topo.gateway.address)
    status, _h, body = lab.request(m.DASHBOARD_ENTRYPOINT, mesh_name, path="/api/version", source=inside, headers=auth)
    assert status == 200 and json.loads(body)["Version"] == lab.topo.lab.mesh.traefik_version
    assert lab.request(m.DASHBOARD_ENTRYPOINT, mesh_name, path="/api/version", source=inside)[0] == 401
    assert lab.request(m.DASHBOARD_ENTRYPOINT, mesh_name, path="/api/version", source=OUTSIDE, headers=auth)[0] == 403


@dev_only
def test_only_the_gateways_forwarded_headers_are_trusted(lab):
    host = next(h for ep, h, _s in routes(lab.topo) if ep == "gateway")
    gateway, other = str(lab.topo.gateway.address), str(lab.topo.dns.address)
    spoofed = {"X-Forwarded-For": "203.0.113.7"}
    got = answer(lab, "gateway", host, source=gateway, headers=spoofed)
    assert got["headers"]["X-Forwarded-For"] == f"203.0.113.7, {gateway}"
    got = answer(lab, "gateway", host, source=other, headers=spoofed)
    assert got["headers"]["X-Forwarded-For"] == other


@dev_only
def test_request_hygiene_of_every_entrypoint(lab):
    """aliasHeadersStrategy and the encoded-character options the static file sets (see
    phoenix/render/mesh.py ENTRYPOINT_HTTP), as the real Traefik applies them."""
    _ep, host, s = routes(lab.topo)[0]
    aliases = {"X_Forwarded_Host": "evil.example", "X.Forwarded.Proto": "http", "X-Probe": "kept"}
    received = {k.lower() for k in answer(lab, "internal", host, headers=aliases)["headers"]}
    assert "x-probe" in received and not {"x_forwarded_host", "x.forwarded.proto"} & received
    assert answer(lab, "internal", host, path="/v1/models/org%2Fname")["path"] == "/v1/models/org%2Fname"
    backend = lab.backends[s.name, s.guests[0]]
    seen = len(backend.requests)
    for refused in ("/files/a%00b", "/files/..%5C..%5Cetc"):
        assert lab.request("internal", host, path=refused)[0] == 400, refused
    assert len(backend.requests) == seen


# -- the gateway entrypoint: client certificates from the gateway client CA only ----------------------
@dev_only
@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_gateway_entrypoint_refuses_other_clients(lab, tls_version):
    host = next(h for ep, h, _s in routes(lab.topo) if ep == "gateway")
    s = next(s for ep, _h, s in routes(lab.topo) if ep == "gateway")
    backend = lab.backends[s.name, s.guests[0]]
    other = TestCA("Not the Phoenix CA").issue(dns_names(cert(lab.client[0].read_text())), client=True)
    (lab.tmp / "other.crt").write_text(other[0])
    (lab.tmp / "other.key").write_text(other[1])
    seen = len(backend.requests)
    for client, alert in ((None, "certificate required" if tls_version == ssl.TLSVersion.TLSv1_3 else "handshake"),
                          ((lab.tmp / "other.crt", lab.tmp / "other.key"), "unknown ca")):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(lab.root_ca))
        ctx.check_hostname, ctx.maximum_version = False, tls_version
        if client:
            ctx.load_cert_chain(*client)
        with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
            request(lab.mesh_address, lab.ports["gateway"], lab.topo.mesh_name, host, ctx=ctx)
        assert alert in str(refused.value).lower(), refused.value
    assert len(backend.requests) == seen, "a refused client reached the backend"
    assert answer(lab, "gateway", host)["service"] == s.name


# -- health checks ---------------------------------------------------------------------------------
def server_status(lab, url: str) -> str:
    for svc in lab.api("/api/http/services?per_page=1000"):
        if url in svc.get("serverStatus", {}):
            return svc["serverStatus"][url]
    return "absent"


@cluster_only
def test_health_checks_take_a_stopped_backend_out_and_bring_it_back(lab):
    topo = lab.topo
    replicated = next(s for s in topo.lab.services if len(s.guests) > 1)
    single = next(s for s in topo.lab.services if len(s.guests) == 1 and s.protocol == "https" and s.public)
    gone = replicated.guests[0]
    urls = [next(b.url for b in topo.backends(replicated) if b.guest == gone), topo.backends(single)[0].url]
    assert [server_status(lab, u) for u in urls] == ["UP", "UP"]
    lab.stop_backend(replicated.name, gone)
    lab.stop_backend(single.name, single.guests[0])
    try:
        wait_until(lambda: [server_status(lab, u) for u in urls] == ["DOWN", "DOWN"], 10, f"{urls} DOWN")
        for _ in range(4):   # the other replica takes every request
            assert answer(lab, "internal", topo.fqdn(replicated.name))["guest"] != gone
        assert lab.request("internal", topo.fqdn(single.name))[0] == 503   # no server left
    finally:
        lab.start_backend(replicated.name, gone)
        lab.start_backend(single.name, single.guests[0])
    wait_until(lambda: [server_status(lab, u) for u in urls] == ["UP", "UP"], 10, f"{urls} UP again")
    # Back in the rotation: the service answers through both its routers again (should the
    # outage's 503 have opened an internal router's circuit breaker, within its fallback and
    # recovery: 10 s each, Traefik's defaults), and both replicas of the other share the load.
    wait_until(lambda: lab.request("internal", topo.fqdn(single.name))[0] == 200, 25,
               f"{single.name} answering through the mesh again")
    assert answer(lab, "gateway", single.public_host)["service"] == single.name
    assert {answer(lab, "internal", topo.fqdn(replicated.name))["guest"] for _ in range(4)} == set(replicated.guests)


# -- the configuration loads whole, and Traefik does not complain about it -------------------------
def test_every_router_and_middleware_loads_and_the_log_is_clean(lab):
    raw = lab.rawdata()
    planned = lab.planned_dynamic()["http"]
    assert {n: r["status"] for n, r in raw["routers"].items() if n.endswith("@file")} == \
        {f"{n}@file": "enabled" for n in planned["routers"]}
    assert all(svc["status"] == "enabled" for n, svc in raw["services"].items() if n.endswith("@file"))
    for name in (m.RETRY, m.CIRCUIT_BREAKER):
        mw = raw["middlewares"][f"{name}@file"]
        users = {f"{r}@file" for r, router in planned["routers"].items() if name in router.get("middlewares", [])}
        assert mw["status"] == "enabled" and set(mw["usedBy"]) == users and users
    assert "does not exist" not in lab.startup_log
    assert problems(lab, lab.startup_log) == []
