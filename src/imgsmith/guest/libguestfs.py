"""The appliance backend: the Guest API over one libguestfs handle.

One handle, one launch per session: the drive is added with its format given
explicitly, the OS is inspected by imgsmith's own rules (:mod:`imgsmith.guest.treeinspect`,
the same as the chroot backend's; libguestfs's ``inspect_os`` costs ~13 s under TCG),
its filesystems are mounted as /etc/fstab says,
and every Guest call maps to one or two libguestfs calls. Errors from libguestfs
(RuntimeError) become GuestError with the failing call named.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .. import proc
from ..errors import ForeignArchError, GuestError, ProcessError
from .api import Guest, OSInfo, PartitionInfo, Stat
from .treeinspect import (
    LINUX_FS,
    TreeReader,
    choose_root,
    complete,
    find_roots,
    fstab_mountpoints,
    inspect_root,
    looks_like_root,
    mount_order,
)

__all__ = ["ApplianceDevices", "ApplianceGuest", "inspect_and_mount", "inspect_roots"]

log = logging.getLogger("imgsmith.guest")
T = TypeVar("T")


def _call(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except RuntimeError as exc:
        msg = str(exc)
        # libguestfs prefixes messages with the call name; keep the useful tail.
        msg = re.sub(r"^[a-z_]+: ", "", msg).strip()
        raise GuestError(f"{what}: {msg}") from exc


def _blkid(g: Any, dev: str) -> dict[str, str]:
    try:
        return {k: str(v) for k, v in g.blkid(dev).items()}
    except RuntimeError:
        return {}  # no signature: empty, or a BIOS boot / extended partition


def _filesystems(g: Any) -> dict[str, dict[str, str]]:
    """Mountable -> blkid tags (TYPE, UUID, LABEL, PART_ENTRY_UUID ...) of every filesystem, in libguestfs's order.

    What ``list_filesystems`` lists (whole disks without partitions, partitions, LVM logical
    volumes, btrfs subvolumes as ``btrfsvol:DEV/PATH``), found with one ``blkid`` per device:
    list_filesystems itself took 12-26 s here, running parted, sgdisk, lvm, mdadm and ldmtool
    whether or not the disk has any of them. LVM and RAID are looked at only when a member exists.
    """
    parts = list(_call("list partitions", g.list_partitions))
    devices = [d for d in _call("list devices", g.list_devices) if not any(p.startswith(d) for p in parts)]
    found = {dev: _blkid(g, dev) for dev in devices + parts}
    types = {tags.get("TYPE", "") for tags in found.values()}
    if "linux_raid_member" in types:
        found |= {md: _blkid(g, md) for md in _call("list md devices", g.list_md_devices)}
    if "LVM2_member" in types:
        found |= {lv: _blkid(g, lv) for lv in _call("lvs", g.lvs)}
    out: dict[str, dict[str, str]] = {}
    for dev, tags in found.items():
        fstype = tags.get("TYPE", "")
        if not fstype or fstype.endswith("_member") or fstype in ("crypto_LUKS", "BitLocker"):
            continue
        out[dev] = tags
        if fstype == "btrfs":
            out |= _btrfs_subvolumes(g, dev, tags)
    return out


def _btrfs_subvolumes(g: Any, dev: str, tags: dict[str, str]) -> dict[str, dict[str, str]]:
    try:
        default = g.btrfs_subvolume_get_default(dev)
        vols = g.btrfs_subvolume_list(dev)
    except RuntimeError as exc:
        log.warning("could not list the btrfs subvolumes of %s: %s", dev, exc)
        return {}
    return {f"btrfsvol:{dev}/{v['btrfssubvolume_path']}": tags for v in vols if v["btrfssubvolume_id"] != default}


class ApplianceDevices:
    """The DeviceMap of a launched handle: libguestfs's own device names, with the tags blkid found."""

    def __init__(self, handle: Any, filesystems: dict[str, dict[str, str]]) -> None:
        self.g = handle
        self.fss = filesystems
        self._disks: list[str] | None = None
        self._parts: list[str] | None = None

    def find_tag(self, tag: str, value: str) -> str | None:
        key = {"UUID": "UUID", "LABEL": "LABEL", "PARTUUID": "PART_ENTRY_UUID", "PARTLABEL": "PART_ENTRY_NAME"}[tag]
        return next((dev for dev, tags in self.fss.items()
                     if not dev.startswith("btrfsvol:") and tags.get(key, "").lower() == value.lower()), None)

    def disks(self) -> list[str]:
        if self._disks is None:
            self._disks = list(_call("list devices", self.g.list_devices))
        return self._disks

    def is_partition(self, device: str) -> bool:
        if self._parts is None:
            self._parts = list(_call("list partitions", self.g.list_partitions))
        return device in self._parts

    def canonical_lv(self, mapper: str) -> str | None:
        try:
            return str(self.g.lvm_canonical_lv_name(mapper))
        except RuntimeError:
            return None


