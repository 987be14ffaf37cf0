"""The plan's guests, each in namespaces of its own, brought up by the plan's own steps: the
real step-ca, real named, certbot, nginx, for the labs.

Runs only inside the isolated namespace (scripts/in-netns.sh). ``PlanLab(plan, tmp, guests)``
makes a bridge for the lab network (tests/guestns.py) and, for each guest named, namespaces
configured from the plan's container (or VM) resource: its address, gateway, DNS server and
search domain. ``replay(steps)`` runs the plan's remote steps (``command:remote:Command``)
as ``pulumi up`` would: each as soon as the steps it depends on are done (independent steps
in parallel), its exact ``create`` with its exact bundle on stdin, in its guest, with the
environment an SSH login as root has there.

step-ca's install step (``<ca>-step-ca-install``) fetches smallstep's .debs: here a mirror
serves .debs made with dpkg-deb (``build_debs``): step-ca around the real binary
(``tools.step_ca()``, 0.19.0 from Debian's Go sources) and a step-cli that carries no binary
(no Phoenix step calls ``step``). ``mirrored(stack, ...)`` is the stack with those URLs and
their sha256 pins, so the install step runs as written: checksum gate, dpkg, the ``step`` user
and directories. The mirror is an internal HTTPS server on the network's gateway address
whose certificate comes from the plan's intermediate: the CA guest trusts it through the
Phoenix root its trust step installed, as it would trust any internal mirror.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from conftest import edited
from guestns import Guest, LabNetwork, network_of
from phoenix.plan.writer import COMMAND, command_guest
from testpki import TestCA

#: what sshd gives a root login on a Debian guest: the steps run with exactly this.
LOGIN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
             "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "LANG": "C.UTF-8"}
MIRROR_PORT = 8443
#: the step CLI package of the mirror: no binary (nothing in a plan calls it), an honest version.
STEP_CLI_LAB_VERSION = "0.0.0"


# ---- the mirror ---------------------------------------------------------------------------------
def build_debs(tmp: Path, step_ca_binary: str, version: str) -> dict[str, Path]:
    """{"step-ca": .deb, "step-cli": .deb} as smallstep lays them out (/usr/bin/step-ca)."""
    out = {}
    for package, ver, binary in (("step-ca", version, step_ca_binary), ("step-cli", STEP_CLI_LAB_VERSION, None)):
        root = tmp / f"{package}-deb"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN" / "control").write_text(
            f"Package: {package}\nVersion: {ver}\nArchitecture: amd64\nMaintainer: Phoenix lab <lab@invalid>\n"
            f"Description: {package} for the Phoenix lab mirror\n"
            + (" The step-ca binary built from Debian's Go sources of smallstep/certificates.\n" if binary else
               " No step binary: no Phoenix step calls the step CLI.\n"))
        doc = root / "usr/share/doc" / package
        doc.mkdir(parents=True)
        (doc / "README").write_text(f"{package} {ver}, Phoenix lab mirror\n")
        if binary:
            (root / "usr/bin").mkdir(parents=True)
            shutil.copy2(binary, root / "usr/bin/step-ca")
        deb = tmp / f"{package}_{ver}_amd64.deb"
        subprocess.run(["dpkg-deb", "-Znone", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                       capture_output=True)
        shutil.rmtree(root)
        out[package] = deb
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mirror_url(gateway: str, deb: Path) -> str:
    return f"https://{gateway}:{MIRROR_PORT}/{deb.name}"


def mirrored(stack: str, debs: dict[str, Path], gateway: str, version: str, edit=None):
    """The shipped stack ``stack`` with the mirror's .deb URLs, versions and sha256 pins."""
    def change(raw: dict) -> None:
        raw["pki"] = {**raw.get("pki", {}),
                      "stepCaVersion": version, "stepCaDebUrl": mirror_url(gateway, debs["step-ca"]),
                      "stepCaSha256": sha256(debs["step-ca"]),
                      "stepCliVersion": STEP_CLI_LAB_VERSION, "stepCliDebUrl": mirror_url(gateway, debs["step-cli"]),
                      "stepCliSha256": sha256(debs["step-cli"])}
        if edit:
            edit(raw)
    return edited(stack, change)


