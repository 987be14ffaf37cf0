"""The trust tier's ACME path end to end on the real step-ca, from the tier's own steps.

``trust_run`` builds the trust tier alone (PKI, guests, trust, Step-CA) with two certificates:
the mesh's (certbot standalone on :80; its hook's config test and reload are marker commands
in the guest, so a test can make the config test fail) and a certificate proven through a webroot
a web server on :80 serves (``webroot_guest``, nginx here). Inside the isolated namespace,
tests/stepca_harness.py gives the CA, mesh and webroot guests namespaces of their own and
replays the plan's steps on them: the CA by its bootstrap, trust, step-ca-install (from the
lab's mirror, the stack pinned to its .debs), step-ca-config and step-ca-health steps, the
real step-ca (0.19.0) running as the plan's unit says; each client by its bootstrap, trust,
acme-client and certificate steps. There is no DNS tier in this program: the CA guest's
/etc/hosts holds the internal view's addresses (tests/test_stepca_lab.py resolves them through
the real named of the full plan). Renewal is the plan's timer unit, run by the systemd
stand-in (tests/units.py) as the timer would start it.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

import units
from conftest import stack_config
from lab import require_isolated, require_tools, wait_until
from phoenix.render import trust as r
from phoenix.topology import tls_paths
from stepca_harness import PlanLab, build_debs, certificates, chain_problems, dns_names, mirrored
from test_trust_support import GATEWAY_WEBROOT, WEBROOT_CERT, trust_run, webroot_guest
from tools import step_ca, step_ca_sources_version

pytestmark = pytest.mark.lab

RELOADS = "/root/phoenix-lab-reloads"         # the mesh hook's "reload" appends a line here
CONFIG_OK = "/root/phoenix-lab-config-ok"     # the mesh hook's "config test" passes while this exists
CA_STEPS = ("bootstrap", "trust", "step-ca-install", "step-ca-config", "step-ca-health")
CLIENT_STEPS = ("bootstrap", "trust", "acme-client")
NGINX_PREFIX = "/run/lab-nginx"


def hosts_file(topo) -> str:
    """The internal view's A records (CNAMEs followed) as /etc/hosts lines."""
    a = {rec.name: rec.value for rec in topo.internal_records if rec.type == "A"}
    cname = {rec.name: rec.value.rstrip(".") for rec in topo.internal_records if rec.type == "CNAME"}
    resolved = {**a, **{name: a[target] for name, target in cname.items() if target in a}}
    return "127.0.0.1 localhost\n" + "".join(f"{address} {name}\n" for name, address in sorted(resolved.items()))


