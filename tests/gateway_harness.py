"""Harness for the gateway's lab test and benchmark: the gateway guest brought up from the plan.

Everything here runs only inside the isolated namespace (``scripts/in-netns.sh``): the
plan's gateway steps run through phoenix-apply over copy-on-write copies of this machine's
/etc, /var, /run and /usr/local, with stand-ins for what is not here (see ``GatewayLab``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from components.base import APPLY
from components.gateway import STEP_INSTALL, STEP_NGINX, STEP_PLACEHOLDER, STEP_PUBLIC_CERT
from conftest import ROOT
from lab import Processes, add_loopback_addresses, require_isolated, wait_port, wait_until
from phoenix.bundle import GuestFile, pack, unpack
from phoenix.plan.writer import COMMAND, command_guest, pushed_files
from phoenix.render import NGINX_RELOAD_HELPER
from phoenix.render import gateway as gw
from phoenix.render.trust import CertRequest
from phoenix.topology import ROOT_CA_TRUST_PATH
from testpki import TestCA

OVERLAID = ("/etc", "/var", "/run", "/usr/local")
PEBBLE = "https://127.0.0.1:14000/dir"


# ---- PKI helpers ----------------------------------------------------------------------------
class PlanPki:
    """The plan's generated PKI: root, and the intermediate (``ca``) that signs stand-in leaves."""

    def __init__(self, plan):
        def out(name: str, key: str):
            return plan.run.named(name).outputs[key]
        self.root_pem = out("root-ca-cert", "certPem")
        self.intermediate_pem = out("intermediate-ca-cert", "certPem")
        self.ca = TestCA.from_pem(self.intermediate_pem, out("intermediate-ca-key", "privateKeyPem"))

    def leaf(self, cn: str, dns=(), ips=(), client: bool = False) -> tuple[str, str]:
        """(leaf + intermediate chain PEM, key PEM) for ``cn`` and the names ``dns`` and ``ips``
        (bench/gateway_throughput.py asks so; tests call ``ca.issue`` with the names)."""
        return self.ca.issue(dict.fromkeys([cn, *dns, *ips]), client=client)


# ---- the guest's filesystem ------------------------------------------------------------------
class GuestRoot:
    """Copy-on-write copies of this machine's system trees (overlayfs in this private mount
    namespace): plan files land at their exact guest paths over the package trees, and
    nothing reaches the host's files."""

    def __init__(self, tmp: Path, dirs: tuple[str, ...] = OVERLAID):
        self.tmp, self.dirs, self.mounted = tmp, dirs, []

    def mount(self) -> None:
        require_isolated()
        for d in self.dirs:
            tag = d.strip("/").replace("/", "_")
            upper, work = self.tmp / "upper" / tag, self.tmp / "work" / tag
            upper.mkdir(parents=True), work.mkdir(parents=True)
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={d},upperdir={upper},workdir={work}", d], check=True)
            self.mounted.append(d)

    def unmount(self) -> None:
        for d in reversed(self.mounted):
            subprocess.run(["umount", "-l", d], check=False)
        self.mounted.clear()

    @staticmethod
    def write(path: str, content: str, mode: int = 0o644) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        p.chmod(mode)


SYSTEMCTL = """#!/bin/bash
# Test stand-in for systemd (absent here): what Debian's units run for these verbs. While the
# file $LAB_FAILING_RELOAD names exists, a reload fails as systemd's does when nginx's reload
# job fails (the labs' "reload fails" cases).
case "$1 $2" in
  "reload nginx"|"reload-or-restart nginx")
    if [ -n "${LAB_FAILING_RELOAD:-}" ] && [ -e "$LAB_FAILING_RELOAD" ]; then
      echo "Job for nginx.service failed because the control process exited with error code." >&2
      exit 1
    fi
    exec nginx -s reload ;;
  "enable --now"|"daemon-reload ") exit 0 ;;
  *) echo "systemctl stand-in: unsupported: $*" >&2; exit 1 ;;
esac
"""


def gateway_steps(plan) -> dict[str, object]:
    guest = plan.topo.gateway.name
    return {r.name.removeprefix(f"{guest}-"): r for r in plan.run.by_type(COMMAND)
            if command_guest(r, plan.topo) == guest and r.name != f"{guest}-bootstrap"}


