"""``phoenix state-export``: the stack's state in a file, for the backups of what lives only in Pulumi.

The root CA's and the intermediate's keys, the deploy key, the TSIG key, the Step-CA and
Portainer agent secrets exist nowhere but in the stack's state (``pulumi up`` made them). A guest
restored from its vzdump backup still needs them, and a lost backend would lose them all: the
export is what brings them back (docs/ha-and-backups.md). It is the state as ``pulumi stack
export`` writes it, every secret still ciphertext of the stack's secrets provider (a passphrase,
or a cloud KMS): the file alone reveals no secret, and restoring it needs that provider too.

The file is made new (an existing file is refused, never overwritten), readable by its owner only
(0600) from the first byte, and written whole or not at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phoenix.errors import ConfigError, Failed, problem

#: how Pulumi marks a secret in a state file, and the key a decrypted one would carry.
SECRET_SIG = "4dabf18193072939515e22adb298388d"
PLAINTEXT = "plaintext"


@dataclass(frozen=True)
class Exported:
    path: Path
    resources: int
    secrets: int
    provider: str


def secret_values(node: Any) -> list[dict]:
    """Every secret value object in a state document."""
    if isinstance(node, dict):
        if node.get(SECRET_SIG) is not None:
            return [node]
        return [s for v in node.values() for s in secret_values(v)]
    if isinstance(node, list):
        return [s for v in node for s in secret_values(v)]
    return []


def check_state(text: str) -> dict:
    """The exported state, refused (Failed) unless every secret in it is ciphertext."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise Failed(f"pulumi stack export printed no state ({err.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("deployment"), dict):
        raise Failed("pulumi stack export printed no deployment")
    clear = [s for s in secret_values(doc) if PLAINTEXT in s or "ciphertext" not in s]
    if clear:
        raise Failed(f"pulumi stack export gave {len(clear)} secret(s) in clear; nothing was written")
    return doc


def write_private(path: Path, text: str) -> None:
    """``text`` into a new file, mode 0600 from its creation; the file exists whole or not at all."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ConfigError([problem("--out", f"{path} exists; an export never overwrites a file")]) from None
    except OSError as err:
        raise ConfigError([problem("--out", f"cannot create {path}: {err.strerror}")]) from None
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)     # whatever the umask
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def export(stack, path: Path) -> Exported:
    """Export ``stack`` (a ``phoenix.automation.PhoenixStack``) to ``path``."""
    text = stack.export_state()
    doc = check_state(text)
    write_private(path, text)
    deployment = doc["deployment"]
    provider = (deployment.get("secrets_providers") or {}).get("type") or "none"
    return Exported(path, len(deployment.get("resources") or []), len(secret_values(doc)), provider)
