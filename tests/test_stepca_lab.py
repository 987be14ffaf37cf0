"""A real step-ca, booted by the dev plan's own steps, and every guest's own ACME client step
getting its certificates from it.

Inside the isolated namespace (scripts/in-netns.sh), tests/stepca_harness.py puts the plan's
DNS, CA, gateway, GPU, Portainer and mesh guests in network and mount namespaces of their own
on one bridge (each with the plan's address, gateway, DNS server and search domain, over
copy-on-write copies of /etc, /var, /run, /usr, /root) and replays the plan's steps on them in
dependency order, each its exact command with its exact bundle (``PlanLab.replay``):

* dns: bootstrap, trust, bind-install, bind-config: the real named (Debian's named.service,
  started by tests/units.py, the systemd stand-in) serves the plan's views. step-ca resolves
  the names it validates there, as on the lab network (no /etc/hosts entries).
* ca: bootstrap, trust, step-ca-install, step-ca-config, step-ca-health. The install step is
  REPLAYED, not skipped: its .debs come from a local mirror (dpkg-deb around the real step-ca
  binary, 0.19.0 built from Debian's Go sources; a step-cli without a binary), and the stack is
  planned with those files' sha256 as its pins (``stepca_harness.mirrored``): the checksum
  gate, dpkg, the ``step`` user and its directories are the script's own. The config step
  runs its check (step-ca-check.sh), its reload (``systemctl daemon-reload && systemctl enable
  && systemctl restart step-ca``: the stand-in runs the plan's unit, as user ``step``, in the
  unit's sandbox) and its health check (step-ca-health.sh) for real. There is no password
  file to boot with: the plan keeps the intermediate key unencrypted, readable by ``step``
  alone (phoenix/render/trust.py ``ca_files`` says why), and the unit passes none.
* gateway: bootstrap, trust, nginx-install, public-cert-placeholder, nginx (Debian's
  nginx.service), mesh-client-cert (its client certificate towards the mesh: the program's, not
  Step-CA's; the gateway asks Step-CA for nothing);
  gpu-llm: bootstrap, trust, svc-llm-user, acme-client, cert-llm (certbot standalone on :80);
  portainer: bootstrap, trust, acme-client, cert-portainer-ui; mesh: bootstrap, trust,
  acme-client (its own certificate comes from Traefik's resolver: the mesh lab runs the real
  Traefik against a real step-ca). Left out: services that cannot run here (the LLM server,
  Docker, Portainer) and the public certificate (Let's Encrypt: the gateway lab, with Pebble).

The lab's step-ca is 0.19.0, the stacks pin 0.28.1: what each enforces is said in
tests/test_stepca_policy.py, which checks the fields 0.19 ignores (the authority policy, the
ACME challenge list) against 0.28.1's own rules.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import shlex
import socket
import ssl
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from cryptography import x509

import units
from conftest import stack_config
from lab import require_isolated, require_tools, wait_until
from phoenix.bundle import GuestFile, pack, unpack
from phoenix.plan import make_plan
from phoenix.plan.writer import pushed_files
from phoenix.render import trust as r
from phoenix.render import workloads as wl
from phoenix.topology import tls_paths
from stepca_harness import (
    LOGIN_ENV,
    PlanLab,
    build_debs,
    certificates,
    chain_problems,
    common_name,
    dns_names,
    mirrored,
)
from tools import step_ca, step_ca_sources_version

pytestmark = pytest.mark.lab

GUESTS = ("dns", "ca", "gateway", "gpu-llm", "portainer", "mesh")
#: per guest, the plan's steps this lab replays (see the module docstring for what is left out)
STEPS = {
    "dns": ("bootstrap", "trust", "bind-install", "bind-config"),
    "ca": ("bootstrap", "trust", "step-ca-install", "step-ca-config", "step-ca-health"),
    "gateway": ("bootstrap", "trust", "nginx-install", "public-cert-placeholder", "nginx", "mesh-client-cert"),
    "gpu-llm": ("bootstrap", "trust", "svc-llm-user", "acme-client", "cert-llm"),
    "portainer": ("bootstrap", "trust", "acme-client", "cert-portainer-ui"),
    "mesh": ("bootstrap", "trust", "acme-client"),
}


def requested(lab: PlanLab, guest: str) -> dict[str, list[str]]:
    """cert name -> the names the plan's certificate step on ``guest`` asks for (``-d``)."""
    out = {}
    for _path, (f, step) in pushed_files(lab.plan.run, lab.topo)[guest].items():
        if step.startswith(f"{guest}-cert-"):
            for line in f.content.splitlines():
                if line.startswith(f"{r.CERTBOT} certonly "):
                    argv = shlex.split(line)
                    out[argv[argv.index("--cert-name") + 1]] = [argv[i + 1] for i, a in enumerate(argv) if a == "-d"]
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_isolated()
    require_tools("named", "nginx", "certbot", "dpkg-deb", "setpriv", "nsenter", "unshare", "openssl", "jq", "curl")
    binary, version = step_ca(), step_ca_sources_version()
    tmp = tmp_path_factory.mktemp("stepca-lab")
    started = time.monotonic()
    debs = build_debs(tmp, binary, version)
    gateway = stack_config("dev").phoenix()["network"]["gateway"]
    plan = make_plan(mirrored("dev", debs, gateway, version))
    lab = PlanLab(plan, tmp, GUESTS)
    try:
        lab.up()
        lab.serve_mirror(debs)
        lab.timings = {"namespaces": time.monotonic() - started}
        lab.issued_from = dt.datetime.now(dt.UTC)
        lab.replay([s for g in GUESTS for s in lab.steps_of(g, *STEPS[g])])
        lab.issued_until = dt.datetime.now(dt.UTC)
        lab.timings["every step replayed"] = time.monotonic() - started
        lab.debs, lab.version, lab.binary = debs, version, binary
        yield lab
    finally:
        lab.down()


