"""AWS VM Import/Export: the formats it reads, NVMe and ENA for Nitro instances, the Ec2 datasource."""

from __future__ import annotations

from .base import ERROR, WARNING, Profile
from .catalog import rule
from .checks import needs_early, needs_module
from .sources import AWS_BOOT, AWS_ENA, AWS_FORMATS, AWS_NVME, CI_DATASOURCES

PROFILE = Profile(
    name="aws", description="AWS VM Import", preset="aws", arches=("x86_64", "aarch64"),
    formats=("vmdk", "vpc", "vhdx", "raw"),
    datasources=("Ec2",),
    rules=(
        rule("format", WARNING, AWS_FORMATS),
        rule("root-found", ERROR, AWS_FORMATS),
        rule("architecture", ERROR, AWS_BOOT),
        rule("format-rules", ERROR, AWS_FORMATS),
        rule("boot-mode", ERROR, AWS_FORMATS),
        rule("root-last", WARNING, AWS_FORMATS),
        rule("one-disk", ERROR, AWS_FORMATS),
        rule("fstab-uuid", WARNING, AWS_NVME),
        rule("nvme", WARNING, AWS_NVME, check=needs_early(("nvme",)),
             text="the NVMe driver is built in or in the initramfs (EBS volumes are NVMe on Nitro instances)"),
        rule("ena", WARNING, AWS_ENA, check=needs_module(("ena",)),
             text="the ENA network driver is built in or installed (Nitro instances' network)"),
        rule("cloud-init", ERROR, AWS_FORMATS),
        rule("cloud-init-enabled", ERROR, AWS_FORMATS),
        rule("datasource", ERROR, CI_DATASOURCES),
        rule("growpart", WARNING, AWS_FORMATS),
        rule("grub-config", WARNING, AWS_FORMATS),
        rule("serial-console", WARNING, AWS_FORMATS),
        rule("no-mac-binding", ERROR, AWS_FORMATS),
        rule("dhcp", ERROR, AWS_FORMATS),
        rule("guest-tools", WARNING, AWS_FORMATS),
        rule("rtc-utc", WARNING, AWS_FORMATS),
        rule("free-space", WARNING, AWS_FORMATS),
    ),
)
