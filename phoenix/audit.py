"""The route audit: proves every route of the stack end to end, over what the tiers would deploy.

``collect_artifacts`` gathers the tiers' own pure outputs (DNS view answers, gateway server
blocks, the mesh's static and dynamic Traefik config, firewall rules per guest) into one
``Artifacts``; ``audit`` walks them. For every public host: the external view answers the
gateway's public address; the gateway has a server block for it proxying to a mesh
entrypoint that exists on that port with that scheme, verifying the name the mesh has a
certificate for; the mesh has a router for the host on that entrypoint (mTLS where the
entrypoint requires it, with TLS options that agree with the gateway's SNI); the router's
service has a backend whose guest and port exist and whose firewall lets the mesh in. Every
internal name answers in the internal view, and none leaks into the external one. Every
reference in the Traefik config (entrypoint, middleware, service, TLS option, resolver,
servers transport) resolves.

Each problem is one line naming the broken hop; a hop whose input is already broken (a
dangling reference, a wrong upstream port) is reported once, not again downstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

from phoenix.render.mesh import ACME_HTTP_PORT
from phoenix.topology import ROOT_CA_TRUST_PATH, Topology

VERIFIED_CLIENT = "RequireAndVerifyClientCert"
_HOST = re.compile(r"\bHost\(`([^`]+)`\)")


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


# -- gathering ------------------------------------------------------------------------------
def collect_artifacts(topo: Topology) -> Artifacts:
    """Each tier's own pure output: what the audit proves is what the tiers push."""
    from phoenix.render.dns import view_answers
    from phoenix.render.firewall import guest_rules
    from phoenix.render.gateway import server_blocks
    from phoenix.render.mesh import dynamic_config, static_config
    return Artifacts(view_answers(topo), server_blocks(topo), static_config(topo), dynamic_config(topo),
                     guest_rules(topo))


# -- reading the Traefik config ---------------------------------------------------------------
def _port(address: str) -> Optional[int]:
    try:
        return int(address.rsplit(":", 1)[1].split("/")[0])
    except (IndexError, ValueError):
        return None


def _local(name: str) -> Optional[str]:
    """A reference's name in the file provider (``x`` or ``x@file``), or None for another provider."""
    base, _, provider = name.partition("@")
    return base if provider in ("", "file") else None


class Mesh:
    def __init__(self, static: dict, dynamic: dict):
        self.static, self.dynamic = static or {}, dynamic or {}
        http = self.dynamic.get("http") or {}
        tls = self.dynamic.get("tls") or {}
        self.entrypoints: dict[str, dict] = self.static.get("entryPoints") or {}
        self.resolvers: dict[str, dict] = self.static.get("certificatesResolvers") or {}
        self.routers: dict[str, dict] = http.get("routers") or {}
        self.services: dict[str, dict] = http.get("services") or {}
        self.middlewares: dict[str, dict] = http.get("middlewares") or {}
        self.transports: dict[str, dict] = http.get("serversTransports") or {}
        self.options: dict[str, dict] = {"default": {}, **(tls.get("options") or {})}
        self.stores: dict[str, dict] = tls.get("stores") or {}
        internal = {"noop"} | ({"api", "dashboard"} if "api" in self.static else set())
        internal |= {"ping"} if "ping" in self.static else set()
        internal |= {"prometheus"} if (self.static.get("metrics") or {}).get("prometheus") is not None else set()
        self.internal_services = internal

    def port(self, entrypoint: str) -> Optional[int]:
        return _port((self.entrypoints.get(entrypoint) or {}).get("address", ""))

    def entrypoint_at(self, port: int) -> Optional[str]:
        return next((n for n in self.entrypoints if self.port(n) == port), None)

    def on(self, entrypoint: str) -> dict[str, dict]:
        return {n: r for n, r in self.routers.items() if entrypoint in (r.get("entryPoints") or [])}

    def scheme(self, entrypoint: str) -> str:
        tls = ((self.entrypoints.get(entrypoint) or {}).get("http") or {}).get("tls") is not None
        return "https" if tls or any("tls" in r for r in self.on(entrypoint).values()) else "http"

    def option_of(self, router: dict) -> Optional[str]:
        tls = router.get("tls")
        return _local(tls.get("options") or "default") if tls is not None else None

    def option_for_sni(self, entrypoint: str, host: str) -> str:
        """The TLS option Traefik picks for ``host`` as SNI on ``entrypoint`` (from the Host rules)."""
        for r in self.on(entrypoint).values():
            if "tls" in r and host in hosts_of(r):
                return self.option_of(r) or "default"
        return "default"

    def certificate_names(self, entrypoint: str) -> set[str]:
        names = set()
        for r in self.on(entrypoint).values():
            for d in (r.get("tls") or {}).get("domains") or []:
                names |= {d.get("main"), *(d.get("sans") or [])}
        for store in self.stores.values():
            domain = (store.get("defaultGeneratedCert") or {}).get("domain") or {}
            names |= {domain.get("main"), *(domain.get("sans") or [])}
        return names - {None}


