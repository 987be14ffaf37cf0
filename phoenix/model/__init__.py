"""The stack model: the one validated input of Phoenix.

Everything Phoenix creates is derived from a ``Lab`` (see ``phoenix.topology``). The model is
read from the stack's ``phoenix:*`` config keys (camelCase, as Pulumi users write them),
refuses unknown keys, and reports every problem at once as ``ConfigError`` lines that name
the key path (``phoenix:guests[2].address: ...``).

* ``fields``: the field types (labels, domains, ports, roles, pinned images);
* ``catalog``: services (``phoenix:services`` or the ``phoenix:catalog`` file);
* ``lab``: Proxmox, network, guests, each tier's settings, and ``Lab`` itself;
* ``checks``: the rules across fields; ``parse``: raw config in, ``Lab`` or ``ConfigError`` out
  (every text checked for control characters and size first);
* ``names``: the names a service may not take; ``ports``: the ports the lab itself uses per guest;
* ``secrets``: what a deployment needs besides the model; ``readiness``: the release pins;
* ``resilience``: HA, storage replication and backups (what Proxmox cannot do is refused).
"""

from phoenix.model.catalog import (
    RUN_PLACEHOLDERS,
    SIDECAR_PORT_OFFSET,
    STACK_HOST_ROOT,
    Compose,
    Run,
    Service,
    replica_name,
)
from phoenix.model.checks import cross_checks
from phoenix.model.fields import LXC_ROLES, SINGLETON_ROLES, Domain, IPv4, Label, Port, Role, Strict
from phoenix.model.lab import (
    CONFIG_KEYS,
    Acme,
    Dns,
    Domains,
    Firewall,
    Gateway,
    Gpu,
    Guest,
    Image,
    Lab,
    Mesh,
    Network,
    Node,
    Pki,
    Portainer,
    Proxmox,
)
from phoenix.model.parse import json_schema, parse_lab
from phoenix.model.resilience import (
    Backup,
    GuestResilience,
    Ha,
    Notification,
    Replication,
    Resilience,
    Retention,
    Storage,
)
from phoenix.model.secrets import OPERATOR_SECRETS, required_secrets, secret_problems, stack_secrets

__all__ = [
    "RUN_PLACEHOLDERS", "SIDECAR_PORT_OFFSET", "STACK_HOST_ROOT", "Compose", "Run", "Service", "replica_name",
    "cross_checks", "IPv4", "LXC_ROLES", "SINGLETON_ROLES", "Domain", "Label", "Port", "Role", "Strict",
    "CONFIG_KEYS", "Acme", "Dns", "Domains", "Firewall", "Gateway", "Gpu", "Guest", "Image", "Lab", "Mesh",
    "Network", "Node", "Pki", "Portainer", "Proxmox", "json_schema", "parse_lab", "OPERATOR_SECRETS",
    "required_secrets", "secret_problems", "stack_secrets", "Backup", "GuestResilience", "Ha", "Notification",
    "Replication", "Resilience", "Retention", "Storage",
]