class Mirror(http.server.ThreadingHTTPServer):
    """HTTPS on ``address:MIRROR_PORT`` serving ``files``; remembers what was fetched."""
    daemon_threads = True

    def __init__(self, address: str, files: Iterable[Path], ca: TestCA, tmp: Path):
        self.files = {f"/{f.name}": f for f in files}
        self.fetched: list[str] = []
        chain, key = ca.issue([address])
        (tmp / "mirror.crt").write_text(chain)
        (tmp / "mirror.key").write_text(key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp / "mirror.crt", tmp / "mirror.key")
        super().__init__((address, MIRROR_PORT), _MirrorHandler)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.server.files.get(self.path)
        if path is None:
            self.send_error(404)
            return
        self.server.fetched.append(self.path)
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.debian.binary-package")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# ---- the lab ------------------------------------------------------------------------------------
def plan_ca(plan) -> TestCA:
    """The plan's intermediate (what signs the lab's own helpers' certificates, e.g. the mirror's)."""
    def out(name: str, key: str):
        return plan.run.named(name).outputs[key]
    return TestCA.from_pem(out("intermediate-ca-cert", "certPem"), out("intermediate-ca-key", "privateKeyPem"))


def guest_initialization(plan, guest: str) -> dict:
    """The plan's container or VM ``initialization`` of ``guest`` (address, gateway, DNS)."""
    found = [r for r in plan.run.resources if r.name == guest and r.type.startswith("proxmoxve:")
             and r.value("initialization")]
    assert len(found) == 1, f"no container or VM named {guest} in the plan"
    return found[0].value("initialization")


