"""Gateway benchmark: the plan's generated nginx configuration against a bare proxy_pass, like with like.

Run inside the isolated namespace (it starts servers):

    bash scripts/in-netns.sh .venv/bin/python bench/gateway_throughput.py [--requests N] [--clients C]

Two proxies, one nginx binary (Debian's), in front of one backend, measured by one client:

* generated: the gateway as the dev stack's plan makes it, brought up exactly as the lab test
  does (the plan's steps through phoenix-apply over Debian's nginx tree). One edit: the
  per-client rate limit is raised out of the way, since one load generator on one address
  would otherwise measure the 429 path (``limit_req`` still runs on every request).
* bare: the same nginx with the smallest configuration that proxies to the same backend
  as fast as nginx can (TLS listener with the same certificate and protocols, ``proxy_pass``
  over TLS with upstream keepalive) and nothing else: no rate limit, no access log, no
  header rewriting, no verification of the backend, no client certificate. It listens on
  127.0.0.11:8443, since the generated gateway holds port 443 on every address.

The backend standing in for the mesh is a third nginx answering a small static body over
TLS on the mesh's gateway entrypoint, with a certificate from the plan's PKI; it asks for a
client certificate but does not insist (the bare proxy presents none). Both proxies run on
CPU 1 (the gateway's own LXC), the load generator and the backend on CPU 0, for both runs
alike. h2load sends the same requests over the same keepalive connections to each proxy
in turn (HTTP/1.1, and HTTP/2 from the client), rounds alternating; figures are medians.

Reported: requests per second through each proxy and their ratio (goal: the generated
configuration at least 0.9 of the bare proxy), the proxy's own CPU time per request (its
master and workers, from /proc: the cost of the configuration whichever side limits the
rate), and the first-event latency of a server-sent-event stream (the llm service is a
streaming one) through each proxy and straight to the backend.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench import nginx_bench  # noqa: E402
from conftest import edited  # noqa: E402
from gateway_harness import GatewayLab, MeshStandIn  # noqa: E402
from lab import Processes, wait_port  # noqa: E402
from phoenix.model.lab import Gateway  # noqa: E402
from phoenix.plan import make_plan  # noqa: E402
from phoenix.render import gateway as gw  # noqa: E402

RATIO_GOAL = 0.9
PROXY_CPU, REST_CPU = "1", "0"
#: the bare proxy's listener: the generated gateway holds port 443 on every address.
BARE_ADDRESS, BARE_PORT = "127.0.0.11", 8443
TICK = os.sysconf("SC_CLK_TCK")

#: the stand-in mesh entrypoint: TLS, the gateway's client certificate asked for, one answer.
BACKEND_HTTP = """
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
    }}
