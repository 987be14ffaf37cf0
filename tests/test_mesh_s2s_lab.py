"""Service to service through the mesh, with the real Traefik (3.7.15) on the plan's own files, the
real Step-CA and BIND (isolated network namespace only; tests/mesh_harness.py brings it up by the
plan's steps).

A guest calls another service the way any HTTPS client does: ``curl --cacert <Phoenix root>
https://<service>.<internal domain>/``, from its own address, in the namespace of the backends'
guests, the name resolved by BIND's internal view, nothing else told (no --resolve, no Host, no
SNI). The mesh answers on 443 with the certificate Traefik ordered from Step-CA for that name, and
a replica answers behind it. On the cluster stack's replicated ``llm``, a replica stopped under
load costs no call (the circuit breaker sees what the retry made of a request); the order the
mesh had before (retry first) is pushed too, and the 503 burst it causes is shown, so the test
can tell the two apart. The gateway entrypoint refuses every client certificate but the gateway's
own, including certificates Step-CA issued (which chain to the same Phoenix root).

Run: bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_mesh_s2s_lab.py
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from backend_harness import http_get, request
from gateway_harness import with_file
from lab import wait_until
from mesh_harness import mesh_lab
from phoenix.render import mesh as m

pytestmark = pytest.mark.lab
lab = mesh_lab(["dev", "cluster"])
cluster_only = pytest.mark.parametrize("lab", ["cluster"], indirect=True)


def caller(lab, service) -> str:
    """A guest that calls ``service``: one running another service (its namespace is the
    backends'), never one of the service's own replicas."""
    topo = lab.topo
    return next(g for s in topo.lab.services for g in s.guests if g not in service.guests)


def call(lab, guest: str, url: str) -> tuple[int, dict]:
    """(HTTP status, the backend's JSON or {}) of ``guest`` calling ``url`` with curl."""
    done = lab.curl(guest, url, "-w", "\n%{http_code}")
    assert done.returncode == 0, f"curl {url} from {guest}: {done.stderr}"
    body, _, status = done.stdout.rpartition("\n")
    return int(status), (json.loads(body) if status == "200" else {})


# -- a guest calls a service by its name ------------------------------------------------------------
def test_a_guest_calls_every_service_by_its_internal_name_and_a_replica_answers(lab):
    topo = lab.topo
    for s in topo.lab.services:
        client = caller(lab, s)
        for name in topo.service_names(s):
            seen = set()
            for _ in range(2 * len(s.guests)):
                status, got = call(lab, client, f"https://{name}/probe?from={client}")
                assert status == 200, (name, status)
                # the service's own replica answered, asked for the name the guest dialled
                assert (got["service"], got["host"], got["path"]) == (s.name, name, f"/probe?from={client}")
                assert got["headers"]["X-Forwarded-For"] == str(topo.lab.guest(client).address)
                seen.add(got["guest"])
            assert seen == set(s.guests), f"{name}: the mesh did not balance over every replica"


def test_the_name_resolves_to_the_mesh_which_serves_step_cas_certificate_for_it(lab):
    """What curl saw: the internal view's answer is the mesh; the certificate, for that name, is
    the one Traefik ordered from Step-CA by ACME (HTTP-01 to the mesh) and keeps in its store."""
    topo = lab.topo
    store = json.loads(Path(m.ACME_STORAGE).read_text())[m.RESOLVER]["Certificates"]
    stored = {c["domain"]["main"]: x509.load_pem_x509_certificate(base64.b64decode(c["certificate"]))
              for c in store}
    intermediate = x509.load_pem_x509_certificate(lab.pki.intermediate_pem.encode())
    for s in topo.lab.services:
        client, names = caller(lab, s), topo.service_names(s)
        done = lab.curl(client, f"https://{names[0]}/", "-o", "/dev/null", "-w", "%{remote_ip}:%{remote_port}")
        assert done.stdout == f"{topo.mesh.address}:443", done.stdout + done.stderr
        leaf = stored[names[0]]
        assert sorted(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                      .get_values_for_type(x509.DNSName)) == sorted(names)
        leaf.verify_directly_issued_by(intermediate)
        assert f"Use solver. domain={names[0]} lib=lego type=http-01" in lab.traefik_log()
        for name in names:
            ctx = ssl.create_default_context(cafile=str(lab.root_ca))
            with socket.create_connection((lab.mesh_address, 443), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname=name) as tls:
                assert x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)) == leaf


