"""An image's partition layout and boot mode, read from its bytes (any format, no appliance, no root).

The first 34 sectors (MBR, GPT header and entries) come through ``qemu-img dd``, so a
compressed qcow2 works as well as raw. Boot modes follow from the partitions: an MBR
disk or a GPT disk with a BIOS boot partition boots with BIOS; an EFI System Partition
boots with UEFI; both is a hybrid image. The ESP is then read with mtools (never
mounted; the host kernel need not know vfat) to find which architecture its removable
boot loader is for (``BOOTX64.EFI``/``BOOTAA64.EFI``) and whether it is a signed shim
with GRUB beside it (Secure Boot).
"""

from __future__ import annotations

import os
import struct
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import proc
from ..errors import ProcessError

__all__ = ["DiskLayout", "Partition", "parse_table", "read_layout"]

SECTOR = 512
ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
BIOS_BOOT_TYPE = uuid.UUID("21686148-6449-6E6F-744E-656564454649")
_GPT_NAMES = {
    ESP_TYPE: "EFI System",
    BIOS_BOOT_TYPE: "BIOS boot",
    uuid.UUID("0FC63DAF-8483-4772-8E79-3D69C8477DE4"): "Linux filesystem",
    uuid.UUID("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"): "Linux root (x86-64)",
    uuid.UUID("B921B045-1DF0-41C3-AF44-4C6F280D3FAE"): "Linux root (ARM-64)",
    uuid.UUID("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"): "Linux swap",
    uuid.UUID("E6D6D379-F507-44C2-A23C-238F2A3DF928"): "Linux LVM",
    uuid.UUID("BC13C2FF-59E6-4262-A352-B275FD6F7172"): "Linux extended boot",
    uuid.UUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"): "Microsoft basic data",
}
_MBR_NAMES = {0x83: "Linux", 0x82: "Linux swap", 0x8E: "Linux LVM", 0xEF: "EFI System", 0x07: "NTFS/exFAT",
              0x0C: "FAT32 (LBA)", 0x05: "Extended", 0x0F: "Extended (LBA)"}
_EFI_ARCH = {"BOOTX64.EFI": "amd64", "BOOTAA64.EFI": "arm64", "BOOTIA32.EFI": "i386"}


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str  # GPT type GUID or MBR type byte as 0xNN
    type_name: str
    name: str = ""
    bootable: bool = False


@dataclass(frozen=True)
class DiskLayout:
    """The partition table, and what it says about how the disk boots."""

    table: str  # gpt | mbr | none
    partitions: tuple[Partition, ...] = ()
    efi_arch: str | None = None  # from the ESP's removable boot loader
    shim: bool = False  # the ESP's boot loader is a shim with grub beside it (Secure Boot capable)
    esp_files: tuple[str, ...] = field(default=())

    @property
    def esp(self) -> Partition | None:
        return next((p for p in self.partitions if p.type in (str(ESP_TYPE).upper(), "0xef")), None)

    @property
    def bios_bootable(self) -> bool:
        if self.table == "mbr":
            return any(p.type != "0xef" for p in self.partitions)
        return any(p.type == str(BIOS_BOOT_TYPE).upper() for p in self.partitions)

    @property
    def boot_mode(self) -> str:
        """bios, uefi or hybrid (unknown: no partition table, which boots nowhere a cloud offers)."""
        uefi = self.esp is not None
        if uefi and self.bios_bootable:
            return "hybrid"
        return "uefi" if uefi else "bios" if self.bios_bootable else "unknown"

    @property
    def firmwares(self) -> tuple[str, ...]:
        """The firmwares a boot test can boot this disk with (``secure-boot`` when a shim is on the ESP)."""
        found = ["bios"] if self.bios_bootable and self.efi_arch in (None, "amd64") else []
        if self.esp is not None:
            found.append("uefi")
            if self.shim:
                found.append("secure-boot")
        return tuple(found)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(boot_mode=self.boot_mode, firmwares=list(self.firmwares))
        return data


def _gpt(head: bytes) -> list[Partition]:
    gpt = head[SECTOR:2 * SECTOR]
    entries_lba, count, size = struct.unpack_from("<QII", gpt, 72)
    found = []
    for i in range(min(count, 128)):
        at = entries_lba * SECTOR + i * size
        if at + 128 > len(head):
            break
        entry = head[at:at + 128]
        type_guid = uuid.UUID(bytes_le=entry[:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le", "replace").split("\x00", 1)[0]
        found.append(Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR, str(type_guid).upper(),
                               _GPT_NAMES.get(type_guid, "unknown"), name))
    return found


def _mbr(head: bytes) -> list[Partition]:
    found = []
    for i in range(4):
        entry = head[446 + 16 * i:446 + 16 * (i + 1)]
        kind = entry[4]
        start, sectors = struct.unpack_from("<II", entry, 8)
        if kind and sectors:
            found.append(Partition(i + 1, start * SECTOR, sectors * SECTOR, f"0x{kind:02x}",
                                   _MBR_NAMES.get(kind, "unknown"), bootable=entry[0] == 0x80))
    return found


def parse_table(head: bytes) -> tuple[str, list[Partition]]:
    """``(table, partitions)`` from the first 34 sectors of a disk."""
    if len(head) < 2 * SECTOR or head[510:512] != b"\x55\xaa":
        return "none", []
    mbr = _mbr(head)
    if any(p.type == "0xee" for p in mbr) and head[SECTOR:SECTOR + 8] == b"EFI PART":
        return "gpt", _gpt(head)
    return "mbr", mbr


def _dd(path: Path, fmt: str, out: Path, *, skip: int = 0, count: int) -> None:
    """Bytes ``[skip, skip+count)`` in whole MiB when aligned (fast), else in sectors."""
    bs = 1 << 20 if skip % (1 << 20) == 0 and count % (1 << 20) == 0 else SECTOR
    proc.run(["qemu-img", "dd", "-f", fmt, "-O", "raw", f"bs={bs}", f"skip={skip // bs}", f"count={count // bs}",
              f"if={os.fspath(path)}", f"of={os.fspath(out)}"])


def _esp_files(path: Path, fmt: str, esp: Partition, tmp: Path) -> tuple[str, ...]:
    """The names in the ESP's EFI/BOOT directory (empty when it cannot be read as FAT)."""
    image = tmp / "esp"
    _dd(path, fmt, image, skip=esp.start, count=min(esp.size, 512 << 20))
    try:
        out = proc.run(["mdir", "-b", "-i", image, "::/EFI/BOOT"], env={"MTOOLS_SKIP_CHECK": "1"}).stdout
    except ProcessError:
        return ()
    return tuple(sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()))


def read_layout(path: Path, fmt: str) -> DiskLayout:
    """The layout of the image at *path* (format *fmt* given: never probe an untrusted image)."""
    with tempfile.TemporaryDirectory(prefix="imgsmith-layout-") as tmpdir:
        tmp = Path(tmpdir)
        _dd(path, fmt, tmp / "head", count=34 * SECTOR)
        table, parts = parse_table((tmp / "head").read_bytes())
        layout = DiskLayout(table, tuple(parts))
        esp = layout.esp
        if esp is None:
            return layout
        files = _esp_files(path, fmt, esp, tmp)
    upper = {f.upper() for f in files}
    arch = next((a for name, a in _EFI_ARCH.items() if name in upper), None)
    shim = any(f.startswith("GRUB") and f.endswith(".EFI") for f in upper) and any(
        f.startswith(("MM", "FB")) for f in upper)
    return DiskLayout(table, tuple(parts), arch, shim, files)
