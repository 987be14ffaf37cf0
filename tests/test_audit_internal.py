"""The route audit's service-to-service half and the rules every router keeps (phoenix/audit_internal.py):
each broken in turn, by editing what the tiers would deploy, is named exactly, and nothing else is."""

from __future__ import annotations

import pytest

import test_audit
from phoenix.render import mesh as mesh_render
from phoenix.render.mesh import MTLS_OPTION
from phoenix.topology import ROOT_CA_TRUST_PATH
from test_audit import broken

#: test_audit's fixture (the dev plan's topology and artifacts), collected here too
dev = test_audit.dev


def test_gateway_entrypoint_trusting_the_phoenix_root(dev):
    """Every guest's Step-CA certificate chains to the Phoenix root: trusting it would let any
    guest open the gateway entrypoint (the issue this CA exists for)."""
    def edit(art, topo):
        art.mesh_dynamic["tls"]["options"][MTLS_OPTION]["clientAuth"]["caFiles"] = [ROOT_CA_TRUST_PATH]
    topo, _art = dev
    assert broken(dev, edit) == [f"route {r.host}: mesh router {r.service}-gateway on entrypoint gateway does not "
                                 f"require a client certificate from the gateway client CA alone (TLS option "
                                 f"{MTLS_OPTION} trusts {ROOT_CA_TRUST_PATH}): another guest's certificate could "
                                 "open it" for r in topo.public_routes]


# -- service to service ---------------------------------------------------------------------------
def test_a_service_name_resolving_to_its_replica_bypasses_the_mesh(dev):
    """The old internal view: llm.lab.internal at the backend itself."""
    def edit(art, topo):
        art.dns["internal"]["llm.lab.internal"] = [("A", "10.20.0.20")]
    problems = broken(dev, edit)
    bypass = ("the internal view resolves it to 10.20.0.20, not the mesh (10.20.0.12): a guest calling it would "
              "bypass the mesh's load balancing, health checks, retries and circuit breaker")
    # the record itself, both names through it (chat is a CNAME of llm), and the certificate Step-CA
    # could not validate at the mesh
    assert problems == [
        "internal name llm.lab.internal: the internal DNS view answers A 10.20.0.20 (missing A 10.20.0.12)",
        f"internal route llm.lab.internal: guest -> mesh: {bypass}",
        f"internal route chat.lab.internal: guest -> mesh: {bypass}",
        "mesh certificate chat.lab.internal: Step-CA validates HTTP-01 at 10.20.0.20 (the internal view's answer), "
        "not at the mesh (10.20.0.12)",
        "mesh certificate llm.lab.internal: Step-CA validates HTTP-01 at 10.20.0.20 (the internal view's answer), "
        "not at the mesh (10.20.0.12)"]


def test_an_internal_router_without_the_services_certificate(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["routers"]["llm-internal"]["tls"]["domains"] = [{"main": "mesh.lab.internal"}]
    assert broken(dev, edit) == [
        f"internal route {n}: guest -> mesh: the mesh orders no certificate covering it (it has mesh.lab.internal, "
        "portainer-ui.lab.internal): a client verifying the name it dialled fails"
        for n in ("llm.lab.internal", "chat.lab.internal")]


def test_a_mesh_closed_to_the_guests(dev):
    def edit(art, topo):
        art.firewall["mesh"] = [r for r in art.firewall["mesh"] if r.dport != 443]
    topo, _art = dev
    clients = ", ".join(str(g.address) for g in topo.lab.guests if g.name != "mesh")
    hosts = ("llm.lab.internal", "portainer-ui.lab.internal")
    assert broken(dev, edit) == [f"internal route {h}: the mesh's firewall does not let the guests ({clients}) reach "
                                 "entrypoint internal (tcp/443)" for h in hosts]


def test_a_name_outside_the_cas_policy(dev):
    def edit(art, topo):
        art.mesh_dynamic["http"]["routers"]["llm-internal"]["tls"]["domains"][0]["sans"] += ["other.lab.internal"]
        art.dns["internal"]["other.lab.internal"] = [("A", "10.20.0.12")]
    assert broken(dev, edit) == ["mesh certificate other.lab.internal: not in Step-CA's policy "
                                 "(topology.step_ca_names): Step-CA would refuse the order"]


def test_the_retry_before_the_circuit_breaker(dev):
    """With the retry first, one failed attempt against a stopped replica trips the breaker for the
    whole service (the cluster lab shows the 503 burst with the real Traefik)."""
    def edit(art, topo):
        art.mesh_dynamic["http"]["routers"]["llm-internal"]["middlewares"] = [mesh_render.RETRY,
                                                                             mesh_render.CIRCUIT_BREAKER]
    assert broken(dev, edit) == ["mesh router llm-internal: applies the retry before the circuit breaker: one failed "
                                 "attempt (a replica down) trips the breaker for the whole service; list the circuit "
                                 "breaker first"]


@pytest.mark.parametrize("router, rule", [
    ("dashboard", "PathPrefix(`/api`) || PathPrefix(`/dashboard`)"),   # the rules the mesh had before
    ("local-api", "ClientIP(`127.0.0.1`) && PathPrefix(`/api`)"),
    ("ping", "Path(`/ping`)"),
])
def test_a_router_without_a_host_rule(dev, router, rule):
    def edit(art, topo):
        art.mesh_dynamic["http"]["routers"][router]["rule"] = rule
    assert broken(dev, edit) == [f"mesh router {router}: its rule {rule!r} names no Host: it answers any name, and a "
                                 "TLS router's options depend on the client's SNI"]


def test_traefiks_own_ping_router_without_manual_routing(dev):
    def edit(art, topo):
        art.mesh_static["ping"].pop("manualRouting")
    assert broken(dev, edit) == ["mesh ping: Traefik's own router for it has no Host rule; set manualRouting and "
                                 "route it with one"]
