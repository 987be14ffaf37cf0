"""Traefik's dynamic configuration: routers, services (load balancers, weighted services over
replicas), servers transports, middlewares and TLS options, from the catalog; and ``mark``,
the digest every pushed file carries (a plain dict; ``files.to_yaml`` writes it)."""

from __future__ import annotations

import hashlib
import json

from phoenix.model import Service
from phoenix.render.mesh.names import (
    CIRCUIT_BREAKER,
    CONFIG_MARKER_PREFIX,
    DASHBOARD_AUTH,
    DASHBOARD_ENTRYPOINT,
    DASHBOARD_ROUTER,
    GATEWAY_CLIENT_CA_PATH,
    INTERNAL_ONLY,
    LOCAL_API_ROUTER,
    METRICS_ENTRYPOINT,
    METRICS_PATH,
    METRICS_ROUTER,
    MTLS_OPTION,
    PING_ROUTER,
    RESOLVER,
    RETRY,
    USERS_PATH,
    mesh_router_name,
    replica_service_name,
    router_name,
    service_name,
    transport_name,
)
from phoenix.render.mesh.static import gateway_entrypoints
from phoenix.topology import MESH_PING_PATH, ROOT_CA_TRUST_PATH, Backend, Route, Topology

LOOPBACK = "127.0.0.1"


def _tls(client_auth: bool, topo: Topology, names: list[str] | None = None) -> dict:
    """A router's TLS: the certificate Traefik orders from Step-CA for ``names`` (by default
    the mesh's own name, the one the gateway verifies), and the gateway's TLS option."""
    main, *sans = names or [topo.mesh_name]
    domain: dict = {"main": main}
    if sans:
        domain["sans"] = sans
    tls = {"certResolver": RESOLVER, "domains": [domain]}
    if client_auth:
        tls["options"] = MTLS_OPTION
    return tls


def _hosts_rule(hosts: list[str]) -> str:
    return " || ".join(f"Host(`{h}`)" for h in hosts)


def route_hosts(topo: Topology, route: Route) -> list[str]:
    """Host names a route's router answers: a public host, or a service's name and its aliases."""
    if route.public:
        return [route.host]
    return topo.service_names(topo.service(route.service))


def own_hosts(topo: Topology) -> list[str]:
    """The names the mesh's own endpoints answer on its metrics entrypoint: its name, its address,
    and loopback (the guest asking itself: the push's health check)."""
    return [topo.mesh_name, str(topo.mesh.address), LOOPBACK]


#: what a router applies, in order. The circuit breaker sees what the retry made of a request:
#: one replica down is a retried success, not an error, so the breaker never trips for the
#: whole service while another replica answers (retry first: the first failed attempt trips it,
#: and every call gets 503 for the breaker's fallback duration).
ROUTE_MIDDLEWARES = (CIRCUIT_BREAKER, RETRY)


def _health_check(topo: Topology, s: Service) -> dict:
    return {"path": s.health, "interval": topo.lab.mesh.health_interval, "timeout": "5s"}


def _sticky(s: Service) -> dict:
    return {"cookie": {"name": f"phoenix_{s.name.replace('-', '_')}", "secure": True, "httpOnly": True,
                       "sameSite": "lax"}}


def _load_balancer(topo: Topology, s: Service, backends: tuple[Backend, ...], transport: str) -> dict:
    lb: dict = {
        "servers": [{"url": b.url} for b in backends],
        "healthCheck": _health_check(topo, s),
        "passHostHeader": True,
        "serversTransport": transport,
    }
    if s.streaming:
        # Tokens reach the client as they are written (server-sent events and chunked streams).
        lb["responseForwarding"] = {"flushInterval": "-1ms"}
    return lb


#: keep-alive connections Traefik keeps to each backend. Left unset in a file-provider servers
#: transport, Go's default of 2 applies: under concurrent load nearly every request then opens a
#: new TLS connection to the backend (a handshake each; bench/mesh_hop.py measured 560 req/s
#: through the mesh against 29000 straight to the backend, and ``ss`` 463 connections in
#: TIME-WAIT after 1000 requests).
MAX_IDLE_PER_BACKEND = 64


def _transport(topo: Topology, s: Service, guest: str) -> dict:
    transport: dict = {"maxIdleConnsPerHost": MAX_IDLE_PER_BACKEND,
                       "forwardingTimeouts": {"dialTimeout": "5s", "responseHeaderTimeout": f"{s.timeout}s",
                                              "idleConnTimeout": "90s"}}
    if s.protocol == "https":
        transport.update(serverName=topo.replica_tls_name(s, guest), rootCAs=[ROOT_CA_TRUST_PATH],
                         insecureSkipVerify=False)
    return transport


def _replicated(s: Service) -> bool:
    """Several replicas: one load balancer per replica, each verifying its own guest's name
    (no replica can prove the shared service name by HTTP-01), joined by a weighted service
    that keeps the sticky cookie and follows the replicas' health checks."""
    return len(s.guests) > 1


def mesh_services(topo: Topology, s: Service) -> tuple[dict[str, dict], dict[str, dict]]:
    """(services, servers transports) that carry one catalog service."""
    backends = topo.backends(s)
    if not _replicated(s):
        lb = _load_balancer(topo, s, backends, transport_name(s.name))
        if s.sticky:
            lb["sticky"] = _sticky(s)
        return ({service_name(s.name): {"loadBalancer": lb}},
                {transport_name(s.name): _transport(topo, s, backends[0].guest)})
    weighted: dict = {"services": [{"name": replica_service_name(s.name, b.guest), "weight": 1} for b in backends],
                      # {} turns on health propagation: an unhealthy replica leaves the rotation.
                      "healthCheck": {}}
    if s.sticky:
        weighted["sticky"] = _sticky(s)
    services = {service_name(s.name): {"weighted": weighted}}
    transports = {}
    for b in backends:
        services[replica_service_name(s.name, b.guest)] = {
            "loadBalancer": _load_balancer(topo, s, (b,), transport_name(s.name, b.guest))}
        transports[transport_name(s.name, b.guest)] = _transport(topo, s, b.guest)
    return services, transports




