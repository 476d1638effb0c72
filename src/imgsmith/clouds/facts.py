"""What the checks look at, read once per image: the disk's layout and the guest's files.

Every cloud's rules run over the same :class:`Facts`, whose properties read the guest
lazily through the Guest API and keep the result, so checking six clouds costs one read
of each file (one initramfs decompression per kernel, one fstab parse...). Nothing here
writes to the guest; the session itself sits on a throw-away overlay.
"""

from __future__ import annotations

import functools
import posixpath
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import GuestError
from ..guest.api import Guest, PartitionInfo
from ..guest.facts import kernels
from .initramfs import UnreadableInitramfs, list_files, modules_in

__all__ = ["BIOS_BOOT_GUID", "ESP_GUID", "Facts", "FstabEntry", "ImageFacts", "KernelFacts", "read_image_facts"]

ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
LVM_GUID = "e6d6d379-f507-44c2-a23c-238f2a3df928"
_VHD_TYPES = {2: "fixed", 3: "dynamic", 4: "differencing"}
# kernel module -> the Kconfig symbol that builds it
CONFIG_OF = {
    "virtio_pci": "CONFIG_VIRTIO_PCI", "virtio_blk": "CONFIG_VIRTIO_BLK", "virtio_scsi": "CONFIG_SCSI_VIRTIO",
    "virtio_net": "CONFIG_VIRTIO_NET", "nvme": "CONFIG_BLK_DEV_NVME", "hv_vmbus": "CONFIG_HYPERV",
    "hv_storvsc": "CONFIG_HYPERV_STORAGE", "hv_netvsc": "CONFIG_HYPERV_NET", "ena": "CONFIG_ENA_ETHERNET",
    "xen_blkfront": "CONFIG_XEN_BLKDEV_FRONTEND", "gve": "CONFIG_GVE",
}
_INITRDS = ("/boot/initrd.img-{v}", "/boot/initramfs-{v}.img", "/boot/initrd-{v}", "/boot/initrd-{v}.img")


@dataclass(frozen=True)
class ImageFacts:
    """The image file as a host sees it: format, sizes, VHD footer."""

    path: Path
    format: str
    virtual_size: int
    subformat: str = ""  # VHD (qemu's "vpc"): fixed | dynamic | differencing; VMDK: its create-type
    qcow2_size: int | None = None  # bytes the image would take converted to qcow2 (qemu-img measure)


