"""The offline plan: the real program under the recording engine, written out for review.

One stack file, loaded once (``phoenix.loader``, ``Mode.PLAN``): the model, the artifacts and
the route audit the plan prints are those the program deploys, because the program runs
``phoenix.program.deploy`` with that same ``Loaded``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from phoenix.loader import Loaded, Mode, load_stack
from phoenix.model import Lab, parse_lab, required_secrets
from phoenix.stackfile import NAMESPACE, StackConfig, expand_catalog


def with_placeholder_secrets(stack: StackConfig, lab: Lab | None = None) -> tuple[StackConfig, list[str]]:
    """Secrets not set in the stack file (or set as ciphertext the plan cannot decrypt) are planned
    with a placeholder; a warning names each one that is not set. ``lab``: the stack's model,
    when it is parsed already."""
    if lab is None:
        lab = parse_lab(expand_catalog(stack.phoenix(), stack.root))
    warnings = []
    values, secret_keys = dict(stack.values), set(stack.secret_keys)
    needed = [f"{NAMESPACE}:{key}" for key in required_secrets(lab, f"{NAMESPACE}:proxmoxApiToken" in values)]
    for full in needed:
        if full not in values or full in stack.ciphertext:
            if full not in values:
                warnings.append(f"{full} is not set: planned with a placeholder; set it with "
                                f"`pulumi config set --secret {full} ...` before `pulumi up`")
            # Derived, not random: two plans of one config must be byte-identical.
            values[full] = "plan-placeholder-" + hashlib.sha256(f"{stack.name}:{full}".encode()).hexdigest()[:24]
            secret_keys.add(full)
    return StackConfig(stack.name, values, secret_keys, stack.root, stack.ciphertext - set(needed)), warnings


def plan_loaded(stack: StackConfig, loaded: Loaded, facts: dict[str, str] | None = None,
                stream_to: Path | None = None, with_secrets: bool = False):
    """Run the program for an already loaded stack and return a Plan (nothing is parsed again).
    ``stream_to``: the directory ``Plan.write`` will write (with ``with_secrets``): its files/ are
    written while the program runs (``phoenix.plan.stream``)."""
    from phoenix.plan.engine import run_program
    from phoenix.plan.writer import Plan, collect_secrets, guest_names_by_address
    from phoenix.program import deploy
    stack, warnings = with_placeholder_secrets(stack, loaded.lab)
    config_secrets = {k: v for k, v in stack.values.items() if k in stack.secret_keys and isinstance(v, str)}
    stream = None
    if stream_to is not None:
        from phoenix.plan.stream import FileStream
        stream = FileStream(stream_to, stack.name, guest_names_by_address(loaded.topo), config_secrets, with_secrets)
    try:
        run = run_program(stack, program=lambda: deploy(loaded), facts=facts,
                          on_record=stream.feed if stream is not None else None)
    except BaseException:
        if stream is not None:
            stream.abort()
        raise
    return Plan(run, loaded.topo, collect_secrets(run, config_secrets), warnings + loaded.warnings, stream)


def make_plan(stack: StackConfig, facts: dict[str, str] | None = None):
    """Load, run, and return a Plan. Raises ConfigError on bad input (before any resource)."""
    return plan_loaded(stack, load_stack(stack, Mode.PLAN), facts)
