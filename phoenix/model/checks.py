"""The rules no single field can check (uniqueness, references, ports, roles, TLS, PKI, DNS).

``cross_checks`` runs after the schema has accepted every field; it returns every problem,
one line each, naming the key path.
"""

from __future__ import annotations

from phoenix.errors import problem
from phoenix.model.catalog import SIDECAR_PORT_OFFSET, replica_name
from phoenix.model.fields import SINGLETON_ROLES, IPv4
from phoenix.model.lab import CONFIG_KEYS, Lab
from phoenix.model.ports import lab_ports
from phoenix.model.resilience_checks import resilience_problems
from phoenix.pki import domain_permitted


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
            out.append(problem(f"{at}.image",
                               f"image {g.image!r} is a {image.kind} image but a {g.role} guest is a {g.kind}"))
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
    out += resilience_problems(lab)
    return out


def _run_tls_checks(lab: Lab) -> list[str]:
    """A service Phoenix runs serves TLS itself or behind a sidecar, and says which: plain HTTP
    to a backend only where the catalog says ``protocol: http``."""
    out: list[str] = []
    reserved = lab_ports(lab)
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
                # another's catalog port, or the loopback port of one listed before (reported once)
                clash = [o.name for j, o in enumerate(lab.services) if gname in o.guests
                         and (app == o.port or (j < i and app == o.app_port))]
                own = reserved.get(gname, {}).get(app)
                if clash or own:
                    taken = f"service {clash[0]!r}" if clash else f"the lab itself ({own})"
                    out.append(problem(f"{at}.internalPort", f"loopback port {app} on guest {gname!r} is already "
                                       f"used by {taken}"))
    return out


def _pki_checks(lab: Lab) -> list[str]:
    """Step-CA's policy must let it issue for the internal domain (and its own names)."""
    allowed = lab.pki.allowed_domains
    if allowed is None:
        return []
    internal = lab.domains.internal
    if not any(domain_permitted(f"x.{internal}", f"*.{d}") for d in allowed):   # ca_policy's constraint
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
    # Each internal name is a certificate's name, and may be its subject's common name, which
    # X.509 bounds at 64 characters (RFC 5280, ub-common-name).
    labels = [(f"phoenix:guests[{i}].name", g.name) for i, g in enumerate(lab.guests)]
    for i, s in enumerate(lab.services):
        labels += [(f"phoenix:services[{i}].name", s.name)]
        labels += [(f"phoenix:services[{i}].aliases[{j}]", a) for j, a in enumerate(s.aliases)]
    for at, label in labels:
        if len(label) + 1 + len(internal) > MAX_CERTIFICATE_NAME:
            out.append(problem(at, f"{label}.{internal} is longer than {MAX_CERTIFICATE_NAME} characters, the "
                               "most a certificate's common name may hold; shorten it or the internal domain"))
    # Each zone is a file db.<domain>.<view> in a step's bundle, whose entries' names hold 100 bytes.
    for key, domain in (("public", pub), ("internal", internal)):
        if len(f"db.{domain}.internal") > 100:
            out.append(problem(f"phoenix:domains.{key}", f"{domain} is longer than {100 - len('db..internal')} "
                               "characters (its zone files are named db.<domain>.<view>)"))
    return out


def _service_checks(lab: Lab, guests: dict[str, int]) -> list[str]:
    out: list[str] = []
    names: dict[str, int] = {}
    hosts: dict[str, str] = {}
    ports: dict[tuple[str, int], str] = {}
    reserved = lab_ports(lab)
    pub = lab.domains.public
    service_names = {s.name: i for i, s in reversed(list(enumerate(lab.services)))}
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
                out.append(problem(f"{at}.publicHost",
                                   f"{s.public_host} is already claimed by service {hosts[s.public_host]!r}"))
            hosts.setdefault(s.public_host, s.name)
        for j, alias in enumerate(s.aliases):
            # <alias>.<internal domain> is a CNAME: no other record may have its name (RFC 1034 3.6.2)
            if alias == s.name:
                out.append(problem(f"{at}.aliases[{j}]", f"alias {alias!r} is the service's own name"))
            elif alias in service_names:
                out.append(problem(f"{at}.aliases[{j}]", f"alias {alias!r} is the name of service "
                                   f"services[{service_names[alias]}]"))
            elif alias in guests:
                out.append(problem(f"{at}.aliases[{j}]", f"alias {alias!r} is the name of guest "
                                   f"guests[{guests[alias]}]"))
            elif alias in hosts:
                owner = hosts[alias]
                out.append(problem(f"{at}.aliases[{j}]", f"alias {alias!r} is already an alias of "
                                   + ("this service" if owner == s.name else f"service {owner!r}")))
            hosts.setdefault(alias, s.name)
        if s.name in guests:
            out.append(problem(f"{at}.name",
                               f"service name {s.name!r} is also a guest name; internal names would clash"))
        if len(set(s.guests)) != len(s.guests):
            out.append(problem(f"{at}.guests", "a guest is listed twice"))
        for j, gname in enumerate(s.guests):
            if gname not in guests:
                out.append(problem(f"{at}.guests[{j}]", f"unknown guest {gname!r}"))
                continue
            guest = lab.guest(gname)
            if s.gpu and not (guest.gpus or guest.gpu_mapping):
                out.append(problem(f"{at}.guests[{j}]",
                                   f"GPU service {s.name!r} runs on {gname!r}, which has no GPU devices"))
            key = (gname, s.port)
            if key in ports:
                out.append(problem(f"{at}.port", f"port {s.port} on guest {gname!r} is already used by {ports[key]}"))
            ports.setdefault(key, f"service {s.name!r}")
            own = reserved[gname].get(s.port)
            if own:
                out.append(problem(f"{at}.port",
                                   f"port {s.port} on guest {gname!r} is taken by the lab itself ({own})"))
        if s.run and not s.gpu:
            out.append(problem(f"{at}.run", "run is for GPU services (gpu: true); others are deployed by their guest"))
        if s.gpu and not s.run:
            out.append(problem(f"{at}.run", f"GPU service {s.name!r} needs run.command"))
    return out + _generated_name_checks(lab)


