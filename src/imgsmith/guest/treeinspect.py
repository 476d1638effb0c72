"""Operating-system inspection from a guest's files: one set of rules for every backend.

Both backends, ``imgsmith info --inspect`` and the build manifest need what libguestfs
inspection gives (distro, version, product name, package manager, hostname,
architecture, which filesystem is root and what /etc/fstab mounts where), and the
answers must be libguestfs's, because operations branch on them and manifests record
them. libguestfs's ``inspect_os`` costs ~13 s under TCG (it mounts every filesystem and
parses fstab with Augeas), so the rules are ported here instead and run over a small
:class:`TreeReader` (a Guest of either backend provides it) and a :class:`DeviceMap`
(how the backend names the guest's devices). The port follows libguestfs 1.48's
``daemon/inspect_fs.ml``, ``inspect_fs_unix.ml`` and ``inspect_fs_unix_fstab.ml`` for
Linux roots: the release-file tests in libguestfs's order (each may leave partial facts
for the next), ``file_architecture`` of the first shell tool, hostname files, and fstab
resolution (UUID=, LABEL=, /dev/root, /dev/mapper, /dev/[hsv]dX and /dev/xvdX by drive
order, /dev/disk/by-id/*-partN, btrfs ``subvol=``). Deliberate additions: PARTUUID=,
PARTLABEL=, /dev/disk/by-{uuid,label,partuuid,partlabel} and /dev/nvmeKn1pN are resolved
too (1.48 ignores them), and "/" is always the root that was inspected.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
import struct
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from ..errors import GuestError
from .api import OSInfo, Stat

__all__ = [
    "LINUX_FS",
    "DeviceMap",
    "TreeReader",
    "arch_of",
    "choose_root",
    "complete",
    "find_roots",
    "fstab_entries",
    "fstab_mountpoints",
    "init_system",
    "inspect_root",
    "looks_like_root",
    "mount_order",
    "selinux_enabled",
]

LINUX_FS = ("ext2", "ext3", "ext4", "xfs", "btrfs")
_SMALL = 2 * 1048 * 1024  # libguestfs's is_small_file limit (sic)


class TreeReader(Protocol):
    """The read-only file primitives inspection needs (a subset of the Guest API)."""

    def is_file(self, path: str, *, follow: bool = False) -> bool: ...
    def is_dir(self, path: str, *, follow: bool = False) -> bool: ...
    def is_symlink(self, path: str) -> bool: ...
    def readlink(self, path: str) -> str: ...
    def realpath(self, path: str) -> str: ...
    def read(self, path: str) -> bytes: ...
    def read_head(self, path: str, size: int) -> bytes: ...
    def stat(self, path: str) -> Stat: ...


class DeviceMap(Protocol):
    """The guest's block devices as the backend names them (appliance names: /dev/sda1, /dev/VG/LV)."""

    def find_tag(self, tag: str, value: str) -> str | None:
        """The device whose UUID / LABEL / PARTUUID / PARTLABEL is *value*, if any."""
    def disks(self) -> list[str]:
        """Whole disks in drive order."""
    def is_partition(self, device: str) -> bool: ...
    def canonical_lv(self, mapper: str) -> str | None:
        """/dev/mapper/VG-LV as /dev/VG/LV, when it is a logical volume."""


# --------------------------------------------------------------------------- reading files


def _lines(r: TreeReader, path: str) -> list[str] | None:
    """libguestfs's read_small_file: the lines of a regular file under 2 MB (symlinks followed).

    One stat and one read: every call is a round trip into the appliance.
    """
    try:
        st = r.stat(path)
        if not st.is_file or st.size > _SMALL:
            return None
        return r.read(path).decode("utf-8", "surrogateescape").split("\n")
    except GuestError:
        return None


def _shell_unquote(value: str) -> str:
    try:
        return " ".join(shlex.split(value)) if value.strip() else ""
    except ValueError:
        return value


def _key_values(lines: list[str], unquote: Callable[[str], str]) -> list[tuple[str, str]]:
    """parse_key_value_strings: skip empty and '#' lines, split at the first '='."""
    out = []
    for line in lines:
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.append((key, unquote(value)))
    return out


def _simple_unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'" else s


# --------------------------------------------------------------------------- release files


@dataclass
class _Release:
    distro: str | None = None
    product: str | None = None
    version: tuple[int, int] | None = None

    def parse_version(self, text: str) -> None:
        m = re.search(r"(\d+)\.(\d+)", text) or re.search(r"(\d+)", text)
        if m:
            self.version = (int(m.group(1)), int(m.group(2)) if m.lastindex == 2 else 0)


