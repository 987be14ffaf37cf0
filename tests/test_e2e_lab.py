"""End to end: ``phoenix verify --stack dev`` against the dev stack brought up from its plan.

Run only through the namespace wrapper (loopback only, private mounts):

    bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_e2e_lab.py

What runs (tests/e2e_harness.py): real named with the plan's DNS step, real nginx with the
plan's gateway steps and a public certificate from Pebble by the plan's certbot step, a
stand-in for Traefik that serves what the real mesh configuration says, and TLS stand-ins
for the backends and Step-CA with certificates from the plan's intermediate. verify runs as
an operator runs it (the CLI, the stack's root output, the gateway's client certificate).
Then one hop at a time is broken, through the same paths a deployment would take, and
exactly the checks that go through that hop fail; each break is undone and verify passes again.
"""

from __future__ import annotations

import ssl

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from components.gateway import STEP_NGINX
from conftest import shipped_plan
from e2e_harness import EndToEndLab
from gateway_harness import brought_up, with_file
from lab import Processes, require_isolated, require_tools
from phoenix.render import gateway as gw
from phoenix.render import mesh as mesh_render
from phoenix.verify import VerifyOptions, plan_checks
from phoenix.verify_probes import https_request, trust_context
from test_verify import in_private_mount_namespace
from testpki import TestCA

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    require_isolated()
    require_tools("nginx", "named", "rndc", "rndc-confgen", "named-checkzone", "named-checkconf", "dig",
                  "pebble", "certbot", "curl", "openssl", "mount")
    if not in_private_mount_namespace():
        pytest.fail("refusing to lay overlays over /etc, /var, /run and /usr/local: not in a private mount "
                    "namespace (run through scripts/in-netns.sh)")
    with brought_up(EndToEndLab(shipped_plan("dev"), tmp_path_factory.mktemp("e2e-lab"), Processes())) as lab:
        yield lab


def planned(lab: EndToEndLab) -> set[tuple[str, str]]:
    """Every check verify derives from the dev stack with the options the lab passes."""
    options = VerifyOptions(root_ca=str(lab.root_ca), root_fingerprint=lab.outputs["rootCaFingerprint"],
                            client_cert=gw.CLIENT_TLS.cert, portainer_password_file=str(lab.password_file))
    return {(c.check, c.target) for c in plan_checks(lab.topo, options)}


def assert_all_pass(lab: EndToEndLab) -> None:
    failing = lab.failing()
    assert failing == {}, f"verify still fails after the hop was restored: {failing}"


def test_verify_passes_against_the_lab_built_from_the_plan(e2e):
    done = e2e.verify()
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    checks = planned(e2e)
    assert lines[-1] == f"{len(checks)} passed, 0 failed, 0 skipped", done.stdout
    assert len(lines) == len(checks) + 1 and all(line.startswith("ok   ") for line in lines[:-1]), done.stdout
    assert {tuple(line.split()[1:3]) for line in lines[:-1]} == checks
    by_key = {tuple(line.split()[1:3]): line for line in lines[:-1]}
    # Each hop as a user sees it: the public name through nginx with Pebble's certificate...
    assert by_key[("https/public", "chat.lab.example.com")].startswith(
        "ok   https/public chat.lab.example.com -> HTTP 200 /health via 203.0.113.10:443 (TLSv1.3, issuer Pebble")
    # ...the mesh with the certificate from the plan's intermediate, on every entrypoint the real config names...
    intermediate = x509.load_pem_x509_certificate(e2e.pki.intermediate_pem.encode())
    issuer = intermediate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert by_key[("mesh/health", "llm.lab.internal")] == \
        f"ok   mesh/health llm.lab.internal -> HTTP 200 /health via 10.20.0.12:9443 (TLSv1.3, issuer {issuer})"
    ports = mesh_render.entrypoint_ports(e2e.topo)
    assert by_key[("mesh/ping", f"mesh.lab.internal:{ports['gateway']}")].endswith(f"(TLSv1.3, issuer {issuer})")
    assert by_key[("mesh/ping", f"mesh.lab.internal:{ports['metrics']}")].endswith("(plain HTTP)")
    # ...and the names from the real named, both views.
    assert by_key[("dns/external", "chat.lab.example.com")] == "ok   dns/external chat.lab.example.com -> 203.0.113.10"
    assert by_key[("dns/internal", "chat.lab.example.com")] == "ok   dns/internal chat.lab.example.com -> 10.20.0.11"
    assert by_key[("dns/internal", "chat.lab.internal")] == "ok   dns/internal chat.lab.internal -> 10.20.0.20"
    assert by_key[("portainer/agent", "agent-1")] == \
        "ok   portainer/agent agent-1 -> environment 'agent-1' up (tcp://10.20.0.31:9001)"
    assert e2e.mesh.errors == []


