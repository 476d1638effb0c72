"""Azure: a fixed VHD of whole MiB, the Hyper-V drivers in the initramfs, no swap on the OS disk.

Azure runs two VM generations: Generation 1 boots with BIOS, Generation 2 with UEFI (and is
the only one for arm64 sizes and for some newer x86 sizes). ``azure`` takes an image either
generation boots and says when only Generation 2 will (``azure.generation``); ``azure-gen2``
is the target for a Generation 2 image definition, which needs a UEFI boot loader.
"""

from __future__ import annotations

import dataclasses

from .base import ERROR, WARNING, Profile
from .catalog import rule
from .checks import azure_generation
from .sources import AZURE_GEN2, AZURE_GENERIC, AZURE_HYPERV, CI_DATASOURCES

PROFILE = Profile(
    name="azure", description="Azure", preset="azure", arches=("x86_64", "aarch64"), formats=("vpc",),
    drivers=(("hv_vmbus",), ("hv_storvsc",)), late_drivers=(("hv_netvsc",),),
    datasources=("Azure",), own_tools=("hyperv",),
    rules=(
        rule("format", WARNING, AZURE_GENERIC),
        rule("root-found", ERROR, AZURE_GENERIC),
        rule("architecture", ERROR, AZURE_GEN2),
        rule("format-rules", ERROR, AZURE_GENERIC),
        rule("boot-mode", ERROR, AZURE_GENERIC),
        rule("generation", WARNING, AZURE_GEN2, check=azure_generation,
             text="the image boots on a Generation 1 VM (BIOS), or is marked as needing Generation 2 (UEFI, arm64)"),
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

GEN2 = dataclasses.replace(
    PROFILE, name="azure-gen2", description="Azure Generation 2", boot_modes=("uefi",),
    rules=tuple(dataclasses.replace(r, source=AZURE_GEN2) if r.name == "boot-mode" else r
                for r in PROFILE.rules if r.name != "generation"),
)
