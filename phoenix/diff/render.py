"""A plan diff for people: plain text for a terminal, Markdown for a pull-request comment."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phoenix.diff.compute import Change, FileChange, PlanDiff

_SYMBOL = {"create": "+", "update": "~", "replace": "+-", "delete": "-"}


def _headline(d: PlanDiff) -> str:
    counts = d.counts()
    parts = [f"{counts['create']} to create", f"{counts['update']} to update",
             f"{counts['replace']} to replace", f"{counts['delete']} to delete"]
    guests = d.replaced_guests
    tail = ("no guest replaced" if not guests else
            f"GUESTS REPLACED OR DELETED: {', '.join(c.name for c in guests)}")
    return f"{', '.join(parts)}; {len(d.files)} pushed files changed; {tail}"


def _why(c: Change) -> str:
    bits = []
    if c.files:
        bits.append("files: " + ", ".join(c.files))
    elif c.fields and not (c.kind == "replace" and c.reasons):
        shown = [f"{k}: +{a} -{r} entries" for k, (a, r) in sorted(c.lists.items())]
        shown += [f for f in c.fields if f.split("[", 1)[0] not in c.lists]
        bits.append("changed: " + ", ".join(shown[:8]) + (" ..." if len(shown) > 8 else ""))
    bits += c.reasons
    return "; ".join(bits)


def render_plain(d: PlanDiff, files: bool = True) -> str:
    title = d.new if d.base == d.new else f"{d.base} -> {d.new}"
    lines = [f"Phoenix plan diff ({title}): {_headline(d)}"]
    if d.empty:
        lines.append("no changes")
    if d.hazards:
        lines.append(f"HAZARDS ({len(d.hazards)}): `pulumi up` would lose a guest, its data or a protected resource")
        lines += [f"  ! {h.line()}" for h in d.hazards]
    for c in d.changes:
        where = f"[{c.tier}{', ' + c.guest if c.guest else ''}]"
        lines.append(f"  {_SYMBOL[c.kind]:<2} {c.kind:<8} {c.name}  ({c.type}) {where}")
        if _why(c):
            lines.append(f"       {_why(c)}")
    if d.outputs:
        lines.append("stack outputs changed: " + ", ".join(d.outputs))
    if files and d.files:
        for guest, changed in _by_guest(d.files):
            lines.append(f"=== {guest}: {len(changed)} file(s) changed")
            lines += [f.diff.rstrip("\n") for f in changed]
    return "\n".join(lines) + "\n"


def _by_guest(files: list[FileChange]) -> list[tuple[str, list[FileChange]]]:
    grouped: dict[str, list[FileChange]] = defaultdict(list)
    for f in files:
        grouped[f.guest].append(f)
    return sorted(grouped.items())


#: a GitHub comment holds at most 65536 characters; leave room for the rest of the comment.
MARKDOWN_FILE_BUDGET = 50_000


def render_markdown(d: PlanDiff, files: bool = True) -> str:
    title = d.new if d.base == d.new else f"{d.base} → {d.new}"
    out = [f"### Phoenix plan diff: `{title}`", "", f"**{_headline(d)}**", ""]
    if d.empty:
        out.append("No changes: this pull request does not change what Phoenix deploys.")
        return "\n".join(out) + "\n"
    if d.hazards:
        out += ["> [!CAUTION]", f"> **{len(d.hazards)} hazard(s)**: `pulumi up` would lose a guest, its data or a "
                "protected resource", ">"]
        out += [f"> - `{h.resource}` ({h.kind}): {h.message}" for h in d.hazards]
        out.append("")
    if d.changes:
        out += ["| | action | resource | type | tier | guest | why |", "|---|---|---|---|---|---|---|"]
        for c in d.changes:
            why = _why(c).replace("|", "\\|")
            out.append(f"| `{_SYMBOL[c.kind]}` | {c.kind} | `{c.name}` | `{c.type}` | {c.tier} "
                       f"| {c.guest or ''} | {why} |")
        out.append("")
    if d.outputs:
        out += ["Stack outputs changed: " + ", ".join(f"`{o}`" for o in d.outputs), ""]
    if files and d.files:
        budget = MARKDOWN_FILE_BUDGET
        for guest, changed in _by_guest(d.files):
            out += [f"<details><summary><b>{guest}</b>: {len(changed)} file(s) changed</summary>", ""]
            for f in changed:
                body = f.diff.replace("```", "`\u200b``")
                if len(body) > budget:
                    out.append(f"`{f.path}` ({f.status}): diff too long for a comment; run "
                               "`phoenix diff` locally")
                    continue
                budget -= len(body)
                out += [f"`{f.path}` ({f.status})", "", "```diff", body.rstrip("\n"), "```", ""]
            out += ["</details>", ""]
    return "\n".join(out) + "\n"
