"""The end-to-end lab's network beyond the guests' bridge (tests/guestns.py): the world outside,
the public address's NAT, the operator's machine, and the Proxmox node.

Only inside the isolated namespace (scripts/in-netns.sh), which plays the site's router:

* ``assert_sealed()`` first: this namespace is not the machine's own and has only loopback
  (``free_addresses`` then takes off loopback what earlier labs of the run left in the lab's
  networks).
  Every namespace made here is checked not to be the machine's, every link made here joins two
  of the lab's own namespaces, and ``machine_links()`` (the machine's interfaces, read through
  /proc/<pid>/net/dev of a process there) lets the lab check that none was added there: nothing is ever connected to
  the machine's network.
* the WAN: a second bridge (``phxwan``, 192.0.2.0/24, TEST-NET-1) with the router's outside
  address; the public address (203.0.113.10, TEST-NET-3) is the router's, forwarded by NAT as a
  site's router forwards it (nft DNAT in prerouting): TCP 80 and 443 to the gateway guest, DNS
  (53, UDP and TCP) to the DNS guest, whose external view answers the public zone whose NS the
  public address is. Replies go back through the router (the guests' default route).
* ``internet``: a namespace on the WAN at ``PEBBLE_ADDRESS`` where Pebble plays Let's Encrypt.
* ``operator``: the machine an operator runs ``phoenix verify`` on, with two links: one on the
  lab network (``INSIDE``, the internal view's client) and one on the WAN (``OUTSIDE``, a client
  on the internet), so one run sees both views as the plan's checks ask.
* the node: ``NodeLink`` gives a guest namespace (tests/guestns.Guest) loopback only, for the
  Proxmox node the GPU probe runs on (its management address is not on the lab network).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from pathlib import Path

import pytest

from lab import require_isolated
from test_verify import INSIDE, OUTSIDE

WAN = "phxwan"
WAN_PREFIX = 24
WAN_NETWORK = "192.0.2.0/24"
ROUTER_WAN = "192.0.2.1"
PEBBLE_ADDRESS = "192.0.2.20"
NAT_TABLE = "phoenix_lab"


def _netns(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def machine_process() -> int:
    """The nearest ancestor of this process in another network namespace: the one that ran
    scripts/in-netns.sh, in the machine's own namespace (the wrapper makes no PID namespace)."""
    mine, pid = _netns("self"), os.getppid()
    while pid > 1:
        if _netns(pid) != mine:
            return pid
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    pytest.fail("no ancestor in another network namespace: not run through scripts/in-netns.sh")


def machine_netns() -> str:
    """The machine's own network namespace."""
    return _netns(machine_process())


def assert_sealed() -> None:
    """Before the lab makes anything: not the machine's namespace, only loopback."""
    require_isolated()
    if _netns("self") == machine_netns():
        pytest.fail("refusing to build the lab network in the machine's own network namespace")


def free_addresses(networks: list[str]) -> list[str]:
    """Take off ``lo`` the addresses in ``networks`` that earlier labs of this test run left there
    (they play guests on loopback): here they would make this namespace, the router, take the
    guests' traffic for itself. Returns what it removed."""
    nets = [ipaddress.ip_network(n) for n in networks]
    removed = []
    for line in run("ip", "-o", "-4", "addr", "show", "dev", "lo").splitlines():
        cidr = line.split()[3]
        if any(ipaddress.ip_interface(cidr).ip in n for n in nets):
            run("ip", "addr", "del", cidr, "dev", "lo")
            removed.append(cidr)
    return removed


