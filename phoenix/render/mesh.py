"""The Traefik mesh on its LXC: static and dynamic configuration, unit and scripts, from the topology.

``static_config`` and ``dynamic_config`` are plain dicts (the route audit reads them); the
YAML files are dumps of them. The catalog is the service registry: the file provider
watches ``DYNAMIC_DIR`` and the dynamic file is swapped in by rename, so a change of
routes or replicas reloads Traefik without a restart.

Certificates. Every TLS router asks the ``stepca`` resolver (Step-CA's ACME directory, by
address) for one certificate, for ``topo.mesh_name``: that is the name the gateway verifies
(``proxy_ssl_name``) and the only name whose HTTP-01 challenge reaches this guest (public
and service names resolve elsewhere). ``tls.domains`` makes Traefik request exactly that
name instead of the names in the rules, and the default store serves it for any SNI.

Client certificates (trap 10). The gateway entrypoint's routers name the ``gateway-mtls``
TLS option, defined in the same dynamic file. Traefik picks TLS options by SNI from the
routers' Host rules and answers 421 when a request's Host maps to other options than its
SNI. The gateway connects with SNI ``mesh_name``, so a router for ``Host(mesh_name)`` with
the same option sits on that entrypoint (it serves the mesh's ping to the gateway).

Backends. Every TLS backend is verified against the Phoenix root with a name its certificate
carries (``topo.replica_tls_name``): a service that runs once is verified as the service's
name. A replicated service's name resolves to every replica, so no replica can prove it by
HTTP-01; each replica gets a load balancer of its own (``<service>-<guest>``) whose servers
transport verifies the guest's name, and a ``weighted`` service under the service's name joins
them, holding the sticky cookie and following the replicas' health checks.
"""

from __future__ import annotations

from typing import Optional

import yaml

from phoenix.errors import ConfigError, problem
from phoenix.model import Service
from phoenix.render import SCRIPTS, render
from phoenix.topology import ROOT_CA_TRUST_PATH, Backend, Route, Topology

# -- where things live on the mesh guest ------------------------------------------------------
BINARY = "/usr/local/bin/traefik"
CONFIG_DIR = "/etc/traefik"
STATIC_PATH = f"{CONFIG_DIR}/traefik.yaml"
DYNAMIC_DIR = f"{CONFIG_DIR}/dynamic"
DYNAMIC_PATH = f"{DYNAMIC_DIR}/phoenix.yaml"
#: what the health check must find in the running configuration after a dynamic push.
EXPECTED_PATH = f"{CONFIG_DIR}/phoenix-expected.txt"
USERS_PATH = f"{CONFIG_DIR}/dashboard.users"
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
RELEASES = "https://github.com/traefik/traefik/releases/download"


# -- names derived from the catalog -------------------------------------------------------------
def router_name(route: Route) -> str:
    return f"{route.service}-{route.entrypoint.name}"


def service_name(service: str) -> str:
    return service


def replica_service_name(service: str, guest: str) -> str:
    """A replicated service's load balancer for the replica on ``guest`` (see ``_replicated``)."""
    return f"{service}-{guest}"


def transport_name(service: str, guest: Optional[str] = None) -> str:
    """The servers transport of a service's backends, or of one replica's when it is replicated."""
    return f"{service if guest is None else replica_service_name(service, guest)}-backend"


def mesh_router_name(entrypoint: str) -> str:
    return f"mesh-{entrypoint}"


DASHBOARD_ROUTER = "dashboard"
LOCAL_API_ROUTER = "local-api"


def release_file(version: str) -> str:
    return f"traefik_v{version}_linux_amd64.tar.gz"


def release_url(version: str) -> str:
    return f"{RELEASES}/v{version}/{release_file(version)}"


def checksums_file(version: str) -> str:
    return f"traefik_v{version}_checksums.txt"


# -- static configuration ---------------------------------------------------------------------
def gateway_entrypoints(topo: Topology) -> list[str]:
    """The entrypoints the gateway dials: TLS with a client certificate from the Phoenix CA."""
    return [name for name, ep in topo.entrypoints.items() if ep.client_auth]


def entrypoint_ports(topo: Topology) -> dict[str, int]:
    """Every entrypoint of the mesh and its port: the two the topology defines, and Traefik's own."""
    m = topo.lab.mesh
    ports = {name: ep.port for name, ep in topo.entrypoints.items()}
    ports.update({ACME_ENTRYPOINT: ACME_HTTP_PORT, METRICS_ENTRYPOINT: m.metrics_port,
                  DASHBOARD_ENTRYPOINT: m.dashboard_port})
    return ports


