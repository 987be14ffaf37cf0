"""The route audit: proves every route of the stack end to end, over what the tiers deploy.

It reads the ``Artifacts`` the tiers push (``phoenix.artifacts``, rendered once per plan or
deployment: DNS view answers, gateway server blocks and certificate, the mesh's static and
dynamic Traefik config, the certificates the backends serve, firewall rules per guest) and
renders nothing itself. ``audit`` walks them, hop by hop, with the scheme and the verification
of each:

* client -> gateway: the external view answers the gateway's public address; the gateway has a
  server block for the host, and its Let's Encrypt certificate covers it;
* gateway -> mesh: HTTPS to a mesh entrypoint that exists on that port and serves TLS,
  verifying (``proxy_ssl_verify``) the name the mesh has a certificate for, with the client
  certificate the entrypoint requires; the mesh's router for the host on that entrypoint (TLS
  options agreeing with the gateway's SNI);
* guest -> mesh (service to service, ``phoenix.audit_internal``): every service's names resolve
  to the mesh in the internal view, and the mesh routes them on its internal entrypoint with a
  Step-CA certificate for them, reachable by every guest;
* mesh -> backend (``phoenix.audit_backends``): every server a router reaches (through weighted
  services too) is a replica the catalog runs there, its firewall lets the mesh in, and it is
  HTTPS verified against the Phoenix root with its guest's name, which the certificate served
  there carries; plain HTTP only where the catalog says ``protocol: http``, and that is a warning.

Every internal name answers in the internal view, and none leaks into the external one. Every
reference in the Traefik config (entrypoint, middleware, service, TLS option, resolver, servers
transport) resolves; every router has a Host rule and puts the circuit breaker before the
retry; the gateway entrypoint trusts the gateway client CA alone.

Each problem is one line naming the broken hop; a hop whose input is already broken (a
dangling reference, a wrong upstream port) is reported once, not again downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phoenix.artifacts import Artifacts
from phoenix.audit_backends import backend_lines, covers, firewall_allows, service_problems
from phoenix.audit_internal import (
    internal_route_problems,
    internal_summary_lines,
    mesh_certificate_problems,
    router_rule_problems,
)
from phoenix.audit_mesh import Mesh, listing, reference_problems
from phoenix.render.mesh import ACME_HTTP_PORT, GATEWAY_CLIENT_CA_PATH
from phoenix.topology import Topology

VERIFIED_CLIENT = "RequireAndVerifyClientCert"


@dataclass
class AuditReport:
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# -- the audit --------------------------------------------------------------------------------
def _answers(art: Artifacts, view: str, name: str) -> list[tuple[str, str]]:
    return list((art.dns.get(view) or {}).get(name) or [])


def _show(answers: list[tuple[str, str]]) -> str:
    return ", ".join(f"{t} {v}" for t, v in answers) or "nothing"


def dns_problems(topo: Topology, art: Artifacts) -> list[str]:
    out = []
    public, gateway = str(topo.lab.network.public_address), str(topo.gateway.address)
    for host in topo.public_hosts:
        got = _answers(art, "external", host)
        if ("A", public) not in got:
            out.append(f"route {host}: the external DNS view answers {_show(got)} "
                       f"(expected A {public}, the gateway's public address)")
        got = _answers(art, "internal", host)
        if ("A", gateway) not in got:
            out.append(f"route {host}: the internal DNS view answers {_show(got)} "
                       f"(expected A {gateway}, the gateway, for guests)")
    expected: dict[str, list[tuple[str, str]]] = {}
    for r in topo.internal_records:
        expected.setdefault(r.name, []).append((r.type, r.value))
    for name, want in expected.items():
        got = _answers(art, "internal", name)
        missing = [a for a in want if a not in got]
        if missing:
            out.append(f"internal name {name}: the internal DNS view answers {_show(got)} "
                       f"(missing {_show(missing)})")
        leaked = [a for a in _answers(art, "external", name) if a[0] != "NS"]
        if leaked:
            out.append(f"internal name {name}: the external DNS view answers {_show(leaked)} "
                       "(internal names must not leave the internal view)")
    return out


def _gateway_problems(topo: Topology, art: Artifacts, mesh: Mesh, host: str, bad: set[str]) -> list[str]:
    """The gateway -> mesh hop and the mesh's router for one public host."""
    blocks = [b for b in art.gateway if b.host == host]
    if not blocks:
        return [f"route {host}: the gateway has no server block for it"]
    b, at, out = blocks[0], f"route {host}", []
    if not any(covers(name, host) for name in art.gateway_certificate):
        out.append(f"{at}: client -> gateway: the gateway's certificate ({listing(art.gateway_certificate)}) "
                   "does not cover it")
    mesh_guest = topo.mesh
    routers = mesh.routers_for(host)
    wanted = sorted({ep for r in routers.values() for ep in r.get("entryPoints") or [] if ep in mesh.entrypoints})
    if str(b.upstream_address) not in (str(mesh_guest.address), topo.mesh_name):
        return out + [f"{at}: gateway upstream {b.upstream_address} is not the mesh ({mesh_guest.address})"]
    ep = mesh.entrypoint_at(int(b.upstream_port))
    if ep is None:
        known = wanted or sorted(mesh.entrypoints)
        return out + [f"{at}: gateway upstream port {b.upstream_port} is not a mesh entrypoint "
                      f"({', '.join(f'{n}={mesh.port(n)}' for n in known)})"]
    sni_ok = b.scheme == "https"      # the SNI check needs a TLS hop to a name the mesh has
    if b.scheme != "https":
        out.append(f"{at}: gateway -> mesh: the gateway speaks {b.scheme} to the mesh; this hop must be "
                   "encrypted (https)")
    if b.scheme != mesh.scheme(ep):
        out.append(f"{at}: the gateway speaks {b.scheme} to mesh entrypoint {ep} ({b.upstream_port}), "
                   f"which serves {mesh.scheme(ep)}")
    elif b.scheme == "https":
        if not b.verify:
            out.append(f"{at}: gateway -> mesh: the gateway does not verify the mesh's certificate "
                       "(proxy_ssl_verify off)")
        elif b.ssl_name not in mesh.certificate_names(ep):
            sni_ok = False
            out.append(f"{at}: the gateway verifies the mesh as {b.ssl_name}, but the mesh gets a "
                       f"certificate for {listing(mesh.certificate_names(ep))}")
    if not firewall_allows(art.firewall.get(mesh_guest.name, []), str(topo.gateway.address), int(b.upstream_port)):
        out.append(f"{at}: the mesh's firewall does not let the gateway ({topo.gateway.address}) "
                   f"reach tcp/{b.upstream_port}")
    on_ep = {n: r for n, r in routers.items() if ep in (r.get("entryPoints") or [])}
    if not on_ep:
        if not routers:
            out.append(f"{at}: the mesh has no router for it (no rule with Host(`{host}`))")
        elif not routers.keys() & bad:
            out.append(f"{at}: the mesh has no router for it on entrypoint {ep} ({b.upstream_port}); "
                       f"router {listing(routers)} is on {', '.join(wanted) or 'no defined entrypoint'}")
        return out
    name, router = sorted(on_ep.items())[0]
    if name in bad:
        return out
    if b.scheme == "https" and "tls" not in router:
        # Trap 1: TLS from the gateway never reaches a router without a TLS section (404).
        return out + [f"{at}: mesh router {name} on entrypoint {ep} has no TLS section, so the gateway's "
                      "TLS requests never reach it (404)"]
    option = mesh.option_of(router)
    ep_model = topo.entrypoints.get(ep)
    if ep_model is not None and ep_model.client_auth:
        auth = (mesh.options.get(option or "") or {}).get("clientAuth") or {}
        if auth.get("clientAuthType") != VERIFIED_CLIENT or (auth.get("caFiles") or []) != [GATEWAY_CLIENT_CA_PATH]:
            out.append(f"{at}: mesh router {name} on entrypoint {ep} does not require a client certificate "
                       f"from the gateway client CA alone (TLS option {option or 'none'} trusts "
                       f"{listing(auth.get('caFiles') or [])}): another guest's certificate could open it")
        if not getattr(b, "client_certificate", True):
            out.append(f"{at}: the gateway presents no client certificate to entrypoint {ep}, which requires one")
    if sni_ok and option is not None:
        sni = mesh.option_for_sni(ep, b.ssl_name)
        if sni != option:
            out.append(f"{at}: on entrypoint {ep} the gateway's SNI {b.ssl_name} selects TLS option {sni} but "
                       f"the host selects {option}: Traefik would answer 421")
    return out


