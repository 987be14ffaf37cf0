"""GuestsTier: every LXC and VM of the lab, their images, the deploy key and each guest's bootstrap.

Ids are explicit (auto ids race on concurrent creates); disk, CPU, memory and network are
always set (omitted blocks fall back to defaults that force replacement later); tags are
lowercase and sorted as Proxmox stores them.

Day two (docs/day-two.md; the provider's rules: ``phoenix.diff.rules``):

* A guest's identity is its fixed VMID, an image's its file name on the node: a second one
  cannot exist beside the first, so each is replaced delete-first (``delete_before_replace``).
* VMs move between nodes by migration (``migrate=True``: the provider migrates on a node
  change instead of re-creating). Containers cannot be migrated by the provider (``node_name``
  is ForceNew): ``phoenix plan --against``/``phoenix diff`` refuse such a move.
* A VM's cloud-init user-data is a snippet named by its content: an edit is a new file beside
  the old one, never a replacement at the same path. The VM keeps the snippet it was created
  with (cloud-init reads user-data at first boot only, and the provider would re-create the VM
  for a new ``user_data_file_id``): the reference is ``ignore_changes`` and old snippets are
  kept on the node (``retain_on_delete``), so a VM's next start never misses its file.
"""

from __future__ import annotations

import hashlib
from functools import partial

import pulumi
import pulumi_proxmoxve as pve
import pulumi_tls as tls
from pulumi_command import remote

from components.base import APPLY, Context, GuestHandle, command_options, triggers
from components.workloads import gpu_node_probes
from phoenix.bundle import GuestFile, pack
from phoenix.model import Guest
from phoenix.model.lab import UNPINNED
from phoenix.render import APPLY_RECOVER_UNIT, NGINX_RELOAD_HELPER, config_text
from phoenix.render.guests import render_user_data
from phoenix.render.workloads import GPU_DEVICE_GID, GPU_DEVICE_MODE
from phoenix.topology import gpu_device_paths

#: start order: name service first, the CA before anything that asks it for certificates.
START_ORDER = {"dns": 1, "ca": 2, "mesh": 3, "gateway": 4, "gpu": 5, "portainer": 6, "agent": 7}


