"""Rendering: topology in, file text out. Templates live in ``configs/<tier>/``."""

from __future__ import annotations

import contextlib
import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.bccache


def _configs() -> Path:
    """``configs/`` of the checkout, or ``phoenix/configs`` inside an installed wheel."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


CONFIGS = _configs()

#: Where every guest keeps the scripts Phoenix pushes, and the transactional installer they go through.
SCRIPTS = "/usr/local/lib/phoenix"
APPLY = "/usr/local/sbin/phoenix-apply"
#: reloads nginx and waits until the new configuration serves (configs/common/phoenix-nginx-reload.sh)
NGINX_RELOAD_HELPER = "/usr/local/sbin/phoenix-nginx-reload"
#: restores the previous files of an apply cut short, at boot (configs/common/phoenix-apply-recover.service)
APPLY_RECOVER_UNIT = "phoenix-apply-recover.service"

#: Every TLS server Phoenix configures (gateway, sidecars): Mozilla's "intermediate" TLS 1.2
#: suites, no DHE; TLS 1.3 suites are OpenSSL's defaults.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


class _CompiledTemplates(jinja2.FileSystemBytecodeCache):
    """Compiled templates kept between runs, as Python keeps ``.pyc`` files: compiling the
    forty-odd templates was a tenth of a second of every ``phoenix plan``. Jinja recompiles a
    template whose source changed; the directory's name carries the Jinja version and the
    options (Jinja's own check covers the Python version). Never an error: a cache that
    cannot be written is skipped."""

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _template_cache(options: dict) -> jinja2.BytecodeCache | None:
    key = hashlib.sha256(repr((jinja2.__version__, sorted((k, getattr(v, "__name__", v))
                                                         for k, v in options.items()))).encode())
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = base / "phoenix" / f"templates-{key.hexdigest()[:16]}"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.stat()
    except (OSError, RuntimeError):   # no home, read-only file system
        return None
    # Compiled templates are code: only from a folder no one else can write.
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None
    return _CompiledTemplates(str(folder))


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    options: dict[str, Any] = dict(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                   trim_blocks=True, lstrip_blocks=True, autoescape=False)
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(CONFIGS)),
                              bytecode_cache=_template_cache(options), **options)


def render(template: str, **context) -> str:
    """Render ``configs/<template>`` (e.g. ``dns/named.conf.j2``)."""
    return environment().get_template(template).render(**context)


def config_text(path: str) -> str:
    """A file under ``configs/`` shipped as it is (scripts that need no rendering)."""
    return (CONFIGS / path).read_text()
