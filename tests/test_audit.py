"""The route audit: clean on the shipped stacks, and each hop of a route broken in turn (by editing
what the tiers would deploy) is named exactly, and nothing else is."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from conftest import SHIPPED_STACKS, stack_config, shipped_plan
from phoenix import cli
from phoenix.audit import Artifacts, audit, collect_artifacts, route_audit
from phoenix.errors import ConfigError
from phoenix.plan import make_plan
from phoenix.render import firewall, gateway
from phoenix.render.mesh import MTLS_OPTION

HOST = "chat.lab.example.com"          # the dev stack's public route to the llm service
ROUTER = "llm-gateway"


@pytest.fixture(scope="module")
def dev():
    topo = shipped_plan("dev").topo
    return topo, collect_artifacts(topo)


def broken(dev, edit) -> list[str]:
    topo, art = dev
    art = copy.deepcopy(art)
    edit(art, topo)
    return audit(topo, art).problems


@pytest.mark.parametrize("stack", SHIPPED_STACKS)
def test_shipped_stacks_pass_and_the_summary_walks_every_public_route(stack):
    topo = shipped_plan(stack).topo
    report = route_audit(topo)
    assert report.problems == []
    assert report.lines[0].endswith(": ok")
    for host in topo.public_hosts:
        line = next(l for l in report.lines if l.startswith(f"  https://{host}/ "))
        route = next(r for r in topo.public_routes if r.host == host)
        assert f":{route.entrypoint.port} (verify {topo.mesh_name})" in line
        assert all(b.url in line for b in route.backends)


def test_artifacts_are_the_tiers_own_outputs(dev):
    topo, art = dev
    assert all(isinstance(b, gateway.GatewayServer) for b in art.gateway)
    assert art.gateway == gateway.server_blocks(topo)
    assert art.firewall == firewall.guest_rules(topo)
    assert set(art.dns) == {"internal", "external"}


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
        art.mesh_dynamic["http"]["routers"][ROUTER]["middlewares"] = ["retry", "circuit-breakr"]
    assert broken(dev, edit) == [f"mesh router {ROUTER}: middleware 'circuit-breakr' is not defined "
                                 "(defined: circuit-breaker, dashboard-auth, internal-networks-only, retry)"]


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
    problems = broken(dev, edit)
    assert problems == [f"route {h}: mesh router {r} on entrypoint gateway does not require a client certificate "
                        f"from the Phoenix root (TLS option {MTLS_OPTION})"
                        for h, r in ((HOST, ROUTER), ("portainer.lab.example.com", "portainer-ui-gateway"))]


def test_sni_router_missing_means_421(dev):
    """Traefik picks TLS options by SNI; the gateway's SNI is the mesh's name (trap 1's cousin)."""
    def edit(art, topo):
        del art.mesh_dynamic["http"]["routers"]["mesh-gateway"]
    problems = broken(dev, edit)
    assert len(problems) == 2
    assert problems[0] == (f"route {HOST}: on entrypoint gateway the gateway's SNI mesh.lab.internal selects TLS "
                           f"option default but the host selects {MTLS_OPTION}: Traefik would answer 421")


def test_mesh_firewall_closed_to_the_gateway(dev):
    def edit(art, topo):
        art.firewall["mesh"] = [r for r in art.firewall["mesh"] if r.dport != 8443]
    assert broken(dev, edit)[0] == (f"route {HOST}: the mesh's firewall does not let the gateway (10.20.0.11) "
                                    "reach tcp/8443")


def test_unverified_tls_backend(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["serversTransports"]["llm-backend"]["insecureSkipVerify"] = True
    assert broken(dev, edit) == [f"mesh service llm (llm.lab.internal, chat.lab.internal, {HOST}): TLS backends are "
                                 "not verified against the Phoenix root with a server name (servers transport "
                                 "llm-backend)"]


def test_resolver_not_pointing_at_step_ca(dev):
    def edit(art, topo):
        art.mesh_static["certificatesResolvers"]["stepca"]["acme"]["caServer"] = \
            "https://acme-v02.api.letsencrypt.org/directory"
    assert broken(dev, edit) == ["mesh resolver stepca: asks https://acme-v02.api.letsencrypt.org/directory for "
                                 "certificates, not Step-CA's ACME directory https://10.20.0.13:9000/acme/acme/directory"]


def test_plain_http_backends_are_warned_about():
    report = route_audit(shipped_plan("cluster").topo)
    assert "mesh service ollama: the mesh reaches http://10.30.0.21:11434 over plain HTTP " \
           "(protocol: http in the catalog)" in report.warnings


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
    assert f"  https://{HOST}/ -> gateway -> https://10.20.0.12:8443" in capsys.readouterr().out
    real = gateway.server_blocks
    monkeypatch.setattr(gateway, "server_blocks", lambda topo: [b for b in real(topo) if b.host != HOST])
    assert cli.main(["validate", "--stack", "dev"]) == 2
    assert f"error: route {HOST}: the gateway has no server block for it" in capsys.readouterr().err
