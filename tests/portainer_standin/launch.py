"""Starting the stand-in and its agents in child processes, and talking to its test hooks."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from lab import Processes, wait_port

TESTS = Path(__file__).resolve().parent.parent


class StandIn:
    """A running stand-in: where it listens and its test hooks (``server`` module docstring)."""

    def __init__(self, address: str, port: int):
        self.address, self.port = address, port
        self.url = f"https://{address}:{port}"
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)   # test hooks only: no trust needed
        self._ctx.check_hostname, self._ctx.verify_mode = False, ssl.CERT_NONE

    def call(self, method: str, path: str, body=None, token: str | None = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            return err.code, json.loads(raw) if raw else None

    def state(self) -> dict:
        return self.call("GET", "/_state")[1]

    def unban(self) -> None:
        self.call("POST", "/_unban")

    def run_by_hand(self, agent: str, name: str, image: str, ports: Sequence[int]) -> None:
        """A container someone started by hand on the agent VM ``agent`` (``host:port`` of its URL)."""
        self.call("POST", f"/_engine/{agent}/containers", {"name": name, "image": image, "ports": list(ports)})

    def remove_by_hand(self, agent: str, name: str) -> None:
        self.call("POST", f"/_engine/{agent}/remove", {"name": name})


def _spawn(procs: Processes, args: list[str], config: dict, log: Path | None) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    # the server writes to its own copy of the log's descriptor
    with open(log, "ab") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
        proc = procs.start([sys.executable, "-m", "portainer_standin.server", *args], stdin=subprocess.PIPE,
                           stdout=out, stderr=subprocess.STDOUT, env=env)
    proc.stdin.write(json.dumps(config).encode())        # secrets on stdin, never in argv
    proc.stdin.close()


def start_portainer(procs: Processes, *, admin_password: str, cert: str, key: str, address: str = "127.0.0.1",
                    port: int = 9443, agent_secret: str = "", endpoints: Sequence[dict] = (),
                    log: Path | None = None) -> StandIn:
    """Portainer as its first start with ``--admin-password-file`` leaves it (user 1 "admin"),
    serving HTTPS with ``cert``/``key`` on ``address:port``, with ``AGENT_SECRET=agent_secret``.
    ``endpoints`` are environments registered before (as ``GET /api/endpoints`` lists them)."""
    _spawn(procs, [], {"admin_password": admin_password, "cert": str(cert), "key": str(key), "address": address,
                       "port": port, "agent_secret": agent_secret, "endpoints": list(endpoints)}, log)
    wait_port(address, port, 15)
    return StandIn(address, port)


def start_agent(procs: Processes, *, address: str, port: int, secret: str, cert: str, key: str,
                log: Path | None = None) -> None:
    """A Portainer agent on ``address:port`` with ``AGENT_SECRET=secret``, serving ``cert``/``key``."""
    _spawn(procs, ["agent"], {"address": address, "port": port, "secret": secret, "cert": str(cert),
                              "key": str(key)}, log)
    wait_port(address, port, 15)

