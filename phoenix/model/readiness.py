"""Deploy readiness: the release checksums the install steps verify and the images' checksums
Proxmox checks every node's download against (Phoenix never guesses one).

``pulumi up`` refuses a stack without them before anything exists; the offline plan shows each
as a warning. This is the one place the list is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from phoenix.errors import problem
from phoenix.render.mesh import checksums_file, release_file

if TYPE_CHECKING:
    from phoenix.model.lab import Lab


def deploy_readiness(lab: Lab) -> list[str]:
    from phoenix.model.lab import UNPINNED
    pki, mesh, out = lab.pki, lab.mesh, []
    for key, image in sorted(lab.images.items()):
        if image.checksum == UNPINNED:
            out.append(problem(f"phoenix:images.{key}.checksum",
                               f"required to download {image.file_name}: the publisher's {image.checksum_algorithm} "
                               "of the file (its SHA512SUMS or template index), in place of the placeholder "
                               f"{UNPINNED!r}; Proxmox checks every node's download against it"))
    if not pki.step_ca_sha256:
        out.append(problem("phoenix:pki.stepCaSha256",
                           f"required to install step-ca {pki.step_ca_version}: the sha256 of its amd64 .deb "
                           "from the release's checksums.txt (Phoenix never guesses a checksum)"))
    if not pki.step_cli_sha256:
        out.append(problem("phoenix:pki.stepCliSha256",
                           f"required to install step-cli {pki.step_cli_version}: the sha256 of its amd64 .deb "
                           "from the release's checksums.txt"))
    if not mesh.traefik_sha256:
        out.append(problem("phoenix:mesh.traefikSha256",
                           f"required to install Traefik {mesh.traefik_version}: the sha256 of "
                           f"{release_file(mesh.traefik_version)} from the release's "
                           f"{checksums_file(mesh.traefik_version)}"))
    return out
