"""The gateway's transactional applies and certificate renewal, against real nginx, Pebble and certbot.

Run only through the namespace wrapper (loopback only, private mounts), like tests/test_gateway_lab.py
(same harness: the plan's gateway steps over copy-on-write copies of this machine's trees).

* nginx's health gate judges the NEW configuration: a configuration that passes `nginx -t` but
  serves 503, and one the running nginx cannot load (a port another process holds), fail and are
  rolled back, every time (five trials each).
* An apply cut short between the swap and the proof (SIGHUP with the session's pipes gone,
  SIGTERM, SIGKILL of its whole process group; tests/apply_driver.py) leaves the previous
  configuration on disk and serving.
* A renewal whose reload fails is installed by the timer's next run, before the old certificate
  expires; the deploy hook goes back to its own copy of the previous certificate.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from apply_driver import PHASES, interrupt, wait_recovered
from components.gateway import STEP_NGINX
from conftest import shipped_plan
from gateway_harness import GatewayLab, brought_up, client_context, file_leaf, https, run_step, served_leaf, with_file
from lab import Processes, require_isolated, require_tools
from phoenix.render import gateway as gw

pytestmark = pytest.mark.lab
PROBE_PORT = 18181         # a listener only the "new" configurations add
HEALTH = f"http://127.0.0.1{gw.HEALTH_PATH}"


@pytest.fixture(scope="module")
def glab(tmp_path_factory):
    require_isolated()
    require_tools("nginx", "pebble", "certbot", "openssl", "curl")
    with brought_up(GatewayLab(shipped_plan("dev"), tmp_path_factory.mktemp("gateway-apply-lab"), Processes())) as lab:
        yield lab


def status(url: str) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:
        return type(err).__name__


def probe_listens() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", PROBE_PORT), timeout=2):
            return True
    except OSError:
        return False


def sites(glab) -> str:
    return Path(gw.SITES_CONF).read_text()


def nginx_step(glab):
    return glab.steps[STEP_NGINX]


def assert_previous_in_force(glab) -> None:
    assert sites(glab) == glab.files[gw.SITES_CONF].content          # on disk
    assert status(HEALTH) == 200 and not probe_listens()              # and serving


def test_a_config_that_passes_nginx_t_but_serves_503_is_rolled_back_every_time(glab):
    step = nginx_step(glab)
    broken = with_file(step.value("stdin"), gw.SITES_CONF,
                       lambda t: t.replace('return 200 "ok\\n";', "return 503;", 1))
    assert broken != step.value("stdin")
    for trial in range(5):
        result = run_step(step, glab.env, broken)
        assert result.returncode != 0, f"trial {trial + 1}: {result.stdout}"
        assert "health failed; previous files restored" in result.stderr
        assert_previous_in_force(glab)


def test_a_config_the_running_nginx_cannot_load_is_rolled_back_every_time(glab):
    """`nginx -t` does not bind, so a port another process holds passes it; the running master
    then refuses the reload and keeps serving the old configuration."""
    step = nginx_step(glab)
    taken = with_file(step.value("stdin"), gw.SITES_CONF,
                      lambda t: t + f"\nserver {{ listen 127.0.0.1:{PROBE_PORT}; return 200 \"new\\n\"; }}\n")
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", PROBE_PORT))
    holder.listen()
    try:
        for trial in range(5):
            result = run_step(step, glab.env, taken)
            assert result.returncode != 0, f"trial {trial + 1}: {result.stdout}"
            assert "reload failed; previous files restored" in result.stderr
            assert "refused the new configuration" in result.stderr and "bind()" in result.stderr
            assert sites(glab) == glab.files[gw.SITES_CONF].content and status(HEALTH) == 200
    finally:
        holder.close()
    assert not probe_listens()


@pytest.mark.parametrize("sig", ["HUP", "TERM", "KILL"])
@pytest.mark.parametrize("at", PHASES)
def test_an_apply_cut_short_leaves_the_previous_nginx_config_serving_and_on_disk(glab, at, sig, tmp_path):
    step = nginx_step(glab)
    new = with_file(step.value("stdin"), gw.SITES_CONF,
                    lambda t: t + f"\nserver {{ listen 127.0.0.1:{PROBE_PORT}; return 200 \"new\\n\"; }}\n")
    done = interrupt(["bash", "-c", step.value("create")], new, glab.env, tmp_path, at, sig,
                     close_output=sig == "HUP")
    assert done.phases[-1] == at and done.returncode != 0
    wait_recovered(Path(glab.env["PHOENIX_STATE"]), timeout=60)
    assert_previous_in_force(glab)
    # the step runs again as if nothing happened
    again = run_step(step, glab.env)
    assert again.returncode == 0, again.stderr
    assert_previous_in_force(glab)


# ---- renewal ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def issued(glab):
    glab.obtain_certificate()
    return glab


def renewal_conf() -> Path:
    return Path(f"{gw.LETSENCRYPT}/renewal/{gw.CERT_NAME}.conf")


def timer_run(glab, env: dict) -> subprocess.CompletedProcess:
    """What Debian's certbot timer runs on the gateway (the plan's certbot.service drop-in)."""
    start = [line.split("=", 1)[1] for line in Path(gw.RENEW_DROPIN).read_text().splitlines()
             if line.startswith("ExecStart=")][-1]
    # certbot waits a random delay of up to 8 minutes when no terminal is attached (from a timer)
    return subprocess.run(["bash", "-c", f'{start} "$@"', "timer", "--no-random-sleep-on-renew"],
                          env=env, capture_output=True, text=True, timeout=180, check=False)


def served(glab) -> bytes:
    return served_leaf(glab.servers[0].host, glab.gateway_address)


def test_a_renewal_whose_reload_fails_is_installed_by_the_next_timer_run(issued, tmp_path):
    lab = issued
    old = served(lab)
    old_copy = os.readlink(gw.PUBLIC_CERT_LINK)
    expires = x509.load_der_x509_certificate(old).not_valid_after_utc
    failing = tmp_path / "reload-fails"
    failing.touch()
    env = {**lab.acme_env, "LAB_FAILING_RELOAD": str(failing)}
    conf = renewal_conf()
    original = conf.read_text()
    # The certificate is due (as 30 days before it expires): certbot renews on this run.
    conf.write_text(original.replace("[renewalparams]", "renew_before_expiry = 36500 days\n[renewalparams]", 1))
    try:
        first = timer_run(lab, env)
    finally:
        conf.write_text(original)
    renewed = file_leaf(f"{gw.LIVE_DIR}/cert.pem")
    assert renewed != old                                   # certbot renewed the lineage ...
    assert first.returncode != 0, first.stdout + first.stderr   # ... the run fails (systemctl --failed)
    assert "nginx did not take the certificate" in first.stderr
    assert served(lab) == old and os.readlink(gw.PUBLIC_CERT_LINK) == old_copy   # its own copy, intact
    assert (Path(old_copy) / "fullchain.pem").is_file()

    failing.unlink()                                        # the next run: the reload works again
    second = timer_run(lab, env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert served(lab) == renewed
    assert dt.datetime.now(dt.UTC) < expires        # installed before the old one expired
    status_code, _, _, _ = https(lab.servers[0].host, ctx=client_context(str(lab.acme_root)), source="127.0.0.2")
    assert status_code == 200
    # a third run changes nothing
    third = timer_run(lab, env)
    assert third.returncode == 0 and "already serves the current certificate" in third.stdout
