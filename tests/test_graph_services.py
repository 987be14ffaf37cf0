"""The topology picture shows the service-to-service paths next to the public ones, and the gateway
client CA next to the Phoenix PKI (Mermaid and Graphviz alike)."""

from __future__ import annotations

import pytest

from conftest import SHIPPED_STACKS, shipped_plan
from phoenix.graph import dot
from phoenix.plan.graph import mermaid


@pytest.mark.parametrize("stack", SHIPPED_STACKS)
def test_every_service_name_is_drawn_to_the_mesh_from_the_guests(stack):
    topo = shipped_plan(stack).topo
    names = [n for s in topo.lab.services for n in topo.service_names(s)]
    port = topo.entrypoints["internal"].port
    assert port == 443
    edge = f'clients -- "{port}/tcp: {", ".join(names)}" --> g_{topo.mesh.name.replace("-", "_")}'
    assert f"  {edge}" in mermaid(topo).splitlines()
    graph = dot(topo)
    assert f'clients -> "g_{topo.mesh.name}" [label="{port}/tcp: {", ".join(names)}"];' in graph
    # the public path is still there: the Internet to the gateway, the gateway to the mesh
    assert f'internet -> "g_{topo.gateway.name}"' in graph
    assert f'"g_{topo.gateway.name}" -> "g_{topo.mesh.name}" [label="{topo.entrypoints["gateway"].port}/tcp"];' in graph


def test_the_gateway_client_ca_signs_the_gateways_certificate_alone():
    topo = shipped_plan("dev").topo
    assert 'root --> gwca["Gateway client CA"]' in mermaid(topo)
    assert f'gwca -> "g_{topo.gateway.name}"' in dot(topo)
    assert dot(topo).count("gwca ->") == 1
