"""Local hypervisors (kvm, vmware, virtualbox, hyperv): the few rules they have, one profile each.

They need no datasource and no cloud-init; what matters is the disk format, the drivers
for their virtual hardware, the boot mode (Hyper-V generation 2 boots UEFI only), and no
other hypervisor's guest tools.
"""

from __future__ import annotations

from .base import ERROR, WARNING, Profile
from .catalog import rule
from .sources import HYPERV_GEN2, OVF_SPEC, QEMU_FORMATS, VBOX_MANUAL

KVM = Profile(
    name="kvm", description="qemu/KVM", preset="kvm", formats=("qcow2", "raw"), arches=("x86_64", "aarch64", "i386"),
    drivers=(("virtio_pci",), ("virtio_blk", "virtio_scsi")), late_drivers=(("virtio_net",),),
    rules=(
        rule("format", WARNING, QEMU_FORMATS),
        rule("architecture", ERROR, QEMU_FORMATS),
        rule("virtio", ERROR, QEMU_FORMATS),
        rule("net-driver", WARNING, QEMU_FORMATS),
        rule("grub-config", WARNING, QEMU_FORMATS),
        rule("guest-tools", WARNING, QEMU_FORMATS),
    ),
)

VMWARE = Profile(
    name="vmware", description="VMware", preset="vmware", formats=("vmdk",), own_tools=("vmware",),
    arches=("x86_64", "i386"),
    rules=(
        rule("format", WARNING, OVF_SPEC),
        rule("architecture", ERROR, OVF_SPEC),
        rule("grub-config", WARNING, OVF_SPEC),
        rule("guest-tools", WARNING, OVF_SPEC),
    ),
)

VIRTUALBOX = Profile(
    name="virtualbox", description="VirtualBox", preset="virtualbox", formats=("vdi", "vmdk", "vpc"),
    own_tools=("virtualbox",), arches=("x86_64", "i386"),
    rules=(
        rule("format", WARNING, VBOX_MANUAL),
        rule("architecture", ERROR, VBOX_MANUAL),
        rule("grub-config", WARNING, VBOX_MANUAL),
        rule("guest-tools", WARNING, VBOX_MANUAL),
    ),
)

HYPERV = Profile(
    name="hyperv", description="Hyper-V generation 2", preset="hyperv", formats=("vhdx",), boot_modes=("uefi",),
    drivers=(("hv_vmbus",), ("hv_storvsc",)), late_drivers=(("hv_netvsc",),), own_tools=("hyperv",),
    rules=(
        rule("format", WARNING, HYPERV_GEN2),
        rule("architecture", ERROR, HYPERV_GEN2),
        rule("format-rules", ERROR, HYPERV_GEN2),
        rule("boot-mode", ERROR, HYPERV_GEN2),
        rule("drivers", ERROR, HYPERV_GEN2),
        rule("net-driver", WARNING, HYPERV_GEN2),
        rule("guest-tools", WARNING, HYPERV_GEN2),
    ),
)
