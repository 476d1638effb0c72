"""Finding the guest's root among the exposed filesystems and mounting it as /etc/fstab says.

The chroot backend's counterpart of the appliance's inspect + mount: probe each Linux
filesystem for an OS root, mount the chosen one, then mount what its fstab lists
(matched by UUID, LABEL, PARTUUID or device name, which the guest knows as /dev/sdX,
/dev/vdX or /dev/nvme0n1pX). Images this backend cannot handle (LVM, encryption,
RAID, Windows, another architecture) raise :class:`ChrootUnsupported`, so ``auto`` can
fall back to the appliance.
"""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path

from .. import proc
from ..errors import GuestError, ProcessError
from ..host.rollback import Session
from .blockdev import BlockDevice, Partition
from .chroot import ChrootGuest, ChrootUnsupported, resolve_in_root
from .treeinspect import choose_root, fstab_entries, inspect_tree, looks_like_root

__all__ = ["mount_guest"]

log = logging.getLogger("imgsmith.guest")

LINUX_FS = ("ext2", "ext3", "ext4", "xfs", "btrfs")
_UNSUPPORTED = {"LVM2_member": "an LVM physical volume", "crypto_LUKS": "LUKS-encrypted",
                "linux_raid_member": "a software RAID member", "zfs_member": "a ZFS pool member"}
_READONLY = {"ext2": "ro,noload", "ext3": "ro,noload", "ext4": "ro,noload", "xfs": "ro,norecovery", "btrfs": "ro"}
# Every clone of an XFS image shares its UUID, and the kernel refuses a second XFS with a UUID already
# mounted (another build, a test, the host's own disk cloned): nouuid lifts that check for our mounts.
_ALWAYS = {"xfs": "nouuid"}
_HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def _kernel_has(fstype: str) -> bool:
    try:
        return any(line.split()[-1] == fstype for line in Path("/proc/filesystems").read_text().splitlines())
    except OSError:
        return True


def _mount(session: Session, part: Partition, target: Path, options: str | None = None) -> None:
    argv: list[str | Path] = ["mount", "-t", part.fstype]
    options = ",".join(o for o in (options, _ALWAYS.get(part.fstype)) if o)
    if options:
        argv += ["-o", options]
    try:
        proc.run([*argv, part.device, target])
    except ProcessError as exc:
        hint = None if _kernel_has(part.fstype) else \
            f"the host kernel has no {part.fstype} support loaded (modprobe {part.fstype}), or use --backend appliance"
        raise GuestError(f"could not mount {part.name} ({part.fstype}) on the host: {exc.message}", hint=hint) \
            from None
    session.push("mount", str(target))


def _match(spec: str, parts: list[Partition]) -> Partition | None:
    key, _, value = spec.partition("=")
    by = {"UUID": "uuid", "LABEL": "label", "PARTUUID": "partuuid", "PARTLABEL": "partlabel"}
    m = re.fullmatch(r"/dev/disk/by-(uuid|label|partuuid|partlabel)/(.+)", spec)
    if m:
        key, value = m.group(1).upper(), m.group(2)
    if key in by and value:
        value = value.strip("\"'")
        return next((p for p in parts if getattr(p, by[key]).lower() == value.lower()), None)
    m = re.fullmatch(r"/dev/(?:[shv]|xv)d[a-z](\d*)|/dev/nvme\d+n\d+(?:p(\d+))?", spec)
    if m:
        number = m.group(1) or m.group(2) or ""
        return next((p for p in parts if p.name == f"/dev/sda{number}"), None)
    return None


def _find_roots(session: Session, device: BlockDevice, candidates: list[Partition]) -> dict[str, str]:
    """Device name -> description of every candidate that holds an OS root (each mounted read-only briefly)."""
    probe = session.dir / "probe"
    probe.mkdir(exist_ok=True)
    roots: dict[str, str] = {}
    for part in candidates:
        try:
            _mount(session, part, probe, _READONLY[part.fstype])
        except GuestError as exc:
            log.warning("%s", exc.message)
            continue
        try:
            g = ChrootGuest(probe, device, session, network=False)
            if looks_like_root(g):
                text = g.read_text("/etc/os-release") if g.is_file("/etc/os-release", follow=True) else ""
                m = re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.MULTILINE)
                roots[part.name] = m.group(1) if m else part.fstype
        finally:
            session.pop_while("mount")
    return roots


def mount_guest(session: Session, device: BlockDevice, *, root_choice: str = "single",
                network: bool = True) -> ChrootGuest:
    """Mount the guest's OS under a session directory and return the inspected guest."""
    for part in device.partitions:
        if part.fstype in _UNSUPPORTED:
            raise ChrootUnsupported(f"{part.name} is {_UNSUPPORTED[part.fstype]}: the chroot backend mounts plain "
                                    "filesystems only", hint="use --backend appliance")
    candidates = [p for p in device.partitions if p.fstype in LINUX_FS]
    if not candidates and any(p.fstype == "ntfs" for p in device.partitions):
        raise ChrootUnsupported("this looks like a Windows guest: the chroot backend handles Linux guests only",
                                hint="use --backend appliance")
    if len(candidates) == 1:  # the common cloud image: skip the read-only probe
        roots = {candidates[0].name: candidates[0].fstype}
    else:
        roots = _find_roots(session, device, candidates)
    chosen = choose_root(list(roots), root_choice, lambda r: roots[r])
    root_part = next(p for p in candidates if p.name == chosen)
    root = session.dir / "root"
    root.mkdir(exist_ok=True)
    _mount(session, root_part, root)
    guest = ChrootGuest(root, device, session, network=network)
    if not looks_like_root(guest):
        session.pop_while("mount")
        choose_root([], root_choice, str)  # raises "no operating system was found"
    mountpoints = {"/": chosen}
    for spec, mp, _fstype, _opts in sorted(fstab_entries(guest), key=lambda e: e[1].count("/")):
        if mp == "/":
            continue
        sub = _match(spec, device.partitions)
        if sub is None:
            log.warning("/etc/fstab: %s for %s is not on this disk; not mounted", spec, mp)
            continue
        target = Path(resolve_in_root(str(root), mp, follow=True))
        if not target.is_dir():
            log.warning("/etc/fstab: mountpoint %s does not exist in the guest; %s not mounted", mp, sub.name)
            continue
        _mount(session, sub, target)
        mountpoints[mp] = sub.name
    guest.os = inspect_tree(guest, chosen, tuple(sorted(mountpoints.items())))
    host = _HOST_ARCH.get(platform.machine(), platform.machine())
    if guest.os.arch not in ("unknown", host):
        raise ChrootUnsupported(f"the guest is {guest.os.arch} and this host is {host}: its programs cannot run here",
                                hint="use --backend appliance")
    return guest
