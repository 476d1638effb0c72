"""vmdkstream.rewrite against the real qemu-img: splice a few changed grains into a streamOptimized VMDK.

The reference is always ``qemu-img convert -O vmdk -o subformat=streamOptimized`` of the
new content. Its only per-run difference is the descriptor's ``CID`` (qemu draws it with
``g_random_int()`` at create and again at the first write, and prints it with ``%x``, so
even its length varies and shifts the rest of the descriptor text); ``_masked`` therefore
compares the descriptor as text up to its NUL with the CID value blanked, and every other
byte of the file exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from imgsmith.disk.vmdkstream import rewrite
from imgsmith.errors import ImageError

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")

MiB = 1 << 20
GRAIN = 64 << 10
SIZE = 40 * MiB + 3 * 512  # two grain tables (32 MiB each) and a partial last grain


def qemu_img(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *(os.fspath(a) for a in args)], capture_output=True, text=True, check=False)


def to_stream(raw: Path, vmdk: Path) -> Path:
    done = qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk)
    assert done.returncode == 0, done.stderr
    return vmdk


def make_disk(path: Path, size: int, seed: int) -> Path:
    """Sparse raw disk: islands of random and of compressible data, written zeros, and holes."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for _ in range(14):
            f.seek(rng.randrange(0, size - 400_000))
            kind = rng.choice(["random", "text", "zeros"])
            n = rng.randrange(1, 400_000)
            f.write(rng.randbytes(n) if kind == "random" else b"\0" * n if kind == "zeros" else
                    (b"imgsmith %d\n" % rng.randrange(10**6)) * (n // 16))
        f.seek(1 * MiB)
        f.write(rng.randbytes(3 * GRAIN))  # the test turns these grains to zeros
        f.seek(size - 5000)
        f.write(rng.randbytes(5000))  # data in the partial last grain
    return path


def apply(x: Path, y: Path, changes: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """Y = X with the changes written over it; returns the (offset, length) ranges."""
    shutil.copyfile(x, y)
    with y.open("r+b") as f:
        for offset, data in changes:
            f.seek(offset)
            f.write(data)
    return [(offset, len(data)) for offset, data in changes]


def reader(raw: Path, calls: list[tuple[int, int]]) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        with raw.open("rb") as f:
            return os.pread(f.fileno(), length, offset)

    return read


def _masked(path: Path) -> bytes:
    """The file with the descriptor cut at its NUL and its random CID blanked (see module docstring)."""
    data = path.read_bytes()
    offset, size = (n * 512 for n in struct.unpack_from("<QQ", data, 28))
    text = data[offset:offset + size].split(b"\0", 1)[0]
    text, count = re.subn(rb"^CID=[0-9a-f]+$", b"CID=<random>", text, flags=re.MULTILINE)
    assert count == 1
    return data[:offset] + text + b"\0<descriptor end>" + data[offset + size:]


def cid(path: Path) -> bytes:
    match = re.search(rb"^CID=([0-9a-f]+)$", path.read_bytes()[512:512 * 21], re.MULTILINE)
    assert match
    return match[1]


def assert_valid_stream(raw: Path, vmdk: Path, size: int) -> None:
    compared = qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, vmdk)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    checked = qemu_img("check", "-f", "vmdk", vmdk)
    assert checked.returncode == 0 and "No errors were found" in checked.stdout, checked.stdout + checked.stderr
    info = json.loads(qemu_img("info", "--output=json", "-f", "vmdk", vmdk).stdout)
    assert info["virtual-size"] == size
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """X as raw and as qemu's streamOptimized VMDK, shared read-only by the tests."""
    base = tmp_path_factory.mktemp("old")
    x = make_disk(base / "x.raw", SIZE, seed=1)
    return x, to_stream(x, base / "disk.vmdk")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_scattered_changes(old: tuple[Path, Path], tmp_path: Path) -> None:
    x, vmdk = old
    before = sha256(vmdk)
    rng = random.Random(2)
    y = tmp_path / "y.raw"
    changed = apply(x, y, [
        (5 * MiB + 1234, rng.randbytes(777)),  # unaligned, inside one grain
        (10 * MiB + 100, rng.randbytes(200_000)),  # overlapping pair, unaligned
        (10 * MiB + 150_000, rng.randbytes(100_000)),
        (1 * MiB - 10, bytes(3 * GRAIN + 20)),  # data -> zeros: those grains must vanish
        (20 * MiB + 4097, rng.randbytes(5000)),  # hole -> data
        (32 * MiB - 300, rng.randbytes(600)),  # across the two grain tables
        (SIZE - 700, rng.randbytes(700)),  # the partial last grain at the very end
    ])
    (tmp_path / "new").mkdir()
    dest = tmp_path / "new" / "disk.vmdk"
    calls: list[tuple[int, int]] = []
    rewrite(vmdk, dest, changed=changed, read=reader(y, calls), virtual_size=SIZE)
    assert_valid_stream(y, dest, SIZE)
    # Same bytes as a fresh conversion of Y, apart from the random CID; old is untouched.
    assert _masked(dest) == _masked(to_stream(y, tmp_path / "disk.vmdk"))
    assert cid(dest) == cid(vmdk)
    assert sha256(vmdk) == before
    touched = {g for o, n in changed for g in range(o // GRAIN, -(-(o + n) // GRAIN))}
    assert {g for o, n in calls for g in range(o // GRAIN, -(-(o + n) // GRAIN))} == touched
    assert all(offset % GRAIN == 0 and n <= 4 * MiB for offset, n in calls)


def test_whole_disk_matches_qemu(tmp_path: Path) -> None:
    """Every grain re-read and recompressed: the output is what qemu-img itself writes."""
    x = make_disk(tmp_path / "x.raw", 24 * MiB, seed=3)
    y = make_disk(tmp_path / "y.raw", 24 * MiB, seed=4)
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    vmdk = to_stream(x, tmp_path / "old" / "disk.vmdk")
    dest = tmp_path / "new" / "disk.vmdk"
    calls: list[tuple[int, int]] = []
    rewrite(vmdk, dest, changed=[(0, 24 * MiB)], read=reader(y, calls), virtual_size=24 * MiB)
    assert _masked(dest) == _masked(to_stream(y, tmp_path / "disk.vmdk"))
    assert_valid_stream(y, dest, 24 * MiB)
    assert all(offset % GRAIN == 0 and 0 < n <= 4 * MiB for offset, n in calls)


def test_no_change_is_a_copy(old: tuple[Path, Path], tmp_path: Path) -> None:
    x, vmdk = old
    same_name = tmp_path / vmdk.name
    rewrite(vmdk, same_name, changed=[], read=reader(x, []), virtual_size=SIZE)
    assert same_name.read_bytes() == vmdk.read_bytes()
    # Another name changes only the extent line of the descriptor, as qemu would write it.
    renamed = tmp_path / "other-name.vmdk"
    rewrite(vmdk, renamed, changed=[(0, 0)], read=reader(x, []), virtual_size=SIZE)
    assert b'SPARSE "other-name.vmdk"' in renamed.read_bytes()[512:512 * 21]
    assert_valid_stream(x, renamed, SIZE)


def test_unchanged_grains_are_never_read(old: tuple[Path, Path], tmp_path: Path) -> None:
    x, vmdk = old
    y = tmp_path / "y.raw"
    changed = apply(x, y, [(3 * GRAIN + 5, b"x" * 10), (7 * MiB + GRAIN - 1, b"yz"), (SIZE - 1, b"!")])
    allowed = [(o // GRAIN * GRAIN, -(-(o + n) // GRAIN) * GRAIN) for o, n in changed]
    inner = reader(y, [])
    calls: list[tuple[int, int]] = []

    def guarded(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        if not any(lo <= offset and offset + length <= min(hi, SIZE) for lo, hi in allowed):
            raise AssertionError(f"read({offset}, {length}) outside the changed grains")
        return inner(offset, length)

    dest = tmp_path / "disk.vmdk"
    rewrite(vmdk, dest, changed=changed, read=guarded, virtual_size=SIZE)
    assert calls == [(3 * GRAIN, GRAIN), (7 * MiB, 2 * GRAIN), (SIZE // GRAIN * GRAIN, SIZE % GRAIN)]
    assert_valid_stream(y, dest, SIZE)


def _corrupt_marker(vmdk: Path, out: Path) -> Path:
    """A copy whose second grain's marker names the wrong LBA: only found while copying grains."""
    data = bytearray(vmdk.read_bytes())
    gt = struct.unpack_from("<I", data, struct.unpack_from("<Q", data, 56)[0] * 512)[0]
    entries = [e for e in struct.unpack_from("<512I", data, gt * 512) if e]
    struct.pack_into("<Q", data, entries[1] * 512, 12345)
    out.write_bytes(data)
    return out


@pytest.mark.parametrize(("case", "message"), [
    ("raw", "not a VMDK"),
    ("qcow2", "not a VMDK"),
    ("monolithicSparse", "not streamOptimized"),
    ("truncated-header", "truncated"),
    ("truncated-grains", "truncated"),
    ("corrupt-marker", "corrupt grain marker"),
    ("capacity", "capacity is"),
])
def test_bad_old_image(old: tuple[Path, Path], tmp_path: Path, case: str, message: str) -> None:
    x, vmdk = old
    bad = tmp_path / "bad.img"
    size = SIZE
    if case == "raw":
        shutil.copyfile(x, bad)
    elif case == "qcow2":
        assert qemu_img("convert", "-f", "raw", "-O", "qcow2", x, bad).returncode == 0
    elif case == "monolithicSparse":
        assert qemu_img("convert", "-f", "raw", "-O", "vmdk", x, bad).returncode == 0
    elif case == "corrupt-marker":
        _corrupt_marker(vmdk, bad)
    else:
        shutil.copyfile(vmdk, bad)
        if case == "capacity":
            size = SIZE + GRAIN
        else:
            with bad.open("r+b") as f:
                f.truncate(30_000 if case == "truncated-header" else vmdk.stat().st_size // 2)
    dest = tmp_path / "dest.vmdk"
    with pytest.raises(ImageError) as caught:
        rewrite(bad, dest, changed=[(0, GRAIN)], read=reader(x, []), virtual_size=size)
    assert str(bad) in str(caught.value) and message in str(caught.value)
    assert not dest.exists()


def test_failing_read_leaves_no_dest(old: tuple[Path, Path], tmp_path: Path) -> None:
    _, vmdk = old

    def read(offset: int, length: int) -> bytes:
        raise OSError(5, "Input/output error")

    dest = tmp_path / "dest.vmdk"
    with pytest.raises(OSError, match="Input/output"):
        rewrite(vmdk, dest, changed=[(20 * MiB, 1)], read=read, virtual_size=SIZE)
    assert not dest.exists()
    with pytest.raises(ValueError, match="outside"):
        rewrite(vmdk, dest, changed=[(SIZE, 1)], read=read, virtual_size=SIZE)
    assert not dest.exists()
