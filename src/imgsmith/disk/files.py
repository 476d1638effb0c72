"""File plumbing shared by the writers: checksums, durable renames, hidden work directories.

A destination only ever appears complete: everything is written inside a hidden
``.NAME.partial-XXXXXXXX`` directory next to it, flushed to disk, and moved into
place with one rename. A process killed with SIGKILL leaves at most that hidden
directory behind, never a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["fsync_dir", "fsync_file", "partial_dir", "sha256_file", "write_sha256_file"]

_CHUNK = 4 << 20


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


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file, read in large chunks (hashlib releases the GIL on them, so
    several outputs hash in parallel); *progress* gets the byte count of each chunk.

    Holes are hashed from a buffer of zeros instead of being read: a fresh sparse file (a
    fixed VHD or raw output is mostly holes) costs the kernel a page allocation per 4 KiB
    read, which measured 10x slower than hashing the zeros themselves.
    """
    h = hashlib.sha256()
    zeros = memoryview(bytes(_CHUNK))
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
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    """Flush a file's data so the rename that publishes it cannot outrun its contents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename itself)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_sha256_file(path: Path, digest: str, name: str) -> None:
    """``<hex>  <name>`` - the line ``sha256sum -c`` reads."""
    path.write_text(f"{digest}  {name}\n", encoding="utf-8")


@contextlib.contextmanager
def partial_dir(dest: Path) -> Iterator[Path]:
    """A hidden work directory next to *dest*, removed on the way out whatever happens."""
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
