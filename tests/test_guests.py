"""The phony guests really pass for their distros, and the helpers that read them back work.

Four appliance launches in all: one inspects the five guests together (and reads their trees back to
compare with the declared layout), then virt-customize, ``tree`` and ``read_files`` each launch once on
a centos7 copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import guestfs
import pytest

from guests import (
    DISTROS,
    Entry,
    detect_format,
    guest_image,
    layout,
    mount_root,
    read_files,
    read_tree,
    sha256_file,
    tree,
)

pytestmark = pytest.mark.guest

# What libguestfs 1.48 inspection reports for real images of these releases.
EXPECTED = {
    "centos7": {"distro": "centos", "major": 7, "minor": 9, "format": "rpm", "manager": "yum"},
    "debian12": {"distro": "debian", "major": 12, "minor": 5, "format": "deb", "manager": "apt"},
    "ubuntu2204": {"distro": "ubuntu", "major": 22, "minor": 4, "format": "deb", "manager": "apt"},
    "rocky9": {"distro": "rocky", "major": 9, "minor": 3, "format": "rpm", "manager": "dnf"},
    "opensuse": {"distro": "opensuse", "major": 15, "minor": 5, "format": "rpm", "manager": "zypper"},
}


def layout_mismatches(distro: str, entries: Mapping[str, Entry], *, extra: Mapping[str, str] | None = None,
                      changed: Collection[str] = ()) -> list[str]:
    """Where the guest read back differs from its declared layout (type, owner, mode, target, content)."""
    problems = []
    for path, node in layout(distro, extra).items():
        entry = entries.get(path)
        if entry is None:
            problems.append(f"{distro}:{path}: missing")
            continue
        want: tuple[object, ...] = (node.kind, node.uid, node.gid, node.mode if node.kind != "l" else 0o777)
        got: tuple[object, ...] = (entry.type, entry.uid, entry.gid, entry.mode)
        if node.kind == "l":
            want, got = (*want, node.data.decode()), (*got, entry.target)
        elif node.kind == "f" and path not in changed:
            want, got = (*want, hashlib.sha256(node.data).hexdigest()), (*got, entry.sha256)
        if want != got:
            problems.append(f"{distro}:{path}: declared {want}, found {got}")
    return problems


def test_inspection_recognises_every_guest(guest_images: dict[str, Path]) -> None:
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        for distro in DISTROS:
            g.add_drive_opts(os.fspath(guest_images[distro]), format="qcow2", readonly=True)
        g.launch()
        roots = sorted(g.inspect_os())
        assert len(roots) == len(DISTROS)
        seen, problems = {}, []
        for root, distro in zip(roots, DISTROS, strict=True):  # /dev/sda1, /dev/sdb1, … in drive order
            mount_root(g, root)
            seen[distro] = {
                "type": g.inspect_get_type(root),
                "distro": g.inspect_get_distro(root),
                "major": g.inspect_get_major_version(root),
                "minor": g.inspect_get_minor_version(root),
                "arch": g.inspect_get_arch(root),
                "format": g.inspect_get_package_format(root),
                "manager": g.inspect_get_package_management(root),
                "hostname": g.inspect_get_hostname(root),
                "sh": g.sh("echo ok"),
                # the stand-ins list fake packages (their log line fails on this read-only mount)
                "lists bash": g.sh("rpm -qa; dpkg-query -W 2>/dev/null; true").startswith("bash"),
            }
            problems += layout_mismatches(distro, read_tree(g))
            g.umount_all()
    finally:
        g.close()
    assert seen == {
        distro: {**want, "type": "linux", "arch": "x86_64", "hostname": f"{distro}.example.com",
                 "sh": "ok\n", "lists bash": True}
        for distro, want in EXPECTED.items()
    }
    assert problems == []


def test_cache_and_fresh_copy(fresh_guest: Callable[..., Path], tmp_path: Path) -> None:
    cached = guest_image("centos7")
    assert guest_image("centos7") == cached
    assert cached.name.startswith("centos7-")
    assert guest_image("centos7", extra={"/etc/x": "1"}) != cached

    copy = fresh_guest("centos7")
    assert copy.parent == tmp_path
    assert os.access(copy, os.W_OK)
    assert copy.stat().st_mode & 0o200
    assert sha256_file(copy) == sha256_file(cached)
    assert fresh_guest("centos7") != copy  # a second copy never clobbers the first

    raw = fresh_guest("debian12", fmt="raw")
    assert detect_format(raw) == "raw"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", raw], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["virtual-size"] == 512 << 20
    with raw.open("rb") as fh:
        mbr = fh.read(512)
    assert mbr[510:] == b"\x55\xaa"
    assert mbr[446 + 4] == 0x83  # one Linux partition
    assert int.from_bytes(mbr[446 + 8:446 + 12], "little") == 2048  # at 1 MiB

    with pytest.raises(ValueError, match="unknown phony distro"):
        guest_image("windows")


def test_virt_customize_tree_and_read_files(fresh_guest: Callable[..., Path]) -> None:
    """The real virt-customize runs commands and installs packages in a phony guest; tree() and
    read_files() see the result and the layout as declared."""
    extra = {"/etc/imgsmith-extra.conf": "x=1\n"}
    disk = fresh_guest("centos7", extra=extra)
    env = {**os.environ, "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    proc = subprocess.run(["virt-customize", "--format", "qcow2", "-a", disk,
                           "--run-command", "echo hi > /hi", "--install", "foo"],
                          env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    t = tree(disk)
    assert t["/hi"].content == b"hi\n"
    assert t["/var/log/pkgstub.log"].content == b"yum -y install foo\n"
    assert t["/etc/imgsmith-extra.conf"].content == b"x=1\n"
    assert t["/etc/localtime"].type == "l"
    assert t["/etc/localtime"].target == "../usr/share/zoneinfo/UTC"
    assert (t["/etc/shadow"].mode, t["/etc/shadow"].uid) == (0o000, 0)
    assert (t["/home/centos"].type, t["/home/centos"].uid, t["/home/centos"].gid) == ("d", 1000, 1000)
    assert t["/root"].mode == 0o550
    assert t["/tmp"].mode == 0o1777
    busybox = t["/usr/bin/busybox"]
    assert busybox.sha256 == sha256_file(Path("/bin/busybox"))
    assert busybox.content is None  # only files under 64 KiB carry their bytes
    assert t["/"].type == "d"
    # virt-customize always refreshes the random seed; everything else declared is untouched
    assert layout_mismatches("centos7", t, extra=extra, changed={"/var/lib/systemd/random-seed"}) == []

    files = read_files(disk, ["/hi", "/etc/hostname", "/etc/redhat-release", "/etc", "/nonexistent"])
    assert files == {
        "/hi": b"hi\n",
        "/etc/hostname": b"centos7.example.com\n",
        "/etc/redhat-release": b"CentOS Linux release 7.9.2009 (Core)\n",  # a symlink, followed
        "/etc": None,
        "/nonexistent": None,
    }