def test_every_router_traefik_runs_has_a_host_rule_and_its_log_has_no_warning(lab):
    routers = lab.rawdata()["routers"]
    assert "ping@internal" not in routers and "prometheus@internal" not in routers   # manualRouting
    # The one exception, Traefik's own: the HTTP-01 router on the acme entrypoint (port 80) must
    # answer every name Step-CA validates there, whatever it is.
    assert {n: r["rule"] for n, r in routers.items() if "Host(`" not in r["rule"]} == \
        {"acme-http@internal": "PathPrefix(`/.well-known/acme-challenge/`)"}
    assert routers["acme-http@internal"]["entryPoints"] == [m.ACME_ENTRYPOINT]
    assert " WRN " not in lab.startup_log and "depend on the SNI" not in lab.startup_log, lab.startup_log[-3000:]
    # the metrics entrypoint answers its own names only (ping and the local API for the guest itself)
    ping = f"http://{lab.mesh_address}:{lab.ports[m.METRICS_ENTRYPOINT]}/ping"
    done = lab.curl(caller(lab, lab.topo.lab.services[0]), ping, "-o", "/dev/null", "-w", "%{http_code}")
    assert done.stdout == "200", done.stderr
    done = lab.curl(caller(lab, lab.topo.lab.services[0]), ping, "-H", "Host: elsewhere", "-o", "/dev/null",
                    "-w", "%{http_code}")
    assert done.stdout == "404", done.stderr


# -- failover: a replica stopped costs no call -----------------------------------------------------
def burst(lab, client: str, name: str, calls: int = 16) -> list[tuple[int, str]]:
    """(status, answering guest) of ``calls`` calls in a row."""
    url = f"https://{name}/v1/models"
    return [(status, got.get("guest", "")) for status, got in (call(lab, client, url) for _ in range(calls))]


def push_order(lab, order: list[str]) -> None:
    """The plan's dynamic step again with every router's middlewares in ``order``, through its
    own health check (the running configuration holds the pushed file)."""
    doc = lab.planned_dynamic()
    for r in doc["http"]["routers"].values():
        if r.get("middlewares") == list(m.ROUTE_MIDDLEWARES):
            r["middlewares"] = order
    doc = m.mark(doc)
    bundle = with_file(lab.bundle(lab.mesh, "traefik-dynamic"), m.DYNAMIC_PATH, lambda _old: m.to_yaml(doc))
    bundle = with_file(bundle, m.EXPECTED_PATH, lambda _old: m.expected_text(lab.topo, doc))
    lab.apply(lab.mesh, "traefik-dynamic", bundle)


def both_answer(lab, client: str, name: str, guests: list[str]) -> None:
    """Wait until both replicas answer again (health checks every second here; a tripped breaker
    needs its fallback and recovery, 10 s each)."""
    wait_until(lambda: {g for s, g in burst(lab, client, name, 4) if s == 200} == set(guests), 45,
               "both replicas answering again")


def requests_total(lab) -> dict[tuple[str, str], float]:
    """Traefik's own counters (its metrics router, the guest asking itself): (router or service,
    status code) -> requests."""
    status, body = http_get(f"http://127.0.0.1:{lab.ports[m.METRICS_ENTRYPOINT]}{m.METRICS_PATH}")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        found = re.match(r"traefik_(router|service)_requests_total\{(.*)\} (\S+)$", line)
        if found:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2)))
            key = (labels[found.group(1)], labels["code"])
            out[key] = out.get(key, 0) + float(found.group(3))
    return out


