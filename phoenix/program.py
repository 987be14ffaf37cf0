"""The Pulumi program: stack config -> model -> topology -> tiers -> outputs.

``__main__.py`` calls ``main()``; the offline plan and the tests run the same function under
Pulumi's mock runtime. Bad input stops here, before any resource is registered.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_proxmoxve as pve
import pulumi_random as random

from phoenix.errors import ConfigError, problem
from phoenix.model import CONFIG_KEYS, Lab, parse_lab
from phoenix.stackfile import NAMESPACE, expand_catalog
from phoenix.topology import Topology, build

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: set by the offline plan's engine: pins a real deployment needs become warnings, not errors.
OFFLINE_PLAN = False

#: secrets the operator sets (``pulumi config set --secret``); the rest are generated.
OPERATOR_SECRETS = {
    "proxmoxPassword": "the root@pam password of the Proxmox API (or set phoenix:proxmoxApiToken)",
    "portainerAdminPassword": "Portainer's admin password",
}


def read_raw_config(cfg: pulumi.Config) -> dict:
    raw: dict = {}
    problems = []
    if cfg.get("catalog") is not None:
        raw["catalog"] = cfg.get("catalog")
    for key in CONFIG_KEYS:
        try:
            value = cfg.get_object(key)
        except pulumi.ConfigTypeError:
            problems.append(problem(f"{NAMESPACE}:{key}", "must be a structured value (a mapping or a list)"))
            continue
        if value is not None:
            raw[key] = value
    if problems:
        raise ConfigError(problems)
    return raw


def load(cfg: pulumi.Config | None = None) -> tuple[Lab, Topology]:
    """Validate the stack's config; every problem at once, as ConfigError."""
    cfg = cfg or pulumi.Config(NAMESPACE)
    raw = expand_catalog(read_raw_config(cfg), PROJECT_ROOT)
    lab = parse_lab(raw)
    topo = build(lab)
    problems = missing_secrets(cfg, lab)
    from phoenix.audit import route_audit   # the audit reads the topology; see audit.py
    problems += route_audit(topo).problems
    if not OFFLINE_PLAN:
        problems += deploy_problems(topo)
    if problems:
        raise ConfigError(problems)
    return lab, topo


def load_from_stack(stack) -> tuple[Lab, Topology, list[str]]:
    """The same validation as ``load``, from a stack file (offline plan, tests): lab, topology, warnings."""
    lab = parse_lab(expand_catalog(stack.phoenix(), stack.root))
    topo = build(lab)
    from phoenix.audit import route_audit
    report = route_audit(topo)
    if report.problems:
        raise ConfigError(report.problems)
    pins = [f"{line} (a real deployment refuses to start without it)" for line in deploy_problems(topo)]
    return lab, topo, list(report.warnings) + pins


def deploy_problems(topo: Topology) -> list[str]:
    """Release checksums the install steps need: refused before `pulumi up` creates anything."""
    from phoenix import pki
    from phoenix.render import mesh
    return pki.deploy_problems(topo.lab) + mesh.deploy_problems(topo)


def missing_secrets(cfg: pulumi.Config, lab: Lab) -> list[str]:
    out = []
    needed = ["portainerAdminPassword"] if lab.role("portainer") else []
    if cfg.get("proxmoxApiToken") is None:
        needed.insert(0, "proxmoxPassword")
    from phoenix.render import stacks
    out += stacks.secret_problems(lab, lambda k: cfg.get(k) is not None,
                                  lambda k: pulumi.runtime.is_config_secret(f"{NAMESPACE}:{k}"))
    for key in needed:
        if cfg.get(key) is None:
            out.append(problem(f"{NAMESPACE}:{key}", f"required secret is missing ({OPERATOR_SECRETS[key]}); "
                               f"set it with: pulumi config set --secret {NAMESPACE}:{key} ..."))
        elif not pulumi.runtime.is_config_secret(f"{NAMESPACE}:{key}"):
            out.append(problem(f"{NAMESPACE}:{key}", "must be a secret; set it again with --secret"))
    return out


