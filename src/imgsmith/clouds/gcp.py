"""Google Compute Engine: disk.raw of whole GiB, virtio-scsi or NVMe, the serial console, the GCE datasource."""

from __future__ import annotations

from .base import ERROR, WARNING, Profile
from .catalog import rule
from .sources import CI_DATASOURCES, GCP_ARM, GCP_CONFIGURE, GCP_IMPORT, GCP_OS

PROFILE = Profile(
    name="gcp", description="Compute Engine", preset="gcp", arches=("x86_64", "aarch64"), formats=("raw",),
    drivers=(("virtio_pci",), ("virtio_scsi", "nvme")), late_drivers=(("virtio_net", "gve"),),
    datasources=("GCE",),
    rules=(
        rule("format", WARNING, GCP_IMPORT),
        rule("root-found", ERROR, GCP_IMPORT),
        rule("architecture", ERROR, GCP_ARM),
        rule("format-rules", ERROR, GCP_IMPORT),
        rule("boot-mode", ERROR, GCP_OS),
        rule("root-last", WARNING, GCP_OS),
        rule("one-disk", ERROR, GCP_CONFIGURE),
        rule("fstab-uuid", WARNING, GCP_CONFIGURE),
        rule("drivers", ERROR, GCP_OS),
        rule("net-driver", ERROR, GCP_OS),
        rule("cloud-init", ERROR, GCP_CONFIGURE),
        rule("cloud-init-enabled", ERROR, GCP_CONFIGURE),
        rule("datasource", ERROR, CI_DATASOURCES),
        rule("growpart", WARNING, GCP_CONFIGURE),
        rule("grub-config", WARNING, GCP_OS),
        rule("serial-console", WARNING, GCP_OS),
        rule("no-mac-binding", ERROR, GCP_CONFIGURE),
        rule("dhcp", ERROR, GCP_CONFIGURE),
        rule("guest-tools", WARNING, GCP_CONFIGURE),
        rule("rtc-utc", WARNING, GCP_CONFIGURE),
        rule("free-space", WARNING, GCP_CONFIGURE),
    ),
)
