"""Finding the guest's root among the exposed filesystems and mounting it as /etc/fstab says.

The chroot backend's counterpart of the appliance's inspect + mount: probe each Linux
filesystem for an OS root, mount the chosen one, then mount what its fstab lists
(matched by UUID, LABEL, PARTUUID or device name, which the guest knows as /dev/sdX,
/dev/vdX or /dev/nvme0n1pX). Images this backend cannot handle (LVM, encryption,
RAID, Windows, another architecture) raise :class:`ChrootUnsupported`, so ``auto`` can
fall back to the appliance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import proc
from ..errors import GuestError, ProcessError
from ..host.rollback import Session
from .api import OSInfo
from .blockdev import BlockDevice, Partition
from .chroot import ChrootGuest, ChrootUnsupported, resolve_in_root
from .treeinspect import (
    LINUX_FS,
    TreeReader,
    choose_root,
    complete,
    find_roots,
    fstab_mountpoints,
    inspect_root,
    looks_like_root,
    mount_order,
)
from .vfat import VfatMirror

__all__ = ["ChrootDevices", "check_supported", "mount_guest", "mount_partition"]

log = logging.getLogger("imgsmith.guest")

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


class ChrootDevices:
    """The DeviceMap of an exposed disk: the probed partitions under the appliance's names (/dev/sdaN)."""

    def __init__(self, device: BlockDevice) -> None:
        self.parts = device.partitions

    def find_tag(self, tag: str, value: str) -> str | None:
        attr = {"UUID": "uuid", "LABEL": "label", "PARTUUID": "partuuid", "PARTLABEL": "partlabel"}[tag]
        return next((p.name for p in self.parts if getattr(p, attr) and getattr(p, attr).lower() == value.lower()),
                    None)

    def disks(self) -> list[str]:
        return ["/dev/sda"]

    def is_partition(self, device: str) -> bool:
        return device != "/dev/sda" and any(p.name == device for p in self.parts)

    def canonical_lv(self, mapper: str) -> str | None:
        return None  # LVM guests never reach this backend (ChrootUnsupported)


def _probe(session: Session, device: BlockDevice,
           by_name: dict[str, Partition]) -> Callable[[str], contextlib.AbstractContextManager[TreeReader | None]]:
    probe_dir = session.dir / "probe"
    probe_dir.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def probe(name: str) -> Iterator[TreeReader | None]:
        part = by_name[name]
        try:
            _mount(session, part, probe_dir, _READONLY[part.fstype])
        except GuestError as exc:
            log.warning("%s", exc.message)
            yield None
            return
        try:
            yield ChrootGuest(probe_dir, device, session, network=False)
        finally:
            session.pop_while("mount")
    return probe


def _mount_rest(session: Session, root: Path, info: OSInfo, by_name: dict[str, Partition],
                device: BlockDevice) -> None:
    others = {p.name: p for p in device.partitions}
    for mp, name in mount_order(info.mountpoints):
        sub = by_name.get(name)
        if sub is None and name in others and others[name].fstype == "vfat":
            sub = others[name]  # the ESP
        if sub is None and name in others:
            log.warning("/etc/fstab: %s (%s, %s) not mounted: the chroot backend mounts Linux filesystems and FAT "
                        "only, so a step's writes under %s stay in the root filesystem", mp, name,
                        others[name].fstype or "unknown filesystem", mp)
            continue
        if sub is None:
            log.warning("/etc/fstab: %s for %s is not on this disk; not mounted", name, mp)
            continue
        target = Path(resolve_in_root(str(root), mp, follow=True))
        if not target.is_dir():
            log.warning("/etc/fstab: mountpoint %s does not exist in the guest; %s not mounted", mp, sub.name)
            continue
        if sub.fstype == "vfat":
            _mount_fat(session, sub, target, mp)
        else:
            _mount(session, sub, target)


