"""Operating-system inspection from a guest's files, without the appliance.

The chroot backend needs what libguestfs inspection gives (distro, version, product
name, package manager, hostname, architecture, which filesystem is root and what
/etc/fstab mounts where), and the results must be the same as the appliance's, because
operations branch on them and the build manifest records them. The rules below follow
libguestfs 1.48's: os-release first, except where a distro's os-release lacks the minor
version (CentOS/RHEL 7, Debian), where the legacy release file is read instead. The
SELinux and init-system checks are shared with the appliance backend.
"""

from __future__ import annotations

import re
import shlex
import struct
from collections.abc import Callable

from ..errors import GuestError
from .api import Guest, OSInfo, family_of

__all__ = ["arch_of", "choose_root", "fstab_entries", "init_system", "inspect_tree", "looks_like_root",
           "selinux_enabled"]

# os-release ID -> libguestfs distro name (where they differ or need listing)
_DISTRO_IDS = {
    "rhel": "rhel", "centos": "centos", "fedora": "fedora", "rocky": "rocky", "almalinux": "almalinux",
    "ol": "oraclelinux", "scientific": "scientificlinux", "debian": "debian", "ubuntu": "ubuntu",
    "linuxmint": "linuxmint", "kali": "kalilinux", "opensuse": "opensuse", "opensuse-leap": "opensuse",
    "opensuse-tumbleweed": "opensuse", "sles": "sles", "sled": "sles", "alpine": "alpinelinux",
    "arch": "archlinux", "altlinux": "altlinux", "void": "voidlinux", "openEuler": "openeuler",
    "circle": "circle", "virtuozzo": "virtuozzo", "kylin": "kylin", "gentoo": "gentoo",
}
_ELF_MACHINES = {0x03: "i386", 0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm", 0x16: "s390x",
                 0xF3: "riscv64", 0x15: "ppc64"}
_ARCH_PROBES = ("/bin/bash", "/bin/ls", "/bin/echo", "/bin/rm", "/bin/sh")


def choose_root(roots: list[str], choice: str, describe: Callable[[str], str]) -> str:
    """Apply --root (single, first, or a device) to the roots inspection found; both backends use it."""
    if not roots:
        raise GuestError("no operating system was found on the disk",
                         hint="is this a bootable guest image? `imgsmith info --inspect DISK` shows what is there")
    if choice == "first":
        return sorted(roots)[0]
    if choice in ("single", "ask"):
        if len(roots) > 1:
            names = ", ".join(f"{r} ({describe(r)})" for r in roots)
            raise GuestError(f"the disk holds several operating systems: {names}",
                             hint="choose one with --root DEVICE (or --root first)")
        return roots[0]
    if choice not in roots:
        raise GuestError(f"--root {choice}: not an operating system root; found: {', '.join(roots)}")
    return choice


def _read(g: Guest, path: str) -> str | None:
    try:
        return g.read_text(path) if g.is_file(path, follow=True) else None
    except GuestError:
        return None


def _os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            try:
                out[key.strip()] = " ".join(shlex.split(value)) if value.strip() else ""
            except ValueError:
                out[key.strip()] = value.strip().strip("\"'")
    return out


def _version(text: str) -> tuple[int, int] | None:
    m = re.search(r"(\d+)(?:\.(\d+))?", text)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def arch_of(g: Guest) -> str:
    """The architecture of the guest's binaries, from the ELF header of the first shell tool found."""
    for path in _ARCH_PROBES:
        try:
            if not g.is_file(path, follow=True):
                continue
            head = g.read(g.realpath(path))[:20]
        except GuestError:
            continue
        if head[:4] != b"\x7fELF":
            continue
        machine = struct.unpack("<H" if head[5] == 1 else ">H", head[18:20])[0]
        arch = _ELF_MACHINES.get(machine, "unknown")
        if arch == "ppc64" and head[5] == 1:
            arch = "ppc64le"
        return arch
    return "unknown"


def selinux_enabled(g: Guest) -> bool:
    """SELinux is in use when its tools are installed and the config does not disable it.

    Like libguestfs's own test, a config file alone is not enough: without load_policy
    the guest cannot load a policy, so labels (and /.autorelabel) would be meaningless.
    """
    if not any(g.is_file(p, follow=True) for p in ("/usr/sbin/load_policy", "/sbin/load_policy")):
        return False
    text = _read(g, "/etc/selinux/config")
    m = re.search(r"^\s*SELINUX\s*=\s*(\w+)", text or "", re.MULTILINE)
    return bool(m and m.group(1).lower() in ("enforcing", "permissive"))


