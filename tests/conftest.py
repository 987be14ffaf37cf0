"""Shared fixtures: stack configs, plans of the shipped stacks, and edited copies of them."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from phoenix.plan import make_plan
from phoenix.stackfile import StackConfig, read_stack_file

ROOT = Path(__file__).resolve().parent.parent
#: JSON Schemas the tests validate against, kept in the repository (origins in its README).
SCHEMAS = ROOT / "tests" / "schemas"
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


# -- in CI a skip is a failure ----------------------------------------------------------------
#: the only skip CI allows: what needs the Pulumi CLI, which no Debian or PyPI package ships.
ALLOWED_CI_SKIPS = ("the pulumi CLI is not installed",)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``CI=true`` a skipped test fails the run (a missing tool can no longer pass
    silently), except the skips in ``ALLOWED_CI_SKIPS``."""
    outcome = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(allowed in reason for allowed in ALLOWED_CI_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped in CI (CI=true), which counts as a failure: {reason}"
