"""The restore drill (docs/restore-drill.md), played in the end-to-end lab: guests brought back from an
older backup, or with their state gone, then the plan's own steps, then `phoenix verify` green.

Run only through the namespace wrapper:

    bash scripts/in-netns.sh .venv/bin/python -m pytest tests/test_restore_drill_lab.py

The lab is tests/e2e_harness.py's (the dev stack's guests in namespaces of their own, real named,
step-ca, certbot, Traefik, nginx, Pebble and the Portainer stand-in), brought up by replaying the
plan. What Proxmox does is played on the guest's files: a vzdump backup is a copy of what the
guest keeps (``phoenix.render.resilience.state_paths`` for its role, every file the plan pushes
to it, and phoenix-apply's records), a restore stops the guest's services, puts that copy back
in place of what the guest had, and starts them again.

Which steps then run is the plan's answer, not the test's: the guest restored with ``--unique``
(or rebuilt) has a new MAC address, so the plan made with the fact ``rebuilt:<guest>`` and the
plan diff (``phoenix.diff``) name the steps `pulumi up --refresh` replaces, in its order; the
lab runs exactly those, with the bundles the plan holds.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace

import pytest
from cryptography import x509

from e2e_harness import GPU_FACT, NODE_DRIVER, PEBBLE_DIRECTORY, EndToEndLab
from lab import require_isolated
from phoenix import diff as plan_diff
from phoenix.bundle import pack
from phoenix.plan import make_plan
from phoenix.render import dns as dns_render
from phoenix.render.gateway import LIVE_DIR
from phoenix.render.resilience import state_paths
from phoenix.resource_types import COMMAND, GUEST_TYPES
from phoenix.verify_expiry import served_chain

pytestmark = pytest.mark.lab

#: where the drill keeps a guest's backup, in the guest (a vzdump archive on the backup storage).
ARCHIVE = "/var/backups/phoenix-drill.tar"
#: phoenix-apply's records of what each step applied (configs/common/phoenix-apply.sh).
APPLY_STATE = "/var/lib/phoenix"
#: as tests/test_e2e_lab.py: the mesh's health checks and circuit breaker put a hop back on their clocks.
MESH_RECOVERY = 45


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    require_isolated()
    started = time.monotonic()
    lab = EndToEndLab.make(tmp_path_factory.mktemp("restore-drill"))
    try:
        lab.up()
        print(f"\nrestore drill lab up in {time.monotonic() - started:.0f} s")
        yield lab
    finally:
        lab.down()


# -- what Proxmox does, on the guest's files ----------------------------------------------------------
def kept(e2e: EndToEndLab, guest: str) -> list[str]:
    """What a backup of ``guest`` holds that Phoenix and its services wrote."""
    lab = e2e.topo.lab
    paths = {*state_paths(lab, lab.guest(guest)), *e2e.files[guest], APPLY_STATE}
    return sorted(p for p in paths if e2e.guests[guest].exists(p))


def back_up(e2e: EndToEndLab, guest: str) -> list[str]:
    paths = kept(e2e, guest)
    e2e.guests[guest].run(["tar", "-C", "/", "-cpf", ARCHIVE, *(p.lstrip("/") for p in paths)], check=True)
    return paths


def services_of(e2e: EndToEndLab, guest: str) -> list[str]:
    return sorted(unit for g, unit in e2e.services() if g == guest)


def power_cycle(e2e: EndToEndLab, guest: str, while_off) -> None:
    """Stop the guest's services, do ``while_off`` to its disk, start them again (a failed start
    stays failed, as at a boot)."""
    units = services_of(e2e, guest)
    assert units, f"{guest} runs no service"
    for unit in units:
        e2e.login(guest, ["systemctl", "stop", unit])
    while_off()
    for unit in units:
        e2e.login(guest, ["systemctl", "start", unit], check=False)


def restore(e2e: EndToEndLab, guest: str) -> None:
    """``pct restore <id> <backup> --force --unique``: the guest's files as the backup has them."""
    g = e2e.guests[guest]
    power_cycle(e2e, guest, lambda: (g.run(["rm", "-rf", *kept(e2e, guest)], check=True),
                                     g.run(["tar", "-C", "/", "-xpf", ARCHIVE], check=True)))


