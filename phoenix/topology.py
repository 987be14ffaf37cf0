"""Topology: every derived fact of a Lab, computed once.

Names, endpoints, routes and flows live here and nowhere else. Two tiers that must agree
(gateway and mesh, DNS and catalog, firewall and route audit) read the same values from a
``Topology``; nothing downstream types an address, port or name of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from .model import Guest, Lab, Service


@dataclass(frozen=True)
class Entrypoint:
    """A Traefik entrypoint: the name routers use and the port peers dial."""
    name: str
    port: int
    scheme: str
    client_auth: bool  # requires a client certificate from the Phoenix CA


@dataclass(frozen=True)
class Backend:
    guest: str
    address: str
    port: int
    scheme: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}:{self.port}"


@dataclass(frozen=True)
class Route:
    """One host name through the mesh: which entrypoint serves it, which backends answer."""
    host: str
    service: str
    entrypoint: Entrypoint
    backends: tuple[Backend, ...]
    public: bool


@dataclass(frozen=True)
class Flow:
    """One allowed flow: ``source`` is a guest name, ``any``, ``guests``, ``management`` (the
    declared management networks) or ``nodes`` (the Proxmox nodes, the deploy's SSH jump hosts);
    ``target`` is a guest name, or ``any`` for traffic leaving the lab (an outbound rule on
    each source guest, see ``phoenix.render.firewall``)."""
    source: str
    target: str
    port: int
    proto: str
    purpose: str


@dataclass(frozen=True)
class Record:
    name: str      # fully qualified, no trailing dot
    type: str      # A, CNAME, TXT
    value: str


#: Traefik's ping and Step-CA's health endpoint: what the deploy steps and `phoenix verify` ask.
MESH_PING_PATH = "/ping"
CA_HEALTH_PATH = "/health"

#: where every guest keeps the Phoenix root and its own certificates (one convention for all tiers).
ROOT_CA_TRUST_PATH = "/usr/local/share/ca-certificates/phoenix-root.crt"
TLS_DIR = "/etc/phoenix/tls"


@dataclass(frozen=True)
class TlsPaths:
    cert: str      # leaf + intermediate chain, PEM
    key: str
    root: str


def tls_paths(name: str) -> TlsPaths:
    return TlsPaths(f"{TLS_DIR}/{name}.crt", f"{TLS_DIR}/{name}.key", f"{TLS_DIR}/phoenix-root.crt")


def gpu_device_paths(guest: Guest) -> list[str]:
    """Device nodes a GPU LXC gets, by path only: the nvidia-uvm major is dynamic (trap 17)."""
    if not guest.gpus:
        return []
    return ([f"/dev/nvidia{i}" for i in guest.gpus]
            + ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
            + [f"/dev/nvidia-caps/nvidia-cap{i}" for i in guest.gpu_caps])


@dataclass
class Topology:
    lab: Lab
    _cache: dict = field(default_factory=dict, repr=False)

    # -- names -----------------------------------------------------------------------
    def fqdn(self, label: str) -> str:
        return f"{label}.{self.lab.domains.internal}"

    def guest_fqdn(self, guest: Guest) -> str:
        return self.fqdn(guest.name)

    @cached_property
    def _by_role(self) -> dict[str, list[Guest]]:
        """Guests by role, in stack order: the tiers ask for the singletons thousands of times."""
        out: dict[str, list[Guest]] = {}
        for g in self.lab.guests:
            out.setdefault(g.role, []).append(g)
        return out

    @property
    def dns(self) -> Guest:
        return self._by_role["dns"][0]

    @property
    def gateway(self) -> Guest:
        return self._by_role["gateway"][0]

    @property
    def mesh(self) -> Guest:
        return self._by_role["mesh"][0]

    @property
    def ca(self) -> Guest:
        return self._by_role["ca"][0]

    @property
    def portainer(self) -> Guest | None:
        found = self._by_role.get("portainer")
        return found[0] if found else None

    def require_portainer(self) -> Guest:
        """The Portainer guest, for what only a lab with one has (its UI, compose stacks, agents)."""
        if self.portainer is None:
            raise LookupError("the lab has no portainer guest")
        return self.portainer

    @property
    def agents(self) -> list[Guest]:
        return list(self._by_role.get("agent", []))

    # -- endpoints -------------------------------------------------------------------
    @cached_property
    def entrypoints(self) -> dict[str, Entrypoint]:
        m = self.lab.mesh
        return {
            "gateway": Entrypoint("gateway", m.gateway_port, "https", client_auth=True),
            "internal": Entrypoint("internal", m.internal_port, "https", client_auth=False),
        }

    @property
    def mesh_name(self) -> str:
        """The name on the mesh's certificate, which the gateway verifies."""
        return self.guest_fqdn(self.mesh)

    @property
    def ca_name(self) -> str:
        return self.guest_fqdn(self.ca)

    @property
    def ca_url(self) -> str:
        """By address: CA bootstrap must not depend on DNS being up (trap 4)."""
        return f"https://{self.ca.address}:{self.lab.pki.ca_port}"

    @property
    def ca_health_url(self) -> str:
        return f"{self.ca_url}{CA_HEALTH_PATH}"

    @property
    def acme_directory(self) -> str:
        return f"{self.ca_url}/acme/{self.lab.pki.acme_provisioner}/directory"

    @property
    def ca_sans(self) -> list[str]:
        """Every name and address the CA's clients and its health check use (trap 5)."""
        return [self.ca_name, str(self.ca.address), "localhost", "127.0.0.1"]

    #: TSIG key that may update only _acme-challenge names in the public zone (DNS-01).
    acme_tsig_key_name: str = "phoenix-acme"
    #: its algorithm, as BIND writes it (certbot's rfc2136 plugin wants it upper case).
    acme_tsig_algorithm: str = "hmac-sha256"

    @property
    def internal_networks(self) -> list[str]:
        """Clients the internal DNS view and internal-only flows treat as guests."""
        return [str(self.lab.network.cidr)] + [str(n) for n in self.lab.network.management]

    @property
    def public_acme_directory(self) -> str:
        server = self.lab.acme.server
        return {
            "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
            "production": "https://acme-v02.api.letsencrypt.org/directory",
        }.get(server, server)

    # -- services --------------------------------------------------------------------
    def backends(self, service: Service) -> tuple[Backend, ...]:
        key = ("backends", service.name)
        if key not in self._cache:   # every tier asks, per service: compute once
            self._cache[key] = tuple(Backend(g, str(self.lab.guest(g).address), service.port, service.protocol)
                                     for g in service.guests)
        return self._cache[key]

    def service_fqdn(self, service: Service) -> str:
        """A service's internal name: it resolves to the mesh (service-to-service traffic goes
        through it), never to a replica."""
        return self.fqdn(service.name)

    def service_names(self, service: Service) -> list[str]:
        """Every internal name of a service (its own, then its aliases): all resolve to the mesh,
        which holds a Step-CA certificate for them and routes them to the replicas."""
        return [self.service_fqdn(service)] + [self.fqdn(a) for a in service.aliases]

    def internal_url(self, service: Service) -> str:
        """What a guest dials to call a service through the mesh."""
        port = self.entrypoints["internal"].port
        return f"https://{self.service_fqdn(service)}{'' if port == 443 else f':{port}'}/"

    def replica_tls_name(self, service: Service, guest: str) -> str:
        """The name the mesh verifies on one replica's certificate: its guest's name, the one
        name that replica can prove by ACME HTTP-01 (it resolves to that guest alone; the
        service's names resolve to the mesh)."""
        return self.guest_fqdn(self.lab.guest(guest))

    @cached_property
    def routes(self) -> list[Route]:
        out = []
        for s in self.lab.services:
            backends = self.backends(s)
            out.append(Route(self.service_fqdn(s), s.name, self.entrypoints["internal"], backends, False))
            if s.public and s.public_host:
                out.append(Route(s.public_host, s.name, self.entrypoints["gateway"], backends, True))
        return out

    @property
    def public_routes(self) -> list[Route]:
        return [r for r in self.routes if r.public]

    @property
    def public_hosts(self) -> list[str]:
        return [r.host for r in self.public_routes]

    def service(self, name: str) -> Service:
        return self._services_by_name[name]

    @cached_property
    def _services_by_name(self) -> dict[str, Service]:
        return {s.name: s for s in self.lab.services}

    @cached_property
    def guest_by_address(self) -> dict[str, Guest]:
        return {str(g.address): g for g in self.lab.guests}

    @cached_property
    def services_at(self) -> dict[tuple[str, int], list[Service]]:
        """(guest name, port) -> the catalog services listening there."""
        out: dict[tuple[str, int], list[Service]] = {}
        for s in self.lab.services:
            for g in dict.fromkeys(s.guests):
                out.setdefault((g, s.port), []).append(s)
        return out

    def guest_url(self, guest: Guest) -> str:
        """Where a person reaches what a guest serves (stack output)."""
        if guest.role == "ca":
            return self.ca_url
        if guest.role == "dns":
            return f"dns://{guest.address}"
        if guest.role == "gateway":
            return f"https://{self.public_hosts[0]}/" if self.public_hosts else f"https://{guest.address}/"
        if guest.role == "mesh":
            return f"https://{self.mesh_name}:{self.entrypoints['internal'].port}/"
        public, internal = self._first_routes.get(guest.name, (None, None))
        if public:
            return f"https://{public.host}/"
        if internal:
            return self.internal_url(self.service(internal.service))
        return f"ssh://root@{guest.address}"

    @cached_property
    def _first_routes(self) -> dict[str, tuple[Route | None, Route | None]]:
        """guest -> (its first public route, its first route), in route order."""
        out: dict[str, tuple[Route | None, Route | None]] = {}
        for r in self.routes:
            for b in r.backends:
                public, first = out.get(b.guest, (None, None))
                out[b.guest] = (public or (r if r.public else None), first or r)
        return out

    # -- DNS records -----------------------------------------------------------------
    @cached_property
    def internal_records(self) -> list[Record]:
        """The internal zone: every guest by its own address; every service's name at the mesh
        (service-to-service traffic is load-balanced, health-checked, retried and circuit-broken
        there), its aliases as CNAMEs of that name."""
        recs = [Record(self.guest_fqdn(g), "A", str(g.address)) for g in self.lab.guests]
        mesh = str(self.mesh.address)
        for s in self.lab.services:
            recs.append(Record(self.service_fqdn(s), "A", mesh))
            recs += [Record(self.fqdn(a), "CNAME", self.service_fqdn(s)) for a in s.aliases]
        return recs

    @cached_property
    def internal_addresses(self) -> dict[str, frozenset[str]]:
        """Name -> the addresses the internal zone's A records give it (asked per certificate)."""
        out: dict[str, set[str]] = {}
        for rec in self.internal_records:
            if rec.type == "A":
                out.setdefault(rec.name, set()).add(rec.value)
        return {name: frozenset(values) for name, values in out.items()}

    @cached_property
    def public_records_internal_view(self) -> list[Record]:
        """Public names as guests see them: the gateway's internal address."""
        return [Record(h, "A", str(self.gateway.address)) for h in self.public_hosts]

    @cached_property
    def public_records_external_view(self) -> list[Record]:
        """Public names as the world sees them: the gateway's public address, nothing internal."""
        return [Record(h, "A", str(self.lab.network.public_address)) for h in self.public_hosts]

    # -- flows (firewall matrix and route audit read this one list) --------------------
    @cached_property
    def flows(self) -> list[Flow]:
        lab, f = self.lab, []
        gw, mesh, ca, dns = self.gateway.name, self.mesh.name, self.ca.name, self.dns.name
        f += [Flow("any", gw, 80, "tcp", "http: ACME HTTP-01 and redirect"),
              Flow("any", gw, 443, "tcp", "https: public entry")]
        f.append(Flow(gw, mesh, self.entrypoints["gateway"].port, "tcp", "gateway to mesh (mTLS)"))
        f.append(Flow("guests", mesh, self.entrypoints["internal"].port, "tcp",
                      "service to service: every service name resolves to the mesh"))
        f.append(Flow("guests", ca, lab.pki.ca_port, "tcp", "certificates from Step-CA"))
        if lab.network.management:
            # Operators, from the declared management networks only: the dashboard and metrics,
            # and what `phoenix verify` asks (Step-CA's health, every service's through the mesh).
            f.append(Flow("management", mesh, lab.mesh.dashboard_port, "tcp", "Traefik dashboard (basic auth)"))
            f.append(Flow("management", mesh, lab.mesh.metrics_port, "tcp", "Traefik metrics and ping"))
            f.append(Flow("management", mesh, self.entrypoints["internal"].port, "tcp",
                          "phoenix verify: service health through the mesh"))
            f.append(Flow("management", ca, lab.pki.ca_port, "tcp", "phoenix verify: Step-CA's health"))
        for proto in ("udp", "tcp"):
            f.append(Flow("any", dns, 53, proto, "DNS: internal and external views"))
        for s in lab.services:
            for replica in dict.fromkeys(s.guests):
                f.append(Flow(mesh, replica, s.port, "tcp", f"mesh to {s.name}"))
        # Step-CA validates ACME HTTP-01 by dialling the requester on port 80.
        for g in self.acme_clients:
            if g.name != gw:
                f.append(Flow(ca, g.name, 80, "tcp", "ACME HTTP-01 from Step-CA"))
        if self.portainer:
            for a in self.agents:
                f.append(Flow(self.portainer.name, a.name, lab.portainer.agent_port, "tcp", "Portainer to agent"))
        for g in lab.guests:
            if lab.network.management:
                f.append(Flow("management", g.name, 22, "tcp", "SSH from the management network"))
            if self.jump_hosts:
                f.append(Flow("nodes", g.name, 22, "tcp", "SSH from the Proxmox node (the deploy's jump host)"))
        # Outbound (target "any": leaves the guest for anywhere): every guest resolves and keeps
        # time; the DNS guest recurses to the upstream resolvers (trap 7: never block these).
        f += [Flow("guests", "any", 53, "udp", "outbound DNS"), Flow("guests", "any", 53, "tcp", "outbound DNS"),
              Flow("guests", "any", 123, "udp", "outbound NTP")]
        return f

    @property
    def management_sources(self) -> list[str]:
        """Where operators work from: the declared management networks, nothing else (not the
        guest network's gateway: behind a router that masquerades, every client on the internet
        would arrive from that address)."""
        return [str(n) for n in self.lab.network.management]

    @property
    def jump_hosts(self) -> list[str]:
        """With ``proxmox.sshViaNode``: each node's address (the deploy's SSH jump host) that no
        management network holds, as a /32. A node that reaches the guests from an address on
        their network (it routes their bridge) speaks from that address: list it in
        ``network.management``."""
        if not self.lab.proxmox.ssh_via_node:
            return []
        nets = list(self.lab.network.management)
        hosts = dict.fromkeys(n.address for n in self.lab.proxmox.nodes)
        return [f"{a}/32" for a in hosts if not any(a in n for n in nets)]

    @property
    def acme_clients(self) -> list[Guest]:
        """Guests that get a certificate from Step-CA by ACME: the mesh (Traefik) and every
        replica's guest (certbot). The gateway's one internal certificate, its client
        certificate towards the mesh, is signed by the program (``step_ca_names``)."""
        names = {self.mesh.name}
        names |= {g for s in self.lab.services for g in s.guests}
        if self.portainer:
            names.add(self.portainer.name)
        return [g for g in self.lab.guests if g.name in names]

    @cached_property
    def step_ca_names(self) -> dict[str, list[str]]:
        """guest -> every name it asks Step-CA for (the CA's policy allows exactly these): the
        mesh its own name and every service's names (they resolve to it), each other ACME client
        its guest's name (the name the mesh verifies it by)."""
        out = {g.name: [self.guest_fqdn(g)] for g in self.acme_clients}
        for s in self.lab.services:
            out[self.mesh.name] += self.service_names(s)
        return {g: list(dict.fromkeys(names)) for g, names in out.items()}

    def flows_to(self, guest: str) -> list[Flow]:
        return list(self._flows_by_target.get(guest, ()))

    @cached_property
    def _flows_by_target(self) -> dict[str, list[Flow]]:
        out: dict[str, list[Flow]] = {}
        for f in self.flows:
            out.setdefault(f.target, []).append(f)
        return out

    def allows(self, source: Guest | str, target: str, port: int, proto: str = "tcp") -> bool:
        """Does the matrix let ``source`` (a guest, or 'any') reach ``target`` on ``port``?"""
        for f in self.flows_to(target):
            if f.port != port or f.proto != proto:
                continue
            if f.source == "any":
                return True
            if isinstance(source, Guest) and (f.source == source.name
                                              or (f.source == "guests" and source.address in self.lab.network.cidr)):
                return True
        return False


def build(lab: Lab) -> Topology:
    return Topology(lab)