def _candidates(fss: dict[str, dict[str, str]]) -> list[str]:
    """Filesystems that could hold a Linux root (LVs and btrfs subvolumes included)."""
    return [dev for dev, tags in fss.items() if tags.get("TYPE") in LINUX_FS]


def _probe(g: Any, reader: ApplianceGuest) -> Callable[[str], contextlib.AbstractContextManager[TreeReader | None]]:
    @contextlib.contextmanager
    def probe(dev: str) -> Iterator[TreeReader | None]:
        try:
            g.mount_ro(dev, "/")
        except RuntimeError:
            yield None  # like libguestfs: a filesystem that does not mount is not a root
            return
        try:
            yield reader
        finally:
            g.umount_all()
    return probe


def inspect_roots(g: Any) -> list[OSInfo]:
    """Every Linux root on the launched handle, inspected read-only (``imgsmith info --inspect``)."""
    fss = _filesystems(g)
    return find_roots(_candidates(fss), _probe(g, ApplianceGuest(g)), ApplianceDevices(g, fss))


def _mount_rest(g: Any, info: OSInfo) -> None:
    for mp, dev in mount_order(info.mountpoints):
        try:
            g.mount(dev, mp)
        except RuntimeError as exc:
            log.warning("could not mount %s on %s: %s", dev, mp, exc)


def inspect_and_mount(g: Any, root_choice: str = "single", known: OSInfo | None = None) -> OSInfo:
    """Find the root, mount it and what its fstab lists, and return the facts (see treeinspect).

    With *known* facts (a build's earlier layer inspected the same guest) nothing is
    searched: the known root is mounted, and only what an earlier layer may have changed
    (fstab, hostname, SELinux, init) is read again.
    """
    fss = _filesystems(g)
    reader, devices = ApplianceGuest(g), ApplianceDevices(g, fss)
    if known is not None:
        _call(f"mount {known.root}", lambda: g.mount(known.root, "/"))
        info = dataclasses.replace(known, mountpoints=fstab_mountpoints(reader, known.root, devices))
    else:
        candidates = _candidates(fss)
        if len(candidates) == 1:  # the common cloud image: no read-only probe, inspect the real mount
            _call(f"mount {candidates[0]}", lambda: g.mount(candidates[0], "/"))
            if not looks_like_root(reader):
                g.umount_all()
                choose_root([], root_choice, str)  # raises "no operating system was found"
            choose_root(candidates, root_choice, str)
            info = inspect_root(reader, candidates[0], devices)
        else:
            roots = {i.root: i for i in find_roots(candidates, _probe(g, reader), devices)}
            info = roots[choose_root(list(roots), root_choice, lambda r: roots[r].product_name)]
            _call(f"mount {info.root}", lambda: g.mount(info.root, "/"))
    _mount_rest(g, info)
    # Inspected on the root alone; read again what other filesystems (or an earlier layer) may change.
    return complete(info, reader) if known is not None or mount_order(info.mountpoints) else info


