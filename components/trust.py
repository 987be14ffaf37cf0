"""TrustTier: the Phoenix root in every guest, Step-CA on its guest, and internal certificates.

* Every guest installs the root certificate from the program's own output (never fetched
  from the CA) right after its bootstrap, and every later step on that guest waits for it
  (``phoenix.program.deploy`` adds it to ``GuestHandle.ready``). No guest waits for the CA guest
  just to trust.
* Step-CA holds the intermediate (never the root key), runs as its own user, and serves
  ACME (HTTP-01, DNS-01) and JWK provisioners on ``lab.pki.ca_port``.
* ``internal_certificate`` gives any tier a certificate from Step-CA by ACME (certbot), renewed
  by a timer, installed for the service's group, reloaded only after its config test passes.
* ``gateway_client_certificate``: the gateway's client certificate towards the mesh, signed by
  the program with the PKI tier's gateway client CA (not by Step-CA: the mesh's gateway
  entrypoint trusts that CA alone, so no other guest's certificate opens it). pulumi-tls
  re-issues it on the first ``pulumi up`` within ``GATEWAY_CLIENT_RENEW_HOURS`` of its end; the
  gateway tier pushes it (nginx -t before the reload).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls
from pulumi_command import remote

from components.base import Context, GuestHandle, Guests, off_loop, push, script, secret, triggers
from components.pki import PkiTier
from phoenix.bundle import GuestFile, digest
from phoenix.errors import ConfigError, problem
from phoenix.model import Lab
from phoenix.pki import ca_policy, outside_allowed_domains, policy_matcher
from phoenix.render import trust as r
from phoenix.topology import Topology


@dataclass(frozen=True)
class TrustArgs:
    guests: Guests
    #: the Phoenix root (PEM) and its SHA-256 fingerprint, from the PKI tier.
    root_cert_pem: pulumi.Output
    root_fingerprint: pulumi.Output


@dataclass(frozen=True)
class CaArgs:
    """What Step-CA needs: the PKI tier's intermediate, its provisioner password, and names that
    resolve (it validates HTTP-01 through the internal view)."""
    guests: Guests
    pki: PkiTier
    root_cert_pem: pulumi.Output
    root_fingerprint: pulumi.Output
    provisioner_password: pulumi.Output
    dns_ready: Sequence[pulumi.Resource]


@dataclass(frozen=True)
class ClientCertificate:
    """The gateway's client certificate: ``chain_pem`` (leaf, then the gateway client CA),
    ``key_pem`` (a secret), and when it ends (``not_after``, RFC 3339)."""
    chain_pem: pulumi.Output
    key_pem: pulumi.Output
    not_after: pulumi.Output
    resource: pulumi.Resource


@dataclass(frozen=True)
class Issuer:
    """What a tier needs to ask Step-CA for a certificate (``internal_certificate``): the running
    CA (its health check), certbot on each ACME client, and names that resolve."""
    lab: Lab
    topo: Topology
    ca_ready: pulumi.Resource
    acme_clients: dict[str, pulumi.Resource]
    dns_ready: Sequence[pulumi.Resource]


class TrustTier(pulumi.ComponentResource):
    """``steps``: the trust step of every guest, by name; every later step on a guest waits for it."""
    steps: dict[str, remote.Command]

    def __init__(self, name: str, ctx: Context, args: TrustArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Trust", name, None, opts)
        lab, topo = ctx.lab, ctx.topo

        # 1. Trust, on every guest, right after its bootstrap.
        self.steps = {}
        for g in lab.guests:
            handle = args.guests[g.name]
            files = pulumi.Output.all(args.root_cert_pem, args.root_fingerprint).apply(
                lambda v: r.trust_files(topo, v[0], v[1]))
            self.steps[g.name] = push("trust", handle, files, check=r.TRUST_CHECK_CMD, reload=r.TRUST_RELOAD_CMD,
                                      health=r.TRUST_HEALTH_CMD, parent=self)

    def deploy_ca(self, ctx: Context, args: CaArgs) -> Issuer:
        """Step-CA and the ACME clients: called once names resolve (the CA's install downloads
        its packages, and Step-CA resolves the names it validates through the internal view)."""
        lab, topo = ctx.lab, ctx.topo
        pki = args.pki
        # 2. Step-CA on its guest.
        ca = args.guests[topo.ca.name]
        self.provisioner_key = tls.PrivateKey(
            "step-ca-jwk-key", tls.PrivateKeyArgs(algorithm="ECDSA", ecdsa_curve="P256"),
            opts=pulumi.ResourceOptions(parent=self))
        self.install = script("step-ca-install", ca, r.ca_install_script(lab), parent=self)
        # Sealing the provisioner's key is PBKDF2, which holds no lock: on a worker thread, while
        # the event loop goes on with the other tiers.
        provisioner = off_loop(pulumi.Output.all(self.provisioner_key.private_key_pem, args.provisioner_password),
                               r.provisioner)
        ca_files = pulumi.Output.all(
            args.root_cert_pem, args.root_fingerprint, pki.intermediate_cert_pem, pki.intermediate_key_pem,
            provisioner,
        ).apply(lambda v: r.ca_files(
            lab, topo, root_pem=v[0], fingerprint=v[1], intermediate_pem=v[2], intermediate_key_pem=v[3],
            provisioner=v[4]))
        config_digest = secret(ca_files).apply(digest)
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
                               triggers=[*triggers(ca), config_digest], add_previous_output_in_env=False),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*ca.ready, self.config]))

        # 4. certbot and its renewal timer on every guest that gets certificates by ACME.
        self.acme_clients: dict[str, remote.Command] = {}
        for g in topo.acme_clients:
            self.acme_clients[g.name] = script("acme-client", args.guests[g.name], r.acme_client_script(),
                                               extra_files=r.acme_client_files(topo), parent=self)

        self.exports = {"caHealthUrl": topo.ca_health_url, "acmeDirectory": topo.acme_directory}
        self.register_outputs({"ca_health_url": self.exports["caHealthUrl"],
                               "acme_directory": topo.acme_directory})
        return Issuer(lab, topo, self.health, dict(self.acme_clients), tuple(args.dns_ready))


def gateway_client_certificate(ctx: Context, pki: PkiTier, parent: pulumi.Resource) -> ClientCertificate:
    """The gateway's key and client certificate, signed by the gateway client CA (module docstring)."""
    topo = ctx.topo
    name = topo.guest_fqdn(topo.gateway)
    opts = pulumi.ResourceOptions(parent=parent)
    key = tls.PrivateKey("gateway-client-key", tls.PrivateKeyArgs(algorithm="ECDSA", ecdsa_curve="P256"), opts=opts)
    csr = tls.CertRequest("gateway-client-csr", tls.CertRequestArgs(
        private_key_pem=key.private_key_pem, dns_names=[name],
        subject=tls.CertRequestSubjectArgs(common_name=name, organization=ctx.lab.pki.organization)), opts=opts)
    cert = tls.LocallySignedCert("gateway-client-cert", tls.LocallySignedCertArgs(
        cert_request_pem=csr.cert_request_pem,
        ca_private_key_pem=pki.gateway_client_ca_key.private_key_pem, ca_cert_pem=pki.gateway_client_ca_pem,
        validity_period_hours=r.GATEWAY_CLIENT_LIFETIME_HOURS, early_renewal_hours=r.GATEWAY_CLIENT_RENEW_HOURS,
        allowed_uses=["digital_signature", "client_auth"], set_subject_key_id=True), opts=opts)
    chain = pulumi.Output.all(cert.cert_pem, pki.gateway_client_ca_pem).apply(lambda v: v[0] + v[1])
    return ClientCertificate(chain, secret(key.private_key_pem), cert.validity_end_time, cert)


