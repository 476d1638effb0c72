"""Helpers shared by the disk tests: small source images built without the appliance.

Also tests the helpers themselves, so a broken fixture shows up as such.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

MiB = 1 << 20
# Not a whole number of MiB on purpose: presets that round up (Azure, GCP) must say so.
SOURCE_SIZE = 64 * MiB + 1536
IMGSMITH = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "imgsmith")


def make_source(path: Path, size: int = SOURCE_SIZE, seed: int = 7) -> Path:
    """A raw image with random blocks at a few offsets, a compressible run, and data in its last bytes."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for offset in (0, MiB + 7 * 512, 17 * MiB, 40 * MiB + 4096):
            f.seek(offset)
            f.write(rng.randbytes(256 * 1024))
        f.seek(20 * MiB)
        f.write(b"imgsmith compressible test pattern\n" * 60000)
        f.seek(size - 1536)
        f.write(rng.randbytes(1536))
    return path


def sha256(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    remaining = limit if limit is not None else -1
    with path.open("rb") as f:
        while remaining != 0:
            n = 4 * MiB if remaining < 0 else min(4 * MiB, remaining)
            chunk = f.read(n)
            if not chunk:
                break
            h.update(chunk)
            if remaining > 0:
                remaining -= len(chunk)
    return h.hexdigest()


def is_zero_after(path: Path, offset: int) -> bool:
    with path.open("rb") as f:
        f.seek(offset)
        while chunk := f.read(4 * MiB):
            if chunk.count(0) != len(chunk):
                return False
    return True


def qemu_info(path: Path, fmt: str) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, str(path)], check=True,
                         capture_output=True, text=True).stdout
    data: dict[str, object] = json.loads(out)
    return data


def to_raw(path: Path, fmt: str, out: Path) -> Path:
    """Convert back to raw with the format given explicitly (a fixed VHD probes as raw)."""
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(out)], check=True)
    return out


def assert_same_data(back: Path, source: Path) -> None:
    """*back* starts with exactly *source*'s bytes, and anything after them (size rounded up) is zero."""
    n = source.stat().st_size
    assert back.stat().st_size >= n
    assert sha256(back, n) == sha256(source)
    assert is_zero_after(back, n)


def test_make_source_is_sparse_and_sized(tmp_path: Path) -> None:
    src = make_source(tmp_path / "s.raw")
    assert src.stat().st_size == SOURCE_SIZE
    assert src.stat().st_blocks * 512 < 8 * MiB
    assert not is_zero_after(src, SOURCE_SIZE - 1536)
