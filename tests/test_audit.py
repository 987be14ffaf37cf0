"""The route audit: clean on the shipped stacks, and each hop of a route broken in turn (by editing
what the tiers would deploy) is named exactly, and nothing else is."""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest

from conftest import SHIPPED_STACKS, edited, shipped_plan, stack_config
from phoenix import cli
from phoenix.artifacts import render_all
from phoenix.audit import audit
from phoenix.errors import ConfigError
from phoenix.plan import make_plan
from phoenix.render import gateway
from phoenix.render import mesh as mesh_render
from phoenix.render.mesh import MTLS_OPTION

HOST = "chat.lab.example.com"          # the dev stack's public route to the llm service
ROUTER = "llm-gateway"


def route_audit(topo):
    return audit(topo, render_all(topo))


@pytest.fixture(scope="module")
def dev():
    topo = shipped_plan("dev").topo
    return topo, render_all(topo)


def broken(dev, edit) -> list[str]:
    topo, art = dev
    art = copy.deepcopy(art)
    edit(art, topo)
    return audit(topo, art).problems


@pytest.mark.parametrize("stack", SHIPPED_STACKS)
def test_shipped_stacks_pass_and_the_summary_walks_every_hop_of_every_route(stack):
    topo = shipped_plan(stack).topo
    report = route_audit(topo)
    assert report.problems == []
    assert report.lines[0].endswith(": ok")
    lines = report.lines
    for route in topo.routes:
        s = topo.service(route.service)
        head = (f"  https://{route.host}/ -> service {s.name}" if route.public
                else f"  https://{route.host}/ -> service {s.name} (internal: service to service)")
        i = lines.index(head)
        hops = 2 if route.public else 1          # client -> gateway -> mesh, or guest -> mesh
        block = lines[i + 1:i + 1 + hops + len(route.backends)]
        if route.public:
            assert block[0].startswith(f"    client -> gateway {topo.gateway.address}:443: https, Let's Encrypt")
            assert block[1] == (f"    gateway -> mesh: https://{topo.mesh.address}:{route.entrypoint.port} (entrypoint "
                                f"gateway): verify {topo.mesh_name} against the Phoenix root, the gateway's client "
                                "certificate")
        else:
            # a guest dials the service's names on 443: they resolve to the mesh, which holds a
            # Step-CA certificate for them and breaks the circuit before it retries
            names = topo.service_names(s)
            assert block[0] == (f"    guest -> mesh: {', '.join(names)} -> {topo.mesh.address} (internal view); "
                                f"https://{topo.mesh.address}:443 (entrypoint internal) from the guests "
                                f"({topo.lab.network.cidr}): Step-CA certificate for {', '.join(sorted(names))}; "
                                "circuit-breaker -> retry")
        for b, line in zip(route.backends, block[-len(route.backends):], strict=True):
            assert line.startswith("    mesh -> backend: router ") and f"-> {b.url}: " in line
            if b.scheme == "https":
                assert f": https, verify {topo.replica_tls_name(s, b.guest)} against the Phoenix root; certificate " \
                       f"{s.name} (" in line
            else:
                assert line.endswith(": plain HTTP, not encrypted (protocol: http in the catalog)")


def test_what_the_audit_reads_is_what_the_tiers_push():
    """Change the artifacts and both the audit's verdict and the pushed files change with them:
    the files are made from the very values the audit walked, never rendered again."""
    topo = shipped_plan("dev").topo
    art = render_all(topo)
    art.gateway = [dataclasses.replace(b, upstream_port=8444) if b.host == HOST else b for b in art.gateway]
    art.mesh_dynamic["http"]["services"]["llm"]["loadBalancer"]["servers"] = [{"url": "https://10.20.0.20:8001"}]
    zone = next(z for z in art.dns_zones if z.view == "internal" and z.name == topo.lab.domains.internal)
    moved = tuple(dataclasses.replace(r, value="10.20.0.99") if r.name == "gpu-llm.lab.internal" else r
                  for r in zone.records)
    art.dns_zones = [dataclasses.replace(z, records=moved) if z is zone else z for z in art.dns_zones]

    problems = audit(topo, art).problems
    assert f"route {HOST}: gateway upstream port 8444 is not a mesh entrypoint (gateway=8443)" in problems
    assert any("https://10.20.0.20:8001 (no service listens on gpu-llm:8001)" in p for p in problems)
    sites = {f.path: f.content for f in art.gateway_files}[gateway.SITES_CONF]
    assert "10.20.0.12:8444" in sites and "10.20.0.12:8443" not in sites
    pushed = {f.path: f.content for f in art.mesh_dynamic_files}
    assert "https://10.20.0.20:8001" in pushed[mesh_render.DYNAMIC_PATH]
    assert "https://10.20.0.20:8001\n" in pushed[mesh_render.EXPECTED_PATH]
    zone_file = {f.path: f.content for f in art.dns_files("c2VjcmV0")}[zone.file]
    assert re.search(r"^gpu-llm\.lab\.internal\.\s+IN\s+A\s+10\.20\.0\.99$", zone_file, re.M), zone_file


