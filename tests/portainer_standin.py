"""What the Portainer lab tests share: the API stand-in's plumbing and the lab its scripts run in.

No Portainer binary or Docker engine is available here, so each test module plays the part of
Portainer's API it needs in a handler of its own (``PortainerApi.handle_any``), served over TLS
on 127.0.0.1:``PORT`` in a child process (``serve``). ``ScriptLab`` is the guest as the plan's
bash scripts see it: guest paths remapped under a temporary directory, ``curl`` and ``jq``
wrapped to record every command line they get (no secret or token may appear there).
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lab import Processes, wait_port
from phoenix.render import workloads as wl
from testpki import TestCA, save

PORT = 9443          # the dev catalog's portainer-ui port, where the API helpers call
GUEST_PREFIXES = ("/etc/phoenix/", "/usr/local/lib/phoenix/", "/var/lib/phoenix/")


# -- the stand-in (runs in a child process) ------------------------------------------------------
class PortainerApi(BaseHTTPRequestHandler):
    """JSON replies, request bodies, bearer tokens; every method goes to ``handle_any``."""

    tokens: set[str] = set()   # what logins gave (one server a process)

    def log_message(self, *args):
        pass

    def reply(self, code, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        if not hasattr(self, "_body"):
            self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return self._body

    def json_body(self):
        """The JSON body, or None when the request does not say it is JSON."""
        data = self.body()
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return None
        return json.loads(data or b"null")

    def logged_in(self):
        """Portainer's answer to a good login: a new token."""
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return self.reply(200, {"jwt": token})

    def authed(self) -> bool:
        """Is the bearer token one a login gave? If not, the 401 is sent."""
        if (self.headers.get("Authorization") or "").removeprefix("Bearer ") not in self.tokens:
            self.reply(401, {"message": "Unauthorized"})
            return False
        return True

    def handle_any(self, method: str):
        raise NotImplementedError

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_DELETE(self):
        self.handle_any("DELETE")


def serve(api: type[PortainerApi], cert: str, key: str) -> None:  # pragma: no cover - child process
    """Serve ``api`` over TLS on 127.0.0.1:PORT until the process is ended."""
    server = ThreadingHTTPServer(("127.0.0.1", PORT), api)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


# -- the lab -------------------------------------------------------------------------------------
class ScriptLab:
    """The guest as the plan's scripts see it, under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, topo):
        self.root, self.topo = root, topo
        self.bin = root / "bin"
        self.bin.mkdir()
        self.argv_log = root / "argv.log"
        for tool in ("curl", "jq"):      # record every command line, then run the real tool
            real = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
            self.exe(tool, f'printf "%s\\0" {tool} "$@" >> {self.argv_log}\n'
                           f'printf "\\n" >> {self.argv_log}\nexec {real} "$@"\n')

    def exe(self, name: str, body: str) -> None:
        """A bash script ``name`` on the scripts' PATH."""
        path = self.bin / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)

    def remap(self, text: str) -> str:
        for prefix in GUEST_PREFIXES:
            text = text.replace(prefix, f"{self.root}{prefix}")
        return text

    def lay(self, files) -> None:
        """Push files as phoenix-apply would, at their remapped paths (JSON request bodies as they are)."""
        for f in files:
            target = Path(self.remap(f.path))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content if f.path.endswith(".json") else self.remap(f.content))
            target.chmod(f.mode)

    def env(self, **extra: str) -> dict:
        return {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", **extra}

    def start_portainer(self, procs: Processes, script: str, password: str, *args: str) -> None:
        """Portainer's TLS (a certificate for portainer-ui's name from a test root, the root where
        the scripts trust it), the server files with ``password``, then the stand-in:
        ``python script serve CERT KEY password *args`` in a child process."""
        ca = TestCA("portainer test root")
        tls = self.root / "etc/phoenix/tls"
        tls.mkdir(parents=True)
        ca.write_cert(tls / "phoenix-root.crt")
        cert, key = save(ca.issue([self.topo.service_fqdn(wl.portainer_ui(self.topo))]),
                         self.root / "portainer.crt", self.root / "portainer.key")
        self.lay(wl.portainer_server_files(self.topo, password, "agent-secret-for-the-lab"))
        procs.start([sys.executable, script, "serve", str(cert), str(key), password, *args])
        wait_port("127.0.0.1", PORT, 15)

    def get(self, path: str):
        """The stand-in's answer to ``path`` (its test-only ``/_state`` and the like)."""
        ctx = ssl.create_default_context(cafile=str(self.root / "etc/phoenix/tls/phoenix-root.crt"))
        ctx.check_hostname = False
        with urllib.request.urlopen(f"https://127.0.0.1:{PORT}{path}", context=ctx) as resp:
            return json.load(resp)

    def state(self) -> dict:
        return self.get("/_state")

    def argv(self) -> str:
        return self.argv_log.read_text() if self.argv_log.exists() else ""
