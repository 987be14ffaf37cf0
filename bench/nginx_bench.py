"""What the nginx-based benchmarks share: an nginx.conf that runs off-root (DESIGN 5: pid, logs
and temp paths under its prefix) and one h2load run read back as numbers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def unfit_machine(split: str) -> str | None:
    """Why this benchmark cannot run here (``split``: how it uses two CPUs), or None. Servers
    start only inside scripts/in-netns.sh (tests/lab.py's guard)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from lab import non_loopback_routes
    if non_loopback_routes():
        return "refusing to start servers: run inside scripts/in-netns.sh (non-loopback routes exist)"
    if len(os.sched_getaffinity(0)) < 2:
        return f"needs two CPUs ({split})"
    return None


def offroot_conf(prefix: Path, http: str, workers: str = "auto") -> str:
    """nginx.conf for ``nginx -p PREFIX/``: ``http`` is the http block's body (upstreams, servers)."""
    for name in TEMP_PATHS:
        (prefix / name).mkdir(parents=True, exist_ok=True)
    temps = "".join(f"    {name}_temp_path {prefix}/{name};\n" for name in TEMP_PATHS)
    return (f"worker_processes {workers};\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
            f"events {{ worker_connections 4096; }}\nhttp {{\n    access_log off;\n{temps}{http.strip(chr(10))}\n}}\n")


def h2load_cmd(url: str, requests: int, clients: int, h1: bool, cpu: str) -> list[str]:
    """h2load on one thread pinned to ``cpu``, over HTTP/1.1 keep-alive when ``h1``."""
    return ["taskset", "-c", cpu, "h2load", "-n", str(requests), "-c", str(clients), "-t", "1",
            *(["--h1"] if h1 else []), url]


def h2load(url: str, requests: int, clients: int, h1: bool, cpu: str) -> tuple[float, float]:
    """(requests per second, mean milliseconds per request) of one run; exits unless every
    request answered 2xx."""
    out = subprocess.run(h2load_cmd(url, requests, clients, h1, cpu), capture_output=True, text=True,
                         timeout=600, check=False).stdout
    found = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    if not (found and codes and mean) or int(codes.group(1)) != requests:
        raise SystemExit(f"h2load saw failures on {url} (or printed no rate and mean):\n{out}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[mean.group(2)]
    return float(found.group(1)), float(mean.group(1)) * scale