def hosts_of(router: dict) -> list[str]:
    return _HOST.findall(router.get("rule") or "")


def _names(d) -> str:
    return ", ".join(sorted(d)) or "none"


def reference_problems(mesh: Mesh) -> tuple[list[str], set[str], set[str]]:
    """Dangling references; and the routers and services they make unreliable downstream."""
    out: list[str] = []
    bad_routers: set[str] = set()
    bad_services: set[str] = set()
    eps = mesh.entrypoints

    def entrypoint(ref: Optional[str], where: str) -> None:
        if ref is not None and ref not in eps:
            out.append(f"{where}: entrypoint {ref!r} is not defined (defined: {_names(eps)})")

    for name, r in mesh.resolvers.items():
        acme = r.get("acme") or {}
        entrypoint((acme.get("httpChallenge") or {}).get("entryPoint"), f"mesh resolver {name}")
    entrypoint((mesh.static.get("ping") or {}).get("entryPoint"), "mesh ping")
    entrypoint(((mesh.static.get("metrics") or {}).get("prometheus") or {}).get("entryPoint"), "mesh metrics")
    for name, ep in eps.items():      # entrypoint defaults name dynamic objects too
        http = ep.get("http") or {}
        tls = http.get("tls") or {}
        if tls.get("options") and _local(tls["options"]) not in mesh.options:
            out.append(f"mesh entrypoint {name}: TLS option {tls['options']!r} is not defined "
                       f"(defined: {_names(mesh.options)})")
        if tls.get("certResolver") and tls["certResolver"] not in mesh.resolvers:
            out.append(f"mesh entrypoint {name}: certificate resolver {tls['certResolver']!r} is not defined "
                       f"(defined: {_names(mesh.resolvers)})")
        for mw in http.get("middlewares") or []:
            if _local(mw) not in mesh.middlewares:
                out.append(f"mesh entrypoint {name}: middleware {mw!r} is not defined "
                           f"(defined: {_names(mesh.middlewares)})")
    for name, r in mesh.routers.items():
        where, before = f"mesh router {name}", len(out)
        if not r.get("entryPoints"):
            out.append(f"{where}: lists no entrypoint (it would listen on all of them)")
        for ep in r.get("entryPoints") or []:
            entrypoint(ep, where)
        svc = r.get("service") or ""
        internal = svc.endswith("@internal") and svc.partition("@")[0] in mesh.internal_services
        if not internal and _local(svc) not in mesh.services:
            out.append(f"{where}: service {svc!r} is not defined (defined: {_names(mesh.services)})")
        for mw in r.get("middlewares") or []:
            if _local(mw) not in mesh.middlewares:
                out.append(f"{where}: middleware {mw!r} is not defined (defined: {_names(mesh.middlewares)})")
        tls = r.get("tls")
        if tls is not None:
            if mesh.option_of(r) not in mesh.options:
                out.append(f"{where}: TLS option {tls.get('options')!r} is not defined "
                           f"(defined: {_names(mesh.options)})")
            if tls.get("certResolver") and tls["certResolver"] not in mesh.resolvers:
                out.append(f"{where}: certificate resolver {tls['certResolver']!r} is not defined "
                           f"(defined: {_names(mesh.resolvers)})")
        if len(out) > before:
            bad_routers.add(name)
    for name, s in mesh.services.items():
        transport = (s.get("loadBalancer") or {}).get("serversTransport")
        if transport and _local(transport) not in mesh.transports and transport != "default@internal":
            out.append(f"mesh service {name}: servers transport {transport!r} is not defined "
                       f"(defined: {_names(mesh.transports)})")
            bad_services.add(name)
    for name, store in mesh.stores.items():
        resolver = (store.get("defaultGeneratedCert") or {}).get("resolver")
        if resolver and resolver not in mesh.resolvers:
            out.append(f"mesh TLS store {name}: certificate resolver {resolver!r} is not defined "
                       f"(defined: {_names(mesh.resolvers)})")
    return out, bad_routers, bad_services


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
    b, at = blocks[0], f"route {host}"
    mesh_guest = topo.mesh
    routers = {n: r for n, r in mesh.routers.items() if host in hosts_of(r)}
    wanted = sorted({ep for r in routers.values() for ep in r.get("entryPoints") or [] if ep in mesh.entrypoints})
    if str(b.upstream_address) not in (str(mesh_guest.address), topo.mesh_name):
        return [f"{at}: gateway upstream {b.upstream_address} is not the mesh ({mesh_guest.address})"]
    ep = mesh.entrypoint_at(int(b.upstream_port))
    if ep is None:
        known = wanted or sorted(mesh.entrypoints)
        return [f"{at}: gateway upstream port {b.upstream_port} is not a mesh entrypoint "
                f"({', '.join(f'{n}={mesh.port(n)}' for n in known)})"]
    out = []
    sni_ok = b.scheme == "https"      # the SNI check needs a TLS hop to a name the mesh has
    if b.scheme != mesh.scheme(ep):
        out.append(f"{at}: the gateway speaks {b.scheme} to mesh entrypoint {ep} ({b.upstream_port}), "
                   f"which serves {mesh.scheme(ep)}")
    elif b.scheme == "https":
        if not b.verify:
            out.append(f"{at}: the gateway does not verify the mesh's certificate")
        elif b.ssl_name not in mesh.certificate_names(ep):
            sni_ok = False
            out.append(f"{at}: the gateway verifies the mesh as {b.ssl_name}, but the mesh gets a "
                       f"certificate for {_names(mesh.certificate_names(ep))}")
    if not firewall_allows(art.firewall.get(mesh_guest.name, []), str(topo.gateway.address), int(b.upstream_port)):
        out.append(f"{at}: the mesh's firewall does not let the gateway ({topo.gateway.address}) "
                   f"reach tcp/{b.upstream_port}")
    on_ep = {n: r for n, r in routers.items() if ep in (r.get("entryPoints") or [])}
    if not on_ep:
        if not routers:
            out.append(f"{at}: the mesh has no router for it (no rule with Host(`{host}`))")
        elif not routers.keys() & bad:
            out.append(f"{at}: the mesh has no router for it on entrypoint {ep} ({b.upstream_port}); "
                       f"router {_names(routers)} is on {', '.join(wanted) or 'no defined entrypoint'}")
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


