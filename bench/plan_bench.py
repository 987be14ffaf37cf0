"""Plan benchmark (issue 2): plan wall time, time per resource, and the longest dependency chain.

Runs the offline plan of the shipped stacks and of a generated large stack (about 40 GPU
services, 30 agents, 300 catalog services) in this process and reports figures from the
same run, so the ratios compare like with like on a shared, noisy machine:

    .venv/bin/python bench/plan_bench.py [--repeat 3]

Targets: dev plan under 3 s wall; time per resource of the large stack at most 1.2 x that of
dev (linear growth); the same longest dependency chain for dev and large (parallelism of a
deployment does not shrink as the lab grows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phoenix.plan import make_plan  # noqa: E402
from phoenix.stackfile import read_stack_file  # noqa: E402


def longest_chain(resources) -> tuple[int, list[str]]:
    """Length (in resources) of the longest path through the dependency graph, and that path."""
    deps = {r.urn: [d for d in r.dependencies] for r in resources if r.custom}
    known = set(deps)

    @lru_cache(maxsize=None)
    def depth(urn: str) -> tuple[int, tuple[str, ...]]:
        best = (0, ())
        for d in deps.get(urn, []):
            if d in known:
                cand = depth(d)
                if cand[0] > best[0]:
                    best = cand
        return best[0] + 1, best[1] + (urn.split("::")[-1],)

    sys.setrecursionlimit(10000)
    top = max((depth(u) for u in deps), default=(0, ()))
    return top[0], list(top[1])


def measure(stack, repeat: int) -> dict:
    times, plan = [], None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            plan = make_plan(stack)
            plan.write(Path(out))
            times.append(time.perf_counter() - start)
    resources = [r for r in plan.run.resources if r.custom]
    chain, path = longest_chain(plan.run.resources)
    wall = statistics.median(times)
    return {"wall": wall, "resources": len(resources), "per_resource": wall / len(resources),
            "chain": chain, "path": path, "guests": len(plan.topo.lab.guests),
            "services": len(plan.topo.lab.services)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from bench.large_stack import large_stack
    stacks = {"dev": read_stack_file(ROOT / "Pulumi.dev.yaml"),
              "cluster": read_stack_file(ROOT / "Pulumi.cluster.yaml"),
              "large": large_stack()}
    make_plan(stacks["dev"])  # warm imports and template caches once, outside the timings
    results = {name: measure(stack, args.repeat) for name, stack in stacks.items()}
    print(f"{'stack':<8} {'guests':>6} {'services':>8} {'resources':>9} {'wall s':>8} {'ms/resource':>11} {'chain':>5}")
    for name, r in results.items():
        print(f"{name:<8} {r['guests']:>6} {r['services']:>8} {r['resources']:>9} {r['wall']:>8.2f} "
              f"{r['per_resource'] * 1000:>11.2f} {r['chain']:>5}")
    dev, large = results["dev"], results["large"]
    print(f"dev plan wall: {dev['wall']:.2f} s (target < 3 s)")
    print(f"time per resource, large / dev: {large['per_resource'] / dev['per_resource']:.2f} (target <= 1.2)")
    print(f"longest dependency chain: dev {dev['chain']}, large {large['chain']} (target: equal)")
    print("  dev chain:   " + " -> ".join(dev["path"]))
    print("  large chain: " + " -> ".join(large["path"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