class PlanLab:
    """``guests`` of ``plan`` in namespaces of their own, and the plan's steps replayed on them."""

    def __init__(self, plan, tmp: Path, guests: Iterable[str]):
        self.plan, self.topo, self.tmp = plan, plan.topo, tmp
        self.names = list(guests)
        self.commands = {r.name: r for r in plan.run.by_type(COMMAND)}
        self.guest_of = {name: command_guest(r, self.topo) for name, r in self.commands.items()}
        self.by_urn = {r.urn: name for name, r in self.commands.items()}
        self.guests: dict[str, Guest] = {}
        self.results: dict[str, subprocess.CompletedProcess] = {}
        self.spans: dict[str, tuple[float, float]] = {}   # when each step ran (monotonic seconds)
        lab = self.topo.lab
        self.network: LabNetwork = network_of(str(lab.network.cidr), str(lab.network.gateway))
        self.mirror: Mirror | None = None

    def up(self) -> PlanLab:
        self.network.up()
        for name in self.names:
            init = guest_initialization(self.plan, name)
            ipv4 = init["ipConfigs"][0]["ipv4"]
            address = ipv4["address"].split("/")[0]
            assert ipv4["gateway"] == self.network.gateway, "the lab's router is the plan's gateway"
            guest = Guest(name, address, self.tmp / "guests" / name)
            self.guests[name] = guest.up(self.network, init["dns"]["domain"], init["dns"]["servers"])
            if "userDataFileId" in init:   # a VM: its bootstrap waits for cloud-init's final stage
                guest.cloud_init_finished()
        return self

    def serve_mirror(self, debs: dict[str, Path]) -> Mirror:
        self.mirror = Mirror(self.network.gateway, debs.values(), plan_ca(self.plan), self.tmp)
        return self.mirror

    def steps_of(self, guest: str, *suffixes: str) -> list[str]:
        names = [f"{guest}-{s}" for s in suffixes]
        missing = [n for n in names if n not in self.commands]
        assert not missing, f"the plan has no step {missing}"
        return names

    def waves(self, names: Iterable[str]) -> list[list[str]]:
        """``names`` in dependency order, as waves of steps that do not depend on each other."""
        todo = set(names)
        needs = {n: {self.by_urn[u] for u in self.commands[n].dependencies if self.by_urn.get(u) in todo}
                 for n in todo}
        out, done = [], set()
        while todo:
            wave = sorted(n for n in todo if needs[n] <= done)
            assert wave, f"dependency cycle among {sorted(todo)}"
            out.append(wave)
            done |= set(wave)
            todo -= set(wave)
        return out

    def replay(self, names: Iterable[str]) -> None:
        """Each step as soon as the steps it depends on are done (as ``pulumi up`` schedules
        them); the first failure is raised once every started step has finished."""
        order = [n for wave in self.waves(names) for n in wave]
        needs = {n: [self.by_urn[u] for u in self.commands[n].dependencies if self.by_urn.get(u) in order]
                 for n in order}
        futures: dict = {}

        def run(name: str):
            for need in needs[name]:
                futures[need].result()          # raises when a step it depends on failed
            return self.step(name)
        with ThreadPoolExecutor(max_workers=max(1, len(order))) as pool:   # a thread each: none waits for a slot
            for name in order:                  # dependencies are submitted before their dependants
                futures[name] = pool.submit(run, name)
        for name in order:
            futures[name].result()

    def step(self, name: str, bundle: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """One plan step as its guest runs it (``bundle`` instead of the plan's when given)."""
        r = self.commands[name]
        guest = self.guests[self.guest_of[name]]
        stdin = bundle if bundle is not None else r.value("stdin")
        started = time.monotonic()
        result = guest.run(["bash", "-c", r.value("create")], input=stdin, env=dict(LOGIN_ENV))
        self.results[name] = result
        self.spans[name] = (started, time.monotonic())
        if check:
            assert result.returncode == 0, \
                f"step {name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return result

    def start(self, guest: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        """``argv`` started in ``guest`` as a root login would, not waited for, in a process group
        of its own: end it and its children with ``units.terminate(proc.pid)``."""
        return subprocess.Popen(self.guests[guest].command(argv), env={**LOGIN_ENV, **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def login(self, guest: str, argv: list[str], env: dict | None = None, check: bool = True):
        """A command run in ``guest`` as root logged in by SSH (what an operator would type)."""
        return self.guests[guest].run(argv, env={**LOGIN_ENV, **(env or {})}, check=check)

    def down(self) -> None:
        for guest in reversed(list(self.guests.values())):
            guest.down()
        if self.mirror:
            self.mirror.stop()
        self.network.down()


# ---- reading what the CA issued -----------------------------------------------------------------
def pem_blocks(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", text, re.S)


def certificates(text: str) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(b.encode()) for b in pem_blocks(text)]


def dns_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def common_name(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def chain_problems(chain_pem: str, root_pem: str, intermediate_pem: str, tmp: Path) -> list[str]:
    """Why ``chain_pem`` is not leaf -> the plan's intermediate -> the plan's root (empty: it is),
    as OpenSSL verifies it for a TLS server (purpose sslserver) trusting only the root."""
    blocks = pem_blocks(chain_pem)
    problems = []
    if len(blocks) != 2:
        problems.append(f"{len(blocks)} certificates in the chain, expected leaf + intermediate")
    elif certificates(blocks[1])[0] != x509.load_pem_x509_certificate(intermediate_pem.encode()):
        problems.append("the chain's second certificate is not the plan's intermediate")
    files = {"root.pem": root_pem, "untrusted.pem": "".join(blocks[1:]), "leaf.pem": blocks[0] if blocks else ""}
    for name, text in files.items():
        (tmp / name).write_text(text)
    done = subprocess.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", str(tmp / "root.pem"),
                           "-untrusted", str(tmp / "untrusted.pem"), str(tmp / "leaf.pem")],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        problems.append(done.stdout + done.stderr)
    return problems