def _backend_problem(topo: Topology, art: Artifacts, url: str) -> Optional[str]:
    """Why the mesh cannot use this backend, or None."""
    parts = urlsplit(url)
    guest = next((g for g in topo.lab.guests if str(g.address) == parts.hostname), None)
    if guest is None:
        return f"{url} (no guest has address {parts.hostname})"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    listening = [s for s in topo.lab.services if guest.name in s.guests and s.port == port]
    if not listening:
        return f"{url} (no service listens on {guest.name}:{port})"
    if listening[0].protocol != parts.scheme:
        return f"{url} ({guest.name}:{port} speaks {listening[0].protocol}, not {parts.scheme})"
    if not firewall_allows(art.firewall.get(guest.name, []), str(topo.mesh.address), port):
        return f"{url} (the firewall of {guest.name} does not let the mesh ({topo.mesh.address}) reach tcp/{port})"
    return None


def service_problems(topo: Topology, art: Artifacts, mesh: Mesh, bad: set[str]) -> tuple[list[str], list[str]]:
    out, warnings = [], []
    used: dict[str, list[str]] = {}
    for r in mesh.routers.values():
        svc = _local(r.get("service") or "")
        if svc in mesh.services:
            used.setdefault(svc, []).extend(hosts_of(r))
    for name, hosts in used.items():
        if name in bad:
            continue
        lb = mesh.services[name].get("loadBalancer") or {}
        urls = [s.get("url", "") for s in lb.get("servers") or []]
        at = f"mesh service {name} ({', '.join(dict.fromkeys(hosts))})"
        reasons = [_backend_problem(topo, art, u) for u in urls]
        if not urls:
            out.append(f"{at}: has no backend")
        elif all(reasons):
            out.append(f"{at}: no usable backend: " + "; ".join(reasons))
        transport = mesh.transports.get(_local(lb.get("serversTransport") or "") or "", {})
        tls_urls = [u for u in urls if u.startswith("https://")]
        if tls_urls and (transport.get("insecureSkipVerify") or not transport.get("serverName")
                         or ROOT_CA_TRUST_PATH not in (transport.get("rootCAs") or [])):
            out.append(f"{at}: TLS backends are not verified against the Phoenix root with a server name "
                       f"(servers transport {lb.get('serversTransport') or 'default'})")
        for u in urls:
            if u.startswith("http://"):
                warnings.append(f"mesh service {name}: the mesh reaches {u} over plain HTTP "
                                "(protocol: http in the catalog)")
    return out, warnings


