"""Bundles: what every remote step pipes to its guest. Same files, same bytes, on any machine,
and the guest's own tools (GNU tar, phoenix-apply, the bootstrap command) install them."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT
from lab import require_tools
from phoenix.bundle import GuestFile, digest, pack, unpack
from phoenix.render import APPLY

FILES = [
    GuestFile("/etc/nginx/nginx.conf", "worker_processes auto;\n"),
    GuestFile("/etc/ssl/private/gateway.key", "-----BEGIN " + "PRIVATE KEY-----\nk\n", 0o640, "root", "ssl-cert"),
    GuestFile("/usr/local/lib/phoenix/reload.sh", "#!/bin/bash\nexit 0\n", 0o755),
    GuestFile("/etc/empty", ""),
    GuestFile("/etc/phoenix/naïve.txt", "é, and a block's worth: " + "x" * 600 + "\n"),
]


def archive(bundle: str) -> bytes:
    return base64.b64decode(bundle, validate=True)


def field(block: bytes, offset: int, length: int) -> bytes:
    return block[offset:offset + length]


def test_a_bundle_is_uncompressed_ustar_with_fixed_metadata_field_by_field():
    """Every header checked against the ustar format's definition (POSIX pax, "ustar
    Interchange Format"), independently of phoenix.bundle's own reader."""
    raw = archive(pack(FILES))
    assert not raw.startswith(b"\x1f\x8b"), "gzip magic: bundles must not be compressed"
    assert len(raw) % 512 == 0 and raw[-1024:] == bytes(1024), "two zero blocks end the archive"
    pos, seen = 0, []
    while raw[pos:pos + 512] != bytes(512):
        block = raw[pos:pos + 512]
        name = field(block, 0, 100).rstrip(b"\0").decode()
        prefix = field(block, 345, 155).rstrip(b"\0").decode()
        path = "/" + (f"{prefix}/{name}" if prefix else name)
        f = next(f for f in FILES if f.path == path)
        data = f.content.encode()
        assert field(block, 100, 8) == b"%07o\0" % f.mode
        assert field(block, 108, 8) == field(block, 116, 8) == b"0000000\0"      # uid, gid
        assert field(block, 124, 12) == b"%011o\0" % len(data)
        assert field(block, 136, 12) == b"00000000000\0"                          # mtime 0
        header_sum = sum(block[:148]) + 8 * ord(" ") + sum(block[156:])
        assert field(block, 148, 8) == b"%06o\0 " % header_sum
        assert field(block, 156, 1) == b"0"                                         # regular file
        assert field(block, 157, 100) == bytes(100)                                 # no link
        assert field(block, 257, 6) == b"ustar\0" and field(block, 263, 2) == b"00"
        assert field(block, 265, 32) == f.owner.encode().ljust(32, b"\0")
        assert field(block, 297, 32) == f.group.encode().ljust(32, b"\0")
        assert field(block, 329, 8) == field(block, 337, 8) == b"0000000\0"       # devmajor/minor
        assert field(block, 500, 12) == bytes(12)
        size = len(data) + (-len(data) % 512)
        assert raw[pos + 512:pos + 512 + size] == data.ljust(size, b"\0")
        seen.append(path)
        pos += 512 + size
    assert seen == sorted(f.path for f in FILES)
    assert raw[pos:] == bytes(1024)


def test_pythons_tarfile_reads_what_was_packed_without_pax_records():
    with tarfile.open(fileobj=io.BytesIO(archive(pack(FILES))), mode="r:") as tar:
        members = tar.getmembers()
        assert tar.pax_headers == {}
        for m in members:
            f = next(f for f in FILES if f.path == "/" + m.name)
            assert (m.type, m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime, m.pax_headers) == \
                (tarfile.REGTYPE, f.mode, 0, 0, f.owner, f.group, 0, {})
            assert tar.extractfile(m).read().decode() == f.content
    assert len(members) == len(FILES)


