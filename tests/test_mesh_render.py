"""The mesh's Traefik files as the plan pushes them: schema-valid, every reference defined, and
each route of the catalog routed, balanced, health-checked and verified as the model says."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import SCHEMAS, SHIPPED_STACKS, shipped_plan
from phoenix.plan.writer import pushed_files
from phoenix.render import mesh
from phoenix.topology import ROOT_CA_TRUST_PATH

#: keys of Traefik's serversTransport (the file-provider schema does not describe it).
TRANSPORT_KEYS = {"serverName", "insecureSkipVerify", "rootCAs", "certificates", "maxIdleConnsPerHost",
                  "forwardingTimeouts", "disableHTTP2", "peerCertURI", "spiffe"}


def mesh_files(plan) -> dict:
    return {path: f for path, (f, _step) in pushed_files(plan.run, plan.topo)[plan.topo.mesh.name].items()}


@pytest.fixture(params=SHIPPED_STACKS)
def stack(request):
    plan = shipped_plan(request.param)
    files = mesh_files(plan)
    static = yaml.safe_load(files[mesh.STATIC_PATH].content)
    dynamic = yaml.safe_load(files[mesh.DYNAMIC_PATH].content)
    return plan, plan.topo, static, dynamic, files


def schema(name: str):
    path = SCHEMAS / name
    if not path.exists():
        pytest.skip(f"{path} is absent: cannot validate the Traefik config against its schema")
    import jsonschema
    return jsonschema.Draft7Validator(json.loads(path.read_text()))


# -- schema ----------------------------------------------------------------------------------
#: static keys newer than the schema copy: (path under entryPoints.<name>, allowed values). The real
#: Traefik of the pinned version reads them in tests/test_mesh_lab.py (its log has no complaint).
NEWER_THAN_SCHEMA = {("http", "aliasHeadersStrategy"): {"keep", "delete", "reject"}}   # Traefik 3.7.12


def test_static_config_validates_against_the_traefik_v3_schema(stack):
    _plan, _topo, static, _dyn, _files = stack
    static = json.loads(json.dumps(static))
    for ep in static["entryPoints"].values():
        for (section, key), allowed in NEWER_THAN_SCHEMA.items():
            assert ep[section].pop(key) in allowed
    validator = schema("traefik-v3-static.json")
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(static)]
    assert errors == []


def test_dynamic_config_validates_against_the_file_provider_schema(stack):
    _plan, _topo, _static, dynamic, _files = stack
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
              for e in schema("traefik-v3-file-provider.json").iter_errors(dynamic)]
    assert errors == []
    # The schema leaves serversTransports open; hold them to Traefik's own fields.
    for name, t in dynamic["http"]["serversTransports"].items():
        assert set(t) <= TRANSPORT_KEYS, (name, set(t) - TRANSPORT_KEYS)


def test_the_pushed_files_are_the_pure_functions_rendered(stack):
    _plan, topo, static, dynamic, _files = stack
    assert static == mesh.static_config(topo)
    assert dynamic == mesh.dynamic_config(topo)


# -- traps 9 and 10: every reference defined, routers only in the dynamic file ------------------
def test_routers_live_in_the_dynamic_file_and_every_reference_is_defined(stack):
    _plan, _topo, static, dynamic, _files = stack
    assert "http" not in static and "tls" not in static
    http = dynamic["http"]
    internal = {"api@internal", "ping@internal", "prometheus@internal"}
    for name, r in http["routers"].items():
        assert set(r["entryPoints"]) <= set(static["entryPoints"]), name
        assert r["service"] in http["services"] or r["service"] in internal, name
        assert set(r.get("middlewares", [])) <= set(http["middlewares"]), name
        if "tls" in r:
            assert r["tls"]["certResolver"] in static["certificatesResolvers"], name
            assert r["tls"].get("options", "default") in dynamic["tls"]["options"], name
    for name, s in http["services"].items():
        assert set(s) in ({"loadBalancer"}, {"weighted"}), name
        if "loadBalancer" in s:
            assert s["loadBalancer"]["serversTransport"] in http["serversTransports"], name
        else:
            assert {c["name"] for c in s["weighted"]["services"]} <= set(http["services"]), name
    assert static["ping"]["entryPoint"] in static["entryPoints"]
    assert static["metrics"]["prometheus"]["entryPoint"] in static["entryPoints"]
    acme = static["certificatesResolvers"][mesh.RESOLVER]["acme"]
    assert acme["httpChallenge"]["entryPoint"] in static["entryPoints"]


# -- entrypoints, ACME, dashboard -------------------------------------------------------------
def test_entrypoints_come_from_the_topology(stack):
    _plan, topo, static, _dyn, _files = stack
    eps = static["entryPoints"]
    for name, ep in topo.entrypoints.items():
        assert eps[name]["address"] == f":{ep.port}"
    assert eps["gateway"]["forwardedHeaders"]["trustedIPs"] == [str(topo.gateway.address)]
    assert eps[mesh.ACME_ENTRYPOINT]["address"] == ":80"
    assert eps[mesh.METRICS_ENTRYPOINT]["address"] == f":{topo.lab.mesh.metrics_port}"
    assert eps[mesh.DASHBOARD_ENTRYPOINT]["address"] == f":{topo.lab.mesh.dashboard_port}"


def test_certificates_come_from_step_ca_by_acme_http01_on_port_80(stack):
    _plan, topo, static, dynamic, files = stack
    acme = static["certificatesResolvers"][mesh.RESOLVER]["acme"]
    assert acme["caServer"] == topo.acme_directory
    assert re.match(r"^https://\d+\.\d+\.\d+\.\d+:\d+/", acme["caServer"])  # by address (trap 4)
    assert acme["storage"] == mesh.ACME_STORAGE and acme["storage"].startswith(mesh.STATE_DIR + "/")
    assert acme["certificatesDuration"] == topo.lab.pki.leaf_lifetime_hours
    # Step-CA validates HTTP-01 on port 80 of the mesh: the flow matrix lets it.
    assert topo.allows(topo.ca, topo.mesh.name, 80)
    assert f"Environment=LEGO_CA_CERTIFICATES={ROOT_CA_TRUST_PATH}" in files[mesh.UNIT_PATH].content


def test_the_mesh_orders_the_name_the_gateway_verifies_and_every_service_name(stack):
    """The gateway's routers (and the dashboard's) get the mesh's own name, the one the gateway
    verifies; a service's internal router gets the service's names, which a guest dials and
    verifies (they resolve to the mesh, so the mesh proves them to Step-CA by HTTP-01)."""
    _plan, topo, _static, dynamic, _files = stack
    internal = {mesh.router_name(r): r for r in topo.routes if not r.public}
    for name, r in dynamic["http"]["routers"].items():
        if "tls" not in r:
            continue
        assert r["tls"]["certResolver"] == mesh.RESOLVER, name
        if name in internal:
            main, *sans = topo.service_names(topo.service(internal[name].service))
            assert r["tls"]["domains"] == [{"main": main, **({"sans": sans} if sans else {})}], name
        else:
            assert r["tls"]["domains"] == [{"main": topo.mesh_name}], name
    store = dynamic["tls"]["stores"]["default"]["defaultGeneratedCert"]
    assert store == {"resolver": mesh.RESOLVER, "domain": {"main": topo.mesh_name}}


def test_dashboard_is_internal_only_behind_basic_auth(stack):
    _plan, topo, static, dynamic, files = stack
    assert static["api"] == {"dashboard": True, "insecure": False}
    routers = [r for r in dynamic["http"]["routers"].values() if r["service"] == "api@internal"]
    for r in routers:
        if r["entryPoints"] == [mesh.METRICS_ENTRYPOINT]:   # the health check, local only
            assert r["rule"].startswith("Host(`127.0.0.1`) && ClientIP(`127.0.0.1`) &&")
            continue
        assert r["rule"].startswith(f"Host(`{topo.mesh_name}`) && ")
        assert r["entryPoints"] == [mesh.DASHBOARD_ENTRYPOINT]
        mws = [dynamic["http"]["middlewares"][m] for m in r["middlewares"]]
        assert {"ipAllowList": {"sourceRange": topo.internal_networks}} in mws
        assert any("basicAuth" in m and m["basicAuth"]["usersFile"] == mesh.USERS_PATH for m in mws)
        assert "tls" in r
    users = files[mesh.USERS_PATH]
    assert (users.mode, users.owner, users.group) == (0o640, "root", mesh.USER)


# -- routes from the catalog --------------------------------------------------------------------
def test_every_route_has_a_router_on_its_entrypoint(stack):
    _plan, topo, _static, dynamic, _files = stack
    routers = dynamic["http"]["routers"]
    for route in topo.routes:
        r = routers[mesh.router_name(route)]
        assert r["entryPoints"] == [route.entrypoint.name]
        assert f"Host(`{route.host}`)" in r["rule"]
        assert r["service"] == route.service
        # the breaker sees what the retry made of a request (a replica down is a retried success)
        assert r["middlewares"] == [mesh.CIRCUIT_BREAKER, mesh.RETRY]
        assert r["tls"]["certResolver"] == mesh.RESOLVER
        if route.public:
            assert route.entrypoint.name == "gateway"
            assert r["tls"]["options"] == mesh.MTLS_OPTION
        else:
            assert "options" not in r["tls"]
            for alias in topo.service(route.service).aliases:
                assert f"Host(`{topo.fqdn(alias)}`)" in r["rule"]


def test_gateway_routers_require_a_client_certificate_from_the_gateway_client_ca_alone(stack):
    """Every guest's Step-CA certificate chains to the Phoenix root: the entrypoint trusts only the
    CA that signs the gateway's certificate and nothing else."""
    _plan, topo, _static, dynamic, _files = stack
    option = dynamic["tls"]["options"][mesh.MTLS_OPTION]
    assert option["clientAuth"] == {"caFiles": [mesh.GATEWAY_CLIENT_CA_PATH],
                                    "clientAuthType": "RequireAndVerifyClientCert"}
    assert ROOT_CA_TRUST_PATH not in option["clientAuth"]["caFiles"]
    assert option["minVersion"] == "VersionTLS12"
    # The gateway's SNI is mesh_name: a router for that host selects the same option on the
    # gateway entrypoint, or Traefik would answer 421 to every proxied request.
    sni = [r for r in dynamic["http"]["routers"].values()
           if f"Host(`{topo.mesh_name}`)" in r["rule"] and r["entryPoints"] == ["gateway"]]
    assert [r["tls"]["options"] for r in sni] == [mesh.MTLS_OPTION]


