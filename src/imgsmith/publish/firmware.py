"""How the image boots, read from its partition table: the ``hw_firmware_type`` and boot mode clouds want.

The first 34 sectors (MBR, GPT header and entries) are read through ``qemu-img dd`` so any
format works (a compressed qcow2 too). A GPT disk with an EFI system partition and no BIOS
boot partition boots only with UEFI (``uefi``); one with both, as the distributions' cloud
images are, boots either way (``hybrid``); everything else boots with BIOS (``bios``). Each
destination turns that into its own vocabulary: AWS ``uefi-preferred`` and Alibaba Cloud's
``UEFI-Preferred`` for ``hybrid``, BIOS (every cloud's default) where a cloud has no such value.
"""

from __future__ import annotations

import os
import struct
import tempfile
import uuid
from pathlib import Path

from .. import proc

__all__ = ["firmware_for", "firmware_of", "firmware_of_table"]

_ESP = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
_BIOS_BOOT = uuid.UUID("21686148-6449-6E6F-744E-656564454649")


def firmware_of_table(head: bytes) -> str:
    """``uefi``, ``hybrid`` or ``bios`` from the first 34 sectors of a disk."""
    if len(head) < 1024 or head[510:512] != b"\x55\xaa":
        return "bios"
    types = [head[446 + 16 * i + 4] for i in range(4)]
    if 0xEE not in types:
        return "uefi" if 0xEF in types and all(t in (0, 0xEF) for t in types) else "bios"
    gpt = head[512:1024]
    if gpt[:8] != b"EFI PART":
        return "bios"
    entries_lba, count, size = struct.unpack_from("<QII", gpt, 72)
    found: set[uuid.UUID] = set()
    for i in range(min(count, 128)):
        at = entries_lba * 512 + i * size
        if at + 16 > len(head):
            break
        found.add(uuid.UUID(bytes_le=head[at:at + 16]))
    if _ESP not in found:
        return "bios"
    return "hybrid" if _BIOS_BOOT in found else "uefi"


def firmware_of(path: Path, fmt: str) -> str:
    with tempfile.TemporaryDirectory(prefix="imgsmith-fw-") as tmp:
        out = Path(tmp) / "head"
        proc.run(["qemu-img", "dd", "-f", fmt, "-O", "raw", "bs=512", "count=34", f"if={os.fspath(path)}",
                  f"of={os.fspath(out)}"])
        return firmware_of_table(out.read_bytes())


def firmware_for(manifest: dict[str, object], path: Path, fmt: str) -> str:
    """``bios``, ``uefi`` or ``hybrid``: the manifest's ``boot.firmware`` when the build recorded it, else
    read from the partition table (an image built before the manifest had a boot record, or not by us)."""
    boot = manifest.get("boot")
    recorded = boot.get("firmware") if isinstance(boot, dict) else None
    if recorded in ("bios", "uefi", "hybrid"):
        return str(recorded)
    # "unknown" is the build's word for a disk with neither an ESP nor a BIOS boot partition (or no
    # table at all), which firmware_of_table reads as bios too: no need to read the table again.
    if recorded == "unknown":
        return "bios"
    return firmware_of(path, fmt)
