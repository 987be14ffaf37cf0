"""The firewall matrix: rules per guest from the flows, and their Proxmox resources.

The expected rule sets are written from the issue's statement of who may reach whom (with
ports and addresses from the stack model), not from ``topo.flows``: the test would catch a
flow too many or too few.
"""

from __future__ import annotations

import ipaddress

import pytest

from conftest import edited, shipped_plan, stack_config
from phoenix.model import parse_lab
from phoenix.plan import make_plan
from phoenix.render.firewall import flow_rules, guest_rules, permits
from phoenix.stackfile import expand_catalog
from phoenix.topology import build

RULES = "proxmoxve:firewall/rulesLegacy:RulesLegacy"
OPTIONS = "proxmoxve:firewall/optionsLegacy:OptionsLegacy"
IPSET = "proxmoxve:firewall/ipsetLegacy:IpsetLegacy"
CLUSTER = "proxmoxve:cluster/firewallLegacy:FirewallLegacy"


def topo_of(name: str):
    stack = stack_config(name)
    return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))


def expected_inbound(topo) -> dict[str, set]:
    """The issue's matrix, as (source, port, proto) per guest; source None is 'anywhere'."""
    lab = topo.lab
    net = str(lab.network.cidr)
    one = lambda g: f"{g.address}/32"  # noqa: E731
    mgmt = [str(n) for n in lab.network.management]       # the declared management networks, nothing else
    # with sshViaNode each node (the deploy's jump host) may SSH in too; never the network's gateway
    jump = [f"{n.address}/32" for n in lab.proxmox.nodes
            if lab.proxmox.ssh_via_node and not any(n.address in m for m in lab.network.management)]
    out = {g.name: {(m, 22, "tcp") for m in mgmt + jump} for g in lab.guests}    # SSH only from those
    out[topo.gateway.name] |= {(None, 80, "tcp"), (None, 443, "tcp")}         # the public entry
    out[topo.mesh.name] |= {(one(topo.gateway), lab.mesh.gateway_port, "tcp"),  # mesh: from the gateway
                            (net, lab.mesh.internal_port, "tcp"),              # ... and from guests
                            (one(topo.ca), 80, "tcp")}                         # its ACME HTTP-01
    # the dashboard and metrics for operators, and what `phoenix verify` asks from a management host:
    # every service's health through the internal entrypoint, Step-CA's health
    out[topo.mesh.name] |= {(m, p, "tcp") for m in mgmt for p in (lab.mesh.dashboard_port, lab.mesh.metrics_port,
                                                                 lab.mesh.internal_port)}
    out[topo.ca.name] |= {(x, lab.pki.ca_port, "tcp") for x in [net, *mgmt]}  # the CA from guests (and verify)
    out[topo.dns.name] |= {(None, 53, "udp"), (None, 53, "tcp")}              # both views
    for s in lab.services:                                                    # backends only from the mesh
        for g in s.guests:
            out[g] |= {(one(topo.mesh), s.port, "tcp"), (one(topo.ca), 80, "tcp")}
    for a in topo.agents:                                                     # agents only from Portainer
        out[a.name] |= {(one(topo.portainer), lab.portainer.agent_port, "tcp")}
    return out


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_rule_set_per_guest_matches_the_matrix(stack):
    topo = topo_of(stack)
    rules = guest_rules(topo)
    expected = expected_inbound(topo)
    assert set(rules) == {g.name for g in topo.lab.guests}
    for guest, want in expected.items():
        got = {(r.source, r.dport, r.proto) for r in rules[guest] if r.direction == "in"}
        assert got == want, f"{guest}: extra {got - want}, missing {want - got}"
        # outbound DNS and NTP for every guest (trap 7: the CA's own DNS was blocked)
        out = {(r.dest, r.dport, r.proto) for r in rules[guest] if r.direction == "out"}
        assert out == {(None, 53, "udp"), (None, 53, "tcp"), (None, 123, "udp")}
        assert all(r.action == "ACCEPT" and r.comment for r in rules[guest])
        assert len(rules[guest]) == len(set((r.direction, r.source, r.dest, r.dport, r.proto) for r in rules[guest]))


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_every_rule_traces_to_a_flow_and_every_flow_to_rules(stack):
    topo = topo_of(stack)
    rules = guest_rules(topo)
    from_flows: dict[str, list] = {}
    for flow in topo.flows:
        made = flow_rules(topo, flow)
        assert made and all(made.values()), f"flow {flow} allows nothing"
        for guest, rs in made.items():
            from_flows.setdefault(guest, []).extend(rs)
            for r in rs:  # each rule the flow makes is in the guest's set
                assert any((x.direction, x.source, x.dest, x.dport, x.proto) ==
                           (r.direction, r.source, r.dest, r.dport, r.proto) for x in rules[guest])
    for guest, rs in rules.items():
        for r in rs:
            assert r in from_flows[guest], f"{guest}: rule {r} comes from no flow"


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_each_hop_the_route_audit_needs_is_allowed_and_nothing_else(stack):
    topo = topo_of(stack)
    lab, rules = topo.lab, guest_rules(topo)
    outsider = "198.18.0.7"                     # somewhere on the internet
    mgmt_host = str(next(lab.network.management[0].hosts())) if lab.network.management else None
    gw, mesh = str(topo.gateway.address), str(topo.mesh.address)
    for route in topo.routes:
        if route.public:
            assert permits(rules[topo.gateway.name], "in", outsider, 443)
            assert permits(rules[topo.gateway.name], "in", outsider, 80)
            assert permits(rules[topo.mesh.name], "in", gw, route.entrypoint.port)
            assert not permits(rules[topo.mesh.name], "in", outsider, route.entrypoint.port)
        else:
            for g in lab.guests:
                assert permits(rules[topo.mesh.name], "in", str(g.address), route.entrypoint.port)
        for b in route.backends:
            assert permits(rules[b.guest], "in", mesh, b.port)
            for other in lab.guests:               # only the mesh reaches a backend
                if other.name != topo.mesh.name:
                    assert not permits(rules[b.guest], "in", str(other.address), b.port), (b, other.name)
            assert not permits(rules[b.guest], "in", outsider, b.port)
    for g in lab.guests:
        assert permits(rules[topo.ca.name], "in", str(g.address), lab.pki.ca_port)
        assert permits(rules[topo.dns.name], "in", str(g.address), 53, "udp")
        assert permits(rules[g.name], "out", str(lab.network.upstream_resolvers[0]), 53, "udp")
        assert permits(rules[g.name], "out", outsider, 123, "udp")
        assert not permits(rules[g.name], "in", outsider, 22)
        for other in lab.guests:                  # no guest may SSH into another
            assert not permits(rules[g.name], "in", str(other.address), 22)
        if mgmt_host:
            assert permits(rules[g.name], "in", mgmt_host, 22)
    assert permits(rules[topo.dns.name], "in", outsider, 53, "udp")         # the external view
    assert not permits(rules[topo.ca.name], "in", outsider, lab.pki.ca_port)
    for a in topo.agents:
        assert permits(rules[a.name], "in", str(topo.portainer.address), lab.portainer.agent_port)
        for other in lab.guests:
            if other.name != topo.portainer.name:
                assert not permits(rules[a.name], "in", str(other.address), lab.portainer.agent_port)
    ui = next(s for s in lab.services if topo.portainer.name in s.guests)
    assert permits(rules[topo.portainer.name], "in", mesh, ui.port)
    assert not permits(rules[topo.portainer.name], "in", gw, ui.port)
    assert not permits(rules[topo.portainer.name], "in", outsider, ui.port)