def wipe(e2e: EndToEndLab, guest: str) -> list[str]:
    """The guest's state gone (a disk rebuilt from nothing, the lab's packages aside)."""
    lab = e2e.topo.lab
    paths = state_paths(lab, lab.guest(guest))
    power_cycle(e2e, guest, lambda: e2e.guests[guest].run(["rm", "-rf", *paths], check=True))
    return paths


def steps_after_restore(e2e: EndToEndLab, *guests: str) -> list[str]:
    """The steps `pulumi up --refresh` runs once the refresh reads the restored guests' new MAC
    addresses, by the plan diff: every one must be a step of the lab's plan, with its bundle."""
    base = plan_diff.snapshot(e2e.plan)
    facts = {GPU_FACT: NODE_DRIVER, **{f"rebuilt:{g}": "1" for g in guests}}
    new_plan = make_plan(e2e.release.stack("dev", PEBBLE_DIRECTORY), facts=facts)
    new = plan_diff.snapshot(new_plan)
    result = plan_diff.diff(base, new)
    assert result.hazards == [] and not [c for c in result.changes if c.type in GUEST_TYPES], \
        "a restored guest must not be replaced"
    order = plan_diff.execution_order(result, base, new)
    steps = [name for op, name, kind in order if kind == COMMAND and op == "create-replacement"]
    for name in steps:
        again = new_plan.run.named(name)
        assert (again.value("create"), again.value("stdin")) == \
            (e2e.commands[name].value("create"), e2e.commands[name].value("stdin")), name
    assert {e2e.guest_of[s] for s in steps} == set(guests), steps
    return steps


def failing_until(e2e: EndToEndLab, want, what: str, timeout: float = MESH_RECOVERY) -> dict:
    return e2e.wait_for(want, timeout, what)


def public_serial(e2e: EndToEndLab) -> int:
    gateway = e2e.guests[e2e.topo.gateway.name]
    return x509.load_pem_x509_certificate(gateway.read(f"{LIVE_DIR}/cert.pem").encode()).serial_number


def older_external_zone(e2e: EndToEndLab, host: str) -> str:
    """The DNS step's bundle as it was before ``host`` was a public name: the external view's
    (dynamic) zone without its record."""
    topo = e2e.topo
    secret = e2e.plan.run.named("tsig-key").outputs["base64"]
    zones = [replace(z, records=tuple(r for r in z.records if r.name != host))
             if (z.name, z.view) == (topo.lab.domains.public, "external") else z for z in dns_render.zones(topo)]
    return pack(dns_render.config_files(topo, secret, zones))


# -- the drill -------------------------------------------------------------------------------------
def test_dns_and_the_ca_restored_from_an_older_backup_converge_when_their_steps_run_again(e2e):
    """The backup is older than the lab: the external zone lacked a public name then (named's
    dynamic copy, its journal and the pushed files as they were), and Step-CA's database lacked
    a later ACME account. Restored, named serves the old zone, until the DNS step runs again and
    replaces named's copy and journal; the CA steps run again over its old database."""
    dns, ca = e2e.topo.dns.name, e2e.topo.ca.name
    host = e2e.topo.public_hosts[-1]
    e2e.step(f"{dns}-bind-config", older_external_zone(e2e, host))
    assert e2e.failing() == {("dns/external", host): f"NXDOMAIN from {e2e.topo.dns.address}, expected "
                                                     f"{e2e.topo.lab.network.public_address}"}
    held = {guest: back_up(e2e, guest) for guest in (dns, ca)}
    assert "/var/lib/bind" in held[dns] and "/var/lib/step-ca" in held[ca]
    # the lab moves on: the zone as the plan has it, and a guest's certificates ordered anew
    e2e.step(f"{dns}-bind-config")
    assert e2e.failing() == {}
    started = time.monotonic()
    for guest in (dns, ca):
        restore(e2e, guest)
    failing = failing_until(e2e, lambda f: ("dns/external", host) in f, "named serving the restored zone", 15)
    assert set(failing) == {("dns/external", host)}, failing
    steps = steps_after_restore(e2e, dns, ca)
    print(f"steps run again: {steps}")
    assert {f"{dns}-bind-config", f"{ca}-step-ca-config"} <= set(steps)
    e2e.replay(steps)
    failing_until(e2e, lambda f: f == {}, "after the restored guests' steps ran again")
    print(f"restored and converged in {time.monotonic() - started:.0f} s")


