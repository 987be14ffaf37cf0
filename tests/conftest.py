"""Shared fixtures: stack configs, plans of the shipped stacks, and edited copies of them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import pytest

from phoenix.plan import make_plan
from phoenix.stackfile import StackConfig, read_stack_file

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT.parent / "shared" / "schemas"
SHIPPED_STACKS = ("dev", "cluster")

pytest_plugins = ["lab"]


def stack_config(name: str = "dev") -> StackConfig:
    return read_stack_file(ROOT / f"Pulumi.{name}.yaml")


def edited(name: str, edit: Callable[[dict], None]) -> StackConfig:
    """A copy of a shipped stack with ``edit`` applied to its raw ``phoenix:*`` values.

    The catalog file is folded in first, so edits can touch ``services`` directly.
    """
    from phoenix.stackfile import expand_catalog
    stack = stack_config(name)
    raw = copy.deepcopy(expand_catalog(stack.phoenix(), stack.root))
    edit(raw)
    values = {k: v for k, v in stack.values.items() if not k.startswith("phoenix:") or k in stack.secret_keys}
    values.update({f"phoenix:{k}": v for k, v in raw.items()})
    return StackConfig(stack.name, values, set(stack.secret_keys), stack.root)


_plans: dict[str, object] = {}


def shipped_plan(name: str):
    """The plan of a shipped stack, made once per test session."""
    if name not in _plans:
        _plans[name] = make_plan(stack_config(name))
    return _plans[name]


@pytest.fixture(scope="session")
def dev_plan():
    return shipped_plan("dev")


@pytest.fixture(scope="session")
def cluster_plan():
    return shipped_plan("cluster")


@pytest.fixture(params=SHIPPED_STACKS)
def any_plan(request):
    return shipped_plan(request.param)