def _transport_checks(topo, s, transport, guest):
    assert transport["forwardingTimeouts"]["responseHeaderTimeout"] == f"{s.timeout}s"
    if s.protocol == "https":
        assert transport["serverName"] == topo.replica_tls_name(s, guest)
        assert transport["rootCAs"] == [ROOT_CA_TRUST_PATH]
        assert transport["insecureSkipVerify"] is False
    else:
        assert "serverName" not in transport and "rootCAs" not in transport


def test_services_balance_every_replica_with_health_checks_and_model_limits(stack):
    _plan, topo, _static, dynamic, _files = stack
    http = dynamic["http"]
    m = topo.lab.mesh
    assert http["middlewares"][mesh.RETRY] == {"retry": {"attempts": m.retry_attempts, "initialInterval": "100ms"}}
    assert http["middlewares"][mesh.CIRCUIT_BREAKER] == {"circuitBreaker": {"expression": m.circuit_breaker}}
    for s in topo.lab.services:
        if len(s.guests) == 1:      # one replica: one load balancer verifying the service's own name
            lb = http["services"][s.name]["loadBalancer"]
            assert [srv["url"] for srv in lb["servers"]] == [b.url for b in topo.backends(s)]
            assert ("sticky" in lb) == s.sticky
            balancers = {s.guests[0]: lb}
        else:                       # replicas: a weighted service over one load balancer each
            weighted = http["services"][s.name]["weighted"]
            assert weighted["services"] == [{"name": mesh.replica_service_name(s.name, g), "weight": 1}
                                            for g in s.guests]
            assert weighted["healthCheck"] == {}         # a failing replica leaves the rotation
            assert ("sticky" in weighted) == s.sticky
            balancers = {g: http["services"][mesh.replica_service_name(s.name, g)]["loadBalancer"]
                         for g in s.guests}
            for b in topo.backends(s):
                assert [srv["url"] for srv in balancers[b.guest]["servers"]] == [b.url]
                assert "sticky" not in balancers[b.guest]
        for guest, lb in balancers.items():
            assert lb["healthCheck"]["path"] == s.health
            assert lb["healthCheck"]["interval"] == m.health_interval
            assert lb["passHostHeader"] is True
            assert ("responseForwarding" in lb) == s.streaming
            _transport_checks(topo, s, http["serversTransports"][lb["serversTransport"]], guest)
        sticky = (http["services"][s.name].get("loadBalancer") or http["services"][s.name]["weighted"]).get("sticky")
        if s.sticky:
            assert sticky["cookie"]["secure"] and sticky["cookie"]["httpOnly"]


