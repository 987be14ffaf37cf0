"""`phoenix verify`'s certificate report: which certificates it plans, how it reads a served chain,
and the threshold from the model (days, or a quarter of a short lifetime).

The chain is read from TLS servers started here on loopback (inside the isolated namespace):
one serving leaf and intermediate over TLS 1.2 and 1.3, one that asks for a client certificate,
one that speaks TLS 1.3 only. The end-to-end lab runs the whole command against the real
servers (tests/test_e2e_lab.py, tests/test_restore_drill_lab.py).
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from conftest import SHIPPED_STACKS, edited, stack_config
from lab import require_isolated
from phoenix.loader import load_stack
from phoenix.verify import Result, all_checks, as_json, plan_checks
from phoenix.verify_checks import VerifyOptions
from phoenix.verify_expiry import certificate_checks, expiry, served_chain
from testpki import TestCA, save


def topo(name: str):
    return load_stack(stack_config(name)).topo


@pytest.mark.parametrize("stack", SHIPPED_STACKS)
def test_every_certificate_verify_meets_is_one_check_with_the_models_threshold(stack):
    t = topo(stack)
    checks = certificate_checks(t, VerifyOptions(root_ca="root.pem", gateway_client_cert="gw.pem"))
    got = {(c.check, c.target): c for c in checks}
    assert len(got) == len(checks)
    want = {("cert/public", h) for h in t.public_hosts}
    want |= {("cert/internal", n) for s in t.lab.services for n in t.service_names(s)}
    want |= {("cert/internal", t.mesh_name), ("cert/internal", t.ca_name), ("cert/intermediate", t.ca_name),
             ("cert/client", "gw.pem"), ("cert/client-ca", "gw.pem"), ("cert/root", "root.pem")}
    assert set(got) == want
    assert {c.expect for c in checks} == {(str(t.lab.resilience.certificate_min_days),)}
    assert got[("cert/public", t.public_hosts[0])].address == str(t.lab.network.public_address)
    assert got[("cert/intermediate", t.ca_name)].port == t.lab.pki.ca_port
    # what verify runs: its probes, then the certificates
    options = VerifyOptions()
    assert all_checks(t, options) == plan_checks(t, options) + certificate_checks(t, options)
    assert not [c for c in certificate_checks(t, options) if c.check in ("cert/client", "cert/root")]


def test_the_threshold_is_the_models_days_or_a_quarter_of_a_short_lifetime():
    ca = TestCA("Expiry Test Root", days=3650)
    now = dt.datetime.now(dt.UTC)
    day = x509.load_pem_x509_certificate(ca.issue(["leaf.lab.internal"], days=1)[0].encode())  # lives 25 hours
    assert expiry(day, 14, now)[0] is True
    ok, detail, days = expiry(day, 14, now + dt.timedelta(hours=19))   # 5 hours left
    assert ok is False and 0.19 < days < 0.22
    assert detail.startswith("5.0 hours left, below a quarter of its 25.0 hours lifetime, 6.2 hours "
                             "(leaf.lab.internal, issued by Expiry Test Root; until ")
    quarter = x509.load_pem_x509_certificate(ca.issue(["public.example.org"], days=90)[0].encode())
    ok, detail, days = expiry(quarter, 14, now + dt.timedelta(days=80))
    assert ok is False and detail.startswith("10.0 days left, below 14 days (resilience.certificateMinDays)")
    assert expiry(quarter, 7, now + dt.timedelta(days=80))[0] is True       # the model's number decides
    ok, detail, days = expiry(quarter, 14, now + dt.timedelta(days=92))
    assert ok is False and detail.startswith("expired 2.0 days ago") and days < 0
    ok, detail, _ = expiry(ca.cert, 14, now)
    assert ok and detail.startswith("-> 3650.00 days left (Expiry Test Root, issued by Expiry Test Root; ")


def test_the_model_sets_the_threshold():
    def strict(raw):
        raw.setdefault("resilience", {})["certificateMinDays"] = 30
    t = load_stack(edited("dev", strict)).topo
    assert {c.expect for c in certificate_checks(t)} == {("30",)}


def test_json_carries_days_for_certificates_only():
    assert as_json(Result("cert/public", "x", True, "-> 1 days", 1.0)) == \
        {"check": "cert/public", "target": "x", "ok": True, "detail": "-> 1 days", "days": 1.0}
    assert as_json(Result("dns/internal", "x", True, "-> 10.0.0.1")) == \
        {"check": "dns/internal", "target": "x", "ok": True, "detail": "-> 10.0.0.1"}


def test_json_and_format_json_are_the_same_option():
    from phoenix.cli import parser
    a = parser().parse_args(["verify", "--json"])
    b = parser().parse_args(["verify", "--format", "json"])
    c = parser().parse_args(["verify"])
    assert a.format == b.format == "json" and c.format == "plain"


# -- reading a served chain (servers on loopback, in the namespace) ---------------------------------
def serve(tmp: Path, chain_key: tuple[str, str], *, tls13_only: bool = False, client_ca: Path | None = None):
    cert, key = save(chain_key, tmp / "chain.pem", tmp / "key.pem")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls13_only else ssl.TLSVersion.TLSv1_2
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def run():
        for _ in range(4):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass
    threading.Thread(target=run, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.mark.lab
@pytest.mark.parametrize("tls13_only, client_auth", [(False, False), (False, True), (True, False)])
def test_the_probe_reads_the_chain_a_server_sends(tmp_path, tls13_only, client_auth):
    require_isolated()
    root = TestCA("Chain Test Root", days=30)
    intermediate = TestCA("Chain Test Intermediate", parent=root, days=20)
    listener, port = serve(tmp_path, intermediate.issue(["svc.lab.internal"], days=1), tls13_only=tls13_only,
                           client_ca=root.write_cert(tmp_path / "root.pem") if client_auth else None)
    with listener:
        chain = served_chain("127.0.0.1", port, "svc.lab.internal", 5)
    names = [c.subject.rfc4514_string() for c in chain]
    if tls13_only:     # TLS 1.3 sends the chain encrypted: the leaf is all a client learns
        assert names == ["CN=svc.lab.internal"]
    else:
        assert names == ["CN=svc.lab.internal", "CN=Chain Test Intermediate"]


# -- where HA runs the guests (a Proxmox stand-in on loopback) -----------------------------------------
PROXMOX_TOKEN = "phoenix-verify@pve!monitor=5f1c2d3e-0000-4000-8000-00000000beef"


def ha_status_document(services: dict[str, tuple[str, str]], quorate: bool = True) -> dict:
    """What pve-ha-manager's ``status_current`` returns (src/PVE/API2/HA/Status.pm): the quorum
    entry of the node asked, the master, then one entry per HA resource with its node, its CRM
    state, the verbose state and the requested one."""
    data = [{"id": "quorum", "type": "quorum", "node": "pve1", "quorate": 1 if quorate else 0,
             "status": "OK" if quorate else "No quorum on node 'pve1'!"},
            {"id": "master", "type": "master", "node": "pve1", "status": "pve1 (active, Mon Jul 27 03:00:00 2026)"}]
    for sid, (node, state) in sorted(services.items()):
        data.append({"id": f"service:{sid}", "type": "service", "sid": sid, "node": node, "crm_state": state,
                     "state": state, "status": f"{sid} ({node}, {state})", "request_state": "started",
                     "max_restart": 1, "max_relocate": 1})
    return {"data": data}


def serve_proxmox(tmp: Path, document: dict, address: str, port: int):
    """An HTTPS endpoint that answers GET /api2/json/cluster/ha/status/current for PROXMOX_TOKEN only
    (pve-http-server: ``Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET``; 401 otherwise)."""
    import http.server
    import json as json_
    cert, key = save(TestCA("Proxmox Test CA").issue([address]), tmp / "pve.pem", tmp / "pve.key")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.headers.get("Authorization") != f"PVEAPIToken={PROXMOX_TOKEN}":
                self.send_response(401, "authentication failure")
                self.end_headers()
                return
            body = json_.dumps(document).encode() if self.path == "/api2/json/cluster/ha/status/current" else b""
            self.send_response(200 if body else 501)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer((address, port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


HOME = {"ct:100": ("pve1", "started"), "ct:101": ("pve1", "started"), "ct:102": ("pve2", "started"),
        "ct:103": ("pve3", "started"), "vm:200": ("pve2", "started"), "vm:201": ("pve1", "started"),
        "vm:202": ("pve2", "started")}


@pytest.mark.lab
@pytest.mark.parametrize("case", ["home", "failed over", "fenced", "missing", "no quorum", "wrong token"])
def test_verify_reports_where_ha_runs_each_guest(tmp_path, case):
    from lab import add_loopback_addresses
    from phoenix.verify import make_probes, run_checks
    from phoenix.verify_ha import endpoint, ha_checks

    def insecure(raw):        # the node's self-signed certificate, as the dev stack has it
        raw["proxmox"]["insecure"] = True
    t = load_stack(edited("cluster", insecure)).topo
    host, port = endpoint(t)
    add_loopback_addresses(host)
    services = dict(HOME)
    if case == "failed over":
        services["ct:102"] = ("pve1", "started")          # pve2 died: the mesh runs on pve1
    elif case == "fenced":
        services["ct:103"] = ("pve3", "fence")
    elif case == "missing":
        del services["vm:200"]
    token = tmp_path / "token"
    token.write_text(("not-the-token" if case == "wrong token" else PROXMOX_TOKEN) + "\n")
    server = serve_proxmox(tmp_path, ha_status_document(services, quorate=case != "no quorum"), host, port)
    try:
        options = VerifyOptions(proxmox_token_file=str(token), timeout=3)
        checks = ha_checks(t, options)
        assert [(c.check, c.target) for c in checks] == [("ha/quorum", host)] + [
            ("ha/guest", g) for g in ("dns", "gateway", "mesh", "ca", "portainer", "agent-1", "agent-2")]
        results = {r.target: r for r in run_checks(checks, make_probes(t, options))}
    finally:
        server.shutdown()
        server.server_close()
    failing = {name: r.detail for name, r in results.items() if r.ok is not True}
    print(case, [r.line for r in results.values()])
    if case == "home":
        assert failing == {} and results["ca"].detail == "-> ct:103 started on pve3"
    elif case == "failed over":
        assert failing == {}
        assert results["mesh"].detail == ("-> ct:102 started on pve1, not on its own node pve2: failed over; "
                                          "failback brings it home when pve2 is back (do not refresh the stack "
                                          "until then)")
    elif case == "fenced":
        assert failing == {"ca": "ct:103 is fence on pve3 (requested started)"}
    elif case == "missing":
        assert failing == {"portainer": "vm:200 is not an HA resource (pulumi up makes it)"}
    elif case == "no quorum":
        assert failing == {host: "No quorum on node 'pve1'!: HA moves nothing without quorum"}
    else:
        assert set(failing) == set(results) and all("HTTP 401" in d for d in failing.values()), failing
