"""The Pulumi program: stack config -> one validated, rendered, audited stack -> tiers -> outputs.

Under ``pulumi up`` ``__main__.py`` calls ``main`` with the project directory: the config comes
from the engine (``pulumi.Config``), the catalog path is relative to the project directory (where
``Pulumi.<stack>.yaml`` is), and ``phoenix.loader`` checks it all in ``Mode.DEPLOY``. The offline
plan loads the stack file itself (``Mode.PLAN``) and runs ``deploy`` with that same ``Loaded``
under Pulumi's mock runtime. Bad input stops in the loader, before any resource is registered.

``deploy`` is where the tiers are wired, and the only place: each tier takes what it needs
from earlier tiers as a typed ``*Args`` value (``components/*.py``), never by looking it up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pulumi
import pulumi_proxmoxve as pve
import pulumi_random as random

from components.base import Context
from components.dns import DnsArgs, DnsTier
from components.firewall import FirewallArgs, FirewallTier
from components.gateway import GatewayArgs, GatewayTier
from components.guests import GuestsTier
from components.mesh import MeshArgs, MeshTier
from components.pki import PkiTier
from components.resilience import ResilienceArgs, ResilienceTier
from components.stacks import StacksArgs, StacksTier
from components.trust import CaArgs, TrustArgs, TrustTier, gateway_client_certificate
from components.workloads import WorkloadsArgs, WorkloadsTier
from phoenix.errors import ConfigError, problem
from phoenix.loader import Loaded, Mode, SecretState, load
from phoenix.model import CONFIG_KEYS, Lab, stack_secrets
from phoenix.stackfile import NAMESPACE


# -- the engine's config ------------------------------------------------------------------------
def engine_keys() -> list[str]:
    """Every key of the namespace the engine holds for this stack (typos included, so the model
    can refuse them). The SDK offers no list: read its config map, and PULUMI_CONFIG, where the
    language host puts it."""
    keys = {*pulumi.runtime.config.CONFIG.get(), *pulumi.runtime.get_config_env()}
    ns = NAMESPACE + ":"
    return sorted(k[len(ns):] for k in keys if k.startswith(ns))


def engine_values(cfg: pulumi.Config) -> dict:
    """The namespace's values that are not secret, as the model reads them (objects parsed)."""
    raw: dict = {}
    problems = []
    for key in engine_keys():
        if pulumi.runtime.is_config_secret(f"{NAMESPACE}:{key}"):
            continue
        if key not in CONFIG_KEYS:
            raw[key] = cfg.get(key)
            continue
        try:
            raw[key] = cfg.get_object(key)
        except pulumi.ConfigTypeError:
            problems.append(problem(f"{NAMESPACE}:{key}", "must be a structured value (a mapping or a list)"))
    if problems:
        raise ConfigError(problems)
    return raw


def engine_secrets(cfg: pulumi.Config) -> SecretState:
    return SecretState(lambda key: cfg.get(key) is not None,
                       lambda key: pulumi.runtime.is_config_secret(f"{NAMESPACE}:{key}"), cfg.get)


def project_directory(given: Path | None = None) -> Path:
    """Where ``Pulumi.yaml`` and the stack file are: given by ``__main__.py``, else the engine's."""
    if given is not None:
        return Path(given)
    root = pulumi.get_root_directory() if hasattr(pulumi, "get_root_directory") else None
    return Path(root or os.getcwd())


def load_engine_config(project_dir: Path, cfg: pulumi.Config | None = None) -> Loaded:
    """What ``pulumi up`` deploys: the engine's config, checked for a real deployment."""
    cfg = cfg or pulumi.Config(NAMESPACE)
    return load(engine_values(cfg), project_dir, Mode.DEPLOY, engine_secrets(cfg))


# -- resources every tier shares -------------------------------------------------------------
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