_OS_RELEASE_IDS = {
    "alpine": "alpinelinux", "altlinux": "altlinux", "arch": "archlinux", "centos": "centos", "coreos": "coreos",
    "debian": "debian", "fedora": "fedora", "frugalware": "frugalware", "gentoo": "gentoo", "kali": "kalilinux",
    "kylin": "kylin", "mageia": "mageia", "neokylin": "neokylin", "openmandriva": "openmandriva",
    "opensuse": "opensuse", "pardus": "pardus", "pld": "pldlinux", "rhel": "rhel", "rocky": "rocky",
    "sles": "sles", "sled": "sles", "ubuntu": "ubuntu", "void": "voidlinux",
}
_ROLLING = ("archlinux", "gentoo", "voidlinux")
_LSB_IDS = {"CoreOS": "coreos", "LinuxMint": "linuxmint", "Mageia": "mageia", "Ubuntu": "ubuntu"}


Parse = Callable[[list[str], _Release], bool]


def _os_release(lines: list[str], d: _Release) -> bool:
    for key, value in _key_values(lines, _shell_unquote):
        if key == "ID":
            distro = _OS_RELEASE_IDS.get(value) or ("opensuse" if value.startswith("opensuse-") else None)
            if distro:
                d.distro = distro
        elif key == "PRETTY_NAME":
            d.product = value
        elif key == "VERSION_ID":
            m = re.fullmatch(r"V(\d+)Update(\d+)", value)  # NeoKylin
            if m:
                d.version = (int(m.group(1)), int(m.group(2)))
            else:
                d.parse_version(value)
    if d.distro is None or d.product is None:
        return False
    if d.distro in ("debian", "centos", "rocky") and d.version is not None and d.version[1] == 0:
        return False  # os-release lacks the minor version: the legacy release file has it
    if d.version is None and d.distro in _ROLLING:
        d.version = (0, 0)
        return True
    return d.version is not None


def _lsb_release(lines: list[str], d: _Release) -> bool:
    ok = False
    for key, value in _key_values(lines, _simple_unquote):
        if key == "DISTRIB_ID" and value in _LSB_IDS:
            d.distro, ok = _LSB_IDS[value], True
        elif key == "DISTRIB_RELEASE":
            d.parse_version(value)
        elif key == "DISTRIB_DESCRIPTION":
            d.product, ok = value, True
    return ok


def _generic(distro: str, rex: str | None = None) -> Parse:
    """parse_generic: the first line is the product name; *rex* (if given) must match it for a version."""
    def parse(lines: list[str], d: _Release) -> bool:
        first = lines[0] if lines else ""
        if not first:
            return False
        d.product, d.distro = first, distro
        if rex is None:
            d.parse_version(first)
            return True
        m = re.search(rex, first)
        if not m:
            return False
        if m.lastindex:
            d.version = (int(m.group(1)), int(m.group(2)) if m.lastindex >= 2 and m.group(2) else 0)
        return True
    return parse


def _suse_release(lines: list[str], d: _Release) -> bool:
    if not lines:
        return False
    d.product = lines[0]
    if re.match(r"SUSE (Linux|LINUX) Enterprise |Novell Linux Desktop ", lines[0]):
        major = re.match(r"VERSION = (\d+)", lines[1]) if len(lines) > 1 else None
        minor = re.match(r"PATCHLEVEL = (\d+)", lines[2]) if len(lines) > 2 else None
        d.distro = "sles"
        d.version = (int(major.group(1)), int(minor.group(1)) if minor else 0) if major else None
    elif re.match(r"(openSUSE|SuSE Linux|SUSE LINUX) ", lines[0]):
        if len(lines) > 1:
            d.parse_version(lines[1])
        d.distro = "opensuse"
    return True


def _set(distro: str) -> Parse:
    def parse(_lines: list[str], d: _Release) -> bool:
        d.distro = distro
        return True
    return parse


def _rh(name: str) -> tuple[str, str, str]:
    return (rf"{name}.*release (\d+).*Update (\d+)", rf"{name}.*release (\d+)\.(\d+)", rf"{name}.*release (\d+)")


