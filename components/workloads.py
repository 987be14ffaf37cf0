"""WorkloadsTier: GPU services in their LXCs, the Portainer server VM and the agent VMs.

* GPU LXCs: the NVIDIA user-space driver at exactly the node's driver version (read on the
  node at deploy time by ``gpu_node_probes``, which the guests tier runs before it creates
  GPU containers), then one systemd unit per catalog service with its own certificate
  (names only that replica can prove by HTTP-01). A service that cannot serve TLS
  (``run.tls: sidecar``) listens on loopback; nginx's stream proxy on the guest serves its
  catalog port with that certificate (``tls-sidecar-install``, then ``tls-sidecar``: checked
  by ``nginx -t``, healthy when every port presents the name the mesh verifies).
* Portainer: the pinned server by compose, its admin password and the agent secret from
  Pulumi secrets in root-only files (never on a command line); per agent VM the pinned
  agent, and on the Portainer VM a registration step that depends on both and removes the
  environment again on destroy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import pulumi
from pulumi_command import remote

from components.base import Context, GuestHandle, Guests, push, script, secret
from components.trust import Issuer, internal_certificate
from phoenix.bundle import GuestFile
from phoenix.model import Guest, Lab
from phoenix.render import workloads as wl
from phoenix.topology import Topology


def gpu_node_probes(lab: Lab, topo: Topology, private_key: pulumi.Input[str],
                    parent: pulumi.Resource) -> dict[str, remote.Command]:
    """One command per node with GPU guests: device nodes there, driver version on stdout.

    It runs on the node (as ``proxmox.sshUser`` with the deploy key) and says nothing about the
    guests, so the guests tier runs it before creating GPU containers: a container whose device
    nodes are missing would not start. Its stdout is the fact ``gpu-driver-version``. After a
    driver upgrade on the node, replace it (``pulumi up --replace <its URN>``) so the containers
    follow.
    """
    out = {}
    for name in wl.gpu_nodes(topo):
        node = next(n for n in lab.proxmox.nodes if n.name == name)
        out[name] = remote.Command(
            f"gpu-probe-{name}",
            remote.CommandArgs(
                connection=remote.ConnectionArgs(host=str(node.address), port=node.ssh_port,
                                                 user=lab.proxmox.ssh_user, private_key=private_key,
                                                 dial_error_limit=10, per_dial_timeout=10),
                create=wl.gpu_probe_command(topo, name), add_previous_output_in_env=False),
            opts=pulumi.ResourceOptions(parent=parent))
    return out


def service_certificate(issuer: Issuer, handle: GuestHandle, name: str, names: list[str], *, group: str,
                        reload: str, parent: pulumi.Resource, check: str = "",
                        depends_on: Sequence[pulumi.Resource] = ()) -> pulumi.Resource:
    """A certificate from Step-CA at ``tls_paths(name)`` (the trust tier's ``internal_certificate``),
    key readable by ``group``; a renewal runs ``check`` (the config test of what serves it) and
    then ``reload``.

    ``names`` are names this guest can prove by ACME HTTP-01 (``wl.certificate_names``: no
    addresses, no name shared with another replica); the trust tier refuses any other.
    """
    return internal_certificate(issuer, handle, name=name, sans=names, owner="root", group=group, reload=reload,
                                check=check, parent=parent, depends_on=depends_on)


def _run(name: str, handle: GuestHandle, text: str, files: Sequence[GuestFile] | pulumi.Output, *,
         parent: pulumi.Resource, depends_on: Sequence[pulumi.Resource] = ()) -> remote.Command:
    """``script`` for bundles that carry secrets: the files come as one (secret) Output."""
    path = f"{wl.SCRIPTS}/{name}.sh"
    bundle = pulumi.Output.from_input(files).apply(lambda fs: [*fs, GuestFile(path, text, 0o700)])
    return push(name, handle, bundle, check=f"bash {path}", parent=parent, depends_on=depends_on)


@dataclass(frozen=True)
class WorkloadsArgs:
    guests: Guests
    #: Step-CA, for each service's certificate.
    issuer: Issuer
    #: per GPU node, the driver version its probe read (``GuestsTier.driver_versions``).
    driver_versions: Mapping[str, pulumi.Output]
    #: secret Outputs: Portainer's admin password (the operator's; None when not set, which the
    #: loader allows only in a lab without Portainer) and the agent secret (generated).
    portainer_admin_password: pulumi.Output | None
    agent_secret: pulumi.Output


class WorkloadsTier(pulumi.ComponentResource):
    """``registrations``: per agent VM, the step that registers it in Portainer (the compose stacks
    tier deploys onto an agent's environment once it is registered)."""
    registrations: dict[str, pulumi.Resource]

    def __init__(self, name: str, ctx: Context, args: WorkloadsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Workloads", name, None, opts)
        topo = ctx.topo
        self.exports: dict = {}
        self.registrations = {}
        versions = args.driver_versions
        for g in wl.gpu_lxcs(topo):
            self._gpu_guest(ctx, args, g, versions[g.node])
        if topo.portainer:
            self._portainer(ctx, args)
        if versions:
            self.exports["gpuDriverVersions"] = {node: v.apply(str.strip) for node, v in versions.items()}
        self.register_outputs({})

    def _gpu_guest(self, ctx: Context, args: WorkloadsArgs, g: Guest, version: pulumi.Output) -> None:
        topo, handle = ctx.topo, args.guests[g.name]
        driver = script("gpu-driver", handle, version.apply(lambda v: wl.gpu_driver_script(topo, g, v)),
                        extra_files=wl.gpu_guest_files(), parent=self)
        services = wl.gpu_services_on(topo, g)
        users: dict[str, pulumi.Resource] = {}
        certs: dict[str, pulumi.Resource] = {}
        previous_cert: list[pulumi.Resource] = []
        for s in services:
            # The service's user first: its certificate's key is installed readable by its group.
            users[s.name] = push(f"svc-{s.name}-user", handle, [wl.gpu_service_user_file(s)],
                                 check=f"systemd-sysusers {wl.sysusers_path(s)}", parent=self)
            if wl.needs_certificate(s):
                # One certificate at a time per guest: each HTTP-01 answer binds port 80.
                certs[s.name] = service_certificate(
                    args.issuer, handle, s.name, wl.certificate_names(topo, s, g), **wl.certificate_hooks(s),
                    parent=self, depends_on=[users[s.name], *previous_cert])
                previous_cert = [certs[s.name]]
        # Services that cannot serve TLS sit behind nginx on their catalog port (run.tls: sidecar),
        # started once their certificates exist.
        fronted = [s for s in services if s.tls_termination == "sidecar"]
        sidecar: list[pulumi.Resource] = []
        if fronted:
            install = script("tls-sidecar-install", handle, wl.sidecar_install_script(g), parent=self)
            sidecar = [push("tls-sidecar", handle, wl.sidecar_files(topo, g), **wl.sidecar_hooks(), parent=self,
                            depends_on=[install, *(certs[s.name] for s in fronted)])]
        for s in services:
            cert = [certs[s.name]] if s.name in certs else []
            # Its health check goes through the sidecar, if it has one.
            front = sidecar if s in fronted else []
            # Removed from the catalog, the service stops and its unit goes (the step's delete).
            push(f"svc-{s.name}", handle, wl.gpu_service_files(topo, s, g), **wl.gpu_service_hooks(s),
                 parent=self, depends_on=[driver, users[s.name], *cert, *front], delete=wl.gpu_service_delete(s))

    def _portainer(self, ctx: Context, args: WorkloadsArgs) -> None:
        topo = ctx.topo
        p = topo.require_portainer()
        handle = args.guests[p.name]
        if args.portainer_admin_password is None:
            raise LookupError("phoenix:portainerAdminPassword is not set, and the lab has a Portainer guest")
        cert = service_certificate(args.issuer, handle, wl.portainer_tls_name(topo),
                                   wl.portainer_certificate_names(topo), group="root",
                                   reload=f"docker restart {wl.PORTAINER_CONTAINER}", parent=self)
        server_files = secret(pulumi.Output.all(args.portainer_admin_password,
                                                              args.agent_secret).apply(
            lambda s: wl.portainer_server_files(topo, s[0], s[1])))
        server = _run("portainer-server", handle, wl.portainer_server_script(topo), server_files,
                      parent=self, depends_on=[cert])
        environments: dict[str, str] = {}
        registrations = self.registrations
        for a in topo.agents:
            agent_handle = args.guests[a.name]
            files = secret(args.agent_secret.apply(partial(wl.agent_files, topo, a)))
            agent = _run("portainer-agent", agent_handle, wl.agent_script(topo, a), files, parent=self)
            path = f"{wl.SCRIPTS}/register-{a.name}.sh"
            registrations[a.name] = script(
                f"register-{a.name}", handle, wl.registration_script(topo, a), parent=self,
                depends_on=[server, agent], delete=f"[ ! -f {path} ] || bash {path} delete")
            environments[a.name] = wl.agent_url(topo, a)
        self.exports["portainerEnvironments"] = environments
