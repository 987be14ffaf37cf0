"""The ACME path end to end with real servers, from the plan's own files.

Inside an isolated network namespace (scripts/in-netns.sh): BIND answers the internal zone,
Pebble stands in for Step-CA's ACME server behind an Nginx front that serves Step-CA's URL
layout (``topo.acme_directory``, ``/health``) on the CA's address and port with a TLS
certificate issued by the plan's own intermediate. On the mesh's address the plan's
certificate script runs certbot exactly as the guest will (same script, flags, cli.ini,
root bundle); the renewal is the plan's timer command; the deploy hook installs the files.
"""

from __future__ import annotations

import datetime as dt
import grp
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from cryptography import x509

from conftest import stack_config
from lab import Processes, add_loopback_addresses, require_isolated, require_tools, wait_port
from phoenix.render import trust as r
from phoenix.topology import tls_paths
from test_trust_support import GATEWAY_WEBROOT, trust_run
from testpki import TestCA

pytestmark = pytest.mark.lab

#: guest directories the plan's files go to, each a private mount over a temp dir here.
MOUNTS = ("/etc/phoenix", r.SCRIPTS, r.ACME_WORK_DIR, r.ACME_LOGS_DIR, GATEWAY_WEBROOT)


def _leaf(names: list[str], run) -> tuple[str, str]:
    """A server certificate for ``names`` signed by the plan's intermediate (as Step-CA's own is)."""
    ca = TestCA.from_pem(run.named("intermediate-ca-cert").outputs["certPem"],
                         run.named("intermediate-ca-key").outputs["privateKeyPem"])
    return ca.issue(names)


def _zone(topo) -> str:
    domain = topo.lab.domains.internal
    lines = [f"$ORIGIN {domain}.", "$TTL 60",
             f"@ IN SOA ns.{domain}. hostmaster.{domain}. 1 60 60 600 60", f"@ IN NS ns.{domain}.",
             f"ns IN A {topo.dns.address}"]
    lines += [f"{rec.name}. IN {rec.type} {rec.value}{'.' if rec.type == 'CNAME' else ''}"
              for rec in topo.internal_records]
    return "\n".join(lines) + "\n"


def _nginx_conf(prefix: Path, topo, cert: Path, key: Path) -> str:
    port = topo.lab.pki.ca_port
    directory = urlparse(topo.acme_directory).path
    return f"""
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {prefix}/access.log;
  client_body_temp_path {prefix}/tmp-body; proxy_temp_path {prefix}/tmp-proxy;
  fastcgi_temp_path {prefix}/tmp-fcgi; uwsgi_temp_path {prefix}/tmp-uwsgi; scgi_temp_path {prefix}/tmp-scgi;
  server {{
    listen {topo.ca.address}:{port} ssl; listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert}; ssl_certificate_key {key};
    location = /health {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
    location = {directory} {{ proxy_pass https://127.0.0.1:14000/dir; proxy_set_header Host $http_host; }}
    location / {{ proxy_pass https://127.0.0.1:14000; proxy_set_header Host $http_host; }}
  }}
}}
"""


def _mount_private(work: Path) -> list[str]:
    """Bind a temp dir over each guest directory the plan writes; returns mountpoints we created."""
    created = []
    for path in MOUNTS:
        if not os.path.isdir(path):
            os.makedirs(path)
            created.append(path)
        src = work / "mounts" / path.strip("/").replace("/", "_")
        src.mkdir(parents=True)
        subprocess.run(["mount", "--bind", str(src), path], check=True)
    return created


def _unmount(created: list[str]) -> None:
    for path in reversed(MOUNTS):
        subprocess.run(["umount", path], capture_output=True)
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            pass


def _lay(files, guest: str, steps: set[str]) -> dict[str, str]:
    """Write the plan's files of ``steps`` on ``guest`` at their guest paths (under our mounts)."""
    laid = {}
    for path, (f, step) in files[guest].items():
        if step in steps and path.startswith(MOUNTS):
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
            os.chmod(target, f.mode)
            shutil.chown(target, f.owner, f.group)
            laid[path] = f.content
    return laid


def _unit_command(unit: str) -> tuple[list[str], dict[str, str]]:
    env = dict(re.findall(r"^Environment=(\w+)=(.*)$", unit, re.M))
    [command] = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    return shlex.split(command), env


