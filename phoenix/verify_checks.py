"""What ``phoenix verify`` checks: ``plan_checks(topo, options)``, a pure function of the topology
that says what to ask whom and what the answer must be (every address, name and port comes from
the model). ``phoenix.verify`` runs them; ``phoenix.verify_probes`` holds the probes.

The guests' view includes the service-to-service paths: every service's internal names resolve
to the mesh, and an internal client reaches each at ``https://<name>/`` on the mesh's internal
entrypoint, verifying the name it dialled (SNI and Host are that name, as curl would send them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from phoenix.topology import CA_HEALTH_PATH, MESH_PING_PATH, Topology

if TYPE_CHECKING:
    from phoenix.artifacts import Artifacts

#: what a browser dials for ``https://name/`` and a stub resolver for DNS: protocol defaults, not lab facts.
HTTPS_PORT = 443
DNS_PORT = 53
#: where Portainer lists its environments (agents).
PORTAINER_ENDPOINTS = "/api/endpoints"


@dataclass(frozen=True)
class Check:
    """One probe: what it is about (``check``, ``target``), where it goes, what must come back."""
    check: str                      # kind, e.g. dns/external, mesh/health
    target: str                     # the name (or file, or address) the check is about
    address: str = ""               # where the probe connects (DNS server, TLS peer)
    port: int = 0
    expect: tuple[str, ...] = ()    # DNS: the exact A set; HTTP: a body marker; portainer: agent URLs
    source: str | None = None    # DNS: source address, which picks the view (None: the OS picks)
    server_name: str | None = None   # TLS: SNI and the name the certificate must carry
    host: str | None = None      # HTTP Host
    path: str | None = None
    trust: str | None = None     # "public" (system store / --public-ca) or "phoenix" (--root-ca)
    skip: str | None = None      # why this check cannot run (counted as skipped)


@dataclass(frozen=True)
class VerifyOptions:
    outside_source: str | None = None
    inside_source: str | None = None
    root_ca: str | None = None
    root_fingerprint: str | None = None
    public_ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    gateway_client_cert: str | None = None
    portainer_password_file: str | None = None
    portainer_api_key_file: str | None = None
    #: a Proxmox API token (USER@REALM!ID=SECRET) to ask HA where the guests run (phoenix.verify_ha)
    proxmox_token_file: str | None = None
    timeout: float = 5.0
    workers: int = 16

    @property
    def portainer_credentials(self) -> bool:
        return bool(self.portainer_password_file or self.portainer_api_key_file)


# -- what to check (pure) -----------------------------------------------------------------
def internal_names(topo: Topology) -> dict[str, tuple[str, ...]]:
    """Every name of the internal zone and the addresses it must resolve to (CNAMEs followed)."""
    by_name: dict[str, list] = {}
    for rec in topo.internal_records:
        by_name.setdefault(rec.name, []).append(rec)

    def addresses(name: str, depth: int = 0) -> tuple[str, ...]:
        out: list[str] = []
        for rec in by_name.get(name, []):
            if rec.type == "A":
                out.append(rec.value)
            elif rec.type == "CNAME" and depth < 8:
                out += addresses(rec.value, depth + 1)
        return tuple(sorted(set(out)))

    return {name: addresses(name) for name in by_name}


def mesh_pings(topo: Topology, artifacts: Artifacts | None = None) -> list[tuple[int, bool, bool]]:
    """Where Traefik serves its ping, as the mesh tier configures it: (port, tls, client_auth).

    The static config names the ping's own entrypoint (plain HTTP); routers to ``ping@internal``
    serve it on TLS entrypoints too (the gateway's health check, behind mTLS).
    """
    from phoenix.artifacts import render_all
    from phoenix.render import mesh
    art = artifacts or render_all(topo)
    ports = mesh.entrypoint_ports(topo)
    ping = art.mesh_static.get("ping")
    names = [] if ping is None else [ping.get("entryPoint", "traefik")]
    for router in art.mesh_dynamic["http"]["routers"].values():
        if router.get("service") == "ping@internal":
            names += router["entryPoints"]
    out = []
    for name in dict.fromkeys(n for n in names if n in ports):
        ep = topo.entrypoints.get(name)
        out.append((ports[name], ep is not None, bool(ep and ep.client_auth)))
    return out


def portainer_route(topo: Topology):
    """The catalog service that runs on the Portainer guest: its API is reached through the mesh."""
    if topo.portainer is None:
        return None
    return next((s for s in topo.lab.services if topo.portainer.name in s.guests), None)


def plan_checks(topo: Topology, options: VerifyOptions = VerifyOptions(),
                artifacts: Artifacts | None = None) -> list[Check]:
    lab = topo.lab
    dns_at = str(topo.dns.address)
    public_address = str(lab.network.public_address)
    mesh_at, mesh_name = str(topo.mesh.address), topo.mesh_name
    internal_port = topo.entrypoints["internal"].port
    out: list[Check] = []

    # The world's view: public names -> the gateway's public address, over HTTPS with a valid chain.
    for route in topo.public_routes:
        out.append(Check("dns/external", route.host, dns_at, DNS_PORT, (public_address,), options.outside_source))
    for route in topo.public_routes:
        out.append(Check("https/public", route.host, public_address, HTTPS_PORT, server_name=route.host,
                         host=route.host, path=topo.service(route.service).health, trust="public"))
    out.append(Check("tls/no-tls1.1", f"{public_address}:{HTTPS_PORT}", public_address, HTTPS_PORT,
                     server_name=topo.public_hosts[0] if topo.public_hosts else None))

    # The guests' view: every internal name, and the public names with the gateway's internal address.
    names = internal_names(topo)
    for name, addrs in names.items():
        out.append(Check("dns/internal", name, dns_at, DNS_PORT, addrs, options.inside_source))
    for rec in topo.public_records_internal_view:
        out.append(Check("dns/internal", rec.name, dns_at, DNS_PORT, (rec.value,), options.inside_source))
    # Nothing internal leaks to the world.
    for name in names:
        out.append(Check("dns/external-nxdomain", name, dns_at, DNS_PORT, (), options.outside_source))

    # The CA by address (trap 4), verified against the Phoenix root with the name on its certificate.
    out.append(Check("ca/health", topo.ca_name, str(topo.ca.address), lab.pki.ca_port, ('"ok"',),
                     server_name=topo.ca_name, host=topo.ca_name, path=CA_HEALTH_PATH, trust="phoenix"))
    if options.root_fingerprint and options.root_ca:
        out.append(Check("pki/root-fingerprint", options.root_ca,
                         expect=(normal_fingerprint(options.root_fingerprint),)))

    # The mesh: its ping wherever it is served, then every service's health through it by Host.
    for port, tls, client_auth in mesh_pings(topo, artifacts):
        skip = None
        if client_auth and not options.client_cert:
            skip = "not checked: this entrypoint wants a client certificate (give --client-cert/--client-key)"
        out.append(Check("mesh/ping", f"{mesh_name}:{port}", mesh_at, port, ("OK",),
                         server_name=mesh_name if tls else None, host=mesh_name, path=MESH_PING_PATH,
                         trust="phoenix" if tls else None, skip=skip))
    # Service to service: each of a service's internal names, dialled as a guest dials it (the
    # name resolves to the mesh: dns/internal above), verified as the name itself on the mesh's
    # internal entrypoint, answered through the mesh by a replica's health path.
    for s in lab.services:
        for name in topo.service_names(s):
            out.append(Check("service/internal", name, mesh_at, internal_port, server_name=name, host=name,
                             path=s.health, trust="phoenix"))
    # The gateway's client certificate, the one the gateway entrypoint accepts: `pulumi up`
    # re-issues it; this says when it ends, and fails once it is due.
    skip = None if options.gateway_client_cert else \
        "not checked: give --gateway-client-cert (the stack output gatewayClientCertificate.chainPem)"
    out.append(Check("pki/gateway-client-cert", options.gateway_client_cert or topo.guest_fqdn(topo.gateway),
                     expect=(topo.guest_fqdn(topo.gateway),), trust="phoenix", skip=skip))

    # Portainer: every agent an environment that is up.
    api = portainer_route(topo)
    for agent in topo.agents:
        urls = tuple(f"tcp://{h}:{lab.portainer.agent_port}" for h in (agent.address, topo.guest_fqdn(agent)))
        skip = None
        if api is None:
            skip = "not checked: no catalog service runs on the Portainer guest, so its API has no route"
        elif not options.portainer_credentials:
            skip = "not checked: no credentials (give --portainer-password-file or --portainer-api-key-file)"
        api_name = topo.service_fqdn(api) if api else None
        out.append(Check("portainer/agent", agent.name, mesh_at, internal_port, urls, server_name=api_name,
                         host=api_name, path=PORTAINER_ENDPOINTS, trust="phoenix", skip=skip))
    return out


def normal_fingerprint(value: str) -> str:
    return value.replace(":", "").strip().lower()
