"""Driving a Phoenix stack from other tooling, through Pulumi's Automation API.

    from phoenix.automation import PhoenixStack
    stack = PhoenixStack("dev", on_output=print)
    stack.set_config({"phoenix:acme": {...}}, secrets={"phoenix:proxmoxPassword": pw})
    result = stack.preview()          # a Result: changes by kind, steps, outputs
    if result.has_changes:
        stack.up()
    report = stack.drift()            # preview --refresh --expect-no-changes

The stack lives in this project directory (``Pulumi.yaml``, ``Pulumi.<stack>.yaml``); the
program is the same ``__main__.py`` that ``pulumi up`` runs. An existing stack is selected, never
made up: a stack name the backend does not know is an error naming it (``StackNotFound``), so a
typo in ``preview``, ``drift``, ``refresh`` or ``destroy`` cannot create an empty stack (whose
preview would show the whole lab as new, and whose drift check would pass). Only ``phoenix up``
creates a stack (``create=True``), and only one whose ``Pulumi.<stack>.yaml`` the project has:
the first deployment of a stack someone wrote down. Secret config values reach the
CLI on standard input, never on its command line. Secret stack outputs stay masked in a
Result unless asked for with ``reveal=True``.

Everything here needs the ``pulumi`` CLI; without it, ``PulumiMissing`` says how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phoenix.errors import ConfigError, Failed, problem
from phoenix.stackfile import NAMESPACE, PROJECT_ROOT

INSTALL_HINT = ("the `pulumi` CLI is not installed (not found on PATH); install it from "
                "https://www.pulumi.com/docs/install/ or with `curl -fsSL https://get.pulumi.com | sh`")
SECRET_MASK = "[secret]"
#: what a Result counts; the engine's other kinds (create-replacement, read, ...) are kept too.
CHANGE_KINDS = ("create", "update", "replace", "delete")

OnOutput = Callable[[str], None]


class PulumiMissing(RuntimeError):
    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


class StackNotFound(ConfigError):
    """The backend has no stack of that name (and this operation does not create one)."""

    def __init__(self, name: str, backend_says: str = "") -> None:
        why = f" ({backend_says})" if backend_says else ""
        super().__init__([problem("--stack", f"no stack named {name!r} in the Pulumi backend{why}; `pulumi stack ls` "
                                  "lists them. Only `phoenix up` creates a stack, on its first deployment, and only "
                                  f"when the project has its Pulumi.{name}.yaml")])


def pulumi_binary() -> str | None:
    return shutil.which("pulumi")


def require_pulumi() -> str:
    found = pulumi_binary()
    if found is None:
        raise PulumiMissing()
    return found


# -- typed results ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One resource the operation touches (from the engine's resource events)."""
    op: str
    urn: str
    type: str
    diffs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass(frozen=True)
class Result:
    operation: str                     # preview | up | refresh | destroy | drift
    stack: str
    changes: Mapping[str, int]         # kind -> count, as the engine's summary reports them
    steps: tuple[Step, ...] = ()
    outputs: Mapping[str, Any] = field(default_factory=dict)
    secret_outputs: frozenset[str] = frozenset()
    stdout: str = ""

    @property
    def has_changes(self) -> bool:
        return any(count for kind, count in self.changes.items() if kind != "same")

    def count(self, kind: str) -> int:
        return int(self.changes.get(kind, 0))

    def summary(self) -> str:
        parts = [f"{self.count(k)} to {k}" for k in CHANGE_KINDS]
        other = {k: v for k, v in self.changes.items() if k not in CHANGE_KINDS and v}
        parts += [f"{v} {k}" for k, v in sorted(other.items())]
        return f"{self.operation} of stack {self.stack!r}: " + ", ".join(parts)


def change_counts(op_map: Mapping[Any, int] | None) -> dict[str, int]:
    """The engine's OpMap (keys are ``OpType`` or plain strings) as ``{"create": 2, ...}``."""
    out: dict[str, int] = {}
    for kind, count in (op_map or {}).items():
        out[str(getattr(kind, "value", kind))] = int(count)
    return out


