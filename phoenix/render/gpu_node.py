"""A GPU node's own files: what makes its containers' NVIDIA device nodes at every boot.

The node probe (``components.workloads.gpu_node_probes``, run on the node over SSH) installs a
script and a systemd unit that runs it at every boot before Proxmox starts the guests
(``Before=pve-guests.service``): Proxmox refuses to start a container whose passed-through
device is missing, and nothing else makes /dev/nvidia-uvm* at boot (trap 17). Then it prints the
driver version, the fact the containers' user-space drivers follow.
"""

from __future__ import annotations

from phoenix.render import config_text, render
from phoenix.topology import Topology, gpu_device_paths


def _q(value) -> str:
    """A shell word, always quoted."""
    return "'" + str(value).replace("'", "'\\''") + "'"


#: on each GPU node: what makes the containers' device nodes at every boot, before the guests
#: start (the probe installs both and enables the unit).
NODE_DEVICES_SCRIPT = "/usr/local/sbin/phoenix-nvidia-devices"
NODE_DEVICES_UNIT = "phoenix-nvidia-devices.service"


def node_device_paths(topo: Topology, node: str) -> list[str]:
    """Every device node a GPU container on ``node`` gets (their union, in order)."""
    return list(dict.fromkeys(p for g in topo.lab.guests if g.gpus and g.node == node for p in gpu_device_paths(g)))


def gpu_boot_unit(topo: Topology, node: str) -> str:
    return render("workloads/phoenix-nvidia-devices.service.j2", node=node, script=NODE_DEVICES_SCRIPT,
                  devices=" ".join(node_device_paths(topo, node)))


def gpu_probe_command(topo: Topology, node: str) -> str:
    """The ``create`` of the node's probe: the boot unit that makes the device nodes installed,
    enabled and run, the device nodes present, then the driver version on stdout."""
    return render("workloads/gpu-node-probe.sh.j2", q=_q, node=node,
                  devices=" ".join(map(_q, node_device_paths(topo, node))),
                  script=config_text("workloads/nvidia-devices.sh").rstrip("\n"), script_path=NODE_DEVICES_SCRIPT,
                  unit_text=gpu_boot_unit(topo, node).rstrip("\n"), unit_name=NODE_DEVICES_UNIT,
                  unit_path=f"/etc/systemd/system/{NODE_DEVICES_UNIT}")
