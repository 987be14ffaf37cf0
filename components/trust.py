"""TrustTier: the Phoenix root in every guest, Step-CA on its guest, and internal certificates.

* Every guest installs the root certificate from the program's own output (never fetched
  from the CA) right after its bootstrap, and every later step on that guest waits for it
  (it joins ``GuestHandle.ready``). No guest waits for the CA guest just to trust.
* Step-CA holds the intermediate (never the root key), runs as its own user, and serves
  ACME (HTTP-01, DNS-01) and JWK provisioners on ``lab.pki.ca_port``.
* ``internal_certificate`` gives any tier a certificate from Step-CA by ACME (certbot), renewed
  by a timer, installed for the service's group, reloaded only after its config test passes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import pulumi
import pulumi_tls as tls
from pulumi_command import remote

from components.base import Context, GuestHandle, push, script
from phoenix.bundle import GuestFile, digest
from phoenix.errors import ConfigError, problem
from phoenix.pki import ca_policy, policy_permits
from phoenix.render import trust as r


class TrustTier(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: Context, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Trust", name, None, opts)
        lab, topo = ctx.lab, ctx.topo
        missing = secret_problems(ctx)
        if missing:
            raise ConfigError(missing)

        # 1. Trust, on every guest, right after its bootstrap.
        self.trust: dict[str, remote.Command] = {}
        for g in lab.guests:
            handle = ctx.guests[g.name]
            files = pulumi.Output.all(ctx.root_cert_pem, ctx.root_fingerprint).apply(
                lambda v: r.trust_files(topo, v[0], v[1]))
            step = push("trust", handle, files, check=r.TRUST_CHECK_CMD, reload=r.TRUST_RELOAD_CMD,
                        health=r.TRUST_HEALTH_CMD, parent=self)
            handle.ready.append(step)
            self.trust[g.name] = step
        ctx.facts["trust"] = self

    def deploy_ca(self, ctx: Context) -> None:
        """Step-CA and the ACME clients: called once names resolve (the CA's install downloads
        its packages, and Step-CA resolves the names it validates through the internal view)."""
        lab, topo = ctx.lab, ctx.topo
        pki = ctx.facts["pki"]
        # 2. Step-CA on its guest.
        ca = ctx.guests[topo.ca.name]
        self.provisioner_key = tls.PrivateKey(
            "step-ca-jwk-key", tls.PrivateKeyArgs(algorithm="ECDSA", ecdsa_curve="P256"),
            opts=pulumi.ResourceOptions(parent=self))
        self.install = script("step-ca-install", ca, r.ca_install_script(lab), parent=self)
        secrets = ctx.secrets
        ca_files = pulumi.Output.all(
            ctx.root_cert_pem, ctx.root_fingerprint, pki.intermediate_cert_pem, pki.intermediate_key_pem,
            self.provisioner_key.private_key_pem, secrets.provisioner_password,
        ).apply(lambda v: r.ca_files(
            lab, topo, root_pem=v[0], fingerprint=v[1], intermediate_pem=v[2], intermediate_key_pem=v[3],
            jwk_key_pem=v[4], provisioner_password=v[5]))
        config_digest = pulumi.Output.secret(ca_files).apply(digest)
        health_script = config_digest.apply(lambda d: r.ca_health_script(topo, d))
        bundle = pulumi.Output.all(ca_files, health_script).apply(
            lambda v: [*v[0], GuestFile(r.CA_HEALTH, v[1], 0o700)])
        # The root and intermediate exist before the CA's configuration is written.
        self.config = push("step-ca-config", ca, bundle, check=r.CA_CHECK_CMD, reload=r.CA_RELOAD_CMD,
                           health=r.CA_HEALTH_CMD, parent=self,
                           depends_on=[self.install, pki.root_cert, pki.intermediate_cert])
        # 3. The post-deploy check every certificate waits for; re-runs when the config changes.
        self.health = remote.Command(
            f"{ca.name}-step-ca-health",
            remote.CommandArgs(connection=ca.connection, create=r.CA_HEALTH_CMD,
                               triggers=[ca.resource.id, config_digest]),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*ca.ready, self.config]))

        # 4. certbot and its renewal timer on every guest that gets certificates by ACME.
        self.acme_clients: dict[str, remote.Command] = {}
        for g in topo.acme_clients:
            self.acme_clients[g.name] = script("acme-client", ctx.guests[g.name], r.acme_client_script(),
                                               extra_files=r.acme_client_files(topo), parent=self)

        ctx.facts["ca_health"] = self.health
        self.exports = {"caHealthUrl": f"{topo.ca_url}/health", "acmeDirectory": topo.acme_directory}
        self.register_outputs({"ca_health_url": self.exports["caHealthUrl"],
                               "acme_directory": topo.acme_directory})


def secret_problems(ctx: Context) -> list[str]:
    """The trust tier's secrets and inputs that must exist before it can build anything."""
    out = []
    if ctx.secrets.provisioner_password is None:
        out.append(problem("phoenix:provisionerPassword",
                           "required secret is missing (the JWK provisioner's password)"))
    if ctx.root_cert_pem is None or ctx.root_fingerprint is None or "pki" not in ctx.facts:
        out.append(problem("phoenix:pki", "the PKI tier must run before the trust tier (no root certificate)"))
    return out