def deploy_step_names(lab: Lab, service) -> list[str]:
    """The names of the deploy steps (Pulumi resources, ``<guest>-<step>``) a service adds: its
    unit, user and certificate on each GPU guest (components/workloads.py), its stack and
    certificate per agent (components/stacks.py)."""
    out = []
    if service.run is not None:
        for g in service.guests:
            out += [f"{g}-svc-{service.name}", f"{g}-svc-{service.name}-user", f"{g}-cert-{service.name}"]
    if service.compose is not None:
        portainer = next((g.name for g in lab.guests if g.role == "portainer"), "portainer")
        for a in service.guests:
            out += [f"{portainer}-stack-{service.name}-{a}", f"{a}-cert-{service.name}"]
    return out


#: a certificate's common name (RFC 5280 ub-common-name).
MAX_CERTIFICATE_NAME = 64
#: a file name in a step's bundle (ustar's name field; the directories go in its prefix).
MAX_FILE_NAME = 100


def _generated_name_checks(lab: Lab) -> list[str]:
    """A replicated service's replicas get names of their own in the mesh (``replica_name``):
    none may be another service's name or another replica's. The deploy steps a service adds
    are named after it too: two services may not make the same one (``a`` and ``a-user``)."""
    out: list[str] = []
    steps: dict[str, str] = {}
    for i, s in enumerate(lab.services):
        for a in s.guests if s.compose is not None else ():
            script = f"stack-{s.name}-{a}.sh"          # the stack step's script on the Portainer VM
            if len(script) > MAX_FILE_NAME:
                out.append(problem(f"phoenix:services[{i}].name", f"the stack's deploy script {script} is longer "
                                   f"than a file name in a bundle may be ({MAX_FILE_NAME}); shorten the service "
                                   "or the agent's name"))
        for name in deploy_step_names(lab, s):
            if steps.get(name, s.name) != s.name:
                out.append(problem(f"phoenix:services[{i}].name",
                                   f"the deploy step {name!r} is made for both service {steps[name]!r} and service "
                                   f"{s.name!r} (steps are named <guest>-svc-<service>[-user], "
                                   "<portainer>-stack-<service>-<agent>); rename one"))
            steps.setdefault(name, s.name)
    owners: dict[str, str] = {}
    for i, s in enumerate(lab.services):
        replicas = [replica_name(s.name, g) for g in dict.fromkeys(s.guests)] if len(s.guests) > 1 else []
        for name in [s.name, *replicas]:
            if owners.get(name, s.name) != s.name:
                out.append(problem(f"phoenix:services[{i}].name",
                                   f"the mesh service {name!r} is generated for both service {owners[name]!r} and "
                                   f"service {s.name!r} (a replica's name is <service>-<guest>); rename one"))
            owners.setdefault(name, s.name)
    return out


def _compose_checks(lab: Lab) -> list[str]:
    """Compose stacks run on agent VMs (Docker through Portainer), one stack per agent listed
    (port 80 of an agent stays free for certbot: ``phoenix.model.ports``)."""
    out: list[str] = []
    roles = {g.name: g.role for g in lab.guests}
    for i, s in enumerate(lab.services):
        at = f"phoenix:services[{i}]"
        if s.compose is None:
            continue
        if s.run is not None:
            out.append(problem(f"{at}.compose", "a service runs either as a GPU unit (run) or as a compose "
                               "stack (compose), not both"))
        for j, gname in enumerate(s.guests):
            if gname in roles and roles[gname] != "agent":
                out.append(problem(f"{at}.guests[{j}]", f"{gname!r} is a {roles[gname]} guest, not an agent VM: "
                                   "compose stacks run on the agents' Docker through Portainer"))
        for var, ref in s.compose.secret_environment.items():
            if ref.partition(":")[2] in (*CONFIG_KEYS, "catalog"):
                out.append(problem(f"{at}.compose.secretEnvironment",
                                   f"{var}: {ref} is a structured Phoenix setting, not a secret"))
    return out


