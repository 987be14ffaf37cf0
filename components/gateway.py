"""GatewayTier: Nginx on the gateway LXC, the single public entry of the lab.

Steps on the gateway guest, in order, each after the guest's ready list (bootstrap, then
the root of trust):

1. ``nginx-install``: nginx and certbot from Debian, certbot's webroot, its renewal timer;
2. ``public-cert-placeholder``: self-signed certificates where Nginx reads the public one and
   its client one, until their first issuance (Nginx must run to answer HTTP-01 on port 80);
3. ``nginx``: the generated configuration, applied transactionally (``nginx -t``, reload,
   health; the previous files back on any failure);
4. after it, side by side: ``public-cert`` (certbot's configuration and deploy hook, then the
   first issuance from Let's Encrypt) and ``mesh-client-cert`` (the client certificate towards the
   mesh, signed by the program's gateway client CA: the trust tier's
   ``gateway_client_certificate``; pushed with ``nginx -t`` before the reload, and again
   whenever ``pulumi up`` re-issues it).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.base import SCRIPTS, Context, GuestHandle, Guests, push, script, secret
from components.trust import ClientCertificate
from phoenix.bundle import GuestFile
from phoenix.render.gateway import (
    CERT_NAME,
    NGINX_CHECK,
    NGINX_RELOAD,
    certbot_files,
    client_certificate_files,
    health_command,
    render_install_script,
    render_placeholder_script,
    render_public_cert_script,
)

#: the steps on the gateway guest, in order (resource names are ``<guest>-<step>``).
STEP_INSTALL = "nginx-install"
STEP_PLACEHOLDER = "public-cert-placeholder"
STEP_NGINX = "nginx"
STEP_PUBLIC_CERT = "public-cert"
STEP_CLIENT_CERT = "mesh-client-cert"
STEPS = (STEP_INSTALL, STEP_PLACEHOLDER, STEP_NGINX, STEP_PUBLIC_CERT, STEP_CLIENT_CERT)


@dataclass(frozen=True)
class GatewayArgs:
    guests: Guests
    #: the gateway's client certificate towards the mesh (trust tier, signed by the program).
    client_certificate: ClientCertificate
    #: the TSIG key DNS-01 updates are signed with (a secret Output; used only with dns-01).
    tsig_key: pulumi.Output


class GatewayTier(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: Context, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Gateway", name, None, opts)
        topo = ctx.topo
        handle = args.guests[topo.gateway.name]
        self.install = script(STEP_INSTALL, handle, render_install_script(topo), parent=self)
        self.placeholder = script(STEP_PLACEHOLDER, handle, render_placeholder_script(topo),
                                  parent=self, depends_on=[self.install])
        # The server blocks the route audit walked.
        self.nginx = push(STEP_NGINX, handle, ctx.artifacts.gateway_files, check=NGINX_CHECK, reload=NGINX_RELOAD,
                          health=health_command(topo), parent=self, depends_on=[self.placeholder])
        self.client_cert = self._mesh_client_certificate(args.client_certificate, handle)
        names = ctx.artifacts.gateway_certificate
        self.public_cert = None
        if names:
            self.public_cert = self._public_certificate(ctx, handle, args.tsig_key)
        acme = ctx.lab.acme
        self.exports = {"gatewayCertificate": {"name": CERT_NAME, "names": names, "challenge": acme.challenge,
                                               "acmeDirectory": topo.public_acme_directory},
                        # What `phoenix verify --gateway-client-cert` reads (its expiry); not secret.
                        "gatewayClientCertificate": {"chainPem": args.client_certificate.chain_pem,
                                                     "notAfter": args.client_certificate.not_after}}
        self.register_outputs({"names": names})

    def _mesh_client_certificate(self, client: ClientCertificate, handle: GuestHandle) -> pulumi.Resource:
        """The gateway's client certificate towards the mesh, over the placeholder: pushed
        transactionally (``nginx -t`` with it in place, then the reload; the previous files back
        on failure), again whenever ``pulumi up`` re-issues it. The key reaches the guest only in
        the bundle (stdin), root's only; nginx's master reads it as root."""
        files = secret(pulumi.Output.all(client.chain_pem, client.key_pem)).apply(
            lambda v: client_certificate_files(v[0], v[1]))
        return push(STEP_CLIENT_CERT, handle, files, check=NGINX_CHECK, reload=NGINX_RELOAD,
                    parent=self, depends_on=[self.nginx, client.resource])

    def _public_certificate(self, ctx: Context, handle: GuestHandle, tsig_key: pulumi.Output) -> pulumi.Resource:
        """certbot's config, hook (and TSIG credentials for DNS-01) and the first issuance.

        The TSIG secret reaches the guest only inside the pushed bundle (stdin), in a
        root-only file; the command line names the script, nothing else.
        """
        topo = ctx.topo
        path = f"{SCRIPTS}/{STEP_PUBLIC_CERT}.sh"
        run = GuestFile(path, render_public_cert_script(topo), 0o700)
        files: pulumi.Output[list[GuestFile]] | list[GuestFile]
        if topo.lab.acme.challenge == "dns-01":
            files = secret(tsig_key).apply(
                lambda key: [run, *certbot_files(topo, key)])
        else:
            files = [run, *certbot_files(topo, None)]
        # Runs as the check hook (as ``script`` does): a failed issuance restores the
        # previous files and fails the step with certbot's message.
        return push(STEP_PUBLIC_CERT, handle, files, check=f"bash {path}", parent=self, depends_on=[self.nginx])
