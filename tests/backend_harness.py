"""Backends and clients for the labs: servers that say who they are, in a network of their own.

* ``BackendServer``: one replica of a catalog service on its guest's address and port (TLS with
  a certificate the test gives, or plain HTTP); it answers every path with JSON naming its
  service and guest and echoing the Host, path and headers it received, so a test knows which
  backend a proxy reached and what the proxy forwarded.
* ``BackendNetwork``: the backends' guests in a network namespace of their own, linked to the
  lab's by a veth pair (see its docstring for why).
* clients: ``request`` (HTTPS with a chosen SNI, Host, client certificate and source address),
  ``http_get``.

Only inside the isolated namespace (``scripts/in-netns.sh``).
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from lab import Processes, wait_until


# ---- backends ---------------------------------------------------------------------------------
class _BackendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server: BackendServer = self.server
        server.requests.append(self.path)
        body = json.dumps({"service": server.service, "guest": server.guest, "host": self.headers["Host"],
                           "path": self.path, "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")   # nothing idles: a stopped backend is gone at once
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


class BackendServer(ThreadingHTTPServer):
    """One replica of a catalog service: answers every path (its health path too) with JSON
    naming its service and guest, and the Host and headers it received."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, ctx: ssl.SSLContext | None, service: str, guest: str):
        self.ctx, self.service, self.guest, self.requests = ctx, service, guest, []
        super().__init__((address, port), _BackendHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def get_request(self):
        sock, peer = self.socket.accept()
        return (self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                if self.ctx else sock), peer

    def handle_error(self, request, client_address):
        pass

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def server_context(tmp: Path, stem: str, chain_key: tuple[str, str]) -> ssl.SSLContext:
    crt, key = tmp / f"{stem}.crt", tmp / f"{stem}.key"
    crt.write_text(chain_key[0])
    key.write_text(chain_key[1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    return ctx


class BackendNetwork:
    """The backends' guests in a network namespace of their own, linked to the lab's by a veth
    pair, as they sit on other hosts of the guest network: Traefik listens on every address of
    its guest, and a backend may use one of its ports (Portainer's 9443 is the mesh's internal
    entrypoint), which one namespace could not hold twice. Traefik reaches them from the mesh's
    address, and they reach the mesh and the addresses in ``also`` (the DNS guest's); nothing
    else is routed. Servers are made in the namespace by ``make`` (a thread that joins it: a
    listening socket stays in the namespace it was made in)."""

    LINK, PEER = "phx-backends", "phx-guests"

    def __init__(self, procs: Processes, mesh_address: str, addresses: list[str], also: tuple[str, ...] = ()):
        self.procs, self.mesh_address, self.addresses, self.also = procs, mesh_address, addresses, list(also)
        self.ns: str | None = None

    def up(self) -> None:
        mine = os.readlink("/proc/self/ns/net")
        holder = self.procs.start(["unshare", "--net", "--", "sleep", "infinity"])
        ns = f"/proc/{holder.pid}/ns/net"
        wait_until(lambda: os.path.exists(ns) and os.readlink(ns) != mine, 5, "the backends' namespace", 0.02)
        self.ns = ns
        inside = ["nsenter", f"--net={ns}", "--"]
        commands = [["ip", "link", "add", self.LINK, "type", "veth", "peer", "name", self.PEER, "netns",
                     str(holder.pid)],
                    ["ip", "link", "set", self.LINK, "up"],
                    *(["ip", "route", "add", f"{a}/32", "dev", self.LINK, "src", self.mesh_address]
                      for a in self.addresses),
                    [*inside, "ip", "link", "set", "lo", "up"],
                    [*inside, "ip", "link", "set", self.PEER, "up"],
                    *([*inside, "ip", "addr", "add", f"{a}/32", "dev", "lo"] for a in self.addresses),
                    *([*inside, "ip", "route", "add", f"{a}/32", "dev", self.PEER]
                      for a in dict.fromkeys([self.mesh_address, *self.also]))]
        for argv in commands:
            subprocess.run(argv, check=True, capture_output=True, text=True)

    def make(self, factory):
        """``factory()`` run in the backends' namespace (what it binds lives there)."""
        libc, out = ctypes.CDLL(None, use_errno=True), {}

        def run():
            fd = os.open(self.ns, os.O_RDONLY)
            try:
                if libc.setns(fd, 0x40000000) != 0:   # CLONE_NEWNET, this thread only
                    raise OSError(ctypes.get_errno(), "setns into the backends' namespace")
                out["value"] = factory()
            except BaseException as err:   # handed to the caller
                out["error"] = err
            finally:
                os.close(fd)
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if "error" in out:
            raise out["error"]
        return out["value"]

    def down(self) -> None:
        subprocess.run(["ip", "link", "del", self.LINK], capture_output=True, check=False)


# ---- clients ------------------------------------------------------------------------------------
def client_context(root: str | None = None, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """Verifies the chain against ``root`` (not the name: see ``served_chain``); presents ``cert``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if root:
        ctx.load_verify_locations(cafile=root)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def request(address: str, port: int, sni: str, host: str, path: str = "/", ctx: ssl.SSLContext | None = None,
            headers: dict | None = None, source: str | None = None, timeout: float = 10):
    """(status, headers, body) of a GET over TLS to ``address:port`` with SNI ``sni``, Host ``host``."""
    sock = socket.create_connection((address, port), timeout=timeout, source_address=(source, 0) if source else None)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.sock = (ctx or client_context()).wrap_socket(sock, server_hostname=sni)
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()
        sock.close()


def http_get(url: str, source: str | None = None, headers: dict | None = None, timeout: float = 5):
    """(status, body) of a plain-HTTP GET, from ``source`` when given, never through a proxy."""
    split = urlsplit(url)
    conn = http.client.HTTPConnection(split.hostname, split.port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", split.path + (f"?{split.query}" if split.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()

