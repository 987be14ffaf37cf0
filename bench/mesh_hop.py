"""Mesh hop benchmark: service to service through the real Traefik vs straight to the backend.

Run inside the isolated namespace (it starts servers):

    bash scripts/in-netns.sh .venv/bin/python bench/mesh_hop.py [--requests N] [--clients C] [--rounds R]

The dev stack's mesh brought up by its plan, as the mesh lab does (tests/mesh_harness.py: the
real Traefik 3.7.15 on the plan's files, the real step-ca and named, the backends in a network
namespace of their own behind a veth). The ``llm`` backend is replaced by nginx answering a fixed
1 KiB body over TLS with a certificate for the guest's name (what the mesh verifies), with
keep-alive. One client, h2load over HTTP/1.1 keep-alive connections from the mesh's namespace,
sends the same requests to

* ``https://llm.lab.internal/bench``: the service's name, which BIND's internal view resolves to
  the mesh; Traefik routes it (circuit breaker, retry, the weighted/load-balancer service, the
  servers transport re-encrypting to the backend and verifying it) to the backend;
* ``https://gpu-llm.lab.internal:8000/bench``: the backend itself, by its guest's name.

Both paths cross the veth to the backends' namespace once, so the difference is the mesh's hop.
Traefik runs on CPU 1, h2load and the backend on CPU 0; rounds alternate; figures are medians.
Reported, for one connection (a service calling another: the hop's latency) and for
``--clients`` connections (the mesh's throughput on one core): requests per second and mean
latency per request on each path, and their ratios.

It found a production bug: without ``maxIdleConnsPerHost`` in the servers transports, Traefik
kept 2 idle connections per backend (Go's default) and opened a new TLS connection for nearly
every concurrent call (560 req/s through the mesh; ``phoenix/render/mesh/dynamic.py``
``MAX_IDLE_PER_BACKEND``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench import nginx_bench  # noqa: E402
from conftest import shipped_plan  # noqa: E402
from lab import Processes, wait_until  # noqa: E402
from mesh_harness import MeshLab  # noqa: E402

MESH_CPU, REST_CPU = "1", "0"
SERVICE = "llm"
PATH = "/bench"
PAYLOAD = "x" * 1023 + "\n"      # the same 1 KiB body on both paths

BACKEND_HTTP = """
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen {address}:{port} ssl;
        ssl_certificate {prefix}/backend.crt;
        ssl_certificate_key {prefix}/backend.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            default_type text/plain;
            return 200 "{payload}";
        }}
    }}