def acme_problems(topo: Topology, art: Artifacts, mesh: Mesh) -> list[str]:
    out = []
    for name, resolver in mesh.resolvers.items():
        acme = resolver.get("acme") or {}
        if acme.get("caServer") != topo.acme_directory:
            out.append(f"mesh resolver {name}: asks {acme.get('caServer')} for certificates, not Step-CA's "
                       f"ACME directory {topo.acme_directory}")
        ep = (acme.get("httpChallenge") or {}).get("entryPoint")
        port = mesh.port(ep) if ep in mesh.entrypoints else None
        if port is None:
            continue
        if port != ACME_HTTP_PORT:
            out.append(f"mesh resolver {name}: HTTP-01 entrypoint {ep} listens on {port}; "
                       f"Step-CA validates on {ACME_HTTP_PORT}")
        elif not firewall_allows(art.firewall.get(topo.mesh.name, []), str(topo.ca.address), port):
            out.append(f"mesh resolver {name}: the mesh's firewall does not let Step-CA ({topo.ca.address}) "
                       f"reach the HTTP-01 entrypoint {ep} (tcp/{port})")
    return out


def audit(topo: Topology, art: Artifacts) -> AuditReport:
    mesh = Mesh(art.mesh_static, art.mesh_dynamic)
    problems, bad_routers, bad_services = reference_problems(mesh)
    problems += dns_problems(topo, art)
    for host in topo.public_hosts:
        problems += _gateway_problems(topo, art, mesh, host, bad_routers)
    problems += internal_route_problems(topo, art, mesh, bad_routers)
    problems += router_rule_problems(mesh) + mesh_certificate_problems(topo, art, mesh)
    found, warnings = service_problems(topo, art, mesh, bad_services)
    problems += found + acme_problems(topo, art, mesh)
    return AuditReport(problems, summary_lines(topo, art, mesh, problems), warnings)


