"""The inspection rules (a port of libguestfs 1.48's) on small in-memory trees: release files, fstab, arch.

The fixture guests prove that both backends agree with libguestfs's real inspect_os
(test_chroot.py); these cover the branches those five guests do not reach. Expected
values follow libguestfs 1.48's daemon/inspect_fs_unix*.ml.
"""

from __future__ import annotations

import struct

from imgsmith.errors import GuestError
from imgsmith.guest.api import Stat
from imgsmith.guest.treeinspect import arch_of, fstab_mountpoints, inspect_root, looks_like_root


class Tree:
    """A TreeReader over a dict: path -> bytes (a file), None (a directory) or ("link", target)."""

    def __init__(self, nodes: dict[str, bytes | str | tuple[str, str] | None]) -> None:
        self.nodes = {p: (v.encode() if isinstance(v, str) else v) for p, v in nodes.items()}

    def _follow(self, path: str, *, last: bool = True) -> str:
        """*path* with symlinks resolved component by component (the last one only if *last*)."""
        pending, done, hops = [p for p in path.split("/") if p][::-1], "", 0
        while pending:
            name = pending.pop()
            node = self.nodes.get(f"{done}/{name}")
            if isinstance(node, tuple) and (pending or last):
                hops += 1
                if hops > 40:
                    raise GuestError(f"{path}: too many links")
                done = "" if node[1].startswith("/") else done
                pending.extend([p for p in node[1].split("/") if p][::-1])
                continue
            done = f"{done}/{name}"
        return done or "/"

    def is_file(self, path: str, *, follow: bool = False) -> bool:
        return isinstance(self.nodes.get(self._follow(path, last=follow)), bytes)

    def is_dir(self, path: str, *, follow: bool = False) -> bool:
        p = self._follow(path, last=follow)
        return p in self.nodes and self.nodes[p] is None

    def is_symlink(self, path: str) -> bool:
        return isinstance(self.nodes.get(self._follow(path, last=False)), tuple)

    def readlink(self, path: str) -> str:
        node = self.nodes[self._follow(path, last=False)]
        assert isinstance(node, tuple)
        return node[1]

    def realpath(self, path: str) -> str:
        return self._follow(path)

    def read(self, path: str) -> bytes:
        node = self.nodes.get(self._follow(path))
        if not isinstance(node, bytes):
            raise GuestError(f"read {path}: not a file")
        return node

    def read_head(self, path: str, size: int) -> bytes:
        return self.read(path)[:size]

    def stat(self, path: str) -> Stat:
        p = self._follow(path)
        if p not in self.nodes:
            raise GuestError(f"stat {path}: No such file or directory")
        node = self.nodes[p]
        return Stat(mode=0o100644 if isinstance(node, bytes) else 0o040755, uid=0, gid=0,
                    size=len(node) if isinstance(node, bytes) else 0)


class Devices:
    def __init__(self, tags: dict[tuple[str, str], str], parts: tuple[str, ...] = ("/dev/sda1", "/dev/sda2")):
        self.tags, self.parts = tags, parts

    def find_tag(self, tag: str, value: str) -> str | None:
        return self.tags.get((tag, value))

    def disks(self) -> list[str]:
        return ["/dev/sda"]

    def is_partition(self, device: str) -> bool:
        return device in self.parts

    def canonical_lv(self, mapper: str) -> str | None:
        return {"/dev/mapper/vg0-root": "/dev/vg0/root"}.get(mapper)


def elf(machine: int, *, bits64: bool = True, lsb: bool = True) -> bytes:
    return b"\x7fELF" + bytes([2 if bits64 else 1, 1 if lsb else 2]) + b"\0" * 12 + \
        struct.pack("<H" if lsb else ">H", machine)


BASE: dict[str, bytes | str | tuple[str, str] | None] = {
    "/etc": None, "/usr": None, "/usr/bin": None, "/bin": ("link", "usr/bin"), "/etc/hosts": "127.0.0.1 x\n",
    "/usr/bin/bash": elf(0x3E), "/etc/hostname": "# comment\n\nweb1\n",
}
NO_DEVICES = Devices({})


def test_lsb_release_when_there_is_no_os_release() -> None:
    tree = Tree({**BASE, "/etc/lsb-release": 'DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=18.04\n'
                                             'DISTRIB_DESCRIPTION="Ubuntu 18.04.6 LTS"\n'})
    o = inspect_root(tree, "/dev/sda1", NO_DEVICES)
    assert (o.distro, o.major, o.minor, o.product_name, o.package_management) == \
        ("ubuntu", 18, 4, "Ubuntu 18.04.6 LTS", "apt")
    assert (o.hostname, o.arch, o.type, o.mountpoints) == ("web1", "x86_64", "linux", (("/", "/dev/sda1"),))


