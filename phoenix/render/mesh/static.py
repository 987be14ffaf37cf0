"""Traefik's static configuration: entrypoints, the file provider, the API, metrics and the
``stepca`` ACME resolver (a plain dict; ``files.to_yaml`` writes it)."""

from __future__ import annotations

from typing import Any

from phoenix.render.mesh.names import (
    ACME_ENTRYPOINT,
    ACME_HTTP_PORT,
    ACME_STORAGE,
    DASHBOARD_ENTRYPOINT,
    DYNAMIC_DIR,
    METRICS_ENTRYPOINT,
    RESOLVER,
)
from phoenix.topology import Topology


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


#: Request hygiene on every entrypoint, set explicitly (Traefik 3.7 warns at every start while
#: these are left to its defaults, and its defaults may change between releases):
#: * a header whose name aliases another one (``X_Forwarded_For``, ``X.Forwarded.For`` for
#:   ``X-Forwarded-For``) is dropped: backends that map header names to variables (WSGI, CGI,
#:   PHP) would read it as the header Traefik manages. The gateway's nginx drops them too
#:   (``underscores_in_headers off``, ``ignore_invalid_headers on``, its defaults).
#: * encoded characters in the path: ``%00`` and ``%5C`` (NUL, backslash) have no legitimate use
#:   and serve truncation and traversal attacks, so they are refused (400); ``%2F``, ``%3B``,
#:   ``%25``, ``%3F`` and ``%23`` stay allowed: they are data in the path segments of the
#:   services' APIs (a model id ``org/name``, an image name in Portainer's Docker proxy), and the
#:   mesh routes by Host, so no router decision depends on how a backend decodes them.
ENTRYPOINT_HTTP: dict[str, Any] = {
    "aliasHeadersStrategy": "delete",
    "encodedCharacters": {
        "allowEncodedSlash": True, "allowEncodedBackSlash": False, "allowEncodedNullCharacter": False,
        "allowEncodedSemicolon": True, "allowEncodedPercent": True, "allowEncodedQuestionMark": True,
        "allowEncodedHash": True,
    },
}


def static_config(topo: Topology) -> dict:
    lab = topo.lab
    ports = entrypoint_ports(topo)
    # A copy each: a shared dict would be dumped as a YAML anchor and aliases.
    entrypoints: dict[str, dict] = {name: {"address": f":{port}", "http": {
        "aliasHeadersStrategy": ENTRYPOINT_HTTP["aliasHeadersStrategy"],
        "encodedCharacters": dict(ENTRYPOINT_HTTP["encodedCharacters"])}} for name, port in ports.items()}
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
        # journald keeps the text as written: no terminal colour codes in it.
        "log": {"level": "INFO", "noColor": True},
        "accessLog": {"format": "json"},
        "entryPoints": entrypoints,
        "providers": {"file": {"directory": DYNAMIC_DIR, "watch": True}},
        # The dashboard is routed by the dynamic config (internal networks, basic auth), never insecure.
        "api": {"dashboard": True, "insecure": False},
        # Routed by the dynamic config (routers with Host rules on this entrypoint), not by
        # Traefik's own catch-all routers.
        "ping": {"entryPoint": METRICS_ENTRYPOINT, "manualRouting": True},
        "metrics": {"prometheus": {"entryPoint": METRICS_ENTRYPOINT, "addEntryPointsLabels": True,
                                   "addRoutersLabels": True, "addServicesLabels": True,
                                   "manualRouting": True}},
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
