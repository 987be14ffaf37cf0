"""DnsTier: BIND9 with an internal and an external view on the DNS guest (DESIGN: dual horizon).

Two steps on the DNS guest: install BIND9 (idempotent script), then push its whole
configuration transactionally (named-checkzone and named-checkconf -z before the swap takes
effect, rndc reload, a health query of both views). Everything it pushes is rendered by
``phoenix.render.dns`` from the topology; the TSIG key for ACME DNS-01 travels only inside
the pushed bundle (secret stdin), never on a command line.
"""

from __future__ import annotations

import pulumi

from components.base import Context, push, script
from phoenix.render import dns as render

CONFIG_STEP = "bind-config"


class DnsTier(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: Context, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Dns", name, None, opts)
        topo = ctx.topo
        handle = ctx.handle(topo.dns.name)
        self.install = script(render.INSTALL_STEP, handle, render.install_script(topo), parent=self)
        files = pulumi.Output.secret(ctx.secrets.tsig_key).apply(lambda key: render.config_files(topo, key))
        self.config = push(CONFIG_STEP, handle, files, check=render.check_command(topo),
                           reload=render.RELOAD_COMMAND, health=render.HEALTH_COMMAND,
                           parent=self, depends_on=[self.install])
        #: what a step that needs names to resolve (or DNS-01 updates to land) waits for.
        self.ready: list[pulumi.Resource] = [self.config]
        ctx.facts["dns"] = self
        self.exports = {"dns": {"server": str(topo.dns.address),
                                "nameserver": render.public_nameserver(topo),
                                "zones": {"internal": topo.lab.domains.internal,
                                          "public": topo.lab.domains.public}}}
        self.register_outputs({})
