"""Run a systemd unit's service as systemd would, for the labs (there is no systemd here).

This file is both a module and the ``systemctl`` a lab puts in a guest's ``/usr/bin``
(``install(bin_dir)``): the plan's steps call ``systemctl daemon-reload``, ``enable --now``,
``restart``, ``reload``, ``try-restart`` ..., and the stand-in reads the unit files where
systemd does (``/etc/systemd/system``, ``/run/systemd/system``, ``/usr/lib/systemd/system``,
``/lib/systemd/system``, with ``<unit>.d/*.conf`` drop-ins) and runs the service as the unit
says. Each service's main pid and what it printed go to ``STATE`` (``/run/phoenix-units``, in
the guest), so the lab ends exactly those processes, by pid (``stop_all``).

Honoured, as systemd does it:
* ``Type=`` simple, exec, forking (``PIDFile=``), oneshot (``RemainAfterExit=``), notify (a
  ``NOTIFY_SOCKET``; started once the service sends ``READY=1``, within ``TimeoutStartSec=``);
* ``ExecStartPre=``, ``ExecStart=``, ``ExecStartPost=``, ``ExecReload=``, ``ExecStop=`` (with
  ``$MAINPID``; a ``-`` prefix ignores a failure), ``$VAR``/``${VAR}`` from the environment;
* a clean environment: systemd's ``PATH``, ``Environment=``, ``EnvironmentFile=`` (``-`` for
  optional), and ``HOME``/``USER``/``LOGNAME``/``SHELL`` of ``User=``;
* ``User=``, ``Group=`` (with the user's groups), ``WorkingDirectory=``, ``UMask=``,
  ``LimitNOFILE=``, ``NoNewPrivileges=``, ``AmbientCapabilities=``, ``CapabilityBoundingSet=``,
  ``StateDirectory=``;
* the sandbox, in a mount namespace of the service's own: ``ProtectSystem=`` (true, full,
  strict), ``ProtectHome=`` (true, read-only, tmpfs), ``PrivateTmp=``, ``ReadWritePaths=``;
* ``ConditionPathExists=``, ``ConditionFileNotEmpty=``, ``ConditionPathIsDirectory=``,
  ``ConditionFileIsExecutable=`` (``!`` negates; a failed condition skips the start, which
  systemctl reports as success, as systemd does);
* stop: ``ExecStop=``, then SIGTERM to the main process (``KillMode=mixed``) or its whole
  process group (``control-group``), SIGKILL after ``TimeoutStopSec=``;
* ``daemon-reload``: until it runs, a unit that was loaded keeps its old definition even if
  its file changed (so a step that forgets it fails here as on a guest).
* ``show [-p PROP,...] [--value]``: ``Id``, ``ActiveState``, ``MainPID``, ``NRestarts``,
  ``UnitFileState`` (see ``properties``); any other property is refused.

Not played: dependencies (``Wants=``, ``After=`` ... start nothing), ``Restart=`` (a service
that dies stays down and the lab sees it), start limits, timers' calendars (``enable --now``
records a timer; the lab fires it with ``systemctl start`` of its service, which is what an
elapsed timer does). Any other directive in ``[Service]`` or any other condition is refused
(exit 1), so a unit this stand-in cannot play fails loudly instead of running differently.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from unit_exec import API_FS, PATH, UnitError, command, environment, seconds, wrapped  # noqa: F401 (re-exported)

STATE = os.environ.get("PHOENIX_UNITS_STATE", "/run/phoenix-units")
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
HONOURED = {
    "Type", "ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop", "Environment",
    "EnvironmentFile", "User", "Group", "WorkingDirectory", "UMask", "LimitNOFILE", "NoNewPrivileges",
    "AmbientCapabilities", "CapabilityBoundingSet", "StateDirectory", "ProtectSystem", "ProtectHome",
    "PrivateTmp", "ReadWritePaths", "PIDFile", "RemainAfterExit", "TimeoutStartSec", "TimeoutStopSec",
    "KillMode"}
IGNORED = {"Restart", "RestartSec"}
CONDITIONS = {"ConditionPathExists", "ConditionFileNotEmpty", "ConditionPathIsDirectory",
              "ConditionFileIsExecutable"}


# -- unit files ---------------------------------------------------------------------------------
def unit_name(name: str) -> str:
    return name if "." in name else f"{name}.service"


def unit_sources(name: str) -> list[str]:
    """The unit file and its drop-ins, as systemd finds them (first directory wins)."""
    main = next((Path(d, name) for d in UNIT_DIRS if Path(d, name).is_file()), None)
    if main is None:
        raise UnitError(f"Unit {name} not found.")
    dropins = sorted({p.name: p for d in reversed(UNIT_DIRS) for p in Path(d, f"{name}.d").glob("*.conf")}.items())
    return [main.read_text()] + [p.read_text() for _, p in dropins]


def parse(sources: list[str]) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order; an empty assignment resets the list (systemd's rule)."""
    unit: dict[str, dict[str, list[str]]] = {}
    for text in sources:
        section = None
        for line in re.sub(r"\\\n", " ", text).splitlines():
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = unit.setdefault(line[1:-1], {})
                continue
            if section is None or "=" not in line:
                raise UnitError(f"cannot parse unit line {line!r}")
            key, value = (part.strip() for part in line.split("=", 1))
            if value == "":
                section[key] = []
            else:
                section.setdefault(key, []).append(value)
    return unit


