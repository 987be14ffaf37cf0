"""The certificate every TLS backend serves, for the route audit: GPU services (natively or behind
their sidecar), Portainer's UI, and the compose stacks on the agents.

It reads both the workloads and the stacks renderers (what each deploys where), so it lives
beside them rather than in either: neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from phoenix.render import stacks
from phoenix.render.workloads import (
    certificate_names,
    gpu_lxcs,
    gpu_services_on,
    needs_certificate,
    portainer_certificate_names,
    portainer_tls_name,
    portainer_ui,
)
from phoenix.topology import Topology


@dataclass(frozen=True)
class BackendCertificate:
    """The certificate one TLS backend (a service's replica on a guest's port) serves."""
    service: str
    guest: str
    port: int
    name: str                  # its tls_paths() name, and the certificate step's
    sans: tuple[str, ...]
    terminator: str            # native (the service itself), sidecar, or container


def backend_certificates(topo: Topology) -> dict[tuple[str, int], BackendCertificate]:
    """(guest, port) -> the certificate served there, for every TLS backend Phoenix deploys. The
    route audit checks the name the mesh verifies against these."""
    out = {}
    for s, agent in stacks.stacks(topo):
        if stacks.serves_tls(s):
            out[(agent.name, s.port)] = BackendCertificate(s.name, agent.name, s.port, stacks.certificate_name(s),
                                                           tuple(certificate_names(topo, s, agent)), "compose sidecar")
    for g in gpu_lxcs(topo):
        for s in gpu_services_on(topo, g):
            if s.protocol == "https" and needs_certificate(s):
                terminator = s.tls_termination
                if terminator is None:    # the model refuses it (checks._run_tls_checks)
                    raise LookupError(f"service {s.name!r} speaks https but nothing on {g.name} serves its TLS")
                out[(g.name, s.port)] = BackendCertificate(s.name, g.name, s.port, s.name,
                                                           tuple(certificate_names(topo, s, g)), terminator)
    ui = portainer_ui(topo)
    if ui is not None and ui.protocol == "https":
        p = topo.require_portainer()
        out[(p.name, ui.port)] = BackendCertificate(ui.name, p.name, ui.port, portainer_tls_name(topo),
                                                    tuple(portainer_certificate_names(topo)), "container")
    return out
