"""Finding the UEFI firmware qemu boots with: OVMF (x86_64, with and without Secure Boot) and AAVMF (aarch64).

The distribution-neutral way is qemu's firmware descriptors (``docs/interop/firmware.json``):
every distribution that packages edk2 for qemu installs JSON files in
``/usr/share/qemu/firmware`` (and ``/etc/qemu/firmware``) that name the code and the
variable-store template, the architecture and machine types, and features such as
``secure-boot``, ``enrolled-keys`` and ``requires-smm``. They are read first. When no
descriptor fits, the well-known file names of Debian (ovmf, qemu-efi-aarch64), Fedora
(edk2-ovmf, edk2-aarch64) and Arch (edk2-ovmf, edk2-aarch64) are tried in that order.

A boot never writes the template: :func:`imgsmith.boot.test.boot_test` copies the
variable store into its temp directory (UEFI writes boot entries and, with Secure
Boot, MOK state into it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["DESCRIPTOR_DIRS", "FALLBACKS", "Firmware", "UefiFirmware", "find_uefi",
           "from_descriptors", "kinds_for_arch"]

log = logging.getLogger("imgsmith.boot")

DESCRIPTOR_DIRS = (Path("/etc/qemu/firmware"), Path("/usr/share/qemu/firmware"))


class Firmware(StrEnum):
    """What a boot test boots with: SeaBIOS (qemu's default), OVMF/AAVMF, or OVMF with Secure Boot on."""

    BIOS = "bios"
    UEFI = "uefi"
    SECURE_BOOT = "secure-boot"


@dataclass(frozen=True)
class UefiFirmware:
    """One edk2 build: the read-only code, the variable-store template, and whether it needs SMM."""

    code: Path
    vars_template: Path
    arch: str  # qemu's name: x86_64 | aarch64
    secure_boot: bool
    requires_smm: bool
    source: str  # the descriptor file, or "fallback path"

    def describe(self) -> str:
        return f"{self.code} + {self.vars_template} ({self.source})"


def _descriptor_files(dirs: Sequence[Path]) -> list[Path]:
    """qemu's rule: files are sorted by name across the directories; an earlier directory's file of the
    same name overrides a later one's (/etc over /usr/share)."""
    chosen: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for f in d.glob("*.json"):
                chosen.setdefault(f.name, f)
    return [chosen[name] for name in sorted(chosen)]


def _parse(path: Path) -> UefiFirmware | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        mapping = data["mapping"]
        if "uefi" not in data.get("interface-types", []) or mapping.get("device") != "flash":
            return None
        code = Path(mapping["executable"]["filename"])
        template = Path(mapping["nvram-template"]["filename"])
        arches = {t["architecture"] for t in data.get("targets", [])}
        features = set(data.get("features", []))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("firmware descriptor %s skipped: %s", path, exc)
        return None
    if len(arches) != 1 or not code.is_file() or not template.is_file():
        return None
    secure = "secure-boot" in features and "enrolled-keys" in features
    return UefiFirmware(code, template, arches.pop(), secure, "requires-smm" in features, f"descriptor {path}")


def from_descriptors(dirs: Sequence[Path] = DESCRIPTOR_DIRS) -> list[UefiFirmware]:
    """Every usable UEFI firmware the descriptors name, in qemu's priority order."""
    return [fw for f in _descriptor_files(dirs) if (fw := _parse(f)) is not None]


# (arch, secure boot) -> candidate (code, vars) pairs: Debian, then Fedora, then Arch.
FALLBACKS: dict[tuple[str, bool], tuple[tuple[str, str], ...]] = {
    ("x86_64", False): (
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
        ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
    ),
    ("x86_64", True): (
        ("/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
        ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
        ("/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd", "/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd"),
        ("/usr/share/edk2/x64/OVMF_CODE.secboot.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
    ),
    ("aarch64", False): (
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
        ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw"),
        ("/usr/share/edk2/aarch64/QEMU_CODE.fd", "/usr/share/edk2/aarch64/QEMU_VARS.fd"),
    ),
}

_PACKAGES = {"x86_64": "ovmf", "aarch64": "qemu-efi-aarch64"}


def _from_fallbacks(arch: str, secure_boot: bool, candidates: Iterable[tuple[str, str]]) -> UefiFirmware | None:
    for code, template in candidates:
        if Path(code).is_file() and Path(template).is_file():
            smm = secure_boot and arch == "x86_64"
            return UefiFirmware(Path(code), Path(template), arch, secure_boot, smm, "fallback path")
    return None


def find_uefi(arch: str, *, secure_boot: bool = False, dirs: Sequence[Path] = DESCRIPTOR_DIRS,
              fallbacks: dict[tuple[str, bool], tuple[tuple[str, str], ...]] | None = None) -> UefiFirmware:
    """The firmware for *arch* (``x86_64``/``aarch64``): descriptors first, then known paths.

    Without Secure Boot a descriptor with Secure Boot enforced is passed over (an unsigned
    image must boot); with it, only one with Microsoft's keys enrolled will do (Debian's
    shim is signed by Microsoft).
    """
    fitting = [fw for fw in from_descriptors(dirs) if fw.arch == arch and fw.secure_boot == secure_boot]
    # Without Secure Boot, SMM-free code boots faster under TCG: take it over a "secure" build
    # without enrolled keys (which would also boot an unsigned image).
    fitting.sort(key=lambda fw: fw.requires_smm and not secure_boot)
    if fitting:
        return fitting[0]
    table = FALLBACKS if fallbacks is None else fallbacks
    found = _from_fallbacks(arch, secure_boot, table.get((arch, secure_boot), ()))
    if found is not None:
        return found
    what = "Secure Boot UEFI firmware with Microsoft keys" if secure_boot else "UEFI firmware"
    raise UsageError(f"no {what} for {arch} found (qemu firmware descriptors in "
                     f"{', '.join(map(str, dirs))}, nor the usual paths)",
                     hint=f"apt-get install {_PACKAGES.get(arch, 'ovmf')}")


def kinds_for_arch(arch: str) -> tuple[Firmware, ...]:
    """The firmwares a boot test can use for a guest of *arch* (Debian's name: amd64, arm64)."""
    return (Firmware.BIOS, Firmware.UEFI, Firmware.SECURE_BOOT) if arch == "amd64" else (Firmware.UEFI,)
