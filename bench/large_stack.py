"""Generated large stacks for the benchmarks: by default 40 GPU services, 30 agents, 300 services.

    from bench.large_stack import large_stack, sized_stack, write_stack_file
    stack = large_stack()            # a StackConfig, like read_stack_file() gives (814 resources)
    stack = sized_stack(4000)        # the same shape scaled to about 4,000 resources
    path = write_stack_file(stack, directory)   # Pulumi.<name>.yaml, for `phoenix plan --config-file`

    .venv/bin/python bench/large_stack.py [--resources N] [--write DIR]

Everything the dev stack sets beyond the lab's shape (images, ACME, PKI, mesh and Portainer
settings and pins) is taken from Pulumi.dev.yaml, so the large stack plans with the same
program settings and differs only in size: four nodes (Ceph storage, HA and backups as the
cluster stack has them), a /16, the four singleton tiers, 40
GPU LXCs each running one GPU service, a Portainer VM with the Portainer UI, 30 agent VMs,
and 259 more services on the agents (one to three replicas each, every fifth public). The
result is validated by the model like any stack file.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phoenix.stackfile import StackConfig, expand_catalog, read_stack_file  # noqa: E402

GPU_SERVICES = 40
AGENTS = 30
CATALOG_SERVICES = 300
NODES = 4


def large_stack(gpu_services: int = GPU_SERVICES, agents: int = AGENTS,
                catalog_services: int = CATALOG_SERVICES, name: str = "large") -> StackConfig:
    if catalog_services < gpu_services:
        raise ValueError("the catalog holds the GPU services too: catalog_services >= gpu_services")
    dev = read_stack_file(ROOT / "Pulumi.dev.yaml")
    raw = copy.deepcopy(expand_catalog(dev.phoenix(), dev.root))
    net = ipaddress.ip_network("10.40.0.0/16")
    hosts = net.hosts()
    gateway_ip = next(hosts)
    nodes = [{"name": f"pve{i + 1}", "address": f"10.0.0.{11 + i}"} for i in range(NODES)]
    # A cluster's storage as the cluster stack has it: disks on Ceph, snippets on CephFS (every
    # node sees both, so the HA guests the model makes of the singleton tiers can fail over).
    raw["proxmox"] = {**raw["proxmox"], "endpoint": "https://10.0.0.11:8006/", "nodes": nodes,
                      "datastore": "ceph-vm", "snippetDatastore": "cephfs"}
    raw["resilience"] = {"storage": {"ceph-vm": {"type": "rbd"}, "cephfs": {"type": "cephfs"}, "pbs": {"type": "pbs"}},
                         "backup": {"storage": "pbs"}}
    raw["network"] = {**raw["network"], "cidr": str(net), "gateway": str(gateway_ip),
                      "management": ["10.0.0.0/24"], "publicAddress": "198.51.100.40"}
    raw_public = raw["domains"]["public"]
    raw["domains"] = {"public": "big.example.net", "internal": "big.internal"}
    lxc_image = next(k for k, v in raw["images"].items() if v["kind"] == "lxc")
    vm_image = next(k for k, v in raw["images"].items() if v["kind"] == "vm")

    guests, next_id = [], iter(range(100, 100_000))

    def guest(gname: str, role: str, i: int, **extra) -> dict:
        g = {"id": next(next_id), "name": gname, "role": role, "node": nodes[i % NODES]["name"],
             "address": str(next(hosts)), "cores": 2, "memory": 2048, "disk": 16,
             "image": lxc_image if role in ("dns", "gateway", "mesh", "ca", "gpu") else vm_image, **extra}
        guests.append(g)
        return g

    for i, role in enumerate(("dns", "gateway", "mesh", "ca")):
        guest(role, role, i)
    gpu_guests = [guest(f"gpu-{i + 1:02d}", "gpu", i, gpus=[0], cores=8, memory=32768, disk=200)
                  for i in range(gpu_services)]
    guest("portainer", "portainer", 0, memory=4096, disk=32)
    agent_guests = [guest(f"agent-{i + 1:02d}", "agent", i, cores=8, memory=16384, disk=128)
                    for i in range(agents)]

    # The dev catalog's Portainer UI, as every lab with a Portainer guest has it.
    services = [dict(s, publicHost=s["publicHost"].replace(raw_public, "big.example.net"))
                for s in raw["services"] if s["name"] == "portainer-ui"]
    for i, g in enumerate(gpu_guests):
        services.append({
            "name": f"llm-{i + 1:02d}", "guests": [g["name"]], "port": 8000, "protocol": "https",
            "health": "/health", "public": i % 4 == 0, "streaming": True, "timeout": 600, "gpu": True,
            **({"publicHost": f"llm-{i + 1:02d}.big.example.net"} if i % 4 == 0 else {}),
            "run": {"command": "/opt/vllm/bin/vllm serve {model} --host 0.0.0.0 --port {port} "
                               "--ssl-certfile {cert} --ssl-keyfile {key}",
                    "model": f"org/model-{i + 1:02d}"}})
    for i in range(catalog_services - len(services)):
        replicas = 1 + i % 3
        chosen = [agent_guests[(i + r * 7) % agents]["name"] for r in range(replicas)]
        public = i % 5 == 0
        services.append({
            "name": f"app-{i + 1:03d}", "guests": list(dict.fromkeys(chosen)), "port": 10000 + i,
            "protocol": "https", "health": "/health", "public": public,
            **({"publicHost": f"app-{i + 1:03d}.big.example.net"} if public else {})})
    raw["guests"], raw["services"] = guests, services
    values = {k: v for k, v in dev.values.items() if not k.startswith("phoenix:") or k in dev.secret_keys}
    values.update({f"phoenix:{k}": v for k, v in raw.items()})
    return StackConfig(name, values, set(dev.secret_keys), dev.root)


#: custom resources of a plan: FIXED for the four singleton tiers, PKI and provider, plus
#: PER_SCALE for each multiple of the default shape (40 GPU services, 30 agents, 300 services);
#: measured with `bench/large_stack.py --count` (814 resources at scale 1, 1,544 at scale 2).
FIXED, PER_SCALE = 84, 730


def sized_stack(resources: int, name: str | None = None) -> StackConfig:
    """The default shape scaled so that its plan registers about ``resources`` custom resources
    (within a few per cent; the benchmark reads the exact count from the plan)."""
    scale = max(resources - FIXED, 1) / PER_SCALE
    gpu, agents = max(1, round(GPU_SERVICES * scale)), max(1, round(AGENTS * scale))
    return large_stack(gpu, agents, max(gpu + 1, round(CATALOG_SERVICES * scale)),
                       name=name or f"large{resources}")


def write_stack_file(stack: StackConfig, directory: Path) -> Path:
    """``stack`` as ``Pulumi.<name>.yaml`` in ``directory`` (secrets stay ``secure:`` ciphertext)."""
    config = {k: ({"secure": v} if k in stack.secret_keys else v) for k, v in stack.values.items()}
    path = Path(directory) / f"Pulumi.{stack.name}.yaml"
    path.write_text(yaml.safe_dump({"config": config}, sort_keys=True))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resources", type=int, help="scale the default shape to about N resources")
    ap.add_argument("--write", type=Path, help="write the stack file into this directory")
    ap.add_argument("--count", action="store_true", help="plan it in this process and count its resources")
    args = ap.parse_args()
    from phoenix.model import parse_lab
    stack = sized_stack(args.resources) if args.resources else large_stack()
    lab = parse_lab(stack.phoenix())
    print(f"{stack.name}: {len(lab.guests)} guests ({len(lab.role('gpu'))} GPU, {len(lab.role('agent'))} agents), "
          f"{len(lab.services)} services ({sum(s.gpu for s in lab.services)} GPU, "
          f"{sum(s.public for s in lab.services)} public)")
    if args.write:
        print(f"written to {write_stack_file(stack, args.write)}")
    if args.count:
        from phoenix.plan import make_plan
        plan = make_plan(stack)
        print(f"{sum(r.custom for r in plan.run.resources)} custom resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
