"""Harness: the real Traefik started from a plan's mesh files, with the real Step-CA and BIND it needs.

Runs only inside the isolated namespace (``scripts/in-netns.sh``). One machine plays the mesh,
the CA, the DNS server and the backends, each on its guest address on ``lo``, over
copy-on-write copies of /etc, /var, /run, /usr/local, /usr/bin and /root (``GuestRoot``), so
every plan file lands at its exact guest path and nothing reaches the host's trees.

``MeshLab(plan, tmp, procs).up()`` replays the plan's steps as the guests run them (their exact
``create`` command and bundle, through the plan's phoenix-apply; systemd is tests/units.py):

1. ``<mesh>-bootstrap`` (phoenix-apply), and the files of ``<mesh>-trust`` (the Phoenix root);
2. DNS: Debian's named as its package leaves it, then ``<dns>-bind-config``; /etc/resolv.conf
   names the DNS guest, as a guest's does (Step-CA resolves the mesh's name for HTTP-01);
3. the CA: the user and directories of the plan's step-ca install script, then
   ``<ca>-step-ca-config`` (its check, ``systemctl restart step-ca`` on the plan's unit, its
   /health check) with the real step-ca (``tools.step_ca()``) at the unit's /usr/bin/step-ca;
4. the backends, in a network namespace of their own (tests/backend_harness.py): a server per
   catalog backend on its guest's address and port, TLS with a certificate from the plan's
   intermediate for the names that guest's certificate step requests (plain HTTP for an
   ``http`` service), answering with who it is;
5. the mesh: the real Traefik (``tools.traefik()``) at the unit's /usr/local/bin/traefik, the
   plan's ``traefik-install`` step (the binary of the pinned version is already there, so it
   only makes the user and directories; the stack's checksum pin, which the shipped stacks leave
   to the operator, is filled in), ``traefik-static`` (``systemctl restart traefik``: the plan's
   unit, its User, Environment, capabilities and sandbox) and ``traefik-dynamic`` (its health
   check waits for the routes and for the certificate Traefik obtains from Step-CA by ACME).

What a test then uses: ``request`` (a client of an entrypoint), ``curl`` (a guest calling a
service by its internal name, as any HTTPS client: from that guest's address in the backends'
namespace, the name resolved by BIND's internal view, verified against the Phoenix root),
``served_chain``, ``rawdata``/``api``, ``traefik_log``/``ca_log``, ``apply`` (any step again,
with an edited bundle), ``systemctl`` (restart Traefik or Step-CA),
``stop_backend``/``start_backend``; ``mesh_lab([...])`` makes the module-scoped fixture of one
lab per stack.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from backend_harness import BackendNetwork, BackendServer, client_context, http_get, request, server_context
from conftest import edited, shipped_plan
from gateway_harness import GuestRoot, PlanPki, run_step, with_file
from lab import Processes, add_loopback_addresses, require_isolated, require_tools, wait_until
from phoenix.plan import make_plan
from phoenix.plan.writer import COMMAND, command_guest, pushed_files
from phoenix.render import APPLY
from phoenix.render import gateway as gateway_render
from phoenix.render import mesh as mesh_render
from phoenix.render import trust as trust_render
from tools import step_ca, traefik
from units import Units

#: the system trees a guest's steps write, each a copy-on-write overlay (see GuestRoot).
TREES = ("/etc", "/var", "/run", "/usr/local", "/usr/bin", "/root")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: a client address outside every internal network (benchmarking range, RFC 2544), on lo.
OUTSIDE = "198.18.0.1"


def guest_steps(plan, guest: str) -> dict[str, object]:
    """The plan's remote steps on ``guest``, by name without the guest prefix."""
    return {r.name.removeprefix(f"{guest}-"): r for r in plan.run.by_type(COMMAND)
            if command_guest(r, plan.topo) == guest}


def certificate_requests(files: dict, guest: str) -> dict[str, list[str]]:
    """The certificates the plan's steps on ``guest`` request (``files``: the plan's
    ``pushed_files``): cert name -> the names (``-d``)."""
    out = {}
    for _path, (f, step) in files.get(guest, {}).items():
        if step.startswith(f"{guest}-cert-"):
            for line in f.content.splitlines():
                argv = shlex.split(line) if "certbot certonly" in line else []
                if argv:
                    out[argv[argv.index("--cert-name") + 1]] = [argv[i + 1] for i, a in enumerate(argv) if a == "-d"]
    return out