def provider(cfg: pulumi.Config, lab: Lab) -> pve.Provider:
    px = lab.proxmox
    token = cfg.get_secret("proxmoxApiToken")
    return pve.Provider("proxmox", pve.ProviderArgs(
        endpoint=px.endpoint, insecure=px.insecure,
        username=None if token else px.username,
        password=None if token else cfg.require_secret("proxmoxPassword"),
        api_token=token,
        # Snippets are uploaded over SSH to the node: it needs each node's address.
        ssh=pve.ProviderSshArgs(username=px.ssh_user, agent=True,
                                nodes=[pve.ProviderSshNodeArgs(name=n.name, address=str(n.address),
                                                               port=n.ssh_port) for n in px.nodes])))


def generated_secret(name: str, length: int = 32, special: bool = False) -> pulumi.Output:
    """A secret made once and kept in the stack state (stable across runs)."""
    return random.RandomPassword(name, random.RandomPasswordArgs(length=length, special=special)).result


def main() -> None:
    from components.base import Context, Secrets
    from components.dns import DnsTier
    from components.firewall import FirewallTier
    from components.gateway import GatewayTier
    from components.guests import GuestsTier
    from components.mesh import MeshTier
    from components.pki import PkiTier
    from components.stacks import StacksTier
    from components.trust import TrustTier
    from components.workloads import WorkloadsTier

    cfg = pulumi.Config(NAMESPACE)
    try:
        lab, topo = load(cfg)
    except ConfigError as err:
        raise pulumi.RunError("invalid stack configuration:\n" + str(err)) from None

    secrets = Secrets(
        portainer_admin_password=cfg.get_secret("portainerAdminPassword"),
        agent_secret=generated_secret("portainer-agent-secret", 48),
        provisioner_password=generated_secret("step-ca-provisioner-password", 48),
        tsig_key=random.RandomBytes("tsig-key", random.RandomBytesArgs(length=32)).base64,
    )
    ctx = Context(lab, topo, provider(cfg, lab), secrets)
    pki = PkiTier("pki", ctx)
    guests = GuestsTier("guests", ctx)
    trust = TrustTier("trust", ctx)     # the root in every guest: needs nothing but the guest
    # Names next: every later step on any guest (package installs, ACME) resolves through the
    # internal view, so it waits for the DNS tier (trap 4: no name before its server is up).
    dns = DnsTier("dns", ctx)
    for handle in ctx.guests.values():
        if handle.guest.role != "dns":
            handle.ready = [*handle.ready, *dns.ready]
    ctx.facts["dns_ready"] = dns.config
    trust.deploy_ca(ctx)
    mesh = MeshTier("mesh", ctx)
    gateway = GatewayTier("gateway", ctx)
    workloads = WorkloadsTier("workloads", ctx)
    stacks = StacksTier("stacks", ctx)
    FirewallTier("firewall", ctx)

    pulumi.export("guests", {g.name: {"id": g.id, "address": str(g.address), "node": g.node,
                                      "role": g.role, "fqdn": topo.guest_fqdn(g), "url": topo.guest_url(g)}
                            for g in lab.guests})
    pulumi.export("publicEntryPoints", [f"https://{h}/" for h in topo.public_hosts])
    pulumi.export("serviceUrls", {r.service: f"https://{r.host}/" for r in topo.routes if r.public})
    pulumi.export("rootCaFingerprint", pki.root_fingerprint)
    pulumi.export("rootCaCertificate", pki.root_cert_pem)
    pulumi.export("caUrl", topo.ca_url)
    pulumi.export("deployPublicKey", guests.deploy_public_key)
    for tier in (trust, dns, mesh, gateway, workloads, stacks):
        for key, value in getattr(tier, "exports", {}).items():
            pulumi.export(key, value)