def run_step(step, env: dict, bundle: str | None = None) -> subprocess.CompletedProcess:
    """A recorded step as the guest runs it: its exact ``create`` with its bundle on stdin."""
    return subprocess.run(["bash", "-c", step.value("create")], input=bundle or step.value("stdin"),
                          text=True, capture_output=True, env=env, timeout=120, check=False)


def with_file(bundle: str, path: str, edit) -> str:
    files = [GuestFile(f.path, edit(f.content), f.mode, f.owner, f.group) if f.path == path else f
             for f in unpack(bundle)]
    return pack(files)


# ---- the mesh stand-in --------------------------------------------------------------------
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(payload: bytes, mask: bool) -> bytes:
    head = bytes([0x81, (0x80 if mask else 0) | len(payload)])
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_read(read) -> bytes:
    b1, b2 = read(2)
    key = read(4) if b2 & 0x80 else b""
    data = read(b2 & 0x7F)
    return bytes(b ^ key[i % 4] for i, b in enumerate(data)) if key else data


class MeshHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: bytes, ctype="application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        while n:
            n -= len(self.rfile.read(min(n, 1 << 20)))
        self._reply(200, b'{"received": true}')

    def do_GET(self):
        if self.path.startswith("/sse"):
            return self._sse()
        if self.path.startswith("/ws"):
            return self._websocket()
        peer = x509.load_der_x509_certificate(self.connection.getpeercert(binary_form=True))
        info = {"host": self.headers["Host"], "path": self.path,
                "client": peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
                "forwarded": {k: v for k, v in self.headers.items() if k.lower().startswith("x-")}}
        self._reply(200, json.dumps(info).encode())

    def _sse(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(3):
            data = f"data: chunk {i}\n\n".encode()
            self.server.sse_sent.append(time.monotonic())
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            time.sleep(0.3)
        self.wfile.write(b"0\r\n\r\n")

    def _websocket(self):
        if self.headers.get("Upgrade", "").lower() != "websocket":
            return self._reply(426, b'{"error": "no websocket upgrade arrived"}')
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.write(ws_frame(b"echo: " + ws_read(self.rfile.read), mask=False))
        self.close_connection = True


class MeshStandIn(ThreadingHTTPServer):
    """HTTPS on the mesh's gateway entrypoint: requires a client certificate from the Phoenix CA."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], chain_pem: str, key_pem: str, root_pem: str, tmp: Path):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=root_pem)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        (tmp / "mesh.crt").write_text(chain_pem), (tmp / "mesh.key").write_text(key_pem)
        self.ctx.load_cert_chain(tmp / "mesh.crt", tmp / "mesh.key")
        self.active: set = set()
        self.lock = threading.Lock()
        self.sse_sent: list[float] = []
        super().__init__(address, MeshHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def finish_request(self, request, client_address):
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # headers and body are two writes
        try:
            conn = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.lock:
            self.active.add(conn)
        try:
            super().finish_request(conn, client_address)
        finally:
            with self.lock:
                self.active.discard(conn)

    def handle_error(self, request, client_address):
        pass

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with self.lock:   # nginx keeps idle connections: close them so none outlives the server
            for conn in list(self.active):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


# ---- ACME: a resolver for Pebble, and Pebble ------------------------------------------------
class TinyResolver:
    """Answers A queries for the public names with the gateway's address (Pebble's -dnsserver)."""

    def __init__(self, answers: dict[str, str], address=("127.0.0.1", 53)):
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset
        self.dns, self.answers, self.running = dns, answers, True
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        dns = self.dns
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            for question in q.question:
                name = question.name.to_text().rstrip(".").lower()
                if name not in self.answers:
                    r.set_rcode(dns.rcode.NXDOMAIN)
                elif question.rdtype == dns.rdatatype.A:
                    r.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", self.answers[name]))
            self.sock.sendto(r.to_wire(), peer)

    def stop(self):
        self.running = False
        self.sock.close()


def start_pebble(procs: Processes, tmp: Path, dnsserver: str = "127.0.0.1:53") -> str:
    """Pebble on 127.0.0.1:14000 with a TLS certificate we make, resolving names at ``dnsserver``;
    returns the CA file certbot trusts."""
    ca = TestCA("pebble test CA")
    cert, key = ca.issue(["localhost", "127.0.0.1"])
    for name, text in (("ca.pem", ca.cert_pem), ("cert.pem", cert), ("key.pem", key)):
        (tmp / name).write_text(text)
    (tmp / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
        "certificate": str(tmp / "cert.pem"), "privateKey": str(tmp / "key.pem"),
        "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    procs.start(["pebble", "-config", str(tmp / "pebble.json"), "-dnsserver", dnsserver],
                env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
    wait_port("127.0.0.1", 14000)
    wait_port("127.0.0.1", 15000)
    return str(tmp / "ca.pem")


# ---- clients --------------------------------------------------------------------------------
def client_context(cafile: str | None = None, alpn=("http/1.1",)) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def https(host: str, path="/", method="GET", headers=None, body=None, source: str | None = None,
          ctx: ssl.SSLContext | None = None, timeout=10):
    """(status, headers, body, the served leaf in DER)."""
    conn = http.client.HTTPSConnection(host, 443, context=ctx or client_context(), timeout=timeout,
                                       source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.headers, data, conn.sock.getpeercert(binary_form=True) if conn.sock else None
    finally:
        conn.close()


def served_leaf(host: str, address: str) -> bytes:
    with socket.create_connection((address, 443), timeout=5) as raw, \
            client_context().wrap_socket(raw, server_hostname=host) as tls:
        return tls.getpeercert(binary_form=True)


def file_leaf(path: str) -> bytes:
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).public_bytes(serialization.Encoding.DER)



# ---- the lab ------------------------------------------------------------------------------------
class GatewayLab:
    """The gateway guest, brought up from the plan's steps (see the module docstring)."""

    def __init__(self, plan, tmp: Path, procs: Processes):
        self.plan, self.topo, self.tmp, self.procs = plan, plan.topo, tmp, procs
        self.steps = gateway_steps(plan)
        self.files = {p: f for p, (f, _) in pushed_files(plan.run, plan.topo)[self.topo.gateway.name].items()}
        self.pki = PlanPki(plan)
        self.gateway_address = str(self.topo.gateway.address)
        self.servers = gw.server_blocks(self.topo)
        self.root = GuestRoot(tmp / "root")
        self.mesh = None
        self.results: dict[str, subprocess.CompletedProcess] = {}
        shim = tmp / "bin"
        shim.mkdir()
        (shim / "systemctl").write_text(SYSTEMCTL)
        (shim / "systemctl").chmod(0o755)
        self.env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PHOENIX_STATE": str(tmp / "state")}

    def up(self, mesh: bool = True, launcher: tuple[str, ...] = ()) -> None:
        """Debian's nginx, the trust stand-ins, the mesh stand-in, then the plan's steps.

        ``launcher`` prefixes the nginx command (the benchmark pins it to a CPU with taskset).
        """
        self.root.mount()
        up = self.servers[0]
        add_loopback_addresses(self.gateway_address, up.upstream_address)
        names = " ".join(s.host for s in self.servers)
        with open("/etc/hosts", "a") as hosts:
            hosts.write(f"\n{self.gateway_address} {names} unknown.{self.topo.lab.domains.public}\n"
                        f"{up.upstream_address} {up.ssl_name}\n")
        # What the bootstrap and the trust tier put on every guest before these steps.
        self.root.write(APPLY, (ROOT / "configs/common/phoenix-apply.sh").read_text(), 0o755)
        self.root.write(NGINX_RELOAD_HELPER, (ROOT / "configs/common/phoenix-nginx-reload.sh").read_text(), 0o755)
        root_file = self.files.get(ROOT_CA_TRUST_PATH)
        self.root.write(ROOT_CA_TRUST_PATH, root_file.content if root_file else self.pki.root_pem)
        if mesh:
            self.start_mesh(*self.pki.ca.issue([up.ssl_name]))
        # nginx as Debian's package leaves it running: its default site on port 80.
        self.nginx = self.procs.start([*launcher, "nginx", "-g", "daemon off;"])
        wait_port("127.0.0.1", 80)
        for step in (STEP_INSTALL, STEP_PLACEHOLDER, STEP_NGINX):
            self.apply(step)
        if mesh:   # the mesh refuses the placeholder client certificate
            self.status_with_placeholder_client = https(up.host, source="127.0.0.9")[0]
        self.install_client_certificate()

    def install_client_certificate(self) -> None:
        """The trust tier's step, as far as it can run here: its deploy hook (from the plan)
        installs a certificate from the plan's intermediate over the placeholder, checks nginx
        and reloads it."""
        lineage = self.tmp / "client-lineage"
        lineage.mkdir()
        chain, key = self.pki.ca.issue([self.topo.guest_fqdn(self.topo.gateway)], client=True)
        (lineage / "fullchain.pem").write_text(chain)
        (lineage / "privkey.pem").write_text(key)
        hook = self.files.get(CertRequest(name=gw.CLIENT_CERT_NAME, sans=()).hook_path)
        old_workers = self.workers()
        if hook is None:   # no trust tier in the plan: put the certificate in place as its hook would
            self.root.write(gw.CLIENT_TLS.cert, chain)
            self.root.write(gw.CLIENT_TLS.key, key, 0o640)
            result = subprocess.run(["bash", "-c", f"{gw.NGINX_CHECK} && {gw.NGINX_RELOAD}"], env=self.env,
                                    capture_output=True, text=True, check=False)
        else:
            self.root.write(hook.path, hook.content, hook.mode)
            result = subprocess.run(["bash", hook.path], env={**self.env, "RENEWED_LINEAGE": str(lineage)},
                                    capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert Path(gw.CLIENT_TLS.cert).read_text() == chain
        # reload is asynchronous: done when every worker is a new one
        wait_until(lambda: self.workers() and not self.workers() & old_workers, 10, "nginx to reload")

    def workers(self) -> set[int]:
        """The gateway nginx master's worker processes."""
        found = set()
        for proc in Path("/proc").iterdir():
            try:
                stat = (proc / "stat").read_text() if proc.name.isdigit() else ""
            except OSError:
                continue
            if stat and int(stat.rsplit(")", 1)[1].split()[1]) == self.nginx.pid:
                found.add(int(proc.name))
        return found

    def apply(self, step: str, bundle: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        result = run_step(self.steps[step], env or self.env, bundle)
        self.results[step] = result
        assert result.returncode == 0, f"step {step} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def start_mesh(self, chain_pem: str, key_pem: str) -> None:
        if self.mesh:
            self.mesh.stop()
        s = self.servers[0]
        self.mesh = MeshStandIn((s.upstream_address, s.upstream_port), chain_pem, key_pem,
                                self.pki.root_pem, self.tmp)

    def obtain_certificate(self) -> None:
        """The plan's certbot step against Pebble: HTTP-01 through the running nginx."""
        self.resolver = TinyResolver({s.host: self.gateway_address for s in self.servers})
        self.pebble_ca = start_pebble(self.procs, self.tmp)
        self.acme_env = {**self.env, "REQUESTS_CA_BUNDLE": self.pebble_ca}
        step = self.steps[STEP_PUBLIC_CERT]
        line = f"server = {self.topo.public_acme_directory}"
        assert line in self.files[gw.CERTBOT_INI].content
        bundle = with_file(step.value("stdin"), gw.CERTBOT_INI, lambda text: text.replace(line, f"server = {PEBBLE}"))
        self.apply(STEP_PUBLIC_CERT, bundle, self.acme_env)
        # Pebble's root, to verify what the gateway serves as a browser would.
        self.acme_root = self.tmp / "pebble-root.pem"
        with urllib.request.urlopen("https://127.0.0.1:15000/roots/0", timeout=5,
                                    context=ssl.create_default_context(cafile=self.pebble_ca)) as resp:
            self.acme_root.write_bytes(resp.read())

    def down(self) -> None:
        if self.mesh:
            self.mesh.stop()
        if getattr(self, "resolver", None):
            self.resolver.stop()
        self.procs.stop_all()
        self.root.unmount()


@contextmanager
def brought_up(lab):
    """``lab`` (a GatewayLab, an EndToEndLab) up for the block, and down after it whatever happened."""
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def tls_socket(lab: GatewayLab, host: str | None, ctx: ssl.SSLContext | None = None, source=None):
    raw = socket.create_connection((lab.gateway_address, 443), timeout=5,
                                   source_address=(source, 0) if source else None)
    return (ctx or client_context()).wrap_socket(raw, server_hostname=host)


def read_head(sock) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest
