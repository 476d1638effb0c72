"""All-or-nothing changes to a disk: work in a qcow2 overlay, commit only on success.

The overlay's backing file is the user's disk, opened read-only by qemu while the
operations run; if anything fails (or on Ctrl-C, or with --dry-run) the overlay is
simply deleted and the disk is byte-for-byte as before. On success ``qemu-img
commit`` writes the changed clusters into the disk; SIGINT/SIGTERM are deferred
during that short window.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from .disk import qemuimg
from .errors import ImageError
from .host.files import try_file_lock

__all__ = ["DiskInfo", "commit", "disk_info", "overlay"]

log = logging.getLogger("imgsmith.transaction")


@dataclass(frozen=True)
class DiskInfo:
    path: Path
    format: str
    virtual_size: int


def disk_info(path: Path, fmt: str | None = None) -> DiskInfo:
    """Check *path* is a readable, uncorrupted disk image and find its format (qemu-img, never the appliance)."""
    if not path.exists():
        raise ImageError(f"{path}: no such disk image")
    info = qemuimg.info(path, fmt)
    if fmt == "raw" and (probed := qemuimg.info(path).format) != "raw":
        raise ImageError(f"{path}: is {probed}, not raw (drop --format or give --format {probed})")
    if info.format in ("qcow2", "vmdk", "vhdx", "vpc", "vdi", "qed"):
        verdict = qemuimg.check(path, info.format)
        if verdict.supported and not verdict.ok:
            raise ImageError(f"{path}: the {info.format} image is corrupt: {verdict.corruptions} corruption(s), "
                             f"{verdict.check_errors} check error(s) (qemu-img check -r all can try to repair it)")
    return DiskInfo(path, info.format, info.virtual_size)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One imgsmith at a time per disk: a second one fails at once with a clear message."""
    with try_file_lock(path) as free:
        if not free:
            raise ImageError(f"{path}: another imgsmith is working on this disk")
        yield


@contextlib.contextmanager
def overlay(disk: DiskInfo, *, workdir: Path | None = None) -> Iterator[Path]:
    """A throw-away qcow2 overlay over *disk*; deleted on exit whatever happens."""
    base = workdir or Path(os.environ.get("IMGSMITH_TMPDIR") or os.environ.get("TMPDIR") or "/var/tmp")
    with _exclusive(disk.path), tempfile.TemporaryDirectory(prefix="imgsmith-", dir=base) as tmp:
        top = Path(tmp) / "overlay.qcow2"
        qemuimg.create_overlay(disk.path, disk.format, top)
        yield top


def commit(top: Path) -> None:
    """Write the overlay's changes into its backing disk, with SIGINT/SIGTERM held off meanwhile."""
    pending: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)

    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        qemuimg.commit(top)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if pending:
        log.warning("interrupted after the commit finished; the disk is complete")
        raise KeyboardInterrupt