def run(*argv: str, netns: int | None = None, input: str | None = None) -> str:
    prefix = ["nsenter", "-t", str(netns), "--net", "--"] if netns else []
    done = subprocess.run([*prefix, *argv], capture_output=True, text=True, input=input, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class Namespace:
    """A network namespace held by ``unshare --net sleep infinity`` (no files of its own: what
    runs there uses the lab's), entered with ``nsenter --net``."""

    def __init__(self, name: str):
        self.name, self.holder = name, None

    @property
    def pid(self) -> int:
        return self.holder.pid

    def up(self) -> Namespace:
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"], start_new_session=True)
        deadline = time.monotonic() + 5
        while _netns(self.pid) == _netns("self"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"namespace {self.name}: no network namespace of its own")
            time.sleep(0.01)
        assert _netns(self.pid) != machine_netns()
        run("ip", "link", "set", "lo", "up", netns=self.pid)
        return self

    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "--net", "--", *argv]

    def down(self) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None


class World:
    """The WAN, the NAT of the public address, the internet and the operator (module docstring)."""

    def __init__(self, lab_bridge: str, lab_prefix: int, public: str, gateway_guest: str, dns_guest: str):
        self.lab_bridge, self.lab_prefix = lab_bridge, lab_prefix
        self.public, self.gateway_guest, self.dns_guest = public, gateway_guest, dns_guest
        self.links: list[str] = []
        self.internet = Namespace("internet")
        self.operator = Namespace("operator")

    def up(self) -> World:
        run("ip", "link", "add", WAN, "type", "bridge")
        self.links.append(WAN)
        run("ip", "addr", "add", f"{ROUTER_WAN}/{WAN_PREFIX}", "dev", WAN)
        run("ip", "link", "set", WAN, "up")
        run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.internet.up()
        self._link(self.internet, "v-internet", WAN, "eth0", PEBBLE_ADDRESS, WAN_PREFIX)
        run("ip", "route", "add", "default", "via", ROUTER_WAN, netns=self.internet.pid)
        self.operator.up()
        self._link(self.operator, "v-op-lab", self.lab_bridge, "lab0", INSIDE, self.lab_prefix)
        self._link(self.operator, "v-op-wan", WAN, "wan0", OUTSIDE, WAN_PREFIX)
        run("ip", "route", "add", "default", "via", ROUTER_WAN, netns=self.operator.pid)
        # A DNS query from OUTSIDE to the DNS guest leaves on lab0 and its answer comes back
        # through the router on wan0: no reverse-path filter may drop it.
        for key in ("all", "default", "lab0", "wan0"):
            run("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0", netns=self.operator.pid)
        self.nat()
        return self

    def _link(self, ns: Namespace, outer: str, bridge: str, inner: str, address: str, prefix: int) -> None:
        run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", str(ns.pid))
        self.links.append(outer)
        run("ip", "link", "set", outer, "master", bridge, "up")
        run("ip", "addr", "add", f"{address}/{prefix}", "dev", inner, netns=ns.pid)
        run("ip", "link", "set", inner, "up", netns=ns.pid)

    def nat(self) -> None:
        """The site router's port forwards of the public address."""
        rules = f"""
table ip {NAT_TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {self.public} tcp dport {{ 80, 443 }} dnat to {self.gateway_guest}
    ip daddr {self.public} meta l4proto {{ tcp, udp }} th dport 53 dnat to {self.dns_guest}
  }}
}}
"""
        run("nft", "-f", "-", input=rules)

    def down(self) -> None:
        subprocess.run(["nft", "delete", "table", "ip", NAT_TABLE], capture_output=True, check=False)
        for ns in (self.operator, self.internet):
            ns.down()
        for link in reversed(self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        self.links.clear()


class NodeLink:
    """The ``network`` a tests/guestns.Guest is attached to when it is a Proxmox node: loopback
    only (the node's management address is not on the lab's network; the probe needs none)."""

    def attach(self, guest) -> None:
        run("ip", "link", "set", "lo", "up", netns=guest.pid)


def machine_links() -> set[str]:
    """The network interfaces of the machine's own namespace, read (never entered) through
    /proc/<pid>/net/dev of a process there: the lab compares them before and after it builds
    its network."""
    lines = Path(f"/proc/{machine_process()}/net/dev").read_text().splitlines()[2:]
    return {line.split(":")[0].strip() for line in lines}
