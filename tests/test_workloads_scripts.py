"""Every script the workloads tier generates passes shellcheck, for every shipped stack."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import shipped_plan
from phoenix.plan.writer import pushed_files

#: the workloads tier's own steps (the certificate steps in it belong to the trust tier).
OWN_STEP = re.compile(r"-(gpu-driver|svc-[\w-]+|tls-sidecar|tls-sidecar-install|portainer-server|portainer-agent|"
                      r"register-[\w-]+)$")


def workload_scripts(plan) -> dict[str, str]:
    out = {}
    for guest, paths in pushed_files(plan.run, plan.topo).items():
        for path, (f, step) in paths.items():
            if OWN_STEP.search(step) and path.startswith("/usr/local/lib/phoenix/"):
                out[f"{guest}:{path}"] = f.content
    for r in plan.run.resources:               # the node probe runs as the command itself
        if r.name.startswith("gpu-probe-"):
            out[f"node:{r.name}"] = "#!/bin/sh\n" + r.value("create")
    return out


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_generated_scripts_pass_shellcheck(stack, tmp_path):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (make deps)")
    scripts = workload_scripts(shipped_plan(stack))
    names = {k.rsplit("/", 1)[-1] for k in scripts}
    assert {"gpu-driver.sh", "wait-gpu-devices", "portainer-server.sh", "portainer-api.sh",
            "portainer-agent.sh"} <= names and any(n.startswith("register-") for n in names)
    if stack == "cluster":       # gpu-c runs services behind the TLS sidecar
        assert {"tls-sidecar-install.sh", "tls-sidecar-health.sh"} <= names
    paths = []
    for i, (name, text) in enumerate(sorted(scripts.items())):
        path = tmp_path / f"{i:03d}-{name.replace('/', '_').replace(':', '_')}"
        path.write_text(text)
        paths.append(path)
    out = subprocess.run(["shellcheck", "--severity=style", *map(str, paths)], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout


# -- the GPU scripts, run for real with stand-ins for the NVIDIA tools ----------------------------
def stub(bin_dir, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def run_bash(text: str, tmp_path, *args: str, path_dir=None, timeout=30) -> subprocess.CompletedProcess:
    import os
    script = tmp_path / "script.sh"
    script.write_text(text)
    env = {**os.environ, "PATH": f"{path_dir}:{os.environ['PATH']}" if path_dir else os.environ["PATH"]}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


def test_wait_gpu_devices_waits_with_a_bound_then_checks_the_driver(tmp_path):
    from phoenix.render import config_text
    text = config_text("workloads/wait-gpu-devices.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "nvidia-smi", 'echo "GPU 0: stand-in"\n')
    ok = run_bash(text, tmp_path, "2", "/dev/null", path_dir=bin_dir)        # a character device that exists
    assert ok.returncode == 0, ok.stderr
    missing = run_bash(text, tmp_path, "1", "/dev/null", str(tmp_path / "nvidia-uvm"), path_dir=bin_dir)
    assert missing.returncode == 1 and "did not appear within 1s" in missing.stderr
    stub(bin_dir, "nvidia-smi", 'echo "Failed to initialize NVML: Driver/library version mismatch"; exit 18\n')
    broken = run_bash(text, tmp_path, "1", "/dev/null", path_dir=bin_dir)
    assert broken.returncode == 1 and "version mismatch" in broken.stderr


def test_driver_install_does_nothing_when_the_version_is_already_there(tmp_path, dev_plan):
    script = pushed_files(dev_plan.run, dev_plan.topo)["gpu-llm"]["/usr/local/lib/phoenix/gpu-driver.sh"][0].content
    version = dev_plan.run.named("gpu-probe-pve").outputs["stdout"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "curl", "sh"):      # any of these running would mean a reinstall
        stub(bin_dir, tool, f'echo "{tool} must not run" >&2; exit 99\n')
    stub(bin_dir, "nvidia-smi", f'echo "{version}"\n')
    out = run_bash(script, tmp_path, path_dir=bin_dir)
    assert out.returncode == 0 and f"{version} already installed" in out.stdout, out.stderr
    stub(bin_dir, "nvidia-smi", 'echo "535.00.01"\n')                        # another version: it installs
    out = run_bash(script, tmp_path, path_dir=bin_dir)
    assert out.returncode == 99 and "apt-get must not run" in out.stderr


def test_node_probe_refuses_when_device_nodes_are_missing_and_prints_only_the_version(tmp_path):
    """On a played node (tests/test_gpu_node_boot.py: its own mount namespace, /dev, unit and
    sbin directories; nothing reaches this machine's /etc or /usr/local): the probe's device
    script fails naming the devices when the driver makes none, and the probe prints nothing."""
    from test_gpu_node_boot import VERSION, Node, deploy
    node = Node(tmp_path, shipped_plan("cluster"), "pve1")
    try:
        # a driver whose modules load but register no device (this boot's modprobe does nothing)
        out = node.boot("printf '#!/bin/sh\\nexit 0\\n' > /usr/local/sbin/modprobe\n"
                        + node.plan.run.named("gpu-probe-pve1").value("create"))
        assert out.returncode == 1 and out.stdout == "", out.stdout
        assert "phoenix-nvidia-devices: no device node for: /dev/nvidia0" in out.stderr
        assert "node pve1: /usr/local/sbin/phoenix-nvidia-devices failed" in out.stderr
        ok = deploy(node)
        assert ok.returncode == 0 and ok.stdout == f"{VERSION}\n", ok.stderr
    finally:
        node.cleanup()
