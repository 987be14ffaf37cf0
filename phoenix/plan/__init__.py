"""The offline plan: the real program under the recording engine, written out for review."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from phoenix.model import parse_lab
from phoenix.stackfile import NAMESPACE, StackConfig, expand_catalog


def stack_path(root: Path, stack: str) -> Path:
    return root / f"Pulumi.{stack}.yaml"


def with_placeholder_secrets(stack: StackConfig) -> tuple[StackConfig, list[str]]:
    """Operator secrets not set in the stack file are planned with a random placeholder."""
    warnings = []
    values, secret_keys = dict(stack.values), set(stack.secret_keys)
    lab = parse_lab(expand_catalog(stack.phoenix(), stack.root))
    from phoenix.render.stacks import required_secrets
    needed = ["portainerAdminPassword"] if lab.role("portainer") else []
    needed += sorted(required_secrets(lab))
    if f"{NAMESPACE}:proxmoxApiToken" not in values:
        needed.insert(0, "proxmoxPassword")
    for key in needed:
        full = f"{NAMESPACE}:{key}"
        if full not in values or full in stack.ciphertext:
            # Not set, or set as ciphertext the plan cannot decrypt: plan with a placeholder.
            if full not in values:
                warnings.append(f"{full} is not set: planned with a placeholder; set it with "
                                f"`pulumi config set --secret {full} ...` before `pulumi up`")
            # Derived, not random: two plans of one config must be byte-identical.
            values[full] = "plan-placeholder-" + hashlib.sha256(f"{stack.name}:{full}".encode()).hexdigest()[:24]
            secret_keys.add(full)
    return StackConfig(stack.name, values, secret_keys, stack.root,
                       stack.ciphertext - set(f"{NAMESPACE}:{k}" for k in needed)), warnings


def make_plan(stack: StackConfig, facts: Optional[dict[str, str]] = None):
    """Validate, run, and return a Plan. Raises ConfigError on bad input (before any resource)."""
    from phoenix.plan.engine import run_program
    from phoenix.plan.writer import Plan, collect_secrets
    from phoenix.program import load_from_stack
    stack, warnings = with_placeholder_secrets(stack)
    lab, topo, more = load_from_stack(stack)
    run = run_program(stack, facts=facts)
    config_secrets = {k: v for k, v in stack.values.items() if k in stack.secret_keys and isinstance(v, str)}
    return Plan(run, topo, collect_secrets(run, config_secrets), warnings + more)
