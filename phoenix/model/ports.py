"""The ports the lab itself uses on each guest: no catalog service may take one.

One list per guest, from what the tiers run there (``phoenix.topology.Topology.flows`` opens
each of them in the firewall; ``tests/test_hostile_input.py`` checks that every port a flow opens
into a guest for the lab's own use is listed here). Port 80 belongs to certificate renewal on
every guest that gets certificates from Step-CA by ACME HTTP-01 (``Topology.acme_clients``):
certbot answers the challenge there with ``--standalone``; a service on port 80 would make every
renewal fail, and the certificate would expire within a day.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phoenix.model.lab import Lab

#: Traefik's ACME entrypoint and certbot's standalone server: HTTP-01 is validated on port 80.
ACME_HTTP_PORT = 80
RENEWAL = "certbot answers Step-CA's HTTP-01 challenge there when it renews a certificate"


def acme_client_names(lab: Lab) -> set[str]:
    """The guests that get certificates from Step-CA by ACME (as ``Topology.acme_clients``):
    the mesh, the gateway, every guest a catalog service runs on, the Portainer VM."""
    names = {g.name for g in lab.guests if g.role in ("mesh", "gateway", "portainer")}
    return names | {g for s in lab.services for g in s.guests}


def lab_ports(lab: Lab) -> dict[str, dict[int, str]]:
    """Guest name -> port -> what of the lab's own listens there."""
    m, acme = lab.mesh, acme_client_names(lab)
    by_role = {
        "dns": {53: "DNS, both views", 953: "rndc, BIND's control channel"},
        "gateway": {80: "the gateway's HTTP (ACME HTTP-01 and the redirect)", 443: "the gateway's HTTPS"},
        "mesh": {ACME_HTTP_PORT: "Traefik's ACME entrypoint", m.gateway_port: "the mesh's gateway entrypoint",
                 m.internal_port: "the mesh's internal entrypoint", m.metrics_port: "Traefik's metrics and ping",
                 m.dashboard_port: "Traefik's dashboard"},
        "ca": {lab.pki.ca_port: "Step-CA"},
        "agent": {lab.portainer.agent_port: "the Portainer agent", ACME_HTTP_PORT: RENEWAL},
        "portainer": {ACME_HTTP_PORT: RENEWAL},
        "gpu": {ACME_HTTP_PORT: RENEWAL},
    }
    out: dict[str, dict[int, str]] = {}
    for g in lab.guests:
        ports = {22: "SSH", **by_role.get(g.role, {})}
        if g.name in acme:
            ports.setdefault(ACME_HTTP_PORT, RENEWAL)
        out[g.name] = ports
    return out
