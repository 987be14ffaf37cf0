"""The route audit: proves every route of the stack end to end, over what the tiers would deploy.

``collect_artifacts`` gathers the tiers' own pure outputs (DNS view answers, gateway server
blocks and certificate, the mesh's static and dynamic Traefik config, the certificates the
backends serve, firewall rules per guest) into one ``Artifacts``; ``audit`` walks them, hop by
hop, with the scheme and the verification of each:

* client -> gateway: the external view answers the gateway's public address; the gateway has a
  server block for the host, and its Let's Encrypt certificate covers it;
* gateway -> mesh: HTTPS to a mesh entrypoint that exists on that port and serves TLS,
  verifying (``proxy_ssl_verify``) the name the mesh has a certificate for, with the client
  certificate the entrypoint requires; the mesh's router for the host on that entrypoint (TLS
  options agreeing with the gateway's SNI);
* mesh -> backend: every server a router reaches (through weighted services too) is a replica
  the catalog runs there, its firewall lets the mesh in, and it is HTTPS verified against the
  Phoenix root with a server name the certificate served there carries; plain HTTP only where
  the catalog says ``protocol: http``, and that is a warning.

Every internal name answers in the internal view, and none leaks into the external one. Every
reference in the Traefik config (entrypoint, middleware, service, TLS option, resolver, servers
transport) resolves.

Each problem is one line naming the broken hop; a hop whose input is already broken (a
dangling reference, a wrong upstream port) is reported once, not again downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

from phoenix.audit_mesh import Mesh, hosts_of, listing, local_ref, reference_problems
from phoenix.render.mesh import ACME_HTTP_PORT
from phoenix.model import Guest, Service
from phoenix.topology import ROOT_CA_TRUST_PATH, Topology

VERIFIED_CLIENT = "RequireAndVerifyClientCert"


@dataclass
class AuditReport:
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Artifacts:
    """What the tiers would deploy, as data."""
    dns: dict[str, dict[str, list[tuple[str, str]]]]   # view -> fqdn -> [(rtype, value)]
    gateway: list[Any]                                 # phoenix.render.gateway.GatewayServer
    mesh_static: dict
    mesh_dynamic: dict
    firewall: dict[str, list[Any]]                     # guest -> [phoenix.render.firewall.FirewallRule]
    #: (guest, port) -> the certificate a TLS backend serves there (workloads.BackendCertificate)
    backend_certificates: dict[tuple[str, int], Any] = field(default_factory=dict)
    #: the names on the gateway's public (ACME) certificate
    gateway_certificate: list[str] = field(default_factory=list)


# -- gathering ------------------------------------------------------------------------------
def collect_artifacts(topo: Topology) -> Artifacts:
    """Each tier's own pure output: what the audit proves is what the tiers push."""
    from phoenix.render.dns import view_answers
    from phoenix.render.firewall import guest_rules
    from phoenix.render.gateway import certificate_names, server_blocks
    from phoenix.render.mesh import dynamic_config, static_config
    from phoenix.render.workloads import backend_certificates
    return Artifacts(view_answers(topo), server_blocks(topo), static_config(topo), dynamic_config(topo),
                     guest_rules(topo), backend_certificates(topo), certificate_names(topo))


# -- firewall ---------------------------------------------------------------------------------
def firewall_allows(rules: list[Any], source: str, port: int, proto: str = "tcp") -> bool:
    """Does a guest with these rules let ``source`` in on ``port`` (the firewall tier's own semantics)?"""
    from phoenix.render.firewall import permits
    return permits(list(rules or []), "in", source, port, proto)


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
        if auth.get("clientAuthType") != VERIFIED_CLIENT or ROOT_CA_TRUST_PATH not in (auth.get("caFiles") or []):
            out.append(f"{at}: mesh router {name} on entrypoint {ep} does not require a client certificate "
                       f"from the Phoenix root (TLS option {option or 'none'})")
        if not getattr(b, "client_certificate", True):
            out.append(f"{at}: the gateway presents no client certificate to entrypoint {ep}, which requires one")
    if sni_ok and option is not None:
        sni = mesh.option_for_sni(ep, b.ssl_name)
        if sni != option:
            out.append(f"{at}: on entrypoint {ep} the gateway's SNI {b.ssl_name} selects TLS option {sni} but "
                       f"the host selects {option}: Traefik would answer 421")
    return out