def certificate_problems(ctx: Context, guest: str, name: str, sans: Sequence[str],
                         webroot: Optional[str]) -> list[str]:
    """Why Step-CA could not issue this certificate by HTTP-01 to this guest, one line each."""
    topo, at = ctx.topo, f"internal_certificate({name!r} on {guest!r})"
    out = []
    if not sans:
        out.append(problem(at, "needs at least one SAN"))
    policy = ca_policy(ctx.lab, topo)
    known = {rec.name for rec in topo.internal_records}
    for san in sans:
        if r.is_ip(san):
            out.append(problem(at, f"SAN {san} is an address; ACME (certbot) issues for DNS names only"))
            continue
        if not policy_permits(policy, san):
            out.append(problem(at, f"SAN {san} is outside the CA's allowed domains "
                               f"({', '.join(policy['x509']['allow']['dns'])})"))
        if san.lower() not in known:
            out.append(problem(at, f"SAN {san} has no record in the internal view; Step-CA could not reach it"))
    for san in r.shared_sans(topo, guest, sans):
        out.append(problem(at, f"SAN {san} also resolves to other guests; HTTP-01 could be answered by "
                           "the wrong one"))
    if not topo.allows(topo.ca, guest, 80):
        out.append(problem(at, f"the firewall matrix does not let the CA reach {guest}:80 for HTTP-01 "
                           "(add the guest to topology.acme_clients)"))
    trust = ctx.facts.get("trust")
    if trust is None or not hasattr(trust, "acme_clients"):
        out.append(problem(at, "the trust tier and Step-CA (TrustTier.deploy_ca) must come before any "
                           "tier asks for a certificate"))
    elif guest not in trust.acme_clients:
        out.append(problem(at, f"{guest} is not an ACME client in the topology (no certbot installed there)"))
    return out


def internal_certificate(ctx: Context, handle: GuestHandle, name: str, sans: Sequence[str], *,
                         group: str, reload: str, parent: pulumi.Resource, owner: str = "root",
                         depends_on: Sequence[pulumi.Resource] = (), webroot: Optional[str] = None,
                         check: str = "") -> pulumi.Resource:
    """A certificate from Step-CA for ``sans``, kept at ``tls_paths(name)`` on ``handle``'s guest.

    certbot obtains it from ``topo.acme_directory`` by HTTP-01 (standalone on :80, or
    ``webroot`` when the guest already serves :80), trusting only the Phoenix root; the timer
    renews it. The deploy hook installs cert (0644) and key (0640) as ``owner:group`` (the
    service's group always keeps read access), then runs ``check`` (the service's config
    test, e.g. ``nginx -t``) and ``reload`` only if it passes; a failed test keeps the old
    certificate. On first issuance nothing is reloaded (the service's own step starts it).
    The step waits for the guest's trust, certbot, Step-CA's health check and ``depends_on``.
    """
    problems = certificate_problems(ctx, handle.name, name, list(sans), webroot)
    if problems:
        raise ConfigError(problems)
    trust: TrustTier = ctx.facts["trust"]
    req = r.CertRequest(name=name, sans=tuple(sans), owner=owner, group=group, reload=reload, check=check,
                        webroot=webroot)
    obtain, extra = r.certificate_files(ctx.lab, req)
    waits = [ctx.facts["ca_health"], trust.acme_clients[handle.name], *depends_on]
    if ctx.facts.get("dns_ready") is not None:   # Step-CA resolves the SANs through the internal view
        waits.append(ctx.facts["dns_ready"])
    return script(f"cert-{name}", handle, obtain, extra_files=extra, parent=parent, depends_on=waits)
