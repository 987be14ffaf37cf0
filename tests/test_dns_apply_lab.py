"""The DNS tier's config push cut short, against real BIND (the lab of tests/test_dns_lab.py).

The plan's config step (phoenix-apply with its exact hooks: named-checkzone/named-checkconf,
the reload script, the health script) pushes an internal zone that moves the gateway's name to
another address, and is stopped at each point between the swap and the proof by SIGHUP (the
session's pipes gone too), SIGTERM or SIGKILL of its whole process group (tests/apply_driver.py).
Every time the previous zone must stay on disk and be what named answers, and the step must
run again as if nothing had happened.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from apply_driver import PHASES, interrupt, wait_recovered
from phoenix.bundle import pack, unpack
from phoenix.render import dns as render
from test_dns_lab import APPLY, Step, _wait_answer, server  # noqa: F401 (the lab's fixture)

pytestmark = pytest.mark.lab
MOVED = "192.0.2.99"


def moved_gateway(srv) -> tuple[str, str, str]:
    """(zone file path, its text with the gateway's name at MOVED, the bundle that pushes it)."""
    topo = srv.plan.topo
    zone = next(z for z in render.zones(topo) if z.view == "internal" and z.name == topo.lab.domains.internal)
    files = unpack(srv.step.stdin)
    f = next(f for f in files if f.path == zone.file)
    name = f"{topo.guest_fqdn(topo.gateway)}."
    serial = re.search(r"^\s*(\d+) ; serial$", f.content, re.M).group(1)
    # A new zone as the renderer makes one: its serial is the hash of the rest (render.serial_of),
    # and the reload and health scripts name the serial they expect named to serve.
    body = f.content.replace(f"{name} IN A {topo.gateway.address}", f"{name} IN A {MOVED}")
    body = body.replace(f"    {serial} ; serial", "    SERIAL ; serial", 1)
    new_serial = str(render.serial_of(body))
    text = body.replace("    SERIAL ; serial", f"    {new_serial} ; serial", 1)
    assert text != f.content

    def edited(x):
        content = text if x.path == f.path else re.sub(rf"\b{serial}\b", new_serial, x.content)
        return type(x)(x.path, content, x.mode, x.owner, x.group)
    found = [x.path for x in files if x.path != f.path and re.search(rf"\b{serial}\b", x.content)]
    assert render.RELOAD_SCRIPT in found                  # and the health script, which checks it
    return f.path, f.content, pack([edited(x) for x in files])


@pytest.mark.parametrize("sig", ["HUP", "TERM", "KILL"])
@pytest.mark.parametrize("at", PHASES)
def test_a_zone_push_cut_short_leaves_the_previous_zone_answering_and_on_disk(server, at, sig, tmp_path):  # noqa: F811
    topo = server.plan.topo
    path, previous, bundle = moved_gateway(server)
    gateway, address = topo.guest_fqdn(topo.gateway), str(topo.gateway.address)
    env = {**os.environ, "PHOENIX_STATE": str(server.state)}
    done = interrupt(["bash", str(APPLY), *server.step.args], bundle, env, tmp_path, at, sig,
                     close_output=sig == "HUP")
    assert done.phases[-1] == at and done.returncode != 0
    wait_recovered(server.state, timeout=60)
    assert Path(path).read_text() == previous
    _wait_answer(server, gateway, "A", {address}, server.internal_src)
    # The step runs again as if nothing had happened: the plan's own bundle, and the moved one.
    for push, want in ((Step(server.step.args, bundle), MOVED), (server.step, address)):
        result = server.apply(push)
        assert result.returncode == 0, result.stderr
        _wait_answer(server, gateway, "A", {want}, server.internal_src)
    assert Path(path).read_text() == previous
