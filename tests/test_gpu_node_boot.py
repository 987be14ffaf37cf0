"""A GPU node reboots: its containers' NVIDIA device nodes are back before Proxmox starts them.

The node probe (the plan's ``gpu-probe-<node>`` step, its exact command) runs on a played node:
a mount namespace of its own with a fresh /dev, its /etc/systemd/system and /usr/local/sbin in
temporary directories, /proc/devices played by a file that the NVIDIA modules' loading fills
(the ``modprobe`` stand-in gives nvidia-uvm a different major at every boot, as the kernel may:
trap 17), and tests/units.py as systemctl. Then the node "reboots": a new namespace with a /dev
and /proc/devices without any NVIDIA entry, only the files the probe left on disk. The order
the units start in is systemd's own: ``systemd --test`` computes the boot transaction from
those unit files (with a stand-in for Proxmox's pve-guests.service), and the units run in that
order. pve-guests' stand-in does what Proxmox does for each GPU container of the plan: refuse to
start it when one of its passed-through devices is missing ("Device ... does not exist").
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import units
from conftest import shipped_plan
from guest_tools import BASIC_DEV
from lab import require_isolated
from phoenix.render import workloads as wl

PVE_GUESTS = """[Unit]
Description=Lab stand-in for Proxmox's pve-guests.service (starts the guests marked onboot)
After=network.target pve-cluster.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {check}

[Install]
WantedBy=multi-user.target
"""
MODPROBE = """#!/bin/sh
# Lab stand-in for modprobe: "loads" the NVIDIA modules by registering their majors in the
# played /proc/devices (nvidia-uvm's is dynamic: a different one at every boot).
case "$1" in
  nvidia) grep -q ' nvidia-frontend$' /proc/devices || echo '195 nvidia-frontend' >> /proc/devices ;;
  nvidia_uvm) grep -q ' nvidia-uvm$' /proc/devices || echo "{uvm} nvidia-uvm" >> /proc/devices ;;
  *) echo "modprobe (lab stand-in): unknown module $1" >&2; exit 1 ;;