"""


def h2load_cmd(url: str, requests: int, clients: int) -> list[str]:
    """One client for both paths: h2load over HTTP/1.1 keep-alive connections, on CPU 0."""
    return nginx_bench.h2load_cmd(url, requests, clients, True, REST_CPU)


def h2load(url: str, requests: int, clients: int) -> tuple[float, float]:
    """(requests per second, mean milliseconds per request) of one h2load run; every request 200."""
    return nginx_bench.h2load(url, requests, clients, True, REST_CPU)


class Bench:
    def __init__(self, args, tmp: Path, procs: Processes):
        self.args, self.tmp, self.procs = args, tmp, procs
        (tmp / "lab").mkdir()
        self.lab = MeshLab(shipped_plan("dev"), tmp / "lab", procs)
        topo = self.lab.topo
        self.service = topo.service(SERVICE)
        [self.backend] = topo.backends(self.service)
        self.urls = {"through the mesh": f"https://{topo.service_fqdn(self.service)}{PATH}",
                     "direct": f"https://{topo.guest_fqdn(topo.lab.guest(self.backend.guest))}:{self.backend.port}{PATH}"}

    def up(self) -> None:
        self.lab.up()
        pid = self.lab.traefik_pid()
        subprocess.run(["taskset", "-a", "-p", "-c", MESH_CPU, str(pid)], check=True, capture_output=True)
        self.lab.stop_backend(SERVICE, self.backend.guest)
        self.start_backend()
        # Traefik's health check sees the new backend (every 10 s in the dev stack)
        wait_until(lambda: h2load_ok(self.urls["through the mesh"]), 30, "the mesh routing to nginx")

    def start_backend(self) -> None:
        network = self.lab.network
        if network is None:
            raise SystemExit("the mesh lab is not up: no backend network to start nginx in")
        prefix = self.tmp / "backend"
        prefix.mkdir()
        topo = self.lab.topo
        chain, key = self.lab.pki.ca.issue([topo.replica_tls_name(self.service, self.backend.guest)])
        (prefix / "backend.crt").write_text(chain)
        (prefix / "backend.key").write_text(key)
        (prefix / "nginx.conf").write_text(nginx_bench.offroot_conf(prefix, BACKEND_HTTP.format(
            prefix=prefix, address=self.backend.address, port=self.backend.port, payload=PAYLOAD.strip()), workers="1"))
        self.nginx = self.procs.start(["nsenter", f"--net={network.ns}", "--", "taskset", "-c", REST_CPU,
                                       "nginx", "-p", f"{prefix}/", "-c", f"{prefix}/nginx.conf", "-g", "daemon off;"],
                                      stdout=subprocess.DEVNULL)
        wait_until(lambda: h2load_ok(self.urls["direct"]), 10, "nginx on the backend's address")

    def run(self) -> dict[tuple[int, str], list[tuple[float, float]]]:
        a = self.args
        for url in self.urls.values():          # warm up: TLS sessions, keep-alive pools
            h2load(url, 2000, a.clients)
        runs: dict[tuple[int, str], list[tuple[float, float]]] = {}
        for _ in range(a.rounds):
            for clients, requests in ((1, a.requests // 4), (a.clients, a.requests)):
                for name, url in self.urls.items():
                    runs.setdefault((clients, name), []).append(h2load(url, requests, clients))
                    time.sleep(0.2)
        return runs


def h2load_ok(url: str) -> bool:
    out = subprocess.run(["h2load", "--h1", "-n", "4", "-c", "1", url], capture_output=True, text=True,
                         timeout=60, check=False).stdout
    return "status codes: 4 2xx" in out


def report(args, bench: Bench, runs: dict[tuple[int, str], list[tuple[float, float]]]) -> None:
    med = {k: (statistics.median(r for r, _ in v), statistics.median(t for _, t in v)) for k, v in runs.items()}
    print(f"HTTP/1.1 keep-alive, {len(PAYLOAD)} byte body, median of {args.rounds} rounds "
          f"({args.requests // 4} requests on 1 connection, {args.requests} on {args.clients}); Traefik on CPU "
          f"{MESH_CPU}, h2load and the backend (nginx) on CPU {REST_CPU}")
    print(f"\n{'connections':>11} {'path':<17} {'req/s':>9} {'mean ms/req':>12}   runs (req/s)")
    for (clients, name), values in runs.items():
        rate, mean = med[(clients, name)]
        print(f"{clients:>11} {name:<17} {rate:>9.0f} {mean:>12.3f}   {', '.join(f'{r:.0f}' for r, _ in values)}")
    print(f"\n{'connections':>11} {'throughput mesh/direct':>23} {'latency mesh/direct':>20} {'the hop costs':>14}")
    for clients in (1, args.clients):
        (m_rate, m_ms), (d_rate, d_ms) = med[(clients, "through the mesh")], med[(clients, "direct")]
        print(f"{clients:>11} {m_rate / d_rate:>23.2f} {m_ms / d_ms:>20.2f} {m_ms - d_ms:>11.3f} ms")
    print("\ncommands:")
    for clients, requests in ((1, args.requests // 4), (args.clients, args.requests)):
        for url in bench.urls.values():
            print("  " + " ".join(h2load_cmd(url, requests, clients)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    unfit = nginx_bench.unfit_machine("Traefik on one, the load generator and the backend on the other")
    if unfit:
        print(unfit)
        return 2
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="mesh-hop-") as tmp:
        bench = Bench(args, Path(tmp), procs)
        try:
            bench.up()
            runs = bench.run()
        finally:
            bench.lab.down()
    report(args, bench, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
