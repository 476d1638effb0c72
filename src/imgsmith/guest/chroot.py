"""The chroot backend: the Guest API over the guest's filesystems mounted on the host.

For root, on machines without working KVM, this is 10-50x faster than the appliance:
no VM boots and the guest's commands run at native speed. The price is that the
image's own binaries run on the host (in a bubblewrap sandbox, see
:mod:`imgsmith.guest.sandbox`), which is why it is opt-in: :mod:`imgsmith.guest.backend`
only picks it by itself for images from a verified source.

File primitives run in imgsmith's own process on host paths, so every guest path is
resolved *inside* the guest's root: an absolute symlink in the guest (``/etc/localtime``,
``/etc/resolv.conf``) is followed relative to the guest's /, never to the host's.
Semantics follow the libguestfs calls the appliance backend makes (new files 0644, new
directories 0755, ``write`` keeps an existing file's inode, mode and owner, ``glob``
marks directories with a trailing slash, ``ls`` and ``find`` are sorted).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import posixpath
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .. import proc
from ..errors import GuestError, ProcessError
from ..host.rollback import Session
from .api import Guest, OSInfo, PartitionInfo, Stat
from .blockdev import BlockDevice, Partition
from .sandbox import bwrap_argv, guarded_files

__all__ = ["ChrootGuest", "ChrootUnsupported", "resolve_in_root"]

log = logging.getLogger("imgsmith.guest")
T = TypeVar("T")
_MAX_LINKS = 40
_MAGIC = frozenset("*?[")


class ChrootUnsupported(GuestError):
    """The chroot backend cannot handle this image (LVM, encryption, a foreign architecture...).

    With ``--backend auto`` the appliance takes over; with ``--backend chroot`` it is the error.
    """


def resolve_in_root(root: str, path: str, *, follow: bool) -> str:
    """The host path of guest *path*, following symlinks as the guest would (never out of *root*).

    With ``follow=False`` the last component is left as is (lstat semantics); missing
    components are fine (the result names what would be created).
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()
    done: list[str] = []
    hops = 0
    while pending:
        name = pending.pop()
        if name == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, name)
        if (pending or follow) and os.path.islink(candidate):
            hops += 1
            if hops > _MAX_LINKS:
                raise GuestError(f"{path}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        done.append(name)
    return os.path.join(root, *done)


def _os(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except OSError as exc:
        raise GuestError(f"{what}: {exc.strerror or exc}") from None


def _stat(st: os.stat_result) -> Stat:
    return Stat(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, size=st.st_size)


class ChrootGuest(Guest):
    """Guest API over a host directory holding the guest's mounted filesystems."""

    backend = "chroot"

    def __init__(self, root: Path, device: BlockDevice, session: Session, *, network: bool,
                 os_info: OSInfo | None = None) -> None:
        self.root = root
        self._root = os.fspath(root)
        self.device = device
        self.session = session
        self._network = network
        if os_info is not None:
            self.os = os_info

    # --- path helpers
    def _h(self, path: str, follow: bool = True) -> str:
        if not path.startswith("/"):
            raise GuestError(f"{path}: guest paths must be absolute")
        return resolve_in_root(self._root, path, follow=follow)

    def _guest_path(self, host: str) -> str:
        rel = os.path.relpath(host, self._root)
        return "/" if rel == "." else "/" + rel

    # --- queries
    def exists(self, path: str) -> bool:
        return os.path.exists(self._h(path))

    def is_file(self, path: str, *, follow: bool = False) -> bool:
        h = self._h(path, follow)
        return os.path.isfile(h) and (follow or not os.path.islink(h))

    def is_dir(self, path: str, *, follow: bool = False) -> bool:
        h = self._h(path, follow)
        return os.path.isdir(h) and (follow or not os.path.islink(h))

    def is_symlink(self, path: str) -> bool:
        return os.path.islink(self._h(path, False))

    def lstat(self, path: str) -> Stat:
        return _stat(_os(f"lstat {path}", lambda: os.lstat(self._h(path, False))))

    def stat(self, path: str) -> Stat:
        return _stat(_os(f"stat {path}", lambda: os.stat(self._h(path))))

    def readlink(self, path: str) -> str:
        return _os(f"readlink {path}", lambda: os.readlink(self._h(path, False)))

    def realpath(self, path: str) -> str:
        h = self._h(path)
        if not os.path.lexists(h):
            raise GuestError(f"realpath {path}: No such file or directory")
        return self._guest_path(h)

    def ls(self, directory: str) -> list[str]:
        return sorted(_os(f"ls {directory}", lambda: os.listdir(self._h(directory))))

    def find(self, directory: str) -> list[str]:
        top = self._h(directory)
        if not os.path.isdir(top):
            raise GuestError(f"find {directory}: not a directory")
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, top)
            for name in dirnames + filenames:
                found.append(name if rel == "." else f"{rel}/{name}")
        return sorted(found)

    def glob(self, pattern: str) -> list[str]:
        """Shell-style expansion (no braces; a leading dot must be matched explicitly), dirs marked with '/'."""
        if not pattern.startswith("/"):
            raise GuestError(f"glob {pattern}: guest paths must be absolute")
        paths = ["/"]
        for part in [p for p in pattern.split("/") if p]:
            nxt: list[str] = []
            for base in paths:
                if not _MAGIC & set(part):
                    candidate = posixpath.join(base, part)
                    if os.path.lexists(self._h(candidate, False)):
                        nxt.append(candidate)
                    continue
                try:
                    names = os.listdir(self._h(base))
                except OSError:
                    continue
                for name in sorted(names):
                    if name.startswith(".") and not part.startswith("."):
                        continue
                    if fnmatch.fnmatchcase(name, part):
                        nxt.append(posixpath.join(base, name))
            paths = nxt
        return sorted(p + "/" if os.path.isdir(self._h(p)) and p != "/" else p for p in paths if p != "/")

    def read(self, path: str) -> bytes:
        return _os(f"read {path}", lambda: Path(self._h(path)).read_bytes())

    def read_head(self, path: str, size: int) -> bytes:
        def head() -> bytes:
            with open(self._h(path), "rb") as f:
                return f.read(size)
        return _os(f"read {path}", head)

    # --- changes
    def _open_write(self, path: str, flags: int) -> int:
        h = self._h(path)
        created = not os.path.lexists(h)
        fd = _os(f"open {path}", lambda: os.open(h, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | flags, 0o644))
        if created:
            os.fchmod(fd, 0o644)  # whatever imgsmith's umask is, like the appliance's 022
        return fd

    def write(self, path: str, data: bytes) -> None:
        fd = self._open_write(path, os.O_TRUNC)
        with os.fdopen(fd, "wb") as f:
            _os(f"write {path}", lambda: f.write(data))

    def append(self, path: str, data: bytes) -> None:
        fd = self._open_write(path, os.O_APPEND)
        with os.fdopen(fd, "ab") as f:
            _os(f"append {path}", lambda: f.write(data))

    def mkdir_p(self, path: str) -> None:
        h = self._h(path)
        if os.path.isdir(h):
            return
        parent = posixpath.dirname(path.rstrip("/")) or "/"
        if parent != path:
            self.mkdir_p(parent)
        h = self._h(path)
        _os(f"mkdir {path}", lambda: os.mkdir(h))
        os.chmod(h, 0o755)  # noqa: S103 - a guest directory, made as the appliance's mkdir -p makes them

    def chmod(self, mode: int, path: str) -> None:
        _os(f"chmod {path}", lambda: os.chmod(self._h(path), mode))

    def chown(self, uid: int, gid: int, path: str) -> None:
        _os(f"chown {path}", lambda: os.chown(self._h(path), uid, gid))

    def rm_f(self, path: str) -> None:
        h = self._h(path, False)
        if os.path.isdir(h) and not os.path.islink(h):
            raise GuestError(f"rm {path}: Is a directory")
        _os(f"rm {path}", lambda: Path(h).unlink(missing_ok=True))

    def rm_rf(self, path: str) -> None:
        h = self._h(path, False)
        if os.path.isdir(h) and not os.path.islink(h):
            _os(f"rm -rf {path}", lambda: shutil.rmtree(h))
        else:
            _os(f"rm -rf {path}", lambda: Path(h).unlink(missing_ok=True))

    def rmdir(self, path: str) -> None:
        _os(f"rmdir {path}", lambda: os.rmdir(self._h(path, False)))

    def _dest(self, dest: str) -> str:
        """Where a mv/cp/ln destination lands: inside it if it is (or links to) a directory."""
        followed = self._h(dest)
        return followed if os.path.isdir(followed) else self._h(dest, False)

    def _tool(self, what: str, argv: list[str]) -> None:
        try:
            proc.run(argv)
        except ProcessError as exc:
            raise GuestError(f"{what}: {exc.message}") from None

    def mv(self, src: str, dest: str) -> None:
        self._tool(f"move {src}", ["mv", "--", self._h(src, False), self._dest(dest)])

    def cp_a(self, src: str, dest: str) -> None:
        self._tool(f"copy {src}", ["cp", "-a", "--", self._h(src, False), self._dest(dest)])

    def ln_sf(self, target: str, link: str) -> None:
        # -n: never let the host's ln dereference a guest symlink (it would resolve against the host's /)
        self._tool(f"link {link}", ["ln", "-sfn", "--", target, self._dest(link)])

    def touch(self, path: str) -> None:
        h = self._h(path)
        if os.path.lexists(h):
            _os(f"touch {path}", lambda: os.utime(h))
        else:
            os.close(self._open_write(path, 0))

    def truncate(self, path: str) -> None:
        _os(f"truncate {path}", lambda: os.truncate(self._h(path), 0))

    def scrub_file(self, path: str) -> None:
        h = self._h(path, False)
        if not os.path.isfile(h) or os.path.islink(h):
            raise GuestError(f"scrub {path}: not a regular file")
        size = os.path.getsize(h)
        with open(h, "r+b") as f:
            left = size
            while left > 0:
                chunk = min(left, 1 << 20)
                f.write(os.urandom(chunk))
                left -= chunk
            f.flush()
            os.fsync(f.fileno())
        os.unlink(h)

    def upload(self, host_path: Path, path: str) -> None:
        fd = self._open_write(path, os.O_TRUNC)
        with os.fdopen(fd, "wb") as out, _os(f"upload {host_path}", lambda: open(host_path, "rb")) as src:
            shutil.copyfileobj(src, out, 1 << 20)

    def copy_in(self, host_path: Path, directory: str) -> None:
        d = self._h(directory)
        if not os.path.isdir(d):
            raise GuestError(f"copy-in {host_path}: {directory} is not a directory in the guest")
        self._tool(f"copy-in {host_path}", ["cp", "-a", "--", os.fspath(host_path), d + "/"])

    # --- commands
    def sh(self, script: str) -> str:
        with guarded_files(self.root, debian=self.os.family == "debian", network=self._network):
            r = proc.run(bwrap_argv(self.root, script, network=self._network), check=False)
        if r.returncode != 0:
            tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
            raise GuestError(f"command failed with exit status {r.returncode}" +
                             (f": {' | '.join(tail)}" if tail else ""))
        return r.stdout

    @property
    def network(self) -> bool:
        return self._network

    # --- SELinux and filesystems
    def selinux_relabel(self, specfile: str) -> None:
        for tool in ("/usr/sbin/setfiles", "/sbin/setfiles"):
            if self.is_file(tool, follow=True):
                self.sh(f"{tool} -F -e /proc -e /sys -e /dev {specfile} /")
                return
        raise GuestError("setfiles is not installed in the guest")

    def _partition(self, device: str) -> Partition:
        for p in self.device.partitions:
            if device in (p.name, p.device):
                return p
        raise GuestError(f"{device}: no such filesystem in the guest")

    def filesystems(self) -> list[tuple[str, str]]:
        return sorted((p.name, p.fstype) for p in self.device.partitions if p.fstype != "swap")

    def set_fs_uuid_random(self, device: str) -> None:
        p = self._partition(device)
        tools = {"ext2": ["tune2fs", "-U", "random"], "ext3": ["tune2fs", "-U", "random"],
                 "ext4": ["tune2fs", "-U", "random"], "xfs": ["xfs_admin", "-U", "generate"],
                 "btrfs": ["btrfstune", "-f", "-u"], "swap": ["swaplabel", "-U", _uuid4()]}
        if p.fstype not in tools:
            raise GuestError(f"new uuid for {device}: not supported for {p.fstype}")
        self._tool(f"new uuid for {device}", [*tools[p.fstype], p.device])

    def lvm_change_uuids(self) -> bool:
        return False  # LVM guests never reach this backend (see ChrootUnsupported)

    # --- sysprep: device-level changes
    def umount_all(self) -> None:
        self.session.pop_while("mount")

    @contextlib.contextmanager
    def host_view(self, mountpoint: Path) -> Iterator[Path]:
        yield self.root  # already a host directory; nothing to mount

    # --- read-only disk facts (added for imgsmith.clouds)
    def _sfdisk(self) -> dict[str, Any]:
        """The loop device's partition table as sfdisk reads it (sector units), {} without one."""
        r = proc.run(["sfdisk", "--json", self.device.loop], check=False)
        if r.returncode != 0 or not r.stdout.strip():
            return {}
        table: dict[str, Any] = json.loads(r.stdout).get("partitiontable", {})
        return table

    def partition_table(self) -> str:
        label = str(self._sfdisk().get("label", ""))
        return {"dos": "mbr"}.get(label, label)

    def partitions(self) -> list[PartitionInfo]:
        table = self._sfdisk()
        sector = int(table.get("sectorsize", 512))
        by_node = {p.device: p for p in self.device.partitions}
        found: list[PartitionInfo] = []
        for entry in table.get("partitions", []):
            node = str(entry["node"])
            number = int(node.rsplit("p", 1)[1])
            ptype = str(entry.get("type", "")).lower()
            if table.get("label") == "dos":
                ptype = f"0x{int(ptype, 16):x}"
            fs = by_node.get(node)
            found.append(PartitionInfo(f"/dev/sda{number}", number, fs.fstype if fs else "",
                                       fs.uuid if fs else "", fs.label if fs else "",
                                       start=int(entry["start"]) * sector, size=int(entry["size"]) * sector,
                                       part_type=ptype))
        if not table:
            found = [PartitionInfo(p.name, 0, p.fstype, p.uuid, p.label) for p in self.device.partitions]
        return found

    def statvfs(self, path: str) -> tuple[int, int]:
        st = _os(f"statvfs {path}", lambda: os.statvfs(self._h(path)))
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _uuid4() -> str:
    import uuid
    return str(uuid.uuid4())