def root_pem(lab) -> str:
    return lab.plan.run.named("root-ca-cert").outputs["certPem"]


def intermediate_pem(lab) -> str:
    return lab.plan.run.named("intermediate-ca-cert").outputs["certPem"]


def ca_context(lab, tmp: Path) -> ssl.SSLContext:
    (tmp / "phoenix-root.pem").write_text(root_pem(lab))
    return ssl.create_default_context(cafile=str(tmp / "phoenix-root.pem"))


def fetch(lab, tmp, path: str, host: str) -> tuple[bytes, bytes]:
    """(body, the served leaf in DER) of GET https://host:<ca port>/path, ``host`` pinned to the
    CA's address, verified against the plan's root for the name ``host``."""
    topo = lab.topo
    sock = socket.create_connection((str(topo.ca.address), topo.lab.pki.ca_port), timeout=10)
    tls = ca_context(lab, tmp).wrap_socket(sock, server_hostname=host)
    conn = http.client.HTTPConnection(host, topo.lab.pki.ca_port)
    conn.sock = tls
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert 200 <= resp.status < 300, (path, resp.status)    # 0.19 answers /roots with 201
        return resp.read(), tls.getpeercert(binary_form=True)
    finally:
        conn.close()


# -- the CA ------------------------------------------------------------------------------------------
def test_the_install_step_installs_the_pinned_package_and_makes_the_step_user(lab, tmp_path):
    ca = lab.guests[lab.topo.ca.name]
    assert sorted(lab.mirror.fetched) == sorted(f"/{d.name}" for d in lab.debs.values())
    assert ca.path("/usr/bin/step-ca").read_bytes() == Path(lab.binary).read_bytes()
    status = lab.login("ca", ["dpkg-query", "-W", "-f=${Status} ${Version}", "step-ca"]).stdout
    assert status == f"install ok installed {lab.version}"
    user = lab.login("ca", ["getent", "passwd", r.STEP_USER]).stdout.strip().split(":")
    assert user[5:] == [r.STEP_HOME, "/usr/sbin/nologin"] and int(user[2]) < 1000, user   # a system user
    key = lab.login("ca", ["stat", "-c", "%a %U %G", r.CA_KEY]).stdout.split()
    assert key == ["400", r.STEP_USER, r.STEP_USER]
    readers = {u: lab.login("ca", ["runuser", "-u", u, "--", "cat", r.CA_KEY], check=False).returncode == 0
               for u in (r.STEP_USER, "nobody", "www-data")}
    assert readers == {r.STEP_USER: True, "nobody": False, "www-data": False}
    # a second run changes nothing: the pinned version is installed, nothing is fetched again
    lab.step("ca-step-ca-install")
    assert len(lab.mirror.fetched) == len(lab.debs)