def test_management_without_a_jump_host_is_only_the_management_networks():
    def direct(raw):
        raw["proxmox"]["sshViaNode"] = False
    stack = edited("dev", direct)
    topo = build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))
    ssh = {r.source for r in guest_rules(topo)["ca"] if r.dport == 22}
    assert ssh == {"192.168.1.0/24"}


def test_direct_ssh_without_management_networks_is_refused():
    from phoenix.errors import ConfigError

    def bad(raw):
        raw["proxmox"]["sshViaNode"] = False
        raw["network"]["management"] = []
    stack = edited("dev", bad)
    with pytest.raises(ConfigError) as err:
        parse_lab(expand_catalog(stack.phoenix(), stack.root))
    assert "phoenix:network.management: is empty, but guests are reached by SSH directly" in str(err.value)


# -- the Proxmox resources ------------------------------------------------------------------
@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_each_guest_gets_rules_and_options_on_its_node(stack):
    plan = shipped_plan(stack)
    topo, run = plan.topo, plan.run
    matrix = guest_rules(topo)
    for g in topo.lab.guests:
        rules, options = run.named(f"{g.name}-firewall-rules"), run.named(f"{g.name}-firewall-options")
        for r in (rules, options):
            assert r.value("nodeName") == g.node
            key, other = ("containerId", "vmId") if g.kind == "lxc" else ("vmId", "containerId")
            assert r.value(key) == g.id and r.value(other) is None
            assert run.urn_of(g.name) in r.dependencies or r is options
        listed = [(x["type"], x["action"], x.get("source"), x.get("dest"), int(x["dport"]), x["proto"])
                  for x in rules.value("rules")]
        assert listed == [(m.direction, m.action, m.source, m.dest, m.dport, m.proto) for m in matrix[g.name]]
        assert all(x["enabled"] and x["comment"] for x in rules.value("rules"))
        assert options.value("enabled") is True
        assert options.value("inputPolicy") == "DROP" and options.value("outputPolicy") == "ACCEPT"
        assert options.value("ipfilter") is True and options.value("macfilter") is True
        # the DROP policy only once the allowances (the deploy's SSH among them) are in place
        assert rules.urn in options.dependencies
        if g.kind == "vm":  # a VM's ipfilter set must list its address, or it could send nothing
            ipset = run.named(f"{g.name}-ipfilter")
            assert ipset.value("name") == "ipfilter-net0" and ipset.value("vmId") == g.id
            assert [c["name"] for c in ipset.value("cidrs")] == [str(g.address)]
            assert ipset.urn in options.dependencies