def test_the_same_files_give_the_same_bytes_without_any_compression_library(tmp_path):
    """Packed in a Python that cannot import zlib or gzip at all: byte for byte the same bundle
    (so a machine with another zlib build re-runs no step and `phoenix drift` sees no change)."""
    script = tmp_path / "pack.py"
    script.write_text(
        "import sys\n"
        "for name in ('zlib', 'gzip', '_compression', 'bz2', 'lzma'):\n"
        "    sys.modules[name] = None   # import fails\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from phoenix.bundle import GuestFile, pack\n"
        f"files = [GuestFile(*args) for args in {[(f.path, f.content, f.mode, f.owner, f.group) for f in FILES]!r}]\n"
        "sys.stdout.write(pack(list(reversed(files))))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    assert out == pack(FILES)


#: sha256 of the bundle of FILES. The bytes of a bundle are what decides whether a step re-runs
#: on every guest of every lab: change this only with a format change made on purpose (and
#: say so in docs/upgrading.md: every push step runs once more after it).
GOLDEN_SHA256 = "116502196cf85e6594e78babefcfb933dca744c7736cf48d49ff93adedbcbf5c"


def test_golden_bytes_hold_across_python_and_library_versions():
    assert hashlib.sha256(archive(pack(FILES))).hexdigest() == GOLDEN_SHA256


def test_the_bytes_are_what_gnu_tar_writes_in_ustar_format(tmp_path):
    """An independent writer: GNU tar, given the same files, owners, modes and mtime 0, writes
    the same bytes (and then pads its last record with zeros, which readers do not need)."""
    for f in FILES:
        target = tmp_path / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
        target.chmod(f.mode)
    gnu = tmp_path / "gnu.tar"
    for f in sorted(FILES, key=lambda f: f.path):
        subprocess.run(["tar", "--format=ustar", "--mtime=@0", f"--owner={f.owner}:0", f"--group={f.group}:0",
                        "-r", "-f", str(gnu), f.path.lstrip("/")], cwd=tmp_path, check=True)
    ours, theirs = archive(pack(FILES)), gnu.read_bytes()
    assert theirs[:len(ours)] == ours
    assert theirs[len(ours):] == bytes(len(theirs) - len(ours))


def test_round_trip_order_and_digest():
    assert unpack(pack(FILES)) == sorted(FILES, key=lambda f: f.path)
    assert pack(FILES) == pack(list(reversed(FILES)))
    assert digest(FILES) == digest(list(reversed(FILES))) != digest(FILES[:1])
    changed = [GuestFile(f.path, f.content, 0o600, f.owner, f.group) if f.mode == 0o640 else f for f in FILES]
    assert pack(changed) != pack(FILES) and digest(changed) != digest(FILES)


def test_long_paths_use_the_prefix_field_and_what_does_not_fit_is_refused():
    deep = GuestFile("/srv/" + "d" * 120 + "/" + "f" * 99, "x")
    assert unpack(pack([deep])) == [deep]
    with tarfile.open(fileobj=io.BytesIO(archive(pack([deep])))) as tar:
        assert "/" + tar.getnames()[0] == deep.path
    with pytest.raises(ValueError, match="too long"):
        pack([GuestFile("/srv/" + "f" * 101, "x")])      # a name of 101 bytes has nowhere to go
    with pytest.raises(ValueError, match="twice"):
        pack([FILES[0], FILES[0]])
    with pytest.raises(ValueError, match="owner"):
        pack([GuestFile("/etc/x", "x", owner="o" * 32)])
    with pytest.raises(ValueError):
        GuestFile("etc/relative", "x")


def test_what_is_not_a_bundle_is_refused():
    raw = bytearray(archive(pack(FILES[:1])))
    raw[0] ^= 1                                        # the checksum no longer matches
    for text in ('{"stack": "x"}', base64.b64encode(bytes(raw)).decode(),
                 base64.b64encode(b"plain text").decode(), pack(FILES)[:-700]):
        with pytest.raises(ValueError):
            unpack(text)


# -- the guest side: GNU tar, phoenix-apply, the bootstrap command -------------------------------
def test_gnu_tar_extracts_a_bundle_from_a_pipe_with_modes_and_no_warning(tmp_path):
    done = subprocess.run(f"base64 -d | tar -x -C {tmp_path} --same-permissions --no-overwrite-dir",
                          shell=True, input=pack(FILES), capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stderr == ""
    for f in FILES:
        target = tmp_path / f.path.lstrip("/")
        assert target.read_text() == f.content
        assert target.stat().st_mode & 0o7777 == f.mode
        assert target.stat().st_mtime == 0


def test_phoenix_apply_passes_bash_and_shellcheck():
    require_tools("shellcheck")
    script = str(ROOT / "configs/common/phoenix-apply.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True, check=False).returncode == 0
    done = subprocess.run(["shellcheck", "--severity=style", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


def test_phoenix_apply_installs_a_bundle(tmp_path):
    """The real script, with its --root and state directory in tmp_path."""
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "etc/nginx").mkdir(parents=True)
    (root / "etc/nginx/nginx.conf").write_text("old\n")
    done = subprocess.run(["bash", str(ROOT / "configs/common/phoenix-apply.sh"), "test-step",
                           "--root", str(root), "--check", f"grep -q auto {root}/etc/nginx/nginx.conf"],
                          input=pack(FILES), capture_output=True, text=True,
                          env={**os.environ, "PHOENIX_STATE": str(state)}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"phoenix-apply test-step: {len(FILES)} files applied"
    for f in FILES:
        target = root / f.path.lstrip("/")
        assert target.read_text() == f.content and target.stat().st_mode & 0o7777 == f.mode


def test_the_bootstrap_command_of_the_plan_installs_phoenix_apply(dev_plan, tmp_path):
    """Each guest's bootstrap step, its exact command with its bundle, with / moved to tmp_path."""
    step = dev_plan.run.named(f"{dev_plan.topo.dns.name}-bootstrap")
    create = step.value("create")
    assert create.count(" r=/; ") == 1 and '-C "$r"' in create
    moved = create.replace(" r=/; ", f" r={tmp_path}/; ")
    done = subprocess.run(["bash", "-c", moved], input=step.value("stdin"), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    installed = Path(f"{tmp_path}{APPLY}")
    assert installed.read_text() == (ROOT / "configs/common/phoenix-apply.sh").read_text()
    assert installed.stat().st_mode & 0o777 == 0o755
    helper = tmp_path / "usr/local/sbin/phoenix-nginx-reload"
    assert helper.read_text() == (ROOT / "configs/common/phoenix-nginx-reload.sh").read_text()
    # the boot-time recovery of cut-short applies, enabled as `systemctl enable` does it
    units = tmp_path / "etc/systemd/system"
    link = units / "sysinit.target.wants/phoenix-apply-recover.service"
    assert link.is_symlink() and link.resolve() == (units / "phoenix-apply-recover.service").resolve()
    assert "ExecStart=/usr/local/sbin/phoenix-apply --recover-all" in link.read_text()
