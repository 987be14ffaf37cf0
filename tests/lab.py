"""Helpers for tests that start real servers (nginx, named, pebble, certbot, ...).

Such tests run only inside the isolated network namespace that ``scripts/test.sh`` makes
(``unshare --net --mount``): ``require_isolated()`` refuses to go on if any non-loopback
route exists, so no packet can leave the machine. Processes are tracked by id and only
those a test started are ended.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def non_loopback_routes() -> list[str]:
    out = subprocess.run(["ip", "-o", "route", "show", "table", "all"], capture_output=True, text=True,
                         check=False).stdout
    routes = []
    for line in out.splitlines():
        if " dev lo " in f" {line} " or line.startswith(("local ", "broadcast ", "multicast ")):
            continue
        if line.strip():
            routes.append(line.strip())
    out6 = subprocess.run(["ip", "-o", "-6", "route", "show"], capture_output=True, text=True, check=False).stdout
    routes += [r for r in out6.splitlines() if r.strip() and " dev lo" not in r]
    return routes


def require_isolated() -> None:
    """The guard at the start of every lab: refuse to run outside an isolated namespace."""
    if os.environ.get("PHOENIX_NO_NETNS"):
        pytest.skip("not root: no isolated network namespace for real servers (run `make test` as root)")
    routes = non_loopback_routes()
    if routes:
        pytest.fail("refusing to start servers: this network namespace has non-loopback routes "
                    f"({routes[0]}); run the tests with `make test` (scripts/in-netns.sh)")


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None and not Path(n).exists()]
    if missing:
        pytest.skip(f"missing tools {missing}: run `make deps` as root to install them")


#: addresses ``add_loopback_addresses`` gave ``lo``; taken back when the test module ends
#: (``loopback_addresses_released`` below), so a later lab that puts guests in namespaces of
#: their own on a bridge does not find their addresses still local to this namespace.
_ADDED_TO_LOOPBACK: list[str] = []


def add_loopback_addresses(*addresses: str) -> None:
    """Give ``lo`` the guest addresses a test plays (only inside the namespace)."""
    require_isolated()
    have = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=False).stdout
    for a in addresses:
        if f" {a}/" not in have:
            subprocess.run(["ip", "addr", "add", f"{a}/32", "dev", "lo"], check=True)
            _ADDED_TO_LOOPBACK.append(a)


@pytest.fixture(scope="module", autouse=True)
def loopback_addresses_released():
    """Every address a module's labs put on ``lo`` is removed when the module is done (after
    its lab fixtures, which this autouse fixture outlives, have stopped their servers)."""
    yield
    while _ADDED_TO_LOOPBACK:
        subprocess.run(["ip", "addr", "del", f"{_ADDED_TO_LOOPBACK.pop()}/32", "dev", "lo"], capture_output=True,
                       check=False)


def wait_until(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.1):
    """``predicate()``'s first true value within ``timeout`` seconds, else an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class Processes:
    """Processes a test started; ends exactly those, by id."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen(args, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.stop_all()
