"""Which machines an image is boot-tested on: its architecture and every firmware its layout supports.

Read from the image itself (:mod:`imgsmith.disk.layout`): an MBR disk or a BIOS boot
partition means SeaBIOS; an EFI System Partition means OVMF (x86_64) or AAVMF
(aarch64), by the removable boot loader on it; a signed shim there adds Secure Boot.
A firmware asked for that the image cannot boot with is refused before qemu starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..disk.layout import DiskLayout, read_layout
from ..errors import UsageError
from .firmware import Firmware
from .test import BootMachine

__all__ = ["machines_for", "machines_for_layout"]


def machines_for_layout(layout: DiskLayout, requested: Sequence[str] = ()) -> list[BootMachine]:
    """One machine per firmware: those *requested*, else every one *layout* supports."""
    arch = layout.efi_arch or "amd64"
    supported = layout.firmwares
    if not supported:
        raise UsageError(f"the disk has no boot partition a firmware could boot (partition table: {layout.table})")
    wanted = list(dict.fromkeys(requested)) or list(supported)
    machines = []
    for name in wanted:
        try:
            fw = Firmware(name)
        except ValueError:
            raise UsageError(f"unknown firmware {name!r} (choose from {', '.join(f.value for f in Firmware)})"
                             ) from None
        if fw.value not in supported:
            raise UsageError(f"this {arch} image cannot boot with {fw.value}: its layout ({layout.boot_mode}, "
                             f"{layout.table}) supports {', '.join(supported)}")
        machines.append(BootMachine(arch, fw))
    return machines


def machines_for(image: Path, fmt: str, requested: Sequence[str] = ()) -> list[BootMachine]:
    return machines_for_layout(read_layout(image, fmt), requested)
