"""A FAT filesystem (the EFI System Partition) for the chroot backend when the host kernel cannot mount it.

Some build hosts run kernels without vfat (this project's CI is one), and a chroot session that
left ``/boot/efi`` unmounted would let a step's writes there land in the root filesystem while
the real ESP kept the old boot loader: a ``dnf update`` of shim or grub2-efi on a Rocky image,
or a ``--copy-in`` of a new ``grub.cfg``, would then boot the old files. So the partition's files
are copied with mtools into a tmpfs mounted at the mountpoint (sized like the partition, so a
write that would not fit the ESP fails as it would on the ESP) and, after the steps and before
the tmpfs is unmounted in order (the session's end, or sysprep's unmount before its device
operations), the differences are written back with mtools: new directories, new and changed
files, removals. FAT cannot hold symlinks, devices or owners, as a real vfat mount
cannot; a step that makes a symlink there gets a warning and the link is not written. A failed
session writes nothing back (its overlay is discarded anyway).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import GuestError, ProcessError
from ..host.rollback import Session
from .blockdev import Partition

__all__ = ["VfatMirror"]

log = logging.getLogger("imgsmith.guest")

_ENV = {"MTOOLS_SKIP_CHECK": "1"}  # a FAT made by mkfs.fat for another geometry is still fine
_DIR = "dir"
_OTHER = "other"


def _snapshot(top: Path) -> dict[str, str]:
    """Every path under *top* (relative, '/'-separated) -> ``dir``, ``other`` or its file's sha256."""
    found: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(top):  # symlinks to directories are listed, never entered
        rel_dir = os.path.relpath(dirpath, top)
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if os.path.islink(path):
                found[rel] = _OTHER
            elif os.path.isdir(path):
                found[rel] = _DIR
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    found[rel] = hashlib.file_digest(f, "sha256").hexdigest()
            else:
                found[rel] = _OTHER
    return found


@dataclass
class VfatMirror:
    """The files of one FAT partition, mirrored in a tmpfs at its mountpoint for one session."""

    part: Partition
    mountpoint: str  # in the guest: /boot/efi
    target: Path  # on the host, inside the mounted root
    before: dict[str, str]

    @classmethod
    def attach(cls, session: Session, part: Partition, target: Path, mountpoint: str) -> VfatMirror:
        """Mount a tmpfs at *target* (recorded in *session*) and copy the partition's files into it."""
        size = int(proc.run(["blockdev", "--getsize64", part.device]).stdout)
        proc.run(["mount", "-t", "tmpfs", "-o", f"size={max(size, 1 << 20)},mode=0700", "tmpfs", target])
        mirror = cls(part, mountpoint, target, {})
        # Written back whenever the tmpfs is unmounted in order: at the end of the session, and
        # also when sysprep unmounts everything before its device operations.
        session.push("mount", str(target), flush=mirror.write_back)
        mirror.copy_in()
        log.info("%s (%s, vfat): this host's kernel cannot mount vfat, so its files are copied into a tmpfs "
                 "with mtools and written back after the steps", mountpoint, part.name)
        return mirror

    @classmethod
    def load(cls, part: Partition, target: Path, mountpoint: str) -> VfatMirror:
        """The mirror of *part* in the empty directory *target*, whatever is mounted there."""
        mirror = cls(part, mountpoint, target, {})
        mirror.copy_in()
        return mirror

    def copy_in(self) -> None:
        """Copy the partition's files into the (empty) target and remember them as they were."""
        dev = self.part.device
        try:
            listing = proc.run(["mdir", "-a", "-b", "-i", dev, "::/"], env=_ENV).stdout
            top = [line.rstrip("/") for line in listing.splitlines() if line.startswith("::/")]
            if top:
                proc.run(["mcopy", "-s", "-m", "-n", "-Q", "-i", dev, *top, f"{self.target}/"], env=_ENV)
        except ProcessError as exc:
            raise GuestError(f"{self.mountpoint}: could not read {self.part.name} (vfat) with mtools: "
                             f"{exc.message}") from None
        self.before = _snapshot(self.target)

    def write_back(self) -> int:
        """Write what the steps changed under the mountpoint into the partition; returns the number of changes."""
        after = _snapshot(self.target)
        for rel, kind in sorted(after.items()):
            if kind == _OTHER and self.before.get(rel) != _OTHER:
                log.warning("%s/%s: not a regular file or directory, which FAT cannot hold; not written to %s",
                            self.mountpoint, rel, self.part.name)
        # removed, or a file that became a directory or back; what became a symlink stays as it was
        gone = {rel for rel, kind in self.before.items()
                if rel not in after or (after[rel] != _OTHER and (after[rel] == _DIR) != (kind == _DIR))}
        gone_dirs = sorted(r for r in gone if self.before[r] == _DIR)
        removals = sorted(r for r in gone if not any(r.startswith(f"{d}/") for d in gone_dirs))
        new_dirs = sorted((rel for rel, kind in after.items() if kind == _DIR and self.before.get(rel) != _DIR),
                          key=lambda r: (r.count("/"), r))
        files = sorted(rel for rel, kind in after.items()
                       if kind not in (_DIR, _OTHER) and self.before.get(rel) != kind)
        dev, changes = self.part.device, 0
        try:
            if removals:  # mdeltree removes a file or a whole directory
                self._mtools(["mdeltree", "-i", dev, *(f"::/{r}" for r in removals)])
            if new_dirs:
                self._mtools(["mmd", "-i", dev, *(f"::/{r}" for r in new_dirs)])
            for rel in files:
                self._mtools(["mcopy", "-o", "-m", "-D", "o", "-i", dev, self.target / rel, f"::/{rel}"])
            changes = len(gone) + len(new_dirs) + len(files)
        except ProcessError as exc:
            raise GuestError(f"{self.mountpoint}: writing the changes back into {self.part.name} (vfat) failed: "
                             f"{exc.message}") from None
        if changes:
            log.info("%s: wrote %d change(s) back into %s (vfat) with mtools", self.mountpoint, changes,
                     self.part.name)
        return changes

    @staticmethod
    def _mtools(argv: list[str | Path]) -> None:
        proc.run(argv, env=_ENV)