# -- one hop at a time ------------------------------------------------------------------------
def test_missing_public_dns_record(dev):
    def edit(art, topo):
        del art.dns["external"][HOST]
    assert broken(dev, edit) == [f"route {HOST}: the external DNS view answers nothing "
                                 "(expected A 203.0.113.10, the gateway's public address)"]


def test_wrong_gateway_upstream_port(dev):
    def edit(art, topo):
        art.gateway = [dataclasses.replace(b, upstream_port=8444) if b.host == HOST else b for b in art.gateway]
    assert broken(dev, edit) == [f"route {HOST}: gateway upstream port 8444 is not a mesh entrypoint (gateway=8443)"]


def test_router_on_an_undefined_entrypoint(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["routers"][ROUTER]["entryPoints"] = ["gatewy"]
    assert broken(dev, edit) == [f"mesh router {ROUTER}: entrypoint 'gatewy' is not defined "
                                 "(defined: acme, dashboard, gateway, internal, metrics)"]


def test_router_rule_for_another_host(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["routers"][ROUTER]["rule"] = "Host(`chta.lab.example.com`)"
    assert broken(dev, edit) == [f"route {HOST}: the mesh has no router for it (no rule with Host(`{HOST}`))"]


def test_service_backend_on_a_port_nothing_listens_on(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["services"]["llm"]["loadBalancer"]["servers"] = [{"url": "https://10.20.0.20:8001"}]
    assert broken(dev, edit) == [
        f"mesh service llm (llm.lab.internal, chat.lab.internal, {HOST}): no usable backend: "
        "https://10.20.0.20:8001 (no service listens on gpu-llm:8001)"]


def test_firewall_rule_missing_for_the_mesh(dev):
    def edit(art, topo):
        art.firewall["gpu-llm"] = [r for r in art.firewall["gpu-llm"] if r.dport != 8000]
    assert broken(dev, edit) == [
        f"mesh service llm (llm.lab.internal, chat.lab.internal, {HOST}): no usable backend: "
        "https://10.20.0.20:8000 (the firewall of gpu-llm does not let the mesh (10.20.0.12) reach tcp/8000)"]


def test_misspelt_middleware(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["routers"][ROUTER]["middlewares"] = [mesh_render.RETRY, "circuit-breakr"]
    defined = ", ".join(sorted(dev[1].mesh_dynamic["http"]["middlewares"]))
    assert mesh_render.CIRCUIT_BREAKER in defined
    assert broken(dev, edit) == [f"mesh router {ROUTER}: middleware 'circuit-breakr' is not defined "
                                 f"(defined: {defined})"]


def test_misspelt_tls_option(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["routers"][ROUTER]["tls"]["options"] = "require-mtls@file"
    assert broken(dev, edit) == [f"mesh router {ROUTER}: TLS option 'require-mtls@file' is not defined "
                                 f"(defined: default, {MTLS_OPTION})"]


# -- more hops --------------------------------------------------------------------------------
def test_missing_internal_record(dev):
    def edit(art, topo):
        del art.dns["internal"]["gpu-llm.lab.internal"]
    assert broken(dev, edit) == ["internal name gpu-llm.lab.internal: the internal DNS view answers nothing "
                                 "(missing A 10.20.0.20)"]


def test_internal_name_leaking_into_the_external_view(dev):
    def edit(art, topo):
        art.dns["external"]["llm.lab.internal"] = [("A", "10.20.0.20")]
    assert broken(dev, edit) == ["internal name llm.lab.internal: the external DNS view answers A 10.20.0.20 "
                                 "(internal names must not leave the internal view)"]


def test_gateway_without_server_block(dev):
    def edit(art, topo):
        art.gateway = [b for b in art.gateway if b.host != HOST]
    assert broken(dev, edit) == [f"route {HOST}: the gateway has no server block for it"]


def test_gateway_verifying_a_name_the_mesh_has_no_certificate_for(dev):
    def edit(art, topo):
        art.gateway = [dataclasses.replace(b, ssl_name="traefik.lab.internal") if b.host == HOST else b
                       for b in art.gateway]
    assert broken(dev, edit) == [f"route {HOST}: the gateway verifies the mesh as traefik.lab.internal, but the "
                                 "mesh gets a certificate for mesh.lab.internal"]


def test_router_without_tls_behind_a_tls_gateway_hop(dev):
    """Trap 1: the gateway re-encrypts, the router listens for plain HTTP only: every request a 404."""
    def edit(art, topo):
        del art.mesh_dynamic["http"]["routers"][ROUTER]["tls"]
    assert broken(dev, edit) == [f"route {HOST}: mesh router {ROUTER} on entrypoint gateway has no TLS section, "
                                 "so the gateway's TLS requests never reach it (404)"]


def test_gateway_routers_without_client_certificates(dev):
    def edit(art, topo):
        del art.mesh_dynamic["tls"]["options"][MTLS_OPTION]["clientAuth"]
    topo, _art = dev
    problems = broken(dev, edit)
    assert problems == [f"route {r.host}: mesh router {r.service}-gateway on entrypoint gateway does not require a "
                        f"client certificate from the gateway client CA alone (TLS option {MTLS_OPTION} trusts "
                        "none): another guest's certificate could open it"
                        for r in topo.public_routes]


def test_sni_router_missing_means_421(dev):
    """Traefik picks TLS options by SNI; the gateway's SNI is the mesh's name (trap 1's cousin)."""
    def edit(art, topo):
        del art.mesh_dynamic["http"]["routers"]["mesh-gateway"]
    topo, _art = dev
    assert broken(dev, edit) == [f"route {h}: on entrypoint gateway the gateway's SNI mesh.lab.internal selects TLS "
                                 f"option default but the host selects {MTLS_OPTION}: Traefik would answer 421"
                                 for h in topo.public_hosts]


def test_mesh_firewall_closed_to_the_gateway(dev):
    def edit(art, topo):
        art.firewall["mesh"] = [r for r in art.firewall["mesh"] if r.dport != 8443]
    assert broken(dev, edit)[0] == (f"route {HOST}: the mesh's firewall does not let the gateway (10.20.0.11) "
                                    "reach tcp/8443")


# -- the scheme and verification of each hop ----------------------------------------------------
def test_gateway_not_verifying_the_mesh(dev):
    def edit(art, topo):
        art.gateway = [dataclasses.replace(b, verify=False) if b.host == HOST else b for b in art.gateway]
    topo, art = dev
    assert broken(dev, edit) == [f"route {HOST}: gateway -> mesh: the gateway does not verify the mesh's "
                                 "certificate (proxy_ssl_verify off)"]
    art = copy.deepcopy(art)
    edit(art, topo)
    assert "    gateway -> mesh: https://10.20.0.12:8443 (entrypoint gateway): NOT verified (proxy_ssl_verify off), " \
           "the gateway's client certificate" in audit(topo, art).lines


def test_gateway_speaking_plain_http_to_the_mesh(dev):
    def edit(art, topo):
        art.gateway = [dataclasses.replace(b, scheme="http", verify=False) if b.host == HOST else b
                       for b in art.gateway]
    assert broken(dev, edit) == [
        f"route {HOST}: gateway -> mesh: the gateway speaks http to the mesh; this hop must be encrypted (https)",
        f"route {HOST}: the gateway speaks http to mesh entrypoint gateway (8443), which serves https"]


def test_public_certificate_not_covering_a_host(dev):
    def edit(art, topo):
        art.gateway_certificate = [n for n in art.gateway_certificate if n != HOST]
    problems = broken(dev, edit)
    assert len(problems) == 1 and problems[0].startswith(
        f"route {HOST}: client -> gateway: the gateway's certificate (")
    assert problems[0].endswith(") does not cover it")


def test_wildcard_certificate_covers_one_label_only():
    from phoenix.audit import covers
    assert covers("*.ai.example.org", "llm.ai.example.org")
    assert not covers("*.ai.example.org", "a.llm.ai.example.org")
    assert not covers("*.ai.example.org", "ai.example.org")
    assert covers("LLM.ai.example.org.", "llm.ai.example.org")


def test_backend_transport_skipping_verification(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["serversTransports"]["llm-backend"]["insecureSkipVerify"] = True
    assert broken(dev, edit) == ["mesh service llm -> https://10.20.0.20:8000: servers transport llm-backend skips "
                                 "certificate verification (insecureSkipVerify)"]


def test_backend_transport_without_the_phoenix_root(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["serversTransports"]["llm-backend"]["rootCAs"] = []
    assert broken(dev, edit) == ["mesh service llm -> https://10.20.0.20:8000: servers transport llm-backend does "
                                 "not verify against the Phoenix root"]


def test_backend_verified_by_a_name_its_certificate_does_not_carry(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["serversTransports"]["llm-backend"]["serverName"] = "gpu-other.lab.internal"
    assert broken(dev, edit) == ["mesh service llm -> https://10.20.0.20:8000: servers transport llm-backend verifies "
                                 "gpu-other.lab.internal, which the certificate llm on gpu-llm does not carry "
                                 "(gpu-llm.lab.internal)"]


def test_backend_verified_by_the_services_name_which_resolves_to_the_mesh(dev):
    """The old single-replica design: the mesh verified llm.lab.internal. Even were the backend's
    certificate to carry it, the name resolves to the mesh: the backend could not prove it."""
    def edit(art, topo):
        art.mesh_dynamic["http"]["serversTransports"]["llm-backend"]["serverName"] = "llm.lab.internal"
        art.backend_certificates[("gpu-llm", 8000)] = dataclasses.replace(
            art.backend_certificates[("gpu-llm", 8000)], sans=("llm.lab.internal", "gpu-llm.lab.internal"))
    assert broken(dev, edit) == ["mesh service llm -> https://10.20.0.20:8000: verifies llm.lab.internal, which the "
                                 "internal view resolves to 10.20.0.12, not to the backend (10.20.0.20): the backend "
                                 "could not prove it to Step-CA by HTTP-01"]


@pytest.fixture(scope="module")
def cluster():
    topo = shipped_plan("cluster").topo
    return topo, render_all(topo)


def test_replicated_service_verifying_the_shared_name_is_named_per_replica(cluster):
    """The old design: every replica verified as llm.ai.internal, a name neither can prove."""
    def edit(art, topo):
        for g in ("gpu-a", "gpu-b"):
            art.mesh_dynamic["http"]["serversTransports"][f"llm-{g}-backend"]["serverName"] = "llm.ai.internal"
    assert broken(cluster, edit) == [
        f"mesh service llm-{g} -> https://{a}:8000: servers transport llm-{g}-backend verifies llm.ai.internal, "
        f"which the certificate llm on {g} does not carry ({g}.ai.internal)"
        for g, a in (("gpu-a", "10.30.0.20"), ("gpu-b", "10.30.0.21"))]


def test_one_replica_skipping_verification_is_named_alone(cluster):
    def edit(art, topo):
        art.mesh_dynamic["http"]["serversTransports"]["llm-gpu-b-backend"]["insecureSkipVerify"] = True
    assert broken(cluster, edit) == ["mesh service llm-gpu-b -> https://10.30.0.21:8000: servers transport "
                                     "llm-gpu-b-backend skips certificate verification (insecureSkipVerify)"]


def test_one_replica_on_a_wrong_port_is_named_alone(cluster):
    def edit(art, topo):
        art.mesh_dynamic["http"]["services"]["llm-gpu-b"]["loadBalancer"]["servers"] = [
            {"url": "https://10.30.0.21:8001"}]
    assert broken(cluster, edit) == ["mesh service llm (llm.ai.internal, llm.ai.example.org): backend "
                                     "https://10.30.0.21:8001 (no service listens on gpu-b:8001)"]


def test_weighted_service_naming_an_undefined_replica(cluster):
    def edit(art, topo):
        art.mesh_dynamic["http"]["services"]["llm"]["weighted"]["services"][1]["name"] = "llm-gpu-z"
    problems = broken(cluster, edit)
    assert problems[0].startswith("mesh service llm: service 'llm-gpu-z' is not defined (defined: ")
    assert len(problems) == 1


def test_health_propagation_needs_a_check_on_every_replica(cluster):
    """Traefik refuses a weighted service with healthCheck over a child without one."""
    def edit(art, topo):
        del art.mesh_dynamic["http"]["services"]["llm-gpu-a"]["loadBalancer"]["healthCheck"]
    assert broken(cluster, edit) == ["mesh service llm: propagates health, but its service llm-gpu-a has no "
                                     "health check"]


def test_plain_http_backend_where_the_catalog_says_https(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["services"]["llm"]["loadBalancer"]["servers"] = [{"url": "http://10.20.0.20:8000"}]
    assert broken(dev, edit) == [
        f"mesh service llm (llm.lab.internal, chat.lab.internal, {HOST}): no usable backend: "
        "http://10.20.0.20:8000 (gpu-llm:8000 speaks https, not http)"]


def test_internal_router_without_tls(dev):
    def edit(art, topo):
        del art.mesh_dynamic["http"]["routers"]["llm-internal"]["tls"]
    assert broken(dev, edit) == ["internal route llm.lab.internal: guest -> mesh: router llm-internal on entrypoint "
                                 "internal has no TLS section, so the guests' TLS requests never reach it (404)"]


def test_resolver_not_pointing_at_step_ca(dev):
    def edit(art, topo):
        art.mesh_static["certificatesResolvers"]["stepca"]["acme"]["caServer"] = \
            "https://acme-v02.api.letsencrypt.org/directory"
    assert broken(dev, edit) == ["mesh resolver stepca: asks https://acme-v02.api.letsencrypt.org/directory for "
                                 "certificates, not Step-CA's ACME directory https://10.20.0.13:9000/acme/acme/directory"]


def test_plain_http_backends_are_warned_about():
    report = route_audit(shipped_plan("cluster").topo)
    assert report.warnings == ["mesh service ollama: the mesh reaches http://10.30.0.21:11434 over plain HTTP "
                               "(protocol: http in the catalog)"]
    assert route_audit(shipped_plan("dev").topo).warnings == []


def test_phoenix_plan_prints_a_warning_for_each_plain_http_hop(tmp_path, capsys):
    """Each backend the catalog marks protocol: http is one warning line of `phoenix plan`."""
    assert cli.main(["plan", "--stack", "cluster", "--out", str(tmp_path / "cluster")]) == 0
    out = capsys.readouterr().out
    assert out.count("over plain HTTP") == 1
    assert "warning: mesh service ollama: the mesh reaches http://10.30.0.21:11434 over plain HTTP " \
           "(protocol: http in the catalog)" in out
    assert "mesh -> backend: router ollama-internal -> service ollama -> http://10.30.0.21:11434: plain HTTP" in out

    def embed_in_plain_http(raw):
        embed = next(s for s in raw["services"] if s["name"] == "embed")
        embed["protocol"] = "http"
        del embed["run"]["tls"]
    summary = make_plan(edited("cluster", embed_in_plain_http)).summary()
    assert [line for line in summary.splitlines() if "over plain HTTP" in line] == [
        "warning: mesh service embed: the mesh reaches http://10.30.0.22:8001 over plain HTTP (protocol: http in "
        "the catalog)",
        "warning: mesh service ollama: the mesh reaches http://10.30.0.21:11434 over plain HTTP (protocol: http in "
        "the catalog)"]


# -- the audit gates the program and the CLI --------------------------------------------------
def test_a_broken_route_stops_the_plan_before_any_resource(monkeypatch):
    real = gateway.server_blocks
    monkeypatch.setattr(gateway, "server_blocks",
                        lambda topo: [dataclasses.replace(b, upstream_port=8444) for b in real(topo)])
    with pytest.raises(ConfigError) as err:
        make_plan(stack_config("dev"))
    assert f"route {HOST}: gateway upstream port 8444 is not a mesh entrypoint (gateway=8443)" in err.value.problems


def test_validate_prints_the_audit_and_exits_2_on_a_broken_hop(monkeypatch, capsys):
    assert cli.main(["validate", "--stack", "dev"]) == 0
    assert "    gateway -> mesh: https://10.20.0.12:8443 (entrypoint gateway): verify mesh.lab.internal against " \
           "the Phoenix root, the gateway's client certificate" in capsys.readouterr().out
    real = gateway.server_blocks
    monkeypatch.setattr(gateway, "server_blocks", lambda topo: [b for b in real(topo) if b.host != HOST])
    assert cli.main(["validate", "--stack", "dev"]) == 2
    assert f"error: route {HOST}: the gateway has no server block for it" in capsys.readouterr().err
