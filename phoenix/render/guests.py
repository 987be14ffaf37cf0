"""Guest-level files: cloud-init user-data for VMs."""

from __future__ import annotations

from phoenix.model import Guest
from phoenix.render import render
from phoenix.topology import Topology

DOCKER_ROLES = {"portainer", "agent"}


def render_user_data(topo: Topology, guest: Guest, deploy_public_key: str) -> str:
    return render("guests/user-data.yaml.j2", guest=guest, fqdn=topo.guest_fqdn(guest),
                  deploy_public_key=deploy_public_key.strip(), docker=guest.role in DOCKER_ROLES)