def static_config(topo: Topology) -> dict:
    lab = topo.lab
    ports = entrypoint_ports(topo)
    entrypoints: dict[str, dict] = {name: {"address": f":{port}"} for name, port in ports.items()}
    for name in gateway_entrypoints(topo):
        # The gateway's X-Forwarded-* headers are trusted; nobody else's are.
        entrypoints[name]["forwardedHeaders"] = {"trustedIPs": [str(topo.gateway.address)]}
    for name in topo.entrypoints:
        # Traefik 3 cuts a request body after 60 s by default: large uploads (audio, documents)
        # and long generations get the service's own timeout instead (serversTransport), and the
        # gateway bounds its clients.
        entrypoints[name]["transport"] = {"respondingTimeouts": {"readTimeout": "0s", "idleTimeout": "180s"}}
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": "INFO"},
        "accessLog": {"format": "json"},
        "entryPoints": entrypoints,
        "providers": {"file": {"directory": DYNAMIC_DIR, "watch": True}},
        # The dashboard is routed by the dynamic config (internal networks, basic auth), never insecure.
        "api": {"dashboard": True, "insecure": False},
        "ping": {"entryPoint": METRICS_ENTRYPOINT},
        "metrics": {"prometheus": {"entryPoint": METRICS_ENTRYPOINT, "addEntryPointsLabels": True,
                                   "addRoutersLabels": True, "addServicesLabels": True}},
        "certificatesResolvers": {RESOLVER: {"acme": {
            # By address: the mesh must not need DNS to reach its CA (trap 4). Traefik trusts the
            # Phoenix root through LEGO_CA_CERTIFICATES in its unit (caCertificates is newer than 3.1).
            "caServer": topo.acme_directory,
            "email": lab.acme.email,
            "storage": ACME_STORAGE,
            "keyType": "EC256",
            "certificatesDuration": lab.pki.leaf_lifetime_hours,
            "httpChallenge": {"entryPoint": ACME_ENTRYPOINT},
        }}},
    }


# -- dynamic configuration --------------------------------------------------------------------
def _tls(client_auth: bool, topo: Topology) -> dict:
    tls = {"certResolver": RESOLVER, "domains": [{"main": topo.mesh_name}]}
    if client_auth:
        tls["options"] = MTLS_OPTION
    return tls


def _hosts_rule(hosts: list[str]) -> str:
    return " || ".join(f"Host(`{h}`)" for h in hosts)


def route_hosts(topo: Topology, route: Route) -> list[str]:
    """Host names a route's router answers: a public host, or a service's name and its aliases."""
    if route.public:
        return [route.host]
    return [route.host] + [topo.fqdn(a) for a in topo.service(route.service).aliases]


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