# -- the tiers, wired --------------------------------------------------------------------------
def deploy(loaded: Loaded, cfg: pulumi.Config | None = None) -> None:
    """Register every tier of a loaded stack, each given what it needs from earlier tiers."""
    cfg = cfg or pulumi.Config(NAMESPACE)
    lab, topo = loaded.lab, loaded.topo
    # Every rule (secrets, Portainer's password, the route audit) was checked by the loader.
    admin_password = cfg.get_secret("portainerAdminPassword")
    agent_secret = generated_secret("portainer-agent-secret", 48)
    provisioner_password = generated_secret("step-ca-provisioner-password", 48)
    tsig_key = random.RandomBytes("tsig-key", random.RandomBytesArgs(length=32)).base64
    ctx = Context(lab, topo, loaded.artifacts, provider(cfg, lab))

    pki = PkiTier("pki", ctx)
    guests = GuestsTier("guests", ctx)
    handles = guests.handles
    # The root in every guest first: it needs nothing but the guest, and every later step on
    # the guest waits for it.
    trust = TrustTier("trust", ctx, TrustArgs(handles, pki.root_cert_pem, pki.root_fingerprint))
    for name, step in trust.steps.items():
        handles[name].ready.append(step)
    # Names next: every later step on any guest (package installs, ACME) resolves through the
    # internal view, so it waits for the DNS tier (trap 4: no name before its server is up).
    dns = DnsTier("dns", ctx, DnsArgs(handles, tsig_key))
    for handle in handles.values():
        if handle.guest.role != "dns":
            handle.ready = [*handle.ready, *dns.ready]
    issuer = trust.deploy_ca(ctx, CaArgs(handles, pki, pki.root_cert_pem, pki.root_fingerprint,
                                         provisioner_password, dns.ready))
    mesh = MeshTier("mesh", ctx, MeshArgs(handles, ca_ready=issuer.ca_ready, dns_ready=dns.ready,
                                          gateway_client_ca_pem=pki.gateway_client_ca_pem))
    client_certificate = gateway_client_certificate(ctx, pki, parent=trust)
    gateway = GatewayTier("gateway", ctx, GatewayArgs(handles, client_certificate, tsig_key))
    workloads = WorkloadsTier("workloads", ctx, WorkloadsArgs(handles, issuer, guests.driver_versions,
                                                              admin_password, agent_secret))
    stacks = StacksTier("stacks", ctx, StacksArgs(
        handles, issuer, workloads.registrations,
        {key: cfg.require_secret(key) for key in stack_secrets(lab)}))
    FirewallTier("firewall", ctx, FirewallArgs(handles))
    # HA, replication and the backup job name each guest by its resource: nothing here feeds a guest.
    resilience = ResilienceTier("resilience", ctx, ResilienceArgs(handles))

    pulumi.export("guests", {g.name: {"id": g.id, "address": str(g.address), "node": g.node,
                                      "role": g.role, "fqdn": topo.guest_fqdn(g), "url": topo.guest_url(g)}
                            for g in lab.guests})
    pulumi.export("publicEntryPoints", [f"https://{h}/" for h in topo.public_hosts])
    pulumi.export("serviceUrls", {r.service: f"https://{r.host}/" for r in topo.routes if r.public})
    pulumi.export("rootCaFingerprint", pki.root_fingerprint)
    pulumi.export("rootCaCertificate", pki.root_cert_pem)
    pulumi.export("caUrl", topo.ca_url)
    pulumi.export("deployPublicKey", guests.deploy_public_key)
    for tier in (trust, dns, mesh, gateway, workloads, stacks, resilience):
        for key, value in getattr(tier, "exports", {}).items():
            pulumi.export(key, value)


def main(project_dir: Path | None = None) -> None:
    """``pulumi up``: load the engine's config as a real deployment, then deploy it."""
    cfg = pulumi.Config(NAMESPACE)
    try:
        loaded = load_engine_config(project_directory(project_dir), cfg)
        deploy(loaded, cfg)
    except ConfigError as err:
        raise pulumi.RunError("invalid stack configuration:\n" + str(err)) from None