class Unit:
    def __init__(self, name: str, sources: list[str]):
        self.name, self.sources = name, sources
        self.sections = parse(sources)
        self.service = self.sections.get("Service", {})
        if name.endswith(".service"):
            unknown = set(self.service) - HONOURED - IGNORED
            if unknown:
                raise UnitError(f"{name}: the systemd stand-in cannot play {sorted(unknown)}")
        for key in self.sections.get("Unit", {}):
            if key.startswith(("Condition", "Assert")) and key not in CONDITIONS:
                raise UnitError(f"{name}: the systemd stand-in cannot check {key}")

    def get(self, key: str, default: str = "") -> str:
        values = self.service.get(key)
        return values[-1] if values else default

    def all(self, key: str) -> list[str]:
        return self.service.get(key, [])

    @property
    def type(self) -> str:
        return self.get("Type", "oneshot" if not self.all("ExecStart") else "simple")

    def conditions_hold(self) -> bool:
        tests = {"ConditionPathExists": os.path.exists, "ConditionPathIsDirectory": os.path.isdir,
                 "ConditionFileNotEmpty": lambda p: os.path.isfile(p) and os.path.getsize(p) > 0,
                 "ConditionFileIsExecutable": lambda p: os.path.isfile(p) and os.access(p, os.X_OK)}
        for key, values in self.sections.get("Unit", {}).items():
            for value in values if key in tests else ():
                negate = value.startswith("!")
                if tests[key](value.lstrip("!")) == negate:
                    return False
        return True


