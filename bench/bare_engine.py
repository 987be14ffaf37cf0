"""The yardstick for bench/plan_bench.py: a bare Pulumi program under Pulumi's own mock runtime.

    .venv/bin/python bench/bare_engine.py --resources N

registers N custom resources, as container + command pairs (a ``pulumi_proxmoxve``
ContainerLegacy and a ``pulumi_command`` remote Command that depends on it), and nothing
else: no model, no rendering, no recording, no output files. It runs them the way
phoenix/plan/engine.py runs the real program (``set_mocks``, a fresh root ``Stack``,
``run_pulumi_func``) with Pulumi's stock ``MockMonitor`` and a ``Mocks`` that echoes inputs,
so what a plan costs beyond this is Phoenix's own work.

The inputs are shaped like Phoenix's (typed ``*Args``, a nested connection with a secret key,
a command text and a stdin of a few hundred bytes), so the engine serialises about as much
per resource as it does in a plan. The garbage collector runs with the plan engine's
setting (``GC_FIRST_THRESHOLD``, the same value as phoenix/plan/engine.py's, which
bench/plan_bench.py checks) unless ``--default-gc`` asks for Python's default.
"""

from __future__ import annotations

import argparse
import gc
import sys

#: the collector's first threshold while the program runs: phoenix/plan/engine.py's value.
GC_FIRST_THRESHOLD = 10_000


def program(pairs: int, containers: int):
    import pulumi
    import pulumi_proxmoxve as pve
    from pulumi_command import remote

    def run() -> None:
        key = pulumi.Output.secret("-----BEGIN OPENSSH " + "PRIVATE KEY-----\nbare\n"
                                   "-----END OPENSSH PRIVATE KEY-----\n")
        for i in range(containers):
            address = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
            guest = pve.ContainerLegacy(
                f"guest-{i}",
                pve.ContainerLegacyArgs(
                    node_name="pve1", vm_id=1000 + i, unprivileged=True, started=True,
                    tags=["bare", "phoenix"],
                    cpu=pve.ContainerLegacyCpuArgs(cores=2),
                    memory=pve.ContainerLegacyMemoryArgs(dedicated=2048, swap=0),
                    disk=pve.ContainerLegacyDiskArgs(datastore_id="local-lvm", size=16),
                    network_interfaces=[pve.ContainerLegacyNetworkInterfaceArgs(name="eth0", bridge="vmbr0")],
                    initialization=pve.ContainerLegacyInitializationArgs(
                        hostname=f"guest-{i}",
                        ip_configs=[pve.ContainerLegacyInitializationIpConfigArgs(
                            ipv4=pve.ContainerLegacyInitializationIpConfigIpv4Args(
                                address=f"{address}/8", gateway="10.0.0.1"))]),
                    operating_system=pve.ContainerLegacyOperatingSystemArgs(
                        template_file_id="local:vztmpl/debian-12.tar.zst", type="debian")))
            if i >= pairs:
                continue
            remote.Command(
                f"guest-{i}-step",
                remote.CommandArgs(
                    connection=remote.ConnectionArgs(host=address, user="root", private_key=key,
                                                     dial_error_limit=60, per_dial_timeout=10),
                    create=f"/usr/local/sbin/phoenix-apply step-{i} --check 'true' --reload 'true'",
                    stdin="x" * 400, triggers=[guest.id]),
                opts=pulumi.ResourceOptions(depends_on=[guest]))
    return run


def run_bare(resources: int, default_gc: bool = False) -> int:
    """Register ``resources`` custom resources under the mock runtime; returns how many."""
    from pulumi.runtime import mocks as pmocks
    from pulumi.runtime import settings
    from pulumi.runtime.stack import Stack, run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    class Echo(pmocks.Mocks):
        def new_resource(self, args):
            return f"{args.name}-id", args.inputs

        def call(self, args):
            return {}, []

    monitor = pmocks.MockMonitor(Echo())
    pmocks.set_mocks(monitor.mocks, project="bare", stack="bench", preview=False, monitor=monitor)
    # pulumi annotates `root: Resource`, yet its context variable is Optional and starts as None
    settings.set_root_resource(None)  # type: ignore[arg-type]
    Stack()
    pairs, containers = resources // 2, resources - resources // 2
    before = gc.get_threshold()
    if not default_gc:
        gc.set_threshold(GC_FIRST_THRESHOLD, *before[1:])
    try:
        _sync_await(run_pulumi_func(program(pairs, containers)))
    finally:
        gc.set_threshold(*before)
    settings.set_root_resource(None)  # type: ignore[arg-type]  # as above
    registered = [u for u in monitor.resources if "::pulumi:pulumi:Stack::" not in u]
    if len(registered) != resources:
        raise SystemExit(f"registered {len(registered)} resources, expected {resources}")
    return len(registered)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resources", type=int, required=True, help="custom resources to register")
    ap.add_argument("--default-gc", action="store_true", help="Python's default collector thresholds")
    args = ap.parse_args()
    print(f"bare engine: {run_bare(args.resources, args.default_gc)} resources registered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
