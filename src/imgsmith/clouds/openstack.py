"""OpenStack (Nova on KVM, images in Glance): virtio, cloud-init with the OpenStack or config-drive datasource."""

from __future__ import annotations

from .base import ERROR, WARNING, Profile
from .catalog import rule
from .sources import CI_DATASOURCES, OPENSTACK_FORMATS, OPENSTACK_IMAGES, OPENSTACK_PROPERTIES

PROFILE = Profile(
    name="openstack", description="OpenStack", preset="openstack", arches=("x86_64", "aarch64"),
    formats=("qcow2", "raw", "vmdk", "vpc", "vhdx", "vdi"),
    drivers=(("virtio_pci",), ("virtio_blk", "virtio_scsi")), late_drivers=(("virtio_net",),),
    datasources=("OpenStack", "ConfigDrive"),
    rules=(
        rule("format", WARNING, OPENSTACK_FORMATS),
        rule("root-found", ERROR, OPENSTACK_FORMATS),
        rule("architecture", ERROR, OPENSTACK_PROPERTIES),
        rule("boot-mode", ERROR, OPENSTACK_PROPERTIES),
        rule("root-last", WARNING, OPENSTACK_IMAGES),
        rule("one-disk", ERROR, OPENSTACK_IMAGES),
        rule("fstab-uuid", WARNING, OPENSTACK_IMAGES),
        rule("virtio", ERROR, OPENSTACK_IMAGES),
        rule("net-driver", ERROR, OPENSTACK_IMAGES),
        rule("cloud-init", ERROR, OPENSTACK_IMAGES),
        rule("cloud-init-enabled", ERROR, OPENSTACK_IMAGES),
        rule("datasource", ERROR, CI_DATASOURCES),
        rule("growpart", WARNING, OPENSTACK_IMAGES),
        rule("grub-config", WARNING, OPENSTACK_IMAGES),
        rule("grub-uuid", WARNING, OPENSTACK_IMAGES),
        rule("serial-console", WARNING, OPENSTACK_IMAGES),
        rule("no-mac-binding", ERROR, OPENSTACK_IMAGES),
        rule("dhcp", ERROR, OPENSTACK_IMAGES),
        rule("qemu-guest-agent", WARNING, OPENSTACK_PROPERTIES),
        rule("guest-tools", WARNING, OPENSTACK_IMAGES),
        rule("rtc-utc", WARNING, OPENSTACK_IMAGES),
        rule("free-space", WARNING, OPENSTACK_IMAGES),
    ),
)
