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
def _project_root() -> Path:
    """The Pulumi project (``Pulumi.yaml``, ``Pulumi.<stack>.yaml``): the checkout this package
    sits in, or, for a package installed from a wheel, the directory the command runs in (as
    with the ``pulumi`` CLI)."""
    checkout = Path(__file__).resolve().parent.parent
    return checkout if (checkout / "Pulumi.yaml").is_file() else Path.cwd()


PROJECT_ROOT = _project_root()
#: the stack every command plans, checks or deploys when none is named (``make plan`` too).
DEFAULT_STACK = "dev"
#: libyaml's safe loader when PyYAML was built with it (6x faster on a 1,000-resource stack),
#: else the pure-Python one; both build the same plain types.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


def stack_file(stack: str | None, config_file: str | None = None, project: Path = PROJECT_ROOT) -> Path:
    """``--config-file PATH`` as given, else ``Pulumi.<stack>.yaml`` of the project (the default stack's)."""
    if config_file:
        return Path(config_file)
    return project / f"Pulumi.{stack or DEFAULT_STACK}.yaml"


def stack_name(stack: str | None, config_file: str | None = None) -> str:
    """``--stack NAME``, else the name in ``Pulumi.<name>.yaml`` of ``--config-file``, else the default."""
    if stack:
        return stack
    if config_file:
        return Path(config_file).name.removeprefix("Pulumi.").removesuffix(".yaml")
    return DEFAULT_STACK


def add_stack_arguments(parser) -> None:
    """``--stack NAME`` or ``--config-file PATH`` on an argparse parser (every command's)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--stack", "-s", help=f"stack name (reads Pulumi.<stack>.yaml; default {DEFAULT_STACK})")
    g.add_argument("--config-file", help="path of any stack file (its catalog path is relative to it)")


def yaml_error(err: Exception) -> str:
    """Where and why a YAML file could not be read, on one line (a parser's message spans several)."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1})" if mark else ""
    why = getattr(err, "problem", None) or (str(err) if isinstance(err, ValueError) else type(err).__name__)
    return f"{where}: {' '.join(str(why).split())}"


def read_stack_file(path: Path, name: str | None = None) -> StackConfig:
    try:
        doc = yaml.load(path.read_text(), Loader=SAFE_LOADER) or {}
    except FileNotFoundError:
        raise ConfigError([problem(str(path), "no such stack file")]) from None
    except (yaml.YAMLError, ValueError, RecursionError) as err:   # ValueError: a 5,000-digit integer
        raise ConfigError([problem(str(path), f"not valid YAML{yaml_error(err)}")]) from None
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
        doc = yaml.load(path.read_text(), Loader=SAFE_LOADER) or {}
    except FileNotFoundError:
        raise ConfigError([problem("phoenix:catalog", f"no such file {catalog} (paths are relative to the stack "
                                   f"file's directory, {root.resolve()})")]) from None
    except (IsADirectoryError, PermissionError) as err:
        raise ConfigError([problem("phoenix:catalog", f"cannot read {path}: {err.strerror}")]) from None
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        raise ConfigError([problem("phoenix:catalog", f"{catalog} is not valid YAML{yaml_error(err)}")]) from None
    extra = [k for k in doc if k != "services"] if isinstance(doc, dict) else ["(not a mapping)"]
    if extra:
        raise ConfigError([problem(f"phoenix:catalog ({catalog})", f"unknown key {k!r}") for k in extra])
    if "services" in raw:
        raise ConfigError([problem("phoenix:services", "given both inline and in phoenix:catalog; keep one")])
    raw["services"] = doc.get("services") or []
    return raw