def internal_route_problems(topo: Topology, mesh: Mesh, bad: set[str]) -> list[str]:
    out = []
    for route in topo.routes:
        if route.public:
            continue
        ep = route.entrypoint.name
        routers = {n: r for n, r in mesh.routers.items() if route.host in hosts_of(r)}
        if not any(ep in (r.get("entryPoints") or []) for r in routers.values()) and not routers.keys() & bad:
            out.append(f"route {route.host}: the mesh has no router for it on entrypoint {ep}")
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


def summary_lines(topo: Topology, art: Artifacts, mesh: Mesh, problems: list[str]) -> list[str]:
    refs = sum(len(r.get("entryPoints") or []) + len(r.get("middlewares") or []) + 1 + ("tls" in r)
               for r in mesh.routers.values())
    internal = {r.name for r in topo.internal_records}
    status = "ok" if not problems else f"{len(problems)} problem(s)"
    lines = [f"route audit: {len(topo.public_hosts)} public hosts, {len(internal)} internal names, "
             f"{len(mesh.routers)} mesh routers ({refs} references): {status}"]
    for b in art.gateway:
        routers = [n for n, r in mesh.routers.items() if b.host in hosts_of(r)
                   and mesh.entrypoint_at(int(b.upstream_port)) in (r.get("entryPoints") or [])]
        svc = _local((mesh.routers.get(routers[0]) or {}).get("service") or "") if routers else None
        servers = [s.get("url") for s in ((mesh.services.get(svc or "") or {}).get("loadBalancer") or {})
                   .get("servers") or []]
        lines.append(f"  https://{b.host}/ -> gateway -> {b.scheme}://{b.upstream_address}:{b.upstream_port} "
                     f"(verify {b.ssl_name}) -> router {', '.join(routers) or '?'} -> service {svc or '?'} "
                     f"-> {', '.join(servers) or '?'}")
    lines += [f"  problem: {p}" for p in problems]
    return lines


def route_audit(topo: Topology) -> AuditReport:
    return audit(topo, collect_artifacts(topo))
