"""The route audit's reader of the mesh's Traefik configuration: entrypoints, routers, services
(load balancers and the weighted services over them), transports, TLS options, and every
reference between them resolved or reported (traps 9 and 10). See ``phoenix.audit``.
"""

from __future__ import annotations

import re

_HOST = re.compile(r"\bHost\(`([^`]+)`\)")


# -- reading the Traefik config ---------------------------------------------------------------
def _port(address: str) -> int | None:
    try:
        return int(address.rsplit(":", 1)[1].split("/")[0])
    except (IndexError, ValueError):
        return None


def local_ref(name: str) -> str | None:
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
        self._on: dict[str, dict[str, dict]] = {}
        self._by_host: dict[str, dict[str, dict]] | None = None
        self._cert_names: dict[str, set[str]] = {}

    def children(self, name: str) -> list[str]:
        """The services a weighted, mirroring or failover service forwards to (as referenced)."""
        s = self.services.get(name) or {}
        if "weighted" in s:
            return [c.get("name", "") for c in (s["weighted"] or {}).get("services") or []]
        if "mirroring" in s:
            m = s["mirroring"] or {}
            return [m.get("service", "")] + [c.get("name", "") for c in m.get("mirrors") or []]
        if "failover" in s:
            f = s["failover"] or {}
            return [f.get("service", ""), f.get("fallback", "")]
        return []

    def leaves(self, name: str, seen: set[str] | None = None) -> list[str]:
        """The load-balancer services (they hold the servers) a service reaches, in order."""
        seen = set() if seen is None else seen
        if name in seen or name not in self.services:
            return []
        seen.add(name)
        if "loadBalancer" in self.services[name]:
            return [name]
        return [leaf for c in self.children(name) for leaf in self.leaves(local_ref(c) or "", seen)]

    def port(self, entrypoint: str) -> int | None:
        return _port((self.entrypoints.get(entrypoint) or {}).get("address", ""))

    def entrypoint_at(self, port: int) -> str | None:
        return next((n for n in self.entrypoints if self.port(n) == port), None)

    def on(self, entrypoint: str) -> dict[str, dict]:
        if entrypoint not in self._on:
            self._on[entrypoint] = {n: r for n, r in self.routers.items()
                                    if entrypoint in (r.get("entryPoints") or [])}
        return self._on[entrypoint]

    def routers_for(self, host: str) -> dict[str, dict]:
        """Routers whose rule names ``host`` (indexed once: audits walk every route)."""
        if self._by_host is None:
            self._by_host = {}
            for n, r in self.routers.items():
                for h in hosts_of(r):
                    self._by_host.setdefault(h, {})[n] = r
        return self._by_host.get(host, {})

    def scheme(self, entrypoint: str) -> str:
        tls = ((self.entrypoints.get(entrypoint) or {}).get("http") or {}).get("tls") is not None
        return "https" if tls or any("tls" in r for r in self.on(entrypoint).values()) else "http"

    def option_of(self, router: dict) -> str | None:
        tls = router.get("tls")
        return local_ref(tls.get("options") or "default") if tls is not None else None

    def option_for_sni(self, entrypoint: str, host: str) -> str:
        """The TLS option Traefik picks for ``host`` as SNI on ``entrypoint`` (from the Host rules)."""
        on_ep = self.on(entrypoint)
        for n, r in self.routers_for(host).items():
            if n in on_ep and "tls" in r:
                return self.option_of(r) or "default"
        return "default"

    def certificate_names(self, entrypoint: str) -> set[str]:
        if entrypoint in self._cert_names:
            return self._cert_names[entrypoint]
        names = set()
        for r in self.on(entrypoint).values():
            for d in (r.get("tls") or {}).get("domains") or []:
                names |= {d.get("main"), *(d.get("sans") or [])}
        for store in self.stores.values():
            domain = (store.get("defaultGeneratedCert") or {}).get("domain") or {}
            names |= {domain.get("main"), *(domain.get("sans") or [])}
        self._cert_names[entrypoint] = names - {None}
        return self._cert_names[entrypoint]


def hosts_of(router: dict) -> list[str]:
    return _HOST.findall(router.get("rule") or "")


def listing(d) -> str:
    return ", ".join(sorted(d)) or "none"


