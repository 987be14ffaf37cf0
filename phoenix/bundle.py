"""File bundles: what a remote step pushes to a guest, as one deterministic archive.

A bundle is the base64 text of an uncompressed POSIX ustar archive (IEEE Std 1003.1,
"pax" utility, ustar interchange format) of regular files with absolute guest paths,
owners and modes, installed on the guest by ``base64 -d | tar -x`` (phoenix-apply, and the
bootstrap that installs it).

Why these choices: a step re-runs, and ``phoenix drift`` reports a change, whenever the
bytes of its stdin change, so the bytes must depend on the files and on nothing else.

* No compression: gzip's output depends on the zlib build (another distribution's Python,
  zlib-ng, a new zlib release give other bytes for the same input), so a compressed bundle
  would re-run every push step from a machine with another zlib. Uncompressed text also
  diffs readably.
* The headers are written here, field by field as the ustar format defines them, not by
  ``tarfile``, whose choices (PAX records, padding, field formatting) are its own and may
  change between Python versions. Fixed metadata: mtime 0, uid/gid 0 with the owner and
  group names of the file (GNU tar's ``--same-owner`` maps names on the guest and falls back
  to the ids only when a name is unknown there), entries sorted by path, two zero blocks at
  the end and no further padding to tar's 10 KiB record (readers do not need it).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

BLOCK = 512
#: (offset, length) of every ustar header field, from the format's definition.
FIELDS = {
    "name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
    "mtime": (136, 12), "chksum": (148, 8), "typeflag": (156, 1), "linkname": (157, 100),
    "magic": (257, 6), "version": (263, 2), "uname": (265, 32), "gname": (297, 32),
    "devmajor": (329, 8), "devminor": (337, 8), "prefix": (345, 155),
}
MAGIC, VERSION, REGULAR = b"ustar\0", b"00", b"0"


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


def _octal(value: int, length: int) -> bytes:
    """A numeric field: zero-padded octal digits and a terminating NUL."""
    digits = b"%0*o" % (length - 1, value)
    if len(digits) > length - 1:
        raise ValueError(f"{value} does not fit a {length}-byte ustar field")
    return digits + b"\0"


def _text(value: str, length: int, what: str, terminated: bool = False) -> bytes:
    """A text field, NUL-padded; ``terminated`` ones (uname, gname) always end in a NUL."""
    raw = value.encode()
    if len(raw) > length - terminated:
        raise ValueError(f"{what} {value!r} is longer than ustar's {length - terminated} bytes")
    return raw.ljust(length, b"\0")


def _split_path(rel: str) -> tuple[str, str]:
    """(prefix, name): ustar keeps up to 100 bytes in ``name`` and the leading directories
    (up to 155 bytes) in ``prefix``."""
    if len(rel.encode()) <= 100:
        return "", rel
    for cut in [i for i, c in enumerate(rel) if c == "/"][::-1]:
        prefix, name = rel[:cut], rel[cut + 1:]
        if len(name.encode()) <= 100 and len(prefix.encode()) <= 155:
            return prefix, name
    raise ValueError(f"guest file path {rel!r} is too long for a bundle (ustar: 155 + 100 bytes)")


def _put(block: bytearray, key: str, value: bytes) -> None:
    offset, length = FIELDS[key]
    block[offset:offset + length] = value


def _common_fields() -> bytes:
    """What every header of a bundle shares: owner ids 0, mtime 0, a regular file, no link,
    no device, and the checksum field as eight spaces while the sum is taken."""
    block = bytearray(BLOCK)
    for key, value in (("uid", _octal(0, 8)), ("gid", _octal(0, 8)), ("mtime", _octal(0, 12)),
                       ("chksum", b" " * 8), ("typeflag", REGULAR), ("magic", MAGIC), ("version", VERSION),
                       ("devmajor", _octal(0, 8)), ("devminor", _octal(0, 8))):
        _put(block, key, value)
    return bytes(block)


_COMMON = _common_fields()


def header(f: GuestFile, size: int) -> bytes:
    prefix, name = _split_path(f.path.lstrip("/"))
    block = bytearray(_COMMON)
    _put(block, "name", _text(name, 100, "path"))
    _put(block, "mode", _octal(f.mode & 0o7777, 8))
    _put(block, "size", _octal(size, 12))
    _put(block, "uname", _text(f.owner, 32, "owner", True))
    _put(block, "gname", _text(f.group, 32, "group", True))
    _put(block, "prefix", _text(prefix, 155, "path"))
    # The checksum: the sum of the header's bytes with the checksum field as eight spaces,
    # written as six octal digits, a NUL and a space.
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def archive(files: list[GuestFile]) -> bytes:
    """The ustar archive of ``files`` (sorted by path; a path given twice is refused)."""
    out, seen = bytearray(), set()
    for f in sorted(files, key=lambda f: f.path):
        if f.path in seen:
            raise ValueError(f"guest file {f.path} is in the bundle twice")
        seen.add(f.path)
        data = f.content.encode()
        out += header(f, len(data))
        out += data
        out += b"\0" * (-len(data) % BLOCK)
    out += b"\0" * (2 * BLOCK)
    return bytes(out)


def pack(files: list[GuestFile]) -> str:
    return base64.b64encode(archive(files)).decode()


def _field(block: bytes, key: str) -> bytes:
    offset, length = FIELDS[key]
    return block[offset:offset + length].split(b"\0", 1)[0]


def _number(block: bytes, key: str) -> int:
    return int(_field(block, key).strip() or b"0", 8)


def unpack(bundle: str) -> list[GuestFile]:
    """The files of a bundle (ValueError if it is not one: a ustar archive of regular files)."""
    raw = base64.b64decode(bundle, validate=True)
    out: list[GuestFile] = []
    pos = 0
    while pos + BLOCK <= len(raw):
        block = raw[pos:pos + BLOCK]
        if block == bytes(BLOCK):
            return out
        checksum = sum(block[:148]) + 8 * ord(" ") + sum(block[156:])
        if _field(block, "magic") != MAGIC[:-1] or _number(block, "chksum") != checksum:
            raise ValueError(f"not a ustar header at byte {pos}")
        if _field(block, "typeflag") not in (REGULAR, b""):
            raise ValueError(f"bundle entry at byte {pos} is not a regular file")
        size = _number(block, "size")
        prefix, name = _field(block, "prefix").decode(), _field(block, "name").decode()
        data = raw[pos + BLOCK:pos + BLOCK + size]
        if len(data) != size:
            raise ValueError("bundle ends inside a file")
        out.append(GuestFile("/" + (f"{prefix}/{name}" if prefix else name), data.decode(),
                             _number(block, "mode"), _field(block, "uname").decode(),
                             _field(block, "gname").decode()))
        pos += BLOCK + size + (-size % BLOCK)
    raise ValueError("bundle has no end-of-archive blocks")


def digest(files: list[GuestFile]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.mode:o}\0{f.owner}\0{f.group}\0".encode())
        h.update(hashlib.sha256(f.content.encode()).digest())
    return h.hexdigest()
