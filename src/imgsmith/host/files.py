"""File plumbing used everywhere: locks, durable atomic writes, chunked hashing, work directories.

One of each, so that every writer gets the same guarantees: a lock that survives its lock
file being deleted, a write that is either the old file or the whole new one even after a
power cut (temp file in the same directory, fsync, rename, fsync of the directory), and a
hash that does not read a file into memory nor read its holes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("imgsmith.host.files")

__all__ = ["atomic_write", "file_digest", "file_lock", "fsync_dir", "fsync_file", "hash_into",
           "partial_dir", "scratch_dir", "sha256_file", "sweep_scratch", "try_file_lock", "write_sha256_file"]

_CHUNK = 1 << 20
# 1 MiB: hashlib releases the GIL on anything over 2 KiB and sha256 runs at a few hundred MB/s,
# so larger chunks buy nothing, while each concurrent hash holds one chunk in memory.
_ZEROS = memoryview(bytes(_CHUNK))
"""Hashed in place of a hole's bytes; one buffer for all (read-only, so threads may share it)."""


# --- locks ---------------------------------------------------------------------------------------

def _lock_fd(path: Path, blocking: bool) -> int | None:
    """An fd holding an exclusive flock on *path*, or None if busy and not *blocking*.

    The lock file may be deleted by a holder (the cache's prune removes the locks of removed
    keys), so after locking we check the path still names the inode we locked, else retry.
    Read-only is enough for flock, so a file we may only read (a disk image) can be locked too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on *path* (created if needed) for the duration of the block.

    flock locks belong to the open file, so two threads of one process exclude each other as
    two processes do, and the kernel drops the lock when a holder dies. *on_wait* is called
    once if the lock is busy, before waiting for it (to tell the user why nothing happens).
    """
    fd = _lock_fd(path, blocking=False)
    if fd is None:
        if on_wait is not None:
            on_wait()
        fd = _lock_fd(path, blocking=True)
    assert fd is not None
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_file_lock(path: Path) -> Iterator[bool]:
    """Like :func:`file_lock` without waiting: yields False (and holds nothing) if the lock is busy."""
    fd = _lock_fd(path, blocking=False)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


# --- durable writes ------------------------------------------------------------------------------

def fsync_file(path: Path) -> None:
    """Flush a file's data so the rename that publishes it cannot outrun its contents."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename into it, a file created in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, *, mode: int | None = None, durable: bool = True) -> None:
    """Replace *path* with *data* so that readers, and the disk after a crash, see either the old
    file or the whole new one: temp file in the same directory, write, fsync, rename, fsync dir.

    ``durable=False`` skips both fsyncs: for a file that describes state a power cut clears anyway
    (a session's mounts and loop devices), where readers need the rename's atomicity only.

    On any failure the temp file is removed and the old *path* is left as it was. The temp name
    carries pid and thread id, so concurrent writers of one path never share a temp file.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)  # the umask applied to os.open's mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_sha256_file(path: Path, digest: str, name: str) -> None:
    """``<hex>  <name>`` - the line ``sha256sum -c`` reads - written atomically."""
    atomic_write(path, f"{digest}  {name}\n")


@contextlib.contextmanager
def partial_dir(dest: Path) -> Iterator[Path]:
    """A hidden ``.NAME.partial-XXXXXXXX`` work directory next to *dest*, removed on the way out
    whatever happens: a writer builds there and publishes with one rename, so a SIGKILL leaves at
    most that hidden directory, never a half-written file under the real name."""
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


_OWNER = ".imgsmith-owner"
"""The lock file inside a :func:`scratch_dir`: flocked by its owner for the directory's whole life."""