def typed_outputs(output_map: Mapping[str, Any] | None, reveal: bool = False) -> tuple[dict, frozenset]:
    """Stack outputs (``OutputValue``s) as plain values; secrets masked unless ``reveal``."""
    values, secrets = {}, set()
    for key, out in (output_map or {}).items():
        if getattr(out, "secret", False):
            secrets.add(key)
            values[key] = out.value if reveal else SECRET_MASK
        else:
            values[key] = getattr(out, "value", out)
    return values, frozenset(secrets)


def _steps(events: list) -> tuple[Step, ...]:
    found = []
    for event in events:
        pre = getattr(event, "resource_pre_event", None)
        if pre is None or pre.metadata is None:
            continue
        m = pre.metadata
        op = str(getattr(m.op, "value", m.op))
        if op == "same" or m.type == "pulumi:pulumi:Stack":
            continue
        found.append(Step(op, m.urn, m.type, tuple(m.diffs or ())))
    return tuple(found)


def from_preview(res, stack: str, events: Sequence = (), operation: str = "preview") -> Result:
    return Result(operation, stack, change_counts(res.change_summary), _steps(list(events)),
                  stdout=res.stdout)


def from_update(operation: str, res, stack: str, events: Sequence = (), reveal: bool = False) -> Result:
    """UpResult, RefreshResult or DestroyResult (each has ``summary``; UpResult has outputs)."""
    outputs, secrets = typed_outputs(getattr(res, "outputs", None), reveal)
    summary = getattr(res, "summary", None)
    return Result(operation, stack, change_counts(getattr(summary, "resource_changes", None)),
                  _steps(list(events)), outputs, secrets, res.stdout)


def _first_line(err: Exception) -> str:
    text = (getattr(err, "stderr", "") or str(err)).strip().splitlines()
    return next((line.strip() for line in text if "no stack named" in line), "").removeprefix("error: ")


# -- config -------------------------------------------------------------------------------------
def config_key(key: str) -> str:
    if not key or any(c.isspace() for c in key):
        raise ConfigError([problem(repr(key), "not a config key")])
    return key if ":" in key else f"{NAMESPACE}:{key}"


