"""The Guest API: everything an operation may do to a guest, independent of the backend.

Operations (customize and sysprep) call only these methods, never libguestfs, so a
second backend (a root-only mount + chroot one) can stand behind the same API.
Paths are absolute guest paths; all methods raise :class:`~imgsmith.errors.GuestError`
with a one-line reason on failure.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Guest", "OSInfo", "PartitionInfo", "Stat", "family_of"]


@dataclass(frozen=True)
class OSInfo:
    """What inspection found about the guest's operating system."""

    type: str  # linux, windows, ...
    distro: str  # centos, rhel, rocky, fedora, debian, ubuntu, opensuse, sles, ...
    major: int
    minor: int
    arch: str
    product_name: str
    package_format: str  # rpm, deb, ...
    package_management: str  # yum, dnf, apt, zypper, ...
    hostname: str
    root: str  # the root device
    selinux: bool = False  # /etc/selinux/config says enforcing or permissive
    init: str = "systemd"  # systemd or sysvinit
    mountpoints: tuple[tuple[str, str], ...] = field(default=())

    @property
    def family(self) -> str:
        """redhat, debian, suse or other: the unit most per-distro behaviour depends on."""
        return family_of(self.distro)

    def describe(self) -> str:
        return f"{self.product_name or self.distro} {self.major}.{self.minor} ({self.arch})"

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"

    def to_json(self) -> dict[str, object]:
        """The facts as ``imgsmith info --inspect --json`` and results report them."""
        return {"root": self.root, "type": self.type, "distro": self.distro, "product_name": self.product_name,
                "version": self.version, "major": self.major, "minor": self.minor, "arch": self.arch,
                "hostname": self.hostname, "package_format": self.package_format,
                "package_management": self.package_management, "selinux": self.selinux, "init": self.init,
                "mountpoints": dict(self.mountpoints)}


REDHAT_DISTROS = frozenset({
    "rhel", "centos", "fedora", "rocky", "almalinux", "oraclelinux", "scientificlinux",
    "redhat-based", "circle", "virtuozzo", "openeuler", "kylin",
})


def family_of(distro: str) -> str:
    if distro in REDHAT_DISTROS:
        return "redhat"
    if distro in ("debian", "ubuntu", "linuxmint", "kalilinux"):
        return "debian"
    if distro in ("opensuse", "sles", "suse-based"):
        return "suse"
    return "other"


@dataclass(frozen=True)
class Stat:
    mode: int  # full st_mode (type bits included)
    uid: int
    gid: int
    size: int

    @property
    def perms(self) -> int:
        return self.mode & 0o7777

    @property
    def is_file(self) -> bool:
        return self.mode & 0o170000 == 0o100000

    @property
    def is_dir(self) -> bool:
        return self.mode & 0o170000 == 0o040000


@dataclass(frozen=True)
class PartitionInfo:
    """One partition, logical volume or whole-disk filesystem of the guest's disk (read-only facts).

    ``number`` is the partition number (0 for a logical volume or a whole-disk filesystem);
    ``start`` and ``size`` are in bytes; ``part_type`` is the MBR id (``0x83``) or the GPT type
    GUID in lower case ("" when there is no partition table); ``fstype`` is what blkid calls
    the content (ext4, xfs, swap, vfat, LVM2_member, ...), "" when unrecognised (a BIOS boot
    partition).
    """

    device: str
    number: int
    fstype: str
    uuid: str = ""
    label: str = ""
    start: int = 0
    size: int = 0
    part_type: str = ""