_OL, _CENTOS, _RHEL, _SL = _rh("Oracle Linux"), _rh("CentOS"), _rh("Red Hat"), _rh("Scientific Linux")
_ROCKY = _rh("Rocky Linux")[1:]
_TESTS: tuple[tuple[str, Parse], ...] = (
    ("/etc/os-release", _os_release),
    ("/etc/lsb-release", _lsb_release),
    ("/etc/openmandriva-release", _generic("openmandriva", r"OpenMandriva.*release (\d+)\.(\d+)\.?(\d+)? .*")),
    *(("/etc/oracle-release", _generic("oraclelinux", rex)) for rex in _OL),
    *(("/etc/centos-release", _generic("centos", rex)) for rex in _CENTOS),
    *(("/etc/rocky-release", _generic("rocky", rex)) for rex in _ROCKY),
    ("/etc/altlinux-release", _generic("altlinux")),
    ("/etc/redhat-release", _generic("fedora", r"Fedora release (\d+)")),
    *(("/etc/redhat-release", _generic("rhel", rex)) for rex in _RHEL),
    *(("/etc/redhat-release", _generic("centos", rex)) for rex in _CENTOS),
    *(("/etc/redhat-release", _generic("rocky", rex)) for rex in _ROCKY),
    *(("/etc/redhat-release", _generic("scientificlinux", rex)) for rex in _SL),
    ("/etc/redhat-release", _generic("redhat-based")),
    ("/etc/redhat-release", _set("redhat-based")),
    ("/etc/debian_version", _generic("debian")),
    ("/etc/pardus-release", _generic("pardus")),
    ("/etc/arch-release", _set("archlinux")),
    ("/etc/gentoo-release", _generic("gentoo")),
    ("/etc/meego-release", _generic("meego")),
    ("/etc/slackware-version", _generic("slackware")),
    ("/etc/ttylinux-target", _generic("ttylinux")),
    ("/etc/SuSE-release", _suse_release),
    ("/etc/SuSE-release", _set("suse-based")),
    ("/etc/cirros/version", _generic("cirros")),
    ("/etc/alpine-release", _generic("alpinelinux")),
    ("/etc/frugalware-release", _generic("frugalware", r"Frugalware (\d+)\.(\d+)")),
    ("/etc/pld-release", _generic("pldlinux", r"(\d+)\.(\d+) PLD Linux")),
)


def _release(r: TreeReader) -> _Release:
    """check_tests: run the release-file tests in order until one says it is done (each file read once)."""
    d = _Release()
    read: dict[str, list[str] | None] = {}
    for path, parse in _TESTS:
        if path not in read:
            read[path] = _lines(r, path)
        lines = read[path]
        if lines is not None and parse(lines, d):
            break
    return d


# --------------------------------------------------------------------------- package manager, arch, hostname

_RPM = frozenset({"altlinux", "centos", "rocky", "fedora", "mageia", "mandriva", "meego", "neokylin",
                  "openmandriva", "opensuse", "oraclelinux", "redhat-based", "rhel", "scientificlinux", "sles",
                  "suse-based"})
_DEB = frozenset({"debian", "kalilinux", "kylin", "linuxmint", "ubuntu"})
_FORMATS = {"archlinux": "pacman", "gentoo": "ebuild", "pardus": "pisi", "alpinelinux": "apk", "voidlinux": "xbps"}
_MANAGERS = {"meego": "yum", "neokylin": "dnf", "altlinux": "apt", "archlinux": "pacman", "gentoo": "portage",
             "pardus": "pisi", "mageia": "urpmi", "mandriva": "urpmi", "opensuse": "zypper", "sles": "zypper",
             "suse-based": "zypper", "alpinelinux": "apk", "voidlinux": "xbps", "openmandriva": "dnf",
             **dict.fromkeys(_DEB, "apt")}


def _package_format(distro: str | None) -> str:
    if distro in _RPM:
        return "rpm"
    if distro in _DEB:
        return "deb"
    return _FORMATS.get(distro or "", "unknown")


def _package_management(r: TreeReader, distro: str | None, major: int) -> str:
    if distro == "fedora":
        if major >= 22 and r.is_file("/usr/bin/dnf", follow=True):
            return "dnf"
        return "yum" if major >= 1 else "unknown"
    if distro in ("centos", "rocky", "oraclelinux", "redhat-based", "rhel", "scientificlinux"):
        return "dnf" if major >= 8 else "yum" if major >= 5 else "up2date" if major >= 2 else "unknown"
    return _MANAGERS.get(distro or "", "unknown")


