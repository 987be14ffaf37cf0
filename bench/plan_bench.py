"""Plan benchmark: the offline plan as a user runs it, against a bare Pulumi mock engine, in one run.

    .venv/bin/python bench/plan_bench.py [--stack-rounds 9] [--rounds 3] [--sizes 1000,2000,4000]

For the dev and cluster stacks and generated stacks of about 1,000, 2,000 and 4,000
resources (bench/large_stack.py), times whole commands in child processes, the way a user
runs them:

    phoenix plan --stack dev --out DIR                   (generated stacks: --config-file FILE)
    python bench/bare_engine.py --resources N           (N: the plan's own resource count)

bench/bare_engine.py registers the same number of resources (container + command pairs,
nothing else) under the same Pulumi mock runtime, so a ratio is what Phoenix adds to the
engine: its imports, model, rendering, recording and output. The two commands alternate,
``--stack-rounds`` (shipped stacks) or ``--rounds`` (generated stacks) times after one untimed
warm-up each; times are medians, and a ratio is the median of the rounds' own plan/bare ratios
(with their range), which a machine that changes speed between rounds moves less. Reported per stack:
wall time, CPU time (user + system, steadier on a shared machine) and peak memory
(``ru_maxrss`` of the child, from ``wait4``), the plan/bare ratios, and per-resource time
from the smallest to the largest generated stack for both commands. The bare engine runs
with the plan engine's garbage-collector setting (like with like), and once more with
Python's default for reference.

Both commands run with a private bytecode cache (``PYTHONPYCACHEPREFIX``) and without
``PYTHONDONTWRITEBYTECODE``, so neither recompiles its sources on every run (a user's
installation keeps its ``.pyc`` files).

Goals (issue 16): plan/bare at most 1.5 for dev, cluster and the generated stacks of 1,000+
resources; the plan's per-resource time from 1,000 to 4,000 resources growing no faster than
the engine's. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bare_engine import GC_FIRST_THRESHOLD  # noqa: E402
from phoenix.collector import GC_FIRST_THRESHOLD as ENGINE_GC_FIRST_THRESHOLD  # noqa: E402

RATIO_GOAL = 1.5
SUMMARY = re.compile(r"Phoenix plan for stack '[^']+': (\d+) resources")


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)

    def median(self, what: str) -> float:
        return statistics.median(getattr(self, what))


def run(cmd: list[str], env: dict, timing: Timing | None) -> str:
    """Run ``cmd`` to completion; record its wall time, CPU time and peak memory."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    if timing is not None:
        timing.wall.append(wall)
        timing.cpu.append(usage.ru_utime + usage.ru_stime)
        timing.rss_kib.append(usage.ru_maxrss)
    return stdout


def longest_chain(plan_json: Path) -> int:
    """Resources on the longest dependency path of the plan (how deep a deployment must go)."""
    doc = json.loads(plan_json.read_text())
    deps = {r["urn"]: r["dependencies"] for r in doc["resources"] if not r["type"].startswith("phoenix:tier:")}
    depth: dict[str, int] = {}
    for urn in deps:   # iterative depth-first, the graph is a DAG
        stack = [urn]
        while stack:
            top = stack[-1]
            pending = [d for d in deps[top] if d in deps and d not in depth]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            depth[top] = 1 + max((depth[d] for d in deps[top] if d in deps), default=0)
    return max(depth.values(), default=0)


@dataclass
class Result:
    name: str
    resources: int
    plan: Timing
    bare: Timing
    chain: int
    plan_cmd: list[str]
    bare_cmd: list[str]
    bare_default_gc: Timing

    def ratio(self, what: str) -> float:
        """The median of the rounds' own ratios: each round's plan and bare ran one after the
        other, so a machine that slows down or speeds up between rounds moves both."""
        return statistics.median(self.paired(what))

    def paired(self, what: str) -> list[float]:
        return [p / b for p, b in zip(getattr(self.plan, what), getattr(self.bare, what), strict=True)]


#: what the ``phoenix`` console script runs (pyproject.toml's ``[project.scripts]``), for the
#: checkout this file is in (the console script of an editable install would import whichever
#: checkout was installed).
PHOENIX = [sys.executable, "-c", "import sys; from phoenix.__main__ import main; sys.exit(main())"]


def measure(name: str, plan_args: list[str], work: Path, env: dict, rounds: int) -> Result:
    out = work / f"out-{name}"
    plan_cmd = [*PHOENIX, "plan", *plan_args, "--out", str(out)]
    stdout = run(plan_cmd, env, None)                      # warm-up (bytecode, page cache)
    found = SUMMARY.search(stdout)
    if not found:
        raise SystemExit(f"no resource count in the plan's summary:\n{stdout[:500]}")
    resources = int(found.group(1))
    bare_cmd = [sys.executable, str(ROOT / "bench/bare_engine.py"), "--resources", str(resources)]
    run(bare_cmd, env, None)
    chain = longest_chain(out / "plan.json")
    plan, bare, bare_default = Timing(), Timing(), Timing()
    for i in range(rounds):
        # A fresh directory each time: what a first `--out` costs, nothing deleted first.
        run([*plan_cmd[:-1], str(work / f"out-{name}-{i}")], env, plan)
        run(bare_cmd, env, bare)
        run([*bare_cmd, "--default-gc"], env, bare_default)
    return Result(name, resources, plan, bare, chain, plan_cmd, bare_cmd, bare_default)


