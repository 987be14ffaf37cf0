"""How a systemd unit's command runs, for the systemd stand-in (tests/units.py): its environment,
its command line, its sandbox (a mount namespace of its own), its credentials and limits, as
systemd sets them up before it executes the command. What is honoured is listed in units.py.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # units.py imports this module
    from units import Unit

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
API_FS = ("/dev", "/proc", "/sys")


class UnitError(Exception):
    pass


def seconds(value: str, default: float) -> float:
    if not value:
        return default
    if value == "infinity":
        return 1e9
    total, found = 0.0, False
    for number, suffix in re.findall(r"([\d.]+)\s*(ms|min|s|m|h)?", value):
        found = True
        total += float(number) * {"ms": 0.001, "min": 60, "m": 60, "h": 3600}.get(suffix, 1)
    return total if found else default


def environment(unit: Unit, extra: dict[str, str]) -> dict[str, str]:
    env = {"PATH": PATH, "LANG": "C.UTF-8"}
    user = unit.get("User")
    if user:
        pw = pwd.getpwnam(user)
        env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user, SHELL=pw.pw_shell)
    for entry in unit.all("EnvironmentFile"):
        path = entry.lstrip("-")
        if not os.path.exists(path):
            if entry.startswith("-"):
                continue
            raise UnitError(f"{unit.name}: EnvironmentFile {path} does not exist")
        for line in Path(path).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith(("#", ";")) and "=" in line:
                key, value = line.split("=", 1)
                env[key.strip()] = " ".join(shlex.split(value)) if value.strip() else ""
    for entry in unit.all("Environment"):
        for assignment in shlex.split(entry):
            key, _, value = assignment.partition("=")
            env[key] = value
    env.update(extra)
    return env


def command(line: str, env: dict[str, str]) -> tuple[list[str], bool]:
    """(argv, failure ignored) of an Exec*= line: systemd's quoting, ``$VAR`` as words, ``${VAR}``."""
    ignore = line.startswith("-")
    line = line.lstrip("-")
    if line[:1] in "@:+!":
        raise UnitError(f"the systemd stand-in cannot play the Exec prefix {line[0]!r}")
    argv: list[str] = []
    for word in shlex.split(line.replace("%%", "\0")):
        word = word.replace("\0", "%")
        if re.fullmatch(r"\$\w+", word):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return argv, ignore


def mount_points() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        out.append(point)
    return out


def _under(path: str, tops) -> bool:
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in tops)


def sandbox_script(unit: Unit) -> str:
    """Shell commands that build the service's file system view (run in a new mount namespace)."""
    lines, q = [], shlex.quote
    writable = []
    for entry in (w for v in unit.all("ReadWritePaths") for w in v.split()):
        path = entry.lstrip("-")
        if not os.path.exists(path):
            if entry.startswith("-"):
                continue
            raise UnitError(f"{unit.name}: ReadWritePaths {path} does not exist")
        writable.append(path)
        lines.append(f"mount --bind {q(path)} {q(path)}")
    protect = unit.get("ProtectSystem", "no").lower()
    tops = {"strict": ["/"], "full": ["/usr", "/boot", "/efi", "/etc"],
            "true": ["/usr", "/boot", "/efi"], "yes": ["/usr", "/boot", "/efi"]}.get(protect, [])
    points = mount_points()
    for top in tops:
        if not os.path.isdir(top):
            continue
        if top not in points:
            lines.append(f"mount --bind {q(top)} {q(top)}")
        lines.append(f"mount -o remount,bind,ro {q(top)}")
        for point in (p for p in points if _under(p, [top]) and p != top):
            # the lab machine's own mounts (API file systems, /mnt) are not the guest's: left alone
            if not _under(point, API_FS + ("/mnt",)) and point not in writable:
                lines.append(f"mount -o remount,bind,ro {q(point)} 2>/dev/null || true")
    home = unit.get("ProtectHome", "no").lower()
    for path in ("/home", "/root", "/run/user"):
        if not os.path.isdir(path) or home in ("no", "false"):
            continue
        if home == "read-only":
            lines += [f"mount --bind {q(path)} {q(path)}", f"mount -o remount,bind,ro {q(path)}"]
        else:   # yes/true: inaccessible; tmpfs: an empty writable directory
            mode = "mode=0755" if home == "tmpfs" else "mode=0000,ro"
            lines.append(f"mount -t tmpfs -o {mode} tmpfs {q(path)}")
    if unit.get("PrivateTmp", "no").lower() in ("yes", "true"):
        lines += ["mount -t tmpfs -o mode=1777 tmpfs /tmp", "mount -t tmpfs -o mode=1777 tmpfs /var/tmp"]
    return "\n".join(lines)


def wrapped(unit: Unit, argv: list[str]) -> list[str]:
    """``argv`` run with the unit's sandbox, limits, credentials and working directory."""
    prologue = [f"umask {unit.get('UMask', '0022')}"]
    if unit.get("LimitNOFILE"):
        # systemd (PID 1) may raise the hard limit; the lab may not (no CAP_SYS_RESOURCE in a
        # container): then the machine's hard limit, the most the lab can give.
        prologue.append(f"ulimit -n {unit.get('LimitNOFILE')} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"")
    setpriv = ["setpriv"]
    user, group = unit.get("User"), unit.get("Group")
    if user or group:
        pw = pwd.getpwnam(user or "root")
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
        setpriv += [f"--reuid={pw.pw_uid}", f"--regid={gid}"]
        setpriv += ["--init-groups"] if user else ["--clear-groups"]
    caps = [c.lower().removeprefix("cap_") for v in unit.all("AmbientCapabilities") for c in v.split()]
    if caps:
        added = ",".join(f"+{c}" for c in caps)
        setpriv += [f"--inh-caps={added}", f"--ambient-caps={added}"]
    bounding = [c.lower().removeprefix("cap_") for v in unit.all("CapabilityBoundingSet") for c in v.split()]
    if bounding:
        setpriv.append("--bounding-set=-all," + ",".join(f"+{c}" for c in bounding))
    if unit.get("NoNewPrivileges", "no").lower() in ("yes", "true"):
        setpriv.append("--no-new-privs")
    workdir = unit.get("WorkingDirectory", "/").lstrip("-")
    inner = ["/bin/sh", "-c", 'cd "$0" || exit 200; unset OLDPWD PWD; exec "$@"', workdir, *argv]
    script = "\n".join([sandbox_script(unit), *prologue, 'exec "$@"'])
    outer = ["/bin/sh", "-ec", script, "unit", *(setpriv if len(setpriv) > 1 else []), *inner]
    isolated = any(unit.get(k) for k in ("ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths"))
    return ["unshare", "--mount", "--propagation", "private", "--", *outer] if isolated else outer
