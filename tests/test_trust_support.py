"""Helpers for the trust tier's tests (no tests here).

``trust_run(stack)`` runs the program's own first tiers (PKI, guests, trust) under the
recording engine and asks for two internal certificates the way other tiers do: one by
HTTP-01 standalone (the mesh) and one through a webroot (the gateway, which serves :80).
It does not depend on the later tiers being finished, so the trust tier is tested alone;
the shipped plans (every tier) are tested too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pulumi

from phoenix.plan import with_placeholder_secrets
from phoenix.plan.engine import Run, run_program
from phoenix.plan.writer import COMMAND, command_guest, pushed_files
from phoenix.program import load_from_stack
from phoenix.topology import Topology

#: what the demo certificates' hooks run: a marker file stands in for the service's reload.
MESH_CERT = dict(name="mesh", owner="root", group="www-data")
GATEWAY_WEBROOT = "/var/www/acme"


@dataclass
class TrustRun:
    run: Run
    topo: Topology

    def files(self):
        return pushed_files(self.run, self.topo)

    def commands_on(self, guest: str):
        return [r for r in self.run.by_type(COMMAND) if command_guest(r, self.topo) == guest]


def first_tiers():
    """Inside a program: the context with the tiers the trust tier builds on (PKI, guests) made."""
    from components.base import Context, Secrets
    from components.guests import GuestsTier
    from components.pki import PkiTier
    from phoenix.program import generated_secret, load, provider
    cfg = pulumi.Config("phoenix")
    lab, topo = load(cfg)
    secrets = Secrets(provisioner_password=generated_secret("step-ca-provisioner-password", 48))
    ctx = Context(lab, topo, provider(cfg, lab), secrets)
    PkiTier("pki", ctx)
    GuestsTier("guests", ctx)
    return ctx


def trust_program(reload: str = "true", check: str = ""):
    def program():
        from components.trust import TrustTier, internal_certificate
        ctx = first_tiers()
        topo = ctx.topo
        trust = TrustTier("trust", ctx)
        trust.deploy_ca(ctx)
        internal_certificate(ctx, ctx.guests[topo.mesh.name], sans=[topo.mesh_name], reload=reload,
                             check=check, parent=trust, **MESH_CERT)
        internal_certificate(ctx, ctx.guests[topo.gateway.name], name="gateway-client",
                             sans=[topo.guest_fqdn(topo.gateway)], owner="root", group="www-data",
                             reload="true", parent=trust, webroot=GATEWAY_WEBROOT)
    return program


def trust_run(stack, reload: str = "true", check: str = "") -> TrustRun:
    stack, _ = with_placeholder_secrets(stack)
    lab, topo, _ = load_from_stack(stack)
    return TrustRun(run_program(stack, trust_program(reload, check)), topo)


@lru_cache(maxsize=4)
def dev_trust_run() -> TrustRun:
    from conftest import stack_config
    return trust_run(stack_config("dev"))