def config_text(value: Any) -> str:
    """How a value is stored: strings as they are, anything else as JSON (read by get_object)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# -- the stack ----------------------------------------------------------------------------------
class PhoenixStack:
    """One Phoenix stack in this project directory, selected by name; ``create=True`` (``phoenix up``)
    also creates it when the backend does not have it yet and the project has its stack file."""

    def __init__(self, name: str, work_dir: Path | str = PROJECT_ROOT,
                 on_output: OnOutput | None = None, env: Mapping[str, str] | None = None,
                 create: bool = False):
        self.binary = require_pulumi()
        from pulumi import automation as auto
        self._auto = auto
        self.name, self.work_dir = name, Path(work_dir)
        self.on_output = on_output
        self.env = dict(env or {})
        opts = auto.LocalWorkspaceOptions(env_vars=self.env)
        try:
            self.stack = auto.select_stack(stack_name=name, work_dir=str(self.work_dir), opts=opts)
        except auto.StackNotFoundError as err:
            if not (create and (self.work_dir / f"Pulumi.{name}.yaml").is_file()):
                raise StackNotFound(name, _first_line(err)) from None
            self.stack = auto.create_stack(stack_name=name, work_dir=str(self.work_dir), opts=opts)

    # -- config --------------------------------------------------------------------------
    def set_config(self, values: Mapping[str, Any] | None = None, secrets: Mapping[str, str] | None = None) -> None:
        """Plain values through the SDK; secrets one by one on stdin (never on a command line)."""
        auto = self._auto
        plain = {config_key(k): auto.ConfigValue(config_text(v), secret=False)
                 for k, v in (values or {}).items()}
        if plain:
            self.stack.set_all_config(plain)
        for key, value in (secrets or {}).items():
            self._set_secret(config_key(key), value)

    def _set_secret(self, key: str, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigError([problem(key, "a secret must be a non-empty string")])
        env = {**os.environ, **self.env, "PULUMI_SKIP_UPDATE_CHECK": "true"}
        # `pulumi config set KEY` with no value reads it from stdin when not interactive.
        done = subprocess.run([self.binary, "config", "set", "--secret", "--non-interactive",
                               "--stack", self.name, key], input=value, text=True,
                              capture_output=True, cwd=self.work_dir, env=env, check=False)
        if done.returncode != 0:      # as the SDK reports a failed command: its output, not our argv
            raise self._auto.CommandError(self._auto.CommandResult(done.stdout, done.stderr, done.returncode))

    def config(self) -> dict[str, Any]:
        """The stack's config as Pulumi holds it; secret values masked."""
        return {k: (SECRET_MASK if v.secret else v.value) for k, v in self.stack.get_all_config().items()}

    # -- operations ----------------------------------------------------------------------
    def _collect(self) -> tuple[list, Callable]:
        events: list = []
        return events, events.append

    def preview(self, refresh: bool = False) -> Result:
        events, on_event = self._collect()
        res = self.stack.preview(on_output=self.on_output, on_event=on_event, refresh=refresh)
        return from_preview(res, self.name, events)

    def up(self, reveal: bool = False) -> Result:
        events, on_event = self._collect()
        res = self.stack.up(on_output=self.on_output, on_event=on_event)
        return from_update("up", res, self.name, events, reveal)

    def refresh(self) -> Result:
        events, on_event = self._collect()
        res = self.stack.refresh(on_output=self.on_output, on_event=on_event)
        return from_update("refresh", res, self.name, events)

    def destroy(self) -> Result:
        events, on_event = self._collect()
        res = self.stack.destroy(on_output=self.on_output, on_event=on_event)
        return from_update("destroy", res, self.name, events)

    def outputs(self, reveal: bool = False) -> tuple[dict, frozenset]:
        return typed_outputs(self.stack.outputs(), reveal)

    def export_state(self) -> str:
        """The stack's state as ``pulumi stack export`` writes it: every secret (the root and
        intermediate keys, the generated passwords) stays ciphertext of the stack's secrets
        provider. Not through the SDK: its ``Stack.export_stack`` passes ``--show-secrets``
        (pulumi/automation/_local_workspace.py ``export_stack``) and would decrypt them all."""
        env = {**os.environ, **self.env, "PULUMI_SKIP_UPDATE_CHECK": "true"}
        done = subprocess.run([self.binary, "stack", "export", "--stack", self.name], capture_output=True,
                              text=True, cwd=self.work_dir, env=env, check=False)
        if done.returncode != 0:
            # stderr only: whatever the CLI printed on stdout is state, never a message
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise Failed(f"pulumi stack export --stack {self.name} failed: {last.removeprefix('error: ')}")
        return done.stdout

    def drift(self, refresh: bool = True) -> Result:
        """``preview --refresh --expect-no-changes``: the lab as it is against what the program wants.

        Returns a Result whose ``has_changes`` is the drift; the steps name what drifted.
        """
        events, on_event = self._collect()
        try:
            res = self.stack.preview(on_output=self.on_output, on_event=on_event, refresh=refresh,
                                     expect_no_changes=True)
        except self._auto.CommandError:
            summaries = [e.summary_event for e in events if getattr(e, "summary_event", None)]
            steps = _steps(events)
            if not summaries and not steps:
                raise       # failed for another reason than changes
            counts = change_counts(summaries[0].resource_changes) if summaries else {}
            if not any(v for k, v in counts.items() if k != "same"):
                counts = {s.op: sum(1 for t in steps if t.op == s.op) for s in steps}
            return Result("drift", self.name, counts, steps)
        return from_preview(res, self.name, events, operation="drift")
