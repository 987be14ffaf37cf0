"""Plan diffs: what `pulumi up` would do between two offline plans, and every pushed file that changed.

A plan (``phoenix plan``) is deterministic: the same config gives a byte-identical plan.json
and files/. So the difference of two plans is exactly what a change of config or code does:
resources created, updated, replaced or deleted, and the files each guest would receive.

Replacement is judged the way the engine judges it: an input path listed in the resource's
recorded ``replaceOnChanges`` (remote commands: ``triggers[*]``), or an input the provider
itself replaces on change (``REPLACE_RULES``, from the providers' schemas, sources noted).
A replaced resource gets a new id; whatever takes that id as an input follows it (a command
whose trigger is a replaced guest is replaced too). Each replacement names its reason.

A replaced resource also changes what it computed at creation (a guest's MAC address, which
every step on the guest is triggered by), and whatever says ``replaceWith`` it is replaced too.

* ``rules``: the providers' replace rules; ``snapshot``: a plan read from disk or taken in
  process; ``compute``: the diff; ``hazards``: what would lose a guest, its data or a protected
  resource (errors); ``steps``: the order `pulumi up` runs the changes in; ``render``: plain
  text and Markdown.
"""

from phoenix.diff.compute import (
    BUNDLE,
    KINDS,
    Change,
    FileChange,
    PlanDiff,
    _guest_of,
    created_values,
    diff,
    diff_files,
    flatten,
    guest_index,
)
from phoenix.diff.hazards import IDENTITY, Hazard, hazards, identity, static_hazards
from phoenix.diff.render import MARKDOWN_FILE_BUDGET, render_markdown, render_plain
from phoenix.diff.rules import REPLACE_RULES, ReplaceRule, path_matches, replacement_reasons
from phoenix.diff.snapshot import Snapshot, from_document, load, snapshot
from phoenix.diff.steps import dependency_order, execution_order
from phoenix.resource_types import COMMAND, GUEST_TYPES

__all__ = ["BUNDLE", "KINDS", "Change", "FileChange", "PlanDiff", "_guest_of", "created_values", "diff",
           "diff_files", "flatten", "guest_index", "IDENTITY", "Hazard", "hazards", "identity", "static_hazards",
           "dependency_order", "execution_order", "MARKDOWN_FILE_BUDGET", "render_markdown", "render_plain",
           "REPLACE_RULES", "ReplaceRule", "path_matches", "replacement_reasons", "Snapshot", "from_document", "load",
           "snapshot", "COMMAND", "GUEST_TYPES"]