class Guest(ABC):
    """A guest whose filesystems are mounted and ready; see :mod:`imgsmith.guest.session`."""

    os: OSInfo
    backend: str

    # --- queries -------------------------------------------------------
    @abstractmethod
    def exists(self, path: str) -> bool: ...
    @abstractmethod
    def is_file(self, path: str, *, follow: bool = False) -> bool: ...
    @abstractmethod
    def is_dir(self, path: str, *, follow: bool = False) -> bool: ...
    @abstractmethod
    def is_symlink(self, path: str) -> bool: ...
    @abstractmethod
    def lstat(self, path: str) -> Stat: ...
    @abstractmethod
    def stat(self, path: str) -> Stat: ...
    @abstractmethod
    def readlink(self, path: str) -> str: ...
    @abstractmethod
    def realpath(self, path: str) -> str: ...
    @abstractmethod
    def ls(self, directory: str) -> list[str]: ...
    @abstractmethod
    def find(self, directory: str) -> list[str]:
        """Every path below *directory*, relative to it (not including it)."""
    @abstractmethod
    def glob(self, pattern: str) -> list[str]:
        """Shell glob expansion inside the guest (no match: empty list)."""
    @abstractmethod
    def read(self, path: str) -> bytes: ...

    # --- changes -------------------------------------------------------
    @abstractmethod
    def write(self, path: str, data: bytes) -> None:
        """Create or overwrite *path* in place (an existing file keeps its inode, mode, owner, label)."""
    @abstractmethod
    def append(self, path: str, data: bytes) -> None: ...
    @abstractmethod
    def mkdir_p(self, path: str) -> None: ...
    @abstractmethod
    def chmod(self, mode: int, path: str) -> None: ...
    @abstractmethod
    def chown(self, uid: int, gid: int, path: str) -> None: ...
    @abstractmethod
    def rm_f(self, path: str) -> None: ...
    @abstractmethod
    def rm_rf(self, path: str) -> None: ...
    @abstractmethod
    def rmdir(self, path: str) -> None: ...
    @abstractmethod
    def mv(self, src: str, dest: str) -> None: ...
    @abstractmethod
    def cp_a(self, src: str, dest: str) -> None: ...
    @abstractmethod
    def ln_sf(self, target: str, link: str) -> None: ...
    @abstractmethod
    def touch(self, path: str) -> None: ...
    @abstractmethod
    def truncate(self, path: str) -> None: ...
    @abstractmethod
    def scrub_file(self, path: str) -> None: ...
    @abstractmethod
    def upload(self, host_path: Path, path: str) -> None: ...
    @abstractmethod
    def copy_in(self, host_path: Path, directory: str) -> None:
        """Copy a host file or directory tree into *directory*, keeping modes and owners."""

    # --- commands ------------------------------------------------------
    @abstractmethod
    def sh(self, script: str) -> str:
        """Run *script* with /bin/sh inside the guest; return its stdout, raise GuestError on failure."""

    @property
    @abstractmethod
    def network(self) -> bool: ...

    # --- SELinux and filesystems --------------------------------------
    @abstractmethod
    def selinux_relabel(self, specfile: str) -> None:
        """Relabel the whole guest with setfiles and *specfile* (the policy's file_contexts)."""
    @abstractmethod
    def filesystems(self) -> list[tuple[str, str]]:
        """(device, fstype) of every filesystem in the guest."""
    @abstractmethod
    def set_fs_uuid_random(self, device: str) -> None: ...
    @abstractmethod
    def lvm_change_uuids(self) -> bool:
        """Give every PV and VG a new UUID; False when the guest has no LVM."""

    # --- sysprep: device-level changes (added for imgsmith.sysprep) ---
    @abstractmethod
    def umount_all(self) -> None:
        """Unmount every guest filesystem so device-level changes (new filesystem UUIDs) can run.

        File primitives fail afterwards: call it only when nothing else will touch files.
        """

    @abstractmethod
    @contextlib.contextmanager
    def host_view(self, mountpoint: Path) -> Iterator[Path]:
        """Expose the guest's filesystem at a host directory while the block runs (for --script)."""
        yield mountpoint

    # --- convenience built on the primitives --------------------------
    def read_head(self, path: str, size: int) -> bytes:
        """The first *size* bytes of *path* (backends override it to avoid reading the whole file)."""
        return self.read(path)[:size]

    def read_text(self, path: str) -> str:
        return self.read(path).decode("utf-8", "surrogateescape")

    def write_text(self, path: str, text: str) -> None:
        self.write(path, text.encode("utf-8", "surrogateescape"))

    def rm_glob(self, patterns: Sequence[str]) -> list[str]:
        """Remove (recursively) everything matching each glob; return what was removed."""
        removed: list[str] = []
        for pattern in patterns:
            for path in self.glob(pattern):
                self.rm_rf(path)
                removed.append(path)
        return removed

    # --- read-only disk facts (added for imgsmith.clouds) ---------------
    @abstractmethod
    def partition_table(self) -> str:
        """The disk's partition table: "mbr", "gpt", or "" when the disk is one whole filesystem."""

    @abstractmethod
    def partitions(self) -> list[PartitionInfo]:
        """Every partition (with or without a filesystem), logical volume and whole-disk filesystem."""

    @abstractmethod
    def statvfs(self, path: str) -> tuple[int, int]:
        """(size, bytes available to unprivileged users) of the filesystem holding guest *path*."""
