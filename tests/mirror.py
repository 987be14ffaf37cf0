"""The release mirror of the end-to-end lab, and the dev stack planned against it.

The guests download releases the lab cannot fetch (nothing leaves it): Traefik's release
tarball, smallstep's step-ca and step-cli .debs, and NVIDIA's user-space driver. The lab serves
them from one mirror on the network's gateway address (``stepca_harness.Mirror``: HTTPS with a
certificate from the plan's intermediate, which a guest trusts once its trust step ran), and
plans the stack with each file's sha256 as its pin, so every install step runs as written,
checksum gate included:

* Traefik: ``traefik_v<version>_linux_amd64.tar.gz`` around the real binary of the pinned
  version (``tools.traefik()``), laid out as upstream's (``traefik`` at the top); pinned in
  ``phoenix:mesh.traefikSha256``. Its URL is not a stack setting: the guests' ``curl``
  stand-in (tests/standins/curl) maps upstream's release URL to the mirror.
* step-ca and step-cli: ``stepca_harness.build_debs`` (dpkg-deb around the real step-ca),
  their URLs and pins set by ``stepca_harness.mirrored`` (``phoenix:pki.stepCa*``).
* NVIDIA: tests/standins/nvidia-installer.run for the node's driver version, at
  ``<phoenix:gpu.driverBaseUrl>/<version>/NVIDIA-Linux-x86_64-<version>.run`` (the setting for
  "a mirror for closed labs"), pinned in ``phoenix:gpu.driverSha256``.

The public ACME server is Pebble, on the lab's "internet" (tests/netlab.py): the stack's
``phoenix:acme.server`` is its directory URL, as a stack names any ACME server by URL.

The Traefik tarball (about 190 MB of binary) is built once and cached under the virtualenv.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from stepca_harness import MIRROR_PORT, build_debs, mirrored, sha256
from tools import TOOLS, traefik, traefik_version

STANDINS = Path(__file__).resolve().parent / "standins"
CACHE = TOOLS / "mirror"


def traefik_tarball() -> Path:
    """Upstream's release tarball around the real binary, built once (gzip level 1: the guest
    only checks its sha256 and unpacks it)."""
    binary = Path(traefik())
    version = traefik_version()
    stat = binary.stat()
    out = CACHE / f"{version}-{stat.st_size}-{int(stat.st_mtime)}" / f"traefik_v{version}_linux_amd64.tar.gz"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
        for name, data in (("LICENSE.md", b"The MIT License (MIT), see https://github.com/traefik/traefik\n"),
                           ("CHANGELOG.md", f"# v{version}\nPhoenix lab mirror of the Traefik release.\n".encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
        info = tar.gettarinfo(str(binary), arcname="traefik")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        with open(binary, "rb") as f:
            tar.addfile(info, f)
    partial.rename(out)
    return out


def nvidia_installer(tmp: Path, version: str) -> Path:
    """The installer stand-in for ``version``, with its payload (nvidia-smi) and the payload's sha256."""
    payload = (STANDINS / "nvidia-smi").read_text().replace("@VERSION@", version)
    head = (STANDINS / "nvidia-installer.run").read_text().replace("@VERSION@", version)
    head = head.replace("@PAYLOAD_SHA256@", hashlib.sha256(payload.encode()).hexdigest())
    out = tmp / f"NVIDIA-Linux-x86_64-{version}.run"
    out.write_text(head + payload)
    out.chmod(0o755)
    return out


class ReleaseMirror:
    """What the mirror serves (path -> file) and the stack planned against it."""

    def __init__(self, tmp: Path, gateway: str, step_ca_binary: str, step_ca_version: str, driver_version: str):
        self.gateway, self.driver_version = gateway, driver_version
        self.url = f"https://{gateway}:{MIRROR_PORT}"
        self.debs = build_debs(tmp, step_ca_binary, step_ca_version)
        self.step_ca_version = step_ca_version
        self.traefik = traefik_tarball()
        self.driver = nvidia_installer(tmp, driver_version)
        self.driver_path = f"/nvidia/{driver_version}/{self.driver.name}"
        self.traefik_sha256 = _cached_sha256(self.traefik)

    def files(self) -> dict[str, Path]:
        """URL path -> file, as the mirror serves them."""
        return {**{f"/{deb.name}": deb for deb in self.debs.values()}, f"/{self.traefik.name}": self.traefik,
                self.driver_path: self.driver}

    def stack(self, name: str, acme_directory: str):
        """The shipped stack ``name`` with every release from this mirror, pinned, and ``acme_directory``
        as its public ACME server."""
        def edit(raw: dict) -> None:
            raw["mesh"] = {**raw.get("mesh", {}), "traefikSha256": self.traefik_sha256}
            raw["gpu"] = {**raw.get("gpu", {}), "driverBaseUrl": f"{self.url}/nvidia",
                          "driverSha256": {self.driver_version: sha256(self.driver)}}
            raw["acme"] = {**raw["acme"], "server": acme_directory}
        return mirrored(name, self.debs, self.gateway, self.step_ca_version, edit)


def _cached_sha256(path: Path) -> str:
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists() and sidecar.stat().st_mtime >= path.stat().st_mtime:
        return sidecar.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    sidecar.write_text(digest.hexdigest())
    return digest.hexdigest()