def _acme_label(topo: Topology) -> str:
    server = topo.lab.acme.server
    return {"staging": "Let's Encrypt staging", "production": "Let's Encrypt"}.get(server, f"ACME {server}")


def _router_for(mesh: Mesh, host: str, entrypoint: str | None) -> tuple[str | None, dict]:
    found = sorted((n, r) for n, r in mesh.routers_for(host).items()
                   if entrypoint in (r.get("entryPoints") or []))
    return found[0] if found else (None, {})


def summary_lines(topo: Topology, art: Artifacts, mesh: Mesh, problems: list[str]) -> list[str]:
    """What the audit walked: every route, each hop with its scheme and how it is verified."""
    refs = sum(len(r.get("entryPoints") or []) + len(r.get("middlewares") or []) + 1 + ("tls" in r)
               for r in mesh.routers.values())
    internal = {r.name for r in topo.internal_records}
    status = "ok" if not problems else f"{len(problems)} problem(s)"
    lines = [f"route audit: {len(topo.public_hosts)} public hosts, {len(internal)} internal names, "
             f"{len(mesh.routers)} mesh routers ({refs} references): {status}"]
    for b in art.gateway:
        ep = mesh.entrypoint_at(int(b.upstream_port))
        router, r = _router_for(mesh, b.host, ep)
        covering = [n for n in art.gateway_certificate if covers(n, b.host)]
        lines.append(f"  https://{b.host}/ -> service {b.service}")
        lines.append(f"    client -> gateway {topo.gateway.address}:443: https, {_acme_label(topo)} certificate "
                     f"for {', '.join(covering) or 'NONE covering it'}")
        verify = f"verify {b.ssl_name} against the Phoenix root" if b.verify else "NOT verified (proxy_ssl_verify off)"
        client = ", the gateway's client certificate" if getattr(b, "client_certificate", False) else ""
        lines.append(f"    gateway -> mesh: {b.scheme}://{b.upstream_address}:{b.upstream_port} "
                     f"(entrypoint {ep or '?'}): {verify}{client}")
        lines += backend_lines(topo, art, mesh, router, r)
    lines += internal_summary_lines(topo, art, mesh, _router_for)
    lines += [f"  problem: {p}" for p in problems]
    return lines

