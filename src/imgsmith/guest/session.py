"""Opening a guest: one appliance launch, inspection, mounts; always torn down."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .api import Guest
from .appliance import Drive, open_handle
from .libguestfs import ApplianceGuest, inspect_and_mount

__all__ = ["SessionOptions", "open_guest"]

log = logging.getLogger("imgsmith.guest")


@dataclass(frozen=True)
class SessionOptions:
    """How to open the guest: appliance network, memory, root choice, libguestfs tracing."""

    network: bool = True
    memsize: int | None = None
    root: str = "single"
    trace: bool = False
    readonly: bool = False


@contextlib.contextmanager
def open_guest(disk: Path, fmt: str, options: SessionOptions = SessionOptions()) -> Iterator[Guest]:
    """Launch the appliance on *disk* (format given explicitly), inspect and mount its OS.

    The handle is shut down on every path; ``shutdown()`` is what flushes writes
    to the disk, so it runs before the caller commits anything.
    """
    g = open_handle([Drive(disk, fmt, options.readonly)], network=options.network,
                    memsize=options.memsize, trace=options.trace)
    try:
        info = inspect_and_mount(g, options.root)
        log.info("guest: %s, root %s, package manager %s, SELinux %s, init %s",
                 info.describe(), info.root, info.package_management,
                 "on" if info.selinux else "off", info.init)
        yield ApplianceGuest(g, info)
        g.umount_all()
        g.shutdown()
    finally:
        g.close()