# ---- the lab ------------------------------------------------------------------------------------
class MeshLab:
    """The mesh guest of ``plan`` and what it needs (see the module docstring)."""

    def __init__(self, plan, tmp: Path, procs: Processes):
        self.plan, self.topo, self.tmp, self.procs = plan, plan.topo, tmp, procs
        topo = self.topo
        self.mesh, self.ca, self.dns = topo.mesh.name, topo.ca.name, topo.dns.name
        self.files = pushed_files(plan.run, topo)
        self.steps = {g: guest_steps(plan, g) for g in (self.mesh, self.ca, self.dns)}
        self.pki = PlanPki(plan)
        self.root = GuestRoot(tmp / "root", TREES)
        # Its state (and the services' notify sockets) under the lab's /run, as systemd's: a
        # service with PrivateTmp= would not see a socket under /tmp.
        self.units = Units(procs)
        self.backends: dict[tuple[str, str], BackendServer] = {}
        self.network: BackendNetwork | None = None
        self.backend_tls: dict[tuple[str, str], ssl.SSLContext | None] = {}
        self.env: dict[str, str] = {}
        self.results: dict[str, subprocess.CompletedProcess] = {}
        self.mesh_address = str(topo.mesh.address)
        self.ports = mesh_render.entrypoint_ports(topo)
        self.root_ca = tmp / "phoenix-root.pem"
        self.root_ca.write_text(self.pki.root_pem)

    # -- bring-up --------------------------------------------------------------------------------
    def up(self) -> None:
        require_tools("named", "rndc", "rndc-confgen", "setpriv", "openssl", "jq",
                      "runuser", "useradd", "curl", "ip", "unshare", "nsenter")
        traefik_binary, step_ca_binary = traefik(), step_ca()
        self.root.mount()
        topo = self.topo
        backends = sorted({b.address for s in topo.lab.services for b in topo.backends(s)})
        add_loopback_addresses(*(str(g.address) for g in topo.lab.guests if str(g.address) not in backends), OUTSIDE)
        # The guests there resolve names through the DNS guest, as every guest does.
        self.network = BackendNetwork(self.procs, self.mesh_address, backends, also=[str(topo.dns.address)])
        self.network.up()   # after the last address on lo: the guard refuses to add any beside a veth route
        self.env = {**os.environ, "PATH": f"{self.units.serve()}:{os.environ['PATH']}"}
        self.apply(self.mesh, "bootstrap")
        self.lay(self.mesh, "trust")
        self.start_dns()
        self.start_ca(step_ca_binary)
        self.start_backends()
        install_binary(traefik_binary, mesh_render.BINARY)
        self.install_traefik()
        self.apply(self.mesh, "traefik-static")
        self.apply(self.mesh, "traefik-dynamic")

    def apply(self, guest: str, step: str, bundle: str | None = None, env: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
        """The plan's step ``<guest>-<step>`` as the guest runs it, with ``bundle`` when given."""
        result = run_step(self.steps[guest][step], {**self.env, **(env or {})}, bundle)
        self.results[f"{guest}-{step}"] = result
        if check and result.returncode:
            logs = "".join(f"\n--- {u} log (end):\n{self.units.log(u)[-2000:]}" for u in ("step-ca", "traefik"))
            raise AssertionError(f"step {guest}-{step} failed:\n{result.stdout}\n{result.stderr}{logs}")
        return result

    def lay(self, guest: str, step: str) -> None:
        """A step's files put in place by the plan's phoenix-apply, without the step's hooks. For
        the trust step: its reload (update-ca-certificates, seconds) serves the system store,
        which nothing here reads (Traefik and the checks name the root's file); the trust tier's
        tests run that step whole."""
        subprocess.run([APPLY, step], input=self.bundle(guest, step), env=self.env, text=True,
                       capture_output=True, check=True)

    def bundle(self, guest: str, step: str) -> str:
        return self.steps[guest][step].value("stdin")

    def start_dns(self) -> None:
        """named as Debian's package leaves it (its rndc key made on this host), then the plan's step."""
        run = Path("/run/named")
        run.mkdir(exist_ok=True)
        shutil.chown(run, "root", "bind")
        subprocess.run(["rndc-confgen", "-a", "-c", "/etc/bind/rndc.key"], check=True, capture_output=True)
        shutil.chown("/etc/bind/rndc.key", "bind", "bind")
        log = self.tmp / "named.log"
        with open(log, "w") as out:
            named = self.procs.start(["named", "-g", "-u", "bind"], stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: named.poll() is None and subprocess.run(["rndc", "status"], capture_output=True, check=False)
                   .returncode == 0, 15, f"named to answer rndc ({log})", 0.1)
        self.apply(self.dns, "bind-config")
        Path("/etc/resolv.conf").unlink()
        Path("/etc/resolv.conf").write_text(f"nameserver {self.topo.dns.address}\n")

    def start_ca(self, binary: str) -> None:
        """The service user and directories as the plan's step-ca install script makes them (its
        package downloads cannot run here), the real step-ca at the unit's path, then the plan's
        config step: its check, ``systemctl restart step-ca``, its /health over every SAN."""
        lab = self.topo.lab
        pinned = lab.model_copy(update={"pki": lab.pki.model_copy(update={"step_ca_sha256": "0" * 64,
                                                                          "step_cli_sha256": "0" * 64})})
        script = trust_render.ca_install_script(pinned)
        users = script[script.index("getent group"):]
        subprocess.run(["bash", "-euo", "pipefail", "-c", users], check=True, capture_output=True, text=True)
        install_binary(binary, "/usr/bin/step-ca")
        self.apply(self.ca, "step-ca-config")

    def start_backends(self) -> None:
        for s in self.topo.lab.services:
            for b in self.topo.backends(s):
                ctx = None
                if b.scheme == "https":
                    names = certificate_requests(self.files, b.guest)[s.name]
                    ctx = server_context(self.tmp, f"backend-{s.name}-{b.guest}", self.pki.ca.issue(names))
                self.backend_tls[s.name, b.guest] = ctx
                self.start_backend(s.name, b.guest)

    def start_backend(self, service: str, guest: str) -> BackendServer:
        b = next(b for b in self.topo.backends(self.topo.service(service)) if b.guest == guest)
        ctx = self.backend_tls[service, guest]
        self.backends[service, guest] = self.network.make(lambda: BackendServer(b.address, b.port, ctx, service, guest))
        return self.backends[service, guest]

    def stop_backend(self, service: str, guest: str) -> None:
        self.backends.pop((service, guest)).stop()

    def install_traefik(self) -> None:
        """The plan's install step with the stack's checksum pin filled in (never used: the
        pinned version is installed, so the script only makes the user and directories)."""
        path = f"{mesh_render.SCRIPTS}/traefik-install.sh"
        bundle = with_file(self.bundle(self.mesh, "traefik-install"), path,
                           lambda text: text.replace('sha256=""', f'sha256="{"0" * 64}"', 1))
        self.apply(self.mesh, "traefik-install", bundle)

    def down(self) -> None:
        """Every server and process the lab started, by pid; then the veth and the overlays."""
        try:
            for server in self.backends.values():
                server.stop()
            self.units.close()   # its state is in the overlaid /run: before the unmount
        finally:
            self.procs.stop_all()
            if self.network:
                self.network.down()
            self.root.unmount()

    # -- using it ---------------------------------------------------------------------------------
    def systemctl(self, *args: str) -> subprocess.CompletedProcess:
        """``systemctl ARGS`` on the mesh guest (the lab's systemd, tests/units.py)."""
        return subprocess.run(["systemctl", *args], env=self.env, capture_output=True, text=True, timeout=120,
                              check=False)

    def traefik_pid(self) -> int | None:
        return self.units.main_pid("traefik")

    def traefik_log(self) -> str:
        return ANSI.sub("", self.units.log("traefik"))

    def ca_log(self) -> str:
        return self.units.log("step-ca")

    def api(self, path: str):
        """Traefik's API through the plan's ``local-api`` router (the guest asking itself)."""
        status, body = http_get(f"http://127.0.0.1:{self.ports[mesh_render.METRICS_ENTRYPOINT]}{path}")
        assert status == 200, f"{path}: {status} {body[:200]!r}"
        return json.loads(body)

    def rawdata(self) -> dict:
        return self.api("/api/rawdata")

    def gateway_client_cert(self) -> tuple[Path, Path]:
        """The gateway's client certificate and key exactly as the plan's step pushes them to the
        gateway (signed by the program's gateway client CA)."""
        files = self.files[self.topo.gateway.name]
        crt, keyfile = self.tmp / "gateway-client.crt", self.tmp / "gateway-client.key"
        crt.write_text(files[gateway_render.CLIENT_TLS.cert][0].content)
        keyfile.write_text(files[gateway_render.CLIENT_TLS.key][0].content)
        return crt, keyfile

    def curl(self, guest: str, url: str, *args: str, timeout: float = 15) -> subprocess.CompletedProcess:
        """``curl URL`` run as guest ``guest`` would: from its address, in the backends' namespace
        (where that guest's address lives), trusting only the Phoenix root, nothing else told
        (no --resolve, no Host, no SNI: the name resolves through the DNS guest's internal view)."""
        address = str(self.topo.lab.guest(guest).address)
        argv = ["nsenter", f"--net={self.network.ns}", "--", "curl", "-sS", "--max-time", "10", "--noproxy", "*",
                "--cacert", str(self.root_ca), "--interface", address, *args, url]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def request(self, entrypoint: str, host: str, sni: str | None = None, path: str = "/",
                cert: tuple[Path, Path] | None = None, **kw):
        """A client of the mesh's ``entrypoint``: SNI ``sni`` (``host`` by default), Host ``host``;
        verifies the served chain against the plan's root, presents ``cert``."""
        kw.setdefault("ctx", client_context(str(self.root_ca), cert))
        return request(self.mesh_address, self.ports[entrypoint], sni or host, host, path, **kw)

    def planned_dynamic(self) -> dict:
        """The dynamic configuration the plan pushes (its file, parsed)."""
        return yaml.safe_load(self.files[self.mesh][mesh_render.DYNAMIC_PATH][0].content)

    def served_chain(self, entrypoint: str, sni: str, cert: tuple[Path, Path] | None = None) -> list[str]:
        """The certificates the entrypoint serves for ``sni``, leaf first, as PEM (openssl s_client)."""
        argv = ["openssl", "s_client", "-connect", f"{self.mesh_address}:{self.ports[entrypoint]}",
                "-servername", sni, "-showcerts"]
        if cert:
            argv += ["-cert", str(cert[0]), "-key", str(cert[1])]
        out = subprocess.run(argv, input="", capture_output=True, text=True, timeout=15, check=False).stdout
        return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", out, re.S)


# ---- the labs the tests use ---------------------------------------------------------------------
def plan_for(stack: str):
    """``dev``: the shipped dev plan. ``cluster``: the shipped cluster stack with a 1 s health-check
    interval (10 s by default), so a lab sees a stopped backend leave the rotation within seconds."""
    if stack == "dev":
        return shipped_plan("dev")
    return make_plan(edited(stack, lambda raw: raw.setdefault("mesh", {}).update(healthInterval="1s")))


def mesh_lab(stacks: list[str]):
    """A module-scoped ``lab`` fixture: a ``MeshLab`` up for each of ``stacks`` in turn (one at a
    time: they share the addresses and ports), with ``startup_log`` (Traefik's log right after
    the bring-up) and ``client`` (the gateway's client certificate)."""
    @pytest.fixture(scope="module", params=stacks)
    def lab(request, tmp_path_factory):
        require_isolated()
        mesh = MeshLab(plan_for(request.param), tmp_path_factory.mktemp(f"mesh-{request.param}"), Processes())
        mesh.stack = request.param
        try:
            mesh.up()
            mesh.startup_log = mesh.traefik_log()
            mesh.client = mesh.gateway_client_cert()
            yield mesh
        finally:
            mesh.down()
    return lab


def install_binary(source: str, target: str) -> None:
    """A copy, as the package installs it: a link into the checkout would dangle under the unit's
    PrivateTmp when the checkout is under /tmp."""
    shutil.copy2(source, target)
