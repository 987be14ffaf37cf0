"""The firewall matrix: ``topo.flows`` turned into Proxmox firewall rules per guest.

Every rule comes from one flow and nothing else (the route audit reads this same function):

* a flow into a guest is an ``in`` ACCEPT rule on that guest, one per source: ``any`` is no
  source restriction, ``guests`` the lab network, ``management`` each management source
  (``Topology.management_sources``), a guest its own address as a /32;
* a flow out of the lab (target ``any``) is an ``out`` ACCEPT rule on each source guest.

With the input policy DROP, what no rule names is refused. The output policy is ACCEPT
(guests fetch packages, images and models); the outbound rules keep DNS and NTP open should
an operator tighten it (trap 7).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from phoenix.topology import Flow, Topology

INPUT_POLICY = "DROP"
OUTPUT_POLICY = "ACCEPT"


@dataclass(frozen=True)
class FirewallRule:
    direction: str            # "in" or "out"
    action: str               # "ACCEPT"
    source: str | None     # CIDR, or None for any
    dport: int
    proto: str                # "tcp" or "udp"
    comment: str
    dest: str | None = None  # CIDR, or None for any

    def matches(self, direction: str, address: str | None, port: int, proto: str) -> bool:
        """Does this rule accept a packet (``address`` is the far end: source in, destination out)?"""
        if (direction, port, proto) != (self.direction, self.dport, self.proto):
            return False
        near = self.source if direction == "in" else self.dest
        if near is None:
            return True
        return address is not None and ipaddress.ip_address(address) in ipaddress.ip_network(near)


def flow_sources(topo: Topology, source: str) -> list[str | None]:
    """The CIDRs a flow's source names (None: anywhere)."""
    if source == "any":
        return [None]
    if source == "guests":
        return [str(topo.lab.network.cidr)]
    if source == "management":
        return list(topo.management_sources)
    if source == "nodes":
        return list(topo.jump_hosts)
    return [f"{topo.lab.guest(source).address}/32"]


def flow_guests(topo: Topology, name: str) -> list[str]:
    """The guests a flow's end stands for (``guests``: every guest; a guest name: that guest)."""
    if name == "guests":
        return [g.name for g in topo.lab.guests]
    if name in ("any", "management", "nodes"):
        return []
    return [topo.lab.guest(name).name]


def flow_rules(topo: Topology, flow: Flow) -> dict[str, list[FirewallRule]]:
    """The rules one flow puts on each guest."""
    out: dict[str, list[FirewallRule]] = {}
    if flow.target == "any":
        for g in flow_guests(topo, flow.source):
            out.setdefault(g, []).append(
                FirewallRule("out", "ACCEPT", None, flow.port, flow.proto, flow.purpose))
        return out
    out[flow.target] = [FirewallRule("in", "ACCEPT", src, flow.port, flow.proto, flow.purpose)
                        for src in flow_sources(topo, flow.source)]
    return out


def guest_rules(topo: Topology) -> dict[str, list[FirewallRule]]:
    """Every guest's rules, in flow order, each rule once (the first flow's comment names it)."""
    out: dict[str, list[FirewallRule]] = {g.name: [] for g in topo.lab.guests}
    seen: dict[str, set] = {g.name: set() for g in topo.lab.guests}
    for flow in topo.flows:
        for guest, rules in flow_rules(topo, flow).items():
            for r in rules:
                key = (r.direction, r.action, r.source, r.dest, r.dport, r.proto)
                if key not in seen[guest]:
                    seen[guest].add(key)
                    out[guest].append(r)
    return out


def permits(rules: list[FirewallRule], direction: str, address: str | None, port: int,
            proto: str = "tcp") -> bool:
    """What the guest's firewall does with a packet: a matching rule accepts, else the policy."""
    if any(r.action == "ACCEPT" and r.matches(direction, address, port, proto) for r in rules):
        return True
    return (INPUT_POLICY if direction == "in" else OUTPUT_POLICY) == "ACCEPT"
