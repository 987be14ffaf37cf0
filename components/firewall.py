"""FirewallTier: the flow matrix as Proxmox firewall rules, one rule set per guest.

Per guest (on its node, by ``container_id`` or ``vm_id``): the rules from
``phoenix.render.firewall.guest_rules`` (every rule traces to a flow of the topology), then the
options that switch the guest's firewall on with input policy DROP. The options wait for the
rules, so no guest ever runs a DROP policy without its allowances (the deploy's own SSH
among them). ``ipfilter`` stops a guest from sending with another guest's address, which
the /32 rules of the matrix rely on; a VM lists its address in ``ipfilter-net0`` (an LXC's
configured address is implied).

Guest firewalls act only while the datacenter firewall is on. With ``firewall.manageCluster``
(the default) Phoenix turns it on, leaving the host input and output policies at ACCEPT:
the nodes themselves are reached exactly as before, and only the guests are filtered. The
datacenter firewall is one setting per cluster; where the operator runs it by hand, set
``manageCluster: false`` and keep it enabled there.
"""

from __future__ import annotations

import pulumi
import pulumi_proxmoxve as pve

from components.base import Context
from phoenix.render.firewall import INPUT_POLICY, OUTPUT_POLICY, guest_rules


class FirewallTier(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: Context, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Firewall", name, None, opts)
        lab = ctx.lab
        pve_opts = pulumi.ResourceOptions(parent=self, provider=ctx.provider)
        self.rules: dict[str, pve.firewall.RulesLegacy] = {}
        self.options: dict[str, pve.firewall.OptionsLegacy] = {}
        matrix = guest_rules(ctx.topo)
        for g in lab.guests:
            handle = ctx.handle(g.name)
            where = dict(node_name=g.node, **({"container_id": g.id} if g.kind == "lxc" else {"vm_id": g.id}))
            after_guest = pulumi.ResourceOptions.merge(pve_opts, pulumi.ResourceOptions(depends_on=[handle.resource]))
            self.rules[g.name] = pve.firewall.RulesLegacy(
                f"{g.name}-firewall-rules",
                pve.firewall.RulesLegacyArgs(**where, rules=[
                    pve.firewall.RulesLegacyRuleArgs(
                        type=r.direction, action=r.action, source=r.source, dest=r.dest,
                        dport=str(r.dport), proto=r.proto, comment=r.comment, enabled=True)
                    for r in matrix[g.name]]),
                opts=after_guest)
            before_options: list[pulumi.Resource] = [self.rules[g.name]]
            if g.kind == "vm":
                before_options.append(pve.firewall.IpsetLegacy(
                    f"{g.name}-ipfilter",
                    pve.firewall.IpsetLegacyArgs(**where, name="ipfilter-net0",
                                                 comment="addresses net0 may send from (Phoenix)",
                                                 cidrs=[pve.firewall.IpsetLegacyCidrArgs(
                                                     name=str(g.address), comment=g.name)]),
                    opts=after_guest))
            self.options[g.name] = pve.firewall.OptionsLegacy(
                f"{g.name}-firewall-options",
                pve.firewall.OptionsLegacyArgs(
                    **where, enabled=True, input_policy=INPUT_POLICY, output_policy=OUTPUT_POLICY,
                    dhcp=False, ndp=False, radv=False, macfilter=True, ipfilter=True,
                    log_level_in="nolog", log_level_out="nolog"),
                opts=pulumi.ResourceOptions.merge(pve_opts, pulumi.ResourceOptions(depends_on=before_options)))
        self.cluster = None
        if lab.firewall.manage_cluster:
            self.cluster = pve.cluster.FirewallLegacy(
                "datacenter-firewall",
                pve.cluster.FirewallLegacyArgs(enabled=True, ebtables=True, input_policy="ACCEPT",
                                               output_policy="ACCEPT"),
                opts=pve_opts)
        self.exports: dict = {}
        self.register_outputs({})
