"""Azure: a fixed VHD of whole MiB, the Hyper-V drivers in the initramfs, no swap on the OS disk."""

from __future__ import annotations

from .base import ERROR, WARNING, Profile
from .catalog import rule
from .sources import AZURE_GENERIC, AZURE_HYPERV, CI_DATASOURCES

PROFILE = Profile(
    name="azure", description="Azure", preset="azure", formats=("vpc",),
    drivers=(("hv_vmbus",), ("hv_storvsc",)), late_drivers=(("hv_netvsc",),),
    datasources=("Azure",), own_tools=("hyperv",),
    rules=(
        rule("format", WARNING, AZURE_GENERIC),
        rule("root-found", ERROR, AZURE_GENERIC),
        rule("format-rules", ERROR, AZURE_GENERIC),
        rule("boot-mode", ERROR, AZURE_GENERIC),
        rule("root-last", WARNING, AZURE_GENERIC),
        rule("no-swap", WARNING, AZURE_GENERIC),
        rule("one-disk", ERROR, AZURE_GENERIC),
        rule("fstab-uuid", WARNING, AZURE_GENERIC),
        rule("drivers", ERROR, AZURE_HYPERV),
        rule("net-driver", ERROR, AZURE_HYPERV),
        rule("cloud-init", ERROR, AZURE_GENERIC),
        rule("cloud-init-enabled", ERROR, AZURE_GENERIC),
        rule("datasource", ERROR, CI_DATASOURCES),
        rule("growpart", WARNING, AZURE_GENERIC),
        rule("grub-config", WARNING, AZURE_GENERIC),
        rule("grub-uuid", WARNING, AZURE_GENERIC),
        rule("serial-console", WARNING, AZURE_GENERIC),
        rule("no-mac-binding", ERROR, AZURE_GENERIC),
        rule("dhcp", ERROR, AZURE_GENERIC),
        rule("guest-tools", WARNING, AZURE_GENERIC),
        rule("rtc-utc", WARNING, AZURE_GENERIC),
        rule("free-space", WARNING, AZURE_GENERIC),
    ),
)
