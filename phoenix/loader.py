"""One loader: a stack's config and its catalog, read once, checked once, rendered once.

Every path into Phoenix goes through ``load``: the offline plan and ``phoenix validate|graph|
verify|preview|up|drift`` with a stack file (``load_stack``), and the Pulumi program under
``pulumi up`` with the engine's config (``phoenix.program.main``). In: the raw ``phoenix:*``
values, the directory the catalog path is relative to (the stack file's; under ``pulumi up`` the
project directory, where ``Pulumi.<stack>.yaml`` is), which secrets are set, and the mode. Out:
the model, its topology, every tier's artifacts rendered once, the route audit of exactly those
artifacts, and the deploy readiness list; or ``ConfigError`` with every problem at once.

The mode is explicit: ``Mode.DEPLOY`` (what ``pulumi up`` runs) refuses a missing secret and a
missing release pin; ``Mode.PLAN`` (offline) shows the pins as warnings and leaves missing
secrets to the plan's placeholders. A secret set in plain text is refused in both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from phoenix.artifacts import Artifacts, render_all
from phoenix.audit import AuditReport, audit
from phoenix.errors import ConfigError
from phoenix.model import Lab, parse_lab, secret_problems
from phoenix.model.readiness import deploy_readiness
from phoenix.model.resilience_checks import resilience_warnings
from phoenix.model.secrets import portainer_password_problems
from phoenix.stackfile import NAMESPACE, StackConfig, expand_catalog
from phoenix.topology import Topology, build

#: what follows each deploy readiness line when the plan shows it as a warning.
PIN_WARNING = "(a real deployment refuses to start without it)"


class Mode(Enum):
    PLAN = "offline plan"
    DEPLOY = "deployment"


@dataclass(frozen=True)
class SecretState:
    """Which keys of the namespace (without ``phoenix:``) are set, which of them as secrets, and a
    value where it is known in clear (never shown: rules on values name only the key)."""
    is_set: Callable[[str], bool]
    is_secret: Callable[[str], bool]
    value: Callable[[str], str | None] = lambda key: None

    @classmethod
    def of_stack(cls, stack: StackConfig) -> SecretState:
        def value(key: str) -> str | None:
            full = f"{NAMESPACE}:{key}"
            found = stack.values.get(full)
            return found if isinstance(found, str) and full not in stack.ciphertext else None
        return cls(lambda key: f"{NAMESPACE}:{key}" in stack.values,
                   lambda key: f"{NAMESPACE}:{key}" in stack.secret_keys, value)


@dataclass(frozen=True)
class Loaded:
    """A validated stack: the one model every later step reads."""
    mode: Mode
    lab: Lab
    topo: Topology
    artifacts: Artifacts
    audit: AuditReport
    #: release pins a real deployment needs and the stack lacks (``Mode.PLAN`` only; DEPLOY refuses them)
    readiness: tuple[str, ...] = ()

    @property
    def warnings(self) -> list[str]:
        return [*self.audit.warnings, *(f"{line} {PIN_WARNING}" for line in self.readiness),
                *resilience_warnings(self.lab)]


def load(raw: dict, root: Path, mode: Mode, secrets: SecretState | None = None) -> Loaded:
    """Validate, render and audit a stack once. ``raw``: the namespace's non-secret values by key
    (``phoenix:catalog`` resolved against ``root``); ``secrets``: None to leave secrets unchecked
    (commands that never deploy)."""
    lab = parse_lab(expand_catalog(raw, root))
    topo = build(lab)
    artifacts = render_all(topo)
    report = audit(topo, artifacts)
    readiness = deploy_readiness(lab)
    problems = list(report.problems)
    if secrets is not None:
        problems += secret_problems(lab, secrets.is_set, secrets.is_secret, missing_ok=mode is Mode.PLAN)
        if lab.role("portainer"):
            problems += portainer_password_problems(secrets.value("portainerAdminPassword"))
    if mode is Mode.DEPLOY:
        problems += readiness
    if problems:
        raise ConfigError(problems)
    return Loaded(mode, lab, topo, artifacts, report, tuple(readiness) if mode is Mode.PLAN else ())


def load_stack(stack: StackConfig, mode: Mode = Mode.PLAN) -> Loaded:
    """A stack file (anywhere): its catalog beside it, its secrets as the file holds them."""
    return load(stack.phoenix(), stack.root, mode, SecretState.of_stack(stack))
