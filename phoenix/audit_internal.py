"""The route audit's service-to-service half (see ``phoenix.audit``), and the rules every router keeps.

* guest -> mesh: every internal name of a service (its own, its aliases) answers, in the internal
  view, the mesh's address (A, or a CNAME chain that ends there): a guest that calls the name
  reaches the mesh, never a replica directly; the mesh has a TLS router for it on the internal
  entrypoint, which every guest's traffic may reach through the mesh's firewall; Traefik orders
  a certificate covering it (``tls.domains``), which Step-CA can issue: the name is in the CA's
  policy and resolves to the mesh, where Traefik answers HTTP-01;
* every router has a Host rule (a TLS router without one has its TLS options picked by whatever
  SNI a client sends, and Traefik warns), Traefik's own ping and metrics routers included
  (``manualRouting``), and applies the circuit breaker before the retry (the breaker must see
  what the retry made of a request: with the retry first, one failed attempt against a stopped
  replica trips the breaker for the whole service).

The mesh -> backend hop that follows is ``phoenix.audit_backends``.
"""

from __future__ import annotations

from phoenix.artifacts import Artifacts
from phoenix.audit_backends import backend_lines, covering, firewall_allows, normal_names, resolve
from phoenix.audit_mesh import Mesh, hosts_of, listing, local_ref
from phoenix.pki import ca_policy, outside_allowed_domains, policy_matcher
from phoenix.topology import Topology

#: the middleware kinds whose order matters, as Traefik's dynamic config spells them.
BREAKER, RETRY = "circuitBreaker", "retry"


def ordered_names(mesh: Mesh) -> set[str]:
    """Every name Traefik orders a certificate for: the routers' ``tls.domains`` with a resolver,
    and the default store's. One store serves them on every entrypoint, picked by SNI."""
    names: set[str | None] = set()
    for r in mesh.routers.values():
        tls = r.get("tls") or {}
        if tls.get("certResolver"):
            for d in tls.get("domains") or []:
                names |= {d.get("main"), *(d.get("sans") or [])}
    for store in mesh.stores.values():
        domain = (store.get("defaultGeneratedCert") or {}).get("domain") or {}
        names |= {domain.get("main"), *(domain.get("sans") or [])}
    return {n for n in names if n is not None}


def _internal_clients(topo: Topology) -> list[str]:
    """The guests that call services through the mesh (every guest but the mesh itself)."""
    return [str(g.address) for g in topo.lab.guests if g.name != topo.mesh.name]


def internal_route_problems(topo: Topology, art: Artifacts, mesh: Mesh, bad: set[str]) -> list[str]:
    out = []
    mesh_at = str(topo.mesh.address)
    ordered = normal_names(ordered_names(mesh))
    rules = art.firewall.get(topo.mesh.name, [])
    clients = _internal_clients(topo)
    refused_at: dict[int, list[str]] = {}    # by entrypoint port: the same guests call every service
    for route in topo.routes:
        if route.public:
            continue
        ep, names = route.entrypoint, topo.service_names(topo.service(route.service))
        for name in names:
            got = resolve(art, "internal", name)
            if got and got != {mesh_at}:   # no answer at all: dns_problems names the missing record
                out.append(f"internal route {name}: guest -> mesh: the internal view resolves it to "
                           f"{', '.join(sorted(got))}, not the mesh ({mesh_at}): a guest calling it would bypass "
                           "the mesh's load balancing, health checks, retries and circuit breaker")
        at = f"internal route {route.host}"
        routers = mesh.routers_for(route.host)
        if routers.keys() & bad:
            continue
        on_ep = {n: r for n, r in routers.items() if ep.name in (r.get("entryPoints") or [])}
        if not on_ep:
            out.append(f"{at}: the mesh has no router for it on entrypoint {ep.name}")
            continue
        if ep.scheme == "https" and not any("tls" in r for r in on_ep.values()):
            out.append(f"{at}: guest -> mesh: router {listing(on_ep)} on entrypoint {ep.name} has no TLS "
                       "section, so the guests' TLS requests never reach it (404)")
            continue
        for name in names:
            if ep.scheme == "https" and not covering(ordered, name):
                out.append(f"internal route {name}: guest -> mesh: the mesh orders no certificate covering it "
                           f"(it has {listing(ordered)}): a client verifying the name it dialled fails")
        if ep.port not in refused_at:
            refused_at[ep.port] = [c for c in clients if not firewall_allows(rules, c, ep.port)]
        refused = refused_at[ep.port]
        if refused:
            out.append(f"{at}: the mesh's firewall does not let the guests ({', '.join(refused)}) reach "
                       f"entrypoint {ep.name} (tcp/{ep.port})")
    return out