def test_a_gateway_and_portainer_whose_state_is_gone_get_certificates_and_environments_again(e2e):
    """Rebuilt from nothing, as far as their state goes: the gateway without /etc/letsencrypt (its
    Let's Encrypt account and certificate lineage: nginx still serves the copy it was given, but
    nothing would ever renew it), Portainer without its database (no admin, no environment).
    Their steps run again: the certificate is issued anew and served, the agent registered again."""
    gateway, portainer = e2e.topo.gateway.name, e2e.topo.portainer.name
    host = e2e.topo.public_hosts[0]
    serial = public_serial(e2e)
    assert served_serial(e2e, host) == serial
    started = time.monotonic()
    assert wipe(e2e, gateway) == ["/etc/letsencrypt"]
    wipe(e2e, portainer)
    failing = failing_until(e2e, lambda f: ("portainer/agent", "agent-1") in f, "Portainer without its data", 15)
    assert set(failing) == {("portainer/agent", "agent-1")}, failing
    assert not e2e.guests[gateway].exists(LIVE_DIR)
    steps = steps_after_restore(e2e, gateway, portainer)
    print(f"steps run again: {steps}")
    e2e.replay(steps)
    failing_until(e2e, lambda f: f == {}, "after the rebuilt guests' steps ran again")
    assert public_serial(e2e) != serial, "the public certificate was not issued again"
    assert served_serial(e2e, host) == public_serial(e2e), "nginx does not serve the new certificate"
    print(f"rebuilt and converged in {time.monotonic() - started:.0f} s")


def served_serial(e2e: EndToEndLab, host: str) -> int:
    return served_chain(str(e2e.topo.gateway.address), 443, host, 5)[0].serial_number


def test_a_guest_registered_after_the_cas_backup_still_renews_once_the_ca_is_restored(e2e):
    """Step-CA restored from a backup older than a guest's ACME account (the guest was rebuilt
    after the backup): the CA no longer knows the account. When that guest's certificate is due,
    its renewal must still get a new one."""
    ca, guest = e2e.topo.ca.name, e2e.topo.service("llm").guests[0]
    back_up(e2e, ca)
    acme = ["/etc/phoenix/acme", "/var/lib/phoenix-acme"]
    power_cycle(e2e, guest, lambda: e2e.guests[guest].run(["rm", "-rf", *acme], check=True))
    e2e.replay(steps_after_restore(e2e, guest))          # a new account at the CA, a new certificate
    restore(e2e, ca)
    e2e.replay(steps_after_restore(e2e, ca))
    failing_until(e2e, lambda f: f == {}, "after the CA's restore")
    lineage = e2e.guests[guest].read("/etc/phoenix/acme/live/llm/cert.pem")
    # a day later: the certificate is due (its renewal conf renews with 8 of 24 hours left)
    conf = "/etc/phoenix/acme/renewal/llm.conf"
    text = e2e.guests[guest].read(conf)
    e2e.guests[guest].write(conf, re.sub(r"(?m)^renew_before_expiry = .*$", "renew_before_expiry = 2 days", text),
                            0o644)
    done = e2e.login(guest, ["systemctl", "start", "phoenix-acme-renew.service"], check=False)
    print(done.stdout, done.stderr, e2e.service_log(guest, "phoenix-acme-renew")[-3000:])
    assert done.returncode == 0, e2e.guests[guest].read("/var/log/phoenix-acme/letsencrypt.log")[-4000:]
    assert e2e.guests[guest].read("/etc/phoenix/acme/live/llm/cert.pem") != lineage
    failing_until(e2e, lambda f: f == {}, "after the renewal")
