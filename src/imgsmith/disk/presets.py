"""Cloud and hypervisor presets: a format, its options, a file layout and the target's rules.

Each preset is a small declaration. Its rules say what the target accepts, each with
the public page it comes from. A rule that is broken is either fixed, when the fix
cannot lose data (growing the virtual size with zeros), and the fix is reported, or
the conversion is refused naming the rule - before any work is done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from ..errors import UsageError
from .sizes import GiB, MiB, TiB, format_size, round_up

__all__ = [
    "PRESETS",
    "Layout",
    "MaxSize",
    "MinSize",
    "Preset",
    "RequireOption",
    "Rule",
    "RuleOutcome",
    "SizeMultiple",
    "apply_rules",
    "get_preset",
]


class Layout(Enum):
    """How the converted disk is delivered."""

    PLAIN = "plain"          # the disk file itself
    GCP_TAR = "gcp-tar"      # disk.raw in a gzip'ed GNU tar (oldgnu, sparse)
    OVA = "ova"              # OVF descriptor + streamOptimized vmdk + SHA256 manifest in a tar


@dataclass(frozen=True)
class RuleOutcome:
    """A rule's verdict: a new virtual size to use (a safe fix) and the note that says so."""

    size: int
    note: str | None = None


@dataclass(frozen=True)
class Rule:
    """One documented requirement of a target. ``source`` is the public page it comes from."""

    name: str
    text: str
    source: str

    def apply(self, preset: str, size: int, options: Mapping[str, str]) -> RuleOutcome:
        """Return the (possibly grown) size, or raise UsageError naming the rule."""
        raise NotImplementedError

    def refuse(self, preset: str, why: str) -> UsageError:
        return UsageError(f"preset {preset}: rule {self.name!r} ({self.text}): {why}",
                          hint=f"see {self.source}")


@dataclass(frozen=True)
class SizeMultiple(Rule):
    """The virtual size must be a whole number of *multiple*; rounding up is safe (zeros at the end)."""

    multiple: int = MiB

    def apply(self, preset: str, size: int, options: Mapping[str, str]) -> RuleOutcome:
        if size % self.multiple == 0:
            return RuleOutcome(size)
        new = round_up(size, self.multiple)
        return RuleOutcome(new, f"{preset}: virtual size rounded up from {format_size(size)} ({size} bytes) "
                                f"to {format_size(new)} ({new} bytes): {self.text}")


@dataclass(frozen=True)
class MinSize(Rule):
    """The virtual size must be at least *minimum*; growing with zeros is safe."""

    minimum: int = 0

    def apply(self, preset: str, size: int, options: Mapping[str, str]) -> RuleOutcome:
        if size >= self.minimum:
            return RuleOutcome(size)
        return RuleOutcome(self.minimum, f"{preset}: virtual size grown from {format_size(size)} to "
                                         f"{format_size(self.minimum)}: {self.text}")


@dataclass(frozen=True)
class MaxSize(Rule):
    """The virtual size must not exceed *maximum*; shrinking would lose data, so this refuses."""

    maximum: int = 0

    def apply(self, preset: str, size: int, options: Mapping[str, str]) -> RuleOutcome:
        if size <= self.maximum:
            return RuleOutcome(size)
        limit = format_size(self.maximum)
        raise self.refuse(preset, f"the image is {format_size(size)}, the limit is {limit}")


@dataclass(frozen=True)
class RequireOption(Rule):
    """An option the target depends on; overriding it with ``-o`` is refused."""

    key: str = ""
    value: str = ""

    def apply(self, preset: str, size: int, options: Mapping[str, str]) -> RuleOutcome:
        if options.get(self.key) == self.value:
            return RuleOutcome(size)
        given = options.get(self.key)
        raise self.refuse(preset, f"{self.key}={given} given, {self.key}={self.value} required")


@dataclass(frozen=True)
class Preset:
    """A named target: format and options, file extension, layout, rules, and where they come from."""

    name: str
    description: str
    format: str
    options: Mapping[str, str]
    extension: str
    layout: Layout = Layout.PLAIN
    rules: tuple[Rule, ...] = ()
    source: str = ""


# Public sources, one constant each so docs/formats.md and the code cite the same pages.
AZURE_GENERIC = "https://learn.microsoft.com/en-us/azure/virtual-machines/linux/create-upload-generic"
AZURE_UPLOAD_SIZE = ("https://learn.microsoft.com/en-us/dotnet/api/"
                     "azure.resourcemanager.compute.models.diskcreationdata.uploadsizebytes")
GCP_IMPORT = "https://cloud.google.com/compute/docs/import/import-existing-image"
AWS_FORMATS = "https://docs.aws.amazon.com/vm-import/latest/userguide/prerequisites.html"
ALIYUN_IMPORT = "https://www.alibabacloud.com/help/en/ecs/user-guide/import-a-custom-image"
TENCENT_IMPORT = "https://www.tencentcloud.com/document/product/213/33270"
OPENSTACK_FORMATS = "https://docs.openstack.org/glance/latest/user/formats.html"
QEMU_FORMATS = "https://www.qemu.org/docs/master/system/images.html"
OVF_SPEC = "https://www.dmtf.org/standards/ovf"
VBOX_MANUAL = "https://www.virtualbox.org/manual/ch05.html"
HYPERV_GEN2 = ("https://learn.microsoft.com/en-us/windows-server/virtualization/hyper-v/plan/"
               "should-i-create-a-generation-1-or-2-virtual-machine-in-hyper-v")