def mesh_certificate_problems(topo: Topology, art: Artifacts, mesh: Mesh) -> list[str]:
    """Every name Traefik orders must be one Step-CA issues, to the mesh, by HTTP-01."""
    out = []
    permits, mesh_at = policy_matcher(ca_policy(topo.lab, topo)), str(topo.mesh.address)
    for name in sorted(ordered_names(mesh)):
        at = f"mesh certificate {name}"
        if outside_allowed_domains(topo.lab, [name]):
            out.append(f"{at}: outside the CA's allowed domains: Step-CA would refuse the order")
        elif not permits(name):
            out.append(f"{at}: not in Step-CA's policy (topology.step_ca_names): Step-CA would refuse the order")
        got = resolve(art, "internal", name)
        if got != {mesh_at}:
            out.append(f"{at}: Step-CA validates HTTP-01 at {', '.join(sorted(got)) or 'no address'} (the internal "
                       f"view's answer), not at the mesh ({mesh_at})")
    return out


def _kinds(mesh: Mesh, router: dict) -> list[str]:
    """The kinds of a router's middlewares, in order (``retry``, ``circuitBreaker``, ...)."""
    out = []
    for ref in router.get("middlewares") or []:
        body = mesh.middlewares.get(local_ref(ref) or "") or {}
        out += list(body)[:1]
    return out


def router_rule_problems(mesh: Mesh) -> list[str]:
    out = []
    for name, r in sorted(mesh.routers.items()):
        if not hosts_of(r):
            out.append(f"mesh router {name}: its rule {r.get('rule')!r} names no Host: it answers any name, and "
                       "a TLS router's options depend on the client's SNI")
        kinds = _kinds(mesh, r)
        if BREAKER in kinds and RETRY in kinds and kinds.index(RETRY) < kinds.index(BREAKER):
            out.append(f"mesh router {name}: applies the retry before the circuit breaker: one failed attempt "
                       "(a replica down) trips the breaker for the whole service; list the circuit breaker first")
    for what, section in (("ping", mesh.static.get("ping")),
                          ("metrics", (mesh.static.get("metrics") or {}).get("prometheus"))):
        if section is not None and not section.get("manualRouting"):
            out.append(f"mesh {what}: Traefik's own router for it has no Host rule; set manualRouting and route "
                       "it with one")
    return out


def internal_summary_lines(topo: Topology, art: Artifacts, mesh: Mesh, router_for) -> list[str]:
    """The service-to-service paths the audit walked: a guest calling a service by its names."""
    lines = []
    clients = f"the guests ({topo.lab.network.cidr})"
    ordered = normal_names(ordered_names(mesh))
    for route in topo.routes:
        if route.public:
            continue
        ep, service = route.entrypoint, topo.service(route.service)
        names = topo.service_names(service)
        router, r = router_for(mesh, route.host, ep.name)
        certs = sorted({n for h in names for n in covering(ordered, h)})
        resolved = ", ".join(sorted(resolve(art, "internal", route.host))) or "nothing"
        chain = " -> ".join(local_ref(m) or m for m in r.get("middlewares") or []) or "no middleware"
        lines.append(f"  {topo.internal_url(service)} -> service {service.name} (internal: service to service)")
        lines.append(f"    guest -> mesh: {', '.join(names)} -> {resolved} (internal view); "
                     f"{ep.scheme}://{topo.mesh.address}:{ep.port} (entrypoint {ep.name}) from {clients}: "
                     f"Step-CA certificate for {', '.join(certs) or 'NONE'}; {chain}")
        lines += backend_lines(topo, art, mesh, router, r)
    return lines


__all__ = ["internal_route_problems", "internal_summary_lines", "mesh_certificate_problems", "ordered_names",
           "resolve", "router_rule_problems"]