esac
"""
VERSION = "550.127.05"


def container_start_check(plan, node: str) -> str:
    """What Proxmox checks for each GPU container on ``node`` before it starts it."""
    lines = ["#!/bin/sh",
             "# Proxmox's check for every passed-through device (pve-container: \"Device ... does not exist\")"]
    for r in plan.run.resources:
        if r.type == "proxmoxve:index/containerLegacy:ContainerLegacy" and r.value("nodeName") == node:
            for dev in r.value("devicePassthroughs") or []:
                vmid = int(r.value("vmId"))
                lines.append(f"[ -c {dev['path']} ] || {{ echo 'container {vmid}: Device {dev['path']} "
                             f"does not exist' >&2; exit 1; }}")
                lines.append(f"echo 'container {vmid}: {dev['path']} ok'")
    return "\n".join(lines) + "\n"


class Node:
    """A played Proxmox node: its disk (what survives a reboot) in a temporary directory."""

    def __init__(self, tmp: Path, plan, name: str):
        require_isolated()
        self.tmp, self.plan, self.name = tmp, plan, name
        self.units_dir, self.sbin = tmp / "etc-systemd-system", tmp / "usr-local-sbin"
        self.lib = tmp / "lib-systemd-system"
        self.bin = tmp / "bin"
        for d in (self.units_dir, self.sbin, self.lib, self.bin):
            d.mkdir()
        check = tmp / "pve-guests-check.sh"
        check.write_text(container_start_check(plan, name))
        (self.lib / "pve-guests.service").write_text(PVE_GUESTS.format(check=check))
        (self.bin / "nvidia-smi").write_text(f"#!/bin/sh\n[ -c /dev/nvidiactl ] || exit 9\necho {VERSION}\n")
        (self.bin / "nvidia-smi").chmod(0o755)
        self.boots = 0
        self.readable: list[Path] = []

    def cleanup(self) -> None:
        for d in self.readable:
            shutil.rmtree(d, ignore_errors=True)

    def boot(self, script: str) -> subprocess.CompletedProcess:
        """Run ``script`` on the node as it is after a (re)boot: a fresh /dev and /proc/devices."""
        self.boots += 1
        run = self.tmp / f"boot-{self.boots}"
        run.mkdir()
        devices = run / "proc-devices"
        devices.write_text("Character devices:\n  1 mem\n  5 /dev/tty\n")
        # in /usr/local/sbin, first on systemd's PATH: a unit's commands find it (tests/units.py
        # gives services systemd's clean environment)
        (self.sbin / "modprobe").write_text(MODPROBE.format(uvm=random.randint(230, 511)))
        (self.sbin / "modprobe").chmod(0o755)
        units.install(self.bin, state=run / "units-state")
        mounts = "\n".join([
            BASIC_DEV,
            f"mount --bind {self.units_dir} /etc/systemd/system",
            f"mount --bind {self.sbin} /usr/local/sbin",
            f"mount --bind {devices} /proc/devices",
            # Proxmox's unit (the stand-in), where tests/units.py reads units too
            "mount -t tmpfs -o mode=0755 tmpfs /run", "mkdir -p /run/systemd/system",
            f"mount --bind {self.lib} /run/systemd/system",
            f"export PATH={self.bin}:$PATH",
        ])
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                               f"set -e\n{mounts}\n{script}"],
                              capture_output=True, text=True, timeout=120, check=False)

    def log(self, unit: str) -> str:
        """What ``unit`` printed in the last boot (tests/units.py keeps it in its state)."""
        path = self.tmp / f"boot-{self.boots}" / "units-state" / f"{unit}.log"
        return path.read_text() if path.exists() else ""

    def enabled(self) -> set[str]:
        """What the node's systemctl (tests/units.py) was asked to enable, in any boot so far."""
        import json
        return {f.stem for f in self.tmp.glob("boot-*/units-state/*.json")
                if json.loads(f.read_text()).get("enabled")}

    def boot_order(self) -> list[str]:
        """The units of the boot transaction to multi-user.target that start a service of ours or
        Proxmox's, in the order systemd's own --test run computes (its After= of each unit).
        The node's disk as systemd reads it: its unit files, enabled by systemd's own
        `systemctl --root` (the links their [Install] sections ask for), Proxmox's pve-guests
        enabled as its package does."""
        # where nobody (below) can read it: pytest's own directories are root's only
        root = Path(tempfile.mkdtemp(prefix="phoenix-node-", dir="/tmp"))
        self.readable.append(root)
        os.chmod(root, 0o755)
        shutil.copytree(self.units_dir, root / "etc/systemd/system")
        shutil.copytree(self.lib, root / "lib/systemd/system")
        for unit in sorted(self.enabled() | {"pve-guests.service"}):
            done = subprocess.run(["systemctl", f"--root={root}", "enable", unit], capture_output=True, text=True,
                                  check=False)
            assert done.returncode == 0, done.stderr
        empty = root / "no-generators"
        empty.mkdir()
        env = {"SYSTEMD_UNIT_PATH": f"{root}/etc/systemd/system:{root}/lib/systemd/system:",
               "SYSTEMD_GENERATOR_PATH": str(empty), "SYSTEMD_ENVIRONMENT_GENERATOR_PATH": str(empty),
               "PATH": os.environ["PATH"]}
        # systemd refuses its test mode as root: as nobody, reading the unit files.
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "/lib/systemd/systemd", "--test", "--system", "--unit=multi-user.target", "--no-pager"],
                              capture_output=True, text=True, env=env, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return order_of(done.stdout, {wl.NODE_DEVICES_UNIT, "pve-guests.service"})


