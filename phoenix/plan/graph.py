"""The topology picture as Mermaid: tiers, flows and the PKI, like the architecture diagram.

Next to the public path (Internet -> gateway -> mesh -> backends) it draws the service-to-service
one: every guest (``internal clients``) calls a service by its internal name, which resolves to
the mesh, on the mesh's internal entrypoint (``service_paths``); and the gateway client CA, the
one CA the mesh's gateway entrypoint trusts.
"""

from __future__ import annotations

from collections import defaultdict

from phoenix.topology import Topology


def _id(name: str) -> str:
    return "g_" + name.replace("-", "_")


def flow_edges(topo: Topology) -> dict[tuple[str, str], list[str]]:
    """The picture's edges: (source, target guest) -> "port/proto" labels, from the flows;
    a source is a guest name, ``any`` (the Internet) or ``management``.

    Flows from every guest (DNS, NTP, the CA) and SSH are drawn once, not per guest."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for f in topo.flows:
        if f.source == "guests" or f.port == 22:
            continue
        key = (f.source, f.target)
        label = f"{f.port}/{f.proto}"
        if label not in edges[key]:
            edges[key].append(label)
    return dict(edges)


def service_paths(topo: Topology) -> tuple[str, list[str]]:
    """The service-to-service edge: ("<port>/tcp", every service's internal names), from the flow
    that lets the guests reach the mesh's internal entrypoint."""
    port = topo.entrypoints["internal"].port
    [flow] = [f for f in topo.flows if f.source == "guests" and f.target == topo.mesh.name and f.port == port]
    return f"{flow.port}/{flow.proto}", [n for s in topo.lab.services for n in topo.service_names(s)]


def mermaid(topo: Topology) -> str:
    lab = topo.lab
    out = ["flowchart LR", '  internet(("Internet"))', '  mgmt(["management network"])']
    out.append(f'  subgraph proxmox["Proxmox VE: {", ".join(n.name for n in lab.proxmox.nodes)}"]')
    tiers = defaultdict(list)
    for g in lab.guests:
        tiers[g.role].append(g)
    services_on: dict[str, list[str]] = defaultdict(list)
    for s in lab.services:
        for guest in dict.fromkeys(s.guests):
            services_on[guest].append(s.name)
    titles = {"dns": "Dual-horizon DNS", "gateway": "Nginx gateway", "mesh": "Traefik mesh",
              "ca": "Step-CA", "gpu": "GPU services", "portainer": "Portainer", "agent": "Docker agents"}
    for role, guests in tiers.items():
        out.append(f'    subgraph tier_{role}["{titles[role]}"]')
        for g in guests:
            services = services_on[g.name]
            extra = f"<br/>{', '.join(services)}" if services else ""
            kind = "LXC" if g.kind == "lxc" else "VM"
            out.append(f'      {_id(g.name)}["{g.name} ({kind} {g.id})<br/>{g.address}{extra}"]')
        out.append("    end")
    out.append("  end")
    out.append('  subgraph pki["Phoenix PKI (in the program)"]')
    out.append('    root["Root CA (key in stack state)"] --> inter["Intermediate CA"]')
    out.append('    root --> gwca["Gateway client CA"]')
    out.append("  end")
    out.append(f"  inter -- held by --> {_id(topo.ca.name)}")
    out.append(f"  gwca -. signs its client certificate, trusted alone by the mesh's gateway entrypoint .-> "
               f"{_id(topo.gateway.name)}")
    label, names = service_paths(topo)
    out.append('  clients(["internal clients: every guest"])')
    out.append(f'  clients -- "{label}: {", ".join(names)}" --> {_id(topo.mesh.name)}')
    out.append("  root -. trusted by every guest .-> proxmox")
    outside = {"any": "internet", "management": "mgmt"}
    for (src, dst), ports in flow_edges(topo).items():
        out.append(f'  {outside.get(src) or _id(src)} -- "{", ".join(ports)}" --> {_id(dst)}')
    out.append('  mgmt -- "22/tcp" --> proxmox')
    return "\n".join(out) + "\n"