def webroot_nginx(topo) -> str:
    """A web server holding :80 and serving HTTP-01 from certbot's webroot (as the gateway's does)."""
    p = NGINX_PREFIX
    return f"""pid {p}/nginx.pid;
error_log {p}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {p}/access.log;
  client_body_temp_path {p}/b; proxy_temp_path {p}/p; fastcgi_temp_path {p}/f;
  uwsgi_temp_path {p}/u; scgi_temp_path {p}/s;
  server {{
    listen 80;
    location /.well-known/acme-challenge/ {{ root {GATEWAY_WEBROOT}; }}
    location / {{ return 301 https://$host$request_uri; }}
  }}
}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_isolated()
    require_tools("nginx", "certbot", "dpkg-deb", "setpriv", "nsenter", "unshare", "openssl", "jq", "curl")
    binary, version = step_ca(), step_ca_sources_version()
    tmp = tmp_path_factory.mktemp("trust-acme-lab")
    debs = build_debs(tmp, binary, version)
    gateway_address = stack_config("dev").phoenix()["network"]["gateway"]
    plan = trust_run(mirrored("dev", debs, gateway_address, version),
                     reload=f"echo reloaded >> {RELOADS}", check=f"test -e {CONFIG_OK}")
    topo = plan.topo
    ca, mesh, gw = topo.ca.name, topo.mesh.name, webroot_guest(topo)
    lab = PlanLab(plan, tmp, (ca, mesh, gw))
    try:
        lab.up()
        lab.serve_mirror(debs)
        lab.guests[ca].write("/etc/hosts", hosts_file(topo))
        lab.guests[gw].write(f"{NGINX_PREFIX}/nginx.conf", webroot_nginx(topo))
        lab.guests[gw].run(["install", "-d", "-m", "0755", GATEWAY_WEBROOT], check=True)
        lab.nginx = lab.start(gw, ["nginx", "-p", f"{NGINX_PREFIX}/", "-c", f"{NGINX_PREFIX}/nginx.conf",
                                   "-g", "daemon off;"])
        lab.replay([*lab.steps_of(ca, *CA_STEPS), *lab.steps_of(mesh, *CLIENT_STEPS, "cert-mesh"),
                    *lab.steps_of(gw, *CLIENT_STEPS, f"cert-{WEBROOT_CERT}")])
        yield lab
    finally:
        if getattr(lab, "nginx", None):   # nginx and its workers: the whole process group
            units.terminate(lab.nginx.pid)
            lab.nginx.wait()
        lab.down()


def pems(lab):
    def out(name: str) -> str:
        return lab.plan.run.named(name).outputs["certPem"]
    return out("root-ca-cert"), out("intermediate-ca-cert")


def readable_by(lab, guest: str, user: str, path: str) -> bool:
    return lab.login(guest, ["runuser", "-u", user, "--", "cat", path], check=False).returncode == 0


def reloads(lab, guest: str) -> list[str]:
    g = lab.guests[guest]
    return g.read(RELOADS).splitlines() if g.exists(RELOADS) else []


def test_certbot_obtains_renews_and_installs_for_the_service(lab, tmp_path):
    topo = lab.topo
    mesh = topo.mesh.name
    guest = lab.guests[mesh]
    paths = tls_paths("mesh")
    root, intermediate = pems(lab)

    # 1. First issuance by the plan's step: the hook installs it for the service's group; nothing
    #    is reloaded (the service's own step starts it).
    first = certificates(guest.read(paths.cert))[0]
    assert dns_names(first) == [topo.mesh_name]
    assert chain_problems(guest.read(paths.cert), root, intermediate, tmp_path) == []
    assert lab.login(mesh, ["stat", "-c", "%a %G", paths.key]).stdout.split() == ["640", "www-data"]
    assert readable_by(lab, mesh, "www-data", paths.key), "the service's group cannot read its key (trap 11)"
    assert not readable_by(lab, mesh, "nobody", paths.key)
    assert reloads(lab, mesh) == [], "first issuance must not reload a service that is not running on it"
    renewal = f"{r.ACME_CONFIG_DIR}/renewal/mesh.conf"
    assert f"renew_before_expiry = {r.renew_before(topo.lab)}" in guest.read(renewal)

    # 2. Re-running the step changes nothing: same certificate, still no reload.
    lab.step(f"{mesh}-cert-mesh")
    assert certificates(guest.read(paths.cert))[0] == first and reloads(lab, mesh) == []

    # 3. The timer, once the certificate is inside its renewal window: the plan's unit (its
    #    Environment, its ExecStart) renews it, the hook installs it after the config test, reloads.
    left = (first.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds() // 3600 + 2
    lab.login(mesh, ["sed", "-i", f"s/^renew_before_expiry.*/renew_before_expiry = {left:.0f} hours/", renewal])
    lab.login(mesh, ["touch", CONFIG_OK])
    fire = ["systemctl", "start", f"{r.RENEW_UNIT}.service"]
    lab.login(mesh, fire)
    second = certificates(guest.read(paths.cert))[0]
    assert second.serial_number != first.serial_number
    assert chain_problems(guest.read(paths.cert), root, intermediate, tmp_path) == []
    assert reloads(lab, mesh) == ["reloaded"], "a renewal reloads after the config test passed"
    assert readable_by(lab, mesh, "www-data", paths.key)
    assert f"renew_before_expiry = {left:.0f} hours" in guest.read(renewal), "certbot dropped the renewal window"

    # 4. A renewal whose config test fails keeps the previous certificate, does not reload,
    #    and fails the timer's unit (certbot alone would exit 0 and never retry the hook).
    lab.login(mesh, ["rm", CONFIG_OK])
    failed = lab.login(mesh, fire, check=False)
    assert failed.returncode != 0, "the timer's unit must fail when the hook refuses the certificate"
    journal = guest.read(f"/run/phoenix-units/{r.RENEW_UNIT}.service.log")
    assert "config test failed with the new certificate" in journal
    assert certificates(guest.read(paths.cert))[0] == second and reloads(lab, mesh) == ["reloaded"]
    assert readable_by(lab, mesh, "www-data", paths.key)
    refused = certificates(guest.read(f"{r.ACME_CONFIG_DIR}/live/mesh/cert.pem"))[0]
    assert refused != second, "certbot renewed: its new certificate waits in the lineage"

    # 5. The next run of the timer, once the config test passes, installs it and reloads: no
    #    renewal is due any more (that certificate is new), the hook catches up on its own.
    lab.login(mesh, ["sed", "-i", f"s/^renew_before_expiry.*/renew_before_expiry = {r.renew_before(topo.lab)}/",
                     renewal])
    lab.login(mesh, ["touch", CONFIG_OK])
    lab.login(mesh, fire)
    assert certificates(guest.read(paths.cert))[0] == refused
    assert certificates(guest.read(f"{r.ACME_CONFIG_DIR}/live/mesh/cert.pem"))[0] == refused, "nothing renewed"
    assert reloads(lab, mesh) == ["reloaded", "reloaded"]

    # 6. Nothing to do: the timer changes nothing and reloads nothing; the plan's step neither.
    lab.login(mesh, fire)
    lab.step(f"{mesh}-cert-mesh")
    assert certificates(guest.read(paths.cert))[0] == refused and reloads(lab, mesh) == ["reloaded", "reloaded"]


def test_certbot_through_the_webroot_of_a_guest_that_serves_port_80(lab, tmp_path):
    """A guest whose :80 nginx already serves: its certificate is proven through nginx's webroot."""
    topo = lab.topo
    gw = webroot_guest(topo)
    guest = lab.guests[gw]
    paths = tls_paths(WEBROOT_CERT)
    root, intermediate = pems(lab)
    assert dns_names(certificates(guest.read(paths.cert))[0]) == [topo.guest_fqdn(topo.lab.guest(gw))]
    assert chain_problems(guest.read(paths.cert), root, intermediate, tmp_path) == []
    ca = re.escape(str(topo.ca.address))
    wait_until(lambda: re.search(rf"^{ca} .*\"GET /\.well-known/acme-challenge/\S+ HTTP/1.1\" 200 ",
                                 guest.read(f"{NGINX_PREFIX}/access.log"), re.M), 5,
               "the CA's HTTP-01 request in nginx's access log")
    assert readable_by(lab, gw, "www-data", paths.key)
