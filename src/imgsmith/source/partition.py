"""Partitioned raw disks on the host: layout, loop devices, mounts, and their teardown.

The host kernel here does not scan partition tables (``losetup -P`` makes no
partition nodes), so partitions are announced explicitly with ``partx -a``. Every
resource is registered on an :class:`contextlib.ExitStack` the moment it exists,
so any failure, ``KeyboardInterrupt`` or ``SIGTERM`` (turned into an exception by
the CLI) unwinds mounts, partitions and loop devices in reverse order.

A build killed with SIGKILL cannot unwind; :func:`reap` cleans up after it the
next time the same build runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .. import proc
from ..errors import ImgsmithError, ProcessError
from ..host.loopdev import forget_stale_partitions

__all__ = [
    "ESP_GUID",
    "Layout",
    "Partitioning",
    "attach",
    "bind_mounts",
    "layout_for",
    "mount",
    "reap",
    "sfdisk_script",
    "write_at",
]

log = logging.getLogger("imgsmith.source")

MiB = 1 << 20
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69C8477DE4"
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
SECTOR = 512
ESP_SECTORS = 126 * MiB // SECTOR
"""The ESP's size: 126 MiB, so root starts at 128 MiB (Debian's cloud images use 127 MiB at the end of the
disk's first 128 MiB); comfortably FAT32, and room for shim, grub and a second boot loader."""


class Partitioning(StrEnum):
    """``mbr``: one bootable Linux partition at 1 MiB. ``gpt``: a 1 MiB BIOS boot partition, then root."""

    MBR = "mbr"
    GPT = "gpt"


@dataclass(frozen=True)
class Layout:
    """Which partitions the disk has: the table type, root's number, and the boot partitions (None: absent).

    ``esp_start`` is in sectors: the ESP is written into the raw disk at that offset as a
    finished FAT image (the host kernel has no vfat, so it is never mounted).
    """

    partitioning: Partitioning
    root_partition: int
    bios_boot: int | None = None
    esp: int | None = None
    esp_start: int = 0

    @property
    def esp_offset(self) -> int:
        return self.esp_start * SECTOR


def layout_for(partitioning: Partitioning, firmware: str = "bios") -> Layout:
    """The partitions for a table and a firmware (``bios``, ``uefi``, ``hybrid``); root is always last.

    GRUB on a BIOS/GPT disk needs a BIOS boot partition for its core image; UEFI needs an
    ESP; hybrid has both, like Debian's official cloud images (which boot either way).
    """
    if firmware == "uefi":
        return Layout(Partitioning.GPT, 2, esp=1, esp_start=2048)
    if firmware == "hybrid":
        return Layout(Partitioning.GPT, 3, bios_boot=1, esp=2, esp_start=4096)
    if partitioning is Partitioning.MBR:
        return Layout(partitioning, 1)
    return Layout(partitioning, 2, bios_boot=1)


def sfdisk_script(layout: Layout | Partitioning) -> str:
    """The sfdisk input for *layout*; the root partition takes the rest of the disk."""
    if isinstance(layout, Partitioning):
        layout = layout_for(layout)
    if layout.partitioning is Partitioning.MBR:
        return "label: dos\nstart=2048, type=83, bootable\n"
    lines = ["label: gpt"]
    if layout.bios_boot is not None:
        lines.append(f"start=2048, size=2048, type={BIOS_BOOT_GUID}, name=bios-boot")
    if layout.esp is not None:
        lines.append(f"start={layout.esp_start}, size={ESP_SECTORS}, type={ESP_GUID}, name=esp")
    root_start = layout.esp_start + ESP_SECTORS if layout.esp is not None else 4096
    lines.append(f"start={root_start}, type={LINUX_FS_GUID}, name=root")
    return "\n".join(lines) + "\n"


def write_at(disk: Path, offset: int, image: Path, chunk: int = MiB) -> None:
    """Copy *image* into *disk* at byte *offset*, skipping all-zero chunks (the disk is sparse and zeroed)."""
    with image.open("rb") as src, disk.open("r+b") as dst:
        at = offset
        while block := src.read(chunk):
            if block.count(0) != len(block):
                dst.seek(at)
                dst.write(block)
            at += len(block)
        dst.flush()
        os.fsync(dst.fileno())