def stopped_round(lab, llm) -> tuple[list[tuple[int, str]], dict]:
    """One replica of ``llm`` stopped, 16 calls in a row: their answers, and how Traefik's
    counters moved meanwhile."""
    client, name, gone = caller(lab, llm), lab.topo.service_fqdn(llm), llm.guests[0]
    both_answer(lab, client, name, llm.guests)
    before = requests_total(lab)
    lab.stop_backend(llm.name, gone)
    try:
        got = burst(lab, client, name)
    finally:
        lab.start_backend(llm.name, gone)
    after = requests_total(lab)
    return got, {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@cluster_only
def test_with_one_replica_stopped_every_call_keeps_succeeding(lab):
    """The plan's order (circuit breaker, then retry): the calls that reach the stopped replica are
    retried on the other one, and the breaker counts successes: every call succeeds."""
    llm = next(s for s in lab.topo.lab.services if len(s.guests) > 1)
    gone, other = llm.guests
    for _ in range(3):   # until calls reached the stopped replica before its health check took it out
        got, moved = stopped_round(lab, llm)
        print("plan's order:", [s for s, _ in got], moved)
        assert got == [(200, other)] * len(got), got
        assert {k: v for k, v in moved.items() if k[0] == "llm-internal@file"} == \
            {("llm-internal@file", "200"): len(got)}
        if moved.get((f"llm-{gone}@file", "502"), 0) > 0:
            break
    # calls did reach the stopped replica (its load balancer answered them 502), and the router
    # still answered every one 200: the retry took each to the other replica
    assert moved.get((f"llm-{gone}@file", "502"), 0) > 0, f"no call reached {gone} in three rounds: {moved}"
    both_answer(lab, caller(lab, llm), lab.topo.service_fqdn(llm), llm.guests)


@cluster_only
def test_the_order_the_mesh_had_before_turns_a_stopped_replica_into_a_503_burst(lab):
    """The control: the same stop with the order the mesh had before (retry, then circuit breaker),
    pushed through the plan's own dynamic step. The first call that reaches the stopped replica
    trips the breaker for the whole service, and every call after it gets 503 for the breaker's
    fallback, though the other replica is up: what the plan's order prevents."""
    llm = next(s for s in lab.topo.lab.services if len(s.guests) > 1)
    gone = llm.guests[0]
    try:
        for _ in range(3):   # until calls reached the stopped replica before its health check took it out
            push_order(lab, [m.RETRY, m.CIRCUIT_BREAKER])    # a new file: Traefik builds fresh middlewares
            got, moved = stopped_round(lab, llm)
            if moved.get((f"llm-{gone}@file", "502"), 0) > 0:
                break
            push_order(lab, list(m.ROUTE_MIDDLEWARES))
    finally:
        push_order(lab, list(m.ROUTE_MIDDLEWARES))
    print("retry first:", [s for s, _ in got], moved)
    statuses = [s for s, _ in got]
    assert 503 in statuses, got
    tripped = statuses.index(503)
    open_for = len(statuses) - tripped
    assert statuses[tripped:] == [503] * open_for and open_for >= len(statuses) // 2, got
    assert yaml.safe_load(Path(m.DYNAMIC_PATH).read_text()) == lab.planned_dynamic()
    both_answer(lab, caller(lab, llm), lab.topo.service_fqdn(llm), llm.guests)


# -- the gateway entrypoint: the gateway's certificate, nobody else's --------------------------------
def tls_client(lab, cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(lab.root_ca))
    ctx.check_hostname = False
    ctx.load_cert_chain(*cert)
    return ctx


def test_the_gateway_entrypoint_refuses_every_other_guests_certificate(lab, tmp_path):
    """Certificates Step-CA issued (the mesh's own, from Traefik's ACME store; a backend's, from
    the plan's intermediate as Step-CA signs them) chain to the Phoenix root like the gateway's,
    and are refused at the handshake: the entrypoint trusts the gateway client CA alone."""
    topo = lab.topo
    host = next(s.public_host for s in topo.lab.services if s.public)
    store = json.loads(Path(m.ACME_STORAGE).read_text())[m.RESOLVER]["Certificates"]
    mine = next(c for c in store if c["domain"]["main"] == topo.service_fqdn(topo.lab.services[0]))
    (tmp_path / "stepca.crt").write_bytes(base64.b64decode(mine["certificate"]))
    (tmp_path / "stepca.key").write_bytes(base64.b64decode(mine["key"]))
    backend = next(b for s in topo.lab.services for b in topo.backends(s) if b.scheme == "https")
    chain, key = lab.pki.ca.issue([topo.guest_fqdn(topo.lab.guest(backend.guest))], client=True)
    (tmp_path / "backend.crt").write_text(chain)
    (tmp_path / "backend.key").write_text(key)
    for stem in ("stepca", "backend"):
        with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
            request(lab.mesh_address, lab.ports["gateway"], topo.mesh_name, host,
                    ctx=tls_client(lab, (tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key")))
        assert "unknown ca" in str(refused.value).lower() or "certificate" in str(refused.value).lower(), \
            (stem, refused.value)
    status, _h, body = request(lab.mesh_address, lab.ports["gateway"], topo.mesh_name, host,
                               ctx=tls_client(lab, lab.client))
    assert status == 200 and json.loads(body)["host"] == host
