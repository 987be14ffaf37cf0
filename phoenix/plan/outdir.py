"""The directory a plan is written to: absent, empty, or a previous plan, never anything else.

A plan marks its directory (``MARKER``) before it writes anything else, so a directory is
recognised as a plan even when the last write was interrupted. Replacing a previous plan
removes only what a plan writes; a directory that is neither empty nor a plan is refused and
left as it is (``phoenix plan --out .`` in a checkout deletes nothing).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from phoenix.errors import ConfigError, problem

MARKER = ".phoenix-plan"
#: everything a plan writes into its directory (``phoenix.plan.writer.Plan.write``).
#: files/ while a plan writes it (``phoenix.plan.stream``); renamed to files/ when the plan is done
STAGING = "files.partial"
PLAN_ENTRIES = (MARKER, "plan.json", "files", "topology.mmd", "secrets", STAGING)


def is_plan(out: Path) -> bool:
    """Marked by a plan; or written by a Phoenix from before the marker: a plan.json and nothing
    but what a plan writes."""
    if (out / MARKER).is_file():
        return True
    return (out / "plan.json").is_file() and all(entry.name in PLAN_ENTRIES for entry in out.iterdir())


def check(out: Path) -> None:
    """Refuse (``--out``) a path that is not a directory, or a directory that is neither empty
    nor a previous plan. Touches nothing."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError([problem("--out", f"{out} exists and is not a directory")])
    if out.exists() and any(out.iterdir()) and not is_plan(out):
        raise ConfigError([problem("--out", f"{out} is not empty and is not a previous plan (it has no "
                                   f"{MARKER}): give a new or empty directory; nothing was deleted")])


def prepare(out: Path, stack: str, keep: str | None = None) -> None:
    """Make ``out`` ready for a new plan of ``stack`` and mark it, or refuse (``check``).
    ``keep``: an entry this plan has written already (its files, streamed while it ran)."""
    check(out)
    if out.exists():
        for name in PLAN_ENTRIES:
            if name == keep:
                continue
            entry = out / name
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            elif entry.is_dir():
                shutil.rmtree(entry)
    mark(out, stack)


def mark(out: Path, stack: str) -> None:
    """Create ``out`` if need be and mark it as a plan of ``stack``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(f"A Phoenix plan of stack {stack!r} (`phoenix plan`): the next plan written "
                              "here replaces plan.json, files/, topology.mmd and secrets/.\n")