def certificate_problems(issuer: Issuer, guest: str, name: str, sans: Sequence[str],
                         webroot: str | None) -> list[str]:
    """Why Step-CA could not issue this certificate by HTTP-01 to this guest, one line each."""
    topo, at = issuer.topo, f"internal_certificate({name!r} on {guest!r})"
    out = []
    if not sans:
        out.append(problem(at, "needs at least one SAN"))
    permits = policy_matcher(ca_policy(issuer.lab, topo))
    known = {rec.name for rec in topo.internal_records}
    for san in sans:
        if r.is_ip(san):
            out.append(problem(at, f"SAN {san} is an address; ACME (certbot) issues for DNS names only"))
            continue
        if outside_allowed_domains(issuer.lab, [san]):
            domains = issuer.lab.pki.allowed_domains or [issuer.lab.domains.internal]
            out.append(problem(at, f"SAN {san} is outside the CA's allowed domains "
                               f"(one label below {', '.join(domains)})"))
        elif not permits(san) or san not in topo.step_ca_names.get(guest, ()):
            out.append(problem(at, f"SAN {san} is not a name {guest} asks Step-CA for "
                               "(topology.step_ca_names; the CA's policy allows exactly those)"))
        if san.lower() not in known:
            out.append(problem(at, f"SAN {san} has no record in the internal view; Step-CA could not reach it"))
    for san in r.shared_sans(topo, guest, sans):
        out.append(problem(at, f"SAN {san} also resolves to other guests; HTTP-01 could be answered by "
                           "the wrong one"))
    if not topo.allows(topo.ca, guest, 80):
        out.append(problem(at, f"the firewall matrix does not let the CA reach {guest}:80 for HTTP-01 "
                           "(add the guest to topology.acme_clients)"))
    if guest not in issuer.acme_clients:
        out.append(problem(at, f"{guest} is not an ACME client in the topology (no certbot installed there)"))
    return out


def internal_certificate(issuer: Issuer, handle: GuestHandle, name: str, sans: Sequence[str], *,
                         group: str, reload: str, parent: pulumi.Resource, owner: str = "root",
                         depends_on: Sequence[pulumi.Resource] = (), webroot: str | None = None,
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
    problems = certificate_problems(issuer, handle.name, name, list(sans), webroot)
    if problems:
        raise ConfigError(problems)
    req = r.CertRequest(name=name, sans=tuple(sans), owner=owner, group=group, reload=reload, check=check,
                        webroot=webroot)
    obtain, extra = r.certificate_files(issuer.lab, req)
    # Step-CA resolves the SANs through the internal view: names must resolve first.
    waits = [issuer.ca_ready, issuer.acme_clients[handle.name], *depends_on, *issuer.dns_ready]
    return script(f"cert-{name}", handle, obtain, extra_files=extra, parent=parent, depends_on=waits)
