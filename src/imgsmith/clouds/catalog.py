"""The rule catalogue: each shared check with the one line that says what it checks, and its fix.

A cloud module builds its rules with :func:`rule` (a name from here, a severity, the
cloud's page, its error name), so the wording of a rule is the same on every cloud and
docs/clouds.md is generated from the same table.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import checks
from .base import CheckFn, Rule, Severity
from .fixes import FIXES

__all__ = ["CATALOG", "rule"]

CATALOG: Mapping[str, tuple[CheckFn, str]] = {
    "root-found": (checks.root_found, "inspection finds one operating system root filesystem on the disk"),
    "format": (checks.image_format, "the image file is in a format the target imports"),
    "format-rules": (checks.preset_rules, "the preset's format rules hold for the image as it is (VHD subformat, "
                                          "size multiple, size limits)"),
    "partition-present": (checks.partition_present, "the disk has a partition table"),
    "partition-table": (checks.partition_table, "the partition table type (MBR/GPT) is one the target accepts"),
    "boot-mode": (checks.boot_mode, "the disk can boot the way the target boots (BIOS, or UEFI with an ESP; "
                                    "UEFI on arm64)"),
    "architecture": (checks.architecture, "the guest's architecture is one the target runs"),
    "root-last": (checks.root_last, "the root partition is the last one, so growpart can grow it"),
    "no-lvm-root": (checks.lvm_root, "the root filesystem is not on LVM"),
    "no-swap": (checks.no_swap, "no swap partition or swap line in /etc/fstab on the OS disk"),
    "one-disk": (checks.one_disk, "every filesystem /etc/fstab mounts at boot is on this disk (no data disks)"),
    "fstab-uuid": (checks.fstab_stable, "/etc/fstab mounts by UUID or LABEL, not by device name"),
    "free-space": (checks.free_space, "the root filesystem has at least 256 MiB free"),
    "virtio": (checks.early_drivers, "the virtio storage and PCI drivers are built into the kernel or in its "
                                     "initramfs"),
    "drivers": (checks.early_drivers, "the target's storage drivers are built into the kernel or in its initramfs"),
    "net-driver": (checks.late_drivers, "the target's network driver is built in or installed as a module"),
    "cloud-init": (checks.cloud_init_installed, "cloud-init is installed"),
    "cloud-init-enabled": (checks.cloud_init_enabled, "cloud-init runs at boot (systemd units enabled, not "
                                                      "disabled by /etc/cloud/cloud-init.disabled)"),
    "datasource": (checks.datasource, "cloud-init's datasource_list (cloud.cfg and cloud.cfg.d/*.cfg) admits the "
                                      "target's datasource"),
    "growpart": (checks.growpart, "growpart is installed so cloud-init can grow the root partition"),
    "grub-config": (checks.grub_config, "a GRUB configuration with kernel entries exists"),
    "grub-uuid": (checks.grub_uuid, "GRUB passes the root filesystem by UUID (root=UUID=...)"),
    "serial-console": (checks.serial_console, "every kernel entry logs to the serial console the target reads"),
    "no-mac-binding": (checks.mac_bound, "no network configuration is bound to a MAC address (HWADDR=, "
                                         "persistent-net rules, netplan macaddress, NetworkManager mac-address)"),
    "dhcp": (checks.dhcp, "the network is configured by DHCP, not with static addresses"),
    "qemu-guest-agent": (checks.qemu_guest_agent, "qemu-guest-agent is installed"),
    "guest-tools": (checks.guest_tools, "no other hypervisor's guest tools are installed"),
    "rtc-utc": (checks.rtc_utc, "the hardware clock is kept in UTC (/etc/adjtime)"),
}


def rule(name: str, severity: Severity, source: str, error_name: str | None = None, *,
         text: str | None = None, check: CheckFn | None = None) -> Rule:
    """A rule from the catalogue (or a cloud's own, with *check* and *text*)."""
    if check is None:
        check, default = CATALOG[name]
        text = text or default
    return Rule(name, severity, text or name, check, source, error_name, FIXES.get(name))
