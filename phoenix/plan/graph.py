"""The topology picture as Mermaid: tiers, flows and the PKI, like the architecture diagram."""

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


def mermaid(topo: Topology) -> str:
    lab = topo.lab
    out = ["flowchart LR", '  internet(("Internet"))', '  mgmt(["management network"])']
    out.append(f'  subgraph proxmox["Proxmox VE: {", ".join(n.name for n in lab.proxmox.nodes)}"]')
    tiers = defaultdict(list)
    for g in lab.guests:
        tiers[g.role].append(g)
    titles = {"dns": "Dual-horizon DNS", "gateway": "Nginx gateway", "mesh": "Traefik mesh",
              "ca": "Step-CA", "gpu": "GPU services", "portainer": "Portainer", "agent": "Docker agents"}
    for role, guests in tiers.items():
        out.append(f'    subgraph tier_{role}["{titles[role]}"]')
        for g in guests:
            services = [s.name for s in lab.services if g.name in s.guests]
            extra = f"<br/>{', '.join(services)}" if services else ""
            kind = "LXC" if g.kind == "lxc" else "VM"
            out.append(f'      {_id(g.name)}["{g.name} ({kind} {g.id})<br/>{g.address}{extra}"]')
        out.append("    end")
    out.append("  end")
    out.append('  subgraph pki["Phoenix PKI (in the program)"]')
    out.append('    root["Root CA (key in stack state)"] --> inter["Intermediate CA"]')
    out.append("  end")
    out.append(f"  inter -- held by --> {_id(topo.ca.name)}")
    out.append("  root -. trusted by every guest .-> proxmox")
    outside = {"any": "internet", "management": "mgmt"}
    for (src, dst), ports in flow_edges(topo).items():
        out.append(f'  {outside.get(src) or _id(src)} -- "{", ".join(ports)}" --> {_id(dst)}')
    out.append('  mgmt -- "22/tcp" --> proxmox')
    return "\n".join(out) + "\n"
