"""Rendering: topology in, file text out. Templates live in ``configs/<tier>/``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(CONFIGS)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)
    return env


def render(template: str, **context) -> str:
    """Render ``configs/<template>`` (e.g. ``dns/named.conf.j2``)."""
    return environment().get_template(template).render(**context)


def config_text(path: str) -> str:
    """A file under ``configs/`` shipped as it is (scripts that need no rendering)."""
    return (CONFIGS / path).read_text()