def order_of(dump: str, wanted: set[str]) -> list[str]:
    """From systemd's --test dump: the wanted units that have a start job, each after what its
    After= lists (as systemd resolved it, drop-ins and reverse Before= included)."""
    jobs = set(re.findall(r"-> Job \d+:\s*\n\s*Action: (\S+) -> start", dump)) or set(
        re.findall(r"Action: (\S+) -> start", dump))
    after: dict[str, set[str]] = {}
    for block in re.split(r"\n\t-> Unit ", dump)[1:]:
        unit = block.split(":", 1)[0]
        after[unit] = set(re.findall(r"\n\t\tAfter: (\S+)", block))
    todo = sorted(u for u in wanted if u in jobs)
    order: list[str] = []
    while todo:
        ready = [u for u in todo if not (after.get(u, set()) & set(todo))]
        assert ready, f"ordering cycle among {todo}"
        order.append(ready[0])
        todo.remove(ready[0])
    return order


@pytest.fixture
def node(tmp_path):
    played = Node(tmp_path, shipped_plan("cluster"), "pve1")      # gpu-a: two GPUs on pve1
    yield played
    played.cleanup()


def deploy(node: Node) -> subprocess.CompletedProcess:
    probe = node.plan.run.named(f"gpu-probe-{node.name}").value("create")
    return node.boot(probe)


def test_the_probe_installs_the_boot_unit_and_prints_only_the_driver_version(node):
    done = deploy(node)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{VERSION}\n"
    unit = (node.units_dir / wl.NODE_DEVICES_UNIT).read_text()
    assert unit == wl.gpu_boot_unit(node.plan.topo, node.name)
    assert "Before=pve-guests.service" in unit and "WantedBy=multi-user.target pve-guests.service" in unit
    assert (node.sbin / "phoenix-nvidia-devices").stat().st_mode & 0o111
    # the same again changes nothing on disk
    before = {p: p.stat().st_mtime_ns for p in (node.units_dir / wl.NODE_DEVICES_UNIT,
                                                node.sbin / "phoenix-nvidia-devices")}
    assert deploy(node).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_the_boot_unit_passes_systemd_analyze_verify(node, tmp_path):
    assert deploy(node).returncode == 0
    root = tmp_path / "verify"
    shutil.copytree(node.units_dir, root / "etc/systemd/system")
    shutil.copytree(node.lib, root / "lib/systemd/system")
    shutil.copytree(node.sbin, root / "usr/local/sbin")
    unit = root / "etc/systemd/system" / wl.NODE_DEVICES_UNIT
    unit.write_text(unit.read_text().replace(wl.NODE_DEVICES_SCRIPT,
                                             str(root / "usr/local/sbin/phoenix-nvidia-devices")))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_after_a_reboot_the_gpu_containers_start(node):
    assert deploy(node).returncode == 0
    order = node.boot_order()
    assert order == [wl.NODE_DEVICES_UNIT, "pve-guests.service"], order
    boot = node.boot("\n".join(f"systemctl start {u}" for u in order))
    assert boot.returncode == 0, boot.stdout + boot.stderr
    # Every device of every GPU container on the node was there when Proxmox started them.
    gpu_a = node.plan.run.guest("gpu-a")
    started = node.log("pve-guests.service")
    for dev in gpu_a.value("devicePassthroughs"):
        assert f"container 110: {dev['path']} ok" in started


def test_without_the_boot_unit_proxmox_refuses_the_gpu_containers(node):
    """The same reboot on a node the probe never set up: what the issue saw."""
    order = node.boot_order()
    assert order == ["pve-guests.service"]
    boot = node.boot("systemctl start pve-guests.service")
    assert boot.returncode != 0
    assert "container 110: Device /dev/nvidia0 does not exist" in node.log("pve-guests.service")


def test_the_device_nodes_use_the_major_the_module_registered_at_this_boot(node):
    assert deploy(node).returncode == 0
    show = node.boot(f"systemctl start {wl.NODE_DEVICES_UNIT}\n"
                     "awk '$2 == \"nvidia-uvm\" {print $1}' /proc/devices\n"
                     "stat -c '%t' /dev/nvidia-uvm /dev/nvidia-uvm-tools\n")
    assert show.returncode == 0, show.stderr
    major, *minors_majors = show.stdout.split()
    assert [int(m, 16) for m in minors_majors] == [int(major), int(major)]
