"""DnsTier: BIND9 with an internal and an external view on the DNS guest (DESIGN: dual horizon).

Two steps on the DNS guest: install BIND9 (idempotent script), then push its whole
configuration transactionally (named-checkzone and named-checkconf -z before the swap takes
effect, rndc reload, a health query of both views). Everything it pushes is rendered by
``phoenix.render.dns`` from the topology; the TSIG key for ACME DNS-01 travels only inside
the pushed bundle (secret stdin), never on a command line.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.base import Context, Guests, push, script, secret
from phoenix.render import dns as render

CONFIG_STEP = "bind-config"


@dataclass(frozen=True)
class DnsArgs:
    guests: Guests
    #: the TSIG key (base64) DNS-01 updates are signed with: a secret Output.
    tsig_key: pulumi.Output


class DnsTier(pulumi.ComponentResource):
    """``ready``: what a step that needs names to resolve (or DNS-01 updates to land) waits for."""
    ready: list[pulumi.Resource]

    def __init__(self, name: str, ctx: Context, args: DnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Dns", name, None, opts)
        topo, art = ctx.topo, ctx.artifacts
        handle = args.guests[topo.dns.name]
        self.install = script(render.INSTALL_STEP, handle, render.install_script(topo), parent=self)
        # The zones the route audit read, as files, and the key only the secret completes.
        files = secret(args.tsig_key).apply(art.dns_files)
        self.config = push(CONFIG_STEP, handle, files, check=art.dns_check,
                           reload=render.RELOAD_COMMAND, health=render.HEALTH_COMMAND,
                           parent=self, depends_on=[self.install])
        self.ready = [self.config]
        self.exports = {"dns": {"server": str(topo.dns.address),
                                "nameserver": render.public_nameserver(topo),
                                "zones": {"internal": topo.lab.domains.internal,
                                          "public": topo.lab.domains.public}}}
        self.register_outputs({})