def test_each_replica_of_a_replicated_service_is_verified_by_its_own_guests_name():
    """No replica can prove the shared service name by HTTP-01: the mesh verifies guest names."""
    topo = shipped_plan("cluster").topo
    http = mesh.dynamic_config(topo)["http"]
    llm = topo.service("llm")
    assert llm.guests == ["gpu-a", "gpu-b"]
    names = {g: http["serversTransports"][http["services"][f"llm-{g}"]["loadBalancer"]["serversTransport"]]
             ["serverName"] for g in llm.guests}
    assert names == {"gpu-a": "gpu-a.ai.internal", "gpu-b": "gpu-b.ai.internal"}
    # a service that runs once too: its name resolves to the mesh, its replica proves its guest's name
    embed = http["services"]["embed"]["loadBalancer"]["serversTransport"]
    assert http["serversTransports"][embed]["serverName"] == "gpu-c.ai.internal"


def test_every_backend_transport_keeps_connections_alive_under_load(stack):
    """Unset, a file-provider servers transport keeps 2 idle connections per backend (Go's
    default): concurrent calls would each open a new TLS connection (tests/test_mesh_s2s_lab.py
    counts them with the real Traefik)."""
    _plan, _topo, _static, dynamic, _files = stack
    for name, t in dynamic["http"]["serversTransports"].items():
        assert t["maxIdleConnsPerHost"] == mesh.dynamic.MAX_IDLE_PER_BACKEND >= 32, name