_ELF_MACHINES = {0x03: "i386", 0x06: "i386", 0x3E: "x86_64", 0x2B: "sparc64", 0x32: "ia64",
                 0x14: "ppc", 0xB7: "aarch64", 0x28: "arm", 0xF3: "riscv", 0x16: "s390"}
_ARCH_PROBES = ("/bin/bash", "/bin/ls", "/bin/echo", "/bin/rm", "/bin/sh")


def _elf_arch(head: bytes) -> str | None:
    """file_architecture's answer for an ELF header (the fields `file` prints, mapped as libguestfs maps them)."""
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] not in (1, 2):
        return None
    bits, lsb = (64 if head[4] == 2 else 32), head[5] == 1
    machine = struct.unpack("<H" if lsb else ">H", head[18:20])[0]
    if machine == 0x15:  # PowerPC64
        return "ppc64le" if lsb else "ppc64"
    arch = _ELF_MACHINES.get(machine)
    if arch in ("riscv", "s390"):
        return f"{arch}{bits}" if arch == "riscv" else ("s390x" if bits == 64 else "s390")
    return arch


def arch_of(r: TreeReader) -> str:
    """check_architecture: the ELF machine of the first of bash, ls, echo, rm, sh that is a file."""
    for path in _ARCH_PROBES:
        try:
            if not r.is_file(path, follow=True):
                continue
            arch = _elf_arch(r.read_head(r.realpath(path), 20))
        except GuestError:
            continue
        if arch:
            return arch
    return "unknown"


def _hostname(r: TreeReader) -> str:
    """check_hostname_linux: /etc/HOSTNAME, /etc/hostname (first non-comment line), else sysconfig/network."""
    for path in ("/etc/HOSTNAME", "/etc/hostname"):
        kept = [line for line in _lines(r, path) or [] if line and not line.startswith("#")]
        if kept:
            return kept[0]
    if r.is_file("/etc/sysconfig/network"):
        for key, value in _key_values(_lines(r, "/etc/sysconfig/network") or [], _shell_unquote):
            if key.strip() == "HOSTNAME" and value:
                return value
    return "unknown"


def selinux_enabled(r: TreeReader) -> bool:
    """SELinux is in use when its tools are installed and the config does not disable it.

    Like libguestfs's own test, a config file alone is not enough: without load_policy
    the guest cannot load a policy, so labels (and /.autorelabel) would be meaningless.
    """
    if not any(r.is_file(p, follow=True) for p in ("/usr/sbin/load_policy", "/sbin/load_policy")):
        return False
    text = "\n".join(_lines(r, "/etc/selinux/config") or [])
    m = re.search(r"^\s*SELINUX\s*=\s*(\w+)", text, re.MULTILINE)
    return bool(m and m.group(1).lower() in ("enforcing", "permissive"))


def init_system(r: TreeReader) -> str:
    for path in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd"):
        if r.is_file(path, follow=True):
            return "systemd"
    return "sysvinit"


def looks_like_root(r: TreeReader) -> bool:
    """libguestfs's test for a Linux root (after ruling out a grub /boot)."""
    if any(r.is_file(p) for p in ("/grub/menu.lst", "/grub/grub.conf", "/grub2/grub.cfg")):
        return False
    usr_bin = r.is_symlink("/bin") and r.readlink("/bin") == "usr/bin"
    return r.is_dir("/etc") and (r.is_dir("/bin") or usr_bin) and \
        (r.is_file("/etc/fstab") or r.is_file("/etc/hosts"))


# --------------------------------------------------------------------------- fstab


def fstab_entries(r: TreeReader) -> list[tuple[str, str, str, str]]:
    """(spec, mountpoint, vfstype, options) of each /etc/fstab line, as Augeas's fstab lens sees them."""
    out = []
    for line in _lines(r, "/etc/fstab") or []:
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#"):
            continue
        out.append((fields[0], fields[1], fields[2], fields[3] if len(fields) > 3 else ""))
    return out


def _ignored_mountpoint(mp: str) -> bool:
    return mp in ("/dev", "/proc", "/selinux", "/sys") or mp.startswith(("/dev/", "/media/", "/proc/",
                                                                         "/selinux/", "/sys/"))


def _resolve_xdev(letters: str, part: str, devices: DeviceMap) -> str | None:
    index = 0
    for c in letters:  # drive_index: a=0 ... z=25, aa=26 ...
        index = index * 26 + (ord(c) - ord("a") + 1)
    disks = devices.disks()
    if 0 < index <= len(disks):
        dev = disks[index - 1] + part
        if devices.is_partition(dev):
            return dev
    return None


