"""``phoenix verify``: probe a deployment the way a user would.

The checks are data: ``plan_checks(topo, options)`` is a pure function of the topology that
says what to ask whom and what the answer must be (every address, name and port comes from
the model). ``run_checks`` then probes them concurrently (bounded pool, bounded timeouts),
and the report has one line per check and a summary. The same command runs against a real
deployment and against the lab in a network namespace, because nothing here is typed twice.

Exit codes (``phoenix.exits``): 0 every check holds (skipped ones allowed), 1 a check failed,
2 bad input.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import ssl
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from phoenix.errors import ConfigError, problem
from phoenix.exits import Exit, run
from phoenix.stackfile import add_stack_arguments, read_stack_file, stack_file, stack_name
from phoenix.topology import Topology
from phoenix.verify_checks import (  # noqa: F401
    DNS_PORT,
    HTTPS_PORT,
    PORTAINER_ENDPOINTS,
    Check,
    VerifyOptions,
    internal_names,
    mesh_pings,
    normal_fingerprint,
    plan_checks,
    portainer_route,
)
from phoenix.verify_expiry import KINDS as CERTIFICATE_KINDS
from phoenix.verify_expiry import certificate_checks, is_certificate_check
from phoenix.verify_ha import ha_checks


# -- running them -------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    check: str
    target: str
    ok: bool | None      # None: skipped
    detail: str
    #: ``cert/*`` checks: days the certificate has left (None: not read)
    days: float | None = None

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
    "service/internal": "https_health", "pki/gateway-client-cert": "gateway_client_cert",
    **{kind: "certificate_expiry" for kind in CERTIFICATE_KINDS}, "ha/quorum": "ha_status", "ha/guest": "ha_status",
}


def run_check(check: Check, probes) -> Result:
    from phoenix.verify_probes import reason
    if check.skip:
        return Result(check.check, check.target, None, check.skip)
    days = None
    try:
        ok, detail, *more = getattr(probes, _PROBE[check.check])(check)
        days = more[0] if more else None     # a certificate's days left
    except Exception as err:
        ok, detail = False, reason(err) + (f" ({check.address}:{check.port})" if check.address else "")
        if isinstance(err, ssl.SSLCertVerificationError) and check.trust == "phoenix" and not probes.root_given:
            detail += "; verified against the system store: give --root-ca"
    return Result(check.check, check.target, ok, detail, days)


def run_checks(checks: list[Check], probes, workers: int = 16) -> Iterator[Result]:
    """Probe concurrently (at most ``workers`` at once); results come back in plan order."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(checks) or 1))) as pool:
        yield from pool.map(lambda c: run_check(c, probes), checks)


def all_checks(topo: Topology, options: VerifyOptions, artifacts=None) -> list[Check]:
    """Everything ``phoenix verify`` checks: the probes of ``plan_checks``, then every certificate."""
    return plan_checks(topo, options, artifacts) + ha_checks(topo, options) + certificate_checks(topo, options)


def as_json(result: Result) -> dict:
    """A result for ``--format json``: days only where a certificate was the subject."""
    out = asdict(result)
    if not is_certificate_check(result.check):
        del out["days"]
    return out


def summary(results: list[Result]) -> str:
    passed = sum(r.ok is True for r in results)
    failed = sum(r.ok is False for r in results)
    skipped = sum(r.ok is None for r in results)
    return f"{passed} passed, {failed} failed, {skipped} skipped"


# -- input ----------------------------------------------------------------------------------
def _read_secret(path: str, flag: str, problems: list[str]) -> str | None:
    try:
        value = Path(path).read_text().strip()
    except OSError as err:
        problems.append(problem(flag, f"cannot read {path}: {err.strerror}"))
        return None
    if not value:
        problems.append(problem(flag, f"{path} is empty"))
    return value or None


