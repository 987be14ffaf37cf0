"""GatewayTier: Nginx on the gateway LXC, the single public entry of the lab.

Steps on the gateway guest, in order, each after the guest's ready list (bootstrap, then
the root of trust):

1. ``nginx-install``: nginx and certbot from Debian, certbot's webroot, its renewal timer;
2. ``public-cert-placeholder``: self-signed certificates where Nginx reads the public one and
   its client one, until their first issuance (Nginx must run to answer HTTP-01 on port 80);
3. ``nginx``: the generated configuration, applied transactionally (``nginx -t``, reload,
   health; the previous files back on any failure);
4. after it, side by side: ``public-cert`` (certbot's configuration and deploy hook, then the
   first issuance from Let's Encrypt) and ``cert-gateway-client`` (the trust tier's
   ``internal_certificate``: the client certificate towards the mesh, from Step-CA, at the
   one call site ``_mesh_client_certificate``).
"""

from __future__ import annotations

import pulumi

from components.base import SCRIPTS, Context, GuestHandle, push, script
from components.trust import internal_certificate
from phoenix.bundle import GuestFile
from phoenix.render.gateway import (ACME_WEBROOT, CERT_NAME, CLIENT_CERT_NAME, NGINX_CHECK, NGINX_RELOAD,
                                    certbot_files, certificate_names, client_certificate_names,
                                    health_command, nginx_files, render_install_script,
                                    render_placeholder_script, render_public_cert_script)

#: the steps on the gateway guest, in order (resource names are ``<guest>-<step>``).
STEP_INSTALL = "nginx-install"
STEP_PLACEHOLDER = "public-cert-placeholder"
STEP_NGINX = "nginx"
STEP_PUBLIC_CERT = "public-cert"
STEPS = (STEP_INSTALL, STEP_PLACEHOLDER, STEP_NGINX, STEP_PUBLIC_CERT)


class GatewayTier(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: Context, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Gateway", name, None, opts)
        topo = ctx.topo
        handle = ctx.handle(topo.gateway.name)
        self.install = script(STEP_INSTALL, handle, render_install_script(topo), parent=self)
        self.placeholder = script(STEP_PLACEHOLDER, handle, render_placeholder_script(topo),
                                  parent=self, depends_on=[self.install])
        self.nginx = push(STEP_NGINX, handle, nginx_files(topo), check=NGINX_CHECK, reload=NGINX_RELOAD,
                          health=health_command(topo), parent=self, depends_on=[self.placeholder])
        self.client_cert = self._mesh_client_certificate(ctx, handle)
        names = certificate_names(topo)
        self.public_cert = None
        if names:
            self.public_cert = self._public_certificate(ctx, handle)
        acme = ctx.lab.acme
        self.exports = {"gatewayCertificate": {"name": CERT_NAME, "names": names, "challenge": acme.challenge,
                                               "acmeDirectory": topo.public_acme_directory}}
        self.register_outputs({"names": names})

    def _mesh_client_certificate(self, ctx: Context, handle: GuestHandle) -> pulumi.Resource:
        """The gateway's client certificate towards the mesh: the one call to the trust tier.

        Step-CA validates the gateway's internal name by HTTP-01 through the webroot the
        running nginx serves on port 80 (nginx holds the port, so certbot cannot stand alone);
        the trust tier's deploy hook replaces the placeholder at ``CLIENT_TLS`` and reloads
        nginx only after ``nginx -t`` passes. nginx's master reads the key as root.
        """
        return internal_certificate(ctx, handle, CLIENT_CERT_NAME, client_certificate_names(ctx.topo),
                                    group="root", check=NGINX_CHECK, reload=NGINX_RELOAD, webroot=ACME_WEBROOT,
                                    parent=self, depends_on=[self.nginx])

    def _public_certificate(self, ctx: Context, handle: GuestHandle) -> pulumi.Resource:
        """certbot's config, hook (and TSIG credentials for DNS-01) and the first issuance.

        The TSIG secret reaches the guest only inside the pushed bundle (stdin), in a
        root-only file; the command line names the script, nothing else.
        """
        topo = ctx.topo
        path = f"{SCRIPTS}/{STEP_PUBLIC_CERT}.sh"
        run = GuestFile(path, render_public_cert_script(topo), 0o700)
        if topo.lab.acme.challenge == "dns-01":
            files = pulumi.Output.secret(ctx.secrets.tsig_key).apply(
                lambda secret: [run, *certbot_files(topo, secret)])
        else:
            files = [run, *certbot_files(topo, None)]
        # Runs as the check hook (as ``script`` does): a failed issuance restores the
        # previous files and fails the step with certbot's message.
        return push(STEP_PUBLIC_CERT, handle, files, check=f"bash {path}", parent=self, depends_on=[self.nginx])
