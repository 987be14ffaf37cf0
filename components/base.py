"""What every tier shares: the deployment context, guest handles and the two kinds of remote step.

Every post-configuration step reaches its guest through ``GuestHandle.connection`` (SSH to
the guest, through the node as a jump host when the stack says so) and is one of:

* ``push``: a bundle of files installed transactionally by ``phoenix-apply`` (stage, swap,
  check, reload, health, restore on failure);
* ``script``: the same, where the bundle carries a script and the "reload" runs it.

A step re-runs when its files change (an update of the command) and is replaced when its
guest is (the guest's id is a trigger).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Optional, Sequence

import pulumi
from pulumi_command import remote

from phoenix.bundle import GuestFile, pack
from phoenix.model import Guest, Lab
from phoenix.topology import Topology

from phoenix.render import APPLY, SCRIPTS


@dataclass
class GuestHandle:
    guest: Guest
    resource: pulumi.CustomResource
    connection: remote.ConnectionArgs
    #: what any step on this guest waits for (bootstrap, then the root of trust).
    ready: list[pulumi.Resource] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.guest.name


@dataclass
class Secrets:
    """Secret inputs, every one a secret Output from config or generated in the program."""
    portainer_admin_password: Optional[pulumi.Output] = None
    agent_secret: Optional[pulumi.Output] = None
    provisioner_password: Optional[pulumi.Output] = None
    tsig_key: Optional[pulumi.Output] = None


@dataclass
class Context:
    lab: Lab
    topo: Topology
    provider: pulumi.ProviderResource
    secrets: Secrets
    guests: dict[str, GuestHandle] = field(default_factory=dict)
    #: the Phoenix root certificate (PEM) and its SHA-256 fingerprint, from the trust tier.
    root_cert_pem: Optional[pulumi.Output] = None
    root_fingerprint: Optional[pulumi.Output] = None
    #: outputs a later tier may need (e.g. the node's GPU driver version), by name.
    facts: dict[str, object] = field(default_factory=dict)

    def handle(self, name: str) -> GuestHandle:
        return self.guests[name]


def _files_input(files) -> pulumi.Output:
    return pulumi.Output.from_input(files).apply(lambda fs: pack(list(fs)))


def push(name: str, handle: GuestHandle, files: Sequence[GuestFile] | pulumi.Output, *,
         check: str = "", reload: str = "", health: str = "",
         parent: pulumi.Resource, depends_on: Sequence[pulumi.Resource] = (),
         delete: Optional[str] = None) -> remote.Command:
    """Install ``files`` on the guest transactionally; the hooks are the service's own tools."""
    create = " ".join([APPLY, shlex.quote(name)]
                      + [f"--{k} {shlex.quote(v)}" for k, v in (("check", check), ("reload", reload),
                                                                  ("health", health)) if v])
    return remote.Command(
        f"{handle.name}-{name}",
        remote.CommandArgs(connection=handle.connection, create=create, delete=delete,
                           stdin=_files_input(files), triggers=[handle.resource.id]),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[*handle.ready, *depends_on]))


def script(name: str, handle: GuestHandle, text: str | pulumi.Output, *, parent: pulumi.Resource,
           depends_on: Sequence[pulumi.Resource] = (), extra_files: Sequence[GuestFile] = (),
           delete: Optional[str] = None) -> remote.Command:
    """Push a script (with any files it needs) and run it; it must be safe to run twice."""
    path = f"{SCRIPTS}/{name}.sh"
    files = pulumi.Output.from_input(text).apply(
        lambda t: [GuestFile(path, t, 0o700), *extra_files])
    # The script runs as the "check" hook: on failure its previous version is restored
    # and nothing is re-run.
    return push(name, handle, files, check=f"bash {path}", parent=parent,
                depends_on=depends_on, delete=delete)