def _check_source(value: str | None, flag: str, topo: Topology, inside: bool, problems: list[str]) -> None:
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
                       ("--client-cert", options.client_cert), ("--client-key", options.client_key),
                       ("--gateway-client-cert", options.gateway_client_cert),
                       ("--proxmox-token-file", options.proxmox_token_file)):
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
                  bool(options.root_ca), topo.lab.portainer.admin_user, password, api_key, root_ca=options.root_ca,
                  proxmox_token_file=options.proxmox_token_file)


def load_stack_of(args):
    """The stack ``--stack``/``--config-file`` names, through the one loader."""
    from phoenix.loader import load_stack
    return load_stack(read_stack_file(stack_file(args.stack, args.config_file),
                                      stack_name(args.stack, args.config_file)))


def options_from_args(args) -> VerifyOptions:
    return VerifyOptions(outside_source=args.outside_source, inside_source=args.inside_source,
                         root_ca=args.root_ca, root_fingerprint=args.root_fingerprint, public_ca=args.public_ca,
                         client_cert=args.client_cert, client_key=args.client_key,
                         gateway_client_cert=args.gateway_client_cert,
                         portainer_password_file=args.portainer_password_file,
                         portainer_api_key_file=args.portainer_api_key_file,
                         proxmox_token_file=args.proxmox_token_file,
                         timeout=args.timeout, workers=args.workers)


# -- the command ----------------------------------------------------------------------------
DESCRIPTION = "Probe a deployment the way a user would; every address, name and port comes from the stack model."


def add_verify_parser(subparsers) -> argparse.ArgumentParser:
    sp = subparsers.add_parser("verify", help="probe a deployment the way a user would (DNS, TLS, health)",
                               description=DESCRIPTION)
    add_arguments(sp)
    return sp


def add_arguments(sp: argparse.ArgumentParser) -> None:
    add_stack_arguments(sp)
    sp.add_argument("--format", choices=("plain", "json"), default="plain",
                    help="plain: a line per check, the certificates last by days left, then a summary; json: a "
                         "list of {check, target, ok, detail} (ok is null when skipped; cert/* entries also have "
                         "days, the days the certificate has left), for monitoring systems")
    sp.add_argument("--json", dest="format", action="store_const", const="json", help="the same as --format json")
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
    sp.add_argument("--gateway-client-cert", metavar="FILE",
                    help="the gateway's client certificate chain (stack output gatewayClientCertificate.chainPem): "
                         "its expiry is checked")
    sp.add_argument("--portainer-password-file", metavar="FILE", help="Portainer admin password, to list agents")
    sp.add_argument("--portainer-api-key-file", metavar="FILE", help="or a Portainer API key")
    sp.add_argument("--proxmox-token-file", metavar="FILE",
                    help="a Proxmox API token (USER@REALM!ID=SECRET, role PVEAuditor): report the cluster's quorum "
                         "and where HA runs each highly available guest")
    sp.set_defaults(func=cmd_verify)


def cmd_verify(args) -> int:
    loaded = load_stack_of(args)
    topo = loaded.topo
    options = options_from_args(args)
    probes = make_probes(topo, options)
    checks = all_checks(topo, options, loaded.artifacts)
    results: list[Result] = []
    certificates: list[Result] = []
    for result in run_checks(checks, probes, options.workers):
        # Certificates are reported last, soonest to expire first; the rest as they come.
        (certificates if is_certificate_check(result.check) else results).append(result)
        if args.format == "plain" and not is_certificate_check(result.check):
            print(result.line, flush=True)
    certificates.sort(key=lambda r: (r.days is None, r.days if r.days is not None else 0, r.check, r.target))
    results += certificates
    if args.format == "json":
        print(json.dumps([as_json(r) for r in results], indent=2))
    else:
        for result in certificates:
            print(result.line)
        print(summary(results))
    return Exit.FAILED if any(r.ok is False for r in results) else Exit.OK


def main(argv: list[str] | None = None) -> int:
    """``python -m phoenix.verify`` (the same command as ``phoenix verify``)."""
    p = argparse.ArgumentParser(prog="phoenix verify", description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return run(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
