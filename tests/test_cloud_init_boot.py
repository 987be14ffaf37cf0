"""A VM's cloud-init bootcmd on its first boot and on every boot after, with DNS down.

bootcmd runs at every boot, before sshd and docker. The wait for names (the lab's DNS guest is
configured in parallel with the VMs) belongs to the first boot only: a reboot while DNS is
down must not stall for its whole bound (180 tries, 5 s apart: 15 minutes). The plan's
user-data is run here as cloud-init runs bootcmd (each entry an argv), with the real
cloud-init-per (Debian's cloud-init) in a mount namespace of its own over a temporary
/var/lib/cloud, and stand-ins for getent (DNS down: it fails and counts) and sleep (counts).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import shipped_plan
from lab import require_isolated, require_tools

COUNTER = """#!/bin/sh
echo x >> {log}
exit {code}
"""


def bootcmd(plan, guest: str) -> list[list[str]]:
    snippet = plan.run.named(f"{guest}-user-data")
    doc = yaml.safe_load(snippet.value("sourceRaw")["data"])
    return doc["bootcmd"]


def boot(tmp: Path, commands: list[list[str]], instance: str) -> tuple[int, int]:
    """One boot of the VM ``instance``: run bootcmd; (getent calls, sleep calls)."""
    cloud = tmp / "var-lib-cloud"
    (cloud / "instances" / instance).mkdir(parents=True, exist_ok=True)
    link = cloud / "instance"
    link.unlink(missing_ok=True)
    link.symlink_to(cloud / "instances" / instance)
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    logs = {name: tmp / f"{name}.calls" for name in ("getent", "sleep")}
    for name, log in logs.items():
        log.write_text("")
        (bin_dir / name).write_text(COUNTER.format(log=log, code=2 if name == "getent" else 0))
        (bin_dir / name).chmod(0o755)
    # /var/lib of this namespace only (this machine has no /var/lib/cloud, and its own stays untouched)
    script = "\n".join(["set -e", "mount -t tmpfs -o mode=0755 tmpfs /var/lib", "mkdir /var/lib/cloud",
                        f"mount --bind {cloud} /var/lib/cloud", f"export PATH={bin_dir}:$PATH",
                        *(shlex.join(argv) for argv in commands)])
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return tuple(len(log.read_text().splitlines()) for log in logs.values())


@pytest.mark.parametrize("guest", ["portainer", "agent-1"])
def test_the_dns_wait_runs_on_the_first_boot_only(guest, tmp_path):
    require_isolated()
    require_tools("cloud-init-per")
    commands = bootcmd(shipped_plan("dev"), guest)
    first = boot(tmp_path, commands, "vm-1")
    assert first == (181, 180)               # DNS down: the whole bound, once
    again = boot(tmp_path, commands, "vm-1")
    assert again == (0, 0)                   # a reboot does not wait at all
    rebuilt = boot(tmp_path, commands, "vm-2")
    assert rebuilt == (181, 180)             # a new instance (the VM rebuilt) is a first boot again
