"""Reading raw config into a ``Lab``: every problem at once, each one line naming its key path.

Before the schema sees the config, ``raw_problems`` walks all of it once: no text anywhere (a
value or a mapping key) may hold a control, format or line-separator character, none may be
longer than ``MAX_TEXT``, and the whole is bounded (a YAML alias bomb is refused, not walked).
Each problem line quotes a value only escaped and shortened, so it stays one line whatever the
value holds.
"""

from __future__ import annotations

import re

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from phoenix.errors import ConfigError, problem
from phoenix.model.checks import cross_checks
from phoenix.model.fields import MAX_TEXT, shown, unsafe_character
from phoenix.model.lab import CONFIG_KEYS, Lab
from phoenix.model.secrets import OPERATOR_SECRETS

#: values, keys and items the raw config may hold in all (a 1,000-service catalog has ~20,000),
#: and how deep (the model itself is six levels deep).
MAX_NODES = 1_000_000
MAX_DEPTH = 32
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: parts of pydantic's error locations that are its own (validator and type tags), not keys.
_INTERNAL_LOC = re.compile(r"\[key\]|(?:function|constrained)-[a-z-]+(?:\[.*\])?|[a-z-]+\[.*\]")


def _key(part: object) -> str:
    """A mapping key as a path part: as it is when plain, else quoted and escaped."""
    text = str(part)
    return text if _PLAIN_KEY.fullmatch(text) else shown(text)


def _loc_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-after", "function-", "constrained")):
            continue
        else:
            path += ("." if path else "") + _key(part)
    return f"phoenix:{path}" if path else "phoenix"


def raw_problems(raw: dict) -> list[str]:
    """Unsafe characters and oversized text anywhere in ``raw``, and a bound on its size."""
    out: list[str] = []
    budget = [MAX_NODES]

    def text(value: str, where: str, what: str) -> None:
        bad = unsafe_character(value)
        if bad:
            out.append(problem(where, f"{what} holds the character {bad}; no value may hold control, "
                               "format or line-separator characters"))
        elif len(value) > MAX_TEXT:
            out.append(problem(where, f"{what} is {len(value)} characters long; at most {MAX_TEXT}"))

    def walk(value: object, where: str, depth: int = 0) -> bool:
        budget[0] -= 1
        if budget[0] < 0:
            return False
        if depth > MAX_DEPTH and isinstance(value, (dict, list)):
            out.append(problem(where, f"is nested deeper than {MAX_DEPTH} levels"))
            return True
        if isinstance(value, str):
            text(value, where, "the value")
        elif isinstance(value, dict):
            for k, v in value.items():
                at = f"{where}.{_key(k)}" if where != "phoenix" else f"phoenix:{_key(k)}"
                if isinstance(k, str):
                    text(k, at, "the key")
                if not walk(v, at, depth + 1):
                    return False
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if not walk(v, f"{where}[{i}]", depth + 1):
                    return False
        return True

    if not walk(raw, "phoenix"):
        return [problem("phoenix", f"the configuration holds more than {MAX_NODES} values (a YAML alias "
                        "repeated into itself?); refused unread")]
    return out


def _message(e: ErrorDetails) -> str:
    """pydantic's error as one sentence, never quoting the input unescaped."""
    kind, msg, given = e["type"], e["msg"], e.get("input")
    if kind == "extra_forbidden":
        return "unknown key (a typo?)"
    if kind == "missing":
        return "required key is missing"
    if kind in ("int_type", "bool_type", "string_type", "list_type", "dict_type", "model_type",
                "int_from_float", "model_attributes_type"):
        want = {"int_type": "a whole number", "int_from_float": "a whole number", "bool_type": "true or false",
                "string_type": "text", "list_type": "a list", "dict_type": "a mapping"}.get(kind, "a mapping")
        got = ("true/false" if isinstance(given, bool) else f"the text {shown(given)}" if isinstance(given, str)
               else type(given).__name__)
        hint = " (no quotes: a quoted number or yes/no is text)" if isinstance(given, str) else ""
        return f"must be {want}, not {got}{hint}"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    return msg


def _pydantic_problems(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and _INTERNAL_LOC.fullmatch(p)))
        lines.append(problem(_loc_path(loc), _message(e)))
    return lines


def secret_names(raw: dict) -> set[str]:
    """Keys of the namespace that hold secrets, not model values: the operator's, and those the
    catalog's compose stacks name (read from the raw catalog, so they are known even when the
    model is refused)."""
    names = set(OPERATOR_SECRETS)
    services = raw.get("services")
    for s in services if isinstance(services, list) else []:
        compose = s.get("compose") if isinstance(s, dict) else None
        env = compose.get("secretEnvironment") if isinstance(compose, dict) else None
        if isinstance(env, dict):
            names |= {ref.partition(":")[2] for ref in env.values() if isinstance(ref, str)}
    return names


def parse_lab(raw: dict) -> Lab:
    """Validate raw config (``{"guests": [...], ...}``) into a Lab, or raise ConfigError.

    ``raw`` may hold every key of the namespace: a secret's key is left to
    ``phoenix.model.secrets`` (set, and set as a secret?); any other unknown key is refused."""
    early = raw_problems(raw)
    if early:
        raise ConfigError(early)
    unknown = [k for k in raw if k not in CONFIG_KEYS and k != "catalog" and k not in secret_names(raw)]
    unknown_lines = [problem(f"phoenix:{_key(k)}", "unknown key (a typo?)") for k in unknown]
    try:
        lab = Lab.model_validate({k: v for k, v in raw.items() if k in CONFIG_KEYS})
    except ValidationError as err:
        raise ConfigError(_pydantic_problems(err) + unknown_lines) from None
    problems = unknown_lines + cross_checks(lab)
    if problems:
        raise ConfigError(problems)
    return lab


def json_schema() -> dict:
    """The model's JSON Schema (by alias), for editors and the config reference."""
    return Lab.model_json_schema(by_alias=True)