class GuestsTier(pulumi.ComponentResource):
    """Outputs for later tiers: ``handles`` (every guest's handle, by name) and ``driver_versions``
    (per GPU node, the NVIDIA driver version its probe reads)."""
    deploy_public_key: pulumi.Output[str]
    addresses: pulumi.Output[dict]
    handles: dict[str, GuestHandle]
    driver_versions: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, ctx: Context, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Guests", name, None, opts)
        lab, topo = ctx.lab, ctx.topo
        self._ctx = ctx
        pve_opts = pulumi.ResourceOptions(parent=self, provider=ctx.provider)
        self.deploy_key = tls.PrivateKey("deploy-key", tls.PrivateKeyArgs(algorithm="ED25519"),
                                         opts=pulumi.ResourceOptions(parent=self, protect=True))
        self.images = self._images(pve_opts)
        self.gpu_mappings = self._gpu_mappings(pve_opts)
        # GPU containers start only where their device nodes exist: probe each GPU node first
        # (it also reads the driver version the containers' user-space drivers must match).
        self.gpu_probes = gpu_node_probes(lab, topo, self.deploy_key.private_key_openssh, self)
        self.driver_versions = {node: probe.stdout for node, probe in self.gpu_probes.items()}
        self.handles = {}
        for g in lab.guests:
            resource = self._lxc(g, pve_opts) if g.kind == "lxc" else self._vm(g, pve_opts)
            handle = GuestHandle(g, resource, self._connection(g), mac=first_mac(resource))
            handle.ready = [self._bootstrap(handle)]
            self.handles[g.name] = handle
        self.deploy_public_key = self.deploy_key.public_key_openssh
        self.addresses = pulumi.Output.from_input({g.name: str(g.address) for g in lab.guests})
        self.register_outputs({"deploy_public_key": self.deploy_public_key, "addresses": self.addresses})

    # -- images, per node that needs them ------------------------------------------------
    def _images(self, opts) -> dict[tuple[str, str], pve.download.File]:
        lab, out = self._ctx.lab, {}
        for g in lab.guests:
            key = (g.image, g.node)
            if key in out:
                continue
            img = lab.images[g.image]
            out[key] = pve.download.File(
                f"image-{g.image}-{g.node}",
                pve.download.FileArgs(
                    node_name=g.node, datastore_id=lab.proxmox.image_datastore,
                    # cloud images go in as "import" content for import_from; they must be uncompressed.
                    content_type="vztmpl" if img.kind == "lxc" else "import",
                    url=img.url, file_name=img.file_name,
                    # Proxmox verifies the download against it; an unpinned one is planned only
                    # (a deployment refuses it: phoenix.model.readiness).
                    checksum=None if img.checksum == UNPINNED else img.checksum,
                    checksum_algorithm=None if img.checksum == UNPINNED else img.checksum_algorithm,
                    # never re-download because the URL's size changed (it would replace the file)
                    overwrite=False),
                opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(delete_before_replace=True)))
        return out

    def _gpu_mappings(self, opts) -> dict[str, pve.hardware.mapping.Pci]:
        out: dict[str, pve.hardware.mapping.Pci] = {}
        for g in self._ctx.lab.guests:
            if not g.gpu_mapping:
                continue
            if g.gpu_pci_id is None or g.gpu_pci_path is None:    # the model refuses it (model/checks.py)
                raise LookupError(f"guest {g.name}: gpuMapping {g.gpu_mapping} needs gpuPciId and gpuPciPath")
            maps = [pve.hardware.mapping.PciMapArgs(id=g.gpu_pci_id, node=g.node, path=g.gpu_pci_path)]
            out[g.gpu_mapping] = pve.hardware.mapping.Pci(
                f"gpu-mapping-{g.gpu_mapping}",
                pve.hardware.mapping.PciArgs(name=g.gpu_mapping, maps=maps,
                                             comment=f"GPU for {g.name}, managed by Phoenix"),
                opts=opts)
        return out

    # -- guests ----------------------------------------------------------------------------
    def _common(self, g: Guest) -> dict:
        return dict(node_name=g.node, vm_id=g.id,
                    description=f"{g.role} guest, managed by Phoenix",
                    tags=sorted({"phoenix", g.role, *g.tags}),
                    protection=g.role == "ca")

    def _dns_servers(self, g: Guest) -> list[str]:
        # Every guest resolves through the internal view; the DNS guest asks itself.
        return ["127.0.0.1"] if g.role == "dns" else [str(self._ctx.topo.dns.address)]

    def _lxc(self, g: Guest, opts) -> pve.ContainerLegacy:
        lab = self._ctx.lab
        net = lab.network
        # Root and the GPU services' group only (their users are in it), never every user.
        devices = [pve.ContainerLegacyDevicePassthroughArgs(path=p, mode=GPU_DEVICE_MODE, gid=GPU_DEVICE_GID)
                   for p in gpu_device_paths(g)]
        return pve.ContainerLegacy(
            g.name,
            pve.ContainerLegacyArgs(
                **self._common(g),
                unprivileged=True,
                start_on_boot=True, started=True,
                startup=pve.ContainerLegacyStartupArgs(order=START_ORDER[g.role], up_delay=5),
                cpu=pve.ContainerLegacyCpuArgs(cores=g.cores),
                memory=pve.ContainerLegacyMemoryArgs(dedicated=g.memory, swap=0),
                disk=pve.ContainerLegacyDiskArgs(datastore_id=lab.proxmox.datastore, size=g.disk),
                features=pve.ContainerLegacyFeaturesArgs(nesting=True),
                network_interfaces=[pve.ContainerLegacyNetworkInterfaceArgs(
                    name="eth0", bridge=net.bridge, vlan_id=net.vlan, firewall=True)],
                initialization=pve.ContainerLegacyInitializationArgs(
                    hostname=g.name,
                    dns=pve.ContainerLegacyInitializationDnsArgs(
                        domain=lab.domains.internal, servers=self._dns_servers(g)),
                    ip_configs=[pve.ContainerLegacyInitializationIpConfigArgs(
                        ipv4=pve.ContainerLegacyInitializationIpConfigIpv4Args(
                            address=f"{g.address}/{net.cidr.prefixlen}", gateway=str(net.gateway)))],
                    user_account=pve.ContainerLegacyInitializationUserAccountArgs(
                        keys=[self.deploy_key.public_key_openssh])),
                operating_system=pve.ContainerLegacyOperatingSystemArgs(
                    template_file_id=self.images[(g.image, g.node)].id, type="debian"),
                device_passthroughs=devices or None),
            # A newer template only matters to new containers: a changed template id would
            # replace a running guest, so it is ignored once the container exists.
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                protect=g.role == "ca", ignore_changes=["operatingSystem"], delete_before_replace=True,
                depends_on=[self.gpu_probes[g.node]] if devices else [])))

    def _vm(self, g: Guest, opts) -> pve.VmLegacy:
        lab, topo = self._ctx.lab, self._ctx.topo
        net = lab.network
        text = self.deploy_key.public_key_openssh.apply(partial(render_user_data, topo, g))
        user_data = pve.FileLegacy(
            f"{g.name}-user-data",
            pve.FileLegacyArgs(
                node_name=g.node, datastore_id=lab.proxmox.snippet_datastore, content_type="snippets",
                source_raw=pve.FileLegacySourceRawArgs(
                    file_name=text.apply(partial(snippet_name, g)), data=text)),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=True)))
        hostpcis = ([pve.VmLegacyHostpciArgs(device="hostpci0", mapping=g.gpu_mapping, pcie=True)]
                    if g.gpu_mapping else None)
        depends = [self.gpu_mappings[g.gpu_mapping]] if g.gpu_mapping else []
        return pve.VmLegacy(
            g.name,
            pve.VmLegacyArgs(
                **self._common(g), name=g.name,
                on_boot=True, started=True, stop_on_destroy=True, migrate=True,
                machine="q35" if g.gpu_mapping else None,
                startup=pve.VmLegacyStartupArgs(order=START_ORDER[g.role], up_delay=10),
                # cloud-init installs qemu-guest-agent first; the provider waits for it.
                agent=pve.VmLegacyAgentArgs(enabled=True, timeout="15m"),
                cpu=pve.VmLegacyCpuArgs(cores=g.cores, type="host"),
                memory=pve.VmLegacyMemoryArgs(dedicated=g.memory),
                disks=[pve.VmLegacyDiskArgs(interface="scsi0", datastore_id=lab.proxmox.datastore,
                                            import_from=self.images[(g.image, g.node)].id,
                                            size=g.disk, discard="on", ssd=True, iothread=True)],
                scsi_hardware="virtio-scsi-single",
                network_devices=[pve.VmLegacyNetworkDeviceArgs(bridge=net.bridge, vlan_id=net.vlan,
                                                               model="virtio", firewall=True)],
                operating_system=pve.VmLegacyOperatingSystemArgs(type="l26"),
                initialization=pve.VmLegacyInitializationArgs(
                    datastore_id=lab.proxmox.datastore,
                    dns=pve.VmLegacyInitializationDnsArgs(domain=lab.domains.internal,
                                                          servers=self._dns_servers(g)),
                    ip_configs=[pve.VmLegacyInitializationIpConfigArgs(
                        ipv4=pve.VmLegacyInitializationIpConfigIpv4Args(
                            address=f"{g.address}/{net.cidr.prefixlen}", gateway=str(net.gateway)))],
                    user_data_file_id=user_data.id),
                hostpcis=hostpcis),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                depends_on=depends, delete_before_replace=True,
                ignore_changes=["initialization.userDataFileId"])))

    # -- reaching a guest ------------------------------------------------------------------
    def _connection(self, g: Guest) -> remote.ConnectionArgs:
        lab = self._ctx.lab
        key = self.deploy_key.private_key_openssh
        proxy = None
        if lab.proxmox.ssh_via_node:
            node = next(n for n in lab.proxmox.nodes if n.name == g.node)
            proxy = remote.ProxyConnectionArgs(host=str(node.address), port=node.ssh_port,
                                               user=lab.proxmox.ssh_user, private_key=key,
                                               dial_error_limit=30, per_dial_timeout=10)
        # A fresh guest may not run sshd yet: keep dialling for a while before failing.
        return remote.ConnectionArgs(host=str(g.address), user="root", private_key=key, proxy=proxy,
                                     dial_error_limit=60, per_dial_timeout=10)

    def _bootstrap(self, handle: GuestHandle) -> remote.Command:
        """Wait until the guest is up, then install phoenix-apply, which every later step uses,
        with what makes its applies safe to cut short (its boot-time recovery, enabled as
        ``systemctl enable`` would: a link in sysinit.target.wants) and the nginx reload that
        waits for the new configuration."""
        g = handle.guest
        units = "/etc/systemd/system"
        files = [GuestFile(APPLY, config_text("common/phoenix-apply.sh"), 0o755),
                 GuestFile(NGINX_RELOAD_HELPER, config_text("common/phoenix-nginx-reload.sh"), 0o755),
                 GuestFile(f"{units}/{APPLY_RECOVER_UNIT}", config_text(f"common/{APPLY_RECOVER_UNIT}"))]
        wait = "cloud-init status --wait >/dev/null || true; " if g.kind == "vm" else ""
        wants = f"${{r}}{units.lstrip('/')}/sysinit.target.wants"
        create = (f"set -eu; {wait}command -v tar >/dev/null; r=/; "
                  'base64 -d | tar -x -C "$r" --same-owner --same-permissions --no-overwrite-dir; '
                  f'test -x "${{r}}{APPLY.lstrip("/")}"; mkdir -p "{wants}"; '
                  f'ln -sfn ../{APPLY_RECOVER_UNIT} "{wants}/{APPLY_RECOVER_UNIT}"')
        return remote.Command(
            f"{g.name}-bootstrap",
            remote.CommandArgs(connection=handle.connection, create=create, stdin=pack(files),
                               triggers=triggers(handle), add_previous_output_in_env=False),
            opts=command_options(self, [handle.resource]))


def snippet_name(g: Guest, text: str) -> str:
    """A user-data snippet's file name, from its content: an edit is a new file, never the old
    path rewritten (a replacement at the same path lets the old resource's delete remove it)."""
    return f"phoenix-{g.name}-user-data-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"


def first_mac(resource: pve.ContainerLegacy | pve.VmLegacy) -> pulumi.Output[str]:
    """The MAC address of the guest's first interface, as the provider reads it from Proxmox."""
    nics = (resource.network_interfaces if isinstance(resource, pve.ContainerLegacy)
            else resource.network_devices)
    return nics.apply(lambda found: (found[0].mac_address or "") if found else "")
