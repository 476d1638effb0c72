"""All-or-nothing changes to a disk: work in a qcow2 overlay, commit only on success.

The overlay's backing file is the user's disk, opened read-only by qemu while the
operations run; if anything fails (or on Ctrl-C, or with --dry-run) the overlay is
simply deleted and the disk is byte-for-byte as before. On success ``qemu-img
commit`` writes the changed clusters into the disk; SIGINT/SIGTERM are deferred
during that short window.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from . import proc
from .errors import ImageError, ProcessError

__all__ = ["DiskInfo", "commit", "disk_info", "overlay"]

log = logging.getLogger("imgsmith.transaction")


@dataclass(frozen=True)
class DiskInfo:
    path: Path
    format: str
    virtual_size: int


def disk_info(path: Path, fmt: str | None = None) -> DiskInfo:
    """Check *path* is a readable disk image and find its format (qemu-img info, never the appliance)."""
    if not path.exists():
        raise ImageError(f"{path}: no such disk image")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not a disk image")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path}: not readable")
    argv: list[str | os.PathLike[str]] = ["qemu-img", "info", "--output=json", "-U"]
    if fmt:
        argv += ["-f", fmt]
    try:
        data = json.loads(proc.run([*argv, path]).stdout)
    except ProcessError as exc:
        last = (exc.stderr.strip().splitlines() or [exc.message])[-1]
        raise ImageError(f"{path}: not a usable disk image: {last.removeprefix('qemu-img: ')}") from None
    found = str(data.get("format", ""))
    if fmt == "raw":
        probed = json.loads(proc.run(["qemu-img", "info", "--output=json", "-U", path]).stdout).get("format")
        if probed != "raw":
            raise ImageError(f"{path}: is {probed}, not raw (drop --format or give --format {probed})")
    if found == "qcow2" or found in ("vmdk", "vhdx", "vpc", "vdi", "qed"):
        try:
            proc.run(["qemu-img", "check", "-U", "-q", "-f", found, path])
        except ProcessError as exc:
            if exc.returncode in (2, 3):
                why = (exc.stderr.strip().splitlines() or ["corrupt"])[-1]
                raise ImageError(f"{path}: the {found} image is corrupt: {why}") from None
    return DiskInfo(path, found, int(data.get("virtual-size", 0)))


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One imgsmith at a time per disk: a second one fails at once with a clear message."""
    with path.open("rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ImageError(f"{path}: another imgsmith is working on this disk") from None
        yield


@contextlib.contextmanager
def overlay(disk: DiskInfo, *, workdir: Path | None = None) -> Iterator[Path]:
    """A throw-away qcow2 overlay over *disk*; deleted on exit whatever happens."""
    base = workdir or Path(os.environ.get("IMGSMITH_TMPDIR") or os.environ.get("TMPDIR") or "/var/tmp")
    with _exclusive(disk.path), tempfile.TemporaryDirectory(prefix="imgsmith-", dir=base) as tmp:
        top = Path(tmp) / "overlay.qcow2"
        proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", disk.format,
                  "-b", disk.path.resolve(), top])
        yield top


def commit(top: Path) -> None:
    """Write the overlay's changes into its backing disk, with SIGINT/SIGTERM held off meanwhile."""
    pending: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)

    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        proc.run(["qemu-img", "commit", "-q", "-f", "qcow2", top])
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if pending:
        log.warning("interrupted after the commit finished; the disk is complete")
        raise KeyboardInterrupt
