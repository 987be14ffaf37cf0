"""A user who installs Phoenix as a package (``pip install .``, not editable) gets a working
``phoenix plan``: the templates ship inside the wheel, and the package list is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from setuptools import find_packages

from conftest import ROOT


def test_the_package_list_names_every_package_on_disk():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = set(find_packages(where=str(ROOT), include=["phoenix*", "components*"]))
    assert declared - {"phoenix.configs"} == on_disk


def test_a_wheel_installed_without_the_checkout_plans_a_stack(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    [wheel] = wheels.glob("phoenix_lab-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, cwd=tmp_path)
    assert (target / "phoenix" / "configs" / "gateway" / "nginx.conf.j2").is_file()
    # The wheel's package first, then the virtualenv's dependencies (never the checkout: the
    # command runs elsewhere and the editable install's path hook is not on PYTHONPATH).
    deps = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), deps]), "XDG_CACHE_HOME": str(tmp_path)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = tmp_path / "plan"
    done = subprocess.run([sys.executable, "-c", "import sys, phoenix.cli; sys.exit(phoenix.cli.main())", "plan",
                           "--config-file", str(ROOT / "Pulumi.dev.yaml"), "--out", str(out)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    where = subprocess.run([sys.executable, "-c", "import phoenix.render as r; print(r.CONFIGS)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == target / "phoenix" / "configs"
    assert json.loads((out / "plan.json").read_text())["stack"] == "dev"
    assert (out / "files" / "gateway" / "etc" / "nginx" / "nginx.conf").is_file()


def test_the_virtualenv_runs_the_locked_versions():
    """The suite runs on exactly the versions requirements.lock pins (make setup installs with
    it as constraints), so a passing suite vouches for that lock."""
    from importlib import metadata

    from packaging.utils import canonicalize_name
    pinned = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[canonicalize_name(name)] = version
    # The virtualenv's own: importing setuptools (above) puts its _vendor folder on sys.path, whose
    # vendored packaging-*.dist-info is no installed distribution.
    site = sysconfig.get_paths()["purelib"]
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=[site])}
    assert {n: (v, installed.get(n)) for n, v in pinned.items() if installed.get(n) != v} == {}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in declared:
        name = canonicalize_name(requirement.split(">")[0].split("<")[0].split("=")[0].strip())
        assert name in pinned, f"{name} is a dependency but requirements.lock does not pin it"
