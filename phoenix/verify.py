"""``phoenix verify``: probe a deployment the way a user would.

The checks are data: ``plan_checks(topo, options)`` is a pure function of the topology that
says what to ask whom and what the answer must be (every address, name and port comes from
the model). ``run_checks`` then probes them concurrently (bounded pool, bounded timeouts),
and the report has one line per check and a summary. The same command runs against a real
deployment and against the lab in a network namespace, because nothing here is typed twice.

Exit codes: 0 every check holds (skipped ones allowed), 1 a check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

from phoenix.errors import ConfigError, problem
from phoenix.topology import Topology

#: what a browser dials for ``https://name/`` and a stub resolver for DNS: protocol defaults, not lab facts.
HTTPS_PORT = 443
DNS_PORT = 53
#: where Portainer lists its environments (agents), and Step-CA / Traefik report health.
PORTAINER_ENDPOINTS = "/api/endpoints"
CA_HEALTH = "/health"
MESH_PING = "/ping"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


@dataclass(frozen=True)
class Check:
    """One probe: what it is about (``check``, ``target``), where it goes, what must come back."""
    check: str                      # kind, e.g. dns/external, mesh/health
    target: str                     # the name (or file, or address) the check is about
    address: str = ""               # where the probe connects (DNS server, TLS peer)
    port: int = 0
    expect: tuple[str, ...] = ()    # DNS: the exact A set; HTTP: a body marker; portainer: agent URLs
    source: Optional[str] = None    # DNS: source address, which picks the view (None: the OS picks)
    server_name: Optional[str] = None   # TLS: SNI and the name the certificate must carry
    host: Optional[str] = None      # HTTP Host
    path: Optional[str] = None
    trust: Optional[str] = None     # "public" (system store / --public-ca) or "phoenix" (--root-ca)
    skip: Optional[str] = None      # why this check cannot run (counted as skipped)


@dataclass(frozen=True)
class VerifyOptions:
    outside_source: Optional[str] = None
    inside_source: Optional[str] = None
    root_ca: Optional[str] = None
    root_fingerprint: Optional[str] = None
    public_ca: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    portainer_password_file: Optional[str] = None
    portainer_api_key_file: Optional[str] = None
    timeout: float = 5.0
    workers: int = 16

    @property
    def portainer_credentials(self) -> bool:
        return bool(self.portainer_password_file or self.portainer_api_key_file)


# -- what to check (pure) -----------------------------------------------------------------
def internal_names(topo: Topology) -> dict[str, tuple[str, ...]]:
    """Every name of the internal zone and the addresses it must resolve to (CNAMEs followed)."""
    by_name: dict[str, list] = {}
    for rec in topo.internal_records:
        by_name.setdefault(rec.name, []).append(rec)

    def addresses(name: str, depth: int = 0) -> tuple[str, ...]:
        out: list[str] = []
        for rec in by_name.get(name, []):
            if rec.type == "A":
                out.append(rec.value)
            elif rec.type == "CNAME" and depth < 8:
                out += addresses(rec.value, depth + 1)
        return tuple(sorted(set(out)))

    return {name: addresses(name) for name in by_name}


def mesh_pings(topo: Topology) -> list[tuple[int, bool, bool]]:
    """Where Traefik serves its ping, as the mesh tier configures it: (port, tls, client_auth).

    The static config names the ping's own entrypoint (plain HTTP); routers to ``ping@internal``
    serve it on TLS entrypoints too (the gateway's health check, behind mTLS).
    """
    from phoenix.render import mesh
    ports = mesh.entrypoint_ports(topo)
    ping = mesh.static_config(topo).get("ping")
    names = [] if ping is None else [ping.get("entryPoint", "traefik")]
    for router in mesh.dynamic_config(topo)["http"]["routers"].values():
        if router.get("service") == "ping@internal":
            names += router["entryPoints"]
    out = []
    for name in dict.fromkeys(n for n in names if n in ports):
        ep = topo.entrypoints.get(name)
        out.append((ports[name], ep is not None, bool(ep and ep.client_auth)))
    return out


def portainer_route(topo: Topology):
    """The catalog service that runs on the Portainer guest: its API is reached through the mesh."""
    if topo.portainer is None:
        return None
    return next((s for s in topo.lab.services if topo.portainer.name in s.guests), None)


def plan_checks(topo: Topology, options: VerifyOptions = VerifyOptions()) -> list[Check]:
    lab = topo.lab
    dns_at = str(topo.dns.address)
    public_address = str(lab.network.public_address)
    mesh_at, mesh_name = str(topo.mesh.address), topo.mesh_name
    internal_port = topo.entrypoints["internal"].port
    out: list[Check] = []

    # The world's view: public names -> the gateway's public address, over HTTPS with a valid chain.
    for route in topo.public_routes:
        out.append(Check("dns/external", route.host, dns_at, DNS_PORT, (public_address,), options.outside_source))
    for route in topo.public_routes:
        out.append(Check("https/public", route.host, public_address, HTTPS_PORT, server_name=route.host,
                         host=route.host, path=topo.service(route.service).health, trust="public"))
    out.append(Check("tls/no-tls1.1", f"{public_address}:{HTTPS_PORT}", public_address, HTTPS_PORT,
                     server_name=topo.public_hosts[0] if topo.public_hosts else None))

    # The guests' view: every internal name, and the public names with the gateway's internal address.
    names = internal_names(topo)
    for name, addrs in names.items():
        out.append(Check("dns/internal", name, dns_at, DNS_PORT, addrs, options.inside_source))
    for rec in topo.public_records_internal_view:
        out.append(Check("dns/internal", rec.name, dns_at, DNS_PORT, (rec.value,), options.inside_source))
    # Nothing internal leaks to the world.
    for name in names:
        out.append(Check("dns/external-nxdomain", name, dns_at, DNS_PORT, (), options.outside_source))

    # The CA by address (trap 4), verified against the Phoenix root with the name on its certificate.
    out.append(Check("ca/health", topo.ca_name, str(topo.ca.address), lab.pki.ca_port, ('"ok"',),
                     server_name=topo.ca_name, host=topo.ca_name, path=CA_HEALTH, trust="phoenix"))
    if options.root_fingerprint and options.root_ca:
        out.append(Check("pki/root-fingerprint", options.root_ca,
                         expect=(normal_fingerprint(options.root_fingerprint),)))

    # The mesh: its ping wherever it is served, then every service's health through it by Host.
    for port, tls, client_auth in mesh_pings(topo):
        skip = None
        if client_auth and not options.client_cert:
            skip = "not checked: this entrypoint wants a client certificate (give --client-cert/--client-key)"
        out.append(Check("mesh/ping", f"{mesh_name}:{port}", mesh_at, port, ("OK",),
                         server_name=mesh_name if tls else None, host=mesh_name, path=MESH_PING,
                         trust="phoenix" if tls else None, skip=skip))
    for s in lab.services:
        out.append(Check("mesh/health", topo.service_fqdn(s), mesh_at, internal_port, server_name=mesh_name,
                         host=topo.service_fqdn(s), path=s.health, trust="phoenix"))

    # Portainer: every agent an environment that is up.
    api = portainer_route(topo)
    for agent in topo.agents:
        urls = tuple(f"tcp://{h}:{lab.portainer.agent_port}" for h in (agent.address, topo.guest_fqdn(agent)))
        skip = None
        if api is None:
            skip = "not checked: no catalog service runs on the Portainer guest, so its API has no route"
        elif not options.portainer_credentials:
            skip = "not checked: no credentials (give --portainer-password-file or --portainer-api-key-file)"
        out.append(Check("portainer/agent", agent.name, mesh_at, internal_port, urls, server_name=mesh_name,
                         host=topo.service_fqdn(api) if api else None, path=PORTAINER_ENDPOINTS,
                         trust="phoenix", skip=skip))
    return out


def normal_fingerprint(value: str) -> str:
    return value.replace(":", "").strip().lower()


# -- running them -------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    check: str
    target: str
    ok: Optional[bool]      # None: skipped
    detail: str

    @property
    def line(self) -> str:
        if self.ok:
            return f"ok   {self.check} {self.target} {self.detail}"
        return f"{'skip' if self.ok is None else 'FAIL'} {self.check} {self.target}: {self.detail}"


_PROBE = {
    "dns/external": "dns_answer", "dns/internal": "dns_answer", "dns/external-nxdomain": "dns_answer",
    "https/public": "https_health", "ca/health": "https_health", "mesh/ping": "https_health",
    "mesh/health": "https_health", "tls/no-tls1.1": "tls_refuses_old",
    "portainer/agent": "portainer_agent", "pki/root-fingerprint": "root_fingerprint",
}


def run_check(check: Check, probes) -> Result:
    from phoenix.verify_probes import reason
    if check.skip:
        return Result(check.check, check.target, None, check.skip)
    try:
        ok, detail = getattr(probes, _PROBE[check.check])(check)
    except Exception as err:   # noqa: BLE001 - every failure is a FAIL line, never a traceback
        ok, detail = False, reason(err) + (f" ({check.address}:{check.port})" if check.address else "")
        if isinstance(err, ssl.SSLCertVerificationError) and check.trust == "phoenix" and not probes.root_given:
            detail += "; verified against the system store: give --root-ca"
    return Result(check.check, check.target, ok, detail)


def run_checks(checks: list[Check], probes, workers: int = 16) -> Iterator[Result]:
    """Probe concurrently (at most ``workers`` at once); results come back in plan order."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(checks) or 1))) as pool:
        yield from pool.map(lambda c: run_check(c, probes), checks)


def summary(results: list[Result]) -> str:
    passed = sum(r.ok is True for r in results)
    failed = sum(r.ok is False for r in results)
    skipped = sum(r.ok is None for r in results)
    return f"{passed} passed, {failed} failed, {skipped} skipped"


# -- input ----------------------------------------------------------------------------------
def _read_secret(path: str, flag: str, problems: list[str]) -> Optional[str]:
    try:
        value = Path(path).read_text().strip()
    except OSError as err:
        problems.append(problem(flag, f"cannot read {path}: {err.strerror}"))
        return None
    if not value:
        problems.append(problem(flag, f"{path} is empty"))
    return value or None


def _check_source(value: Optional[str], flag: str, topo: Topology, inside: bool, problems: list[str]) -> None:
    if value is None:
        return
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        problems.append(problem(flag, f"{value!r} is not an IPv4 address"))
        return
    nets = [ipaddress.ip_network(n) for n in topo.internal_networks]
    if inside != any(ip in n for n in nets):
        where = "outside" if inside else "inside"
        view = "internal" if inside else "external"
        nets_text = ", ".join(topo.internal_networks)
        problems.append(problem(flag, f"{value} is {where} the internal networks ({nets_text}); "
                                f"the {view} view would not answer it"))
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((value, 0))
        except OSError:
            problems.append(problem(flag, f"{value} is not an address of this machine"))


def check_options(options: VerifyOptions, topo: Topology) -> list[str]:
    """Every problem with the command line at once (the ConfigError lines of exit 2)."""
    problems: list[str] = []
    if not 0 < options.timeout <= 120:
        problems.append(problem("--timeout", f"{options.timeout} must be more than 0 and at most 120 seconds"))
    if not 1 <= options.workers <= 64:
        problems.append(problem("--workers", f"{options.workers} must be between 1 and 64"))
    _check_source(options.outside_source, "--outside-source", topo, False, problems)
    _check_source(options.inside_source, "--inside-source", topo, True, problems)
    for flag, path in (("--root-ca", options.root_ca), ("--public-ca", options.public_ca),
                       ("--client-cert", options.client_cert), ("--client-key", options.client_key)):
        if path and not Path(path).is_file():
            problems.append(problem(flag, f"no such file {path}"))
    if options.client_key and not options.client_cert:
        problems.append(problem("--client-key", "needs --client-cert"))
    if options.root_fingerprint is not None:
        fp = normal_fingerprint(options.root_fingerprint)
        if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
            problems.append(problem("--root-fingerprint", "must be the SHA-256 of the root (64 hex digits)"))
        if not options.root_ca:
            problems.append(problem("--root-fingerprint", "needs --root-ca (the root file to check)"))
    if options.portainer_password_file and options.portainer_api_key_file:
        problems.append(problem("--portainer-api-key-file", "give it or --portainer-password-file, not both"))
    return problems


def make_probes(topo: Topology, options: VerifyOptions):
    """Trust and credentials for the probes; unreadable files are bad input (ConfigError)."""
    from phoenix.verify_probes import Probes, trust_context
    problems = check_options(options, topo)
    password = api_key = None
    if options.portainer_password_file:
        password = _read_secret(options.portainer_password_file, "--portainer-password-file", problems)
    if options.portainer_api_key_file:
        api_key = _read_secret(options.portainer_api_key_file, "--portainer-api-key-file", problems)
    if problems:   # a missing file is reported once, as such, not again as unloadable
        raise ConfigError(problems)
    contexts = {}
    for name, flag, cafile, cert, key in (("public", "--public-ca", options.public_ca, None, None),
                                          ("phoenix", "--root-ca", options.root_ca,
                                           options.client_cert, options.client_key)):
        try:
            contexts[name] = trust_context(cafile, cert, key)
        except (ssl.SSLError, OSError) as err:
            problems.append(problem(flag if cafile and not cert else f"{flag}/--client-cert",
                                    f"cannot load: {getattr(err, 'reason', None) or err}"))
    if problems:
        raise ConfigError(problems)
    return Probes(options.timeout, topo.internal_networks, contexts["public"], contexts["phoenix"],
                  bool(options.root_ca), topo.lab.portainer.admin_user, password, api_key)


def load_topology(args) -> Topology:
    from phoenix.cli import _stack_file, _stack_name
    from phoenix.model import parse_lab
    from phoenix.stackfile import expand_catalog, read_stack_file
    from phoenix.topology import build
    stack = read_stack_file(_stack_file(args), _stack_name(args))
    return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))


