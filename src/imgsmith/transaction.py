"""All-or-nothing changes to a disk: work in a qcow2 overlay, commit only on success.

The one transactional core of ``imgsmith customize`` and ``imgsmith sysprep``
(:func:`apply_to_disk`, returning a :class:`DiskResult`); the library API of each is a
thin wrapper naming its operations. Nothing here prints: messages go to the callbacks.

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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Generic, TypeVar

from .disk import qemuimg
from .errors import ImageError
from .guest import appliance
from .guest.api import OSInfo
from .guest.session import SessionOptions, open_guest
from .host import accel
from .host.files import scratch_dir, try_file_lock
from .ops.base import ApplyContext, Settings

__all__ = ["DiskInfo", "DiskResult", "apply_to_disk", "commit", "disk_info", "overlay"]

T = TypeVar("T")

log = logging.getLogger("imgsmith.transaction")


@dataclass(frozen=True)
class DiskInfo:
    path: Path
    format: str
    virtual_size: int


def disk_info(path: Path, fmt: str | None = None) -> DiskInfo:
    """Check *path* is a readable, uncorrupted disk image and find its format (qemu-img, never the appliance)."""
    info = qemuimg.open_image(path, fmt)
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
    """A throw-away qcow2 overlay over *disk*; deleted on exit whatever happens (by the next run after kill -9)."""
    base = workdir or Path(os.environ.get("IMGSMITH_TMPDIR") or os.environ.get("TMPDIR") or "/var/tmp")
    with _exclusive(disk.path), scratch_dir("imgsmith-", base) as tmp:
        top = tmp / "overlay.qcow2"
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


@dataclass
class DiskResult(Generic[T]):
    """What a transactional command did to a disk: its operations' reports plus the facts every
    command reports (``--json`` and the ``Finished:`` line)."""

    disk: Path
    format: str
    os: OSInfo | None
    operations: list[T]
    committed: bool
    accelerator: str
    launches: int
    seconds: float
    relabel: str | None = None
    warnings: list[str] = field(default_factory=list)
    backend: str = "appliance"


Apply = Callable[[ApplyContext], tuple[list[T], str | None]]
"""The work on the open guest: returns the operations' reports and how SELinux was relabelled."""


def apply_to_disk(disk: Path, apply: Apply[T], *, fmt: str | None, settings: Settings,
                  session: SessionOptions, message: Callable[[str], None], warn: Callable[[str], None],
                  output: Callable[[str], None]) -> DiskResult[T]:
    """Run *apply* on the guest in *disk* inside an overlay; commit only if it returns (and not dry-run).

    The disk is checked and the backend chosen before anything starts. One appliance launch
    (none with the chroot backend). Any exception from *apply* propagates after the overlay is
    deleted, leaving *disk* untouched.
    """
    start = time.monotonic()
    choice = session.choice()  # a bad backend request fails before the disk is touched
    info = disk_info(disk, fmt)
    if choice.name == "chroot":
        message(f"Examining the guest (backend: chroot, {choice.reason}) ...")
    else:
        message(f"Examining the guest (backend: appliance, accelerator: {accel.detect().name}) ...")
    warnings: list[str] = []

    def warn_and_keep(text: str) -> None:
        warnings.append(text)
        warn(text)

    launches_before = appliance.launch_count()
    with overlay(info) as top:
        with open_guest(top, "qcow2", session, message=message) as guest:
            reports, relabel = apply(ApplyContext(guest=guest, settings=settings, message=message,
                                                  warn=warn_and_keep, output=output))
            os_info, backend = guest.os, guest.backend
        if not settings.dry_run:
            message(f"Committing the changes into {disk}")
            commit(top)
    return DiskResult(disk=disk, format=info.format, os=os_info, operations=reports, committed=not settings.dry_run,
                      accelerator="none" if backend == "chroot" else accel.detect().name,
                      launches=appliance.launch_count() - launches_before,
                      seconds=round(time.monotonic() - start, 2), relabel=relabel, warnings=warnings,
                      backend=backend)
