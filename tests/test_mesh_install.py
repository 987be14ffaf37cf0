"""The mesh's install script, run for real (re-rooted under a temporary directory, with stand-ins
for the commands that would touch the host or the network): it installs only a release whose
sha256 matches the pinned one, refuses without a pin, and is a no-op the second time."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from hashlib import sha256
from pathlib import Path

import pytest

from conftest import shipped_plan
from phoenix.render import render
from phoenix.render.mesh import install_context

FAKE_TRAEFIK = "#!/bin/sh\necho 'Version:      {version}'\necho 'Codename:     phoenix-test'\n"

STUBS = {
    # Downloads: copy the prepared tarball to -o's path, and log the call.
    "curl": """#!/bin/bash
out=""
while [ $# -gt 0 ]; do
  if [ "$1" = "-o" ]; then out=$2; shift; fi
  shift
done
echo call >> "$STUB_LOG/curl"
cp "$FAKE_TARBALL" "$out"
""",
    # The traefik user exists; nothing is added to the host's users.
    "id": "#!/bin/sh\nexit 0\n",
    "useradd": "#!/bin/sh\necho useradd >> \"$STUB_LOG/useradd\"\n",
    # install(1) without changing owners (the test does not run as the guest's users).
    "install": """#!/bin/bash
args=()
while [ $# -gt 0 ]; do
  case "$1" in -o|-g) shift 2 ;; *) args+=("$1"); shift ;; esac
done
exec /usr/bin/install "${args[@]}"
""",
    "systemctl": "#!/bin/sh\nexit 3\n",
}


def make_tarball(path: Path, version: str) -> str:
    data = FAKE_TRAEFIK.format(version=version).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("traefik")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    path.write_bytes(raw.getvalue())
    return sha256(raw.getvalue()).hexdigest()


@pytest.fixture
def sandbox(tmp_path):
    topo = shipped_plan("dev").topo
    version = topo.lab.mesh.traefik_version
    tarball = tmp_path / "release.tar.gz"
    digest = make_tarball(tarball, version)
    stubs, log = tmp_path / "stubs", tmp_path / "log"
    stubs.mkdir()
    log.mkdir()
    for name, text in STUBS.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    root = tmp_path / "guest"
    ctx = dict(install_context(topo), binary=str(root / "usr/local/bin/traefik"),
               config_dir=str(root / "etc/traefik"), dynamic_dir=str(root / "etc/traefik/dynamic"),
               state_dir=str(root / "var/lib/traefik"), acme_storage=str(root / "var/lib/traefik/acme.json"))
    (root / "usr/local/bin").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_LOG": str(log),
           "FAKE_TARBALL": str(tarball)}

    def run(sha: str) -> subprocess.CompletedProcess:
        script = tmp_path / "install-traefik.sh"
        script.write_text(render("mesh/install-traefik.sh.j2", **{**ctx, "sha256": sha}))
        return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)

    def downloads() -> int:
        f = log / "curl"
        return len(f.read_text().splitlines()) if f.exists() else 0

    return run, digest, root, downloads, version


def test_installs_the_release_whose_sha256_matches_and_only_once(sandbox):
    run, digest, root, downloads, version = sandbox
    first = run(digest)
    assert first.returncode == 0, first.stderr
    binary = root / "usr/local/bin/traefik"
    assert binary.stat().st_mode & 0o777 == 0o755
    assert f"Version:      {version}" in first.stdout
    acme = root / "var/lib/traefik/acme.json"
    assert stat.S_IMODE(acme.stat().st_mode) == 0o600          # Traefik refuses readable ACME storage
    assert stat.S_IMODE((root / "var/lib/traefik").stat().st_mode) == 0o700
    assert (root / "etc/traefik/dynamic").is_dir()
    assert downloads() == 1
    again = run(digest)
    assert again.returncode == 0, again.stderr
    assert f"Traefik {version} is installed" in again.stdout
    assert downloads() == 1                                     # nothing fetched the second time


def test_refuses_a_release_whose_sha256_differs(sandbox):
    run, digest, root, downloads, _version = sandbox
    wrong = "0" * 64
    out = run(wrong)
    assert out.returncode == 1
    assert f"does not match phoenix:mesh.traefikSha256 ({wrong}); not installed" in out.stderr
    assert not (root / "usr/local/bin/traefik").exists()
    assert downloads() == 1


def test_refuses_to_run_without_a_pinned_sha256(sandbox):
    run, _digest, root, downloads, version = sandbox
    out = run("")
    assert out.returncode == 1
    assert "phoenix:mesh.traefikSha256 is not set; refusing to install an unverified Traefik" in out.stderr
    assert f"traefik_v{version}_linux_amd64.tar.gz from the release's traefik_v{version}_checksums.txt" in out.stderr
    assert downloads() == 0 and not (root / "etc/traefik").exists()


def test_installs_what_the_health_check_needs_even_where_traefik_already_runs(sandbox, tmp_path):
    """The push's health check (traefik-health.sh) reads Traefik's API with jq and checks the served
    certificates with openssl: a guest that got Traefik before that gets them from the next install
    step, which has nothing else to do."""
    run, digest, root, downloads, version = sandbox
    assert run(digest).returncode == 0
    # This machine's commands, but no jq; apt-get records what it was asked for.
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("sh", "bash", "grep", "mktemp", "sha256sum", "tar", "gzip", "mv", "rm", "cat", "cp"):
        (tools / name).symlink_to(shutil.which(name))
    stubs = tmp_path / "stubs"   # the sandbox's (the same tmp_path)
    (stubs / "apt-get").write_text('#!/bin/sh\necho "$*" >> "$STUB_LOG/apt-get"\n')
    (stubs / "apt-get").chmod(0o755)
    script = tmp_path / "install-traefik.sh"
    again = subprocess.run([shutil.which("bash"), str(script)], capture_output=True, text=True, timeout=60,
                           env={"PATH": f"{stubs}:{tools}", "STUB_LOG": str(tmp_path / "log")}, check=False)
    assert again.returncode == 0, again.stderr
    assert f"Traefik {version} is installed" in again.stdout and downloads() == 1
    assert "install -y -qq curl jq openssl ca-certificates" in (tmp_path / "log" / "apt-get").read_text()
