"""Tencent Cloud CVM ImportImage: MBR and BIOS, virtio, cloud-init, size limits; its own error codes.

The error names are the ones ImportImage reports when an import fails (``VirtioNotInstall``,
``CloudInitNotInstalled``, ``PartitionNotPresent``, ``RootPartitionNotFound``,
``InvalidFormatSize``), so a user who has seen one finds the rule that predicts it.
"""

from __future__ import annotations

from ..disk.sizes import format_size
from .base import ERROR, WARNING, Hit, Profile
from .catalog import rule
from .facts import Facts
from .sources import CI_DATASOURCES, TENCENT_API, TENCENT_IMPORT, TENCENT_IMPORTING

GB = 1000**3  # Tencent states its limits in GB
MAX_VIRTUAL = 500 * GB
MAX_QCOW2 = 50 * GB


def size_limits(f: Facts, p: Profile) -> list[Hit]:
    """Virtual size at most 500 GB; at most 50 GB once converted to qcow2 (Tencent converts on import)."""
    hits = []
    if f.image.virtual_size > MAX_VIRTUAL:
        hits.append(Hit(f"the virtual size is {format_size(f.image.virtual_size)}, the limit is "
                        f"{format_size(MAX_VIRTUAL)}", str(f.image.path), "shrink the filesystem and the disk"))
    if f.image.qcow2_size is not None and f.image.qcow2_size > MAX_QCOW2:
        hits.append(Hit(f"converted to qcow2 the image needs {format_size(f.image.qcow2_size)}, the limit is "
                        f"{format_size(MAX_QCOW2)}", str(f.image.path),
                        "free space in the guest (fstrim, remove files) so less data is allocated"))
    return hits


PROFILE = Profile(
    name="tencent", description="Tencent Cloud CVM", preset="tencent", arches=("x86_64", "i386", "aarch64"),
    formats=("qcow2", "raw", "vpc", "vmdk"), boot_modes=("bios",), partition_tables=("mbr",),
    drivers=(("virtio_pci",), ("virtio_blk",)), late_drivers=(("virtio_net",),),
    datasources=("ConfigDrive",),
    rules=(
        rule("format", WARNING, TENCENT_IMPORT),
        rule("root-found", ERROR, TENCENT_IMPORT, "RootPartitionNotFound"),
        rule("architecture", ERROR, TENCENT_API),
        rule("size", ERROR, TENCENT_IMPORTING, "InvalidFormatSize", check=size_limits,
             text="the virtual size is at most 500 GB and the qcow2 conversion at most 50 GB"),
        rule("partition-present", ERROR, TENCENT_IMPORTING, "PartitionNotPresent"),
        rule("partition-table", ERROR, TENCENT_IMPORTING),
        rule("boot-mode", ERROR, TENCENT_IMPORTING),
        rule("root-last", WARNING, TENCENT_IMPORTING),
        rule("one-disk", ERROR, TENCENT_IMPORTING),
        rule("fstab-uuid", WARNING, TENCENT_IMPORTING),
        rule("virtio", ERROR, TENCENT_IMPORTING, "VirtioNotInstall"),
        rule("net-driver", ERROR, TENCENT_IMPORTING, "VirtioNotInstall"),
        rule("cloud-init", ERROR, TENCENT_IMPORTING, "CloudInitNotInstalled"),
        rule("cloud-init-enabled", ERROR, TENCENT_IMPORTING),
        rule("datasource", ERROR, CI_DATASOURCES),
        rule("growpart", WARNING, TENCENT_IMPORTING),
        rule("grub-config", WARNING, TENCENT_IMPORTING),
        rule("no-mac-binding", ERROR, TENCENT_IMPORTING),
        rule("dhcp", ERROR, TENCENT_IMPORTING),
        rule("guest-tools", WARNING, TENCENT_IMPORTING),
        rule("rtc-utc", WARNING, TENCENT_IMPORTING),
        rule("free-space", WARNING, TENCENT_IMPORTING),
    ),
)
