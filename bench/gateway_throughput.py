"""Gateway throughput: requests/s through the gateway as a ratio of requests/s straight to the backend.

Run inside the isolated namespace (it starts servers):

    bash scripts/in-netns.sh .venv/bin/python bench/gateway_throughput.py [--requests N] [--clients C]

The gateway is brought up from the dev stack's plan exactly as the lab test does (the plan's
steps through phoenix-apply over Debian's nginx tree), with one edit: the per-client rate
limit is raised out of the way (``limit_req`` still runs), since one load generator on one
address would otherwise measure the 429 path. The backend standing in for the mesh is a
second nginx answering a small static body over TLS on the mesh's gateway entrypoint, with
a certificate from the plan's PKI; it asks for a client certificate (the gateway presents
its own) but does not insist, so the load generator can reach it directly.

h2load sends a fixed number of requests over keepalive connections, HTTP/1.1 on both paths
(and, for reference, HTTP/2 from the client to the gateway). Figures are ratios, never
absolute requirements; the load generator, the gateway and the backend share this machine's
cores, so the ratio includes the gateway's CPU taken from the other two.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import edited  # noqa: E402
from gateway_harness import GatewayLab  # noqa: E402
from lab import Processes, non_loopback_routes, wait_port  # noqa: E402
from phoenix.plan import make_plan  # noqa: E402

BACKEND_CONF = """
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    server {{
        listen {address}:{port} ssl;
        ssl_certificate {prefix}/mesh.crt;
        ssl_certificate_key {prefix}/mesh.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {prefix}/root.crt;
        ssl_verify_client optional;
        location / {{
            default_type text/plain;
            return 200 "ok\\n";
        }}
        location = /backend-status {{
            stub_status;
        }}
    }}
}}
"""


def unlimited(raw: dict) -> None:
    raw.setdefault("gateway", {}).update({"rateLimitPerSecond": 10_000_000, "rateLimitBurst": 10_000_000})


def h2load(url: str, requests: int, clients: int, h1: bool, cpu: str | None) -> tuple[float, list[str]]:
    cmd = ["h2load", "-n", str(requests), "-c", str(clients), "-t", "1"] + (["--h1"] if h1 else []) + [url]
    out = subprocess.run(pinned(cmd, cpu), capture_output=True, text=True, timeout=300).stdout
    rate = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if int(done.group(1)) or int(codes.group(1)) != requests:
        raise SystemExit(f"h2load saw failures:\n{out}")
    return rate, cmd


def pinned(cmd: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if cpu else cmd


def backend_connections(url: str) -> int:
    """Connections the backend has accepted so far (its stub_status)."""
    out = subprocess.run(["curl", "-ks", url], capture_output=True, text=True).stdout
    return int(out.split("\n")[2].split()[0])


def measure(args, pin: bool) -> dict:
    """One lab: the gateway (on its own CPU when ``pin``), the backend, h2load; medians of rounds."""
    cpu_gateway, cpu_rest = ("1", "0") if pin else (None, None)
    plan = make_plan(edited("dev", unlimited))
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        lab = GatewayLab(plan, Path(tmp), procs)
        try:
            lab.up(mesh=False, launcher=("taskset", "-c", cpu_gateway) if pin else ())
            # a buffered (non-streaming) service: small API-like responses
            server = next((s for s in lab.servers if not s.streaming), lab.servers[0])
            backend = Path(tmp) / "backend"
            backend.mkdir()
            chain, key = lab.pki.leaf(server.ssl_name, dns=[server.ssl_name])
            (backend / "mesh.crt").write_text(chain)
            (backend / "mesh.key").write_text(key)
            (backend / "root.crt").write_text(lab.pki.root_pem)
            (backend / "nginx.conf").write_text(BACKEND_CONF.format(
                prefix=backend, address=server.upstream_address, port=server.upstream_port))
            procs.start(pinned(["nginx", "-p", f"{backend}/", "-c", f"{backend}/nginx.conf",
                                "-g", "daemon off;"], cpu_rest))
            wait_port(server.upstream_address, server.upstream_port)
            direct = f"https://{server.ssl_name}:{server.upstream_port}/"
            through = f"https://{server.host}/"
            status = f"{direct}backend-status"
            for url in (direct, through):     # warm up: sessions, keepalive pools, page cache
                h2load(url, 2000, args.clients, True, cpu_rest)
            runs = {"direct": [], "gateway": [], "gateway-h2": []}
            upstream_conns = []
            for _ in range(args.rounds):
                for label, url, h1 in (("direct", direct, True), ("gateway", through, True),
                                       ("gateway-h2", through, False)):
                    before = backend_connections(status)
                    rate, cmd = h2load(url, args.requests, args.clients, h1, cpu_rest)
                    runs[label].append(rate)
                    if label != "direct":   # the gateway's connections to the backend (keepalive)
                        upstream_conns.append(backend_connections(status) - before - 1)
                    time.sleep(0.2)
        finally:
            lab.down()
    return {"runs": runs, "median": {k: statistics.median(v) for k, v in runs.items()},
            "cmd": cmd, "urls": {"direct": direct, "gateway": through, "gateway-h2": through},
            "upstream_connections": max(upstream_conns)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.requests / args.clients > 1000:
        # nginx closes a client connection after 1000 requests (keepalive_requests), and
        # h2load does not reconnect: keep each connection under that.
        parser.error("keep --requests / --clients at 1000 or less")
    if non_loopback_routes():
        print("refusing to start servers: run inside scripts/in-netns.sh (non-loopback routes exist)")
        return 2
    setups = [("shared: load generator, gateway and backend on all CPUs", False)]
    if len(os.sched_getaffinity(0)) >= 2:
        setups.append(("pinned: gateway on CPU 1 (its own LXC), load generator and backend on CPU 0", True))
    print(f"{args.requests} requests per run over {args.clients} keepalive connections, "
          f"median of {args.rounds} rounds")
    for title, pin in setups:
        res = measure(args, pin)
        med = res["median"]
        print(f"\n{title}")
        for label in ("direct", "gateway", "gateway-h2"):
            print(f"  {label:<11} {med[label]:>8.0f} req/s  (runs {', '.join(f'{r:.0f}' for r in res['runs'][label])})"
                  f"  {res['urls'][label]}")
        print(f"  gateway-to-backend connections per run: at most {res['upstream_connections']} (keepalive)")
        print(f"  ratio gateway/direct, HTTP/1.1 both:     {med['gateway'] / med['direct']:.2f}")
        print(f"  ratio gateway (HTTP/2)/direct (HTTP/1.1): {med['gateway-h2'] / med['direct']:.2f}")
    print("\ncommand: " + " ".join(res["cmd"][:-1]) + " [--h1] <url>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
