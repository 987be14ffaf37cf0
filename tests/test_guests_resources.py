"""The guests tier under Pulumi's mock runtime: every guest, its inputs, dependencies and secrecy."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

from conftest import shipped_plan
from phoenix.plan.engine import reveal

CONTAINER = "proxmoxve:index/containerLegacy:ContainerLegacy"
VM = "proxmoxve:index/vmLegacy:VmLegacy"
DOWNLOAD = "proxmoxve:download/file:File"
COMMAND = "command:remote:Command"

#: resource type token -> (module, Args class) of the typed SDK classes the components use.
ARGS_OF = {
    CONTAINER: ("pulumi_proxmoxve", "ContainerLegacyArgs"),
    VM: ("pulumi_proxmoxve", "VmLegacyArgs"),
    DOWNLOAD: ("pulumi_proxmoxve.download", "FileArgs"),
    "proxmoxve:index/fileLegacy:FileLegacy": ("pulumi_proxmoxve", "FileLegacyArgs"),
    "proxmoxve:hardware/mapping/pci:Pci": ("pulumi_proxmoxve.hardware.mapping", "PciArgs"),
    "proxmoxve:firewall/rulesLegacy:RulesLegacy": ("pulumi_proxmoxve.firewall", "RulesLegacyArgs"),
    "proxmoxve:firewall/optionsLegacy:OptionsLegacy": ("pulumi_proxmoxve.firewall", "OptionsLegacyArgs"),
    COMMAND: ("pulumi_command.remote", "CommandArgs"),
    "pulumi:providers:proxmoxve": ("pulumi_proxmoxve", "ProviderArgs"),
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _nested_args(module, annotation) -> type | None:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    found = re.findall(r"'?(\w+Args)'?", text)
    for name in found:
        for mod in (module, importlib.import_module(module.__name__.split(".")[0])):
            cls = getattr(mod, name, None)
            if cls is not None:
                return cls
    return None


def check_keys(value, cls, module, path: str) -> list[str]:
    """Every key of recorded inputs must be a field of the typed Args class (a typo would not be)."""
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in check_keys(v, cls, module, f"{path}[{i}]")]
    if not isinstance(value, dict) or cls is None:
        return []
    params = inspect.signature(cls.__init__).parameters
    bad = []
    for key, sub in value.items():
        if key.startswith("__"):
            continue
        name = _snake(key)
        if name not in params:
            bad.append(f"{path}.{key} is not a field of {cls.__name__}")
            continue
        bad += check_keys(sub, _nested_args(module, params[name].annotation), module, f"{path}.{key}")
    return bad


@pytest.mark.parametrize("stack", ["dev", "cluster"])
def test_every_recorded_input_is_a_field_of_its_typed_args_class(stack):
    plan = shipped_plan(stack)
    checked = 0
    problems = []
    for r in plan.run.resources:
        if r.type not in ARGS_OF:
            continue
        mod_name, cls_name = ARGS_OF[r.type]
        module = importlib.import_module(mod_name)
        problems += check_keys({k: v for k, v in reveal(r.inputs).items() if k != "__defaults"},
                               getattr(module, cls_name), module, r.name)
        checked += 1
    assert checked > 10
    assert problems == []


def test_dev_plan_has_every_tier_guest_with_fixed_ids(dev_plan):
    guests = {r.name: r for r in dev_plan.run.resources if r.type in (CONTAINER, VM)}
    lab = dev_plan.topo.lab
    by_role = {g.role: g for g in lab.guests}
    assert {r for r in by_role} == {"dns", "gateway", "mesh", "ca", "gpu", "portainer", "agent"}
    assert guests[by_role["gateway"].name].value("vmId") == 101
    assert guests[by_role["mesh"].name].value("vmId") == 102
    assert guests[by_role["ca"].name].value("vmId") == 103
    for g in lab.guests:
        r = guests[g.name]
        assert r.type == (CONTAINER if g.kind == "lxc" else VM)
        assert r.value("vmId") == g.id and r.value("nodeName") == g.node


def test_containers_set_every_block_explicitly(any_plan):
    lab = any_plan.topo.lab
    for g in lab.guests:
        if g.kind != "lxc":
            continue
        r = any_plan.run.named(g.name)
        assert r.value("unprivileged") is True
        assert r.value("cpu") == {"cores": g.cores}
        assert r.value("memory") == {"dedicated": g.memory, "swap": 0}
        assert r.value("disk") == {"datastoreId": lab.proxmox.datastore, "size": g.disk}
        nic = r.value("networkInterfaces")
        assert nic[0]["bridge"] == lab.network.bridge and nic[0]["firewall"] is True
        init = r.value("initialization")
        assert init["ipConfigs"][0]["ipv4"] == {"address": f"{g.address}/{lab.network.cidr.prefixlen}",
                                                "gateway": str(lab.network.gateway)}
        tags = r.value("tags")
        assert tags == sorted(tags) and all(t == t.lower() for t in tags)


def test_every_guest_resolves_through_the_dns_guest(any_plan):
    topo = any_plan.topo
    for g in topo.lab.guests:
        init = any_plan.run.named(g.name).value("initialization")
        expected = ["127.0.0.1"] if g.role == "dns" else [str(topo.dns.address)]
        assert init["dns"]["servers"] == expected
        assert init["dns"]["domain"] == topo.lab.domains.internal


def test_vms_install_the_guest_agent_before_it_is_enabled(any_plan):
    for g in any_plan.topo.lab.guests:
        if g.kind != "vm":
            continue
        vm = any_plan.run.named(g.name)
        snippet = any_plan.run.named(f"{g.name}-user-data")
        assert vm.value("agent")["enabled"] is True
        assert "qemu-guest-agent" in snippet.value("sourceRaw")["data"]
        assert snippet.value("contentType") == "snippets"
        assert vm.value("initialization")["userDataFileId"] == f"{g.name}-user-data-id"
        assert snippet.urn in vm.dependencies
        assert vm.value("stopOnDestroy") is True
        disk = vm.value("disks")[0]
        assert disk["importFrom"] == f"image-{g.image}-{g.node}-id" and disk["size"] == g.disk


def test_images_are_fetched_on_each_node_that_needs_them(cluster_plan):
    lab = cluster_plan.topo.lab
    downloads = {r.name: r for r in cluster_plan.run.by_type(DOWNLOAD)}
    needed = {(g.image, g.node) for g in lab.guests}
    assert set(downloads) == {f"image-{i}-{n}" for i, n in needed}
    for (image, node) in needed:
        d = downloads[f"image-{image}-{node}"]
        assert d.value("nodeName") == node
        assert d.value("contentType") == ("vztmpl" if lab.images[image].kind == "lxc" else "import")
    assert len({n for _, n in needed}) == 3


def test_gpu_lxcs_pass_device_nodes_by_path(cluster_plan):
    for g in cluster_plan.topo.lab.guests:
        if not g.gpus:
            continue
        paths = [d["path"] for d in cluster_plan.run.named(g.name).value("devicePassthroughs")]
        assert [p for p in paths if re.fullmatch(r"/dev/nvidia\d+", p)] == [f"/dev/nvidia{i}" for i in g.gpus]
        assert {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} <= set(paths)


def test_vm_gpu_uses_a_pci_mapping_not_a_raw_id(cluster_plan):
    g = next(g for g in cluster_plan.topo.lab.guests if g.gpu_mapping)
    vm = cluster_plan.run.named(g.name)
    assert vm.value("hostpcis") == [{"device": "hostpci0", "mapping": g.gpu_mapping, "pcie": True}]
    mapping = cluster_plan.run.named(f"gpu-mapping-{g.gpu_mapping}")
    assert mapping.value("maps") == [{"id": g.gpu_pci_id, "node": g.node, "path": g.gpu_pci_path}]
    assert mapping.urn in vm.dependencies


def test_bootstrap_waits_for_its_guest_and_reaches_it_through_the_node(any_plan):
    lab = any_plan.topo.lab
    for g in lab.guests:
        step = any_plan.run.named(f"{g.name}-bootstrap")
        assert any_plan.run.named(g.name).urn in step.dependencies
        assert "connection" in step.secret_paths()
        conn = step.value("connection")
        node = next(n for n in lab.proxmox.nodes if n.name == g.node)
        assert conn["host"] == str(g.address) and conn["user"] == "root"
        assert conn["proxy"]["host"] == str(node.address)
        assert conn["dialErrorLimit"] >= 30
        if g.kind == "vm":
            assert "cloud-init status --wait" in step.value("create")


def test_critical_resources_are_protected(dev_plan):
    assert dev_plan.run.named("root-ca-key").protect
    assert dev_plan.run.named("root-ca-cert").protect
    assert dev_plan.run.named(dev_plan.topo.ca.name).protect
    assert dev_plan.run.named(dev_plan.topo.ca.name).value("protection") is True
    assert not dev_plan.run.named(dev_plan.topo.mesh.name).protect


def test_private_keys_and_passwords_are_secret(dev_plan):
    run = dev_plan.run
    assert {"privateKeyPem", "privateKeyOpenssh"} <= set(run.named("root-ca-key").secret_outputs)
    assert {"privateKeyPem", "privateKeyOpenssh"} <= set(run.named("deploy-key").secret_outputs)
    provider = run.by_type("pulumi:providers:proxmoxve")[0]
    assert "password" in provider.secret_paths()
    for name in ("portainer-agent-secret", "step-ca-provisioner-password"):
        assert "result" in run.named(name).secret_outputs


def test_stack_outputs(dev_plan):
    from phoenix.pki import fingerprint_sha256
    out = dev_plan.run.outputs
    topo = dev_plan.topo
    assert set(out["guests"]) == {g.name for g in topo.lab.guests}
    assert out["guests"]["gateway"]["address"] == str(topo.gateway.address)
    assert out["guests"]["ca"]["url"] == topo.ca_url
    assert out["publicEntryPoints"] == [f"https://{h}/" for h in topo.public_hosts]
    assert out["rootCaFingerprint"] == fingerprint_sha256(out["rootCaCertificate"])
    assert len(out["rootCaFingerprint"]) == 64


def test_component_type_tokens_and_parents(dev_plan):
    tiers = {r.name: r for r in dev_plan.run.resources if r.type.startswith("phoenix:tier:")}
    assert {r.type for r in tiers.values()} >= {
        "phoenix:tier:Guests", "phoenix:tier:Pki", "phoenix:tier:Trust", "phoenix:tier:Dns",
        "phoenix:tier:Mesh", "phoenix:tier:Gateway", "phoenix:tier:Workloads", "phoenix:tier:Firewall"}
    guests_urn = tiers["guests"].urn
    for r in dev_plan.run.by_type(CONTAINER) + dev_plan.run.by_type(VM):
        assert r.parent == guests_urn