def _transport(topo: Topology, s: Service, guest: str) -> dict:
    transport: dict = {"forwardingTimeouts": {"dialTimeout": "5s", "responseHeaderTimeout": f"{s.timeout}s",
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


def _add_unique(into: dict, owners: dict[str, str], new: dict, what: str, owner: Service, topo: Topology) -> None:
    """A generated name must not shadow another (a catalog service named like another's replica)."""
    for name, value in new.items():
        if name in into:
            index = topo.lab.services.index(owner)
            raise ConfigError([problem(f"phoenix:services[{index}].name",
                                       f"the mesh {what} {name!r} is generated for both service {owners[name]!r} "
                                       f"and service {owner.name!r} (a replica's name is <service>-<guest>); "
                                       "rename one")])
        into[name], owners[name] = value, owner.name


def dynamic_config(topo: Topology) -> dict:
    lab = topo.lab
    routers: dict[str, dict] = {}
    for route in topo.routes:
        routers[router_name(route)] = {
            "entryPoints": [route.entrypoint.name],
            "rule": _hosts_rule(route_hosts(topo, route)),
            "service": service_name(route.service),
            "middlewares": [RETRY, CIRCUIT_BREAKER],
            "tls": _tls(route.entrypoint.client_auth, topo),
        }
    for name in gateway_entrypoints(topo):
        # SNI mesh_name here must select the same TLS option as the public hosts behind it
        # (see the module docstring); the router also gives the gateway a health check.
        routers[mesh_router_name(name)] = {
            "entryPoints": [name],
            "rule": f"Host(`{topo.mesh_name}`) && Path(`/ping`)",
            "service": "ping@internal",
            "tls": _tls(True, topo),
        }
    routers[DASHBOARD_ROUTER] = {
        "entryPoints": [DASHBOARD_ENTRYPOINT],
        "rule": "PathPrefix(`/api`) || PathPrefix(`/dashboard`)",
        "service": "api@internal",
        "middlewares": [INTERNAL_ONLY, DASHBOARD_AUTH],
        "tls": _tls(False, topo),
    }
    # The health check of a push reads the running configuration from the guest itself.
    routers[LOCAL_API_ROUTER] = {
        "entryPoints": [METRICS_ENTRYPOINT],
        "rule": "ClientIP(`127.0.0.1`) && PathPrefix(`/api`)",
        "service": "api@internal",
    }
    services: dict[str, dict] = {}
    transports: dict[str, dict] = {}
    service_owners: dict[str, str] = {}
    transport_owners: dict[str, str] = {}
    for s in lab.services:
        svcs, trans = mesh_services(topo, s)
        _add_unique(services, service_owners, svcs, "service", s, topo)
        _add_unique(transports, transport_owners, trans, "servers transport", s, topo)
    middlewares = {
        RETRY: {"retry": {"attempts": lab.mesh.retry_attempts, "initialInterval": "100ms"}},
        CIRCUIT_BREAKER: {"circuitBreaker": {"expression": lab.mesh.circuit_breaker}},
        INTERNAL_ONLY: {"ipAllowList": {"sourceRange": list(topo.internal_networks)}},
        DASHBOARD_AUTH: {"basicAuth": {"usersFile": USERS_PATH, "realm": "Phoenix mesh", "removeHeader": True}},
    }
    http: dict = {"routers": routers, "services": services, "middlewares": middlewares}
    if transports:
        http["serversTransports"] = transports
    return {
        "http": http,
        "tls": {
            "options": {
                "default": {"minVersion": "VersionTLS12"},
                MTLS_OPTION: {
                    "minVersion": "VersionTLS12",
                    "sniStrict": True,
                    "clientAuth": {"caFiles": [ROOT_CA_TRUST_PATH],
                                   "clientAuthType": "RequireAndVerifyClientCert"},
                },
            },
            "stores": {"default": {"defaultGeneratedCert": {"resolver": RESOLVER,
                                                            "domain": {"main": topo.mesh_name}}}},
        },
    }


# -- files ------------------------------------------------------------------------------------
_HEADER = "# Generated by Phoenix from the stack model and catalog; changes on the guest are overwritten.\n"


# libyaml's emitter writes the same text several times faster (the catalog of a large lab is big).
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def to_yaml(doc: dict) -> str:
    return _HEADER + yaml.dump(doc, Dumper=_DUMPER, sort_keys=False, default_flow_style=False, width=120)


def static_yaml(topo: Topology) -> str:
    return to_yaml(static_config(topo))


def dynamic_yaml(topo: Topology) -> str:
    return to_yaml(dynamic_config(topo))


def expected_entries(topo: Topology) -> list[str]:
    """Strings the running configuration (``/api/rawdata``) holds once the dynamic file is loaded:
    every router and service by its provider-qualified name, and every backend URL."""
    dyn = dynamic_config(topo)["http"]
    out = [f"{name}@file" for name in (*dyn["routers"], *dyn["services"])]
    balancers = [svc["loadBalancer"] for svc in dyn["services"].values() if "loadBalancer" in svc]
    out += [srv["url"] for lb in balancers for srv in lb["servers"]]
    return list(dict.fromkeys(out))


def expected_text(topo: Topology) -> str:
    return "\n".join(expected_entries(topo)) + "\n"


def binds_privileged_port(topo: Topology) -> bool:
    return min(entrypoint_ports(topo).values()) < 1024


def unit_text(topo: Topology) -> str:
    return render("mesh/traefik.service.j2", version=topo.lab.mesh.traefik_version, binary=BINARY,
                  static_path=STATIC_PATH, user=USER, state_dir=STATE_DIR, root_ca=ROOT_CA_TRUST_PATH,
                  bind_privileged=binds_privileged_port(topo))


def install_context(topo: Topology) -> dict:
    """What the install script is rendered from (tests re-root its paths)."""
    m = topo.lab.mesh
    return dict(version=m.traefik_version, sha256=m.traefik_sha256 or "", url=release_url(m.traefik_version),
                file=release_file(m.traefik_version), checksums=checksums_file(m.traefik_version),
                binary=BINARY, user=USER, config_dir=CONFIG_DIR, dynamic_dir=DYNAMIC_DIR,
                state_dir=STATE_DIR, acme_storage=ACME_STORAGE)


def install_script(topo: Topology) -> str:
    return render("mesh/install-traefik.sh.j2", **install_context(topo))


def health_script(topo: Topology) -> str:
    m = topo.lab.mesh
    return render("mesh/traefik-health.sh.j2",
                  ping_url=f"http://127.0.0.1:{m.metrics_port}/ping",
                  rawdata_url=f"http://127.0.0.1:{m.metrics_port}/api/rawdata",
                  mesh_name=topo.mesh_name, internal_port=topo.entrypoints["internal"].port,
                  root_ca=ROOT_CA_TRUST_PATH)


def deploy_problems(topo: Topology) -> list[str]:
    """Pins a real deployment needs (Phoenix never guesses a checksum); the plan shows them as warnings."""
    m = topo.lab.mesh
    if m.traefik_sha256:
        return []
    return [f"phoenix:mesh.traefikSha256: required to install Traefik {m.traefik_version}: the sha256 of "
            f"{release_file(m.traefik_version)} from the release's {checksums_file(m.traefik_version)}"]


def users_text(bcrypt_hash: str) -> str:
    """The dashboard's users file (``name:hash``, a bcrypt hash Traefik checks)."""
    return f"{DASHBOARD_USER}:{bcrypt_hash}\n"


def dashboard_url(topo: Topology) -> str:
    return f"https://{topo.mesh_name}:{topo.lab.mesh.dashboard_port}/dashboard/"