def _resolve(spec: str, root: str, devices: DeviceMap) -> str | None:  # noqa: PLR0911 - one per device scheme
    """check_fstab_entry's device resolution: the backend's name for *spec*, None to ignore the entry."""
    if re.match(r"/dev/(fd|cd)\d", spec) or spec in ("/dev/floppy", "/dev/cdrom") or \
            spec.startswith("/dev/iso9660/"):
        return None
    m = re.fullmatch(r"(UUID|LABEL|PARTUUID|PARTLABEL)=(.*)", spec) or \
        re.fullmatch(r"/dev/disk/by-(uuid|label|partuuid|partlabel)/(.+)", spec)
    if m:
        return devices.find_tag(m.group(1).upper(), _shell_unquote(m.group(2)))
    if spec == "/dev/root":
        return root
    if not spec.startswith("/dev/"):
        return None  # tmpfs, proc, nfs shares, /.swap ...
    if spec.startswith("/dev/mapper"):
        return devices.canonical_lv(spec) or spec
    m = re.fullmatch(r"/dev/(?:h|s|v|xv)d([a-z]+)(\d*)", spec)
    if m:
        return _resolve_xdev(m.group(1), m.group(2), devices) or spec
    m = re.fullmatch(r"/dev/nvme(\d+)n1(?:p(\d+))?", spec)  # not in libguestfs 1.48: the guest's first NVMe disk
    if m:
        return _resolve_xdev(chr(ord("a") + int(m.group(1))), m.group(2) or "", devices) or spec
    m = re.fullmatch(r"/dev/disk/by-id/.*-part(\d+)", spec)
    if m and len(devices.disks()) == 1 and devices.is_partition(f"/dev/sda{m.group(1)}"):
        return f"/dev/sda{m.group(1)}"
    return spec


def fstab_mountpoints(r: TreeReader, root: str, devices: DeviceMap) -> tuple[tuple[str, str], ...]:
    """inspect_get_mountpoints: mountpoint -> device for the fstab entries that resolve (always a "/")."""
    mps: dict[str, str] = {}
    for spec, file, vfstype, opts in fstab_entries(r):
        device = _resolve(spec, root, devices)
        mp = "/" + "/".join(p for p in file.split("/") if p) if file.startswith("/") else file
        if device is None or not mp.startswith("/") or _ignored_mountpoint(mp):
            continue
        subvol = re.search(r"(?:^|,)subvol=([^,]+)", opts) if vfstype == "btrfs" else None
        if subvol and not device.startswith("btrfsvol:"):
            device = f"btrfsvol:{device}/{subvol.group(1)}"
        mps[mp] = device
    mps.setdefault("/", root)
    return tuple(sorted(mps.items()))


# --------------------------------------------------------------------------- putting it together


def inspect_root(r: TreeReader, root: str, devices: DeviceMap) -> OSInfo:
    """What libguestfs inspection says about the Linux root *root*, mounted behind *r*."""
    d = _release(r)
    major, minor = d.version or (0, 0)
    return OSInfo(
        type="linux", distro=d.distro or "unknown", major=major, minor=minor, arch=arch_of(r),
        product_name=d.product or "unknown", package_format=_package_format(d.distro),
        package_management=_package_management(r, d.distro, major), hostname=_hostname(r), root=root,
        selinux=selinux_enabled(r), init=init_system(r), mountpoints=fstab_mountpoints(r, root, devices),
    )


def complete(info: OSInfo, r: TreeReader) -> OSInfo:
    """Refresh the facts that need every filesystem mounted (or that a previous layer may have changed)."""
    return dataclasses.replace(info, hostname=_hostname(r), selinux=selinux_enabled(r), init=init_system(r),
                               arch=info.arch if info.arch != "unknown" else arch_of(r))


def find_roots(candidates: Sequence[str], probe: Callable[[str], AbstractContextManager[TreeReader | None]],
               devices: DeviceMap) -> list[OSInfo]:
    """Every candidate filesystem that holds a Linux root, inspected (each mounted read-only by *probe*)."""
    roots = []
    for dev in candidates:
        with probe(dev) as r:
            if r is not None and looks_like_root(r):
                roots.append(inspect_root(r, dev, devices))
    return roots


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


def mount_order(mountpoints: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Mountpoints below / in an order where each parent is mounted before its children."""
    below = [(mp, dev) for mp, dev in mountpoints if mp != "/"]
    return sorted(below, key=lambda e: posixpath.normpath(e[0]).count("/"))