def _vhd_subformat(path: Path) -> tuple[str, int]:
    """(subformat, current size) from the VHD footer (the last 512 bytes, or the copy at the start)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            for offset in (size - 512, 0):
                if offset < 0:
                    continue
                f.seek(offset)
                footer = f.read(512)
                if footer[:8] == b"conectix":
                    current = struct.unpack(">Q", footer[48:56])[0]
                    kind = struct.unpack(">I", footer[60:64])[0]
                    return _VHD_TYPES.get(kind, f"type {kind}"), current
    except OSError:
        pass
    return "", 0


def read_image_facts(path: Path, fmt: str, virtual_size: int, qcow2_size: int | None,
                     format_specific: dict[str, Any] | None = None) -> ImageFacts:
    """The image's facts; a VHD's subformat and size come from its footer (qemu reports a fixed VHD as raw)."""
    sub, current = _vhd_subformat(path) if fmt == "vpc" else ("", 0)
    if fmt == "vmdk":
        sub = str((format_specific or {}).get("create-type", ""))
    return ImageFacts(path, fmt, current or virtual_size, sub, qcow2_size)


@dataclass(frozen=True)
class FstabEntry:
    spec: str
    mountpoint: str
    fstype: str
    options: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class KernelFacts:
    """One installed kernel: which drivers it builds in, ships as modules, and packs in its initramfs."""

    version: str
    builtin: frozenset[str]
    on_disk: frozenset[str]
    initramfs: frozenset[str] | None  # None: no initramfs found or unreadable (see initramfs_problem)
    initramfs_path: str
    initramfs_problem: str = ""

    def early(self, module: str) -> bool:
        """Available before the root filesystem is mounted: built in, or in the initramfs."""
        return module in self.builtin or (self.initramfs is not None and module in self.initramfs)

    def available(self, module: str) -> bool:
        return self.early(module) or module in self.on_disk


def _modules_of(paths: list[str]) -> frozenset[str]:
    return frozenset(modules_in(paths))


class Facts:
    """The guest and image facts the rules read, each read at most once."""

    def __init__(self, guest: Guest, image: ImageFacts) -> None:
        self.guest = guest
        self.image = image

    # --- small helpers
    def text(self, path: str) -> str | None:
        """A guest file's text, None when it is missing or unreadable (a check decides what that means)."""
        try:
            return self.guest.read_text(path) if self.guest.is_file(path, follow=True) else None
        except GuestError:
            return None

    def exists_any(self, *paths: str) -> str | None:
        return next((p for p in paths if self.guest.exists(p)), None)

    def glob(self, pattern: str) -> list[str]:
        try:
            return self.guest.glob(pattern)
        except GuestError:
            return []

    @functools.cached_property
    def arch(self) -> str:
        """The guest's architecture as inspection names it (x86_64, aarch64, i386), or "unknown"."""
        return self.guest.os.arch or "unknown"

    # --- the disk
    @functools.cached_property
    def table(self) -> str:
        return self.guest.partition_table()

    @functools.cached_property
    def partitions(self) -> list[PartitionInfo]:
        return self.guest.partitions()

    @functools.cached_property
    def root(self) -> PartitionInfo | None:
        return next((p for p in self.partitions if p.device == self.guest.os.root), None)

    @functools.cached_property
    def root_on_lvm(self) -> bool:
        root = self.guest.os.root
        # a logical volume: listed with no partition number, and not the whole disk itself
        return root.startswith("/dev/mapper/") or (self.root is not None and self.root.number == 0
                                                  and not re.fullmatch(r"/dev/[a-z]+", root))

    @functools.cached_property
    def esp(self) -> PartitionInfo | None:
        return next((p for p in self.partitions if p.part_type in (ESP_GUID, "0xef")), None)

    @functools.cached_property
    def boot_modes(self) -> tuple[str, ...]:
        """How the disk can boot: BIOS (MBR, or GPT with a BIOS boot partition), UEFI (an ESP)."""
        modes = []
        bios_grub = any(p.part_type == BIOS_BOOT_GUID for p in self.partitions)
        if self.table == "mbr" or (self.table == "gpt" and bios_grub):
            modes.append("bios")
        if self.esp is not None:
            modes.append("uefi")
        return tuple(modes)

    @functools.cached_property
    def fstab(self) -> list[FstabEntry]:
        entries = []
        for n, line in enumerate((self.text("/etc/fstab") or "").splitlines(), 1):
            fields = line.split()
            if len(fields) < 3 or fields[0].startswith("#"):
                continue
            opts = tuple(fields[3].split(",")) if len(fields) > 3 else ("defaults",)
            entries.append(FstabEntry(fields[0], fields[1], fields[2], opts, n))
        return entries

    # --- kernels and drivers
    @functools.cached_property
    def kernels(self) -> list[KernelFacts]:
        return [self._kernel(v) for v in kernels(self.guest)]

    def _builtin(self, version: str) -> frozenset[str]:
        config = self.text(f"/boot/config-{version}") or ""
        built = {mod for mod, sym in CONFIG_OF.items() if re.search(rf"^{sym}=y$", config, re.MULTILINE)}
        listed = self.text(f"/lib/modules/{version}/modules.builtin") or ""
        return frozenset(built | modules_in(listed.split()))

    def _on_disk(self, version: str) -> frozenset[str]:
        listing = self.text(f"/lib/modules/{version}/modules.dep")
        if listing is not None:  # every module, one per line before the colon
            return _modules_of([line.split(":", 1)[0] for line in listing.splitlines()])
        try:
            return _modules_of(self.guest.find(f"/lib/modules/{version}"))
        except GuestError:
            return frozenset()

    def _kernel(self, version: str) -> KernelFacts:
        path = next((p.format(v=version) for p in _INITRDS if self.guest.is_file(p.format(v=version), follow=True)),
                    "")
        modules: frozenset[str] | None = None
        problem = "" if path else "no initramfs for this kernel in /boot"
        if path:
            try:
                modules = _modules_of(list_files(self.guest.read(path)))
            except (UnreadableInitramfs, GuestError) as exc:
                problem = f"{path}: {exc}"
        return KernelFacts(version, self._builtin(version), self._on_disk(version), modules, path, problem)

    # --- cloud-init
    @functools.cached_property
    def cloud_init_binary(self) -> str | None:
        return self.exists_any("/usr/bin/cloud-init", "/bin/cloud-init", "/usr/local/bin/cloud-init")

    @functools.cached_property
    def cloud_cfg(self) -> tuple[dict[str, Any], list[str]]:
        """cloud-init's merged configuration (later files win, key by key) and the files it came from."""
        merged: dict[str, Any] = {}
        files = ["/etc/cloud/cloud.cfg", *sorted(p for p in self.glob("/etc/cloud/cloud.cfg.d/*.cfg"))]
        read = []
        for path in files:
            text = self.text(path)
            if text is None:
                continue
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                continue
            if isinstance(data, dict):
                merged.update(data)
                read.append(path)
        return merged, read

    def datasource_source(self) -> str:
        """The last cloud-init file that sets datasource_list (where a finding points)."""
        where = "/etc/cloud/cloud.cfg"
        for path in self.cloud_cfg[1]:
            if re.search(r"^datasource_list\s*:", self.text(path) or "", re.MULTILINE):
                where = path
        return where

    # --- boot loader
    @functools.cached_property
    def grub_cfg(self) -> tuple[str, str] | None:
        for path in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", *self.glob("/boot/efi/EFI/*/grub.cfg")):
            text = self.text(path)
            if text is not None and re.search(r"^\s*linux(efi)?\s", text, re.MULTILINE):
                return path, text
        return None

    @functools.cached_property
    def kernel_cmdlines(self) -> list[str]:
        """Each kernel line's arguments in grub.cfg (after the kernel path)."""
        cfg = self.grub_cfg
        if cfg is None:
            return []
        return [m.group(1) for m in re.finditer(r"^\s*linux(?:efi)?\s+\S+\s*(.*)$", cfg[1], re.MULTILINE)]

    @functools.cached_property
    def root_free(self) -> tuple[int, int]:
        return self.guest.statvfs("/")

    def basename(self, path: str) -> str:
        return posixpath.basename(path.rstrip("/"))
