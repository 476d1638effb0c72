"""What ``cloud-ready`` does about each rule: operations made from the rule's own hits.

A fix is keyed by the rule's catalogue name, so every cloud that has the rule gets the same
repair, parametrised by what the check found (the hit's ``remedy``: the missing driver, the
datasource, the console) and by the cloud's profile. Only fixes that are safe on any image
are here; layout problems (LVM root, root not last, GPT on an MBR-only cloud, data disks,
static addresses) are left to the user, and ``imgsmith check`` keeps reporting them.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import GuestError
from ..ops.base import Operation, ParseContext
from ..ops.cloudfix import (
    CloudInitEnable,
    DatasourceList,
    FstabUuid,
    GrubUuid,
    InitramfsDrivers,
    RemoveMacBinding,
    RemoveSwap,
    SerialConsole,
)
from ..ops.packages import Install
from .base import Fix, Hit, Profile
from .facts import Facts

__all__ = ["FIXES", "PACKAGES", "package_for"]

PACKAGES: Mapping[str, Mapping[str, str]] = {  # what a rule needs -> the package per distribution family
    "cloud-init": {"debian": "cloud-init", "redhat": "cloud-init", "suse": "cloud-init"},
    "growpart": {"debian": "cloud-guest-utils", "redhat": "cloud-utils-growpart", "suse": "growpart"},
    "qemu-guest-agent": {"debian": "qemu-guest-agent", "redhat": "qemu-guest-agent", "suse": "qemu-guest-agent"},
}


_PARSE = ParseContext(check_files=False, origin="cloud-ready")  # fix operations read no host files


def package_for(what: str, family: str) -> str:
    try:
        return PACKAGES[what][family]
    except KeyError:
        raise GuestError(f"no known {what} package for the {family!r} distribution family") from None


def _install(what: str) -> Fix:
    pkgs = PACKAGES[what]
    names = next(iter(pkgs.values())) if len(set(pkgs.values())) == 1 else \
        ", ".join(f"{pkg} ({fam})" for fam, pkg in pkgs.items())
    return Fix(lambda f, _p, _h: [Install((package_for(what, f.guest.os.family),))], f"installs {names} (`install`)")


def _drivers(f: Facts, p: Profile, hits: list[Hit]) -> list[Operation]:
    drivers = tuple(dict.fromkeys(r for h in hits for r in h.remedy))
    return [InitramfsDrivers(drivers)] if drivers else []


def _datasource(f: Facts, p: Profile, hits: list[Hit]) -> list[Operation]:
    listed = [str(x) for x in f.cloud_cfg[0].get("datasource_list") or []]
    wanted = [d for h in hits for d in h.remedy if d not in listed]
    if not wanted:
        return []
    base = [d for d in listed if d != "None"]
    return [DatasourceList(tuple(dict.fromkeys([*base, *wanted, *(["None"] if "None" in listed else [])])))]


def _swap(f: Facts, p: Profile, hits: list[Hit]) -> list[Operation]:
    return [RemoveSwap()] if any(h.remedy == ("fstab",) for h in hits) else []  # a swap partition stays


def _fstab(f: Facts, p: Profile, hits: list[Hit]) -> list[Operation]:
    return [FstabUuid()] if any(h.remedy for h in hits) else []  # /dev/cdrom and the like stay


def _console(f: Facts, p: Profile, hits: list[Hit]) -> list[Operation]:
    return [SerialConsole.parse(hits[0].remedy[0] if hits[0].remedy else p.console, _PARSE)]


def _flag(op: type[Operation], text: str) -> Fix:
    return Fix(lambda _f, _p, _h: [op.parse("", _PARSE)], text)


_DRIVERS = Fix(_drivers, "regenerates the initramfs with the missing drivers (`initramfs-drivers`: dracut "
                         "`--add-drivers`, or `/etc/initramfs-tools/modules` and `update-initramfs -u`)")

FIXES: Mapping[str, Fix] = {
    "virtio": _DRIVERS,
    "drivers": _DRIVERS,
    "nvme": _DRIVERS,
    "cloud-init": _install("cloud-init"),
    "cloud-init-enabled": _flag(CloudInitEnable, "removes /etc/cloud/cloud-init.disabled and enables cloud-init's "
                                                 "units (`cloud-init-enable`)"),
    "datasource": Fix(_datasource, "adds the cloud's datasources to datasource_list in "
                                   "/etc/cloud/cloud.cfg.d/91-imgsmith-datasource.cfg (`datasource-list`)"),
    "growpart": _install("growpart"),
    "qemu-guest-agent": _install("qemu-guest-agent"),
    "fstab-uuid": Fix(_fstab, "rewrites /etc/fstab entries that name this disk's partitions by device (/dev/sda1) "
                              "to UUID= (`fstab-uuid`)"),
    "no-swap": Fix(_swap, "comments out swap lines in /etc/fstab (`remove-swap`); a swap partition stays"),
    "grub-uuid": _flag(GrubUuid, "drops GRUB_DISABLE_LINUX_UUID and rewrites root=/dev/... to root=UUID= in "
                                 "grub.cfg and BLS entries (`grub-uuid`)"),
    "serial-console": Fix(_console, "puts console=tty0 console=ttyS0,115200n8 in GRUB_CMDLINE_LINUX and on every "
                                    "kernel line (`serial-console`)"),
    "no-mac-binding": _flag(RemoveMacBinding, "removes HWADDR=/MACADDR= lines, persistent-net rules, netplan "
                                              "macaddress matches, NetworkManager mac-address= (`remove-mac-binding`)"),
}
