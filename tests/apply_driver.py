"""Driving phoenix-apply to an exact point and interrupting it there, as a dropped SSH session,
a `kill` or the OOM killer would.

phoenix-apply reports each phase after the swap (``swapped``, ``checked``, ``reloaded``,
``healthy``) on the FIFO named by ``PHOENIX_APPLY_TRACE`` and waits on ``<FIFO>.go``
(configs/common/phoenix-apply.sh). ``interrupt`` runs a command that calls phoenix-apply in a
process group of its own (as sshd runs a remote command), lets it through every phase before
``at``, signals the whole group at ``at``, and returns once the command has ended.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PHASES = ("swapped", "checked", "reloaded", "healthy")
SIGNALS = {"HUP": signal.SIGHUP, "TERM": signal.SIGTERM, "KILL": signal.SIGKILL}


@dataclass
class Interrupted:
    returncode: int
    phases: list[str]          # the phases reported, the last one where the signal came
    stderr: str


def _release(go: Path, proc: subprocess.Popen) -> None:
    """Let phoenix-apply go on: open the .go FIFO for writing (it waits there, reading)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            fd = os.open(go, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno != errno.ENXIO:       # no reader yet: it is still writing its phase
                raise
            if proc.poll() is not None or time.monotonic() > deadline:
                return                         # it is gone: nothing to release
            time.sleep(0.01)
            continue
        os.write(fd, b"go\n")
        os.close(fd)
        return


def interrupt(argv: list[str], stdin: str, env: dict, tmp: Path, at: str, sig: str,
              close_output: bool = False) -> Interrupted:
    """Run ``argv`` (which runs phoenix-apply) and send ``sig`` to its process group at phase ``at``.
    ``close_output``: also close its stdout and stderr first (the session's pipes are gone)."""
    trace = tmp / f"trace-{at}-{sig}"
    go = Path(f"{trace}.go")
    for fifo in (trace, go):
        if fifo.exists():
            fifo.unlink()
        os.mkfifo(fifo)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env, "PHOENIX_APPLY_TRACE": str(trace)}, start_new_session=True, text=True)
    proc.stdin.write(stdin)
    proc.stdin.close()
    seen: list[str] = []
    try:
        while proc.poll() is None:
            fd = os.open(trace, os.O_RDONLY | os.O_NONBLOCK)
            try:
                data = b""
                deadline = time.monotonic() + 120
                while not data.endswith(b"\n") and proc.poll() is None and time.monotonic() < deadline:
                    try:
                        chunk = os.read(fd, 64)
                    except BlockingIOError:
                        chunk = b""
                    data += chunk
                    if not chunk:
                        time.sleep(0.01)
            finally:
                os.close(fd)
            if not data:
                continue
            phase = data.decode().strip()
            seen.append(phase)
            if phase == at:
                if close_output:
                    proc.stdout.close()
                    proc.stderr.close()
                os.killpg(proc.pid, SIGNALS[sig])
            if not (phase == at and sig == "KILL"):
                _release(go, proc)
            if phase == at:
                break
        proc.wait(timeout=120)
        err = "" if close_output else proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return Interrupted(proc.returncode, seen, err)


def wait_recovered(state: Path, timeout: float = 15.0) -> None:
    """Until no journal is left under ``state`` (the guard restored the previous files)."""
    deadline = time.monotonic() + timeout
    while any(state.glob("*/journal")):
        if time.monotonic() > deadline:
            raise AssertionError(f"a journal is still in {state} after {timeout}s: nothing restored it")
        time.sleep(0.05)