def test_an_os_release_id_1_48_does_not_know_falls_through_to_redhat_release() -> None:
    tree = Tree({**BASE, "/etc/os-release": 'ID="almalinux"\nVERSION_ID="9.3"\nPRETTY_NAME="AlmaLinux 9.3"\n',
                 "/etc/redhat-release": "AlmaLinux release 9.3 (Shamrock Pinehead)\n"})
    o = inspect_root(tree, "/dev/sda1", NO_DEVICES)
    assert (o.distro, o.major, o.minor, o.product_name, o.package_format, o.package_management) == \
        ("redhat-based", 9, 3, "AlmaLinux release 9.3 (Shamrock Pinehead)", "rpm", "dnf")


def test_centos_os_release_without_minor_takes_the_release_file() -> None:
    tree = Tree({**BASE, "/etc/os-release": 'ID="centos"\nVERSION_ID="7"\nPRETTY_NAME="CentOS Linux 7 (Core)"\n',
                 "/etc/centos-release": "CentOS Linux release 7.9.2009 (Core)\n",
                 "/etc/hostname": "", "/etc/sysconfig": None,
                 "/etc/sysconfig/network": 'NETWORKING=yes\nHOSTNAME="old.example.com"\n'})
    o = inspect_root(tree, "/dev/sda1", NO_DEVICES)
    assert (o.distro, o.major, o.minor, o.product_name, o.package_management, o.hostname) == \
        ("centos", 7, 9, "CentOS Linux release 7.9.2009 (Core)", "yum", "old.example.com")


def test_nothing_recognisable_is_unknown() -> None:
    o = inspect_root(Tree({**BASE, "/usr/bin/bash": "#!/bin/sh\n"}), "/dev/sda1", NO_DEVICES)
    assert (o.distro, o.major, o.product_name, o.package_format, o.arch, o.hostname) == \
        ("unknown", 0, "unknown", "unknown", "unknown", "web1")


def test_fstab_resolution() -> None:
    fstab = ("# comment\nUUID=1111 / ext4 defaults 0 1\nLABEL=boot /boot ext4 defaults 0 2\n"
             "/dev/vda2 /var//log/ xfs defaults 0 0\n/dev/mapper/vg0-root /srv ext4 defaults 0 0\n"
             "UUID=2222 /home btrfs subvol=@home,compress=zstd 0 0\nPARTUUID=abcd-02 /data ext4 defaults 0 0\n"
             "UUID=9999 /gone ext4 defaults 0 0\n/dev/sdb1 /other ext4 defaults 0 0\n"
             "tmpfs /tmp tmpfs defaults 0 0\n/dev/sda3 swap swap defaults 0 0\nproc /proc proc defaults 0 0\n"
             "/dev/cdrom /media/cdrom iso9660 ro 0 0\n/dev/sda2 /sys/x ext4 defaults 0 0\n")
    devices = Devices({("UUID", "1111"): "/dev/sda1", ("LABEL", "boot"): "/dev/sda2",
                       ("UUID", "2222"): "/dev/sda2", ("PARTUUID", "abcd-02"): "/dev/sda2"})
    mps = dict(fstab_mountpoints(Tree({**BASE, "/etc/fstab": fstab}), "/dev/sda1", devices))
    assert mps == {"/": "/dev/sda1", "/boot": "/dev/sda2", "/var/log": "/dev/sda2", "/srv": "/dev/vg0/root",
                   "/home": "btrfsvol:/dev/sda2/@home", "/data": "/dev/sda2",
                   "/other": "/dev/sdb1"}  # a second disk that is not there: kept as written, like libguestfs


def test_root_detection_and_arch() -> None:
    assert looks_like_root(Tree(BASE))
    assert not looks_like_root(Tree({**BASE, "/grub": None, "/grub/grub.conf": ""}))  # a /boot
    assert not looks_like_root(Tree({k: v for k, v in BASE.items() if k != "/etc/hosts"}))
    assert not looks_like_root(Tree({**BASE, "/bin": ("link", "/usr/bin")}))  # libguestfs wants "usr/bin"
    assert arch_of(Tree({**BASE, "/usr/bin/bash": elf(0xB7)})) == "aarch64"
    assert arch_of(Tree({**BASE, "/usr/bin/bash": elf(0x15, lsb=True)})) == "ppc64le"
    assert arch_of(Tree({**BASE, "/usr/bin/bash": elf(0x03, bits64=False)})) == "i386"
