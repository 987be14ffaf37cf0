"""What the end-to-end lab puts on its guests that the real ones would have and this machine lacks.

Every stand-in is a program in tests/standins/ whose header says what it replaces and what it
checks; here they are laid on a guest's PATH in its own overlay (never over a plan file, never
changing a plan step's command):

* every guest: ``apt-get`` (/usr/local/sbin) and ``curl`` (/usr/local/bin, for release
  downloads only, pointed at the lab's mirror); and not this machine's Java trust-store hook
  (a guest image has no Java);
* VMs (cloud-init guests): ``cloud-init`` and ``docker`` (/usr/local/bin), what their user-data
  would have installed;
* GPU containers: the device nodes Proxmox passes in (the container's ``devicePassthroughs`` in
  the plan, with the node's device numbers and modes) on a /dev of the guest's own, and vLLM at
  the path the catalog's ``run.command`` names (a tmpfs /opt: the image's, not a step's);
* the Proxmox node: its NVIDIA device nodes, its driver's ``nvidia-smi`` and ``nvidia-modprobe``,
  and ``modprobe`` for its modules.

systemd's ``systemctl`` is tests/units.py, which tests/guestns.py installs on every guest.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from guestns import Guest

STANDINS = Path(__file__).resolve().parent / "standins"
#: the NVIDIA device nodes of a node with the driver loaded: (major, minor); nvidia-uvm's major
#: is dynamic (trap 17), this is the lab node's.
NVIDIA_DEVICES = {"/dev/nvidia0": (195, 0), "/dev/nvidiactl": (195, 255),
                  "/dev/nvidia-uvm": (506, 0), "/dev/nvidia-uvm-tools": (506, 1)}
JAVA_HOOK = "/etc/ca-certificates/update.d/jks-keystore"
#: a container's own /dev, as LXC makes one: the basic devices, pts, shm and the fd links.
BASIC_DEV = """
mount -t tmpfs -o mode=0755,nosuid tmpfs /dev
mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8; mknod -m 666 /dev/urandom c 1 9; mknod -m 666 /dev/tty c 5 0
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mkdir /dev/shm /dev/pts; mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts; ln -s pts/ptmx /dev/ptmx
"""


def put(guest: Guest, path: str, content: str, mode: int = 0o755) -> None:
    guest.write(path, content, mode)


def standin(name: str, **values: str) -> str:
    text = (STANDINS / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def common(guest: Guest, mirror_url: str) -> None:
    put(guest, "/usr/local/sbin/apt-get", standin("apt-get"))
    put(guest, "/usr/local/bin/curl", standin("curl", MIRROR=mirror_url))
    # A Debian guest image has no Java: this machine's ca-certificates-java hook would start a
    # JVM in every trust step (update-ca-certificates runs its hooks).
    guest.run(["rm", "-f", JAVA_HOOK], check=True)


def vm(guest: Guest) -> None:
    put(guest, "/usr/local/bin/cloud-init", standin("cloud-init"))
    # Docker's CLI: the stand-in (run by the guest's python3), and where it finds the lab's Python
    # for the Portainer stand-in it starts.
    put(guest, "/usr/local/bin/docker",
        f"#!/bin/sh\n# Lab stand-in for Docker: see {STANDINS / 'docker'}\n"
        f"PHOENIX_LAB_PYTHON={shlex.quote(sys.executable)} exec /usr/bin/python3 {STANDINS / 'docker'} \"$@\"\n")
    # What the engine's installation leaves: its socket (nothing answers on it: the stand-in's
    # containers are its only users) and its data directory.
    guest.run(["python3", "-c", "import socket; socket.socket(socket.AF_UNIX).bind('/run/docker.sock')"], check=True)
    guest.run(["install", "-d", "-m", "0710", "/var/lib/docker", "/var/lib/docker/volumes"], check=True)


def devices(guest: Guest, nodes: dict[str, tuple[int, int, str]], module_version: str) -> None:
    """A /dev of the guest's own with ``nodes`` (path -> major, minor, mode) and the NVIDIA
    kernel module's version (what a real node shows in /proc/driver/nvidia/version)."""
    script = BASIC_DEV + "".join(f"mknod -m {mode} {shlex.quote(path)} c {major} {minor}\n"
                                 for path, (major, minor, mode) in nodes.items())
    script += f"echo {shlex.quote(module_version)} > /dev/.lab-nvidia-module\n"
    guest.run(["sh", "-ec", script], check=True)


def gpu_container(guest: Guest, passthroughs: list[dict], module_version: str) -> None:
    """The devices Proxmox passes in (``devicePassthroughs``), and vLLM where the image has it."""
    nodes = {}
    for dev in passthroughs:
        major, minor = NVIDIA_DEVICES[dev["path"]]
        nodes[dev["path"]] = (major, minor, dev.get("mode", "0660"))
    devices(guest, nodes, module_version)
    guest.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/opt"], check=True)
    put(guest, "/opt/vllm/bin/vllm", standin("vllm"))


def proxmox_node(guest: Guest, driver_version: str) -> None:
    devices(guest, {path: (major, minor, "0666") for path, (major, minor) in NVIDIA_DEVICES.items()},
            driver_version)
    put(guest, "/usr/local/bin/nvidia-smi", standin("nvidia-smi", VERSION=driver_version))
    put(guest, "/usr/local/bin/nvidia-modprobe", standin("nvidia-modprobe"))
    put(guest, "/usr/local/sbin/modprobe", standin("modprobe"))