VHDX_SPEC = "https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-vhdx/83e061f8-f6e2-4de1-91bd-5d518a43d477"

_PRESET_LIST = (
    # Glance stores qcow2 as is; compressed (zlib, readable by every qemu) keeps the upload small,
    # as the distributions' own cloud images are.
    Preset("openstack", "OpenStack Glance: compressed qcow2 v3", "qcow2",
           {"compat": "1.1", "compression": "zlib"}, ".qcow2", source=OPENSTACK_FORMATS),
    # Local qemu/libvirt: uncompressed qcow2 v3 (guest writes are never compressed anyway).
    Preset("kvm", "qemu/libvirt: qcow2 v3, uncompressed", "qcow2", {"compat": "1.1"}, ".qcow2",
           source=QEMU_FORMATS),
    # ECS imports QCOW2, VHD, RAW and VMDK; uncompressed qcow2 v3 is the smallest upload it reads as is.
    Preset("aliyun", "Alibaba Cloud ECS image import: qcow2 v3", "qcow2", {"compat": "1.1"}, ".qcow2",
           source=ALIYUN_IMPORT),
    # CVM ImportImage accepts RAW, VHD, QCOW2 and VMDK.
    Preset("tencent", "Tencent Cloud CVM image import: qcow2", "qcow2", {"compat": "1.1"}, ".qcow2",
           source=TENCENT_IMPORT),
    # Azure: fixed VHD only, virtual size N MiB (the file is N MiB + the 512-byte footer), 20 MiB..32 TiB.
    Preset("azure", "Azure: fixed VHD, whole MiB", "vpc", {"subformat": "fixed", "force_size": "on"},
           ".vhd", rules=(
               RequireOption("fixed-vhd", "Azure accepts only fixed-size VHD (not dynamic, not VHDX)",
                             AZURE_GENERIC, "subformat", "fixed"),
               RequireOption("exact-size", "the VHD must keep the exact virtual size (no CHS rounding)",
                             AZURE_GENERIC, "force_size", "on"),
               SizeMultiple("whole-mib", "Azure needs a virtual size that is a whole number of MiB",
                            AZURE_GENERIC, MiB),
               MinSize("min-20mib", "Azure uploads are at least 20 MiB", AZURE_UPLOAD_SIZE, 20 * MiB),
               MaxSize("max-32tib", "Azure uploads are at most 32 TiB", AZURE_UPLOAD_SIZE, 32 * TiB),
           ), source=AZURE_GENERIC),
    # VM Import/Export reads stream-optimized ESX VMDK (also OVA, VHD/VHDX, raw).
    Preset("aws", "AWS VM Import: streamOptimized VMDK", "vmdk", {"subformat": "streamOptimized"}, ".vmdk",
           rules=(
               RequireOption("stream-optimized", "VM Import reads stream-optimized ESX VMDK", AWS_FORMATS,
                             "subformat", "streamOptimized"),
           ), source=AWS_FORMATS),
    # GCE manual import: a raw disk named disk.raw in a gzip'ed tar (GNU oldgnu), size in whole GiB.
    Preset("gcp", "Google Compute Engine: disk.raw in .tar.gz, whole GiB", "raw", {}, ".tar.gz",
           layout=Layout.GCP_TAR, rules=(
               SizeMultiple("whole-gib", "Compute Engine needs a raw disk that is a whole number of GiB",
                            GCP_IMPORT, GiB),
           ), source=GCP_IMPORT),
    # vSphere/Workstation import an OVA: OVF 1.0 descriptor, streamOptimized VMDK, manifest.
    Preset("vmware", "VMware: OVA (OVF 1.0 + streamOptimized VMDK + SHA256 manifest)", "vmdk",
           {"subformat": "streamOptimized", "adapter_type": "lsilogic"}, ".ova", layout=Layout.OVA, rules=(
               RequireOption("stream-optimized", "an OVA carries stream-optimized VMDK disks", OVF_SPEC,
                             "subformat", "streamOptimized"),
           ), source=OVF_SPEC),
    Preset("virtualbox", "VirtualBox: dynamically allocated VDI", "vdi", {"static": "off"}, ".vdi",
           source=VBOX_MANUAL),
    # Hyper-V generation 2 VMs boot only from VHDX; the format's limit is 64 TiB.
    Preset("hyperv", "Hyper-V (generation 2): dynamic VHDX", "vhdx", {"subformat": "dynamic"}, ".vhdx",
           rules=(
               MaxSize("max-64tib", "VHDX holds at most 64 TiB", VHDX_SPEC, 64 * TiB),
           ), source=HYPERV_GEN2),
)

PRESETS: Mapping[str, Preset] = {p.name: p for p in _PRESET_LIST}


def get_preset(name: str) -> Preset:
    """Look a preset up by name; UsageError listing the known ones."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


def apply_rules(preset: Preset, size: int, options: Mapping[str, str]) -> tuple[int, list[str]]:
    """Run every rule in order: the final virtual size and the notes about what was fixed."""
    notes: list[str] = []
    for rule in preset.rules:
        outcome = rule.apply(preset.name, size, options)
        size = outcome.size
        if outcome.note:
            notes.append(outcome.note)
    return size, notes
