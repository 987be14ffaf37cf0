"""Harness for the end-to-end lab: the dev stack's hops brought up from its plan, for ``phoenix verify``.

Runs only inside the isolated namespace (``scripts/in-netns.sh``). One machine plays every
guest: ``GatewayLab`` (tests/gateway_harness.py) lays copy-on-write copies over /etc, /var,
/run and /usr/local, installs phoenix-apply and the Phoenix root as the bootstrap and the
trust tier do, and runs the gateway's recorded steps on real nginx. On the same trees:

* DNS: real named, started with Debian's configuration, then the plan's ``dns-bind-config``
  step (its exact command and bundle) through phoenix-apply;
* the public certificate: Pebble (asking that named, whose internal view maps the public
  names to the gateway) and the plan's certbot step, its ``server =`` line pointed at Pebble;
* the mesh: ``TraefikStandIn`` serves what the real Traefik configuration says (entrypoints,
  TLS options, routers, ping, servers transports), read from ``phoenix.render.mesh``;
* the backends and Step-CA's /health: TLS servers whose certificates come from the plan's
  intermediate, for the names the plan's certificate steps (and ca.json) request.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union
from urllib.parse import urlsplit

from components.gateway import STEP_NGINX, STEP_PUBLIC_CERT
from conftest import ROOT
from gateway_harness import PEBBLE, GatewayLab, run_step, start_pebble, wait_until, with_file
from lab import Processes, add_loopback_addresses, require_isolated
from phoenix.bundle import pack, unpack
from phoenix.plan.writer import pushed_files
from phoenix.render import dns as dns_render
from phoenix.render import gateway as gw
from phoenix.render import mesh as mesh_render
from phoenix.topology import Topology
from test_dns_lab import CONFIG_STEP as DNS_CONFIG_STEP, _wait_rndc
from test_verify import INSIDE, OUTSIDE, Handler, StandIn
from testpki import TestCA

#: what an operator runs (the venv's entry point), or the module when it is not installed.
PHOENIX = [str(ROOT / ".venv/bin/phoenix")] if (ROOT / ".venv/bin/phoenix").exists() else \
    [sys.executable, "-m", "phoenix.cli"]
CA_JSON = "/etc/step-ca/config/ca.json"
PORTAINER_PASSWORD_FILE = "/etc/phoenix/portainer/admin-password"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "content-length"}


# ---- a small HTTP(S) server whose answers may stream -----------------------------------------
@dataclass
class Reply:
    status: int
    body: Union[bytes, Iterable[bytes]] = b""
    headers: dict = field(default_factory=dict)


class _Handler(Handler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        self.client = self.client_address[0]
        reply = self.server.answer(self)
        self.close_connection = True   # one request per connection: nothing idles when a server stops
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        if isinstance(reply.body, bytes):
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            return
        chunked = self.request_version == "HTTP/1.1"   # HTTP/1.0: the close ends the body
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in reply.body:
            if chunk:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                self.wfile.flush()
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = _serve


class Server(StandIn):
    """An HTTP server in a thread, TLS when ``tls()`` gives a context (asked per connection,
    so a test can swap a certificate without a restart); its answers may stream."""
    handler = _Handler


def server_tls(tmp: Path, stem: str, chain_pem: str, key_pem: str, client_cas: tuple[str, ...] = ()) -> ssl.SSLContext:
    crt, key = tmp / f"{stem}.crt", tmp / f"{stem}.key"
    crt.write_text(chain_pem)
    key.write_text(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(crt, key)
    if client_cas:
        ctx.verify_mode = ssl.CERT_REQUIRED
        for ca in client_cas:
            ctx.load_verify_locations(cafile=ca)
    return ctx


# ---- the mesh: what the real Traefik configuration says --------------------------------------
_MATCHER = re.compile(r"\s*(Host|Path|PathPrefix|ClientIP)\(`([^`]*)`\)\s*")


def parse_rule(rule: str) -> list[list[tuple[str, str]]]:
    """A router rule as alternatives of conjunctions; anything else is refused, so a change of
    the real configuration that this stand-in cannot play fails loudly."""
    out = []
    for alternative in rule.split("||"):
        terms = []
        for term in alternative.split("&&"):
            m = _MATCHER.fullmatch(term)
            if m is None:
                raise ValueError(f"the Traefik stand-in cannot play the rule {rule!r}")
            terms.append(m.groups())
        out.append(terms)
    return out


def _holds(kind: str, arg: str, req: _Handler) -> bool:
    path = req.path.split("?", 1)[0]
    if kind == "Host":
        return req.host == arg.lower()
    if kind == "Path":
        return path == arg
    if kind == "PathPrefix":
        return path.startswith(arg)
    return ipaddress.ip_address(req.client) in ipaddress.ip_network(arg)


@dataclass(frozen=True)
class Router:
    name: str
    rule: str
    service: str
    tls: Optional[dict]

    def matches(self, req: _Handler) -> bool:
        return any(all(_holds(k, a, req) for k, a in alt) for alt in parse_rule(self.rule))


class TraefikStandIn:
    """Traefik as ``mesh.static_config``/``dynamic_config`` configure it, on the mesh's address.

    Entrypoints: those whose routers lead to a catalog service or to the ping, and the static
    ping entrypoint (Traefik's own ``/ping`` there). TLS where the routers say so, with a
    certificate for ``tls.domains`` from the plan's intermediate; a client certificate verified
    against the option's ``caFiles`` where a router's TLS option asks for one (Traefik picks
    options by SNI; every router of an entrypoint here has the same). Routers by Traefik's
    default priority (the longer rule first). A service's first server, over TLS verified against
    its transport's ``rootCAs`` for its ``serverName``, streaming the answer back; a backend
    that cannot be reached or verified is a 502 and its reason lands in ``errors``.
    """

    def __init__(self, topo: Topology, pki, tmp: Path):
        static, dynamic = mesh_render.static_config(topo), mesh_render.dynamic_config(topo)
        self.http, options = dynamic["http"], dynamic["tls"]["options"]
        self.errors: list[str] = []
        ports = {name: int(ep["address"].rsplit(":", 1)[1]) for name, ep in static["entryPoints"].items()}
        by_entrypoint: dict[str, list[Router]] = {}
        for name, r in self.http["routers"].items():
            parse_rule(r["rule"])
            for ep in r["entryPoints"]:
                by_entrypoint.setdefault(ep, []).append(Router(name, r["rule"], r["service"], r.get("tls")))
        ping = static.get("ping", {}).get("entryPoint")
        if ping:
            by_entrypoint.setdefault(ping, []).append(Router("ping@internal", "PathPrefix(`/ping`)",
                                                             "ping@internal", None))
        self.routers = {ep: sorted(rs, key=lambda r: (r.name != "ping@internal", -len(r.rule)))
                        for ep, rs in by_entrypoint.items()
                        if any(r.service == "ping@internal" or r.service in self.http["services"] for r in rs)}
        self.servers = []
        for ep, routers in self.routers.items():
            tls = [r.tls for r in routers if r.tls]
            ctx = None
            if tls:
                names = [d["main"] for d in tls[0]["domains"]]
                client_cas: tuple[str, ...] = ()
                for t in tls:
                    auth = options.get(t.get("options", "default"), {}).get("clientAuth")
                    if auth and auth["clientAuthType"] == "RequireAndVerifyClientCert":
                        client_cas = tuple(auth["caFiles"])
                ctx = server_tls(tmp, f"mesh-{ep}", *pki.ca.issue(names), client_cas=client_cas)
            self.servers.append(Server(str(topo.mesh.address), ports[ep], lambda ctx=ctx: ctx,
                                       lambda req, ep=ep: self.answer(ep, req)))

    def answer(self, entrypoint: str, req: _Handler) -> Reply:
        router = next((r for r in self.routers[entrypoint] if r.matches(req)), None)
        if router is None:
            return Reply(404, b"404 page not found\n")
        if router.service == "ping@internal":
            return Reply(200, b"OK", {"Content-Type": "text/plain; charset=utf-8"})
        if router.service not in self.http["services"]:
            return Reply(404, b"404 page not found\n")   # Traefik's own API: not played here
        return self.proxy(router.service, req)

    def proxy(self, name: str, req: _Handler) -> Reply:
        service = self.http["services"][name]
        while "weighted" in service:
            service = self.http["services"][service["weighted"]["services"][0]["name"]]
        lb = service["loadBalancer"]
        url = urlsplit(lb["servers"][0]["url"])
        transport = self.http.get("serversTransports", {}).get(lb.get("serversTransport"), {})
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-For"] = req.client
        try:
            sock = socket.create_connection((url.hostname, url.port), timeout=5)
            if url.scheme == "https":
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                for ca in transport.get("rootCAs", []):
                    ctx.load_verify_locations(cafile=ca)
                if not transport.get("rootCAs"):
                    ctx.load_default_certs()
                sock = ctx.wrap_socket(sock, server_hostname=transport.get("serverName") or url.hostname)
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            conn.sock = sock
            conn.request(req.command, req.path, body=req.body or None, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            self.errors.append(f"{name} ({url.geturl()}): {err}")
            return Reply(502, b"Bad Gateway")

        def stream():
            try:
                while chunk := resp.read1(65536):
                    yield chunk
            finally:
                conn.close()
        kept = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
        return Reply(resp.status, stream(), kept)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


# ---- the DNS tier ----------------------------------------------------------------------------
@dataclass
class WithoutRecord(Topology):
    """The topology with one internal record fewer: what a DNS push that lost it would serve."""
    missing: str = ""

    @property
    def internal_records(self):
        return [r for r in Topology.internal_records.func(self) if r.name != self.missing]


def certificate_requests(plan, guest: str) -> dict[str, list[str]]:
    """The certificates the plan's steps on ``guest`` request: cert name -> the names (``-d``)."""
    out = {}
    for _path, (f, step) in pushed_files(plan.run, plan.topo)[guest].items():
        if not step.startswith(f"{guest}-cert-"):
            continue
        for line in f.content.splitlines():
            argv = shlex.split(line) if "certbot certonly" in line else []
            if argv:
                out[argv[argv.index("--cert-name") + 1]] = [argv[i + 1] for i, a in enumerate(argv) if a == "-d"]
    return out


# ---- the lab -----------------------------------------------------------------------------------
class EndToEndLab:
    """Every hop of the dev stack on this machine (see the module docstring)."""

    def __init__(self, plan, tmp: Path, procs: Processes):
        self.plan, self.topo, self.tmp, self.procs = plan, plan.topo, tmp, procs
        (tmp / "gateway").mkdir()
        self.glab = GatewayLab(plan, tmp / "gateway", procs)
        self.pki = self.glab.pki
        self.files = pushed_files(plan.run, plan.topo)
        self.outputs = plan.run.outputs   # the stack outputs an operator reads
        self.dns_step = plan.run.named(DNS_CONFIG_STEP)
        self.mesh: Optional[TraefikStandIn] = None
        self.servers: list[Server] = []
        # (service, guest) -> what that backend serves, and the names its certificate step requests
        self.backend_tls: dict[tuple[str, str], ssl.SSLContext] = {}
        self.backend_names: dict[tuple[str, str], list[str]] = {}

    # -- bring-up --------------------------------------------------------------------------
    def up(self) -> None:
        require_isolated()
        topo = self.topo
        add_loopback_addresses(*(str(g.address) for g in topo.lab.guests), str(topo.lab.network.public_address),
                               OUTSIDE, INSIDE)
        self.glab.up(mesh=False)     # overlays, phoenix-apply, the root, nginx and the gateway's steps
        self.start_named()
        self.apply_dns(self.dns_step.value("stdin"))
        self.mesh = TraefikStandIn(topo, self.pki, self.tmp)
        self.start_backends()
        self.obtain_public_certificate()
        self.write_operator_inputs()

    def start_named(self) -> None:
        """named as Debian's package leaves it (its own config, an rndc key made on the host)."""
        run = Path("/run/named")
        run.mkdir(exist_ok=True)
        shutil.chown(run, "root", "bind")
        run.chmod(0o775)
        subprocess.run(["rndc-confgen", "-a", "-c", "/etc/bind/rndc.key"], check=True, capture_output=True)
        shutil.chown("/etc/bind/rndc.key", "bind", "bind")
        log = self.tmp / "named.log"
        with open(log, "w") as out:
            self.named = self.procs.start(["named", "-g", "-u", "bind"], stdout=out, stderr=subprocess.STDOUT)
        _wait_rndc(log, self.named)

    def apply_dns(self, bundle: str) -> subprocess.CompletedProcess:
        """The plan's DNS config step (its exact command) with ``bundle`` on stdin."""
        result = run_step(self.dns_step, self.glab.env, bundle)
        assert result.returncode == 0, f"dns config step failed:\n{result.stdout}\n{result.stderr}"
        return result

    def dns_bundle_without(self, name: str) -> str:
        """The DNS step's bundle rendered by the DNS tier for a topology lacking ``name``'s record."""
        secret = self.plan.run.named("tsig-key").outputs["base64"]
        planned = {f.path: f.content for f in unpack(self.dns_step.value("stdin"))}
        assert planned == {f.path: f.content for f in dns_render.config_files(self.topo, secret)}, \
            "the DNS step's bundle is not what the DNS tier renders"
        return pack(dns_render.config_files(WithoutRecord(self.topo.lab, missing=name), secret))

    def start_backends(self) -> None:
        """Step-CA's /health, and every catalog backend with the certificate its step requests."""
        topo, tmp = self.topo, self.tmp
        ca_json = json.loads(self.files[topo.ca.name][CA_JSON][0].content)
        ca_tls = server_tls(tmp, "step-ca", *self.pki.ca.issue(ca_json["dnsNames"]))
        ca_port = int(ca_json["address"].rsplit(":", 1)[1])
        self.servers.append(Server(str(topo.ca.address), ca_port, lambda: ca_tls,
                                   lambda req: Reply(200, b'{"status":"ok"}', {"Content-Type": "application/json"})
                                   if req.path == "/health" else Reply(404, b"404 page not found\n")))
        mesh_http = mesh_render.dynamic_config(topo)["http"]
        transport_of = {srv["url"]: mesh_http["serversTransports"][svc["loadBalancer"]["serversTransport"]]
                        for svc in mesh_http["services"].values() if "loadBalancer" in svc
                        for srv in svc["loadBalancer"]["servers"]}
        for s in topo.lab.services:
            for b in topo.backends(s):
                if b.scheme == "https":   # the name the mesh verifies there, per its config
                    verified = transport_of[b.url]["serverName"]
                    requested = [names for names in certificate_requests(self.plan, b.guest).values()
                                 if verified in names]
                    assert len(requested) == 1, f"{s.name} on {b.guest}: no certificate step requests {verified}"
                    self.backend_names[s.name, b.guest] = requested[0]
                    self.backend_tls[s.name, b.guest] = server_tls(tmp, f"backend-{s.name}-{b.guest}",
                                                                   *self.pki.ca.issue(requested[0]))
                self.servers.append(Server(b.address, b.port, lambda key=(s.name, b.guest): self.backend_tls.get(key),
                                           self._backend_answer(s)))

    def _backend_answer(self, service) -> Callable[[_Handler], Reply]:
        topo = self.topo
        if topo.portainer is not None and topo.portainer.name in service.guests:
            return self._portainer(service)

        def answer(req):
            if req.path != service.health:
                return Reply(404, b"not found")
            if service.streaming:   # an inference server's health, as a short event stream
                def events():
                    yield b'event: health\ndata: {"status": "starting"}\n\n'
                    time.sleep(0.02)
                    yield b'event: health\ndata: {"status": "ok"}\n\n'
                return Reply(200, events(), {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            return Reply(200, b"ok")
        return answer

    def _portainer(self, service) -> Callable[[_Handler], Reply]:
        """Portainer's API as far as verify reads it: its status, a login with the plan's admin
        password, and the environments the plan registers (stack output portainerEnvironments)."""
        lab, token = self.topo.lab, "jwt-of-the-e2e-lab"
        password = self.files[self.topo.portainer.name][PORTAINER_PASSWORD_FILE][0].content.strip()
        environments = [{"Id": i + 1, "Name": name, "Type": 2, "URL": url, "Status": 1}
                        for i, (name, url) in enumerate(self.outputs["portainerEnvironments"].items())]

        def answer(req):
            if req.path == service.health:
                return Reply(200, json.dumps({"Version": lab.portainer.version}).encode())
            if req.path == "/api/auth" and req.command == "POST":
                sent = json.loads(req.body or b"{}")
                if (sent.get("username"), sent.get("password")) != (lab.portainer.admin_user, password):
                    return Reply(422, b'{"message": "Invalid credentials"}')
                return Reply(200, json.dumps({"jwt": token}).encode())
            if req.path == "/api/endpoints":
                if req.headers.get("Authorization") != f"Bearer {token}":
                    return Reply(401, b'{"message": "Unauthorized"}')
                return Reply(200, json.dumps(environments).encode())
            return Reply(404, b"")
        return answer

    def obtain_public_certificate(self) -> None:
        """The plan's certbot step against Pebble; Pebble resolves the public names through the
        lab's named (127.0.0.1 gets the internal view: the gateway's address), HTTP-01 through nginx."""
        g = self.glab
        pebble_ca = start_pebble(self.procs, g.tmp)
        g.acme_env = {**g.env, "REQUESTS_CA_BUNDLE": pebble_ca}
        line = f"server = {self.topo.public_acme_directory}"
        assert line in g.files[gw.CERTBOT_INI].content
        step = g.steps[STEP_PUBLIC_CERT]
        g.apply(STEP_PUBLIC_CERT, with_file(step.value("stdin"), gw.CERTBOT_INI,
                                            lambda text: text.replace(line, f"server = {PEBBLE}")), g.acme_env)
        self.public_ca = self.tmp / "pebble-root.pem"
        with urllib.request.urlopen("https://127.0.0.1:15000/roots/0", timeout=5,
                                    context=ssl.create_default_context(cafile=pebble_ca)) as resp:
            self.public_ca.write_bytes(resp.read())

    def write_operator_inputs(self) -> None:
        """What an operator passes verify: the stack's root output, the admin password."""
        self.root_ca = self.tmp / "root-ca.pem"
        self.root_ca.write_text(self.outputs["rootCaCertificate"])
        self.password_file = self.tmp / "portainer-password"
        self.password_file.write_text(self.files[self.topo.portainer.name][PORTAINER_PASSWORD_FILE][0].content)

    # -- using it ---------------------------------------------------------------------------
    def verify(self, *extra: str) -> subprocess.CompletedProcess:
        """``phoenix verify --stack dev`` with every option an operator has here. The client
        certificate is the one the gateway holds (installed by the trust tier's deploy hook)."""
        argv = [*PHOENIX, "verify", "--stack", self.plan.run.stack,
                "--outside-source", OUTSIDE, "--inside-source", INSIDE,
                "--root-ca", str(self.root_ca), "--root-fingerprint", self.outputs["rootCaFingerprint"],
                "--public-ca", str(self.public_ca),
                "--client-cert", gw.CLIENT_TLS.cert, "--client-key", gw.CLIENT_TLS.key,
                "--portainer-password-file", str(self.password_file), "--timeout", "3", *extra]
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)

    def results(self) -> dict[tuple[str, str], dict]:
        done = self.verify("--json")
        assert done.returncode in (0, 1), done.stdout + done.stderr
        return {(r["check"], r["target"]): r for r in json.loads(done.stdout)}

    def failing(self) -> dict[tuple[str, str], str]:
        return {k: r["detail"] for k, r in self.results().items() if r["ok"] is False}

    def push_gateway(self, bundle: Optional[str] = None) -> None:
        """The gateway's nginx step (the plan's bundle, or ``bundle``), done when nginx's
        workers are all new ones (a reload is asynchronous)."""
        old = self.glab.workers()
        self.glab.apply(STEP_NGINX, bundle)
        wait_until(lambda: (now := self.glab.workers()) and not now & old, 10, "nginx to reload")

    def other_ca_context(self, backend: tuple[str, str]) -> ssl.SSLContext:
        """A certificate for the same names as ``backend``'s, from a CA that is not Phoenix's."""
        other = TestCA("Some Other CA")
        chain, key = other.issue(self.backend_names[backend])
        return server_tls(self.tmp, "elsewhere-" + "-".join(backend), chain + other.cert_pem, key)

    def down(self) -> None:
        for s in self.servers:
            s.stop()
        if self.mesh:
            self.mesh.stop()
        self.glab.down()   # every process started (nginx, named, pebble), then the overlays
