"""Change blast radius (issue 8): what one catalog change touches, on the dev and the large stack.

For each stack, plans the stack as it is and three edited copies, and diffs each against it
with ``phoenix.diff`` (the same engine as ``phoenix diff``):

  (a) add one public service on an existing guest (a free port),
  (b) add a replica to one service (one more guest),
  (c) change a GPU service's model.

Prints, per change: resources created / updated / replaced / deleted, pushed files changed,
the tiers touched, guests replaced (target: 0) and the share of the stack's resources touched.
No wall-clock figure is asserted.

    .venv/bin/python bench/blast_radius.py [--stacks dev,large] [--list]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phoenix import diff  # noqa: E402
from phoenix.model import LXC_ROLES, SINGLETON_ROLES, parse_lab  # noqa: E402
from phoenix.plan import make_plan  # noqa: E402
from phoenix.stackfile import StackConfig, expand_catalog, read_stack_file  # noqa: E402


def edited(stack: StackConfig, edit: Callable[[dict], str]) -> tuple[StackConfig, str]:
    """A copy of ``stack`` with ``edit`` applied to its raw values, and what ``edit`` says it did."""
    raw = copy.deepcopy(expand_catalog(stack.phoenix(), stack.root))
    what = edit(raw)
    values = {k: v for k, v in stack.values.items() if not k.startswith("phoenix:") or k in stack.secret_keys}
    values.update({f"phoenix:{k}": v for k, v in raw.items()})
    return StackConfig(stack.name, values, set(stack.secret_keys), stack.root), what


def _free_port(raw: dict, guest: str, start: int = 18080) -> int:
    lab = parse_lab(raw)
    used = {s.port for s in lab.services if guest in s.guests}
    port = start
    while port in used:
        port += 1
    return port


def add_public_service(raw: dict) -> str:
    lab = parse_lab(raw)
    host = next(g for role in ("agent", "portainer", "gpu") for g in lab.guests if g.role == role)
    port = _free_port(raw, host.name)
    raw["services"].append({"name": "blast-probe", "guests": [host.name], "port": port, "public": True,
                            "publicHost": f"blast-probe.{lab.domains.public}", "health": "/health"})
    return f"add public service blast-probe on {host.name}:{port}"


def add_replica(raw: dict) -> str:
    lab = parse_lab(raw)
    for i, s in enumerate(lab.services):
        roles = {lab.guest(g).role for g in s.guests}
        pool = [g for g in lab.guests if g.role in roles and g.name not in s.guests
                and g.role not in SINGLETON_ROLES and (not s.gpu or g.gpus or g.gpu_mapping)
                and not any(g.name in o.guests and o.port == s.port for o in lab.services)]
        if pool:
            raw["services"][i]["guests"] = [*s.guests, pool[0].name]
            return f"service {s.name}: {len(s.guests)} -> {len(s.guests) + 1} replicas (+{pool[0].name})"
    # No guest of the same role is free: any non-singleton guest (an LXC for a GPU service).
    for i, s in enumerate(lab.services):
        if s.gpu:
            continue
        pool = [g for g in lab.guests if g.name not in s.guests and g.role not in SINGLETON_ROLES
                and g.role not in LXC_ROLES
                and not any(g.name in o.guests and o.port == s.port for o in lab.services)]
        if pool:
            raw["services"][i]["guests"] = [*s.guests, pool[0].name]
            return f"service {s.name}: {len(s.guests)} -> {len(s.guests) + 1} replicas (+{pool[0].name})"
    raise SystemExit("no service can take another replica in this stack")


def change_gpu_model(raw: dict) -> str:
    for s in raw["services"]:
        if s.get("gpu") and (s.get("run") or {}).get("model"):
            old = s["run"]["model"]
            s["run"]["model"] = old + "-v2"
            return f"service {s['name']}: model {old} -> {old}-v2"
    raise SystemExit("no GPU service with a model in this stack")


CHANGES = {"(a) add public service": add_public_service,
           "(b) one more replica": add_replica,
           "(c) GPU model": change_gpu_model}


def stacks(names: list[str]) -> dict[str, StackConfig]:
    out = {}
    for name in names:
        if name == "large":
            from bench.large_stack import large_stack
            out[name] = large_stack()
        else:
            out[name] = read_stack_file(ROOT / f"Pulumi.{name}.yaml")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", default="dev,large", help="comma-separated: dev, cluster, large")
    ap.add_argument("--list", action="store_true", help="also list every changed resource")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)     # the plan's config warnings are not the point here
    rows, missed = [], []
    for name, stack in stacks(args.stacks.split(",")).items():
        started = time.perf_counter()
        base_plan = make_plan(stack)
        base = diff.snapshot(base_plan)
        total = sum(1 for r in base_plan.run.resources if r.custom)
        for label, edit in CHANGES.items():
            variant, what = edited(stack, edit)
            result = diff.diff(base, diff.snapshot(make_plan(variant)))
            counts = result.counts()
            touched = sum(counts.values())
            tiers = sorted({c.tier for c in result.changes})
            guests = [c.name for c in result.replaced_guests]
            if guests:
                missed.append(f"{name} {label}: guests replaced: {', '.join(guests)}")
            rows.append((name, total, label, what, counts, len(result.files), tiers, guests, touched))
            if args.list:
                print(f"--- {name} {label}: {what}")
                print(result.render("plain", files=False))
        print(f"{name}: 4 plans in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    head = (f"{'stack':<6} {'res.':>5}  {'change':<24} {'create':>6} {'update':>6} {'replace':>7} {'delete':>6} "
            f"{'files':>5} {'touched':>8} {'guests replaced':>15}  tiers")
    print(head)
    print("-" * len(head))
    for name, total, label, _what, counts, files, tiers, guests, touched in rows:
        print(f"{name:<6} {total:>5}  {label:<24} {counts['create']:>6} {counts['update']:>6} "
              f"{counts['replace']:>7} {counts['delete']:>6} {files:>5} {touched / total:>7.1%} "
              f"{len(guests):>15}  {', '.join(tiers)}")
    print()
    for name, _total, label, what, *_ in rows:
        print(f"{name} {label}: {what}")
    print("guest replacements: " + ("none (target: none)" if not missed else "; ".join(missed) + " (TARGET MISSED)"))
    print(f"command: .venv/bin/python bench/blast_radius.py --stacks {args.stacks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
