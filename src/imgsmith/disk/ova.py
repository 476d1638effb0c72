"""OVA packaging: an OVF 1.0 descriptor, one streamOptimized VMDK and a SHA256 manifest in a tar.

Member order follows the OVF specification (DSP0243): the descriptor first, so an
importer can read it before the disk arrives, then the disk in References order, and
the manifest last - the placement OVF 2.0 allows for manifests written after the
files they cover; importers that stream the archive (vSphere, VirtualBox, AWS VM
Import) read it there. The archive is USTAR. The descriptor describes a
minimal machine (CPUs, memory, one LSI Logic SCSI disk, one NIC) that the user can
change on import; its disk capacity is the VMDK's exact virtual size in bytes.
"""

from __future__ import annotations

import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import escape, quoteattr

from ..host.files import sha256_file

__all__ = ["VirtualMachine", "manifest", "ovf_descriptor", "pack", "safe_name"]

STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


@dataclass(frozen=True)
class VirtualMachine:
    """The machine the descriptor declares; the importer may change all of it."""

    name: str
    cpus: int = 2
    memory_mib: int = 2048
    cim_os_id: int = 101            # CIM_OperatingSystem "Linux 64-Bit"
    vmware_os_type: str = "otherLinux64Guest"
    hardware_version: str = "vmx-10"
    adapter: str = "lsilogic"


def safe_name(text: str) -> str:
    """A name usable as an OVF id and a USTAR member name (letters, digits, ``._-``; short)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "disk"
    return cleaned[:64]


def _item(fields: dict[str, str]) -> str:
    # RASD elements must appear in alphabetical order (CIM schema sequence).
    inner = "".join(f"        <rasd:{k}>{escape(v)}</rasd:{k}>\n" for k, v in sorted(fields.items()))
    return f"      <Item>\n{inner}      </Item>\n"


def _hardware_items(vm: VirtualMachine) -> str:
    """CPU, memory, SCSI controller, the disk on it, and one NIC, as RASD items."""
    return "".join(_item(f) for f in (
        {"AllocationUnits": "hertz * 10^6", "Description": "Number of virtual CPUs",
         "ElementName": f"{vm.cpus} virtual CPU(s)", "InstanceID": "1", "ResourceType": "3",
         "VirtualQuantity": str(vm.cpus)},
        {"AllocationUnits": "byte * 2^20", "Description": "Memory size",
         "ElementName": f"{vm.memory_mib}MB of memory", "InstanceID": "2", "ResourceType": "4",
         "VirtualQuantity": str(vm.memory_mib)},
        {"Description": "SCSI Controller", "ElementName": "SCSI Controller 0", "InstanceID": "3",
         "ResourceSubType": vm.adapter, "ResourceType": "6"},
        {"AddressOnParent": "0", "ElementName": "Hard Disk 1", "HostResource": "ovf:/disk/vmdisk1",
         "InstanceID": "4", "Parent": "3", "ResourceType": "17"},
        {"AutomaticAllocation": "true", "Connection": "VM Network", "ElementName": "Network adapter 1",
         "InstanceID": "5", "ResourceSubType": "E1000", "ResourceType": "10"},
    ))


def ovf_descriptor(vm: VirtualMachine, disk_href: str, disk_file_size: int, capacity: int,
                   populated_size: int | None = None) -> str:
    """The OVF 1.0 envelope text for one streamOptimized disk of *capacity* bytes."""
    populated = f" ovf:populatedSize=\"{populated_size}\"" if populated_size is not None else ""
    items = _hardware_items(vm)
    name = escape(vm.name)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href={quoteattr(disk_href)} ovf:id="file1" ovf:size="{disk_file_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1"
        ovf:fileRef="file1" ovf:format="{STREAM_OPTIMIZED}"{populated}/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id={quoteattr(vm.name)}>
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="{vm.cim_os_id}" vmw:osType={quoteattr(vm.vmware_os_type)}>
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>{escape(vm.hardware_version)}</vssd:VirtualSystemType>
      </System>
{items}    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def manifest(digests: list[tuple[str, str]]) -> str:
    """The ``.mf`` text: one ``SHA256(name)= hex`` line per file, in archive order."""
    return "".join(f"SHA256({name})= {digest}\n" for name, digest in digests)


class _Counting:
    """A read-only file wrapper that reports how many bytes tarfile has copied."""

    def __init__(self, f: BinaryIO, report: Callable[[int], None]) -> None:
        self._f = f
        self._report = report

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._report(len(data))
        return data


def _add(tar: tarfile.TarFile, name: str, path: Path, report: Callable[[int], None]) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mode = 0o644
    info.mtime = int(time.time())
    with path.open("rb") as f:
        tar.addfile(info, _Counting(f, report))


def pack(vmdk: Path, out: Path, vm: VirtualMachine, capacity: int,
         progress: Callable[[float], None] | None = None) -> str:
    """Write ``out`` as an OVA around *vmdk*; return the name of the disk member.

    The descriptor and manifest are written next to *vmdk* (the caller's private
    work directory) so the archive is assembled from files, in the required order.
    """
    base = safe_name(vm.name)
    disk_name = f"{base}-disk1.vmdk"
    ovf_name, mf_name = f"{base}.ovf", f"{base}.mf"
    total = vmdk.stat().st_size * 2
    done = 0

    def report(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and total:
            progress(min(100.0, 100.0 * done / total))

    disk_digest = sha256_file(vmdk, report)
    ovf_path = vmdk.with_name(ovf_name)
    ovf_path.write_text(ovf_descriptor(vm, disk_name, vmdk.stat().st_size, capacity), encoding="utf-8")
    ovf_digest = sha256_file(ovf_path)
    mf_path = vmdk.with_name(mf_name)
    mf_path.write_text(manifest([(ovf_name, ovf_digest), (disk_name, disk_digest)]), encoding="utf-8")
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, ovf_name, ovf_path, lambda n: None)
        _add(tar, disk_name, vmdk, report)
        _add(tar, mf_name, mf_path, lambda n: None)
    return disk_name
