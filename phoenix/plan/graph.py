"""The topology picture as Mermaid: tiers, flows and the PKI, like the architecture diagram."""

from __future__ import annotations

from collections import defaultdict

from phoenix.topology import Topology


def _id(name: str) -> str:
    return "g_" + name.replace("-", "_")


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
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for f in topo.flows:
        if f.source == "guests" or f.port == 22:
            continue
        src = {"any": "internet", "management": "mgmt"}.get(f.source, _id(f.source))
        edges[(src, _id(f.target))].append(f"{f.port}/{f.proto}")
    for (src, dst), ports in edges.items():
        out.append(f'  {src} -- "{", ".join(dict.fromkeys(ports))}" --> {dst}')
    out.append('  mgmt -- "22/tcp" --> proxmox')
    return "\n".join(out) + "\n"