def test_every_router_has_a_host_rule(stack):
    """Traefik's own ping and metrics too (routed here: manualRouting), so none answers any name."""
    _plan, topo, static, dynamic, _files = stack
    routers = dynamic["http"]["routers"]
    assert all("Host(`" in r["rule"] for r in routers.values()), [
        n for n, r in routers.items() if "Host(`" not in r["rule"]]
    assert static["ping"]["manualRouting"] is True and static["metrics"]["prometheus"]["manualRouting"] is True
    own = {r["service"]: r for r in routers.values() if r["entryPoints"] == [mesh.METRICS_ENTRYPOINT]}
    for service, path in (("ping@internal", "/ping"), ("prometheus@internal", "/metrics")):
        assert own[service]["rule"] == (f"(Host(`{topo.mesh_name}`) || Host(`{topo.mesh.address}`) || "
                                        f"Host(`127.0.0.1`)) && Path(`{path}`)")


def test_a_catalog_service_named_like_a_replica_is_refused():
    from conftest import edited
    from phoenix.errors import ConfigError
    from phoenix.model import parse_lab
    from phoenix.stackfile import expand_catalog

    def clash(raw):
        raw["services"].append({"name": "llm-gpu-a", "guests": ["gpu-c"], "port": 8100, "protocol": "http"})
    stack = edited("cluster", clash)
    raw = expand_catalog(stack.phoenix(), stack.root)
    with pytest.raises(ConfigError) as err:       # the model's rule (phoenix.model.replica_name)
        parse_lab(raw)
    index = len(raw["services"]) - 1
    assert err.value.problems == [f"phoenix:services[{index}].name: the mesh service 'llm-gpu-a' is generated "
                                  "for both service 'llm' and service 'llm-gpu-a' (a replica's name is "
                                  "<service>-<guest>); rename one"]
    # before anything is created: the plan refuses the stack
    from phoenix.plan import make_plan
    with pytest.raises(ConfigError):
        make_plan(stack)


