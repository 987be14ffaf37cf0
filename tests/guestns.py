"""Guests as network and mount namespaces of their own, joined by one bridge, for the labs.

Only inside the isolated namespace (scripts/in-netns.sh): ``LabNetwork.up()`` checks that
first, then makes a bridge holding the network's gateway address (the lab namespace plays
the router, as the Proxmox host's bridge does). A ``Guest`` is a holder process
(``unshare --net --mount --uts``) whose namespaces the guest's commands enter (``nsenter``):

* its network: a veth pair into the bridge, the guest's address and prefix on ``eth0`` and
  its default route through the gateway, as Proxmox configures a container;
* its files: copy-on-write overlays over /etc, /var, /run, /usr and /root (the host's trees
  below, the guest's own changes in ``<tmp>/upper``), a private /tmp, and the rest of the
  root file system read-only, so a step can never write the host's files; /etc/resolv.conf,
  /etc/hostname and /etc/hosts as Proxmox writes them;
* systemd: tests/units.py is its /usr/bin/systemctl (the services it starts live in the
  guest's namespaces; ``down`` ends them by pid).

``run`` runs a command in the guest; ``read``/``path`` see a guest file from the lab.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import units
from lab import require_isolated

TREES = ("/etc", "/var", "/run", "/usr", "/root")
#: what a guest runs from the checkout (systemctl and docker stand-ins, tools, the virtualenv):
#: a checkout under /tmp (a clone made there) must stay visible through the guest's private /tmp.
CHECKOUT = Path(__file__).resolve().parent.parent
BRIDGE = "phx0"
PR_SET_CHILD_SUBREAPER = 36


def subreaper(on: bool) -> None:
    """Orphaned daemons (a service forks away from the systemctl that started it) become this
    process's children, so ending them by pid also reaps them; and ``reap_orphans`` reaps those
    that end on their own (or by a guest's own hand: a unit's ExecStop)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
    global _reaping
    _reaping = on
    if on:
        threading.Thread(target=reap_orphans, daemon=True).start()


_reaping = False


def reap_orphans() -> None:
    """Reap, while the lab is a subreaper, every dead child in a session other than the lab's.
    Without it a daemon that exits stays a zombie, which a guest's tools take for a running
    process (start-stop-daemon --stop waits for nginx until its timeout). The lab's own
    commands (subprocess, same session) are left to their waiters, so no exit status is lost."""
    me, session = os.getpid(), os.getsid(0)
    while _reaping:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields: state, ppid, pgrp, session, ...
            if fields[0] == "Z" and int(fields[1]) == me and int(fields[3]) != session:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(entry.name), os.WNOHANG)
        time.sleep(0.1)


