"""The Traefik mesh on its LXC: static and dynamic configuration, unit and scripts, from the topology.

The package, by seam: ``names`` (paths on the guest, names inside the configuration),
``static`` (entrypoints, resolver), ``dynamic`` (routers, services, transports, TLS options,
the marker), ``files`` (YAML, the health check's expectations, unit and scripts). Importers
use this package's names; the modules are where each piece lives.

``static_config`` and ``dynamic_config`` are plain dicts (the route audit reads them); the
YAML files are dumps of them. The catalog is the service registry: the file provider
watches ``DYNAMIC_DIR`` and the dynamic file is swapped in by rename, so a change of
routes or replicas reloads Traefik without a restart.

Names. Every catalog service's internal name (``<service>.<internal domain>``) and its aliases
resolve to the mesh in the internal view: a guest calls ``https://<service>.<internal domain>/``
on the internal entrypoint (port 443) and Traefik load-balances it over the replicas, with
health checks, the circuit breaker and retries, in that order (``dynamic.ROUTE_MIDDLEWARES``).

Certificates. Every TLS router asks the ``stepca`` resolver (Step-CA's ACME directory, by
address) for its names (``tls.domains``): an internal router for the service's names (the
mesh proves them by HTTP-01: they resolve to it), a gateway-entrypoint router for
``topo.mesh_name``, the name the gateway verifies (``proxy_ssl_name``). The default store
serves the mesh's name for any other SNI.

Client certificates (trap 10). The gateway entrypoint's routers name the ``gateway-mtls``
TLS option, defined in the same dynamic file: it trusts the gateway client CA alone (made by
the program, it signs only the gateway's certificate), so no other guest's certificate opens
it. Traefik picks TLS options by SNI from the routers' Host rules and answers 421 when a
request's Host maps to other options than its SNI. The gateway connects with SNI
``mesh_name``, so a router for ``Host(mesh_name)`` with the same option sits on that
entrypoint (it serves the mesh's ping to the gateway). Every router has a Host rule.

Backends. Every TLS backend is verified against the Phoenix root with its guest's name
(``topo.replica_tls_name``), the one name it can prove by HTTP-01. A service that runs once
has one load balancer; a replicated one has a load balancer per replica
(``<service>-<guest>``) joined by a ``weighted`` service under the service's name, holding the
sticky cookie and following the replicas' health checks.
"""

from phoenix.render import SCRIPTS
from phoenix.render.mesh.dynamic import ROUTE_MIDDLEWARES, dynamic_config, mark, mesh_services, own_hosts, route_hosts
from phoenix.render.mesh.files import (
    binds_privileged_port,
    dashboard_url,
    expected_entries,
    expected_text,
    health_script,
    install_context,
    install_script,
    to_yaml,
    unit_text,
    users_text,
)
from phoenix.render.mesh.names import (
    ACME_ENTRYPOINT,
    ACME_HTTP_PORT,
    ACME_STORAGE,
    BINARY,
    CIRCUIT_BREAKER,
    CONFIG_DIR,
    CONFIG_MARKER_PREFIX,
    DASHBOARD_AUTH,
    DASHBOARD_ENTRYPOINT,
    DASHBOARD_ROUTER,
    DASHBOARD_USER,
    DYNAMIC_DIR,
    DYNAMIC_PATH,
    EXPECTED_PATH,
    GATEWAY_CLIENT_CA_PATH,
    HEALTH_SCRIPT,
    INTERNAL_ONLY,
    LOCAL_API_ROUTER,
    METRICS_ENTRYPOINT,
    METRICS_PATH,
    METRICS_ROUTER,
    MTLS_OPTION,
    PING_ROUTER,
    RELEASES,
    RESOLVER,
    RETRY,
    STATE_DIR,
    STATIC_PATH,
    UNIT_PATH,
    USER,
    USERS_PATH,
    checksums_file,
    mesh_router_name,
    release_file,
    release_url,
    replica_service_name,
    router_name,
    service_name,
    transport_name,
)
from phoenix.render.mesh.static import ENTRYPOINT_HTTP, entrypoint_ports, gateway_entrypoints, static_config
from phoenix.topology import MESH_PING_PATH, ROOT_CA_TRUST_PATH

# The package's names (what importers use), re-exported from the modules where each piece lives.
__all__ = [
    "SCRIPTS", "ROUTE_MIDDLEWARES", "dynamic_config", "mark", "mesh_services", "own_hosts", "route_hosts",
    "binds_privileged_port", "dashboard_url", "expected_entries", "expected_text", "health_script",
    "install_context", "install_script", "to_yaml", "unit_text", "users_text", "ACME_ENTRYPOINT",
    "ACME_HTTP_PORT", "ACME_STORAGE", "BINARY", "CIRCUIT_BREAKER", "CONFIG_DIR", "CONFIG_MARKER_PREFIX",
    "DASHBOARD_AUTH", "DASHBOARD_ENTRYPOINT", "DASHBOARD_ROUTER", "DASHBOARD_USER", "DYNAMIC_DIR",
    "DYNAMIC_PATH", "EXPECTED_PATH", "GATEWAY_CLIENT_CA_PATH", "HEALTH_SCRIPT", "INTERNAL_ONLY",
    "LOCAL_API_ROUTER", "METRICS_ENTRYPOINT", "METRICS_PATH", "METRICS_ROUTER", "MTLS_OPTION", "PING_ROUTER",
    "RELEASES", "RESOLVER", "RETRY", "STATE_DIR", "STATIC_PATH", "UNIT_PATH", "USER", "USERS_PATH",
    "checksums_file", "mesh_router_name", "release_file", "release_url", "replica_service_name",
    "router_name", "service_name", "transport_name", "ENTRYPOINT_HTTP", "entrypoint_ports",
    "gateway_entrypoints", "static_config", "MESH_PING_PATH", "ROOT_CA_TRUST_PATH",
]
