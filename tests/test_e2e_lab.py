"""End to end: the dev stack brought up by replaying its plan as ``pulumi up`` would, a guest per
namespace with the real servers, and ``phoenix verify`` run as an operator runs it.

Run only through the namespace wrapper (loopback only, private mounts):

    bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_e2e_lab.py

What runs is in tests/e2e_harness.py (with tests/netlab.py, tests/guest_tools.py,
tests/mirror.py): every guest in network and mount namespaces of its own on one bridge, the
plan's remote steps replayed in dependency order with their exact commands and bundles; real
named, step-ca, certbot, Traefik, nginx and Pebble; stand-ins only for what does not exist here.
Then: verify passes with every planned check; every step ran after everything it depends on;
a second replay changes nothing (every phoenix-apply says "unchanged", no service restarts, no
file of /etc or /usr changes); restarting every service keeps verify green; one hop at a time
is broken, through the path a deployment takes (a renewal's deploy hook, the DNS step, the
gateway step), and exactly the checks through that hop fail, until it is put back.

The whole module takes about two minutes on a 2-core machine (one bring-up, module-scoped).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from e2e_harness import EndToEndLab
from gateway_harness import with_file
from lab import require_isolated
from mesh_harness import certificate_requests
from phoenix.render import APPLY
from phoenix.render import gateway as gw
from phoenix.render import mesh as mesh_render
from phoenix.verify import VerifyOptions, all_checks
from phoenix.verify_probes import https_request, trust_context
from testpki import TestCA

pytestmark = pytest.mark.lab

#: how long the mesh may take to put a repaired hop back: its health check interval (10 s in
#: the dev stack) and its circuit breaker's fallback and recovery (10 s each, Traefik's defaults).
MESH_RECOVERY = 45
#: Traefik's circuit breaker recovery duration (its default), and a second more.
BREAKER_RECOVERY = 11


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    require_isolated()      # before anything is built: not root, no namespace, no lab
    started = time.monotonic()
    lab = EndToEndLab.make(tmp_path_factory.mktemp("e2e-lab"))
    try:
        lab.up()
        lab.timings["bring-up"] = time.monotonic() - started
        print(f"\nend-to-end lab up: {lab.timings}; slowest steps {lab.replays[0].slowest()}")
        yield lab
    finally:
        lab.down()


def planned(lab: EndToEndLab) -> set[tuple[str, str]]:
    """Every check verify derives from the dev stack with the options the lab passes."""
    options = VerifyOptions(root_ca=str(lab.root_ca), root_fingerprint=lab.outputs["rootCaFingerprint"],
                            client_cert=str(lab.client_cert), portainer_password_file=str(lab.password_file),
                            gateway_client_cert=str(lab.gateway_client_chain))
    return {(c.check, c.target) for c in all_checks(lab.topo, options)}


def all_green(lab: EndToEndLab, what: str, timeout: float = MESH_RECOVERY) -> None:
    lab.wait_for(lambda failing: failing == {}, timeout, what)


def acme_certificate(lab: EndToEndLab) -> x509.Certificate:
    """The mesh's own certificate as Traefik stored it (its resolver's ACME store on the mesh guest)."""
    store = json.loads(lab.guests[lab.topo.mesh.name].read("/var/lib/traefik/acme.json"))
    found = [c for resolver in store.values() for c in resolver.get("Certificates") or []
             if c["domain"]["main"] == lab.topo.mesh_name]
    assert len(found) == 1, store.keys()
    return x509.load_pem_x509_certificate(base64.b64decode(found[0]["certificate"]))


def test_verify_passes_against_the_lab_replayed_from_the_plan(e2e):
    done = e2e.verify()
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    checks = planned(e2e)
    assert lines[-1] == f"{len(checks)} passed, 0 failed, 0 skipped", done.stdout
    assert len(lines) == len(checks) + 1 and all(line.startswith("ok   ") for line in lines[:-1]), done.stdout
    assert {tuple(line.split()[1:3]) for line in lines[:-1]} == checks
    by_key = {tuple(line.split()[1:3]): line for line in lines[:-1]}
    # The public name through the NAT and nginx, with the certificate certbot got from Pebble...
    assert by_key[("https/public", "chat.lab.example.com")].startswith(
        "ok   https/public chat.lab.example.com -> HTTP 200 /health via 203.0.113.10:443 (TLSv1.3, issuer Pebble")
    # ...the mesh with the certificate Traefik got from step-ca by ACME (issued by the plan's intermediate)...
    intermediate = x509.load_pem_x509_certificate(
        e2e.plan.run.named("intermediate-ca-cert").outputs["certPem"].encode())
    issuer = intermediate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    # ...service to service: each service's names on the mesh's 443, with the certificate Traefik got
    # for them from step-ca (the name dialled is the name verified)...
    for name in ("llm.lab.internal", "chat.lab.internal"):
        assert by_key[("service/internal", name)] == \
            f"ok   service/internal {name} -> HTTP 200 /health via 10.20.0.12:443 (TLSv1.3, issuer {issuer})"
    # ...the gateway's client certificate, the program's, and when `pulumi up` must re-issue it...
    assert by_key[("pki/gateway-client-cert", str(e2e.gateway_client_chain))].startswith(
        "ok   pki/gateway-client-cert ")
    assert "-> gateway.lab.internal, signed by Phoenix Lab Gateway Client CA; expires " in \
        by_key[("pki/gateway-client-cert", str(e2e.gateway_client_chain))]
    ports = mesh_render.entrypoint_ports(e2e.topo)
    assert by_key[("mesh/ping", f"mesh.lab.internal:{ports['gateway']}")].endswith(f"(TLSv1.3, issuer {issuer})")
    assert by_key[("mesh/ping", f"mesh.lab.internal:{ports['metrics']}")].endswith("(plain HTTP)")
    assert by_key[("ca/health", "ca.lab.internal")] == \
        f"ok   ca/health ca.lab.internal -> HTTP 200 /health via 10.20.0.13:9000 (TLSv1.3, issuer {issuer})"
    # ...the names from the real named, both views (the external one asked from the internet)...
    assert by_key[("dns/external", "chat.lab.example.com")] == "ok   dns/external chat.lab.example.com -> 203.0.113.10"
    assert by_key[("dns/internal", "chat.lab.example.com")] == "ok   dns/internal chat.lab.example.com -> 10.20.0.11"
    assert by_key[("dns/internal", "chat.lab.internal")] == "ok   dns/internal chat.lab.internal -> 10.20.0.12"
    assert by_key[("dns/internal", "gpu-llm.lab.internal")] == "ok   dns/internal gpu-llm.lab.internal -> 10.20.0.20"
    # (the very certificate Traefik keeps in its ACME store, with the stack's leaf lifetime)
    stored = acme_certificate(e2e)
    assert stored.public_bytes(serialization.Encoding.DER) == \
        e2e.served_leaf(e2e.topo.mesh.name, ports["internal"])
    lifetime = stored.not_valid_after_utc - stored.not_valid_before_utc
    leaf_hours = dt.timedelta(hours=e2e.topo.lab.pki.leaf_lifetime_hours)
    assert leaf_hours <= lifetime <= leaf_hours + dt.timedelta(minutes=1), lifetime   # step-ca backdates 1 min
    # ...and the agent the plan's register step put in Portainer (which pinged it first).
    assert by_key[("portainer/agent", "agent-1")] == \
        "ok   portainer/agent agent-1 -> environment 'agent-1' up (tcp://10.20.0.31:9001)"
    # Every certificate met, last, soonest to expire first: Step-CA's 24-hour leaves, then the
    # gateway's client certificate, Pebble's, the intermediate, the client CA, the root.
    certs = [line for line in lines[:-1] if line.split()[1].startswith("cert/")]
    assert certs == lines[-1 - len(certs):-1] and len(certs) > 8
    days = [float(line.split(" -> ", 1)[1].split()[0]) for line in certs]
    assert days == sorted(days), certs
    assert by_key[("cert/intermediate", "ca.lab.internal")].startswith("ok   cert/intermediate ca.lab.internal -> ")
    assert f"({issuer}, issued by " in by_key[("cert/intermediate", "ca.lab.internal")]
    assert f"(mesh.lab.internal, issued by {issuer}; " in by_key[("cert/internal", "mesh.lab.internal")]
    root_days = float(by_key[("cert/root", str(e2e.root_ca))].split(" -> ", 1)[1].split()[0])
    assert e2e.topo.lab.pki.root_lifetime_hours / 24 - 1 < root_days <= e2e.topo.lab.pki.root_lifetime_hours / 24


def test_every_step_ran_once_in_its_guest_after_everything_it_depends_on(e2e):
    first = e2e.replays[0]
    assert set(first.results) == set(e2e.commands), "a step of the plan was not replayed"
    assert all(r.returncode == 0 for r in first.results.values())
    by_urn = {r.urn: name for name, r in e2e.commands.items()}
    late = [(dep, name) for name, r in e2e.commands.items() for dep in (by_urn.get(u) for u in r.dependencies)
            if dep and first.ran[dep][1] > first.ran[name][0]]
    assert late == [], f"steps started before a step they depend on had finished: {late}"
    # Every tier's steps ran (bootstrap, trust, DNS, CA, certificates, services), each in its guest.
    kinds = {name.removeprefix(f"{e2e.guest_of[name].removeprefix('node:')}-") for name in first.results}
    assert {"bootstrap", "trust", "bind-install", "bind-config", "step-ca-install", "step-ca-config",
            "step-ca-health", "acme-client", "cert-llm", "cert-portainer-ui", "mesh-client-cert",
            "traefik-install", "traefik-static", "traefik-dynamic", "nginx-install", "nginx", "public-cert",
            "svc-llm", "portainer-server", "portainer-agent", "register-agent-1", "gpu-driver"} <= kinds
    # The install steps fetched every release from the mirror (and checked it against its pin).
    assert sorted(set(e2e.mirror.fetched)) == sorted(e2e.release.files()), e2e.mirror.fetched
    # The node's GPU probe answered what the plan was made with (what pulumi up feeds the driver step).
    assert first.results[f"gpu-probe-{next(iter(e2e.node_of.values()))}"].stdout.strip() == \
        e2e.plan.run.named(f"gpu-probe-{next(iter(e2e.node_of.values()))}").outputs["stdout"]
    print(f"first replay: {first.seconds:.1f} s; slowest {first.slowest()}")


def test_a_second_replay_of_every_step_changes_nothing(e2e):
    services = e2e.services()
    trees = {(g, tree): e2e.tree_digest(g, tree) for g in e2e.names for tree in ("etc", "usr")}
    assert {unit for _, unit in services} >= {"named.service", "step-ca.service", "traefik.service",
                                             "nginx.service", "phoenix-llm.service", "docker-portainer.service",
                                             "docker-portainer_agent.service"}
    again = e2e.replay_all()
    print(f"second replay: {again.seconds:.1f} s; slowest {again.slowest()}")
    applies = [name for name, r in e2e.commands.items() if r.value("create").startswith(APPLY)]
    changed = {name: again.results[name].stdout for name in applies
               if "unchanged" not in again.results[name].stdout}
    assert changed == {}, f"steps that applied something again: {changed}"
    assert e2e.services() == services, "a service was restarted (or stopped) by the second replay"
    for (guest, tree), before in trees.items():
        after = e2e.tree_digest(guest, tree)
        assert after == before, (f"{guest}: the second replay changed /{tree}: "
                                 f"{sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))}")


def test_restarting_every_service_keeps_verify_green(e2e):
    services = e2e.services()
    mesh = e2e.topo.mesh.name
    served = e2e.served_leaf(mesh, mesh_render.entrypoint_ports(e2e.topo)["internal"])
    # Traefik last, as an operator restarting a lab would: the rest comes back under it.
    for guest, unit in sorted(services, key=lambda k: (k == (mesh, "traefik.service"), k)):
        e2e.login(guest, ["systemctl", "restart", unit])
    restarted = e2e.services()
    assert set(restarted) == set(services), "a service did not come back"
    assert not {k for k in services if restarted[k] == services[k]}, "a service kept its process"
    started = time.monotonic()
    all_green(e2e, "after restarting every service")
    print(f"verify green {time.monotonic() - started:.1f} s after the restarts")
    # Traefik came back with the certificate it stored, without asking step-ca again.
    assert e2e.served_leaf(mesh, mesh_render.entrypoint_ports(e2e.topo)["internal"]) == served


def test_the_gateway_entrypoint_wants_the_gateways_own_client_certificate(e2e):
    """What made the public checks pass is the gateway's client certificate (the program's, signed
    by the gateway client CA): without one, with one from another CA, or with another guest's
    certificate from step-ca (under the same Phoenix root: the LLM service's own), the mesh's
    gateway entrypoint refuses at the handshake."""
    port = mesh_render.entrypoint_ports(e2e.topo)["gateway"]
    mesh, name = str(e2e.topo.mesh.address), e2e.topo.mesh_name
    other = TestCA("Some Other CA")
    chain, key = other.issue([e2e.topo.guest_fqdn(e2e.topo.gateway)], client=True)
    (e2e.tmp / "client-elsewhere.crt").write_text(chain + other.cert_pem)
    (e2e.tmp / "client-elsewhere.key").write_text(key)
    llm = e2e.guests[e2e.topo.service("llm").guests[0]]
    (e2e.tmp / "client-stepca.crt").write_text(llm.read("/etc/phoenix/tls/llm.crt"))
    (e2e.tmp / "client-stepca.key").write_text(llm.read("/etc/phoenix/tls/llm.key"))
    for client in (None, (str(e2e.tmp / "client-elsewhere.crt"), str(e2e.tmp / "client-elsewhere.key")),
                   (str(e2e.tmp / "client-stepca.crt"), str(e2e.tmp / "client-stepca.key"))):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_request(mesh, port, name, name, "/ping", trust_context(str(e2e.root_ca), *(client or ())), 3)
    ctx = trust_context(str(e2e.root_ca), str(e2e.client_cert), str(e2e.client_key))
    assert https_request(mesh, port, name, name, "/ping", ctx, 3).status == 200


def test_a_backend_certificate_from_another_ca_fails_exactly_the_checks_through_that_backend(e2e):
    """A renewal that installed a certificate the mesh cannot verify, through the certificate's
    own deploy hook (what certbot's renewal runs): the LLM service restarts on it, the mesh
    refuses it, and exactly the checks through that backend fail."""
    llm = e2e.topo.service("llm")
    guest = llm.guests[0]
    [names] = [n for cert, n in certificate_requests(e2e.files, guest).items() if cert == llm.name]
    assert names == ["gpu-llm.lab.internal"]     # its guest's name: the service's names are the mesh's
    other = TestCA("Some Other CA")
    chain, key = other.issue(names)
    e2e.guests[guest].write("/root/elsewhere/fullchain.pem", chain + other.cert_pem, 0o644)
    e2e.guests[guest].write("/root/elsewhere/privkey.pem", key, 0o600)
    hook = f"/usr/local/lib/phoenix/acme-deploy-{llm.name}.sh"
    e2e.login(guest, [hook], env={"RENEWED_LINEAGE": "/root/elsewhere"})
    through = {("service/internal", "llm.lab.internal"), ("service/internal", "chat.lab.internal"),
               ("https/public", "chat.lab.example.com")}
    try:
        failing = e2e.wait_for(lambda f: set(f) == through, MESH_RECOVERY, "the mesh refusing the backend")
        print(failing)
        # Traefik answers 500 when it cannot verify a backend, and its circuit breaker, tripped by
        # those, 503 until it recovers.
        assert all(detail.startswith(("HTTP 500 ", "HTTP 503 ")) for detail in failing.values()), failing
        log = e2e.service_log(e2e.topo.mesh.name, "traefik")
        assert 'error="tls: failed to verify certificate: x509: certificate signed by unknown authority"' in log, \
            log[-3000:]
    finally:
        e2e.login(guest, [hook], env={"RENEWED_LINEAGE": f"/etc/phoenix/acme/live/{llm.name}"})
    all_green(e2e, "after the backend's own certificate came back")
    # The refused backend's 500s opened the circuit breaker of the service's routers; once they
    # pass again it lets a growing share of calls through for its recovery (10 s, Traefik's
    # default), answering the rest 503: wait that out, so the next test sees a settled mesh.
    time.sleep(BREAKER_RECOVERY)
    all_green(e2e, "after the circuit breaker's recovery")


def test_a_missing_dns_record_pushed_through_the_dns_step_fails_exactly_its_check(e2e):
    service = next(s for s in e2e.topo.lab.services if not s.aliases)   # no other name hangs on its record
    name, address = e2e.topo.service_fqdn(service), str(e2e.topo.mesh.address)   # a service's name: the mesh
    assert name == "portainer-ui.lab.internal"
    step = f"{e2e.topo.dns.name}-bind-config"
    assert "files applied" in e2e.step(step, e2e.dns_bundle_without(name)).stdout
    try:
        assert e2e.failing() == {("dns/internal", name): f"NXDOMAIN from 10.20.0.10, expected {address}"}
    finally:
        e2e.step(step)
    all_green(e2e, "after the DNS step's own bundle was pushed again")


def test_a_wrong_upstream_port_pushed_to_the_gateway_fails_exactly_the_public_checks(e2e):
    block = gw.server_blocks(e2e.topo)[0]
    wrong = block.upstream_port + 1
    assert wrong not in mesh_render.entrypoint_ports(e2e.topo).values()   # nothing of the mesh listens there
    upstream = f"server {block.upstream_address}:{block.upstream_port};"
    step = f"{e2e.topo.gateway.name}-nginx"
    planned_bundle = e2e.commands[step].value("stdin")
    broken = with_file(planned_bundle, gw.SITES_CONF,
                       lambda text: text.replace(upstream, f"server {block.upstream_address}:{wrong};"))
    assert broken != planned_bundle
    error_log = e2e.guests[e2e.topo.gateway.name].path("/var/log/nginx/error.log")
    mark = len(error_log.read_text())
    e2e.step(step, broken)   # nginx -t and the step's health check pass: the port is not theirs to know
    try:
        public = {("https/public", h) for h in e2e.topo.public_hosts}
        failing = e2e.wait_for(lambda f: set(f) == public, 15, "nginx's new workers")
        assert public == {("https/public", "chat.lab.example.com"), ("https/public", "portainer.lab.example.com")}
        assert all(d.startswith("HTTP 502 for ") for d in failing.values()), failing
        assert f'upstream: "https://{block.upstream_address}:{wrong}/' in error_log.read_text()[mark:]
    finally:
        e2e.step(step)
    all_green(e2e, "after the gateway's own bundle was pushed again", 15)
