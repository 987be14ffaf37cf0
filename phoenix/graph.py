"""The topology picture as Graphviz DOT, rendered to SVG or PNG by ``dot`` when it is installed.

The same picture as ``phoenix.plan.graph.mermaid`` (tiers as clusters, the allowed flows as
edges, the service-to-service paths, the PKI), drawn offline: Mermaid renderers need a browser, Graphviz does not.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict

from phoenix.plan.graph import flow_edges, service_paths
from phoenix.topology import Topology

TIER_TITLES = {"dns": "Dual-horizon DNS", "gateway": "Nginx gateway", "mesh": "Traefik mesh",
               "ca": "Step-CA", "gpu": "GPU services", "portainer": "Portainer", "agent": "Docker agents"}
FORMATS = ("mermaid", "dot", "svg", "png")
INSTALL_HINT = "install Graphviz (Debian/Ubuntu: apt-get install graphviz) or use --format mermaid|dot"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _id(name: str) -> str:
    return _q("g_" + name)


def dot(topo: Topology) -> str:
    lab = topo.lab
    out = ["digraph phoenix {", "  graph [rankdir=LR, fontname=Helvetica, compound=true];",
           "  node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=Helvetica];",
           "  edge [fontname=Helvetica, fontsize=10];",
           '  internet [label="Internet", shape=ellipse];',
           '  mgmt [label="management network", shape=ellipse];']
    tiers = defaultdict(list)
    for g in lab.guests:
        tiers[g.role].append(g)
    nodes = ", ".join(n.name for n in lab.proxmox.nodes)
    out.append("  subgraph cluster_proxmox {")
    out.append(f"    label={_q('Proxmox VE: ' + nodes)}; style=rounded;")
    for role, guests in tiers.items():
        out.append(f"    subgraph cluster_{role} {{")
        out.append(f"      label={_q(TIER_TITLES[role])}; style=\"rounded,filled\"; fillcolor=\"#f2f2f2\";")
        for g in guests:
            services = [s.name for s in lab.services if g.name in s.guests]
            kind = "LXC" if g.kind == "lxc" else "VM"
            label = f"{g.name} ({kind} {g.id})\\n{g.address}" + (f"\\n{', '.join(services)}" if services else "")
            out.append(f"      {_id(g.name)} [label=\"{label}\"];")
        out.append("    }")
    out.append("  }")
    out.append("  subgraph cluster_pki {")
    out.append('    label="Phoenix PKI (in the program)"; style=dashed;')
    out.append('    root [label="Root CA\\n(key in stack state)"];')
    out.append('    inter [label="Intermediate CA"];')
    out.append('    gwca [label="Gateway client CA"];')
    out.append("    root -> inter;")
    out.append("    root -> gwca;")
    out.append("  }")
    out.append(f'  inter -> {_id(topo.ca.name)} [label="held by"];')
    out.append(f'  gwca -> {_id(topo.gateway.name)} [style=dotted, label="signs its client certificate '
               '(trusted alone by the mesh\'s gateway entrypoint)"];')
    label, names = service_paths(topo)
    out.append('  clients [label="internal clients\\n(every guest)", shape=ellipse];')
    out.append(f'  clients -> {_id(topo.mesh.name)} [label={_q(label + ": " + ", ".join(names))}];')
    out.append(f'  root -> {_id(topo.gateway.name)} [style=dotted, label="trusted by every guest", '
               'lhead=cluster_proxmox];')
    outside = {"any": "internet", "management": "mgmt"}
    for (src, dst), ports in flow_edges(topo).items():
        out.append(f"  {outside.get(src) or _id(src)} -> {_id(dst)} [label={_q(', '.join(ports))}];")
    out.append(f'  mgmt -> {_id(lab.guests[0].name)} [label="22/tcp (every guest)", lhead=cluster_proxmox];')
    out.append("}")
    return "\n".join(out) + "\n"


class GraphvizMissing(RuntimeError):
    pass


def render(topo: Topology, fmt: str) -> bytes:
    """The picture in ``fmt``: text formats without tools, svg/png through Graphviz's ``dot``."""
    if fmt == "mermaid":
        from phoenix.plan.graph import mermaid
        return mermaid(topo).encode()
    source = dot(topo)
    if fmt == "dot":
        return source.encode()
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing(f"cannot render {fmt}: Graphviz's `dot` is not installed; {INSTALL_HINT}")
    done = subprocess.run([exe, f"-T{fmt}"], input=source.encode(), capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