def _wait_for_node(node: Path, timeout: float = 10.0) -> None:
    """devtmpfs creates partition nodes asynchronously after BLKPG; give it a moment."""
    deadline = time.monotonic() + timeout
    while not node.exists():
        if time.monotonic() > deadline:
            raise ImgsmithError(f"partition device {node} did not appear after partx -a",
                                hint="is the loop module loaded and /dev a devtmpfs?")
        time.sleep(0.05)


def _detach(loop: str) -> None:
    """Forget the partitions, then the loop device; partx -d first or losetup -d leaves them behind."""
    with contextlib.suppress(ProcessError):
        proc.run(["partx", "-d", loop])
    for attempt in range(5):
        try:
            proc.run(["losetup", "-d", loop])
        except ProcessError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
        else:
            return


@contextlib.contextmanager
def attach(image: Path, partition: int) -> Iterator[tuple[str, Path]]:
    """Attach a raw *image* to a loop device and yield ``(loop device, partition node)``."""
    loop = proc.run(["losetup", "--find", "--show", image]).stdout.strip()
    try:
        forget_stale_partitions(loop)
        proc.run(["partx", "-a", loop])
        node = Path(f"{loop}p{partition}")
        _wait_for_node(node)
        yield loop, node
    finally:
        _detach(loop)


def _umount(target: Path) -> None:
    """Unmount, retrying briefly (a just-exited process may still hold the mount), then lazily."""
    for attempt in range(5):
        try:
            proc.run(["umount", target])
        except ProcessError:
            time.sleep(0.2 * (attempt + 1))
        else:
            return
    proc.run(["umount", "--lazy", target])


@contextlib.contextmanager
def mount(device: Path | str, target: Path, *, options: str | None = None) -> Iterator[Path]:
    """Mount *device* on *target* for the duration of the block."""
    target.mkdir(parents=True, exist_ok=True)
    argv: list[str | os.PathLike[str]] = ["mount"]
    if options:
        argv += ["-o", options]
    proc.run([*argv, device, target])
    try:
        yield target
    finally:
        _umount(target)


@contextlib.contextmanager
def bind_mounts(root: Path, names: tuple[str, ...] = ("dev", "proc", "sys")) -> Iterator[None]:
    """Bind the host's /dev, /proc, /sys into *root*: grub-install probes devices through them."""
    with contextlib.ExitStack() as stack:
        for name in names:
            target = root / name
            target.mkdir(exist_ok=True)
            proc.run(["mount", "--bind", f"/{name}", target])
            stack.callback(_umount, target)
        yield


def _mounts_under(directory: Path) -> list[str]:
    """Mount points at or below *directory*, deepest first (the order they must be unmounted in)."""
    prefix = os.fspath(directory.resolve())
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _loops_backed_by(image: Path) -> list[str]:
    try:
        out = proc.run(["losetup", "--noheadings", "--output", "NAME", "--associated", image]).stdout
    except ProcessError:
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def reap(directory: Path, *, quiet: bool = False) -> None:
    """Remove a build directory: first its mounts and loop devices, then its files.

    Used after every build and for directories left by a killed one. Files are
    deleted only when nothing is mounted below any more: deleting through a
    leftover bind mount of /dev would delete the host's device nodes. Callers hold
    the lock of the build that owned *directory*, so nothing else uses it.
    """
    if not directory.exists():
        return
    if not quiet:
        log.warning("cleaning up after an interrupted build in %s", directory)
    for point in _mounts_under(directory):
        with contextlib.suppress(ProcessError):
            proc.run(["umount", "--lazy", point])
    for image in directory.glob("*.raw"):
        for loop in _loops_backed_by(image):
            with contextlib.suppress(ProcessError):
                _detach(loop)
    if _mounts_under(directory):
        log.error("%s still has mounts below it; left in place for manual cleanup", directory)
        return
    shutil.rmtree(directory, ignore_errors=True)