@contextlib.contextmanager
def scratch_dir(prefix: str, base: Path | None = None) -> Iterator[Path]:
    """A private work directory ``PREFIX`` + 8 random characters under *base* (the temp dir if None), removed on
    the way out; one left by an owner killed with SIGKILL is removed by the next one made there.

    A TemporaryDirectory cannot clean up after kill -9, and the directories imgsmith works in hold
    gigabytes (a disk's overlay, a boot's overlay, a downloaded cache entry). So each one holds an
    flock on a file inside it for as long as it lives: the kernel drops the lock when its owner
    dies, whoever that owner was, and a free lock is the proof that nobody uses the directory any
    more. That works for any user, without a registry of sessions (the chroot backend's records
    need root; these directories do not).
    """
    parent = base if base is not None else Path(tempfile.gettempdir())
    sweep_scratch(parent, prefix)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        fd = os.open(work / _OWNER, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else can hold it
        os.write(fd, f"{os.getpid()}\n".encode())
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the lock is held until the tree is gone
        os.close(fd)


def sweep_scratch(parent: Path, prefix: str) -> list[Path]:
    """Remove the :func:`scratch_dir` directories ``PREFIX*`` in *parent* whose owner is gone; returns them.

    Only directories of this user that hold a free owner lock are touched: another user's, a live
    one, one a stranger made with the same prefix, or one whose lock file is not written yet are
    all left alone.
    """
    swept: list[Path] = []
    try:
        candidates = sorted(parent.glob(f"{glob.escape(prefix)}*"))
    except OSError:
        return swept
    for work in candidates:
        try:
            st = work.lstat()
            if not os.path.isdir(work) or work.is_symlink() or st.st_uid != os.geteuid():
                continue
            fd = os.open(work / _OWNER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            try:
                if os.stat(work / _OWNER).st_ino != os.fstat(fd).st_ino:
                    continue
            except FileNotFoundError:
                continue  # its owner removed it, and let go of the lock, as we looked
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            size = _tree_bytes(work)
            shutil.rmtree(work, ignore_errors=True)
            if not work.exists():
                log.warning("removed %s (%d MiB) left by an imgsmith (pid %s) that did not exit cleanly",
                            work, size >> 20, owner)
                swept.append(work)
        finally:
            os.close(fd)
    return swept


def _tree_bytes(top: Path) -> int:
    """Allocated bytes under *top* (what removing it gives back), for the sweep's message."""
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


# --- hashing -------------------------------------------------------------------------------------

def _extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) runs of a file, from SEEK_DATA/SEEK_HOLE; one data run where the
    filesystem cannot tell."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                yield pos, size - pos, False
                return
            yield pos, size - pos, True  # no SEEK_DATA here: read it all
            return
        if data > pos:
            yield pos, data - pos, False
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole - data, True
        pos = hole


def hash_into(h: hashlib._Hash, path: Path, progress: Callable[[int], None] | None = None) -> None:
    """Feed the contents of *path* to *h* in large chunks; *progress* gets each chunk's byte count.

    Large chunks because hashlib releases the GIL on them (several outputs hash in parallel),
    and a base image of gigabytes must not be read into memory. Holes are hashed from a buffer
    of zeros instead of being read: a fresh sparse file (a fixed VHD or raw output is mostly
    holes) costs the kernel a page allocation per 4 KiB read, measured 10x slower.
    """
    zeros = _ZEROS
    with path.open("rb") as f:
        fd = f.fileno()
        for offset, length, is_data in _extents(fd, os.fstat(fd).st_size):
            done = 0
            if is_data:
                f.seek(offset)
            while done < length:
                step = min(_CHUNK, length - done)
                chunk = f.read(step) if is_data else zeros[:step]
                if not chunk:
                    break
                h.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(len(chunk))


def file_digest(path: Path, algo: str = "sha256", progress: Callable[[int], None] | None = None) -> str:
    """Hex digest of a file with *algo* (any hashlib name), read as :func:`hash_into` does."""
    h = hashlib.new(algo, usedforsecurity=algo not in ("md5", "sha1"))
    hash_into(h, path, progress)
    return h.hexdigest()


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file (the digest of every output, manifest and cache key)."""
    return file_digest(path, "sha256", progress)
