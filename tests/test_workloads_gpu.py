"""GPU service LXCs under the mock runtime: passthrough, the node's driver version, units."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import edited, shipped_plan, stack_config
from phoenix.errors import ConfigError
from phoenix.model import parse_lab
from phoenix.plan import make_plan
from phoenix.plan.writer import COMMAND, bundle_of, command_guest, pushed_files
from phoenix.stackfile import expand_catalog
from phoenix.topology import build

CONTAINER = "proxmoxve:index/containerLegacy:ContainerLegacy"
DRIVER = "/usr/local/lib/phoenix/gpu-driver.sh"


@pytest.fixture(scope="module")
def driver_plan():
    """The cluster stack (three GPU nodes) planned with a node driver version of our choosing."""
    return make_plan(stack_config("cluster"), facts={"gpu-driver-version": "555.42.06"})


def _passthrough(plan, guest):
    return [d["path"] for d in plan.run.named(guest).value("devicePassthroughs") or []]


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_device_passthrough_follows_each_gpu_assignment(stack):
    plan = shipped_plan(stack)
    for g in plan.topo.lab.guests:
        devices = plan.run.named(g.name).value("devicePassthroughs") if g.kind == "lxc" else None
        if not g.gpus:
            assert not devices, g.name
            continue
        assert [d["path"] for d in devices] == (
            [f"/dev/nvidia{i}" for i in g.gpus] + ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"])
        # by path only: a hard-coded major number (nvidia-uvm's is dynamic) is trap 17
        assert all(set(d) <= {"path", "mode", "uid", "gid", "denyWrite"} for d in devices)


def test_gpu_indices_and_capability_devices_pass_through_as_listed():
    def two_gpus(raw):
        gpu = next(g for g in raw["guests"] if g["name"] == "gpu-llm")
        gpu["gpus"], gpu["gpuCaps"] = [0, 2], [1, 2]
    plan = make_plan(edited("dev", two_gpus))
    assert _passthrough(plan, "gpu-llm") == [
        "/dev/nvidia0", "/dev/nvidia2", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
        "/dev/nvidia-caps/nvidia-cap1", "/dev/nvidia-caps/nvidia-cap2"]
    unit = pushed_files(plan.run, plan.topo)["gpu-llm"]["/etc/systemd/system/phoenix-llm.service"][0].content
    pre = next(line for line in unit.splitlines() if line.startswith("ExecStartPre="))
    assert pre.split()[2:] == _passthrough(plan, "gpu-llm")   # the unit waits for exactly those


def test_one_probe_per_gpu_node_reads_the_driver_version_there(driver_plan):
    run, lab = driver_plan.run, driver_plan.topo.lab
    probes = [r for r in run.by_type(COMMAND) if r.name.startswith("gpu-probe-")]
    nodes = sorted({g.node for g in lab.guests if g.gpus})
    assert sorted(r.name for r in probes) == [f"gpu-probe-{n}" for n in nodes]
    for r in probes:
        node = next(n for n in lab.proxmox.nodes if f"gpu-probe-{n.name}" == r.name)
        conn = r.value("connection")
        assert conn["host"] == str(node.address) and conn["user"] == lab.proxmox.ssh_user
        assert conn.get("proxy") is None                       # on the node itself, not a guest
        create = r.value("create")
        assert "# phoenix-fact: gpu-driver-version" in create
        assert "nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1" in create
        for g in lab.guests:                                   # it checks every device its containers get
            if g.gpus and g.node == node.name:
                for d in _passthrough(driver_plan, g.name):
                    assert f"'{d}'" in create
        # GPU containers on that node wait for it: no container starts without its devices
        for g in lab.guests:
            if g.gpus and g.node == node.name:
                assert r.urn in run.named(g.name).dependencies


def test_the_nodes_driver_version_flows_into_each_gpu_containers_install_step(driver_plan):
    run, topo = driver_plan.run, driver_plan.topo
    files = pushed_files(run, topo)
    gpu_guests = [g for g in topo.lab.guests if g.gpus]
    assert len(gpu_guests) == 3
    for g in gpu_guests:
        step = run.named(f"{g.name}-gpu-driver")
        assert command_guest(step, topo) == g.name
        script, step_name = files[g.name][DRIVER]
        assert step_name == step.name
        assert "version='555.42.06'" in script.content
        assert "--no-kernel-module" in script.content
        # idempotent: it does nothing when nvidia-smi already reports that version
        assert re.search(r'if \[ "\$installed" = "\$version" \]; then\n.*\n\s*exit 0', script.content)
        assert run.urn_of(f"gpu-probe-{g.node}") in step.dependencies
        assert "555.42.06" not in step.value("create")          # in the pushed script, not a command line
    # the default fact (550.127.05) would make different install steps: the version really flows
    shipped = pushed_files(shipped_plan("cluster").run, shipped_plan("cluster").topo)
    assert "version='550.127.05'" in shipped["gpu-a"][DRIVER][0].content


def test_a_pinned_driver_checksum_is_enforced():
    from phoenix.render.workloads import gpu_driver_script

    def pin(raw):
        raw["gpu"] = {"driverSha256": {"555.42.06": "ab" * 32}}
    stack = edited("dev", pin)
    topo = build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))
    gpu = topo.lab.guest("gpu-llm")
    script = gpu_driver_script(topo, gpu, "555.42.06\n")
    assert f"expected_sha256='{'ab' * 32}'" in script and "sha256sum --check" in script
    assert "expected_sha256=''" in gpu_driver_script(topo, gpu, "560.1.2")    # not pinned: no check


def test_each_gpu_service_runs_as_a_systemd_unit_from_the_catalog(cluster_plan):
    files = pushed_files(cluster_plan.run, cluster_plan.topo)
    for s in cluster_plan.topo.lab.services:
        if not s.gpu:
            continue
        for g in s.guests:
            unit, step = files[g][f"/etc/systemd/system/phoenix-{s.name}.service"]
            assert step == f"{g}-svc-{s.name}"
            lines = unit.content.splitlines()
            start = next(line for line in lines if line.startswith("ExecStart="))
            assert "{" not in start                                # every placeholder filled
            assert f"--port {s.port}" in start or f"{s.port}" in " ".join(lines)
            if "{model}" in s.run.command:
                assert s.run.model in start
            if "{cert}" in s.run.command:
                assert f"/etc/phoenix/tls/{s.name}.crt" in start and f"/etc/phoenix/tls/{s.name}.key" in start
            for k, v in s.run.environment.items():
                assert f"Environment={k}={v}" in lines
            assert "Restart=on-failure" in lines
            assert f"User=svc-{s.name}" in lines
            users = files[g][f"/etc/sysusers.d/phoenix-{s.name}.conf"][0].content
            assert re.search(rf"^m svc-{s.name} video$", users, re.M) and re.search(rf"^m svc-{s.name} render$",
                                                                                    users, re.M)
            health = files[g][f"/usr/local/lib/phoenix/health-{s.name}.sh"][0].content
            assert f":{s.port}{s.health}'" in health                # the catalog's health path
            step_r = cluster_plan.run.named(f"{g}-svc-{s.name}")
            assert f"--health 'bash /usr/local/lib/phoenix/health-{s.name}.sh'" in step_r.value("create")
            assert cluster_plan.run.urn_of(f"{g}-gpu-driver") in step_r.dependencies
            if s.protocol == "https":   # its certificate from Step-CA comes first
                assert cluster_plan.run.urn_of(f"{g}-cert-{s.name}") in step_r.dependencies


def test_units_pass_systemd_analyze_verify(cluster_plan, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    files = pushed_files(cluster_plan.run, cluster_plan.topo)
    stub = tmp_path / "stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    checked = 0
    for guest, by_path in files.items():
        for path, (f, _) in by_path.items():
            if (not re.match(r"/etc/systemd/system/phoenix-[\w-]+\.service$", path) or "acme" in path
                    or path.endswith("/phoenix-apply-recover.service")):     # every guest's (test_apply_journal)
                continue
            # the service's binary and our wait script do not exist here: point them at a stub,
            # keeping every argument (quoting, specifiers) as written
            text = re.sub(r"^(ExecStart(?:Pre)?=)(\S+)", lambda m: m.group(1) + str(stub), f.content, flags=re.M)
            unit = tmp_path / guest / Path(path).name
            unit.parent.mkdir(exist_ok=True)
            unit.write_text(text)
            out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                                 check=False)
            assert out.returncode == 0, f"{guest}:{path}: {out.stderr}"
            assert "Unknown key" not in out.stderr and "Ignoring" not in out.stderr, out.stderr
            checked += 1
    assert checked == 5      # llm x2, embed, whisper, ollama


def test_exec_start_quotes_arguments_as_systemd_reads_them():
    from phoenix.render.workloads import systemd_quote
    assert systemd_quote("plain/arg") == "plain/arg"
    assert systemd_quote("50%") == "50%%"
    assert systemd_quote("$HOME") == "$$HOME"
    assert systemd_quote('a "b" c') == '"a \\"b\\" c"'


def test_changing_a_services_model_changes_only_its_unit_step():
    def new_model(raw):
        next(s for s in raw["services"] if s["name"] == "llm")["run"]["model"] = "mistralai/Mistral-7B-v0.3"
    base = shipped_plan("dev").document()
    changed = make_plan(edited("dev", new_model)).document()
    before = {r["urn"]: r for r in base["resources"]}
    after = {r["urn"]: r for r in changed["resources"]}
    assert set(before) == set(after)
    diff = sorted(after[u]["name"] for u in after if after[u]["inputs"] != before[u]["inputs"]
                  and "portainer-server" not in u)   # (its placeholder password differs per plan)
    assert diff == ["gpu-llm-svc-llm"]


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["run"].update(command="/opt/x --model {model} --gpu {gpu}"),
     r"phoenix:services\[0\]\.run\.command: '\{gpu\}' is not a placeholder \(known: \{model\}"),
    (lambda s: s["run"].pop("model"), r"phoenix:services\[0\]\.run: command uses \{model\} but run.model is not set"),
    (lambda s: s["run"].update(environment={"HF HOME": "/x"}),
     r"phoenix:services\[0\]\.run\.environment: environment variable name\(s\) 'HF HOME' are not valid"),
    (lambda s: s.update(guests=["mesh"]), r"phoenix:services\[0\]\.guests\[0\]: 'mesh' is not a GPU LXC"),
    (lambda s: s["run"].update(command="/opt/x --name 'unbalanced"),
     r"phoenix:services\[0\]\.run\.command: .* does not split into words: No closing quotation"),
])
def test_bad_gpu_service_entries_are_refused_with_the_key(edit, message):
    def apply(raw):
        edit(next(s for s in raw["services"] if s["name"] == "llm"))
    stack = edited("dev", apply)
    with pytest.raises(ConfigError, match=message):
        parse_lab(expand_catalog(stack.phoenix(), stack.root))


def test_capability_devices_need_gpus():
    def caps_only(raw):
        next(g for g in raw["guests"] if g["name"] == "dns")["gpuCaps"] = [1]
    stack = edited("dev", caps_only)
    with pytest.raises(ConfigError, match=r"phoenix:guests\[0\]\.gpuCaps: capability devices come with GPUs"):
        parse_lab(expand_catalog(stack.phoenix(), stack.root))


def test_every_workload_step_goes_through_phoenix_apply(cluster_plan):
    """Transactional: staged, checked, swapped, restored on failure (a script runs as the check)."""
    steps = [r for r in cluster_plan.run.by_type(COMMAND) if "phoenix:tier:Workloads" in r.parent]
    assert len(steps) > 10
    for r in steps:
        assert r.value("create").startswith("/usr/local/sbin/phoenix-apply "), r.name
        assert bundle_of(r), r.name


def test_a_vm_with_a_whole_gpu_uses_a_pci_mapping(cluster_plan):
    run = cluster_plan.run
    vm = next(g for g in cluster_plan.topo.lab.guests if g.gpu_mapping)
    [mapping] = run.by_type("proxmoxve:hardware/mapping/pci:Pci")
    assert mapping.value("name") == vm.gpu_mapping
    assert mapping.value("maps") == [{"id": vm.gpu_pci_id, "node": vm.node, "path": vm.gpu_pci_path}]
    r = run.named(vm.name)
    assert r.value("hostpcis") == [{"device": "hostpci0", "mapping": vm.gpu_mapping, "pcie": True}]
    assert "id" not in r.value("hostpcis")[0]            # never a raw PCI id (root@pam only)
    assert r.value("machine") == "q35" and mapping.urn in r.dependencies