def test_health_check_list_names_every_router_service_and_backend(stack):
    _plan, topo, _static, dynamic, files = stack
    lines = files[mesh.EXPECTED_PATH].content.split()
    assert {f"{n}@file" for n in dynamic["http"]["routers"]} <= set(lines)
    assert {f"{n}@file" for n in dynamic["http"]["services"]} <= set(lines)
    assert {b.url for s in topo.lab.services for b in topo.backends(s)} <= set(lines)
    assert {f"{mesh.replica_service_name(s.name, g)}@file" for s in topo.lab.services if len(s.guests) > 1
            for g in s.guests} <= set(lines)


def test_the_dynamic_file_carries_a_marker_of_its_own_content(stack):
    """What the push's health check waits for before it judges the running configuration: it
    changes with any change of the file, stays put otherwise, and no router uses it."""
    _plan, _topo, _static, dynamic, files = stack
    [marker] = [n for n in dynamic["http"]["middlewares"] if n.startswith(mesh.CONFIG_MARKER_PREFIX)]
    assert files[mesh.EXPECTED_PATH].content.split()[-1] == f"{marker}@file"
    assert not any(marker in r.get("middlewares", []) for r in dynamic["http"]["routers"].values())
    assert mesh.mark(copy.deepcopy(dynamic)) == dynamic
    changed = copy.deepcopy(dynamic)
    changed["http"]["middlewares"][mesh.RETRY]["retry"]["attempts"] += 1
    assert marker not in mesh.mark(changed)["http"]["middlewares"]


# -- unit and scripts ---------------------------------------------------------------------------
def test_unit_runs_traefik_as_its_own_user_with_only_the_bind_capability(stack):
    _plan, topo, _static, _dyn, files = stack
    unit = files[mesh.UNIT_PATH].content
    assert "User=traefik" in unit and "Group=traefik" in unit
    assert f"ExecStart={mesh.BINARY} --configFile={mesh.STATIC_PATH}" in unit
    # :80 (ACME HTTP-01) is below 1024: that capability, and no other.
    assert mesh.binds_privileged_port(topo)
    assert re.findall(r"^(?:Ambient|CapabilityBoundingSet)\S*=(.*)$", unit, re.M) == ["CAP_NET_BIND_SERVICE"] * 2
    assert "NoNewPrivileges=true" in unit


@pytest.mark.parametrize("path", [mesh.HEALTH_SCRIPT, f"{mesh.SCRIPTS}/{'traefik-install'}.sh"])
def test_generated_scripts_pass_shellcheck(stack, path, tmp_path):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (scripts/install-debian-deps.sh installs it)")
    _plan, _topo, _static, _dyn, files = stack
    script = tmp_path / "script.sh"
    script.write_text(files[path].content)
    out = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout


def test_the_pinned_sha256_reaches_the_install_script_and_its_absence_is_warned():
    from conftest import edited
    from phoenix.model import parse_lab
    from phoenix.stackfile import expand_catalog
    from phoenix.topology import build

    def topo_of(stack):
        return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))

    unpinned = topo_of(edited("dev", lambda raw: None))
    assert unpinned.lab.mesh.traefik_sha256 is None
    from phoenix.model.readiness import deploy_readiness
    assert [p for p in deploy_readiness(unpinned.lab) if p.startswith("phoenix:mesh.")] == [
        "phoenix:mesh.traefikSha256: required to install Traefik 3.7.15: the sha256 of "
        "traefik_v3.7.15_linux_amd64.tar.gz from the release's traefik_v3.7.15_checksums.txt"]
    assert 'sha256=""' in mesh.install_script(unpinned)
    pin = "ab" * 32     # a test value, not a real release's checksum
    pinned = topo_of(edited("dev", lambda raw: raw.setdefault("mesh", {}).update(traefikSha256=pin)))
    assert [p for p in deploy_readiness(pinned.lab) if p.startswith("phoenix:mesh.")] == []
    assert f'sha256="{pin}"' in mesh.install_script(pinned)