def dynamic_config(topo: Topology) -> dict:
    lab = topo.lab
    routers: dict[str, dict] = {}
    for route in topo.routes:
        hosts = route_hosts(topo, route)
        routers[router_name(route)] = {
            "entryPoints": [route.entrypoint.name],
            "rule": _hosts_rule(hosts),
            "service": service_name(route.service),
            "middlewares": list(ROUTE_MIDDLEWARES),
            # The gateway verifies the mesh's own name; a guest verifies the name it dialled.
            "tls": _tls(route.entrypoint.client_auth, topo, None if route.public else hosts),
        }
    for name in gateway_entrypoints(topo):
        # SNI mesh_name here must select the same TLS option as the public hosts behind it
        # (see the module docstring); the router also gives the gateway a health check.
        routers[mesh_router_name(name)] = {
            "entryPoints": [name],
            "rule": f"Host(`{topo.mesh_name}`) && Path(`{MESH_PING_PATH}`)",
            "service": "ping@internal",
            "tls": _tls(True, topo),
        }
    # Every router names its hosts: a TLS router without one has its TLS options picked by
    # whatever SNI a client sends (Traefik warns), and a plain one answers any name.
    routers[DASHBOARD_ROUTER] = {
        "entryPoints": [DASHBOARD_ENTRYPOINT],
        "rule": f"Host(`{topo.mesh_name}`) && (PathPrefix(`/api`) || PathPrefix(`/dashboard`))",
        "service": "api@internal",
        "middlewares": [INTERNAL_ONLY, DASHBOARD_AUTH],
        "tls": _tls(False, topo),
    }
    # The health check of a push reads the running configuration from the guest itself.
    routers[LOCAL_API_ROUTER] = {
        "entryPoints": [METRICS_ENTRYPOINT],
        "rule": f"Host(`{LOOPBACK}`) && ClientIP(`{LOOPBACK}`) && PathPrefix(`/api`)",
        "service": "api@internal",
    }
    # Traefik's ping and metrics, routed here (static ``manualRouting``) so they have Host rules too.
    own = _hosts_rule(own_hosts(topo))
    routers[PING_ROUTER] = {"entryPoints": [METRICS_ENTRYPOINT], "rule": f"({own}) && Path(`{MESH_PING_PATH}`)",
                            "service": "ping@internal"}
    routers[METRICS_ROUTER] = {"entryPoints": [METRICS_ENTRYPOINT], "rule": f"({own}) && Path(`{METRICS_PATH}`)",
                               "service": "prometheus@internal"}
    services: dict[str, dict] = {}
    transports: dict[str, dict] = {}
    for s in lab.services:
        # Generated names never meet: the model refuses a catalog where they would (replica_name).
        svcs, trans = mesh_services(topo, s)
        services.update(svcs)
        transports.update(trans)
    middlewares = {
        RETRY: {"retry": {"attempts": lab.mesh.retry_attempts, "initialInterval": "100ms"}},
        CIRCUIT_BREAKER: {"circuitBreaker": {"expression": lab.mesh.circuit_breaker}},
        INTERNAL_ONLY: {"ipAllowList": {"sourceRange": list(topo.internal_networks)}},
        DASHBOARD_AUTH: {"basicAuth": {"usersFile": USERS_PATH, "realm": "Phoenix mesh", "removeHeader": True}},
    }
    http: dict = {"routers": routers, "services": services, "middlewares": middlewares}
    if transports:
        http["serversTransports"] = transports
    doc = {
        "http": http,
        "tls": {
            "options": {
                "default": {"minVersion": "VersionTLS12"},
                MTLS_OPTION: {
                    "minVersion": "VersionTLS12",
                    "sniStrict": True,
                    # The gateway's own CA alone: any other guest's certificate (all under the
                    # Phoenix root, from Step-CA) is refused at the handshake.
                    "clientAuth": {"caFiles": [GATEWAY_CLIENT_CA_PATH],
                                   "clientAuthType": "RequireAndVerifyClientCert"},
                },
            },
            "stores": {"default": {"defaultGeneratedCert": {"resolver": RESOLVER,
                                                            "domain": {"main": topo.mesh_name}}}},
        },
    }
    return mark(doc)


def mark(doc: dict) -> dict:
    """``doc`` with its marker, replacing any it had: a middleware named after the digest of the
    rest of the dynamic configuration, used by no router. Traefik lists it in /api/rawdata once
    it runs this file, so the push's health check, which waits for it, judges the pushed file
    and not the one Traefik ran before (a file with the same routers, e.g. one naming a
    middleware that does not exist, would otherwise pass before Traefik has even read it)."""
    middlewares = doc["http"].setdefault("middlewares", {})
    for name in [n for n in middlewares if n.startswith(CONFIG_MARKER_PREFIX)]:
        del middlewares[name]
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    middlewares[f"{CONFIG_MARKER_PREFIX}{digest}"] = {"headers": {"customResponseHeaders": {"X-Phoenix-Mesh": digest}}}
    return doc