class ApplianceGuest(Guest):
    """Guest API over a launched libguestfs handle (see :mod:`imgsmith.guest.session`)."""

    backend = "appliance"

    def __init__(self, handle: Any, os_info: OSInfo | None = None) -> None:
        self.g = handle
        if os_info is not None:
            self.os = os_info

    # --- queries
    def exists(self, path: str) -> bool:
        return bool(_call(f"exists {path}", lambda: self.g.exists(path)))

    def is_file(self, path: str, *, follow: bool = False) -> bool:
        return bool(_call(f"is_file {path}", lambda: self.g.is_file(path, followsymlinks=follow)))

    def is_dir(self, path: str, *, follow: bool = False) -> bool:
        return bool(_call(f"is_dir {path}", lambda: self.g.is_dir(path, followsymlinks=follow)))

    def is_symlink(self, path: str) -> bool:
        return bool(_call(f"is_symlink {path}", lambda: self.g.is_symlink(path)))

    def _stat(self, st: dict[str, int]) -> Stat:
        return Stat(mode=st["st_mode"], uid=st["st_uid"], gid=st["st_gid"], size=st["st_size"])

    def lstat(self, path: str) -> Stat:
        return self._stat(_call(f"lstat {path}", lambda: self.g.lstatns(path)))

    def stat(self, path: str) -> Stat:
        return self._stat(_call(f"stat {path}", lambda: self.g.statns(path)))

    def readlink(self, path: str) -> str:
        return str(_call(f"readlink {path}", lambda: self.g.readlink(path)))

    def realpath(self, path: str) -> str:
        return str(_call(f"realpath {path}", lambda: self.g.realpath(path)))

    def ls(self, directory: str) -> list[str]:
        return list(_call(f"ls {directory}", lambda: self.g.ls(directory)))

    def find(self, directory: str) -> list[str]:
        return list(_call(f"find {directory}", lambda: self.g.find(directory)))

    def glob(self, pattern: str) -> list[str]:
        return list(_call(f"glob {pattern}", lambda: self.g.glob_expand(pattern)))

    def read(self, path: str) -> bytes:
        data = _call(f"read {path}", lambda: self.g.read_file(path))
        return data if isinstance(data, bytes) else str(data).encode("utf-8", "surrogateescape")

    def read_head(self, path: str, size: int) -> bytes:
        return bytes(_call(f"read {path}", lambda: self.g.pread(path, size, 0)))

    # --- changes
    def write(self, path: str, data: bytes) -> None:
        _call(f"write {path}", lambda: self.g.write(path, data))

    def append(self, path: str, data: bytes) -> None:
        _call(f"append {path}", lambda: self.g.write_append(path, data))

    def mkdir_p(self, path: str) -> None:
        _call(f"mkdir {path}", lambda: self.g.mkdir_p(path))

    def chmod(self, mode: int, path: str) -> None:
        _call(f"chmod {path}", lambda: self.g.chmod(mode, path))

    def chown(self, uid: int, gid: int, path: str) -> None:
        _call(f"chown {path}", lambda: self.g.chown(uid, gid, path))

    def rm_f(self, path: str) -> None:
        _call(f"rm {path}", lambda: self.g.rm_f(path))

    def rm_rf(self, path: str) -> None:
        _call(f"rm -rf {path}", lambda: self.g.rm_rf(path))

    def rmdir(self, path: str) -> None:
        _call(f"rmdir {path}", lambda: self.g.rmdir(path))

    def mv(self, src: str, dest: str) -> None:
        _call(f"move {src}", lambda: self.g.mv(src, dest))

    def cp_a(self, src: str, dest: str) -> None:
        _call(f"copy {src}", lambda: self.g.cp_a(src, dest))

    def ln_sf(self, target: str, link: str) -> None:
        _call(f"link {link}", lambda: self.g.ln_sf(target, link))

    def touch(self, path: str) -> None:
        _call(f"touch {path}", lambda: self.g.touch(path))

    def truncate(self, path: str) -> None:
        _call(f"truncate {path}", lambda: self.g.truncate(path))

    def scrub_file(self, path: str) -> None:
        _call(f"scrub {path}", lambda: self.g.scrub_file(path))

    def upload(self, host_path: Path, path: str) -> None:
        _call(f"upload {path}", lambda: self.g.upload(os.fspath(host_path), path))

    def copy_in(self, host_path: Path, directory: str) -> None:
        _call(f"copy-in {host_path}", lambda: self.g.copy_in(os.fspath(host_path), directory))

    # --- commands
    def sh(self, script: str) -> str:
        from ..host.binfmt import is_foreign, normalise
        if self.os.arch not in ("unknown", "") and is_foreign(self.os.arch):
            raise ForeignArchError(f"the appliance cannot run {normalise(self.os.arch)} programs (this guest's), so "
                             "operations that run commands in it need the chroot backend",
                             hint="run as root with --backend chroot (or auto), which runs them through qemu-user")
        return str(_call("command", lambda: self.g.sh(script)))

    @property
    def network(self) -> bool:
        return bool(self.g.get_network())

    # --- SELinux and filesystems
    def selinux_relabel(self, specfile: str) -> None:
        _call("selinux relabel", lambda: self.g.selinux_relabel(specfile, "/", force=True))

    def filesystems(self) -> list[tuple[str, str]]:
        fss = _call("list filesystems", self.g.list_filesystems)
        return [(dev, fs) for dev, fs in sorted(fss.items()) if fs not in ("unknown", "swap")]

    def set_fs_uuid_random(self, device: str) -> None:
        _call(f"new uuid for {device}", lambda: self.g.set_uuid_random(device))

    def lvm_change_uuids(self) -> bool:
        if "lvm2" not in _call("lvm", self.g.available_all_groups):
            return False
        if not _call("lvm", self.g.pvs):
            return False
        _call("lvm", self.g.pvchange_uuid_all)
        _call("lvm", self.g.vgchange_uuid_all)
        return True

    # --- sysprep: device-level changes (added for imgsmith.sysprep)
    def umount_all(self) -> None:
        _call("umount all", self.g.umount_all)

    @contextlib.contextmanager
    def host_view(self, mountpoint: Path) -> Iterator[Path]:
        _call("mount_local", lambda: self.g.mount_local(os.fspath(mountpoint)))
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                self.g.mount_local_run()
            except RuntimeError as exc:  # pragma: no cover - reported below
                errors.append(exc)

        thread = threading.Thread(target=serve, name="mount-local", daemon=True)
        thread.start()
        try:
            _wait_for_mount(mountpoint)
            yield mountpoint
        finally:
            # g.umount_local() would block: the handle is busy in mount_local_run() on the other
            # thread and libguestfs serialises calls. Unmounting the FUSE mount from outside ends it.
            with contextlib.suppress(ProcessError):
                proc.run(["guestunmount", "--retry=10", mountpoint])
            thread.join(timeout=60)
        if errors:
            raise GuestError(f"mount_local: {errors[0]}")

    # --- read-only disk facts (added for imgsmith.clouds)
    def partition_table(self) -> str:
        dev = _call("list devices", self.g.list_devices)[0]
        try:
            kind = str(self.g.part_get_parttype(dev))
        except RuntimeError:
            return ""  # no partition table: a whole-disk filesystem
        return {"msdos": "mbr"}.get(kind, kind)

    def _fs_facts(self, device: str) -> tuple[str, str, str]:
        def one(fn: str) -> str:
            try:
                return str(getattr(self.g, fn)(device))
            except RuntimeError:
                return ""
        return one("vfs_type"), one("vfs_uuid"), one("vfs_label")

    def _part_type(self, table: str, dev: str, num: int) -> str:
        if table == "gpt":
            return str(_call("partition type", lambda: self.g.part_get_gpt_type(dev, num))).lower()
        return f"0x{int(_call('partition type', lambda: self.g.part_get_mbr_id(dev, num))):x}"

    def _size(self, device: str) -> int:
        return int(_call(f"size of {device}", lambda: self.g.blockdev_getsize64(device)))

    def _entries(self, dev: str) -> dict[int, dict[str, int]]:
        return {int(e["part_num"]): e for e in _call(f"partitions of {dev}", lambda: self.g.part_list(dev))}

    def partitions(self) -> list[PartitionInfo]:
        table = self.partition_table()
        found: list[PartitionInfo] = []
        for dev in _call("list devices", self.g.list_devices):
            entries = self._entries(dev) if table else {}
            for num, entry in sorted(entries.items()):
                name = f"{dev}{num}"
                found.append(PartitionInfo(name, num, *self._fs_facts(name), start=int(entry["part_start"]),
                                           size=int(entry["part_size"]), part_type=self._part_type(table, dev, num)))
            if not entries:
                fstype, uuid, label = self._fs_facts(dev)
                if fstype:
                    found.append(PartitionInfo(dev, 0, fstype, uuid, label, size=self._size(dev)))
        for lv in _call("list logical volumes", self.g.lvs):
            found.append(PartitionInfo(lv, 0, *self._fs_facts(lv), size=self._size(lv)))
        return found

    def statvfs(self, path: str) -> tuple[int, int]:
        st = _call(f"statvfs {path}", lambda: self.g.statvfs(path))
        return int(st["blocks"]) * int(st["frsize"]), int(st["bavail"]) * int(st["frsize"])


def _wait_for_mount(mountpoint: Path, timeout: float = 30.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            return
        time.sleep(0.05)
    raise GuestError(f"the guest filesystem did not appear at {mountpoint} within {timeout:.0f} s")
