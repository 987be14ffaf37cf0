"""FirewallTier: the flow matrix as Proxmox firewall rules, one rule set per guest.

Per guest (on its node, by ``container_id`` or ``vm_id``): the rules from
``phoenix.render.firewall.guest_rules`` (every rule traces to a flow of the topology), then the
options that switch the guest's firewall on with input policy DROP. The options wait for the
rules, so no guest ever runs a DROP policy without its allowances (the deploy's own SSH
among them). ``ipfilter`` stops a guest from sending with another guest's address, which
the /32 rules of the matrix rely on; a VM lists its address in ``ipfilter-net0`` (an LXC's
configured address is implied).

Guest firewalls act only while the datacenter firewall is on. Its options are the whole
cluster's, an operator's to set: Phoenix leaves them alone unless the stack says
``firewall.manageCluster: true``, and then sets exactly what the stack says (on, with
``clusterInputPolicy`` and ``clusterOutputPolicy``, ACCEPT by default, so the nodes themselves
are reached as before). Otherwise the operator keeps it on (Datacenter, Firewall, Options).

Rules follow their guest. They name it by the guest resource's own outputs (its ``vm_id`` and
``node_name``), are replaced with it (``replace_with``: Proxmox deletes a guest's firewall
config with the guest, so a guest Pulumi re-creates gets its rules again) and are replaced
delete-first: their identity is the guest's VMID, and the provider's delete removes the rules
at the positions the state lists, which create-first would be the new ones (bpg
proxmoxtf/resource/firewall/rules.go ``RulesDelete``). A guest rebuilt outside Pulumi gets them
back from ``pulumi up --refresh`` the same way: each firewall resource's ``replacement_trigger``
is the guest's MAC address, which the refresh reads anew from the rebuilt guest. Reading alone
would not do: the provider's ``optionsRead`` keeps the state's values for options a new guest
does not have (firewall/options.go), so the state would still show the firewall on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_proxmoxve as pve

from components.base import Context, Guests
from phoenix.render.firewall import INPUT_POLICY, OUTPUT_POLICY


@dataclass(frozen=True)
class FirewallArgs:
    guests: Guests


class FirewallTier(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: Context, args: FirewallArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Firewall", name, None, opts)
        lab = ctx.lab
        pve_opts = pulumi.ResourceOptions(parent=self, provider=ctx.provider)
        self.rules: dict[str, pve.firewall.RulesLegacy] = {}
        self.options: dict[str, pve.firewall.OptionsLegacy] = {}
        matrix = ctx.artifacts.firewall      # the matrix the route audit checked hops against
        for g in lab.guests:
            handle = args.guests[g.name]
            guest = handle.resource
            # the guest's node and id (an LXC's as container_id); the same for all three resources
            where: dict[str, Any] = {"node_name": guest.node_name,
                                     ("container_id" if g.kind == "lxc" else "vm_id"): guest.vm_id}
            follow = pulumi.ResourceOptions(replace_with=[guest], replacement_trigger=handle.mac,
                                            delete_before_replace=True)
            after_guest = pulumi.ResourceOptions.merge(pve_opts, pulumi.ResourceOptions.merge(
                follow, pulumi.ResourceOptions(depends_on=[guest])))
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
                opts=pulumi.ResourceOptions.merge(pve_opts, pulumi.ResourceOptions.merge(
                    follow, pulumi.ResourceOptions(depends_on=before_options))))
        self.cluster = None
        if lab.firewall.manage_cluster:
            self.cluster = pve.cluster.FirewallLegacy(
                "datacenter-firewall",
                pve.cluster.FirewallLegacyArgs(enabled=True, ebtables=True,
                                               input_policy=lab.firewall.cluster_input_policy,
                                               output_policy=lab.firewall.cluster_output_policy),
                opts=pve_opts)
        self.exports: dict = {}
        self.register_outputs({})
