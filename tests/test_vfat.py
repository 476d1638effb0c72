"""The chroot backend's mtools mirror of a FAT partition (guest/vfat.py), on a real FAT image file.

No root needed: mtools reads and writes an image file as it does the ESP's partition node, and
the mirror's directory is a plain one here (the backend mounts a tmpfs there). test_arch.py runs
the whole path on a bootstrapped image.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from imgsmith.errors import GuestError
from imgsmith.guest.blockdev import Partition
from imgsmith.guest.vfat import VfatMirror

ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def _fat(path: Path, kib: int, files: dict[str, bytes]) -> Partition:
    subprocess.run(["mkfs.fat", "-C", path, str(kib)], check=True, capture_output=True)
    for name, data in files.items():
        parts = name.split("/")
        for depth in range(1, len(parts)):
            subprocess.run(["mmd", "-D", "s", "-i", path, "::/" + "/".join(parts[:depth])], env=ENV,
                           capture_output=True, check=False)  # exists already: skipped
        src = path.parent / "src"
        src.write_bytes(data)
        subprocess.run(["mcopy", "-i", path, src, f"::/{name}"], env=ENV, check=True)
        src.unlink()
    return Partition(device=str(path), name="/dev/sda15", fstype="vfat")


def _tree(image: Path) -> dict[str, bytes | None]:
    listing = subprocess.run(["mdir", "-/", "-a", "-b", "-i", image, "::/"], env=ENV, check=True,
                             capture_output=True, text=True).stdout.split()
    return {e.removeprefix("::/").rstrip("/"): None if e.endswith("/") else
            subprocess.run(["mtype", "-i", image, e], env=ENV, check=True, capture_output=True).stdout
            for e in listing}


def test_write_back_applies_exactly_the_steps_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = tmp_path / "esp.img"
    part = _fat(image, 8192, {"EFI/BOOT/BOOTX64.EFI": b"loader", "EFI/debian/grub.cfg": b"old cfg",
                              "EFI/old/a.txt": b"a", "EFI/old/deep/b.txt": b"b", "EFI/becomes-dir": b"f",
                              "EFI/link-over": b"kept"})
    target = tmp_path / "mnt"
    target.mkdir()
    mirror = VfatMirror.load(part, target, "/boot/efi")
    assert (target / "EFI/debian/grub.cfg").read_bytes() == b"old cfg"
    assert mirror.write_back() == 0  # nothing changed: nothing written
    untouched = image.read_bytes()
    assert mirror.write_back() == 0 and image.read_bytes() == untouched

    (target / "EFI/debian/grub.cfg").write_bytes(b"new cfg")  # rewritten
    (target / "EFI/new/sub").mkdir(parents=True)  # two new directories and a file in them
    (target / "EFI/new/sub/Mixed.Case.txt").write_bytes(b"n")
    for p in sorted((target / "EFI/old").rglob("*"), reverse=True):  # a whole tree removed
        p.unlink() if p.is_file() else p.rmdir()
    (target / "EFI/old").rmdir()
    (target / "EFI/becomes-dir").unlink()  # a file replaced by a directory
    (target / "EFI/becomes-dir").mkdir()
    (target / "EFI/link-over").unlink()  # FAT has no symlinks: warned, the file stays
    (target / "EFI/link-over").symlink_to("BOOT/BOOTX64.EFI")
    with caplog.at_level(logging.INFO, logger="imgsmith.guest"):
        changes = mirror.write_back()
    assert changes == 1 + 3 + 4 + 2  # grub.cfg; new, new/sub, the file; old and its three; becomes-dir out, in
    assert _tree(image) == {
        "EFI": None, "EFI/BOOT": None, "EFI/BOOT/BOOTX64.EFI": b"loader", "EFI/debian": None,
        "EFI/debian/grub.cfg": b"new cfg", "EFI/new": None, "EFI/new/sub": None,
        "EFI/new/sub/Mixed.Case.txt": b"n", "EFI/becomes-dir": None, "EFI/link-over": b"kept"}
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["/boot/efi/EFI/link-over: not a regular file or directory, which FAT cannot hold; "
                        "not written to /dev/sda15",
                        "/boot/efi: wrote 10 change(s) back into /dev/sda15 (vfat) with mtools"]


def test_a_full_partition_is_one_error_naming_the_mountpoint(tmp_path: Path) -> None:
    image = tmp_path / "esp.img"
    part = _fat(image, 200, {"EFI/BOOT/BOOTX64.EFI": b"loader"})
    target = tmp_path / "mnt"
    target.mkdir()
    mirror = VfatMirror.load(part, target, "/boot/efi")
    (target / "EFI/BOOT/huge.bin").write_bytes(os.urandom(400 << 10))
    with pytest.raises(GuestError) as err:
        mirror.write_back()
    assert err.value.message.startswith("/boot/efi: writing the changes back into /dev/sda15 (vfat) failed: ")
    assert "Disk full" in err.value.message


def test_a_partition_that_is_not_fat_is_one_error(tmp_path: Path) -> None:
    image = tmp_path / "not-fat.img"
    image.write_bytes(bytes(1 << 20))
    target = tmp_path / "mnt"
    target.mkdir()
    with pytest.raises(GuestError, match=r"^/boot/efi: could not read /dev/sda15 \(vfat\) with mtools: "):
        VfatMirror.load(Partition(device=str(image), name="/dev/sda15", fstype="vfat"), target, "/boot/efi")
