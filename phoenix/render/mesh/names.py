"""Where the mesh's files live on its guest, and the names inside Traefik's configuration
(entrypoints, middlewares, resolver, routers and services derived from the catalog)."""

from __future__ import annotations

from phoenix.model import replica_name
from phoenix.render import SCRIPTS
from phoenix.topology import Route

# -- where things live on the mesh guest ------------------------------------------------------
BINARY = "/usr/local/bin/traefik"
CONFIG_DIR = "/etc/traefik"
STATIC_PATH = f"{CONFIG_DIR}/traefik.yaml"
DYNAMIC_DIR = f"{CONFIG_DIR}/dynamic"
DYNAMIC_PATH = f"{DYNAMIC_DIR}/phoenix.yaml"
#: what the health check must find in the running configuration after a dynamic push.
EXPECTED_PATH = f"{CONFIG_DIR}/phoenix-expected.txt"
USERS_PATH = f"{CONFIG_DIR}/dashboard.users"
#: the one CA the gateway entrypoint trusts for client certificates: the gateway's own, made by
#: the program under the Phoenix root (components/pki.py), which signs nothing else.
GATEWAY_CLIENT_CA_PATH = f"{CONFIG_DIR}/gateway-client-ca.crt"
STATE_DIR = "/var/lib/traefik"
ACME_STORAGE = f"{STATE_DIR}/acme.json"
UNIT_PATH = "/etc/systemd/system/traefik.service"
#: where phoenix steps keep their scripts (components.base.SCRIPTS; the core does not import the shell).
HEALTH_SCRIPT = f"{SCRIPTS}/traefik-health.sh"
USER = "traefik"

# -- names inside the configuration ----------------------------------------------------------
RESOLVER = "stepca"
MTLS_OPTION = "gateway-mtls"
ACME_ENTRYPOINT = "acme"
METRICS_ENTRYPOINT = "metrics"
DASHBOARD_ENTRYPOINT = "dashboard"
#: HTTP-01 is always validated on port 80 (RFC 8555 8.3); Step-CA dials it (topology flows).
ACME_HTTP_PORT = 80
RETRY = "retry"
CIRCUIT_BREAKER = "circuit-breaker"
DASHBOARD_AUTH = "dashboard-auth"
INTERNAL_ONLY = "internal-networks-only"
DASHBOARD_USER = "phoenix"
#: the name of the middleware that marks one dynamic file (``mark``).
CONFIG_MARKER_PREFIX = "phoenix-config-"
RELEASES = "https://github.com/traefik/traefik/releases/download"


# -- names derived from the catalog -------------------------------------------------------------
def router_name(route: Route) -> str:
    return f"{route.service}-{route.entrypoint.name}"


def service_name(service: str) -> str:
    return service


def replica_service_name(service: str, guest: str) -> str:
    """A replicated service's load balancer for the replica on ``guest`` (see ``dynamic``)."""
    return replica_name(service, guest)


def transport_name(service: str, guest: str | None = None) -> str:
    """The servers transport of a service's backends, or of one replica's when it is replicated."""
    return f"{service if guest is None else replica_service_name(service, guest)}-backend"


def mesh_router_name(entrypoint: str) -> str:
    return f"mesh-{entrypoint}"


DASHBOARD_ROUTER = "dashboard"
LOCAL_API_ROUTER = "local-api"
PING_ROUTER = "ping"
METRICS_ROUTER = "metrics"
METRICS_PATH = "/metrics"


def release_file(version: str) -> str:
    return f"traefik_v{version}_linux_amd64.tar.gz"


def release_url(version: str) -> str:
    return f"{RELEASES}/v{version}/{release_file(version)}"


def checksums_file(version: str) -> str:
    return f"traefik_v{version}_checksums.txt"
