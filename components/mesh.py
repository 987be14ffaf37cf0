"""MeshTier: Traefik v3 on the mesh LXC, its routes generated from the catalog.

Three steps on the mesh guest, each after the guest's ready list (bootstrap, then the root of
trust), everything rendered by ``phoenix.render.mesh``:

1. ``traefik-install``: its own user and directories, the pinned release checked against
   ``phoenix:mesh.traefikSha256`` before it is unpacked (the script refuses without it);
2. ``traefik-static``: static configuration, systemd unit, the dashboard's users file, the
   gateway client CA (the one CA the gateway entrypoint trusts) and the health script; applied
   transactionally, Traefik restarted, its ping checked;
3. ``traefik-dynamic``: routers, services, middlewares and TLS options from the catalog,
   swapped into the watched directory (Traefik reloads it, no restart); the health check
   waits until the running configuration holds every pushed router, service and backend and
   the mesh serves its Step-CA certificates (its own name, every service's names), else the
   previous file comes back.

Only step 3 depends on the catalog's routes and replicas, so a replica change re-runs that
step alone. It waits for Step-CA's health check and the DNS tier (Step-CA validates the
mesh's HTTP-01 challenge by resolving its name through the internal view).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from components.base import Context, Guests, push, script, secret
from phoenix.bundle import GuestFile
from phoenix.render import mesh as render

INSTALL_STEP = "traefik-install"
STATIC_STEP = "traefik-static"
DYNAMIC_STEP = "traefik-dynamic"
RESTART = "systemctl daemon-reload && systemctl enable --quiet traefik && systemctl restart traefik"


@dataclass(frozen=True)
class MeshArgs:
    guests: Guests
    #: Step-CA answers (its health check): the mesh's certificates come from it by ACME.
    ca_ready: pulumi.Resource
    #: names resolve: Step-CA validates the mesh's HTTP-01 challenge through the internal view.
    dns_ready: Sequence[pulumi.Resource]
    #: the gateway client CA (PEM, from the PKI tier): the one CA the gateway entrypoint trusts.
    gateway_client_ca_pem: pulumi.Output


class MeshTier(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: Context, args: MeshArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Mesh", name, None, opts)
        topo, art = ctx.topo, ctx.artifacts
        handle = args.guests[topo.mesh.name]
        # The dashboard's password: made once, kept in the state, a secret everywhere; Traefik
        # gets only its bcrypt hash, in a file the traefik group reads.
        self.dashboard_password = random.RandomPassword(
            "mesh-dashboard-password", random.RandomPasswordArgs(length=32, special=False),
            opts=pulumi.ResourceOptions(parent=self))

        self.install = script(INSTALL_STEP, handle, render.install_script(topo), parent=self)

        plain = [
            GuestFile(render.STATIC_PATH, art.mesh_static_yaml, 0o640, group=render.USER),
            GuestFile(render.UNIT_PATH, render.unit_text(topo), 0o644),
            GuestFile(render.HEALTH_SCRIPT, render.health_script(topo), 0o755),
        ]
        # Traefik reads the client CA when it loads the TLS options: a new one (the CA re-issued)
        # restarts it with the static step.
        static_files = pulumi.Output.all(secret(self.dashboard_password.bcrypt_hash),
                                         args.gateway_client_ca_pem).apply(
            lambda v: [*plain, GuestFile(render.USERS_PATH, render.users_text(v[0]), 0o640, group=render.USER),
                       GuestFile(render.GATEWAY_CLIENT_CA_PATH, v[1], 0o644)])
        self.static = push(STATIC_STEP, handle, static_files, check=f"id -u {render.USER} >/dev/null",
                           reload=RESTART, health=f"bash {render.HEALTH_SCRIPT}", parent=self,
                           depends_on=[self.install])

        # The routers, services and transports the route audit walked.
        self.dynamic = push(DYNAMIC_STEP, handle, art.mesh_dynamic_files,
                            health=f"bash {render.HEALTH_SCRIPT} {render.EXPECTED_PATH}",
                            parent=self, depends_on=[self.static, args.ca_ready, *args.dns_ready])

        self.exports = {
            "meshDashboard": {"url": render.dashboard_url(topo), "user": render.DASHBOARD_USER},
            "meshDashboardPassword": secret(self.dashboard_password.result),
            "meshEntrypoints": {n: f"https://{topo.mesh_name}:{ep.port}" for n, ep in topo.entrypoints.items()},
        }
        self.register_outputs({"dashboard_url": render.dashboard_url(topo)})
