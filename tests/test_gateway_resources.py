"""GatewayTier under the mock runtime (the offline plan): steps, order, secrets, one source of truth."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from components.gateway import STEP_CLIENT_CERT, STEP_INSTALL, STEP_NGINX, STEP_PLACEHOLDER, STEP_PUBLIC_CERT, STEPS
from conftest import edited
from phoenix.bundle import digest
from phoenix.plan import make_plan
from phoenix.plan.writer import COMMAND, bundle_of, pushed_files
from phoenix.render import gateway as gw


def step(plan, name):
    return plan.run.named(f"{plan.topo.gateway.name}-{name}")


def gateway_commands(plan):
    guest = plan.topo.gateway
    return [r for r in plan.run.by_type(COMMAND) if (r.value("connection") or {}).get("host") == str(guest.address)]


def test_steps_run_on_the_gateway_guest_with_nginx_own_hooks(any_plan):
    guest = any_plan.topo.gateway
    [tier] = any_plan.run.by_type("phoenix:tier:Gateway")
    for name in STEPS:
        r = step(any_plan, name)
        assert r.type == COMMAND and r.value("connection")["host"] == str(guest.address)
        assert r.parent == tier.urn and r.value("create").startswith("/usr/local/sbin/phoenix-apply ")
    create = step(any_plan, STEP_NGINX).value("create")
    assert f"--check {shlex.quote(gw.NGINX_CHECK)}" in create and f"--reload {shlex.quote(gw.NGINX_RELOAD)}" in create
    assert f"--health '{gw.health_command(any_plan.topo)}'" in create
    files = {f.path for f in bundle_of(step(any_plan, STEP_NGINX))}
    assert files == {gw.NGINX_CONF, gw.SITES_CONF, f"{gw.SNIPPETS}/phoenix-proxy-headers.conf",
                     f"{gw.SNIPPETS}/phoenix-acme-challenge.conf", f"{gw.SNIPPETS}/phoenix-security-headers.conf"}


def test_steps_wait_for_the_guest_and_for_each_other(any_plan):
    guest = any_plan.topo.gateway.name

    def urn(name: str) -> str:
        return any_plan.run.urn_of(f"{guest}-{name}")
    has_trust = f"{guest}-trust" in {r.name for r in any_plan.run.resources}
    ready = [urn("bootstrap")] + ([urn("trust")] if has_trust else [])
    for name in STEPS:
        deps = step(any_plan, name).dependencies
        assert all(u in deps for u in ready), (name, deps)
    order = {STEP_PLACEHOLDER: STEP_INSTALL, STEP_NGINX: STEP_PLACEHOLDER, STEP_PUBLIC_CERT: STEP_NGINX}
    for later, earlier in order.items():
        assert urn(earlier) in step(any_plan, later).dependencies
    # the client certificate towards the mesh: over the placeholder, after the nginx step
    assert urn(STEP_NGINX) in step(any_plan, STEP_CLIENT_CERT).dependencies


def test_client_certificate_is_the_programs_signed_by_the_gateway_client_ca(any_plan):
    """Not Step-CA's: the gateway client CA (under the Phoenix root) signs it, the one CA the mesh's
    gateway entrypoint trusts. Pushed with nginx's own check and reload; the key only on stdin."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    client = step(any_plan, STEP_CLIENT_CERT)
    create = client.value("create")
    assert f"--check {shlex.quote(gw.NGINX_CHECK)}" in create and f"--reload {shlex.quote(gw.NGINX_RELOAD)}" in create
    assert "stdin" in client.secret_paths()
    files = {f.path: f for f in bundle_of(client)}
    assert set(files) == {gw.CLIENT_TLS.cert, gw.CLIENT_TLS.key}
    assert (files[gw.CLIENT_TLS.key].mode, files[gw.CLIENT_TLS.key].owner) == (0o600, "root")
    leaf, ca = x509.load_pem_x509_certificates(files[gw.CLIENT_TLS.cert].content.encode())
    root = x509.load_pem_x509_certificate(any_plan.run.named("root-ca-cert").outputs["certPem"].encode())
    assert ca.public_bytes(serialization.Encoding.PEM).decode() == \
        any_plan.run.named("gateway-client-ca-cert").outputs["certPem"]
    leaf.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(root)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == gw.client_certificate_names(any_plan.topo)
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key = serialization.load_pem_private_key(files[gw.CLIENT_TLS.key].content.encode(), None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()
    # Step-CA's intermediate signs everything else; it did not sign this one
    intermediate = x509.load_pem_x509_certificate(
        any_plan.run.named("intermediate-ca-cert").outputs["certPem"].encode())
    assert leaf.issuer != intermediate.subject
    assert any_plan.run.outputs["gatewayClientCertificate"]["chainPem"] == files[gw.CLIENT_TLS.cert].content


def test_dns01_secret_only_in_the_root_only_file_on_stdin(cluster_plan):
    plan = cluster_plan
    tsig = plan.run.named("tsig-key").outputs["base64"]
    cert = step(plan, STEP_PUBLIC_CERT)
    assert "stdin" in cert.secret_paths()                    # the bundle is a secret input
    for r in gateway_commands(plan):                         # never on a command line
        assert tsig not in (r.value("create") or "") and tsig not in json.dumps(r.value("triggers") or [])
    creds = pushed_files(plan.run, plan.topo)[plan.topo.gateway.name][gw.RFC2136_CREDENTIALS][0]
    assert f"dns_rfc2136_secret = {tsig}" in creds.content
    assert (creds.mode, creds.owner) == (0o600, "root")
    assert tsig not in json.dumps(plan.document())           # the written plan shows it redacted
    for name in (STEP_INSTALL, STEP_PLACEHOLDER, STEP_NGINX):   # no other gateway bundle carries it
        assert all(tsig not in f.content for f in bundle_of(step(plan, name)))


def test_http01_stack_has_no_credentials_and_no_secret_bundle(dev_plan):
    cert = step(dev_plan, STEP_PUBLIC_CERT)
    assert "stdin" not in cert.secret_paths()
    assert gw.RFC2136_CREDENTIALS not in {f.path for f in bundle_of(cert)}


def test_upstream_port_is_the_mesh_gateway_entrypoint(any_plan):
    topo = any_plan.topo
    conf = pushed_files(any_plan.run, topo)[topo.gateway.name][gw.SITES_CONF][0].content
    ep = topo.entrypoints["gateway"]
    assert re.findall(r"^\s*server (\S+);", conf, re.M) == [f"{topo.mesh.address}:{ep.port}"]
    assert {(s.upstream_port, s.entrypoint) for s in gw.server_blocks(topo)} == {(ep.port, ep.name)}
    # and the mesh tier's own static config listens there, when it is in the plan
    static = [yaml.safe_load(f.content) for f, _ in pushed_files(any_plan.run, topo)[topo.mesh.name].values()
              if f.path.endswith((".yaml", ".yml")) and "entryPoints:" in f.content]
    for doc in static:
        if isinstance(doc, dict) and "entryPoints" in doc:
            assert doc["entryPoints"][ep.name]["address"].endswith(f":{ep.port}")


@pytest.fixture(scope="module")
def moved_plan():
    """dev with the mesh's gateway port moved and one service's timeout changed."""
    def edit(raw):
        raw.setdefault("mesh", {})["gatewayPort"] = 9555
        raw["services"][0]["timeout"] = 1234
    return make_plan(edited("dev", edit))


def test_a_catalog_change_touches_only_the_nginx_step(dev_plan, moved_plan):
    conf = pushed_files(moved_plan.run, moved_plan.topo)["gateway"][gw.SITES_CONF][0].content
    assert f"server {moved_plan.topo.mesh.address}:9555;" in conf and "proxy_read_timeout 1234s;" in conf
    for name in STEPS:
        before, after = bundle_of(step(dev_plan, name)), bundle_of(step(moved_plan, name))
        assert (digest(before) != digest(after)) == (name == STEP_NGINX), name


def test_exports_name_the_certificate(any_plan):
    out = any_plan.run.outputs["gatewayCertificate"]
    assert out["name"] == gw.CERT_NAME and out["names"] == gw.certificate_names(any_plan.topo)
    assert out["acmeDirectory"] == any_plan.topo.public_acme_directory


def test_dns01_credentials_match_the_key_our_dns_accepts(cluster_plan):
    """The TSIG key the gateway signs updates with is the one BIND on the DNS guest holds."""
    topo = cluster_plan.topo
    files = pushed_files(cluster_plan.run, topo)
    creds = dict(line.split(" = ") for line in files[topo.gateway.name][gw.RFC2136_CREDENTIALS][0].content.splitlines()
                 if " = " in line)
    assert creds["dns_rfc2136_server"] == str(topo.dns.address)
    keys = [f.content for p, (f, _) in files[topo.dns.name].items() if p.endswith(f"/{topo.acme_tsig_key_name}.key")]
    if not keys:
        pytest.skip("the DNS tier pushes no TSIG key file in this plan")
    key = keys[0]
    assert f'key "{creds["dns_rfc2136_name"]}"' in key
    assert re.search(rf"algorithm {creds['dns_rfc2136_algorithm']};", key, re.I)
    assert f'secret "{creds["dns_rfc2136_secret"]}";' in key
