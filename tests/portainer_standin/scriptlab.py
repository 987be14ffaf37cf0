"""The Portainer VM as the plan's bash scripts see it, with the stand-in as its Portainer.

Guest paths are remapped under a temporary directory; ``curl`` and ``jq`` are wrapped to record
every command line they get (no secret or token may appear there); the scripts reach
Portainer by its catalog name, which ``--resolve`` points at 127.0.0.1, where the stand-in
listens on the catalog port. Agents the tests play listen on their plan addresses (added to
``lo`` inside the test's network namespace) on the agent port.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from lab import Processes, add_loopback_addresses
from phoenix.render import workloads as wl
from testpki import TestCA, save

from .launch import StandIn, start_agent, start_portainer

GUEST_PREFIXES = ("/etc/phoenix/", "/usr/local/lib/phoenix/", "/var/lib/phoenix/")
AGENT_SECRET = "agent-secret-for-the-lab"


class ScriptLab:
    def __init__(self, root: Path, topo):
        self.root, self.topo = root, topo
        self.bin = root / "bin"
        self.bin.mkdir()
        self.argv_log = root / "argv.log"
        self.portainer: StandIn | None = None
        for tool in ("curl", "jq"):      # record every command line, then run the real tool
            real = subprocess.run(["which", tool], capture_output=True, text=True, check=False).stdout.strip()
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

    def start_portainer(self, procs: Processes, password: str, endpoints=()) -> StandIn:
        """Portainer's TLS (a certificate for its catalog name from a test root, the root where the
        scripts trust it), the server files with ``password``, then the stand-in on the catalog port."""
        ca = TestCA("portainer test root")
        tls = self.root / "etc/phoenix/tls"
        tls.mkdir(parents=True, exist_ok=True)
        ca.write_cert(tls / "phoenix-root.crt")
        url, _ = wl.portainer_api_url(self.topo)
        name, port = urlsplit(url).hostname, urlsplit(url).port
        cert, key = save(ca.issue([name]), self.root / "portainer.crt", self.root / "portainer.key")
        self.lay(wl.portainer_server_files(self.topo, password, AGENT_SECRET))
        self.portainer = start_portainer(procs, admin_password=password, cert=str(cert), key=str(key), port=port,
                                         agent_secret=AGENT_SECRET, endpoints=endpoints,
                                         log=self.root / "portainer.log")
        return self.portainer

    def start_agent(self, procs: Processes, agent, secret: str = AGENT_SECRET) -> None:
        """The agent on ``agent``'s address and the agent port, with its own self-signed certificate."""
        add_loopback_addresses(str(agent.address))
        own = TestCA(f"portainer agent {agent.name}")       # the agent makes its own at start
        cert, key = save(own.issue([agent.name]), self.root / f"{agent.name}-agent.crt",
                         self.root / f"{agent.name}-agent.key")
        start_agent(procs, address=str(agent.address), port=self.topo.lab.portainer.agent_port, secret=secret,
                    cert=str(cert), key=str(key), log=self.root / f"{agent.name}-agent.log")

    def wrap_curl(self, before: str = "") -> None:
        """The recording ``curl``, with ``before`` (bash) run first in it."""
        real = subprocess.run(["which", "curl"], capture_output=True, text=True, check=False).stdout.strip()
        self.exe("curl", f'printf "%s\\0" curl "$@" >> {self.argv_log}\nprintf "\\n" >> {self.argv_log}\n'
                         f'{before}exec {real} "$@"\n')

    @contextmanager
    def another_run_before(self, argument: str, script: str):
        """While in the block: just before the first curl call with ``argument``, ``script`` (a
        step's text) runs to its end, as another run of a step racing this one would."""
        other, ran = self.root / "another-run.sh", self.root / "another-run.done"
        other.write_text(self.remap(script))
        ran.unlink(missing_ok=True)
        plain = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"     # real curl, not this one
        self.wrap_curl(f'if printf "%s\\n" "$@" | grep -q -- {argument!r} && [ ! -e {ran} ]; then\n'
                       f'  touch {ran}\n  PATH={plain} bash {other} >/dev/null 2>&1\nfi\n')
        try:
            yield ran
        finally:
            self.wrap_curl()

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        """A script (its text, guest paths remapped) run with real bash, curl and jq."""
        path = self.root / f"script-{abs(hash(script))}.sh"
        path.write_text(self.remap(script))
        return subprocess.run(["bash", str(path), *args], capture_output=True, text=True, env=self.env(**env),
                              timeout=300, check=False)

    def state(self) -> dict:
        return self.portainer.state()

    def argv(self) -> str:
        return self.argv_log.read_text() if self.argv_log.exists() else ""
