"""phoenix-apply cut short: the previous files stay in force and on disk, whatever ends the run.

The real script with its ``--root`` and state directory in tmp_path and a service played by its
hooks: ``reload`` copies the config to what "serves" (``run/serving``), ``check`` and ``health``
read them. The run is stopped at each point between the swap and the proof (tests/apply_driver.py)
by SIGHUP (a dropped SSH session, with its pipes gone), SIGTERM or SIGKILL of its whole process
group. The labs do the same with real nginx (tests/test_gateway_lab.py) and BIND
(tests/test_dns_lab.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from apply_driver import PHASES, interrupt, wait_recovered
from conftest import ROOT
from phoenix.bundle import GuestFile, pack

SCRIPT = ROOT / "configs/common/phoenix-apply.sh"
CONF = "/etc/demo/demo.conf"
OLD, NEW = "version 1 healthy\n", "version 2 healthy\n"


class Service:
    def __init__(self, tmp: Path):
        self.tmp, self.root, self.state = tmp, tmp / "root", tmp / "state"
        (self.root / "run").mkdir(parents=True)
        self.serving = self.root / "run/serving"
        self.log = tmp / "hooks.log"
        self.env = {**os.environ, "PHOENIX_STATE": str(self.state)}

    def argv(self) -> list[str]:
        conf = f"{self.root}{CONF}"
        return ["bash", str(SCRIPT), "demo", "--root", str(self.root),
                "--check", f"echo check >> {self.log}; grep -q healthy {conf}",
                "--reload", f"echo reload >> {self.log}; cp {conf} {self.serving}",
                "--health", f"echo health >> {self.log}; grep -q healthy {self.serving}"]

    def apply(self, text: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(), input=pack([GuestFile(CONF, text)]), capture_output=True, text=True,
                              env=self.env, check=False)

    def on_disk(self) -> str:
        return (self.root / CONF.lstrip("/")).read_text()

    def ran(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def service(tmp_path):
    s = Service(tmp_path)
    assert s.apply(OLD).returncode == 0
    assert s.serving.read_text() == OLD
    s.log.write_text("")
    return s


@pytest.mark.parametrize("sig", ["HUP", "TERM", "KILL"])
@pytest.mark.parametrize("at", PHASES)
def test_an_apply_cut_short_leaves_the_previous_files_serving_and_on_disk(service, at, sig):
    done = interrupt(service.argv(), pack([GuestFile(CONF, NEW)]), service.env, service.tmp, at, sig,
                     close_output=sig == "HUP")
    assert done.phases[-1] == at and done.returncode != 0
    wait_recovered(service.state)          # the trap (HUP, TERM) or the guard (KILL) restored them
    assert service.on_disk() == OLD
    assert service.serving.read_text() == OLD
    loaded = PHASES.index(at) >= PHASES.index("reloaded")
    # the previous files are reloaded exactly when the new ones may have been loaded
    assert service.ran().count("reload") == (2 if loaded else 0)
    if sig == "TERM":
        assert "interrupted by SIGTERM; previous files restored" in done.stderr
    if sig == "KILL":
        assert "previous files restored" in (service.state / "demo/recovered.log").read_text()
    # and the step runs again as if nothing happened
    again = service.apply(NEW)
    assert again.returncode == 0, again.stderr
    assert service.on_disk() == NEW and service.serving.read_text() == NEW


def cut_short(service: Service, phase: str = "reloaded") -> Path:
    """The state a run leaves when the machine goes down after the swap (no trap, no guard ran):
    its journal (the previous file in its backup, what it created, its reload hook, its phase),
    the unproven file in place."""
    journal = service.state / "demo/journal"
    (journal / "backup/etc/demo").mkdir(parents=True)
    (journal / "backup/etc/demo/demo.conf").write_text(OLD)
    (journal / "incoming").write_text("./etc/demo/demo.conf\n./etc/demo/new.conf\n")
    (journal / "created").write_text("./etc/demo/new.conf\n")
    (journal / "root").write_text(str(service.root))
    (journal / "reload").write_text(f"echo reload >> {service.log}; cp {service.root}{CONF} {service.serving}")
    (journal / "phase").write_text(phase)
    (service.root / "etc/demo/demo.conf").write_text("version 9 unproven\n")
    (service.root / "etc/demo/new.conf").write_text("made by the cut-short run\n")
    return journal


def test_after_a_power_loss_the_next_run_restores_first(service):
    journal = cut_short(service)
    broken = service.apply("version 4 broken\n")        # refused by its check
    assert "an earlier apply was cut short (reloaded); restoring its previous files first" in broken.stderr
    assert broken.returncode != 0 and "check failed; previous files restored" in broken.stderr
    assert service.on_disk() == OLD and not (service.root / "etc/demo/new.conf").exists()
    assert not journal.exists()
    assert service.ran()[:1] == ["reload"]               # the previous files were reloaded first


def test_at_boot_the_recovery_unit_restores_files_only(service):
    """phoenix-apply --recover-all (phoenix-apply-recover.service): before any service starts."""
    journal = cut_short(service)
    done = subprocess.run(["bash", str(SCRIPT), "--recover-all"], capture_output=True, text=True, env=service.env,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert service.on_disk() == OLD and not (service.root / "etc/demo/new.conf").exists()
    assert not journal.exists() and service.ran() == []         # nothing reloaded at boot


def test_the_recovery_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "phoenix-apply-recover.service"
    script = tmp_path / "phoenix-apply"
    script.write_text(SCRIPT.read_text())
    script.chmod(0o755)                     # as the bootstrap installs it
    text = (ROOT / "configs/common/phoenix-apply-recover.service").read_text()
    unit.write_text(text.replace("/usr/local/sbin/phoenix-apply", str(script)))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "Before=network-pre.target" in text and "DefaultDependencies=no" in text
