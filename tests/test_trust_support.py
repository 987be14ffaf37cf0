"""Helpers for the trust tier's tests (no tests here).

``trust_run(stack)`` runs the program's own first tiers (PKI, guests, trust) under the
recording engine and asks for two internal certificates the way other tiers do: one by
HTTP-01 standalone (the mesh) and one through a webroot (``webroot_guest``: an ACME client
whose :80 a web server already holds, as the gateway's nginx would).
It does not depend on the later tiers being finished, so the trust tier is tested alone;
the shipped plans (every tier) are tested too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pulumi

from phoenix.loader import Loaded, load_stack
from phoenix.plan import with_placeholder_secrets
from phoenix.plan.engine import Run, run_program
from phoenix.plan.writer import COMMAND, command_guest, pushed_files
from phoenix.topology import Topology

#: what the demo certificates' hooks run: a marker file stands in for the service's reload.
MESH_CERT = dict(name="mesh", owner="root", group="www-data")
GATEWAY_WEBROOT = "/var/www/acme"
#: the webroot certificate's name (its SAN is its guest's name, the one name that guest asks for).
WEBROOT_CERT = "webroot-demo"


def webroot_guest(topo) -> str:
    """The guest of the webroot demo: the first replica of the first service (an ACME client)."""
    return topo.lab.services[0].guests[0]


@dataclass
class TrustRun:
    run: Run
    topo: Topology

    def files(self):
        return pushed_files(self.run, self.topo)

    def commands_on(self, guest: str):
        return [r for r in self.run.by_type(COMMAND) if command_guest(r, self.topo) == guest]


@dataclass
class FirstTiers:
    """Inside a program: the context and the tiers the trust tier builds on (PKI, guests)."""
    ctx: object
    pki: object
    guests: dict

    def trust(self):
        """The trust tier and Step-CA (its ``Issuer``), wired as ``phoenix.program.deploy`` wires
        them, without the DNS tier."""
        from components.trust import CaArgs, TrustArgs, TrustTier
        from phoenix.program import generated_secret
        pki = self.pki
        trust = TrustTier("trust", self.ctx, TrustArgs(self.guests, pki.root_cert_pem, pki.root_fingerprint))
        for name, step in trust.steps.items():
            self.guests[name].ready.append(step)
        password = generated_secret("step-ca-provisioner-password", 48)
        issuer = trust.deploy_ca(self.ctx, CaArgs(self.guests, pki, pki.root_cert_pem, pki.root_fingerprint,
                                                  password, dns_ready=()))
        return trust, issuer


def first_tiers(loaded: Loaded) -> FirstTiers:
    from components.base import Context
    from components.guests import GuestsTier
    from components.pki import PkiTier
    from phoenix.program import provider
    cfg = pulumi.Config("phoenix")
    ctx = Context(loaded.lab, loaded.topo, loaded.artifacts, provider(cfg, loaded.lab))
    pki = PkiTier("pki", ctx)
    return FirstTiers(ctx, pki, GuestsTier("guests", ctx).handles)


def trust_program(loaded: Loaded, reload: str = "true", check: str = ""):
    def program():
        from components.trust import internal_certificate
        first = first_tiers(loaded)
        topo = loaded.topo
        trust, issuer = first.trust()
        internal_certificate(issuer, first.guests[topo.mesh.name], sans=[topo.mesh_name], reload=reload,
                             check=check, parent=trust, **MESH_CERT)
        guest = webroot_guest(topo)
        internal_certificate(issuer, first.guests[guest], name=WEBROOT_CERT,
                             sans=[topo.guest_fqdn(topo.lab.guest(guest))], owner="root", group="www-data",
                             reload="true", parent=trust, webroot=GATEWAY_WEBROOT)
    return program


def trust_run(stack, reload: str = "true", check: str = "") -> TrustRun:
    stack, _ = with_placeholder_secrets(stack)
    loaded = load_stack(stack)
    return TrustRun(run_program(stack, trust_program(loaded, reload, check)), loaded.topo)


@lru_cache(maxsize=4)
def dev_trust_run() -> TrustRun:
    from conftest import stack_config
    return trust_run(stack_config("dev"))
