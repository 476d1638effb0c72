"""Growing the disk inside a guest session (``SessionOptions(grow_to=...)``, a build's ``size:``).

The image's virtual size is raised with ``qemu-img resize`` before the session opens (no
launch); then, before the OS is searched for, the session moves the end of the last
partition to the end of the disk and grows its filesystem: the appliance with
libguestfs's partition calls (:func:`imgsmith.guest.resize.grow_in_guest`, the code
``imgsmith resize`` uses), the chroot backend with sfdisk (the same end: the last whole
MiB, GPT's last usable sector, MBR's 2 TiB) and the filesystem's own tool on the loop
device. Same result either way, and no extra overlay, commit or launch: the session's
disk is already a throw-away overlay that is published only on success.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from .. import proc
from ..disk import qemuimg
from ..disk.sizes import MiB, SizeSpec, format_size
from ..errors import GuestError, ProcessError
from ..host.rollback import Session
from .blockdev import BlockDevice, Partition
from .resize import GuestGrowth, target_size

__all__ = ["grow_chroot", "grow_image"]

log = logging.getLogger("imgsmith.guest")
_MBR_MAX_SECTOR = 2**32 - 1


def grow_image(disk: Path, fmt: str, size: int | SizeSpec) -> int:
    """Raise *disk*'s virtual size to *size* (bytes, or a spec such as ``+2G``); the new size."""
    current = qemuimg.info(disk, fmt).virtual_size
    new = target_size(disk, current, size if isinstance(size, SizeSpec) else SizeSpec(size))
    if new > current:
        qemuimg.resize(disk, fmt, new)
        log.info("%s: virtual size %s -> %s", disk, format_size(current), format_size(new))
    return new


def _table(loop: str) -> dict[str, object] | None:
    try:
        out = proc.run(["sfdisk", "--json", loop]).stdout
    except ProcessError:
        return None  # no partition table: a filesystem on the whole disk
    table: dict[str, object] = json.loads(out)["partitiontable"]
    return table


def _sector(table: dict[str, object]) -> int:
    return int(str(table.get("sectorsize", 512)))


def _last(table: dict[str, object]) -> tuple[int, int, int]:
    """(number, start, size) in sectors of the partition that ends last."""
    parts = table.get("partitions") or []
    assert isinstance(parts, list)
    if not parts:
        raise GuestError("the disk has a partition table but no partitions")
    last = max(parts, key=lambda p: int(p["start"]) + int(p["size"]))
    number = int(re.search(r"(\d+)$", str(last["node"])).group(1))  # type: ignore[union-attr]
    return number, int(last["start"]), int(last["size"])


def _run(what: str, argv: list[str | Path], stdin: str | None = None) -> None:
    try:
        proc.run(argv, input=stdin.encode() if stdin is not None else None)
    except ProcessError as exc:
        raise GuestError(f"{what}: {exc.message}") from None


def _grow_fs(session: Session, part: Partition) -> None:
    if part.fstype in ("ext2", "ext3", "ext4"):
        r = proc.run(["e2fsck", "-f", "-y", part.device], check=False)  # resize2fs insists on a fresh check
        if r.returncode > 1:
            raise GuestError(f"e2fsck {part.name}: exit status {r.returncode}: {r.stdout.strip()[-200:]}")
        _run(f"resize2fs {part.name}", ["resize2fs", part.device])
        return
    if part.fstype not in ("xfs", "btrfs"):
        raise GuestError(f"cannot grow a {part.fstype or 'unrecognised'} filesystem on {part.name}; "
                         "the disk was not changed")
    from .mounts import mount_partition  # xfs and btrfs grow only while mounted

    target = session.dir / "grow"
    target.mkdir(exist_ok=True)
    mount_partition(session, part, target)
    try:
        argv: list[str | Path] = ["xfs_growfs", "-d", target] if part.fstype == "xfs" else \
            ["btrfs", "filesystem", "resize", "max", target]
        _run(f"growing {part.fstype} on {part.name}", argv)
    finally:
        session.pop_while("mount")


def _new_end(loop: str, table: dict[str, object], old_end: int) -> tuple[int, list[str]]:
    """Where the last partition ends after growing: the rules of ``imgsmith resize`` (guest/resize.py)."""
    total = int(Path(f"/sys/block/{Path(loop).name}/size").read_text()) * 512 // _sector(table)
    notes: list[str] = []
    if table.get("label") == "gpt":
        _run("moving the backup GPT", ["sfdisk", "--quiet", "--relocate", "gpt-bak-std", loop])
        new_end = int(str((_table(loop) or {}).get("lastlba", total - 34)))
    else:
        new_end = total - 1
        if new_end > _MBR_MAX_SECTOR:
            new_end = _MBR_MAX_SECTOR
            notes.append("an MBR partition cannot extend past 2 TiB; convert the disk to GPT to use the rest")
    per_mib = MiB // _sector(table)
    aligned = (new_end + 1) // per_mib * per_mib - 1  # end on a MiB boundary when that still grows it
    return (aligned if aligned > old_end else new_end), notes


def grow_chroot(session: Session, device: BlockDevice) -> GuestGrowth:
    """Move the last partition's end to the end of the (already larger) loop device; grow its filesystem."""
    table = _table(device.loop)
    if table is None:
        part = next((p for p in device.partitions if p.name == "/dev/sda"), None)
        if part is None:
            raise GuestError("cannot grow the disk: no partition table and no filesystem on it")
        _grow_fs(session, part)
        return GuestGrowth(None, None, 0, 0, part.fstype, None, None)
    number, start, size = _last(table)
    label = str(table.get("label"))
    if label == "dos" and number > 4:
        raise GuestError(f"the last partition ({number}) is a logical partition; growing it is not supported")
    new_end, notes = _new_end(device.loop, table, start + size - 1)
    if new_end > start + size - 1:
        _run(f"growing partition {number}", ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "-N",
                                             str(number), device.loop], stdin=f"{start}, {new_end - start + 1}\n")
        _run("partx --update", ["partx", "--update", "--nr", str(number), device.loop])  # the kernel's view
    part = next((p for p in device.partitions if p.name == f"/dev/sda{number}"), None)
    if part is None:
        raise GuestError(f"cannot grow the filesystem of partition {number}: none was found on it")
    _grow_fs(session, part)
    sector = _sector(table)
    return GuestGrowth("msdos" if label == "dos" else label, number, size * sector,
                       (max(new_end, start + size - 1) - start + 1) * sector, part.fstype, None, None, tuple(notes))