def _cert(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


@pytest.fixture(scope="module")
def lab():
    require_isolated()
    require_tools("pebble", "certbot", "named", "nginx", "openssl", "curl", "runuser")
    work = Path(tempfile.mkdtemp(prefix="trust-lab-"))
    marks, ok = work / "reloads", work / "config-ok"
    run = trust_run(stack_config("dev"), reload=f"echo reloaded >> {marks}", check=f"test -e {ok}")
    topo = run.topo
    add_loopback_addresses(*(str(g.address) for g in (topo.ca, topo.mesh, topo.dns, topo.gateway)))
    created = _mount_private(work)
    procs = Processes()
    try:
        files = run.files()
        mesh = topo.mesh.name
        _lay(files, mesh, {f"{mesh}-trust", f"{mesh}-acme-client", f"{mesh}-cert-mesh"})
        # The CA side: its health script, and a TLS front made from the plan's intermediate.
        ca_files = {p: f for p, (f, _) in files[topo.ca.name].items()}
        health = work / "step-ca-health.sh"
        health.write_text(ca_files[r.CA_HEALTH].content)
        chain, key = _leaf(list(topo.ca_sans), run.run)
        (work / "ca.crt").write_text(chain)
        (work / "ca.key").write_text(key)
        (work / "ca.key").chmod(0o600)

        (work / "named.conf").write_text(
            f'options {{ directory "{work}"; pid-file "{work}/named.pid"; listen-on port 53 {{ {topo.dns.address}; }};\n'
            f'  listen-on-v6 {{ none; }}; recursion no; }};\ncontrols {{ }};\n'
            f'zone "{topo.lab.domains.internal}" {{ type primary; file "{work}/internal.zone"; }};\n')
        (work / "internal.zone").write_text(_zone(topo))
        procs.start(["named", "-g", "-c", str(work / "named.conf")])
        wait_port(str(topo.dns.address), 53)

        (work / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
            "certificate": str(work / "ca.crt"), "privateKey": str(work / "ca.key"),
            "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        procs.start(["pebble", "-config", str(work / "pebble.json"), "-dnsserver", f"{topo.dns.address}:53"], env=env)
        wait_port("127.0.0.1", 14000)

        (work / "nginx").mkdir()
        (work / "nginx" / "nginx.conf").write_text(_nginx_conf(work / "nginx", topo, work / "ca.crt", work / "ca.key"))
        procs.start(["nginx", "-p", str(work / "nginx"), "-c", str(work / "nginx" / "nginx.conf"),
                     "-g", "daemon off;"])
        wait_port(str(topo.ca.address), topo.lab.pki.ca_port)
        yield dict(run=run, topo=topo, work=work, marks=marks, ok=ok, health=health, files=files, procs=procs)
    finally:
        procs.stop_all()
        _unmount(created)
        shutil.rmtree(work, ignore_errors=True)


def _bash(path, env=None, timeout=120):
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _pebble_roots(work: Path) -> Path:
    pem = subprocess.run(["curl", "-sk", "https://127.0.0.1:15000/roots/0"], capture_output=True, text=True,
                         check=True).stdout
    path = work / "pebble-root.pem"
    path.write_text(pem)
    return path


def _verifies(chain_path: str, roots: Path) -> subprocess.CompletedProcess:
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", Path(chain_path).read_text(), re.S)
    untrusted = roots.parent / "untrusted.pem"
    untrusted.write_text("".join(pems[1:]))
    leaf = roots.parent / "leaf.pem"
    leaf.write_text(pems[0])
    return subprocess.run(["openssl", "verify", "-CAfile", str(roots), "-untrusted", str(untrusted), str(leaf)],
                          capture_output=True, text=True)


def _key_readable_by(user: str, key: str) -> bool:
    return subprocess.run(["runuser", "-u", user, "--", "cat", key], capture_output=True).returncode == 0


def test_ca_health_check_verifies_every_san_against_the_root(lab):
    out = _bash(lab["health"])
    assert out.returncode == 0, out.stderr
    assert f"/health ok on {len(lab['topo'].ca_sans)} names" in out.stdout


def test_ca_health_check_fails_when_a_san_is_missing(lab):
    """Trap 5: a CA certificate without the name the check uses is a failure, not a pass."""
    topo, work = lab["topo"], lab["work"]
    run = lab["run"].run
    chain, key = _leaf([s for s in topo.ca_sans if s != topo.ca_name], run)
    good_chain, good_key = (work / "ca.crt").read_text(), (work / "ca.key").read_text()
    nginx = ["nginx", "-p", str(work / "nginx"), "-c", str(work / "nginx" / "nginx.conf")]
    try:
        (work / "ca.crt").write_text(chain)
        (work / "ca.key").write_text(key)
        subprocess.run([*nginx, "-s", "reload"], check=True)
        time.sleep(0.5)
        out = _bash(lab["health"], env={"PHOENIX_HEALTH_WAIT": "1"})
        assert out.returncode != 0
        assert f"https://{topo.ca_name}:{topo.lab.pki.ca_port}/health" in out.stderr
    finally:
        (work / "ca.crt").write_text(good_chain)
        (work / "ca.key").write_text(good_key)
        subprocess.run([*nginx, "-s", "reload"], check=True)
        time.sleep(0.5)


def test_certbot_obtains_renews_and_installs_for_the_service(lab):
    topo, work, marks, ok = lab["topo"], lab["work"], lab["marks"], lab["ok"]
    paths = tls_paths("mesh")
    script = f"{r.SCRIPTS}/cert-mesh.sh"
    started = time.monotonic()

    # 1. First issuance, with the plan's script: the hook installs it; nothing is reloaded yet.
    out = _bash(script)
    assert out.returncode == 0, out.stdout + out.stderr
    issued = time.monotonic() - started
    first = _cert(paths.cert)
    assert first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [topo.mesh_name]
    roots = _pebble_roots(work)
    verified = _verifies(paths.cert, roots)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    key = os.stat(paths.key)
    assert (oct(key.st_mode & 0o777), key.st_gid) == ("0o640", grp.getgrnam("www-data").gr_gid)
    assert _key_readable_by("www-data", paths.key), "the service's group cannot read its key (trap 11)"
    assert not _key_readable_by("nobody", paths.key)
    assert not marks.exists(), "first issuance must not reload a service that is not running on it"
    renewal = Path(r.ACME_CONFIG_DIR, "renewal", "mesh.conf")
    assert "renew_before_expiry = 8 hours" in renewal.read_text()

    # 2. Re-running the step changes nothing (idempotent): same certificate, still no reload.
    again = _bash(script)
    assert again.returncode == 0, again.stderr
    assert _cert(paths.cert).serial_number == first.serial_number and not marks.exists()

    # 3. Renewal by the plan's timer command, once the certificate is inside its renewal window.
    service = lab["files"][topo.mesh.name][r.RENEW_SERVICE][0].content
    command, env = _unit_command(service)
    assert env == {"REQUESTS_CA_BUNDLE": r.ROOT_PATH}
    left = (first.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days + 1
    renewal.write_text(re.sub(r"^renew_before_expiry.*$", f"renew_before_expiry = {left} days",
                              renewal.read_text(), flags=re.M))
    ok.touch()
    renewed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    second = _cert(paths.cert)
    assert second.serial_number != first.serial_number
    assert _verifies(paths.cert, roots).returncode == 0
    assert marks.read_text().splitlines() == ["reloaded"], "renewal must reload after the config test passed"
    assert _key_readable_by("www-data", paths.key) and oct(os.stat(paths.key).st_mode & 0o777) == "0o640"
    assert f"renew_before_expiry = {left} days" in renewal.read_text(), "certbot dropped the renewal window"

    # 4. A renewal whose config test fails keeps the old certificate and does not reload.
    ok.unlink()
    failed = subprocess.run([*command, "--force-renewal"], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=120)
    assert "config test failed" in failed.stdout + failed.stderr + _logs()
    assert _cert(paths.cert).serial_number == second.serial_number
    assert marks.read_text().splitlines() == ["reloaded"]
    assert _key_readable_by("www-data", paths.key)

    # 5. Once the config test passes again, the plan's step converges: newest certificate, reloaded.
    ok.touch()
    converged = _bash(script)
    assert converged.returncode == 0, converged.stderr
    live = _cert(f"{r.ACME_CONFIG_DIR}/live/mesh/cert.pem")
    assert _cert(paths.cert).serial_number == live.serial_number != second.serial_number
    assert marks.read_text().splitlines() == ["reloaded", "reloaded"]
    print(f"\nfirst issuance through the plan's script: {issued:.1f}s")


def _logs() -> str:
    log = Path(r.ACME_LOGS_DIR, "letsencrypt.log")
    return log.read_text() if log.exists() else ""


def test_certbot_through_the_webroot_of_a_guest_that_serves_port_80(lab):
    """The gateway already serves :80: its client certificate is proven through Nginx's webroot."""
    topo, work = lab["topo"], lab["work"]
    gw = topo.gateway.name
    _lay(lab["files"], gw, {f"{gw}-trust", f"{gw}-acme-client", f"{gw}-cert-gateway-client"})
    prefix = work / "gateway-nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(f"""
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {prefix}/access.log;
  client_body_temp_path {prefix}/b; proxy_temp_path {prefix}/p; fastcgi_temp_path {prefix}/f;
  uwsgi_temp_path {prefix}/u; scgi_temp_path {prefix}/s;
  server {{
    listen {topo.gateway.address}:80;
    location /.well-known/acme-challenge/ {{ root {GATEWAY_WEBROOT}; }}
    location / {{ return 301 https://$host$request_uri; }}
  }}
}}
""")
    nginx = lab["procs"].start(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"])
    try:
        wait_port(str(topo.gateway.address), 80)
        out = _bash(f"{r.SCRIPTS}/cert-gateway-client.sh")
        assert out.returncode == 0, out.stdout + out.stderr
        paths = tls_paths("gateway-client")
        names = _cert(paths.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [topo.guest_fqdn(topo.gateway)]
        assert _verifies(paths.cert, _pebble_roots(work)).returncode == 0
        assert "/.well-known/acme-challenge/" in (prefix / "access.log").read_text()
        assert _key_readable_by("www-data", paths.key)
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
