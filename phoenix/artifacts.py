"""What the tiers deploy, rendered once per plan or deployment: the route audit proves this very
value and the components push the files made from it.

``render_all`` calls each tier's renderer once (DNS zones and view answers, gateway server blocks
and certificate names, the mesh's static and dynamic Traefik configuration, the firewall matrix,
the certificates the backends serve). The pushed files are made from these fields (the zone
files from the zones, nginx's server blocks from the blocks, Traefik's YAML from the dicts), so
what the audit walked is what reaches the guests; nothing renders a tier a second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from phoenix.bundle import GuestFile
from phoenix.render import dns as dns_render
from phoenix.render import firewall as firewall_render
from phoenix.render import gateway as gateway_render
from phoenix.render import mesh as mesh_render
from phoenix.render.backends import BackendCertificate, backend_certificates
from phoenix.render.dns import Zone
from phoenix.render.firewall import FirewallRule
from phoenix.render.gateway import GatewayServer
from phoenix.topology import Topology

Answers = dict[str, dict[str, list[tuple[str, str]]]]


@dataclass
class Artifacts:
    topo: Topology = field(repr=False)
    #: the DNS guest's zones, and what each view answers from them: view -> FQDN -> [(rtype, value)]
    dns_zones: list[Zone]
    dns: Answers
    #: the gateway's server blocks (one per public host) and the names on its public certificate
    gateway: list[GatewayServer]
    gateway_certificate: list[str]
    #: the mesh's Traefik configuration, as the YAML files hold it
    mesh_static: dict
    mesh_dynamic: dict
    #: guest -> its Proxmox firewall rules
    firewall: dict[str, list[FirewallRule]]
    #: (guest, port) -> the certificate a TLS backend serves there
    backend_certificates: dict[tuple[str, int], BackendCertificate] = field(default_factory=dict)

    # -- the files, made from the fields above ------------------------------------------------
    def dns_files(self, tsig_secret: str) -> list[GuestFile]:
        """The DNS config push: the zone files of ``dns_zones``, and the TSIG key the secret completes."""
        return dns_render.config_files(self.topo, tsig_secret, self.dns_zones)

    @cached_property
    def dns_check(self) -> str:
        return dns_render.check_command(self.topo, self.dns_zones)

    @cached_property
    def gateway_files(self) -> list[GuestFile]:
        return gateway_render.nginx_files(self.topo, self.gateway)

    @cached_property
    def mesh_static_yaml(self) -> str:
        return mesh_render.to_yaml(self.mesh_static)

    @cached_property
    def mesh_dynamic_files(self) -> list[GuestFile]:
        return [GuestFile(mesh_render.DYNAMIC_PATH, mesh_render.to_yaml(self.mesh_dynamic), 0o640,
                          group=mesh_render.USER),
                GuestFile(mesh_render.EXPECTED_PATH, mesh_render.expected_text(self.topo, self.mesh_dynamic))]


def render_all(topo: Topology) -> Artifacts:
    zones = dns_render.zones(topo)
    return Artifacts(
        topo=topo,
        dns_zones=zones,
        dns=dns_render.view_answers(topo, zones),
        gateway=gateway_render.server_blocks(topo),
        gateway_certificate=gateway_render.certificate_names(topo),
        mesh_static=mesh_render.static_config(topo),
        mesh_dynamic=mesh_render.dynamic_config(topo),
        firewall=firewall_render.guest_rules(topo),
        backend_certificates=backend_certificates(topo),
    )
