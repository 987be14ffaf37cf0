"""MeshTier: Traefik v3 on the mesh LXC, its routes generated from the catalog.

Three steps on the mesh guest, each after the guest's ready list (bootstrap, then the root of
trust), everything rendered by ``phoenix.render.mesh``:

1. ``traefik-install``: its own user and directories, the pinned release checked against
   ``phoenix:mesh.traefikSha256`` before it is unpacked (the script refuses without it);
2. ``traefik-static``: static configuration, systemd unit, the dashboard's users file and the
   health script; applied transactionally, Traefik restarted, its ping checked;
3. ``traefik-dynamic``: routers, services, middlewares and TLS options from the catalog,
   swapped into the watched directory (Traefik reloads it, no restart); the health check
   waits until the running configuration holds every pushed router, service and backend and
   the mesh serves its Step-CA certificate, else the previous file comes back.

Only step 3 depends on the catalog's routes and replicas, so a replica change re-runs that
step alone. It waits for Step-CA's health check and the DNS tier (Step-CA validates the
mesh's HTTP-01 challenge by resolving its name through the internal view).
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from components.base import Context, push, script
from phoenix.bundle import GuestFile
from phoenix.render import mesh as render

INSTALL_STEP = "traefik-install"
STATIC_STEP = "traefik-static"
DYNAMIC_STEP = "traefik-dynamic"
RESTART = "systemctl daemon-reload && systemctl enable --quiet traefik && systemctl restart traefik"


class MeshTier(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: Context, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Mesh", name, None, opts)
        topo = ctx.topo
        handle = ctx.handle(topo.mesh.name)
        # The dashboard's password: made once, kept in the state, a secret everywhere; Traefik
        # gets only its bcrypt hash, in a file the traefik group reads.
        self.dashboard_password = random.RandomPassword(
            "mesh-dashboard-password", random.RandomPasswordArgs(length=32, special=False),
            opts=pulumi.ResourceOptions(parent=self))

        self.install = script(INSTALL_STEP, handle, render.install_script(topo), parent=self)

        plain = [
            GuestFile(render.STATIC_PATH, render.static_yaml(topo), 0o640, group=render.USER),
            GuestFile(render.UNIT_PATH, render.unit_text(topo), 0o644),
            GuestFile(render.HEALTH_SCRIPT, render.health_script(topo), 0o755),
        ]
        static_files = pulumi.Output.secret(self.dashboard_password.bcrypt_hash).apply(
            lambda h: [*plain, GuestFile(render.USERS_PATH, render.users_text(h), 0o640, group=render.USER)])
        self.static = push(STATIC_STEP, handle, static_files, check=f"id -u {render.USER} >/dev/null",
                           reload=RESTART, health=f"bash {render.HEALTH_SCRIPT}", parent=self,
                           depends_on=[self.install])

        dynamic_files = [
            GuestFile(render.DYNAMIC_PATH, render.dynamic_yaml(topo), 0o640, group=render.USER),
            GuestFile(render.EXPECTED_PATH, render.expected_text(topo), 0o644),
        ]
        waits = [self.static]
        if ctx.facts.get("ca_health") is not None:
            waits.append(ctx.facts["ca_health"])
        if ctx.facts.get("dns") is not None:
            waits += list(ctx.facts["dns"].ready)
        self.dynamic = push(DYNAMIC_STEP, handle, dynamic_files,
                            health=f"bash {render.HEALTH_SCRIPT} {render.EXPECTED_PATH}",
                            parent=self, depends_on=waits)

        ctx.facts["mesh"] = self
        self.exports = {
            "meshDashboard": {"url": render.dashboard_url(topo), "user": render.DASHBOARD_USER},
            "meshDashboardPassword": pulumi.Output.secret(self.dashboard_password.result),
            "meshEntrypoints": {n: f"https://{topo.mesh_name}:{ep.port}" for n, ep in topo.entrypoints.items()},
        }
        self.register_outputs({"dashboard_url": render.dashboard_url(topo)})