def test_step_ca_runs_as_the_plans_unit_says(lab):
    ca = lab.guests[lab.topo.ca.name]
    record = json.loads(ca.read(f"{units.STATE}/step-ca.service.json"))
    pid = record["pid"]
    assert units.alive(pid)
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"/usr/bin/step-ca", r.CA_JSON.encode()]
    status = Path(f"/proc/{pid}/status").read_text()
    uid = lab.login("ca", ["id", "-u", r.STEP_USER]).stdout.strip()
    assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s", status, re.M), "step-ca does not run as user step"
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
    assert env["STEPPATH"] == r.STEP_HOME and "REQUESTS_CA_BUNDLE" not in env
    mounts = {line.split()[4]: line.split()[5] for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()}
    assert mounts["/"].startswith("ro") and mounts["/etc"].startswith("ro")     # ProtectSystem=strict
    assert mounts[r.CA_DB].startswith("rw")                                      # ReadWritePaths
    assert Path(f"/proc/{pid}/cwd").resolve() == ca.path(r.STEP_HOME).resolve()


def test_health_roots_and_the_acme_directory_on_every_name(lab, tmp_path):
    topo = lab.topo
    root = x509.load_pem_x509_certificate(root_pem(lab).encode())
    for host in (topo.ca_name, str(topo.ca.address)):
        body, leaf = fetch(lab, tmp_path, "/health", host)
        assert json.loads(body) == {"status": "ok"}
        served = x509.load_der_x509_certificate(leaf)
        assert sorted(dns_names(served)) == sorted(n for n in topo.ca_sans if not r.is_ip(n))
        assert served.issuer == x509.load_pem_x509_certificate(intermediate_pem(lab).encode()).subject
    roots = json.loads(fetch(lab, tmp_path, "/roots", topo.ca_name)[0])
    assert [x509.load_pem_x509_certificate(c.encode()) for c in roots["crts"]] == [root]   # exactly the Phoenix root
    directory = json.loads(fetch(lab, tmp_path, urlparse(topo.acme_directory).path, topo.ca_name)[0])
    base = topo.acme_directory.rsplit("/", 1)[0].replace(str(topo.ca.address), topo.ca_name)
    assert directory["newOrder"] == f"{base}/new-order" and directory["newAccount"] == f"{base}/new-account"
    # what the plan's health step printed, on every SAN
    assert f"/health ok on {len(topo.ca_sans)} names" in lab.results["ca-step-ca-health"].stdout


def test_a_ca_config_whose_certificate_lacks_a_san_is_rolled_back(lab):
    """Trap 5 on the real CA: ca.json without the name the health check uses. step-ca starts on
    it, the health check fails on that name, phoenix-apply restores the previous files and
    restarts step-ca on them: the CA answers on every name again."""
    topo = lab.topo
    step = "ca-step-ca-config"
    config = json.loads(next(f.content for f in unpack(lab.commands[step].value("stdin")) if f.path == r.CA_JSON))
    config["dnsNames"] = [n for n in config["dnsNames"] if n != topo.ca_name]
    files = [GuestFile(f.path, json.dumps(config, indent=2) + "\n", f.mode, f.owner, f.group) if f.path == r.CA_JSON
             else f for f in unpack(lab.commands[step].value("stdin"))]
    guest = lab.guests[topo.ca.name]
    failed = guest.run(["bash", "-c", lab.commands[step].value("create")], input=pack(files),
                       env={**LOGIN_ENV, "PHOENIX_HEALTH_WAIT": "3"})
    assert failed.returncode != 0
    assert f"https://{topo.ca_name}:{topo.lab.pki.ca_port}/health" in failed.stderr
    assert "previous files restored" in failed.stderr
    assert json.loads(guest.read(r.CA_JSON))["dnsNames"] == list(topo.ca_sans)
    health = lab.step("ca-step-ca-health")
    assert f"/health ok on {len(topo.ca_sans)} names" in health.stdout


