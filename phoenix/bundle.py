"""File bundles: what a remote step pushes to a guest, as one deterministic archive.

A bundle is a base64 gzip tar of files with absolute guest paths, owners and modes. The
same bytes for the same files (fixed mtimes, sorted entries), so a content change is the
only thing that re-runs a push. The offline plan unpacks bundles to show every pushed file.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class GuestFile:
    path: str            # absolute path in the guest
    content: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"

    def __post_init__(self):
        if not self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"guest file path must be absolute and plain: {self.path!r}")


def pack(files: list[GuestFile]) -> str:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(files, key=lambda f: f.path):
            data = f.content.encode()
            info = tarfile.TarInfo(f.path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), f.mode, 0
            info.uname, info.gname = f.owner, f.group
            info.uid = info.gid = 0
            tar.addfile(info, io.BytesIO(data))
    packed = gzip.compress(raw.getvalue(), mtime=0)
    return base64.b64encode(packed).decode()


def unpack(bundle: str) -> list[GuestFile]:
    raw = gzip.decompress(base64.b64decode(bundle))
    out = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for info in tar.getmembers():
            if info.isfile():
                data = tar.extractfile(info).read().decode()
                out.append(GuestFile("/" + info.name, data, info.mode, info.uname, info.gname))
    return out


def digest(files: list[GuestFile]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.mode:o}\0{f.owner}\0{f.group}\0".encode())
        h.update(hashlib.sha256(f.content.encode()).digest())
    return h.hexdigest()