def init_system(g: Guest) -> str:
    for path in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd"):
        if g.is_file(path, follow=True):
            return "systemd"
    return "sysvinit"


def looks_like_root(g: Guest) -> bool:
    """libguestfs's test for a Linux root: /etc/fstab or os-release, plus a /bin or /usr/bin."""
    has_etc = any(g.is_file(p, follow=True) for p in ("/etc/os-release", "/usr/lib/os-release", "/etc/fstab"))
    return has_etc and (g.is_dir("/bin", follow=True) or g.is_dir("/usr/bin", follow=True))


def fstab_entries(g: Guest) -> list[tuple[str, str, str, str]]:
    """(spec, mountpoint, fstype, options) of /etc/fstab lines that mount a real filesystem below /."""
    out = []
    for line in (_read(g, "/etc/fstab") or "").splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#"):
            continue
        spec, mp, fstype = fields[0], fields[1], fields[2]
        if not mp.startswith("/") or fstype in ("swap", "proc", "sysfs", "tmpfs", "devpts", "none", "nfs", "cifs"):
            continue
        out.append((spec, mp, fstype, fields[3] if len(fields) > 3 else "defaults"))
    return out


def _hostname(g: Guest, family: str) -> str:
    candidates = {"suse": ("/etc/HOSTNAME", "/etc/hostname")}.get(family, ("/etc/hostname",))
    for path in candidates:
        text = (_read(g, path) or "").strip()
        if text:
            return text.splitlines()[0].strip()
    if family == "redhat":
        m = re.search(r"^HOSTNAME=(.*)$", _read(g, "/etc/sysconfig/network") or "", re.MULTILINE)
        if m:
            return m.group(1).strip().strip("\"'")
    return "unknown"


_PACKAGING = {"debian": ("deb", "apt"), "ubuntu": ("deb", "apt"), "linuxmint": ("deb", "apt"),
              "kalilinux": ("deb", "apt"), "opensuse": ("rpm", "zypper"), "sles": ("rpm", "zypper"),
              "alpinelinux": ("apk", "apk"), "archlinux": ("pacman", "pacman")}


def _package_management(distro: str, major: int) -> tuple[str, str]:
    """libguestfs's table: dnf from Fedora 22 and EL 8 on, yum before."""
    if distro in _PACKAGING:
        return _PACKAGING[distro]
    if distro == "fedora":
        return "rpm", "dnf" if major >= 22 else "yum"
    if family_of(distro) == "redhat":
        return "rpm", "dnf" if major >= 8 else "yum"
    return "unknown", "unknown"


def inspect_tree(g: Guest, root_device: str, mountpoints: tuple[tuple[str, str], ...]) -> OSInfo:
    """What libguestfs inspection would say about the guest mounted behind *g*."""
    rel = _os_release(_read(g, "/etc/os-release") or _read(g, "/usr/lib/os-release") or "")
    distro = _DISTRO_IDS.get(rel.get("ID", ""), rel.get("ID", "") or "unknown")
    product = rel.get("PRETTY_NAME", "")
    version = _version(rel.get("VERSION_ID", "")) or (0, 0)
    has_minor = "." in rel.get("VERSION_ID", "")
    legacy: str | None = None
    if not rel or (not has_minor and distro in ("centos", "rhel", "debian", "scientificlinux", "oraclelinux")):
        for path in ("/etc/redhat-release", "/etc/debian_version"):
            legacy = _read(g, path)
            if legacy and _version(legacy):
                break
            legacy = None
    if legacy:
        first = legacy.strip().splitlines()[0]
        product, version = first, _version(first) or version
        if not rel:  # no os-release at all: name the distro from the release file
            low = first.lower()
            distro = next((d for key, d in (("centos", "centos"), ("red hat", "rhel"), ("fedora", "fedora"),
                                            ("rocky", "rocky"), ("alma", "almalinux")) if key in low),
                          "debian" if g.is_file("/etc/debian_version") else "redhat-based")
    family = family_of(distro)
    pkg_format, pkg_mgmt = _package_management(distro, version[0])
    return OSInfo(
        type="linux", distro=distro, major=version[0], minor=version[1], arch=arch_of(g),
        product_name=product or "unknown", package_format=pkg_format, package_management=pkg_mgmt,
        hostname=_hostname(g, family), root=root_device, selinux=selinux_enabled(g), init=init_system(g),
        mountpoints=mountpoints,
    )
