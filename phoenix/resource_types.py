"""The Pulumi type tokens Phoenix reads back from a run (the plan, its diff, the fake outputs).

Defined once: the engine, the plan writer, the diff and the fakes import them. Each is the
token of a resource the components register (``pulumi_proxmoxve``, ``pulumi_command``,
``pulumi_tls``, ``pulumi_random``).
"""

from __future__ import annotations

CONTAINER = "proxmoxve:index/containerLegacy:ContainerLegacy"
VM = "proxmoxve:index/vmLegacy:VmLegacy"
#: a guest of the lab: an LXC or a VM.
GUEST_TYPES = (CONTAINER, VM)
COMMAND = "command:remote:Command"
LOCAL_COMMAND = "command:local:Command"
FILE = "proxmoxve:index/fileLegacy:FileLegacy"
FIREWALL_RULES = "proxmoxve:firewall/rulesLegacy:RulesLegacy"
FIREWALL_OPTIONS = "proxmoxve:firewall/optionsLegacy:OptionsLegacy"
FIREWALL_IPSET = "proxmoxve:firewall/ipsetLegacy:IpsetLegacy"
#: a guest's own firewall: rules, options, IP sets (each names the guest by vmId/containerId).
GUEST_FIREWALL_TYPES = (FIREWALL_RULES, FIREWALL_OPTIONS, FIREWALL_IPSET)
CLUSTER_FIREWALL = "proxmoxve:cluster/firewallLegacy:FirewallLegacy"
PCI_MAPPING = "proxmoxve:hardware/mapping/pci:Pci"
DOWNLOAD = "proxmoxve:download/file:File"
#: Proxmox HA, storage replication and backups (components/resilience.py).
HA_RESOURCE = "proxmoxve:index/haresource:Haresource"
HA_GROUP = "proxmoxve:index/hagroup:Hagroup"
HA_RULE = "proxmoxve:index/harule:Harule"
REPLICATION = "proxmoxve:index/replication:Replication"
BACKUP_JOB = "proxmoxve:backup/job:Job"
RESILIENCE_TYPES = (HA_RESOURCE, HA_GROUP, HA_RULE, REPLICATION, BACKUP_JOB)
PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_BYTES = "random:index/randomBytes:RandomBytes"
#: the type of every tier's component (``phoenix:tier:<Tier>``).
TIER_PREFIX = "phoenix:tier:"
