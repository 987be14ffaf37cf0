"""The DNS guest's very first push fails: named goes back to the configuration it ran before.

Run only through scripts/in-netns.sh (loopback only, private mounts), like tests/test_dns_lab.py
(same guest: Debian's named with the package's own config, as the install step leaves it).

On the first push every Phoenix file is new, the reload hook (dns-reload.sh) among them: a
rollback removes it with the rest, so the previous configuration cannot be reloaded through it.
named had already loaded the new one; it must not keep serving it while the disk holds the old.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import shipped_plan
from gateway_harness import with_file
from phoenix.render import dns as render
from test_dns_lab import Step, debian_named

pytestmark = pytest.mark.lab

FAILING_HEALTH = "#!/bin/bash\necho 'dns-health: (the test) the new configuration answers wrong' >&2\nexit 1\n"


def served_views(zone: str) -> set[str]:
    """The views in which named serves ``zone`` (rndc zonestatus: the running configuration)."""
    def served(view: str) -> bool:
        done = subprocess.run(["rndc", "zonestatus", zone, "in", view], capture_output=True, check=False)
        return done.returncode == 0
    return {view for view in ("internal", "external") if served(view)}


def test_a_failed_first_push_leaves_named_on_its_previous_configuration(tmp_path):
    plan = shipped_plan("dev")
    zone = plan.topo.lab.domains.internal
    with debian_named("dev", plan, tmp_path) as server:
        before = Path(render.NAMED_CONF).read_text()
        assert served_views(zone) == set()
        failing = Step(server.step.args, with_file(server.step.stdin, render.HEALTH_SCRIPT, lambda _: FAILING_HEALTH))

        result = server.apply(failing)
        assert result.returncode != 0
        assert "health failed; previous files restored" in result.stderr, result.stderr
        assert "reload of the previous files failed" not in result.stderr, result.stderr
        assert Path(render.NAMED_CONF).read_text() == before                     # on disk
        assert served_views(zone) == set(), "named still serves the rolled-back configuration"
        assert not Path(render.RELOAD_SCRIPT).exists()

        # The plan's own push then goes through as on a fresh guest.
        result = server.apply(server.step)
        assert result.returncode == 0, result.stderr
        assert "internal" in served_views(zone)
