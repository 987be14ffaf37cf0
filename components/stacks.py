"""StacksTier: the catalog's compose stacks, one per (service, agent VM), through Portainer.

Per stack:

* on the agent VM, a Step-CA certificate for the agent's name (and the service's names where
  HTTP-01 can prove them), by the trust tier's ``internal_certificate``; certbot answers on
  the agent's port 80, which no stack may publish, and one certificate at a time per agent;
* on the Portainer VM, a deploy step that sends the stack to Portainer's API for the agent's
  environment: created, updated in place when its compose file or secrets change, left alone
  otherwise, removed by the step's delete. It waits for the agent's registration and for the
  certificate (the sidecar bind-mounts its files; a missing file would become a directory).

The stack's secrets (``secretEnvironment``: Pulumi config secrets) travel only inside the
step's bundle, a secret Output on stdin, and reach Portainer in the request body on stdin.
DNS names, the mesh router and the gateway's server block come from the same catalog entry
through the other tiers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import pulumi
from pulumi_command import remote

from components.base import Context, Guests, push, secret
from components.trust import Issuer
from components.workloads import service_certificate
from phoenix.bundle import GuestFile
from phoenix.model import Guest, Service
from phoenix.render import stacks as st
from phoenix.render.workloads import certificate_names
from phoenix.topology import Topology


@dataclass(frozen=True)
class StacksArgs:
    guests: Guests
    #: Step-CA, for each agent's certificate.
    issuer: Issuer
    #: the workloads tier's registration step per agent (``WorkloadsTier.registrations``; without
    #: one, the deploy script waits for the environment to appear in Portainer).
    registrations: Mapping[str, pulumi.Resource]
    #: every secret the stacks name (``phoenix.model.stack_secrets``), as secret Outputs from the
    #: stack's config; the loader has refused a missing or plain one before any resource exists.
    secrets: Mapping[str, pulumi.Output]


def _stack_files(topo: Topology, service: Service, agent: Guest, keys: list[str], values: list) -> list[GuestFile]:
    """The deploy step's files, from the agent VM's id and the stack's secrets (named by ``keys``)."""
    return st.stack_files(topo, service, agent, dict(zip(keys, values[1:], strict=True)), str(values[0]))


class StacksTier(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: Context, args: StacksArgs, opts: pulumi.ResourceOptions | None = None):
        topo = ctx.topo
        pairs = st.stacks(topo)
        super().__init__("phoenix:tier:Stacks", name, None, opts)
        self.exports: dict = {}
        self.certificates: dict[tuple[str, str], pulumi.Resource] = {}
        self.deployments: dict[tuple[str, str], remote.Command] = {}
        if pairs:
            self._deploy(ctx, args, pairs)
            self.exports["composeStacks"] = {
                s.name: {"stack": st.stack_name(s), "agents": list(s.guests)} for s in st.compose_services(topo)}
        self.register_outputs({})

    def _deploy(self, ctx: Context, args: StacksArgs, pairs) -> None:
        topo, secrets = ctx.topo, args.secrets
        portainer = args.guests[topo.require_portainer().name]
        registrations = args.registrations
        last_cert: dict[str, pulumi.Resource] = {}
        for s, agent in pairs:
            handle = args.guests[agent.name]
            waits: list[pulumi.Resource] = []
            if st.serves_tls(s):
                # One certificate at a time per agent: each HTTP-01 answer binds its port 80.
                cert = service_certificate(
                    args.issuer, handle, st.certificate_name(s), certificate_names(topo, s, agent), group="root",
                    reload=st.certificate_reload(s), parent=self,
                    depends_on=[last_cert[agent.name]] if agent.name in last_cert else [])
                last_cert[agent.name] = cert
                self.certificates[(s.name, agent.name)] = cert
                waits.append(cert)
            registration = registrations.get(agent.name)
            waits += [registration] if registration is not None else list(handle.ready)
            keys = s.compose.secret_keys
            files = pulumi.Output.all(handle.resource.id, *(secrets[k] for k in keys)).apply(
                partial(_stack_files, topo, s, agent, keys))
            if keys:
                files = secret(files)
            self.deployments[(s.name, agent.name)] = push(
                st.step_name(s, agent), portainer, files, check=f"bash {st.script_path(s, agent)}",
                parent=self, depends_on=waits, delete=st.delete_command(s, agent))
