"""Reading a stack's ``Pulumi.<stack>.yaml`` the way the Pulumi engine hands it to the program.

Used by the offline plan and the tests (the mock runtime does not read stack files). The
real program gets the same values from ``pulumi.Config``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError, problem

NAMESPACE = "phoenix"


@dataclass
class StackConfig:
    """A stack's config: plain values by full key, and which keys are secret."""
    name: str
    values: dict[str, object]
    secret_keys: set[str] = field(default_factory=set)
    root: Path = Path(".")
    #: secret keys whose value is still ciphertext (``secure:`` in the file): the plan never decrypts.
    ciphertext: set[str] = field(default_factory=set)

    def phoenix(self) -> dict:
        """The ``phoenix:*`` keys as a raw dict for the model (without secrets)."""
        ns = NAMESPACE + ":"
        return {k[len(ns):]: v for k, v in self.values.items()
                if k.startswith(ns) and k not in self.secret_keys}

    def as_engine_config(self) -> dict[str, str]:
        """What the Pulumi engine passes the program: every value a string, objects as JSON."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.values.items()}


def read_stack_file(path: Path, name: str | None = None) -> StackConfig:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError([problem(str(path), "no such stack file")]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError([problem(str(path), f"not valid YAML{where}: {getattr(err, 'problem', err)}")]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config", {}), dict):
        raise ConfigError([problem(str(path), "expected a mapping with a 'config' mapping")])
    values: dict[str, object] = {}
    secrets: set[str] = set()
    for key, value in (doc.get("config") or {}).items():
        if ":" not in key:
            key = f"{NAMESPACE}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            secrets.add(key)
            value = value["secure"]   # ciphertext; the plan never decrypts it
        values[key] = value
    stack = name or path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    return StackConfig(stack, values, secrets, path.parent, set(secrets))


def expand_catalog(raw: dict, root: Path) -> dict:
    """``phoenix:catalog`` names a YAML file of ``services:``; fold it into the raw config."""
    catalog = raw.get("catalog")
    if catalog is None:
        return raw
    raw = dict(raw)
    del raw["catalog"]
    if not isinstance(catalog, str):
        raise ConfigError([problem("phoenix:catalog", "must be a path to a YAML file with a 'services' list")])
    path = (root / catalog)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError([problem("phoenix:catalog", f"no such file {catalog}")]) from None
    except yaml.YAMLError as err:
        raise ConfigError([problem("phoenix:catalog", f"{catalog} is not valid YAML: {err}")]) from None
    extra = [k for k in doc if k != "services"] if isinstance(doc, dict) else ["(not a mapping)"]
    if extra:
        raise ConfigError([problem(f"phoenix:catalog ({catalog})", f"unknown key {k!r}") for k in extra])
    if "services" in raw:
        raise ConfigError([problem("phoenix:services", "given both inline and in phoenix:catalog; keep one")])
    raw["services"] = doc.get("services") or []
    return raw