def _serving(topo: Topology, url: str) -> tuple[Optional[Guest], int, list[Service]]:
    """(guest, port, the catalog services listening there) for a backend URL."""
    parts = urlsplit(url)
    guest = topo.guest_by_address.get(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    listening = list(topo.services_at.get((guest.name, port), [])) if guest is not None else []
    return guest, port, listening


def _backend_problem(topo: Topology, art: Artifacts, url: str) -> Optional[str]:
    """Why the mesh cannot use this backend, or None."""
    guest, port, listening = _serving(topo, url)
    scheme = urlsplit(url).scheme
    if guest is None:
        return f"{url} (no guest has address {urlsplit(url).hostname})"
    if not listening:
        return f"{url} (no service listens on {guest.name}:{port})"
    if listening[0].protocol != scheme:
        return f"{url} ({guest.name}:{port} speaks {listening[0].protocol}, not {scheme})"
    if not firewall_allows(art.firewall.get(guest.name, []), str(topo.mesh.address), port):
        return f"{url} (the firewall of {guest.name} does not let the mesh ({topo.mesh.address}) reach tcp/{port})"
    return None


def covers(name: str, host: str) -> bool:
    """Does a certificate name (maybe a wildcard) cover ``host``?"""
    name, host = name.lower().rstrip("."), host.lower().rstrip(".")
    if name.startswith("*."):
        return host.count(".") == name.count(".") and host.endswith(name[1:])
    return name == host


@dataclass(frozen=True)
class BackendHop:
    """mesh -> backend: one server of a load-balancer service, and how the mesh verifies it."""
    service: str                     # the load-balancer service holding the server
    url: str
    transport_name: Optional[str]
    transport: Optional[dict]
    certificate: Any                 # what the backend serves (workloads.BackendCertificate), if known

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def label(self) -> str:
        return f"mesh service {self.service} -> {self.url}"

    def problem(self) -> Optional[str]:
        """Why the mesh would not verify this TLS backend with a name its certificate carries."""
        t, name = self.transport, self.transport_name
        if self.scheme != "https":
            return None
        if t is None:
            return (f"{self.label}: no servers transport, so not verified against the Phoenix root with a "
                    "server name")
        if t.get("insecureSkipVerify"):
            return f"{self.label}: servers transport {name} skips certificate verification (insecureSkipVerify)"
        if ROOT_CA_TRUST_PATH not in (t.get("rootCAs") or []):
            return f"{self.label}: servers transport {name} does not verify against the Phoenix root"
        server_name = t.get("serverName")
        if not server_name:
            return f"{self.label}: servers transport {name} sets no serverName to verify"
        cert = self.certificate
        if cert is not None and not any(covers(san, server_name) for san in cert.sans):
            return (f"{self.label}: servers transport {name} verifies {server_name}, which the certificate "
                    f"{cert.name} on {cert.guest} does not carry ({', '.join(cert.sans)})")
        return None

    def describe(self) -> str:
        t = self.transport or {}
        if self.scheme != "https":
            return f"{self.url}: plain HTTP, not encrypted (protocol: http in the catalog)"
        what = f"verify {t.get('serverName') or '?'} against the Phoenix root"
        if t.get("insecureSkipVerify"):
            what = "NOT verified (insecureSkipVerify)"
        cert = self.certificate
        served = f"certificate {cert.name} ({cert.terminator} TLS)" if cert else "certificate not issued by Phoenix"
        return f"{self.url}: https, {what}; {served}"


def backend_hops(topo: Topology, art: Artifacts, mesh: Mesh, service: str) -> list[BackendHop]:
    """Every server a router's service reaches, with the transport that dials it."""
    out = []
    for leaf in mesh.leaves(service):
        lb = mesh.services[leaf].get("loadBalancer") or {}
        t_name = local_ref(lb.get("serversTransport") or "") or None
        for srv in lb.get("servers") or []:
            url = srv.get("url", "")
            guest, port, _ = _serving(topo, url)
            cert = art.backend_certificates.get((guest.name, port)) if guest else None
            out.append(BackendHop(leaf, url, t_name, mesh.transports.get(t_name or ""), cert))
    return out


def service_problems(topo: Topology, art: Artifacts, mesh: Mesh, bad: set[str]) -> tuple[list[str], list[str]]:
    out, warnings = [], []
    used: dict[str, list[str]] = {}
    for r in mesh.routers.values():
        svc = local_ref(r.get("service") or "")
        if svc in mesh.services:
            used.setdefault(svc, []).extend(hosts_of(r))
    checked: set[tuple[str, str]] = set()
    for name, hosts in used.items():
        if name in bad:
            continue
        hops = backend_hops(topo, art, mesh, name)
        at = f"mesh service {name} ({', '.join(dict.fromkeys(hosts))})"
        reasons = [_backend_problem(topo, art, h.url) for h in hops]
        if not hops:
            out.append(f"{at}: has no backend")
        elif all(reasons):
            out.append(f"{at}: no usable backend: " + "; ".join(reasons))
        elif any(reasons):
            out += [f"{at}: backend {r}" for r in reasons if r]
        for hop, reason in zip(hops, reasons):
            if reason or (hop.service, hop.url) in checked:
                continue
            checked.add((hop.service, hop.url))
            found = hop.problem()
            if found:
                out.append(found)
            elif hop.scheme == "http":
                warnings.append(f"mesh service {hop.service}: the mesh reaches {hop.url} over plain HTTP "
                                "(protocol: http in the catalog)")
            elif hop.certificate is None:
                warnings.append(f"{hop.label}: no Phoenix step issues the certificate served there; the mesh "
                                f"verifies {hop.transport.get('serverName')} against the Phoenix root")
    return out, warnings


def internal_route_problems(topo: Topology, mesh: Mesh, bad: set[str]) -> list[str]:
    out = []
    for route in topo.routes:
        if route.public:
            continue
        ep = route.entrypoint.name
        routers = mesh.routers_for(route.host)
        on_ep = {n: r for n, r in routers.items() if ep in (r.get("entryPoints") or [])}
        if routers.keys() & bad:
            continue
        if not on_ep:
            out.append(f"route {route.host}: the mesh has no router for it on entrypoint {ep}")
        elif route.entrypoint.scheme == "https" and not any("tls" in r for r in on_ep.values()):
            out.append(f"route {route.host}: client -> mesh: router {listing(on_ep)} on entrypoint {ep} has no TLS "
                       "section, so clients' TLS requests never reach it (404)")
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
    problems += internal_route_problems(topo, mesh, bad_routers)
    found, warnings = service_problems(topo, art, mesh, bad_services)
    problems += found + acme_problems(topo, art, mesh)
    return AuditReport(problems, summary_lines(topo, art, mesh, problems), warnings)


def _acme_label(topo: Topology) -> str:
    server = topo.lab.acme.server
    return {"staging": "Let's Encrypt staging", "production": "Let's Encrypt"}.get(server, f"ACME {server}")


def _router_for(mesh: Mesh, host: str, entrypoint: Optional[str]) -> tuple[Optional[str], dict]:
    found = sorted((n, r) for n, r in mesh.routers_for(host).items()
                   if entrypoint in (r.get("entryPoints") or []))
    return found[0] if found else (None, {})


def _backend_lines(topo: Topology, art: Artifacts, mesh: Mesh, router: Optional[str], r: dict) -> list[str]:
    svc = local_ref(r.get("service") or "") if router else None
    hops = backend_hops(topo, art, mesh, svc) if svc in mesh.services else []
    if not hops:
        return [f"    mesh -> backend: router {router or '?'} -> service {svc or '?'} -> ?"]
    via = lambda h: f"service {svc}" + (f" -> {h.service}" if h.service != svc else "")
    return [f"    mesh -> backend: router {router} -> {via(h)} -> {h.describe()}" for h in hops]


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
        client = ", client certificate" if getattr(b, "client_certificate", False) else ""
        lines.append(f"    gateway -> mesh: {b.scheme}://{b.upstream_address}:{b.upstream_port} "
                     f"(entrypoint {ep or '?'}): {verify}{client}")
        lines += _backend_lines(topo, art, mesh, router, r)
    for route in topo.routes:
        if route.public:
            continue
        ep = route.entrypoint
        router, r = _router_for(mesh, route.host, ep.name)
        names = ", ".join(sorted(mesh.certificate_names(ep.name))) or "?"
        lines.append(f"  {ep.scheme}://{route.host}:{ep.port}/ -> service {route.service} (internal)")
        lines.append(f"    client -> mesh: {ep.scheme}://{topo.mesh.address}:{ep.port} (entrypoint {ep.name}): "
                     f"Step-CA certificate for {names}")
        lines += _backend_lines(topo, art, mesh, router, r)
    lines += [f"  problem: {p}" for p in problems]
    return lines


def route_audit(topo: Topology) -> AuditReport:
    return audit(topo, collect_artifacts(topo))
