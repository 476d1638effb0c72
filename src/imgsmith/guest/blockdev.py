"""A disk image as a host block device, for the chroot backend: loop device plus partition nodes.

Two ways, both measured by ``bench/backends``:

* ``fuse`` (default): qemu-storage-daemon exports the image (any format, its whole backing
  chain, writes going into the top qcow2) as a FUSE file (:mod:`imgsmith.host.fuse`), and a
  loop device sits on that file. Nothing is copied; this host has no nbd module, so this is the way to get a block
  device out of a qcow2 without converting it.
* ``raw``: ``qemu-img convert`` the image to a sparse raw file, loop it, and on success write
  back only the clusters that differ from the image's backing file (``convert -B``).

The host kernel here does not scan partition tables on loop devices (``losetup -P`` makes
no nodes), so ``partx -a`` adds them. Every step is recorded in the rollback session.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import GuestError, ProcessError
from ..host.files import fsync_dir, fsync_file
from ..host.fuse import fuse_export
from ..host.loopdev import forget_stale_partitions
from ..host.rollback import Session

__all__ = ["METHODS", "BlockDevice", "Partition", "expose"]

log = logging.getLogger("imgsmith.guest")

METHODS = ("fuse", "raw")


@dataclass(frozen=True)
class Partition:
    """One probed filesystem (or LVM/RAID member) on the exposed disk."""

    device: str  # host node: /dev/loop3p1 (or /dev/loop3 for a whole-disk filesystem)
    name: str  # what the guest (and the appliance backend) calls it: /dev/sda1
    fstype: str
    uuid: str = ""
    label: str = ""
    partuuid: str = ""
    partlabel: str = ""


@dataclass
class BlockDevice:
    loop: str
    partitions: list[Partition]
    method: str
    image: Path
    raw: Path | None = None

    def write_back(self) -> None:
        """Raw method only: put the changes back into the image (after the loop device is gone)."""
        if self.raw is None:
            return
        info = json.loads(proc.run(["qemu-img", "info", "--output=json", "-U", self.image]).stdout)
        tmp = self.image.with_name(f".{self.image.name}.writeback")
        argv: list[str | os.PathLike[str]] = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2"]
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        if backing:
            argv += ["-B", backing, "-F", info.get("backing-filename-format", "qcow2")]
        try:
            proc.run([*argv, self.raw, tmp])
            fsync_file(tmp)
            tmp.replace(self.image)
            fsync_dir(self.image.parent)
        finally:
            tmp.unlink(missing_ok=True)


def _raw_copy(session: Session, image: Path, fmt: str, workdir: Path) -> Path:
    raw = workdir / f"chroot-{os.getpid()}-{time.monotonic_ns()}.raw"
    session.push("path", str(raw))
    proc.run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "raw", image, raw])
    return raw


def _probe(device: str) -> dict[str, str]:
    """blkid's low-level probe of one node (no cache, no udev): TYPE, UUID, LABEL, PARTUUID, ..."""
    try:
        out = proc.run(["blkid", "-p", "-o", "export", device]).stdout
    except ProcessError:
        return {}  # nothing recognisable (exit 2), e.g. a BIOS boot or empty partition
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _partitions(loop: str) -> list[Partition]:
    base = os.path.basename(loop)
    sys_dir = Path(f"/sys/block/{base}")
    numbers = sorted(int(p.name[len(base) + 1:]) for p in sys_dir.glob(f"{base}p*"))
    nodes = [(f"{loop}p{n}", f"/dev/sda{n}") for n in numbers] or [(loop, "/dev/sda")]
    found = []
    for node, name in nodes:
        tags = _probe(node)
        if tags.get("TYPE"):
            found.append(Partition(node, name, tags["TYPE"], tags.get("UUID", ""), tags.get("LABEL", ""),
                                   tags.get("PART_ENTRY_UUID", tags.get("PARTUUID", "")),
                                   tags.get("PART_ENTRY_NAME", "")))
    return found


def expose(session: Session, image: Path, fmt: str, *, method: str = "fuse",
           workdir: Path | None = None) -> BlockDevice:
    """Attach *image* as a loop device with partition nodes; every step recorded in *session*."""
    if method not in METHODS:
        raise GuestError(f"unknown exposure method '{method}' (choose from {', '.join(METHODS)})")
    if method == "fuse":
        backing = fuse_export(session, image, fmt)
        raw = None
    else:
        raw = backing = _raw_copy(session, image, fmt, workdir or image.parent)
    try:
        loop = proc.run(["losetup", "--find", "--show", backing]).stdout.strip()
    except ProcessError as exc:
        raise GuestError(f"could not attach a loop device: {exc.message}",
                         hint="the chroot backend needs loop devices (modprobe loop)") from None
    session.push("loop", loop)
    forget_stale_partitions(loop)
    try:
        proc.run(["partx", "-a", loop])
    except ProcessError:
        log.debug("%s: no partition table; looking for a whole-disk filesystem", image)
    return BlockDevice(loop, _partitions(loop), method, image, raw)