def _ip(*args: str, netns: int | None = None) -> None:
    prefix = ["nsenter", "-t", str(netns), "--net", "--"] if netns else []
    done = subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class LabNetwork:
    """The guests' network: a bridge whose address is the network's gateway."""

    def __init__(self, gateway: str, prefix: int):
        self.gateway, self.prefix = gateway, prefix
        self.links: list[str] = []

    def up(self) -> None:
        require_isolated()          # before the bridge: after it, this namespace has a route
        _ip("link", "add", BRIDGE, "type", "bridge")
        self.links.append(BRIDGE)
        _ip("addr", "add", f"{self.gateway}/{self.prefix}", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        subreaper(True)

    def attach(self, guest: Guest) -> None:
        link = f"v-{guest.name}"[:15]
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", str(guest.pid))
        self.links.append(link)
        _ip("link", "set", link, "master", BRIDGE, "up")
        for args in (("link", "set", "lo", "up"), ("link", "set", "eth0", "up"),
                     ("addr", "add", f"{guest.address}/{self.prefix}", "dev", "eth0"),
                     ("route", "add", "default", "via", self.gateway)):
            _ip(*args, netns=guest.pid)

    def down(self) -> None:
        for link in reversed(self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        self.links.clear()
        subreaper(False)


def private_tmp(keep: list[Path]) -> list[str]:
    """Shell lines giving a guest a tmpfs of its own at /tmp that still shows ``keep`` (those of
    them under /tmp) read-only at their own paths: held by a bind under /run (an overlay, so
    writable) while the tmpfs goes over /tmp, then bound back in place."""
    kept = [path for path in keep if path.is_relative_to("/tmp")]
    lines = [f"mkdir -p /run/phoenix-keep/{i} && mount --bind {shlex.quote(str(path))} /run/phoenix-keep/{i}"
             for i, path in enumerate(kept)]
    lines.append("mount -t tmpfs -o mode=1777 tmpfs /tmp")
    for i, path in enumerate(kept):
        where = shlex.quote(str(path))
        lines += [f"mkdir -p {where} && mount --bind /run/phoenix-keep/{i} {where}",
                  f"mount -o remount,bind,ro {where} && umount /run/phoenix-keep/{i}"]
    return lines


class Guest:
    """One guest (see the module docstring)."""

    def __init__(self, name: str, address: str, tmp: Path):
        self.name, self.address, self.tmp = name, address, tmp
        self.holder: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.holder.pid

    def up(self, network: LabNetwork, domain: str, nameservers: list[str]) -> Guest:
        self.holder = subprocess.Popen(["unshare", "--net", "--mount", "--uts", "--propagation", "private", "--",
                                        "sleep", "infinity"], start_new_session=True)
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{self.pid}/ns/net") == mine:
            if time.monotonic() > deadline:
                raise RuntimeError(f"guest {self.name}: no namespace of its own")
            time.sleep(0.01)
        script = []
        for tree in TREES:
            tag = tree.strip("/").replace("/", "_")
            upper, work = self.tmp / "upper" / tag, self.tmp / "work" / tag
            upper.mkdir(parents=True), work.mkdir(parents=True)
            script.append(f"mount -t overlay overlay -o lowerdir={tree},upperdir={upper},workdir={work} {tree}")
        # The overlays keep their own (writable) handle on their upper directories: everything
        # else of the root file system becomes read-only for the guest, and /tmp its own.
        script += ["mount -o remount,bind,ro /", *private_tmp(sorted({CHECKOUT, Path(sys.prefix).resolve()}))]
        done = subprocess.run(["nsenter", "-t", str(self.pid), "--mount", "--", "sh", "-ec", "\n".join(script)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"guest {self.name}: {done.stderr}")
        network.attach(self)
        host = self.name
        # its own host name, as Proxmox sets it: a lookup of the machine's name would go to the
        # lab's DNS and on to forwarders nothing reaches (certbot asks for it: seconds of timeouts)
        self.run(["hostname", host], check=True)
        self.write("/etc/hostname", f"{host}\n")
        self.write("/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {host}.{domain} {host}\n"
                                 "::1 localhost ip6-localhost ip6-loopback\n")
        self.write("/etc/resolv.conf", f"search {domain}\n" + "".join(f"nameserver {s}\n" for s in nameservers))
        self.run(["mkdir", "-p", "/usr/bin"], check=True)
        units.install(self.path("/usr/bin"))   # the lab writes through the guest's overlay of /usr
        return self

    def cloud_init_finished(self) -> None:
        """What cloud-init leaves in /run when its final stage is done (a VM guest's bootstrap
        waits for that with ``cloud-init status --wait``). Its user-data is not applied here."""
        now = int(time.time())
        source = "DataSourceNoCloud [seed=/dev/sr0][dsmode=net]"
        stages = {stage: {"errors": [], "start": now, "finished": now}
                  for stage in ("init-local", "init", "modules-config", "modules-final")}
        self.write("/run/cloud-init/status.json", json.dumps({"v1": {"datasource": source, "stage": None, **stages}}))
        self.write("/run/cloud-init/result.json", json.dumps({"v1": {"datasource": source, "errors": []}}))

    # -- using it -----------------------------------------------------------------------------
    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "--net", "--mount", "--uts", "--wd=/", "--", *argv]

    def run(self, argv: list[str], *, input: str | None = None, env: dict | None = None, check: bool = False,
            timeout: float = 180) -> subprocess.CompletedProcess:
        done = subprocess.run(self.command(argv), input=input, env=env or os.environ.copy(), text=True,
                              capture_output=True, timeout=timeout, check=False)
        if check and done.returncode:
            raise AssertionError(f"{self.name}: {shlex.join(argv)} exited {done.returncode}:\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def write(self, path: str, content: str, mode: int = 0o644) -> None:
        """Write a file as a command in the guest would (a symlink there is replaced, not followed)."""
        self.run(["sh", "-ec", 'rm -f "$1"; mkdir -p "$(dirname "$1")"; cat > "$1"; chmod "$2" "$1"', "write",
                  path, f"{mode:o}"], input=content, check=True)

    def path(self, path: str) -> Path:
        """``path`` in the guest, seen from the lab (read it; write through ``write``/``run``)."""
        return Path(f"/proc/{self.pid}/root{path}")

    def read(self, path: str) -> str:
        return self.path(path).read_text()

    def exists(self, path: str) -> bool:
        return self.path(path).exists()

    def down(self) -> None:
        if self.holder is None:
            return
        state = self.path(units.STATE)
        if state.is_dir():
            units.stop_all(state)
        self.holder.kill()
        self.holder.wait()
        self.holder = None


def network_of(cidr: str, gateway: str) -> LabNetwork:
    return LabNetwork(gateway, ipaddress.ip_network(cidr).prefixlen)