# -- every guest's certificates --------------------------------------------------------------------
def test_every_guests_certificate_comes_from_the_ca(lab, tmp_path):
    pki = lab.topo.lab.pki
    lifetime = dt.timedelta(hours=pki.leaf_lifetime_hours)
    seen = {}
    for guest in GUESTS[2:]:
        for name, names in requested(lab, guest).items():
            chain = lab.guests[guest].read(tls_paths(name).cert)
            assert chain_problems(chain, root_pem(lab), intermediate_pem(lab), tmp_path) == [], (guest, name)
            leaf = certificates(chain)[0]
            assert sorted(dns_names(leaf)) == sorted(names) and common_name(leaf) in names, (guest, name)
            assert lab.issued_from + lifetime - dt.timedelta(seconds=2) <= leaf.not_valid_after_utc \
                <= lab.issued_until + lifetime + dt.timedelta(seconds=2), (guest, name, leaf.not_valid_after_utc)
            seen[f"{guest}/{name}"] = names
    # each replica's certificate, for its guest's name; the gateway asks for none (its client
    # certificate is the program's), the mesh's come from Traefik's resolver (the mesh lab)
    assert seen == {"gpu-llm/llm": ["gpu-llm.lab.internal"], "portainer/portainer-ui": ["portainer.lab.internal"]}
    print(f"\nlab timings: {lab.timings}")
    t0 = min(a for a, _ in lab.spans.values())
    for n, (a, b) in sorted(lab.spans.items(), key=lambda kv: kv[1]):
        print(f"  {n:38s} {a - t0:6.1f} {b - a:6.1f}")


def test_each_guests_renewal_timer_is_enabled(lab):
    clients = {g.name for g in lab.topo.acme_clients}
    assert "gateway" not in clients and {"gpu-llm", "portainer", "mesh"} <= clients
    for guest in sorted(clients & set(GUESTS)):
        done = lab.login(guest, ["systemctl", "is-enabled", f"{r.RENEW_UNIT}.timer"], check=False)
        assert done.stdout.strip() == "enabled", guest


def authorizations(log: str) -> dict[str, dict]:
    """name -> the CA's last answer about its authorization, from certbot's debug log."""
    out = {}
    for line in log.splitlines():
        if line.startswith('{"identifier"'):
            authz = json.loads(line)
            out[authz["identifier"]["value"]] = authz
    return out


def test_a_name_belonging_to_another_guest_is_refused(lab):
    """The mesh's certbot (the plan's cli.ini, directories and root; standalone on the mesh's
    :80) asks for the gateway's name, for a public name (outside the CA's policy; the internal
    view points it at the gateway) and for a name nobody has. step-ca validates each at the
    address the name resolves to: the gateway's nginx has no such token, the last name has no
    address. The CA records a failed validation on each and issues nothing.

    Both 0.19 and 0.28.1 keep such a challenge pending (acme/challenge.go ``http01Validate``:
    ``storeError(..., markInvalid=false)``), so certbot polls 30 times and gives up after about
    100 s with "All authorizations were not finalized by the CA"; the lab stops it as soon as the
    CA has answered. 0.28.1 refuses the public name earlier still, at the order
    (tests/test_stepca_policy.py)."""
    topo = lab.topo
    mesh, gateway = lab.guests[topo.mesh.name], lab.guests[topo.gateway.name]
    stolen = topo.guest_fqdn(topo.gateway)
    public = next(s.public_host for s in topo.lab.services if s.public_host)
    nobody = f"nobody.{topo.lab.domains.internal}"
    argv = [r.CERTBOT, "certonly", *r.certbot_base(), "--cert-name", "attempt", "--standalone",
            "--http-01-port", "80", "-d", stolen, "-d", public, "-d", nobody]
    log = f"{r.ACME_LOGS_DIR}/letsencrypt.log"
    attempt = lab.start(topo.mesh.name, argv, env={"REQUESTS_CA_BUNDLE": r.ROOT_PATH})
    try:
        def answered():
            found = authorizations(mesh.read(log)) if mesh.exists(log) else {}
            failed = {name: [c["error"] for c in authz["challenges"] if c["type"] == "http-01" and "error" in c]
                      for name, authz in found.items()}
            return failed if all(failed.get(n) for n in (stolen, public, nobody)) else None
        failed = wait_until(answered, 30, "the CA's answer to the mesh's order")
    finally:
        units.terminate(attempt.pid)
        attempt.wait()
    assert {n: authorizations(mesh.read(log))[n]["status"] for n in failed} == dict.fromkeys(failed, "pending")
    assert all(e[0]["type"] == "urn:ietf:params:acme:error:connection" for e in failed.values()), failed
    assert not mesh.exists(f"{r.ACME_CONFIG_DIR}/live/attempt")
    # The CA asked the gateway (the address those names have) for the token, not the mesh.
    ca = re.escape(str(topo.ca.address))
    def asked(host: str) -> bool:
        log = gateway.read("/var/log/nginx/access.log")
        return bool(re.search(rf'^{ca} .*"{re.escape(host)}" "GET /\.well-known/acme-challenge/', log, re.M))
    wait_until(lambda: asked(stolen) and asked(public), 5, "the CA's requests in the gateway's access log")


