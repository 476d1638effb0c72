"""Block-device identity: filesystem UUIDs and LVM PV/VG UUIDs, changed with the guest unmounted.

These run after every filesystem operation (virt-sysprep's "perform on devices" pass),
because tools such as xfs_admin refuse to change a mounted filesystem's UUID.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GuestError
from .base import SysprepContext, SysprepOperation, SysprepPhase

__all__ = ["FsUuids", "LvmUuids"]


@dataclass(frozen=True)
class FsUuids(SysprepOperation):
    """Off by default: /etc/fstab and the boot loader still name the old UUIDs (RHBZ#991641)."""

    name = "fs-uuids"
    heading = "Change filesystem UUIDs"
    default = False
    phase = SysprepPhase.DEVICES

    def apply(self, ctx: SysprepContext) -> list[str]:
        changed: list[str] = []
        for device, fstype in ctx.guest.filesystems():
            try:
                ctx.guest.set_fs_uuid_random(device)
            except GuestError as exc:
                ctx.warn(f"fs-uuids: cannot set a random UUID on {device} ({fstype}): {exc.message}")
                continue
            changed.append(device)
        return changed


@dataclass(frozen=True)
class LvmUuids(SysprepOperation):
    """Clones attached to one host would otherwise present duplicate PVs and VGs to LVM."""

    name = "lvm-uuids"
    heading = "Change LVM2 PV and VG UUIDs"
    phase = SysprepPhase.DEVICES

    def apply(self, ctx: SysprepContext) -> list[str]:
        if ctx.os.type != "linux":
            return []
        return ["LVM2 physical volumes and volume groups"] if ctx.guest.lvm_change_uuids() else []