def test_guest_nics_have_the_firewall_flag(dev_plan):
    for g in dev_plan.topo.lab.guests:
        r = dev_plan.run.named(g.name)
        nics = r.value("networkInterfaces") or r.value("networkDevices")
        assert nics and all(n["firewall"] is True for n in nics), g.name


def test_the_datacenter_firewall_is_the_operators_unless_the_stack_says_so(dev_plan):
    """Its options are the whole cluster's (an input policy of DROP an operator set included):
    by default Phoenix does not touch them at all."""
    assert dev_plan.topo.lab.firewall.manage_cluster is False
    assert dev_plan.run.by_type(CLUSTER) == []
    assert len(dev_plan.run.by_type(OPTIONS)) == len(dev_plan.topo.lab.guests)


def test_manage_cluster_sets_exactly_what_the_stack_says():
    def managed(raw):
        raw["firewall"] = {"manageCluster": True, "clusterInputPolicy": "DROP"}
    plan = make_plan(edited("dev", managed))
    [cluster] = plan.run.by_type(CLUSTER)
    assert cluster.value("enabled") is True
    assert cluster.value("inputPolicy") == "DROP" and cluster.value("outputPolicy") == "ACCEPT"
    # one setting per cluster: it must not depend on the guests, or each new guest would touch it
    assert cluster.dependencies == []


def test_admin_ports_are_not_open_to_the_networks_gateway(dev_plan):
    """10.20.0.1 routes the guest network: behind a masquerading router it is every client on the
    internet. SSH, the dashboard and the metrics are for the declared management networks only."""
    topo, rules = dev_plan.topo, guest_rules(dev_plan.topo)
    router = str(topo.lab.network.gateway)
    mgmt_host = str(next(topo.lab.network.management[0].hosts()))
    for g in topo.lab.guests:
        assert not permits(rules[g.name], "in", router, 22), g.name
        assert permits(rules[g.name], "in", mgmt_host, 22), g.name
    for port in (topo.lab.mesh.dashboard_port, topo.lab.mesh.metrics_port):
        assert not permits(rules[topo.mesh.name], "in", router, port)
        assert permits(rules[topo.mesh.name], "in", mgmt_host, port)


def test_phoenix_verify_from_a_management_host_reaches_every_address_it_probes(dev_plan):
    """Each check ``phoenix verify`` makes (phoenix.verify.plan_checks) targets an address and port
    the firewall lets a management host reach."""
    from phoenix.verify import plan_checks
    topo, rules = dev_plan.topo, guest_rules(dev_plan.topo)
    by_address = {str(g.address): g.name for g in topo.lab.guests}
    mgmt_host = str(next(topo.lab.network.management[0].hosts()))
    checked = 0
    for check in plan_checks(topo):
        guest = by_address.get(check.address)
        if guest is None or check.skip:
            continue                                   # the public address, a file
        proto = "udp" if check.check.startswith("dns/") else "tcp"
        assert permits(rules[guest], "in", mgmt_host, check.port, proto), (check.check, check.target, check.port)
        checked += 1
    assert checked >= 4


def test_typo_in_firewall_section_is_refused():
    from phoenix.errors import ConfigError

    def typo(raw):
        raw["firewall"] = {"manageClustr": False}
    stack = edited("dev", typo)
    with pytest.raises(ConfigError, match=r"phoenix:firewall.manageClustr: unknown key"):
        parse_lab(expand_catalog(stack.phoenix(), stack.root))


def test_sources_are_valid_cidrs(cluster_plan):
    for r in cluster_plan.run.by_type(RULES):
        for rule in r.value("rules"):
            for key in ("source", "dest"):
                if rule.get(key) is not None:
                    ipaddress.ip_network(rule[key])
