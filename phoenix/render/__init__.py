"""Rendering: topology in, file text out. Templates live in ``configs/<tier>/``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"

#: Where every guest keeps the scripts Phoenix pushes, and the transactional installer they go through.
SCRIPTS = "/usr/local/lib/phoenix"
APPLY = "/usr/local/sbin/phoenix-apply"

#: Every TLS server Phoenix configures (gateway, sidecars): Mozilla's "intermediate" TLS 1.2
#: suites, no DHE; TLS 1.3 suites are OpenSSL's defaults.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


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