def test_the_gateway_entrypoint_wants_a_client_certificate_from_the_phoenix_ca(e2e):
    """What made the public checks pass is the gateway's client certificate: without one, or
    with one from another CA, the mesh's gateway entrypoint refuses (the real config's mTLS)."""
    port = mesh_render.entrypoint_ports(e2e.topo)["gateway"]
    other = TestCA("Some Other CA")
    chain, key = other.issue([e2e.topo.guest_fqdn(e2e.topo.gateway)], client=True)
    (e2e.tmp / "client-elsewhere.crt").write_text(chain + other.cert_pem)
    (e2e.tmp / "client-elsewhere.key").write_text(key)
    for client in (None, (str(e2e.tmp / "client-elsewhere.crt"), str(e2e.tmp / "client-elsewhere.key"))):
        ctx = trust_context(str(e2e.root_ca), *(client or ()))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_request(str(e2e.topo.mesh.address), port, e2e.topo.mesh_name, e2e.topo.mesh_name, "/ping", ctx, 3)
    ctx = trust_context(str(e2e.root_ca), gw.CLIENT_TLS.cert, gw.CLIENT_TLS.key)   # the gateway's own
    assert https_request(str(e2e.topo.mesh.address), port, e2e.topo.mesh_name, e2e.topo.mesh_name, "/ping",
                         ctx, 3).status == 200


def test_a_backend_certificate_from_another_ca_fails_exactly_the_checks_through_that_backend(e2e):
    llm = e2e.topo.service("llm")
    backend = (llm.name, llm.guests[0])
    assert e2e.backend_names[backend] == ["llm.lab.internal", "chat.lab.internal", "gpu-llm.lab.internal"]
    planned_tls = e2e.backend_tls[backend]
    e2e.backend_tls[backend] = e2e.other_ca_context(backend)
    try:
        failing = e2e.failing()
        assert set(failing) == {("mesh/health", "llm.lab.internal"), ("https/public", "chat.lab.example.com")}
        assert failing[("mesh/health", "llm.lab.internal")].startswith(
            "HTTP 502 for /health from 10.20.0.12:9443")
        assert failing[("https/public", "chat.lab.example.com")].startswith(
            "HTTP 502 for /health from 203.0.113.10:443")
        # The mesh refused it while verifying against the Phoenix root with the name its config says.
        assert e2e.mesh.errors and all("llm" in e and "CERTIFICATE_VERIFY_FAILED" in e for e in e2e.mesh.errors)
    finally:
        e2e.backend_tls[backend] = planned_tls
        e2e.mesh.errors.clear()
    assert_all_pass(e2e)


def test_a_missing_dns_record_pushed_through_the_dns_step_fails_exactly_its_check(e2e):
    service = next(s for s in e2e.topo.lab.services if not s.aliases)   # no other name hangs on its record
    name, address = e2e.topo.service_fqdn(service), str(e2e.topo.lab.guest(service.guests[0]).address)
    assert name == "portainer-ui.lab.internal"
    pushed = e2e.apply_dns(e2e.dns_bundle_without(name))
    assert "files applied" in pushed.stdout
    try:
        failing = e2e.failing()
        assert failing == {("dns/internal", name): f"NXDOMAIN from 10.20.0.10, expected {address}"}
    finally:
        e2e.apply_dns(e2e.dns_step.value("stdin"))
    assert_all_pass(e2e)


def test_a_wrong_upstream_port_pushed_to_the_gateway_fails_exactly_the_public_checks(e2e):
    block = gw.server_blocks(e2e.topo)[0]
    wrong = block.upstream_port + 1
    assert wrong not in mesh_render.entrypoint_ports(e2e.topo).values()   # nothing of the mesh listens there
    upstream = f"server {block.upstream_address}:{block.upstream_port};"
    step = e2e.glab.steps[STEP_NGINX]
    broken = with_file(step.value("stdin"), gw.SITES_CONF,
                       lambda text: text.replace(upstream, f"server {block.upstream_address}:{wrong};"))
    assert broken != step.value("stdin")
    error_log = "/var/log/nginx/error.log"
    mark = len(open(error_log).read())
    e2e.push_gateway(broken)   # nginx -t and the step's health check pass: the port is not theirs to know
    try:
        failing = e2e.failing()
        assert set(failing) == {("https/public", h) for h in e2e.topo.public_hosts} == {
            ("https/public", "chat.lab.example.com"), ("https/public", "portainer.lab.example.com")}
        assert all(d.startswith("HTTP 502 for ") for d in failing.values()), failing
        assert f'upstream: "https://{block.upstream_address}:{wrong}/' in open(error_log).read()[mark:]
    finally:
        e2e.push_gateway()
    assert_all_pass(e2e)
