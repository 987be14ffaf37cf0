"""Every hop encrypted and verified, under the mock runtime, for both shipped stacks.

From what the plan actually pushes (the mesh's dynamic file, the certificate steps' own certbot
commands, the Step-CA settings they use): every backend a mesh router reaches is HTTPS, the
mesh verifies it against the Phoenix root with a server name, and the certificate step for the
service listening there, on that guest, asks Step-CA for exactly that name; or the catalog says
``protocol: http`` for it and the plan carries a warning for that hop. The gateway verifies the
mesh with its client certificate, and the mesh requires it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import SHIPPED_STACKS, stack_config
from phoenix.plan.writer import COMMAND, command_guest, pushed_files
from phoenix.render import mesh, trust
from phoenix.render import workloads as wl
from phoenix.topology import ROOT_CA_TRUST_PATH, tls_paths

SCRIPTS = "/usr/local/lib/phoenix"


@dataclass
class Deployed:
    """What a plan deploys, as this test reads it."""
    plan: object
    files: dict                          # guest -> path -> content
    dynamic: dict                        # the mesh's pushed dynamic configuration
    certificates: dict                   # (guest, certificate name) -> the SANs its step requests


def certificate_steps(plan, files) -> dict[tuple[str, str], list[str]]:
    """Every certificate step of the plan and the names its certbot command asks Step-CA for."""
    out = {}
    for r in plan.run.by_type(COMMAND):
        guest = command_guest(r, plan.topo)
        m = re.fullmatch(rf"{re.escape(guest or '')}-cert-(.+)", r.name)
        if not m or f"{SCRIPTS}/cert-{m.group(1)}.sh" not in files.get(guest, {}):
            continue
        script = files[guest][f"{SCRIPTS}/cert-{m.group(1)}.sh"]
        words = shlex.split(next(line for line in script.splitlines() if " certonly " in line))
        # certbot reads the server from the trust tier's cli.ini: Step-CA's ACME directory
        assert words[words.index("-c") + 1] == trust.ACME_CLI_INI, r.name
        assert f"server = {plan.topo.acme_directory}" in files[guest][trust.ACME_CLI_INI], guest
        out[(guest, m.group(1))] = [words[i + 1] for i, w in enumerate(words) if w == "-d"]
    return out


def deployed(name: str) -> Deployed:
    """The stack's plan with every tier that deploys a backend (the compose stacks' secrets set)."""
    from test_stacks_plan import plan_of
    plan = plan_of(stack_config(name))
    files = {g: {p: f.content for p, (f, _s) in by_path.items()}
             for g, by_path in pushed_files(plan.run, plan.topo).items()}
    dynamic = yaml.safe_load(files[plan.topo.mesh.name][mesh.DYNAMIC_PATH])
    return Deployed(plan, files, dynamic, certificate_steps(plan, files))


_deployed: dict[str, Deployed] = {}


@pytest.fixture(params=SHIPPED_STACKS)
def stack(request) -> Deployed:
    if request.param not in _deployed:
        _deployed[request.param] = deployed(request.param)
    return _deployed[request.param]


# -- the check --------------------------------------------------------------------------------
def backend_servers(dynamic: dict) -> list[tuple[str, str, str, dict]]:
    """(router, load-balancer service, server URL, its servers transport) for every server any
    router reaches, through weighted services too."""
    http = dynamic["http"]
    out = []

    def walk(router: str, name: str) -> None:
        svc = http["services"][name]
        if "weighted" in svc:
            for child in svc["weighted"]["services"]:
                walk(router, child["name"])
            return
        lb = svc["loadBalancer"]
        transport = http.get("serversTransports", {}).get(lb.get("serversTransport"), {})
        out.extend((router, name, srv["url"], transport) for srv in lb["servers"])

    for router, r in http["routers"].items():
        if not r["service"].endswith("@internal"):
            walk(router, r["service"])
    return out


def unprotected_hops(d: Deployed) -> list[str]:
    """Every mesh -> backend hop that is not verified TLS to a name its certificate step asks
    for, and is not an explicit, warned-about plain HTTP backend."""
    topo, found = d.plan.topo, []
    by_address = {str(g.address): g.name for g in topo.lab.guests}
    for router, service, url, transport in backend_servers(d.dynamic):
        parts = urlsplit(url)
        guest = by_address.get(parts.hostname)
        listening = [s for s in topo.lab.services if guest in s.guests and s.port == parts.port]
        at = f"{router} -> {service} -> {url}"
        if not listening:
            found.append(f"{at}: no catalog service listens there")
            continue
        s = listening[0]
        if parts.scheme == "http":
            warning = (f"mesh service {service}: the mesh reaches {url} over plain HTTP (protocol: http in "
                       "the catalog)")
            if s.protocol != "http":
                found.append(f"{at}: plain HTTP, but the catalog says {s.protocol}")
            elif warning not in d.plan.warnings:
                found.append(f"{at}: plain HTTP without a plan warning")
            continue
        name = transport.get("serverName")
        if transport.get("insecureSkipVerify") is not False or transport.get("rootCAs") != [ROOT_CA_TRUST_PATH]:
            found.append(f"{at}: not verified against the Phoenix root")
        elif not name:
            found.append(f"{at}: no server name verified")
        sans = d.certificates.get((guest, s.name))
        if sans is None:
            found.append(f"{at}: no certificate step for {s.name} on {guest}")
        elif name not in sans:
            found.append(f"{at}: the mesh verifies {name}, the certificate step for {s.name} on {guest} asks "
                         f"for {', '.join(sans)}")
    return found


def test_every_backend_hop_is_verified_tls_or_an_explicit_warned_http(stack):
    assert unprotected_hops(stack) == []
    # not vacuous: every replica of every catalog service was walked, each once per router
    walked = {url for _r, _s, url, _t in backend_servers(stack.dynamic)}
    topo = stack.plan.topo
    assert walked == {b.url for s in topo.lab.services for b in topo.backends(s)}


def test_the_check_names_a_hop_whose_name_no_certificate_carries():
    """The old design: every llm replica verified as the shared name, which neither can prove."""
    d = _deployed.get("cluster") or deployed("cluster")
    broken = Deployed(d.plan, d.files, yaml.safe_load(yaml.safe_dump(d.dynamic)), d.certificates)
    for g in ("gpu-a", "gpu-b"):
        broken.dynamic["http"]["serversTransports"][mesh.transport_name("llm", g)]["serverName"] = "llm.ai.internal"
    broken.dynamic["http"]["serversTransports"]["embed-backend"]["insecureSkipVerify"] = True
    assert sorted(unprotected_hops(broken)) == sorted(
        [f"llm-{r} -> llm-{g} -> https://{a}:8000: the mesh verifies llm.ai.internal, the certificate step for "
         f"llm on {g} asks for {g}.ai.internal"
         for r in ("internal", "gateway") for g, a in (("gpu-a", "10.30.0.20"), ("gpu-b", "10.30.0.21"))]
        + ["embed-internal -> embed -> https://10.30.0.22:8001: not verified against the Phoenix root"])


def test_services_that_cannot_serve_tls_are_fronted_by_their_certificate(stack):
    """Where the certificate is served: the service's own unit (native), or the sidecar's nginx on
    the catalog port (sidecar), each with the files of the step checked above."""
    topo = stack.plan.topo
    for g in wl.gpu_lxcs(topo):
        for s in wl.gpu_services_on(topo, g):
            if s.protocol != "https":
                continue
            unit = stack.files[g.name][f"/etc/systemd/system/{wl.unit_name(s)}"]
            start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
            paths = tls_paths(s.name)
            if s.tls_termination == "native":
                assert paths.cert in start and paths.key in start, (g.name, s.name)
            else:
                assert s.tls_termination == "sidecar" and paths.cert not in start
                assert f"--port {s.app_port}" in start and "127.0.0.1" in start
                conf = stack.files[g.name][wl.SIDECAR_CONF]
                assert (f"listen {s.port} ssl;\n        ssl_certificate {paths.cert};\n        ssl_certificate_key "
                        f"{paths.key};\n        proxy_pass 127.0.0.1:{s.app_port};") in conf


def test_gateway_verifies_the_mesh_with_its_client_certificate_and_the_mesh_requires_it(stack):
    from phoenix.render import gateway as gw
    topo = stack.plan.topo
    sites = stack.files[topo.gateway.name][gw.SITES_CONF]
    assert "proxy_ssl_verify on;" in sites and "proxy_ssl_verify off" not in sites
    assert f"proxy_ssl_name {topo.mesh_name};" in sites
    assert f"proxy_ssl_trusted_certificate {ROOT_CA_TRUST_PATH};" in sites
    assert f"proxy_ssl_certificate {gw.CLIENT_TLS.cert};" in sites
    # the certificate nginx presents is the program's, signed by the gateway client CA: the one CA
    # the mesh trusts for it (no Step-CA step issues it, so no other guest's certificate opens it)
    assert (topo.gateway.name, gw.CLIENT_CERT_NAME) not in stack.certificates
    presented = stack.files[topo.gateway.name][gw.CLIENT_TLS.cert]
    ca = stack.plan.run.named("gateway-client-ca-cert").outputs["certPem"]
    assert presented.endswith(ca) and stack.files[topo.mesh.name][mesh.GATEWAY_CLIENT_CA_PATH] == ca
    option = stack.dynamic["tls"]["options"][mesh.MTLS_OPTION]
    assert option["clientAuth"] == {"caFiles": [mesh.GATEWAY_CLIENT_CA_PATH],
                                    "clientAuthType": "RequireAndVerifyClientCert"}
    for route in topo.public_routes:
        router = stack.dynamic["http"]["routers"][mesh.router_name(route)]
        assert router["tls"]["options"] == mesh.MTLS_OPTION