"""

#: the bare proxy: what anyone writes to put nginx with TLS in front of a TLS backend, and
#: keepalive to it (without it every request would pay a TLS handshake to the backend).
BARE_HTTP = """
    upstream backend {{
        server {backend};
        keepalive 32;
    }}
    server {{
        listen {address}:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass https://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def unlimited(raw: dict) -> None:
    """The per-client rate limit at the most the model allows (one client address sends all the
    load here; the bench measures the proxy, not the limiter)."""
    def most(field: str) -> int:
        return next(m.le for m in Gateway.model_fields[field].metadata if getattr(m, "le", None) is not None)
    raw.setdefault("gateway", {}).update({"rateLimitPerSecond": most("rate_limit_per_second"),
                                          "rateLimitBurst": most("rate_limit_burst")})


def pinned(cmd: list[str], cpu: str) -> list[str]:
    return ["taskset", "-c", cpu, *cmd]


def h2load_cmd(url: str, requests: int, clients: int, h1: bool) -> list[str]:
    return nginx_bench.h2load_cmd(url, requests, clients, h1, REST_CPU)


def h2load(url: str, requests: int, clients: int, h1: bool) -> float:
    return nginx_bench.h2load(url, requests, clients, h1, REST_CPU)[0]


def tree_cpu(master: int) -> float:
    """CPU seconds (user + system) of a process and its children (an nginx master and workers)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(proc.name) == master or int(fields[1]) == master:
            total += int(fields[11]) + int(fields[12])       # utime, stime (clock ticks)
    return total / TICK


def first_event_ms(address: str, host: str, port: int = 443, tries: int = 15) -> list[float]:
    """Milliseconds from sending ``GET /sse`` on an open TLS connection to the first event."""
    ctx = ssl._create_unverified_context()
    ctx.set_alpn_protocols(["http/1.1"])
    out = []
    for _ in range(tries):
        with socket.create_connection((address, port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.perf_counter()
            tls.sendall(f"GET /sse HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
            seen = b""
            while b"data: chunk 0" not in seen:
                chunk = tls.recv(4096)
                if not chunk:
                    raise SystemExit(f"stream through {address} ended before its first event:\n{seen!r}")
                seen += chunk
            out.append((time.perf_counter() - start) * 1000)
    return out


class Bench:
    def __init__(self, args, tmp: Path, procs: Processes):
        self.args, self.tmp, self.procs = args, tmp, procs
        self.plan = make_plan(edited("dev", unlimited))
        (tmp / "lab").mkdir()
        self.lab = GatewayLab(self.plan, tmp / "lab", procs)
        # throughput on a buffered (non-streaming) service, the first event on a streaming one
        self.server = next(s for s in self.lab.servers if not s.streaming)
        self.streaming = next(s for s in self.lab.servers if s.streaming)
        self.bare_host = f"bare-proxy.{self.plan.topo.lab.domains.public}"

    def up(self) -> None:
        self.lab.up(mesh=False, launcher=("taskset", "-c", PROXY_CPU))
        with open("/etc/hosts", "a") as hosts:   # the lab's private copy of /etc
            hosts.write(f"{BARE_ADDRESS} {self.bare_host}\n")
        self.backend = self.start_backend()
        bare = self.tmp / "bare"
        self.bare_conf = nginx_bench.offroot_conf(bare, BARE_HTTP.format(
            address=BARE_ADDRESS, port=BARE_PORT,
            backend=f"{self.server.upstream_address}:{self.server.upstream_port}",
            cert=f"{gw.PUBLIC_CERT_LINK}/fullchain.pem", key=f"{gw.PUBLIC_CERT_LINK}/privkey.pem"))
        (bare / "nginx.conf").write_text(self.bare_conf)
        self.bare = self.procs.start(pinned(["nginx", "-p", f"{bare}/", "-c", f"{bare}/nginx.conf",
                                             "-g", "daemon off;"], PROXY_CPU), stdout=subprocess.DEVNULL)
        wait_port(BARE_ADDRESS, BARE_PORT)
        if self.bare.poll() is not None:
            raise SystemExit(f"the bare proxy did not start:\n{(bare / 'error.log').read_text()}")

    def start_backend(self) -> subprocess.Popen:
        backend = self.tmp / "backend"
        backend.mkdir(exist_ok=True)
        chain, key = self.lab.pki.leaf(self.server.ssl_name, dns=[self.server.ssl_name])
        (backend / "mesh.crt").write_text(chain)
        (backend / "mesh.key").write_text(key)
        (backend / "root.crt").write_text(self.lab.pki.root_pem)
        (backend / "nginx.conf").write_text(nginx_bench.offroot_conf(backend, BACKEND_HTTP.format(
            prefix=backend, address=self.server.upstream_address, port=self.server.upstream_port)))
        proc = self.procs.start(pinned(["nginx", "-p", f"{backend}/", "-c", f"{backend}/nginx.conf",
                                        "-g", "daemon off;"], REST_CPU), stdout=subprocess.DEVNULL)
        wait_port(self.server.upstream_address, self.server.upstream_port)
        return proc

    def throughput(self) -> dict:
        a = self.args
        proxies = {"generated": (f"https://{self.server.host}/", self.lab.nginx.pid),
                   "bare": (f"https://{self.bare_host}:{BARE_PORT}/", self.bare.pid)}
        for url, _ in proxies.values():     # warm up: sessions, keepalive pools, page cache
            h2load(url, 2000, a.clients, True)
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(a.rounds):
            for proto, h1 in (("HTTP/1.1", True), ("HTTP/2", False)):
                for name, (url, master) in proxies.items():
                    before = tree_cpu(master)
                    rate = h2load(url, a.requests, a.clients, h1)
                    cpu_us = (tree_cpu(master) - before) / a.requests * 1e6
                    runs.setdefault((name, proto), []).append((rate, cpu_us))
                    time.sleep(0.2)
        return runs

    def sse(self) -> dict[str, list[float]]:
        """First-event latency, with a streaming backend on the mesh's address (the stand-in of
        the gateway lab: three events 0.3 s apart), through each proxy and straight to it."""
        self.backend.terminate()
        self.backend.wait(timeout=10)
        s = self.streaming
        chain, key = self.lab.pki.ca.issue([s.ssl_name])
        mesh = MeshStandIn((s.upstream_address, s.upstream_port), chain, key, self.lab.pki.root_pem, self.tmp)
        mesh.ctx.verify_mode = ssl.CERT_OPTIONAL       # the bare proxy presents no certificate
        try:
            return {"generated": first_event_ms(self.lab.gateway_address, s.host),
                    "bare": first_event_ms(BARE_ADDRESS, self.bare_host, BARE_PORT),
                    "backend": first_event_ms(s.upstream_address, s.ssl_name, s.upstream_port)}
        finally:
            mesh.stop()


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
    unfit = nginx_bench.unfit_machine("the proxy on one, the load generator and the backend on the other")
    if unfit:
        print(unfit)
        return 2
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        bench = Bench(args, Path(tmp), procs)
        try:
            bench.up()
            runs = bench.throughput()
            sse = bench.sse()
        finally:
            bench.lab.down()
    report(args, bench, runs, sse)
    return 0


def report(args, bench: Bench, runs: dict, sse: dict[str, list[float]]) -> None:
    med = {k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    print(f"{args.requests} requests per run over {args.clients} keepalive connections, median of "
          f"{args.rounds} rounds; both proxies on CPU {PROXY_CPU}, h2load and the backend on CPU {REST_CPU}")
    print(f"\n{'protocol':<9} {'proxy':<10} {'req/s':>8} {'proxy CPU us/req':>16}   runs (req/s)")
    for (name, proto), values in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0] != "generated")):
        rate, cpu = med[(name, proto)]
        print(f"{proto:<9} {name:<10} {rate:>8.0f} {cpu:>16.1f}   {', '.join(f'{r:.0f}' for r, _ in values)}")
    print(f"\n{'protocol':<9} {'req/s generated/bare':>21} {'CPU per request bare/generated':>31}   goal")
    for proto in ("HTTP/1.1", "HTTP/2"):
        (g_rate, g_cpu), (b_rate, b_cpu) = med[("generated", proto)], med[("bare", proto)]
        ratio = g_rate / b_rate
        print(f"{proto:<9} {ratio:>21.2f} {b_cpu / g_cpu:>31.2f}   >= {RATIO_GOAL}: "
              f"{'ok' if ratio >= RATIO_GOAL else 'MISSED'}")
    print("\nfirst event of a server-sent-event stream (ms from request to the first `data:` line):")
    for name, values in sse.items():
        values = sorted(values)
        print(f"  {name:<10} median {statistics.median(values):7.1f}  p90 {values[int(0.9 * (len(values) - 1))]:7.1f}"
              f"  (n={len(values)})")
    print("\ncommands:")
    print("  " + " ".join(h2load_cmd(f"https://{bench.server.host}/", args.requests, args.clients, True)))
    print("  " + " ".join(h2load_cmd(f"https://{bench.bare_host}:{BARE_PORT}/", args.requests, args.clients, True)))
    print("  (and the same without --h1 for HTTP/2); bare proxy configuration:")
    print("\n".join("    " + line for line in bench.bare_conf.strip().splitlines()
                    if "temp_path" not in line))


if __name__ == "__main__":
    sys.exit(main())
