"""What every tier shares: the context, guest handles and the two kinds of remote step.

Tiers are Pulumi components in Pulumi's style: ``XTier(name, ctx, XArgs(...))``, where ``ctx``
is the validated stack and ``XArgs`` holds the outputs and resources of earlier tiers it needs,
typed, wired in one place (``phoenix.program.deploy``).

Every post-configuration step reaches its guest through ``GuestHandle.connection`` (SSH to
the guest, through the node as a jump host when the stack says so) and is one of:

* ``push``: a bundle of files installed transactionally by ``phoenix-apply`` (stage, swap,
  check, reload, health, restore on failure);
* ``script``: the same, where the bundle carries a script and the "reload" runs it.

A step re-runs when its files change (an update of the command) and is replaced when its
guest is new: its triggers are the guest's id and the MAC address Proxmox generated when it
built the guest (``GuestHandle.mac``). The id alone cannot tell: it is the fixed VMID, the same
after a replacement. A guest Pulumi replaces, or one rebuilt outside Pulumi that ``pulumi up
--refresh`` reads back, has a new MAC (the provider's Read sets ``mac_address`` from the guest's
config: bpg container.go ``containerRead``, vm/network/network.go ``ReadNetworkDeviceObjects``),
so every step of it runs again and the guest is configured again.

A step with a ``delete`` command is replaced delete-first: create-first, the old step's delete
would undo what the new step's create just did (pulumi-command runs the old delete after the new
create by default). No step passes its previous output in the environment
(``add_previous_output_in_env``): Debian's sshd refuses those variables.
"""

from __future__ import annotations

import asyncio
import functools
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

import pulumi
from pulumi_command import remote

from phoenix.artifacts import Artifacts
from phoenix.bundle import GuestFile, pack
from phoenix.errors import ConfigError, problem
from phoenix.model import Guest, Lab
from phoenix.render import APPLY, SCRIPTS
from phoenix.topology import Topology

if TYPE_CHECKING:
    import pulumi_proxmoxve as pve

T = TypeVar("T")


def secret(value: pulumi.Output[T]) -> pulumi.Output[T]:
    """``pulumi.Output.secret`` of an Output, keeping its type: given an Output, mypy cannot
    choose ``U`` in the SDK's ``Input[U]`` (``U | Awaitable[U] | Output[U]``) on its own."""
    marked: pulumi.Output[T] = pulumi.Output.secret(value)
    return marked


def off_loop(values: pulumi.Output[list], fn: Callable[..., T]) -> pulumi.Output[T]:
    """``fn(*values)`` on a worker thread, once the values are known: for work that releases the
    GIL (PBKDF2), so the event loop registers other resources meanwhile."""
    def start(v: list) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *v))
    # mypy cannot choose U in the SDK's Input[U] (U | Awaitable[U] | Output[U]) for an Awaitable.
    return cast("pulumi.Output[T]", values.apply(start))


@dataclass
class GuestHandle:
    guest: Guest
    resource: pve.ContainerLegacy | pve.VmLegacy
    connection: remote.ConnectionArgs
    #: what any step on this guest waits for (bootstrap, then the root of trust).
    ready: list[pulumi.Resource] = field(default_factory=list)
    #: path on the guest -> the step that pushes it (one owner per path: ``claim``).
    pushed: dict[str, str] = field(default_factory=dict)
    #: the MAC address Proxmox generated for the guest's first interface when it built it: a new
    #: one means a new guest (``triggers``).
    mac: pulumi.Input[str] | None = None

    @property
    def name(self) -> str:
        return self.guest.name


@dataclass(frozen=True)
class Context:
    """What every tier reads: the validated stack (rendered and audited once, ``phoenix.loader``)
    and the Proxmox provider. What a tier needs from an earlier tier comes in its ``*Args``."""
    lab: Lab
    topo: Topology
    artifacts: Artifacts
    provider: pulumi.ProviderResource


#: every guest's handle, by guest name (``GuestsTier.handles``).
Guests = Mapping[str, GuestHandle]


def claim(handle: GuestHandle, step: str, files: Sequence[GuestFile]) -> None:
    """Record ``step`` as the owner of its files' paths on the guest; a path another step pushes
    already is refused (ConfigError naming both): phoenix-apply would let the later push replace
    the earlier one's file, and each would restore its own on failure."""
    clashes = []
    for f in files:
        owner = handle.pushed.setdefault(f.path, step)
        if owner != step:
            clashes.append(problem(f"{handle.name}:{f.path}",
                                   f"pushed by both step {handle.name}-{owner} and step {handle.name}-{step}"))
    if clashes:
        raise ConfigError(clashes)


def _files_input(handle: GuestHandle, step: str, files: Sequence[GuestFile] | pulumi.Output) -> str | pulumi.Output:
    """The bundle on a step's stdin, packed once. Files known now are packed (and their paths
    claimed) now: an Output for them would only add a task and a callback per step for the
    engine to run; files known only at deploy time (secrets) are claimed when they resolve."""
    def packed(fs) -> str:
        claim(handle, step, fs)
        return pack(list(fs))
    if isinstance(files, pulumi.Output):
        return files.apply(packed)
    if all(isinstance(f, GuestFile) for f in files):
        return packed(files)
    return pulumi.Output.from_input(files).apply(packed)


def triggers(handle: GuestHandle) -> list:
    """What replaces (re-runs) a step on this guest: a new guest, by its id and its MAC address."""
    return [handle.resource.id, handle.mac if handle.mac is not None else ""]


def command_options(parent: pulumi.Resource, depends_on: Sequence[pulumi.Resource], *,
                    delete: str | None = None) -> pulumi.ResourceOptions:
    """Options of every remote step: delete-first when it has a delete command (see above)."""
    return pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on),
                                  delete_before_replace=bool(delete))


def push(name: str, handle: GuestHandle, files: Sequence[GuestFile] | pulumi.Output, *,
         check: str = "", reload: str = "", health: str = "",
         parent: pulumi.Resource, depends_on: Sequence[pulumi.Resource] = (),
         delete: str | None = None) -> remote.Command:
    """Install ``files`` on the guest transactionally; the hooks are the service's own tools."""
    create = " ".join([APPLY, shlex.quote(name)]
                      + [f"--{k} {shlex.quote(v)}" for k, v in (("check", check), ("reload", reload),
                                                                  ("health", health)) if v])
    return remote.Command(
        f"{handle.name}-{name}",
        remote.CommandArgs(connection=handle.connection, create=create, delete=delete,
                           stdin=_files_input(handle, name, files), triggers=triggers(handle),
                           add_previous_output_in_env=False),
        opts=command_options(parent, [*handle.ready, *depends_on], delete=delete))


def script(name: str, handle: GuestHandle, text: str | pulumi.Output, *, parent: pulumi.Resource,
           depends_on: Sequence[pulumi.Resource] = (), extra_files: Sequence[GuestFile] = (),
           delete: str | None = None) -> remote.Command:
    """Push a script (with any files it needs) and run it; it must be safe to run twice."""
    path = f"{SCRIPTS}/{name}.sh"
    files: list[GuestFile] | pulumi.Output = (
        [GuestFile(path, text, 0o700), *extra_files] if isinstance(text, str)
        else pulumi.Output.from_input(text).apply(lambda t: [GuestFile(path, t, 0o700), *extra_files]))
    # The script runs as the "check" hook: on failure its previous version is restored
    # and nothing is re-run.
    return push(name, handle, files, check=f"bash {path}", parent=parent,
                depends_on=depends_on, delete=delete)