def _modprobe(module: str) -> bool:
    try:
        return proc.run(["modprobe", "-q", module], check=False).returncode == 0
    except ProcessError:  # no modprobe at all (a container)
        return False


def _mount_fat(session: Session, part: Partition, target: Path, mountpoint: str) -> None:
    """The ESP: the kernel's vfat where it has one (loaded on demand by mount), else a mtools mirror."""
    if _kernel_has("vfat") or _modprobe("vfat"):
        try:
            _mount(session, part, target, "umask=0077")
        except GuestError as exc:
            log.debug("%s; copying it with mtools instead", exc.message)
        else:
            return
    VfatMirror.attach(session, part, target, mountpoint)  # written back when unmounted in order


def mount_partition(session: Session, part: Partition, target: Path) -> None:
    """Mount one guest filesystem read-write at a host directory (recorded in *session*)."""
    _mount(session, part, target)


def check_supported(device: BlockDevice) -> list[Partition]:
    """The Linux filesystems of *device*; raise ChrootUnsupported for what this backend cannot mount."""
    for part in device.partitions:
        if part.fstype in _UNSUPPORTED:
            raise ChrootUnsupported(f"{part.name} is {_UNSUPPORTED[part.fstype]}: the chroot backend mounts plain "
                                    "filesystems only", hint="use --backend appliance")
    candidates = [p for p in device.partitions if p.fstype in LINUX_FS]
    if not candidates and any(p.fstype == "ntfs" for p in device.partitions):
        raise ChrootUnsupported("this looks like a Windows guest: the chroot backend handles Linux guests only",
                                hint="use --backend appliance")
    return candidates


def mount_guest(session: Session, device: BlockDevice, *, root_choice: str = "single",
                network: bool = True, known: OSInfo | None = None) -> ChrootGuest:
    """Mount the guest's OS under a session directory and return the inspected guest.

    The rules are the appliance backend's (:mod:`imgsmith.guest.treeinspect`); with
    *known* facts from an earlier layer the root and mountpoints are taken as they are.
    """
    candidates = check_supported(device)
    by_name = {p.name: p for p in candidates}
    devices = ChrootDevices(device)
    root = session.dir / "root"
    root.mkdir(exist_ok=True)
    guest = ChrootGuest(root, device, session, network=network)
    if known is not None:
        _mount(session, _known_part(by_name, known.root), root)
        info = dataclasses.replace(known, mountpoints=fstab_mountpoints(guest, known.root, devices))
    elif len(candidates) == 1:  # the common cloud image: skip the read-only probe
        _mount(session, candidates[0], root)
        if not looks_like_root(guest):
            session.pop_while("mount")
            choose_root([], root_choice, str)  # raises "no operating system was found"
        choose_root([candidates[0].name], root_choice, str)
        info = inspect_root(guest, candidates[0].name, devices)
    else:
        roots = {i.root: i for i in find_roots([p.name for p in candidates], _probe(session, device, by_name),
                                               devices)}
        info = roots[choose_root(list(roots), root_choice, lambda r: roots[r].product_name)]
        _mount(session, by_name[info.root], root)
    _mount_rest(session, root, info, by_name, device)
    guest.os = complete(info, guest) if known is not None or mount_order(info.mountpoints) else info
    host = _HOST_ARCH.get(platform.machine(), platform.machine())
    if guest.os.arch not in ("unknown", host):
        from ..host.binfmt import binfmt_problem
        problem = binfmt_problem(guest.os.arch)  # qemu-user through binfmt_misc runs a foreign guest's programs
        if problem is not None:
            raise ChrootUnsupported(f"the guest is {guest.os.arch} and this host is {host}: {problem}",
                                    hint="scripts/setup.sh installs and registers qemu-user-static")
    return guest


def _known_part(by_name: dict[str, Partition], name: str) -> Partition:
    if name not in by_name:
        raise GuestError(f"{name}: the root an earlier layer found is not on this disk")
    return by_name[name]
