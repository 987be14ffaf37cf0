"""Route audit: placeholder until the mesh issue lands."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AuditReport:
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def route_audit(topo) -> AuditReport:
    return AuditReport()