def report(results: list[Result], generated: list[Result]) -> None:
    print(f"\n{'stack':<10} {'resources':>9} {'rounds':>6} {'plan s':>7} {'bare s':>7} {'ratio':>6} {'range':>10} "
          f"{'plan cpu':>8} {'bare cpu':>8} {'cpu ratio':>9} {'plan MiB':>8} {'bare MiB':>8} "
          f"{'bare dGC s':>10} {'ratio dGC':>9} {'chain':>5}  goal")
    for r in results:
        verdict = "ok" if r.ratio("wall") <= RATIO_GOAL else "MISSED"
        default_gc = r.bare_default_gc.median("wall")
        spread = f"{min(r.paired('wall')):.2f}-{max(r.paired('wall')):.2f}"
        print(f"{r.name:<10} {r.resources:>9} {len(r.plan.wall):>6} {r.plan.median('wall'):>7.2f} "
              f"{r.bare.median('wall'):>7.2f} {r.ratio('wall'):>6.2f} {spread:>10} "
              f"{r.plan.median('cpu'):>8.2f} {r.bare.median('cpu'):>8.2f} "
              f"{r.ratio('cpu'):>9.2f} {r.plan.median('rss_kib') / 1024:>8.0f} "
              f"{r.bare.median('rss_kib') / 1024:>8.0f} {default_gc:>10.2f} "
              f"{r.plan.median('wall') / default_gc:>9.2f} {r.chain:>5}  ratio <= {RATIO_GOAL}: {verdict}")
    if len(generated) >= 2:
        small, large = generated[0], generated[-1]
        print(f"\nper-resource time, {small.resources} -> {large.resources} resources (ms per resource)")
        for what in ("wall", "cpu"):
            grow = {}
            for label in ("plan", "bare"):
                a = getattr(small, label).median(what) / small.resources * 1000
                b = getattr(large, label).median(what) / large.resources * 1000
                grow[label] = b / a
                print(f"  {label} {what:<4} {a:7.2f} -> {b:7.2f}  growth {100 * (b / a - 1):+6.1f}%")
            verdict = "ok" if grow["plan"] <= grow["bare"] * 1.05 else "MISSED"
            print(f"  {what}: plan growth / engine growth = {grow['plan'] / grow['bare']:.2f} "
                  f"(goal: no faster than the engine's, within 5% noise): {verdict}")
    print("\ntimes are medians of the rounds; 'ratio' is the median of each round's plan/bare ratio, "
          "'range' the lowest and highest\nof them; 'bare' runs with the plan engine's collector setting "
          f"(gc threshold {GC_FIRST_THRESHOLD}), 'bare dGC' with Python's default (for reference: the\n"
          "engine as Pulumi ships it); peak memory is the child's ru_maxrss; 'chain' is the longest "
          "dependency path of the plan (resources).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds for the generated stacks")
    ap.add_argument("--stack-rounds", type=int, default=9,
                    help="rounds for the shipped stacks (a second or two each: more rounds, less noise)")
    ap.add_argument("--sizes", default="1000,2000,4000", help="generated stacks, about N resources each")
    ap.add_argument("--stacks", default="dev,cluster", help="shipped stacks to include")
    args = ap.parse_args()
    from bench.large_stack import sized_stack, write_stack_file
    if GC_FIRST_THRESHOLD != ENGINE_GC_FIRST_THRESHOLD:
        raise SystemExit(f"bench/bare_engine.py collects at {GC_FIRST_THRESHOLD}, the plan engine at "
                         f"{ENGINE_GC_FIRST_THRESHOLD}: keep them equal so the ratio compares like with like")
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        results, generated = [], []
        for name in filter(None, args.stacks.split(",")):
            print(f"measuring {name} ...", file=sys.stderr)
            results.append(measure(name, ["--stack", name], work, env, args.stack_rounds))
        for size in [int(s) for s in args.sizes.split(",") if s]:
            stack = sized_stack(size)
            path = write_stack_file(stack, work)
            print(f"measuring {stack.name} ...", file=sys.stderr)
            generated.append(measure(stack.name, ["--config-file", str(path)], work, env, args.rounds))
        results += generated
        print("commands (alternating, after one warm-up each; rounds in the table):")
        for r in results:
            shown = ["phoenix"] + [re.sub(r"^/.*/(Pulumi\.[^/]+\.yaml)$", r"TMP/\1", a)
                                   for a in r.plan_cmd[len(PHOENIX):]]
            shown[-1] = "TMP/out"
            print(f"  {' '.join(shown)}   vs   python bench/bare_engine.py --resources {r.resources}")
        print("  generated stack files: bench/large_stack.py --resources N --write TMP")
        report(results, generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