# -- the manager ----------------------------------------------------------------------------------
class Manager:
    """What systemd keeps for each unit: its loaded definition, main pid, enabled and active state."""

    def __init__(self, state: str = STATE):
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)

    def _record(self, name: str) -> dict:
        path = self.state / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _save(self, name: str, record: dict) -> None:
        (self.state / f"{name}.json").write_text(json.dumps(record))

    def load(self, name: str) -> Unit:
        record = self._record(name)
        if "sources" not in record:   # first use: systemd loads the unit from disk
            record["sources"] = unit_sources(name)
            self._save(name, record)
        return Unit(name, record["sources"])

    def daemon_reload(self) -> None:
        for path in self.state.glob("*.json"):
            record = json.loads(path.read_text())
            record.pop("sources", None)
            path.write_text(json.dumps(record))

    def log(self, name: str):
        return open(self.state / f"{name}.log", "ab")

    def main_pid(self, name: str) -> int | None:
        pid = self._record(name).get("pid")
        return pid if pid and alive(pid) else None

    def is_active(self, name: str) -> bool:
        return self.main_pid(name) is not None or self._record(name).get("active", False)

    def _set(self, name: str, **values) -> None:
        self._save(name, {**self._record(name), **values})

    def run(self, unit: Unit, line: str, env: dict, timeout: float) -> None:
        argv, ignore = command(line, env)
        with self.log(unit.name) as out:
            done = subprocess.run(wrapped(unit, argv), env=env, stdout=out, stderr=out, timeout=timeout, check=False)
        if done.returncode and not ignore:
            raise UnitError(f"{unit.name}: {argv[0]} exited {done.returncode} (see {self.state}/{unit.name}.log)")

    def start(self, name: str) -> None:
        if name.endswith(".timer"):
            return self._set(name, active=True)
        if self.is_active(name):
            return
        unit = self.load(name)
        if not unit.conditions_hold():
            return
        timeout = seconds(unit.get("TimeoutStartSec"), 90)
        user = unit.get("User")
        for directory in (d for v in unit.all("StateDirectory") for d in v.split()):
            path = Path("/var/lib", directory)
            path.mkdir(parents=True, exist_ok=True)
            if user:
                os.chown(path, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        env = environment(unit, {"INVOCATION_ID": os.urandom(16).hex()})
        for line in unit.all("ExecStartPre"):
            self.run(unit, line, env, timeout)
        kind = unit.type
        if kind == "oneshot":
            for line in unit.all("ExecStart"):
                self.run(unit, line, env, timeout)
            self._set(name, active=unit.get("RemainAfterExit", "no").lower() in ("yes", "true"), pid=None)
        else:
            [line] = unit.all("ExecStart")
            self._set(name, pid=self._spawn(unit, line, env, kind, timeout), active=False)
        for line in unit.all("ExecStartPost"):
            self.run(unit, line, {**env, "MAINPID": str(self.main_pid(name) or "")}, timeout)

    def _spawn(self, unit: Unit, line: str, env: dict, kind: str, timeout: float) -> int:
        argv, _ = command(line, env)
        notify = None
        if kind == "notify":
            path = self.state / f"{unit.name}.notify"
            path.unlink(missing_ok=True)
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(str(path))
            os.chmod(path, 0o777)   # the service may run as another user
            env = {**env, "NOTIFY_SOCKET": str(path)}
        with self.log(unit.name) as out:
            proc = subprocess.Popen(wrapped(unit, argv), env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        deadline = time.monotonic() + timeout
        if kind == "forking":
            if proc.wait(timeout=timeout):
                raise UnitError(f"{unit.name}: {argv[0]} exited {proc.returncode} while forking")
            pidfile = Path(unit.get("PIDFile"))
            while not (pidfile.exists() and pidfile.read_text().strip()):
                if time.monotonic() > deadline:
                    raise UnitError(f"{unit.name}: no PID file {pidfile}")
                time.sleep(0.05)
            return int(pidfile.read_text().split()[0])
        if notify is not None:
            notify.settimeout(0.2)
            try:
                while True:
                    if proc.poll() is not None:
                        raise UnitError(f"{unit.name}: exited {proc.returncode} before it was ready "
                                        f"(see {self.state}/{unit.name}.log)")
                    if time.monotonic() > deadline:
                        raise UnitError(f"{unit.name}: not ready after {timeout:.0f}s")
                    try:
                        if b"READY=1" in notify.recv(4096).split(b"\n"):
                            break
                    except TimeoutError:
                        continue
            finally:
                notify.close()
        return proc.pid

    def stop(self, name: str) -> None:
        if name.endswith(".timer"):
            return self._set(name, active=False)
        pid = self.main_pid(name)
        self._set(name, active=False)
        if pid is None:
            return
        unit = self.load(name)
        timeout = seconds(unit.get("TimeoutStopSec"), 90)
        env = environment(unit, {"MAINPID": str(pid)})
        for line in unit.all("ExecStop"):
            self.run(unit, line, env, timeout)
        group = unit.get("KillMode", "control-group") == "control-group"
        terminate(pid, timeout, group=group)
        self._set(name, pid=None)

    def reload(self, name: str) -> None:
        unit = self.load(name)
        pid = self.main_pid(name)
        if pid is None:
            raise UnitError(f"Job for {name} failed: the unit is not active.")
        if not unit.all("ExecReload"):
            raise UnitError(f"Failed to reload {name}: Job type reload is not applicable for unit {name}.")
        for line in unit.all("ExecReload"):
            self.run(unit, line, environment(unit, {"MAINPID": str(pid)}), 90)

    def enable(self, name: str, now: bool) -> None:
        self.load(name)
        self._set(name, enabled=True)
        if now:
            self.start(name)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def terminate(pid: int, timeout: float = 10, group: bool = True) -> None:
    """SIGTERM (to the process group when ``group``), SIGKILL to the group after ``timeout``."""
    try:
        pgid = os.getpgid(pid)
        os.killpg(pgid, signal.SIGTERM) if group else os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)   # reap it when we are its parent (or its subreaper)


def stop_all(state: str | Path, timeout: float = 10) -> list[int]:
    """End every service recorded in ``state`` (a guest's STATE seen from outside), by pid."""
    ended = []
    for path in sorted(Path(state).glob("*.json")):
        pid = json.loads(path.read_text()).get("pid")
        if pid and alive(pid):
            terminate(pid, timeout)
            ended.append(pid)
    return ended


def install(bin_dir: str | Path, state: str | Path | None = None) -> Path:
    """Put this stand-in at ``bin_dir/systemctl`` (a guest's /usr/bin: it replaces the real one
    there), keeping its state in ``state`` (default ``STATE``)."""
    target = Path(bin_dir, "systemctl")
    target.unlink(missing_ok=True)
    where = f"PHOENIX_UNITS_STATE={shlex.quote(str(state))} " if state else ""
    target.write_text(f"#!/bin/sh\n{where}exec /usr/bin/python3 -B {Path(__file__).resolve()} \"$@\"\n")
    target.chmod(0o755)
    return target


class Units:
    """One systemd for a lab whose guests share the test's own namespaces: the stand-in on a
    PATH of its own (``serve()`` gives the directory), its state in ``state``."""

    def __init__(self, procs=None, state: str | Path = STATE):
        self.procs, self.state = procs, Path(state)

    def serve(self) -> str:
        bin_dir = self.state / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        install(bin_dir, self.state)
        return str(bin_dir)

    def log(self, name: str) -> str:
        path = self.state / f"{unit_name(name)}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def main_pid(self, name: str) -> int | None:
        return Manager(str(self.state)).main_pid(unit_name(name))

    def close(self) -> None:
        stop_all(self.state)


# -- systemctl ------------------------------------------------------------------------------------
def properties(manager: Manager, name: str) -> dict[str, str]:
    """What ``systemctl show`` reports. Restart= is not played, so NRestarts stays 0; a service
    that was started and whose main process is gone without a stop is ``failed`` (a daemon that
    exits on its own), as systemd reports a service that died."""
    record, pid = manager._record(name), manager.main_pid(name)
    state = "active" if manager.is_active(name) else ("failed" if record.get("pid") else "inactive")
    return {"Id": name, "ActiveState": state, "MainPID": str(pid or 0), "NRestarts": "0",
            "UnitFileState": "enabled" if record.get("enabled") else "disabled"}


def main(argv: list[str]) -> int:
    shown, rest, args = [], [], iter(argv)
    for a in args:   # show's -p/--property (comma lists), whose values are not unit names
        if a in ("-p", "--property"):
            shown += next(args, "").split(",")
        elif a.startswith("--property=") or (a.startswith("-p") and not a.startswith("--")):
            shown += a.split("=", 1)[1].split(",") if a.startswith("--") else a[2:].split(",")
        else:
            rest.append(a)
    value_only, argv = "--value" in rest, rest
    quiet = any(a in ("-q", "--quiet") for a in argv)
    now = "--now" in argv
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        print("systemctl stand-in: no verb", file=sys.stderr)
        return 1
    verb, names = words[0], [unit_name(n) for n in words[1:]]
    manager = Manager()
    try:
        if verb == "daemon-reload":
            manager.daemon_reload()
        elif verb in ("is-active", "is-enabled"):
            states = [manager.is_active(n) if verb == "is-active" else manager._record(n).get("enabled", False)
                      for n in names]
            if not quiet:
                print("\n".join(("active" if s else "inactive") if verb == "is-active" else
                                ("enabled" if s else "disabled") for s in states))
            return 0 if all(states) else (3 if verb == "is-active" else 1)
        elif verb == "show":
            for name in names:
                found = properties(manager, name)
                unknown = [k for k in shown if k not in found]
                if unknown:
                    raise UnitError(f"the systemctl stand-in cannot show {unknown}")
                for key in shown or found:
                    print(found[key] if value_only else f"{key}={found[key]}")
            return 0
        for name in names:
            if verb == "start":
                manager.start(name)
            elif verb == "stop":
                manager.stop(name)
            elif verb == "restart":
                manager.stop(name)
                manager.start(name)
            elif verb == "try-restart":
                if manager.is_active(name):
                    manager.stop(name)
                    manager.start(name)
            elif verb == "reload":
                manager.reload(name)
            elif verb == "reload-or-restart":
                if manager.is_active(name) and manager.load(name).all("ExecReload"):
                    manager.reload(name)
                else:
                    manager.stop(name)
                    manager.start(name)
            elif verb == "enable":
                manager.enable(name, now)
            elif verb == "disable":
                manager._set(name, enabled=False)
                if now:
                    manager.stop(name)
            else:
                raise UnitError(f"the systemctl stand-in does not play {verb!r}")
    except (UnitError, KeyError, subprocess.TimeoutExpired) as err:
        print(f"systemctl: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
