"""Harness for the end-to-end lab: every guest of the dev stack in namespaces of its own, brought
up by the plan's own remote steps replayed as ``pulumi up`` runs them, then ``phoenix verify``.

Runs only inside the isolated namespace (scripts/in-netns.sh), which plays the site's router.

* Guests (tests/guestns.py, through ``stepca_harness.PlanLab``): each guest of the plan in a
  network and mount namespace of its own, on one bridge holding the network's gateway address,
  configured from the plan's container or VM resource (address, gateway, DNS server, search
  domain), over copy-on-write overlays of /etc, /var, /run, /usr and /root. The Proxmox node the
  GPU probe runs on is a namespace too (loopback only). The world beyond (tests/netlab.py): a
  WAN with Pebble on it, the public address NATed to the gateway (80, 443) and the DNS guest
  (53), and the operator's machine on both networks.
* Replay (``PlanLab.replay``): every ``command:remote:Command`` of the plan, in dependency order
  (``Recorded.dependencies``; a wave of independent steps runs in parallel, as ``pulumi up``
  runs them), each its exact ``create`` with its exact bundle on stdin, in its guest, with the
  environment of a root SSH login. The plan is made with the node's driver version as its
  driver-version fact (what ``pulumi up`` takes from the GPU probe's output for the driver
  step), and the replayed probe, on the node, must answer exactly that.
* Real servers: named (Debian's unit, the plan's DNS steps), step-ca (0.19.0, the plan's CA
  steps: its .deb from the lab's mirror, see tests/mirror.py), certbot against step-ca (every
  guest's certificate steps), Traefik (the plan's mesh steps; its certificate from step-ca by
  ACME), nginx (the plan's gateway steps) and Pebble with certbot for the public certificate
  (the stack's ACME server is Pebble's directory). systemd is tests/units.py on every guest.
* Stand-ins for what does not exist here (tests/guest_tools.py, tests/standins/): apt-get,
  curl for release downloads, cloud-init, Docker (Portainer and its agent: tests/portainer_standin),
  the NVIDIA driver and tools, vLLM.

Not played: the Proxmox firewall (the plan's rules are not enforced between the namespaces),
the guests' own boot (cloud-init's user-data), and Proxmox itself (guests exist before the replay).
The guests share the lab's PID namespace: units.py records each service's main pid and the lab
ends exactly those (tests/guestns.py, which also reaps the daemons that exit on their own).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import guest_tools
import units
from conftest import ROOT
from guestns import BRIDGE, Guest
from lab import Processes, require_tools, wait_port
from mirror import ReleaseMirror
from netlab import PEBBLE_ADDRESS, WAN_NETWORK, NodeLink, World, assert_sealed, free_addresses, machine_links
from phoenix.bundle import pack, unpack
from phoenix.plan import make_plan
from phoenix.plan.writer import pushed_files
from phoenix.render import dns as dns_render
from stepca_harness import PlanLab, plan_ca
from test_verify import INSIDE, OUTSIDE
from tools import step_ca, step_ca_sources_version

#: what an operator runs (the venv's entry point), or the module when it is not installed.
PHOENIX = [str(ROOT / ".venv/bin/phoenix")] if (ROOT / ".venv/bin/phoenix").exists() else \
    [sys.executable, "-m", "phoenix.cli"]
#: the NVIDIA driver the lab's Proxmox node runs: its probe reports it, the plan installs it.
NODE_DRIVER = "535.216.01"
PEBBLE_DIRECTORY = f"https://{PEBBLE_ADDRESS}:14000/dir"
PORTAINER_PASSWORD_FILE = "/etc/phoenix/portainer/admin-password"
GPU_FACT = "gpu-driver-version"


@dataclass
class Replay:
    """One replay of the plan: each step's result, and when it ran (start, end; monotonic)."""
    results: dict[str, subprocess.CompletedProcess]
    ran: dict[str, tuple[float, float]]

    @property
    def seconds(self) -> float:
        return max(end for _, end in self.ran.values()) - min(start for start, _ in self.ran.values())

    def slowest(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(((k, round(e - s, 1)) for k, (s, e) in self.ran.items()), key=lambda kv: -kv[1])[:n]


class EndToEndLab(PlanLab):
    """The dev stack's guests and world, brought up by the plan's steps (module docstring)."""

    @classmethod
    def make(cls, tmp: Path) -> EndToEndLab:
        """The stack planned against the lab's mirror and Pebble, with the node's driver as its fact."""
        from conftest import stack_config
        gateway = str(stack_config("dev").phoenix()["network"]["gateway"])
        release = ReleaseMirror(tmp, gateway, step_ca(), step_ca_sources_version(), NODE_DRIVER)
        plan = make_plan(release.stack("dev", PEBBLE_DIRECTORY), facts={GPU_FACT: NODE_DRIVER})
        return cls(plan, tmp, release)

    def __init__(self, plan, tmp: Path, release: ReleaseMirror):
        super().__init__(plan, tmp, [g.name for g in plan.topo.lab.guests])
        self.release, self.procs = release, Processes()
        self.world: World | None = None
        self.files = pushed_files(plan.run, self.topo)
        self.outputs = plan.run.outputs
        self.replays: list[Replay] = []
        self.timings: dict[str, float] = {}
        self.ran: dict[str, tuple[float, float]] = {}
        nodes = {str(n.address): n.name for n in self.topo.lab.proxmox.nodes}
        self.node_of = {name: nodes[str(r.value("connection")["host"])] for name, r in self.commands.items()
                        if self.guest_of[name] is None}

    # -- bring-up --------------------------------------------------------------------------
    def up(self) -> EndToEndLab:
        started = time.monotonic()
        require_tools("named", "nginx", "certbot", "pebble", "nft", "dpkg-deb", "setpriv", "nsenter", "unshare",
                      "openssl", "jq", "curl", "systemd-sysusers", "systemd-analyze", "mknod")
        assert_sealed()
        lab = self.topo.lab
        left = free_addresses([str(lab.network.cidr), *map(str, lab.network.management), WAN_NETWORK,
                               f"{lab.network.public_address}/32"])
        if left:
            print(f"end-to-end lab: took {left} off loopback (left there by earlier labs of this run)")
        machine = machine_links()
        super().up()                     # the bridge and the guests
        for node in set(self.node_of.values()):
            guest = Guest(node, "", self.tmp / "nodes" / node).up(NodeLink(), self.topo.lab.domains.internal, [])
            guest_tools.proxmox_node(guest, NODE_DRIVER)
            self.guests[f"node:{node}"] = guest
        for step, node in self.node_of.items():
            self.guest_of[step] = f"node:{node}"
        self.world = World(BRIDGE, lab.network.cidr.prefixlen, str(lab.network.public_address),
                           str(self.topo.gateway.address), str(self.topo.dns.address)).up()
        assert machine_links() == machine, "the lab added an interface to the machine's own namespace"
        self.install_standins()
        self.serve_mirror(self.release.debs)
        self.mirror.files.update(self.release.files())
        self.start_pebble()
        self.timings["namespaces, mirror, pebble"] = time.monotonic() - started
        self.replay_all()
        self.timings["first replay"] = time.monotonic() - started - self.timings["namespaces, mirror, pebble"]
        assert self.replays[0].results[next(iter(self.node_of))].stdout.strip() == NODE_DRIVER, \
            "the node's probe does not report the driver the plan was made with"
        self.write_operator_inputs()
        return self

    def install_standins(self) -> None:
        for name in self.names:
            guest, kind = self.guests[name], self.topo.lab.guest(name).kind
            guest_tools.common(guest, self.release.url)
            if kind == "vm":
                guest_tools.vm(guest)
            passthroughs = self.resource(name).value("devicePassthroughs") or []
            if passthroughs:
                guest_tools.gpu_container(guest, passthroughs, NODE_DRIVER)

    def resource(self, guest: str):
        return next(r for r in self.plan.run.resources if r.name == guest and r.type.startswith("proxmoxve:"))

    def start_pebble(self) -> None:
        """Let's Encrypt on the internet: Pebble, asking the public address's DNS (the NAT leads
        to the DNS guest's external view) and validating HTTP-01 at the public address. Its API's
        TLS certificate is under the Phoenix root, which the gateway's trust store holds."""
        tmp = self.tmp / "pebble"
        tmp.mkdir()
        chain, key = plan_ca(self.plan).issue([PEBBLE_ADDRESS])
        (tmp / "cert.pem").write_text(chain)
        (tmp / "key.pem").write_text(key)
        (tmp / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"{PEBBLE_ADDRESS}:14000", "managementListenAddress": f"{PEBBLE_ADDRESS}:15000",
            "certificate": str(tmp / "cert.pem"), "privateKey": str(tmp / "key.pem"), "httpPort": 80,
            "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        public = str(self.topo.lab.network.public_address)
        with open(tmp / "pebble.log", "wb") as log:
            self.procs.start(self.world.internet.command(["pebble", "-config", str(tmp / "pebble.json"),
                                                          "-dnsserver", f"{public}:53"]),
                             env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
                             stdout=log)
        wait_port(PEBBLE_ADDRESS, 14000)
        wait_port(PEBBLE_ADDRESS, 15000)

    def replay_all(self) -> Replay:
        """Every remote step of the plan, as ``pulumi up`` runs them: their results and times."""
        self.results, self.ran = {}, {}
        try:
            self.replay(self.commands)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.service_logs()}") from None
        self.replays.append(Replay(dict(self.results), dict(self.ran)))
        return self.replays[-1]

    def step(self, name: str, bundle: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """One plan step in its guest (``PlanLab.step``), its start and end times kept in ``ran``."""
        started = time.monotonic()
        try:
            return super().step(name, bundle, check)
        finally:
            self.ran[name] = (started, time.monotonic())

    def write_operator_inputs(self) -> None:
        """What an operator passes verify: the stack's root output, Pebble's root (the public CA
        here), the gateway's client certificate (the one the mesh's gateway entrypoint accepts, as
        the plan's step put it on the gateway) and its chain as the stack outputs it, the Portainer
        password."""
        tmp = self.tmp / "operator"
        tmp.mkdir()
        self.root_ca = tmp / "root-ca.pem"
        self.root_ca.write_text(self.outputs["rootCaCertificate"])
        self.public_ca = tmp / "pebble-root.pem"
        ctx = ssl.create_default_context(cafile=str(self.root_ca))
        with urllib.request.urlopen(f"https://{PEBBLE_ADDRESS}:15000/roots/0", timeout=5, context=ctx) as resp:
            self.public_ca.write_bytes(resp.read())
        gateway = self.guests[self.topo.gateway.name]
        self.client_cert, self.client_key = tmp / "gateway-client.crt", tmp / "gateway-client.key"
        self.client_cert.write_text(gateway.read("/etc/phoenix/tls/gateway-client.crt"))
        self.client_key.write_text(gateway.read("/etc/phoenix/tls/gateway-client.key"))
        self.gateway_client_chain = tmp / "gateway-client-chain.pem"
        self.gateway_client_chain.write_text(self.outputs["gatewayClientCertificate"]["chainPem"])
        self.password_file = tmp / "portainer-password"
        self.password_file.write_text(self.files[self.topo.portainer.name][PORTAINER_PASSWORD_FILE][0].content)
        for f in tmp.iterdir():
            f.chmod(0o600)

    # -- using it ---------------------------------------------------------------------------
    def verify(self, *extra: str) -> subprocess.CompletedProcess:
        """``phoenix verify --stack dev`` on the operator's machine, with every option it has here."""
        argv = [*PHOENIX, "verify", "--stack", self.plan.run.stack,
                "--outside-source", OUTSIDE, "--inside-source", INSIDE,
                "--root-ca", str(self.root_ca), "--root-fingerprint", self.outputs["rootCaFingerprint"],
                "--public-ca", str(self.public_ca),
                "--client-cert", str(self.client_cert), "--client-key", str(self.client_key),
                "--gateway-client-cert", str(self.gateway_client_chain),
                "--portainer-password-file", str(self.password_file), "--timeout", "3", *extra]
        return subprocess.run(self.world.operator.command(argv), capture_output=True, text=True, cwd=ROOT,
                              timeout=120, check=False)

    def results_now(self) -> dict[tuple[str, str], dict]:
        done = self.verify("--json")
        assert done.returncode in (0, 1), done.stdout + done.stderr
        return {(r["check"], r["target"]): r for r in json.loads(done.stdout)}

    def failing(self) -> dict[tuple[str, str], str]:
        return {k: r["detail"] for k, r in self.results_now().items() if r["ok"] is False}

    def wait_for(self, want, timeout: float, what: str) -> dict[tuple[str, str], str]:
        """Verify again (every 2 s) until ``want(failing)`` holds: the mesh's health checks and
        circuit breaker take a hop out and put it back on their own clocks (seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            failing = self.failing()
            if want(failing) or time.monotonic() > deadline:
                assert want(failing), f"{what}: after {timeout:.0f}s verify still reports {failing}"
                return failing
            time.sleep(2)

    def services(self) -> dict[tuple[str, str], int]:
        """(guest, unit) -> main pid, of every service running on every guest (units.py's record)."""
        out = {}
        for name, guest in self.guests.items():
            state = guest.path(units.STATE)
            for record in sorted(state.glob("*.json")) if state.is_dir() else ():
                pid = json.loads(record.read_text()).get("pid")
                if pid and units.alive(pid):
                    out[name, record.name.removesuffix(".json")] = pid
        return out

    def tree_digest(self, guest: str, tree: str = "etc") -> dict[str, str]:
        """path -> sha256 of every file the guest's steps wrote under ``/<tree>`` (its overlay)."""
        upper = self.guests[guest].tmp / "upper" / tree
        out = {}
        for path in sorted(upper.rglob("*")):
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(upper))] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_symlink():
                out[str(path.relative_to(upper))] = "-> " + os.readlink(path)
        return out

    def served_leaf(self, guest: str, port: int, server_name: str | None = None) -> bytes:
        """The certificate ``guest`` serves on ``port`` (for ``server_name``, by default the mesh's
        name), verified against the Phoenix root, in DER."""
        ctx = ssl.create_default_context(cafile=str(self.root_ca))
        address = str(self.topo.lab.guest(guest).address)
        with socket.create_connection((address, port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name or self.topo.mesh_name) as tls:
            return tls.getpeercert(binary_form=True)

    def dns_bundle_without(self, name: str) -> str:
        """The DNS config step's bundle as the DNS tier renders it for a zone that lost ``name``."""
        step = self.commands[f"{self.topo.dns.name}-bind-config"]
        secret = self.plan.run.named("tsig-key").outputs["base64"]
        planned = {f.path: f.content for f in unpack(step.value("stdin"))}
        assert planned == {f.path: f.content for f in dns_render.config_files(self.topo, secret)}, \
            "the DNS step's bundle is not what the DNS tier renders"
        internal = self.topo.lab.domains.internal
        zones = [replace(z, records=tuple(r for r in z.records if r.name != name))
                 if (z.name, z.view) == (internal, "internal") else z for z in dns_render.zones(self.topo)]
        return pack(dns_render.config_files(self.topo, secret, zones))

    def service_log(self, guest: str, unit: str) -> str:
        path = self.guests[guest].path(f"{units.STATE}/{units.unit_name(unit)}.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def service_logs(self, tail: int = 1500) -> str:
        out = []
        for name, guest in self.guests.items():
            state = guest.path(units.STATE)
            for log in sorted(state.glob("*.log")) if state.is_dir() else ():
                out.append(f"--- {name} {log.name} (end):\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def down(self) -> None:
        self.procs.stop_all()
        if self.world:
            self.world.down()
        super().down()
