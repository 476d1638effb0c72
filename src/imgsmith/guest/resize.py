"""Grow a disk image, its last partition and that partition's filesystem - transactionally.

The safe approach, the same for qcow2 and raw: all the work happens in a qcow2
overlay over the disk (hidden, next to it). The overlay is grown to the new virtual
size with ``qemu-img resize``, the appliance is launched once on the overlay to move the partition's
end and grow the filesystem, and only when all of that succeeded is the overlay
committed into the disk (``qemu-img commit`` grows the base to the overlay's size,
raw or qcow2). Any failure before the commit leaves the disk byte-for-byte as it was;
the commit itself writes only the few changed clusters. Copying a raw disk instead
would double the space and time for no extra safety.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..disk import qemuimg
from ..disk.sizes import MiB, SizeSpec, format_size, round_up
from ..errors import GuestError, UsageError
from ..host.files import partial_dir
from .appliance import Drive, open_handle

__all__ = ["GuestGrowth", "ResizeResult", "grow_in_guest", "resize_disk", "target_size"]

log = logging.getLogger("imgsmith.disk")

Launcher = Callable[[Sequence[Drive]], Any]
RESIZABLE = ("qcow2", "raw")
_MBR_MAX_SECTOR = 2**32 - 1   # MBR addresses sectors with 32 bits


@dataclass(frozen=True)
class GuestGrowth:
    """What happened inside the appliance."""

    table: str | None                  # "gpt", "msdos" or None (filesystem on the whole disk)
    partition: int | None
    partition_size_before: int
    partition_size_after: int
    filesystem: str
    filesystem_size_before: int | None
    filesystem_size_after: int | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResizeResult:
    """The outcome of :func:`resize_disk`, as the CLI prints it."""

    path: Path
    format: str
    size_before: int
    size_after: int
    growth: GuestGrowth
    seconds: float

    def to_json(self) -> dict[str, Any]:
        g = self.growth
        return {"path": os.fspath(self.path), "format": self.format, "size_before": self.size_before,
                "size_after": self.size_after, "partition_table": g.table, "partition": g.partition,
                "partition_size_before": g.partition_size_before,
                "partition_size_after": g.partition_size_after, "filesystem": g.filesystem,
                "filesystem_size_before": g.filesystem_size_before,
                "filesystem_size_after": g.filesystem_size_after, "notes": list(g.notes),
                "seconds": round(self.seconds, 1)}


def target_size(path: Path, current: int, spec: SizeSpec) -> int:
    """The new virtual size: refuse shrinking (naming both sizes), round up to whole sectors."""
    wanted = spec.apply(current)
    if wanted < current:
        raise UsageError(f"refusing to shrink {path} from {format_size(current)} ({current} bytes) to "
                         f"{format_size(wanted)} ({wanted} bytes): shrinking is not supported")
    return round_up(wanted, 512)


def _fs_size(g: Any, device: str, fs: str) -> int | None:
    """Filesystem size in bytes from statvfs, mounting read-only for the look."""
    if fs not in ("ext2", "ext3", "ext4", "xfs", "btrfs"):
        return None
    g.mount_ro(device, "/")
    try:
        st = g.statvfs("/")
        return int(st["blocks"]) * int(st["frsize"])
    finally:
        g.umount_all()


def _grow_filesystem(g: Any, device: str, fs: str) -> str | None:
    """Grow *fs* on *device* to fill it; return a note, or raise for filesystems we cannot grow."""
    if fs in ("ext2", "ext3", "ext4"):
        g.e2fsck(device, correct=True)   # always -f: resize2fs insists on a freshly checked fs
        g.resize2fs(device)
    elif fs == "xfs":
        g.mount(device, "/")   # xfs grows only while mounted
        try:
            g.xfs_growfs("/", datasec=True)
        finally:
            g.umount_all()
    elif fs == "btrfs":
        g.mount(device, "/")
        try:
            g.btrfs_filesystem_resize("/")
        finally:
            g.umount_all()
    elif fs == "LVM2_member":
        g.pvresize(device)
        return f"{device}: LVM physical volume grown; extend the logical volume inside the guest"
    elif fs == "ntfs":
        g.ntfsresize(device)
    else:
        raise GuestError(f"cannot grow a {fs or 'unrecognised'} filesystem on {device}; the disk was not changed")
    return None


def _gpt_last_usable(g: Any, device: str, sector: int) -> int:
    """LastUsableLBA from the primary GPT header (LBA 1, offset 48).

    sgdisk, which ``part_expand_gpt`` runs, may align the usable area's end below
    ``total - 34``; parted refuses an end past the header's value, so read it.
    """
    header = bytes(g.pread_device(device, 92, sector))
    if header[:8] != b"EFI PART":
        raise GuestError(f"{device}: no primary GPT header where one was expected")
    return int.from_bytes(header[48:56], "little")


def _move_partition_end(g: Any, device: str, table: str) -> tuple[int, int, int, list[str]]:
    """Move the end of the last partition to the end of the disk; (number, size before, after, notes)."""
    parts = g.part_list(device)
    if not parts:
        raise GuestError(f"{device} has a {table} partition table but no partitions")
    last = max(parts, key=lambda p: int(p["part_end"]))
    num = int(last["part_num"])
    if table == "msdos" and num > 4:
        raise GuestError(f"the last partition ({num}) is a logical partition; growing it is not supported")
    sector = int(g.blockdev_getss(device))
    total = int(g.blockdev_getsize64(device)) // sector
    if table == "gpt":
        g.part_expand_gpt(device)   # move the backup GPT to the new end of the disk
        new_end = _gpt_last_usable(g, device, sector)
    else:
        new_end = total - 1
    notes: list[str] = []
    if table == "msdos" and new_end > _MBR_MAX_SECTOR:
        new_end = _MBR_MAX_SECTOR
        notes.append("an MBR partition cannot extend past 2 TiB; convert the disk to GPT to use the rest")
    old_end = (int(last["part_end"]) + 1) // sector - 1
    per_mib = MiB // sector
    aligned = (new_end + 1) // per_mib * per_mib - 1   # end on a MiB boundary when that still grows it
    if aligned > old_end:
        new_end = aligned
    if new_end > old_end:
        g.part_resize(device, num, new_end)
    after = next(int(p["part_size"]) for p in g.part_list(device) if int(p["part_num"]) == num)
    return num, int(last["part_size"]), after, notes


def grow_in_guest(g: Any, device: str = "/dev/sda") -> GuestGrowth:
    """With a launched handle: grow the last partition of *device* and its filesystem."""
    try:
        table: str | None = g.part_get_parttype(device)
    except RuntimeError:
        table = None   # no partition table: a filesystem on the whole disk
    if table is None:
        target, num, notes = device, None, list[str]()
        before = after = int(g.blockdev_getsize64(device))
    else:
        num, before, after, notes = _move_partition_end(g, device, table)
        target = f"{device}{num}"
    fs = g.vfs_type(target)
    fs_before = _fs_size(g, target, fs)
    note = _grow_filesystem(g, target, fs)
    if note:
        notes.append(note)
    fs_after = _fs_size(g, target, fs)
    return GuestGrowth(table, num, before, after, fs, fs_before, fs_after, tuple(notes))


def _open_resizable(path: Path, fmt: str | None) -> qemuimg.ImageInfo:
    info = qemuimg.open_image(path, fmt)
    if info.format not in RESIZABLE:
        raise UsageError(f"cannot resize a {info.format} image (only {', '.join(RESIZABLE)}); "
                         f"convert it to qcow2 first")
    if info.snapshots:
        raise UsageError(f"{path} has internal snapshots; resizing it would invalidate them")
    return info


def resize_disk(path: str | os.PathLike[str], size: SizeSpec, fmt: str | None = None, *,
                launcher: Launcher = open_handle) -> ResizeResult:
    """Grow *path* to *size*, then its last partition and filesystem, in one appliance launch."""
    start = time.monotonic()
    p = Path(path)
    info = _open_resizable(p, fmt)
    new = target_size(p, info.virtual_size, size)
    if not os.access(p, os.W_OK):
        raise UsageError(f"{p}: not writable")
    with partial_dir(p.with_name(p.name + ".resize")) as work:
        overlay = work / "overlay.qcow2"
        qemuimg.create_overlay(p, info.format, overlay)
        qemuimg.resize(overlay, "qcow2", new)   # grow the overlay only; DISK grows at the commit
        g = launcher([Drive(overlay, "qcow2")])
        try:
            growth = grow_in_guest(g)
            g.shutdown()
        finally:
            g.close()
        qemuimg.commit(overlay)
    after = qemuimg.info(p, info.format).virtual_size
    took = time.monotonic() - start
    log.info("%s: resized from %s to %s in %.1f s", p, format_size(info.virtual_size), format_size(after), took)
    return ResizeResult(p, info.format, info.virtual_size, after, growth, took)