def reference_problems(mesh: Mesh) -> tuple[list[str], set[str], set[str]]:
    """Dangling references; and the routers and services they make unreliable downstream."""
    out: list[str] = []
    bad_routers: set[str] = set()
    bad_services: set[str] = set()
    eps = mesh.entrypoints

    def entrypoint(ref: str | None, where: str) -> None:
        if ref is not None and ref not in eps:
            out.append(f"{where}: entrypoint {ref!r} is not defined (defined: {listing(eps)})")

    for name, r in mesh.resolvers.items():
        acme = r.get("acme") or {}
        entrypoint((acme.get("httpChallenge") or {}).get("entryPoint"), f"mesh resolver {name}")
    entrypoint((mesh.static.get("ping") or {}).get("entryPoint"), "mesh ping")
    entrypoint(((mesh.static.get("metrics") or {}).get("prometheus") or {}).get("entryPoint"), "mesh metrics")
    for name, ep in eps.items():      # entrypoint defaults name dynamic objects too
        http = ep.get("http") or {}
        tls = http.get("tls") or {}
        if tls.get("options") and local_ref(tls["options"]) not in mesh.options:
            out.append(f"mesh entrypoint {name}: TLS option {tls['options']!r} is not defined "
                       f"(defined: {listing(mesh.options)})")
        if tls.get("certResolver") and tls["certResolver"] not in mesh.resolvers:
            out.append(f"mesh entrypoint {name}: certificate resolver {tls['certResolver']!r} is not defined "
                       f"(defined: {listing(mesh.resolvers)})")
        for mw in http.get("middlewares") or []:
            if local_ref(mw) not in mesh.middlewares:
                out.append(f"mesh entrypoint {name}: middleware {mw!r} is not defined "
                           f"(defined: {listing(mesh.middlewares)})")
    for name, r in mesh.routers.items():
        where, before = f"mesh router {name}", len(out)
        if not r.get("entryPoints"):
            out.append(f"{where}: lists no entrypoint (it would listen on all of them)")
        for ep in r.get("entryPoints") or []:
            entrypoint(ep, where)
        svc = r.get("service") or ""
        internal = svc.endswith("@internal") and svc.partition("@")[0] in mesh.internal_services
        if not internal and local_ref(svc) not in mesh.services:
            out.append(f"{where}: service {svc!r} is not defined (defined: {listing(mesh.services)})")
        for mw in r.get("middlewares") or []:
            if local_ref(mw) not in mesh.middlewares:
                out.append(f"{where}: middleware {mw!r} is not defined (defined: {listing(mesh.middlewares)})")
        tls = r.get("tls")
        if tls is not None:
            if mesh.option_of(r) not in mesh.options:
                out.append(f"{where}: TLS option {tls.get('options')!r} is not defined "
                           f"(defined: {listing(mesh.options)})")
            if tls.get("certResolver") and tls["certResolver"] not in mesh.resolvers:
                out.append(f"{where}: certificate resolver {tls['certResolver']!r} is not defined "
                           f"(defined: {listing(mesh.resolvers)})")
        if len(out) > before:
            bad_routers.add(name)
    for name, s in mesh.services.items():
        transport = (s.get("loadBalancer") or {}).get("serversTransport")
        if transport and local_ref(transport) not in mesh.transports and transport != "default@internal":
            out.append(f"mesh service {name}: servers transport {transport!r} is not defined "
                       f"(defined: {listing(mesh.transports)})")
            bad_services.add(name)
        for child in mesh.children(name):
            if local_ref(child) not in mesh.services:
                out.append(f"mesh service {name}: service {child!r} is not defined "
                           f"(defined: {listing(mesh.services)})")
                bad_services.add(name)
        if (s.get("weighted") or {}).get("healthCheck") is not None:
            # Traefik refuses to build a service that propagates health from a child without a check.
            for child in mesh.children(name):
                body = mesh.services.get(local_ref(child) or "")
                if body and all((kind or {}).get("healthCheck") is None for kind in body.values()):
                    out.append(f"mesh service {name}: propagates health, but its service {child} has no "
                               "health check")
                    bad_services.add(name)
    grew = True
    while grew:                         # a parent of a broken service is broken too
        grew = False
        for name in mesh.services:
            if name not in bad_services and any(local_ref(c) in bad_services for c in mesh.children(name)):
                bad_services.add(name)
                grew = True
    for name, store in mesh.stores.items():
        resolver = (store.get("defaultGeneratedCert") or {}).get("resolver")
        if resolver and resolver not in mesh.resolvers:
            out.append(f"mesh TLS store {name}: certificate resolver {resolver!r} is not defined "
                       f"(defined: {listing(mesh.resolvers)})")
    return out, bad_routers, bad_services