def test_the_labs_step_ca_ignores_the_challenge_list(lab):
    """0.19 offers tls-alpn-01 although the plan's provisioner lists http-01 and dns-01 only
    (0.23+ honours the list; test_stepca_policy checks it against 0.28.1's rules). Should this
    fail, the lab's step-ca enforces the list: assert it here, on the real CA, instead."""
    log = lab.guests["gpu-llm"].read(f"{r.ACME_LOGS_DIR}/letsencrypt.log")
    [authz] = authorizations(log).values()
    assert sorted(c["type"] for c in authz["challenges"]) == ["dns-01", "http-01", "tls-alpn-01"]


# -- renewal by the timer --------------------------------------------------------------------------
def nginx_workers(master: int) -> set[int]:
    return {int(p) for p in re.findall(r"\d+", Path(f"/proc/{master}/task/{master}/children").read_text())}


def test_the_timer_renews_a_due_certificate_and_installs_it_for_the_service(lab, tmp_path):
    """The timer fires the plan's phoenix-acme-renew.service (the stand-in runs the plan's unit
    file: its Environment, its ExecStart). Not due (the plan's renew_before_expiry): nothing
    changes. Due (the renewal config's renew_before_expiry beyond the lifetime): the new
    certificate is installed at the service's path, readable by the service's group (its deploy
    hook then runs the service's reload: ``systemctl try-restart``, a no-op here, where the LLM
    server does not run; the trust tier's lab checks that a failed config test holds a reload)."""
    topo = lab.topo
    g = "gpu-llm"
    guest = lab.guests[g]
    paths = tls_paths("llm")
    before = certificates(guest.read(paths.cert))[0]
    fire = ["systemctl", "start", f"{r.RENEW_UNIT}.service"]
    lab.login(g, fire)
    assert certificates(guest.read(paths.cert))[0] == before

    conf = f"{r.ACME_CONFIG_DIR}/renewal/llm.conf"
    assert f"renew_before_expiry = {r.renew_before(topo.lab)}" in guest.read(conf)
    due = topo.lab.pki.leaf_lifetime_hours + 1
    lab.login(g, ["sed", "-i", f"s/^renew_before_expiry.*/renew_before_expiry = {due} hours/", conf])
    lab.login(g, fire)
    after = certificates(guest.read(paths.cert))[0]
    assert after.serial_number != before.serial_number
    assert chain_problems(guest.read(paths.cert), root_pem(lab), intermediate_pem(lab), tmp_path) == []
    assert dns_names(after) == dns_names(before) == ["gpu-llm.lab.internal"]
    assert after == certificates(guest.read(f"{r.ACME_CONFIG_DIR}/live/llm/fullchain.pem"))[0]
    user = wl.service_user(topo.service("llm"))
    assert lab.login(g, ["stat", "-c", "%a %G", paths.key]).stdout.split() == ["640", user]