def options_from_args(args) -> VerifyOptions:
    return VerifyOptions(outside_source=args.outside_source, inside_source=args.inside_source,
                         root_ca=args.root_ca, root_fingerprint=args.root_fingerprint, public_ca=args.public_ca,
                         client_cert=args.client_cert, client_key=args.client_key,
                         portainer_password_file=args.portainer_password_file,
                         portainer_api_key_file=args.portainer_api_key_file,
                         timeout=args.timeout, workers=args.workers)


# -- the command ----------------------------------------------------------------------------
def add_verify_parser(subparsers) -> argparse.ArgumentParser:
    sp = subparsers.add_parser("verify", help="probe a deployment the way a user would (DNS, TLS, health)",
                               description="Probe a deployment the way a user would; every address, "
                                           "name and port comes from the stack model.")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--stack", "-s", help="stack name (reads Pulumi.<stack>.yaml)")
    g.add_argument("--config-file", help="path of any stack file")
    sp.add_argument("--json", action="store_true",
                    help="print a JSON list of {check, target, ok, detail} (ok is null when skipped)")
    sp.add_argument("--timeout", type=float, default=5.0, help="seconds per network operation (default 5)")
    sp.add_argument("--workers", type=int, default=16, help="probes at once (default 16)")
    sp.add_argument("--outside-source", metavar="ADDR",
                    help="source address for the world's queries (not in the internal networks)")
    sp.add_argument("--inside-source", metavar="ADDR", help="source address for the guests' queries")
    sp.add_argument("--root-ca", metavar="FILE", help="the Phoenix root certificate (stack output rootCaCertificate)")
    sp.add_argument("--root-fingerprint", metavar="HEX", help="check --root-ca against this SHA-256 fingerprint")
    sp.add_argument("--public-ca", metavar="FILE",
                    help="trust this root for the public names instead of the system store (e.g. Pebble's)")
    sp.add_argument("--client-cert", metavar="FILE", help="client certificate for the mesh")
    sp.add_argument("--client-key", metavar="FILE", help="its key")
    sp.add_argument("--portainer-password-file", metavar="FILE", help="Portainer admin password, to list agents")
    sp.add_argument("--portainer-api-key-file", metavar="FILE", help="or a Portainer API key")
    sp.set_defaults(func=cmd_verify)
    return sp


def cmd_verify(args) -> int:
    topo = load_topology(args)
    options = options_from_args(args)
    probes = make_probes(topo, options)
    checks = plan_checks(topo, options)
    results = []
    for result in run_checks(checks, probes, options.workers):
        results.append(result)
        if not args.json:
            print(result.line, flush=True)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(summary(results))
    return EXIT_FAILED if any(r.ok is False for r in results) else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``python -m phoenix.verify`` (the same command as ``phoenix verify``)."""
    from phoenix.cli import main as cli_main
    return cli_main(["verify", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
