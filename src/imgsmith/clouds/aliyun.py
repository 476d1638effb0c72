"""Alibaba Cloud ECS image import: the strictest layout rules (no swap, no LVM, root last, UUIDs)."""

from __future__ import annotations

from .base import ERROR, WARNING, Profile
from .catalog import rule
from .checks import needs_early
from .sources import ALIYUN_BOOT, ALIYUN_IMPORT, ALIYUN_REQUIREMENTS, ALIYUN_VIRTIO, CI_DATASOURCES

PROFILE = Profile(
    name="aliyun", description="Alibaba Cloud ECS", preset="aliyun", arches=("x86_64", "i386", "aarch64"),
    formats=("qcow2", "raw", "vpc", "vmdk"),
    drivers=(("virtio_pci",), ("virtio_blk",)), late_drivers=(("virtio_net",),),
    datasources=("AliYun",),
    rules=(
        rule("format", WARNING, ALIYUN_IMPORT),
        rule("root-found", ERROR, ALIYUN_IMPORT),
        rule("architecture", ERROR, ALIYUN_BOOT),
        rule("format-rules", ERROR, ALIYUN_IMPORT),
        rule("boot-mode", ERROR, ALIYUN_REQUIREMENTS),
        rule("root-last", ERROR, ALIYUN_REQUIREMENTS),
        rule("no-lvm-root", ERROR, ALIYUN_REQUIREMENTS),
        rule("no-swap", ERROR, ALIYUN_REQUIREMENTS),
        rule("one-disk", ERROR, ALIYUN_REQUIREMENTS),
        rule("fstab-uuid", ERROR, ALIYUN_REQUIREMENTS),
        rule("grub-config", WARNING, ALIYUN_REQUIREMENTS),
        rule("grub-uuid", ERROR, ALIYUN_REQUIREMENTS),
        rule("virtio", ERROR, ALIYUN_VIRTIO),
        rule("net-driver", ERROR, ALIYUN_VIRTIO),
        rule("nvme", WARNING, ALIYUN_REQUIREMENTS, check=needs_early(("nvme",)),
             text="the NVMe driver is built in or in the initramfs (newer instance families boot from NVMe)"),
        rule("cloud-init", ERROR, ALIYUN_REQUIREMENTS),
        rule("cloud-init-enabled", ERROR, ALIYUN_REQUIREMENTS),
        rule("datasource", ERROR, CI_DATASOURCES),
        rule("growpart", WARNING, ALIYUN_REQUIREMENTS),
        rule("no-mac-binding", ERROR, ALIYUN_IMPORT),
        rule("dhcp", ERROR, ALIYUN_IMPORT),
        rule("guest-tools", WARNING, ALIYUN_IMPORT),
        rule("rtc-utc", WARNING, ALIYUN_IMPORT),
        rule("free-space", WARNING, ALIYUN_IMPORT),
    ),
)
