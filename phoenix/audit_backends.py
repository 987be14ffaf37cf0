"""The route audit's mesh -> backend hop (see ``phoenix.audit``): every server a router's service
reaches (through weighted services too) is a replica the catalog runs there, its firewall lets the
mesh in, and it is HTTPS verified against the Phoenix root with its guest's name, a name its
certificate carries and that resolves to that guest alone (the one name it can prove by
HTTP-01; a service's names resolve to the mesh). Plain HTTP only where the catalog says
``protocol: http``, and that is a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from phoenix.artifacts import Artifacts
from phoenix.audit_mesh import Mesh, hosts_of, local_ref
from phoenix.model import Guest, Service
from phoenix.render.firewall import permits
from phoenix.topology import ROOT_CA_TRUST_PATH, Topology


# -- firewall ---------------------------------------------------------------------------------
def firewall_allows(rules: list[Any], source: str, port: int, proto: str = "tcp") -> bool:
    """Does a guest with these rules let ``source`` in on ``port`` (the firewall tier's own semantics)?"""
    return permits(list(rules or []), "in", source, port, proto)


def resolve(art: Artifacts, view: str, name: str, depth: int = 0) -> set[str]:
    """The addresses a DNS view gives ``name``, CNAMEs followed (as a stub resolver gets them)."""
    out: set[str] = set()
    for rtype, value in (art.dns.get(view) or {}).get(name) or []:
        if rtype == "A":
            out.add(value)
        elif rtype == "CNAME" and depth < 8:
            out |= resolve(art, view, value.rstrip("."), depth + 1)
    return out


def _proof_problem(topo: Topology, art: Artifacts, hop: BackendHop) -> str | None:
    """The name the mesh verifies a TLS backend by must resolve to that backend's guest alone:
    it is the name the backend proves to Step-CA by HTTP-01 (a service's names resolve to the mesh)."""
    name = (hop.transport or {}).get("serverName")
    if hop.scheme != "https" or not name:
        return None
    at = urlsplit(hop.url).hostname
    got = resolve(art, "internal", name)
    if got and got != {at}:   # no answer at all: dns_problems names the missing record
        return (f"{hop.label}: verifies {name}, which the internal view resolves to "
                f"{', '.join(sorted(got)) or 'nothing'}, not to the backend ({at}): the backend could not prove it "
                "to Step-CA by HTTP-01")
    return None


def _serving(topo: Topology, url: str) -> tuple[Guest | None, int, list[Service]]:
    """(guest, port, the catalog services listening there) for a backend URL."""
    parts = urlsplit(url)
    guest = topo.guest_by_address.get(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    listening = list(topo.services_at.get((guest.name, port), [])) if guest is not None else []
    return guest, port, listening


def _backend_problem(topo: Topology, art: Artifacts, url: str) -> str | None:
    """Why the mesh cannot use this backend, or None."""
    guest, port, listening = _serving(topo, url)
    scheme = urlsplit(url).scheme
    if guest is None:
        return f"{url} (no guest has address {urlsplit(url).hostname})"
    if not listening:
        return f"{url} (no service listens on {guest.name}:{port})"
    if listening[0].protocol != scheme:
        return f"{url} ({guest.name}:{port} speaks {listening[0].protocol}, not {scheme})"
    if not firewall_allows(art.firewall.get(guest.name, []), str(topo.mesh.address), port):
        return f"{url} (the firewall of {guest.name} does not let the mesh ({topo.mesh.address}) reach tcp/{port})"
    return None


def covers(name: str, host: str) -> bool:
    """Does a certificate name (maybe a wildcard) cover ``host``?"""
    name, host = name.lower().rstrip("."), host.lower().rstrip(".")
    if name.startswith("*."):
        return host.count(".") == name.count(".") and host.endswith(name[1:])
    return name == host


def covering(names: set[str], host: str) -> list[str]:
    """The names of ``names`` that cover ``host`` (``covers``), by lookup rather than a scan: a
    host is covered by itself and by the wildcard one label above it. ``names`` normalised
    (``normal_names``)."""
    host = host.lower().rstrip(".")
    parent = host.partition(".")[2]
    return [n for n in (host, f"*.{parent}" if parent else None) if n in names]


def normal_names(names) -> set[str]:
    """Certificate names as ``covering`` looks them up (lower case, no trailing dot)."""
    return {n.lower().rstrip(".") for n in names}


@dataclass(frozen=True)
class BackendHop:
    """mesh -> backend: one server of a load-balancer service, and how the mesh verifies it."""
    service: str                     # the load-balancer service holding the server
    url: str
    transport_name: str | None
    transport: dict | None
    certificate: Any                 # what the backend serves (backends.BackendCertificate), if known

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def label(self) -> str:
        return f"mesh service {self.service} -> {self.url}"

    def problem(self) -> str | None:
        """Why the mesh would not verify this TLS backend with a name its certificate carries."""
        t, name = self.transport, self.transport_name
        if self.scheme != "https":
            return None
        if t is None:
            return (f"{self.label}: no servers transport, so not verified against the Phoenix root with a "
                    "server name")
        if t.get("insecureSkipVerify"):
            return f"{self.label}: servers transport {name} skips certificate verification (insecureSkipVerify)"
        if ROOT_CA_TRUST_PATH not in (t.get("rootCAs") or []):
            return f"{self.label}: servers transport {name} does not verify against the Phoenix root"
        server_name = t.get("serverName")
        if not server_name:
            return f"{self.label}: servers transport {name} sets no serverName to verify"
        cert = self.certificate
        if cert is not None and not any(covers(san, server_name) for san in cert.sans):
            return (f"{self.label}: servers transport {name} verifies {server_name}, which the certificate "
                    f"{cert.name} on {cert.guest} does not carry ({', '.join(cert.sans)})")
        return None

    def describe(self) -> str:
        t = self.transport or {}
        if self.scheme != "https":
            return f"{self.url}: plain HTTP, not encrypted (protocol: http in the catalog)"
        what = f"verify {t.get('serverName') or '?'} against the Phoenix root"
        if t.get("insecureSkipVerify"):
            what = "NOT verified (insecureSkipVerify)"
        cert = self.certificate
        served = f"certificate {cert.name} ({cert.terminator} TLS)" if cert else "certificate not issued by Phoenix"
        return f"{self.url}: https, {what}; {served}"


def backend_hops(topo: Topology, art: Artifacts, mesh: Mesh, service: str) -> list[BackendHop]:
    """Every server a router's service reaches, with the transport that dials it."""
    out = []
    for leaf in mesh.leaves(service):
        lb = mesh.services[leaf].get("loadBalancer") or {}
        t_name = local_ref(lb.get("serversTransport") or "") or None
        for srv in lb.get("servers") or []:
            url = srv.get("url", "")
            guest, port, _ = _serving(topo, url)
            cert = art.backend_certificates.get((guest.name, port)) if guest else None
            out.append(BackendHop(leaf, url, t_name, mesh.transports.get(t_name or ""), cert))
    return out


def service_problems(topo: Topology, art: Artifacts, mesh: Mesh, bad: set[str]) -> tuple[list[str], list[str]]:
    out, warnings = [], []
    used: dict[str, list[str]] = {}
    for r in mesh.routers.values():
        svc = local_ref(r.get("service") or "")
        if svc in mesh.services:
            used.setdefault(svc, []).extend(hosts_of(r))
    checked: set[tuple[str, str]] = set()
    for name, hosts in used.items():
        if name in bad:
            continue
        hops = backend_hops(topo, art, mesh, name)
        at = f"mesh service {name} ({', '.join(dict.fromkeys(hosts))})"
        reasons = [_backend_problem(topo, art, h.url) for h in hops]
        if not hops:
            out.append(f"{at}: has no backend")
        elif all(reasons):
            out.append(f"{at}: no usable backend: " + "; ".join(r for r in reasons if r))
        elif any(reasons):
            out += [f"{at}: backend {r}" for r in reasons if r]
        for hop, reason in zip(hops, reasons, strict=True):
            if reason or (hop.service, hop.url) in checked:
                continue
            checked.add((hop.service, hop.url))
            found = hop.problem() or _proof_problem(topo, art, hop)
            if found:
                out.append(found)
            elif hop.scheme == "http":
                warnings.append(f"mesh service {hop.service}: the mesh reaches {hop.url} over plain HTTP "
                                "(protocol: http in the catalog)")
            elif hop.certificate is None:
                warnings.append(f"{hop.label}: no Phoenix step issues the certificate served there; the mesh "
                                f"verifies {(hop.transport or {}).get('serverName')} against the Phoenix root")
    return out, warnings


def backend_lines(topo: Topology, art: Artifacts, mesh: Mesh, router: str | None, r: dict) -> list[str]:
    svc = local_ref(r.get("service") or "") if router else None
    hops = backend_hops(topo, art, mesh, svc) if svc in mesh.services else []
    if not hops:
        return [f"    mesh -> backend: router {router or '?'} -> service {svc or '?'} -> ?"]

    def via(h) -> str:
        return f"service {svc}" + (f" -> {h.service}" if h.service != svc else "")

    return [f"    mesh -> backend: router {router} -> {via(h)} -> {h.describe()}" for h in hops]
