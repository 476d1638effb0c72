"""Opening a guest with the chosen backend; always torn down.

The appliance: one libguestfs launch, inspection, mounts. The chroot backend: the image
exposed as a loop device, filesystems mounted on the host, commands in a sandbox. Both
yield the same Guest API; callers commit the disk only after the context exits cleanly,
because leaving it is what flushes every write (appliance shutdown, unmount, storage
daemon exit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..disk.sizes import SizeSpec
from ..errors import GuestError
from .api import Guest, OSInfo
from .appliance import Drive, open_handle
from .backend import Choice, choose, chroot_problems
from .libguestfs import ApplianceGuest, inspect_and_mount

__all__ = ["SessionOptions", "open_guest", "session_count"]

log = logging.getLogger("imgsmith.guest")
_opened = [0]


def session_count() -> int:
    """Guest sessions opened by this process, whatever the backend (tests count cache misses with it)."""
    return _opened[0]


def _default_expose() -> str:
    return os.environ.get("IMGSMITH_CHROOT_EXPOSE", "fuse")


@dataclass(frozen=True)
class SessionOptions:
    """How to open the guest: backend, appliance network/memory, root choice, tracing."""

    network: bool = True
    memsize: int | None = None
    root: str = "single"
    trace: bool = False
    readonly: bool = False
    backend: str = "auto"  # auto | appliance | chroot
    trusted: bool = False  # verified source or --trust-image: lets auto pick chroot
    expose: str = field(default_factory=_default_expose)  # chroot: fuse | raw
    # Facts an earlier session found on this guest (a build's first layer): a later layer mounts the
    # known root and mountpoints instead of searching again. Not part of any cache key.
    known: OSInfo | None = None
    # Grow the disk first (a build's `size:`): the virtual size with qemu-img, then inside the session
    # the last partition and its filesystem (see imgsmith.guest.grow). Bytes, or a spec such as +2G.
    grow_to: int | SizeSpec | None = None

    def for_layer(self, *, grow_to: str | None = None, known: OSInfo | None = None,
                  memsize: int | None = None) -> SessionOptions:
        """These options for one build layer: grow the disk to *grow_to* (``size:``), reuse *known* facts,
        the layer's own appliance *memsize* (when it sets one)."""
        from ..disk.sizes import parse_size
        return dataclasses.replace(self, grow_to=parse_size(grow_to) if grow_to else None, known=known,
                                   memsize=memsize or self.memsize)

    def choice(self) -> Choice:
        return choose(self.backend, trusted=self.trusted, expose=self.expose)


def _describe(guest: Guest) -> None:
    info = guest.os
    log.info("guest: %s, root %s, package manager %s, SELinux %s, init %s (backend %s)",
             info.describe(), info.root, info.package_management,
             "on" if info.selinux else "off", info.init, guest.backend)


@contextlib.contextmanager
def _appliance(disk: Path, fmt: str, options: SessionOptions) -> Iterator[Guest]:
    g = open_handle([Drive(disk, fmt, options.readonly)], network=options.network,
                    memsize=options.memsize, trace=options.trace)
    try:
        if options.grow_to is not None:
            _grow_appliance(g)
        guest = ApplianceGuest(g, inspect_and_mount(g, options.root, options.known))
        _describe(guest)
        yield guest
        g.umount_all()
        g.shutdown()
    finally:
        g.close()


def _grow_appliance(g: Any) -> None:
    from .resize import grow_in_guest
    try:
        growth = grow_in_guest(g)
    except RuntimeError as exc:
        raise GuestError(f"growing the disk: {exc}") from exc
    log.info("grew partition %s to %d bytes (%s)", growth.partition, growth.partition_size_after, growth.filesystem)


@contextlib.contextmanager
def _chroot(disk: Path, fmt: str, options: SessionOptions) -> Iterator[Guest]:
    from ..host.rollback import Session, sweep_stale
    from .blockdev import expose
    from .mounts import mount_guest

    sweep_stale()
    session = Session(f"chroot {disk}")
    with session.held():
        device = expose(session, disk, fmt, method=options.expose, workdir=disk.parent)
        if options.grow_to is not None:
            from .grow import grow_chroot
            from .mounts import check_supported
            check_supported(device)  # what the chroot backend cannot mount, it must not grow either
            grow_chroot(session, device)
        guest = mount_guest(session, device, root_choice=options.root, network=options.network,
                            known=options.known)
        _describe(guest)
        yield guest
        for kind in ("mount", "loop", "daemon", "fuse"):  # flush in order: fs, loop, qcow2
            session.pop_while(kind)
        device.write_back()


def _foreign_choice(disk: Path, fmt: str, options: SessionOptions, choice: Choice,
                   message: Callable[[str], None]) -> Choice:
    """``auto`` on a foreign-architecture guest: chroot through qemu-user when possible (the appliance
    cannot run the guest's programs at all), else say in one line why its commands will not run.

    The architecture comes from the ESP's removable boot loader (read without a launch); a disk
    without one is taken as the host's (BIOS boots x86 only).
    """
    if options.backend != "auto" or choice.name == "chroot":
        return choice
    from ..disk.layout import read_layout
    from ..host.binfmt import binfmt_problem, host_arch, is_foreign
    arch = read_layout(disk, fmt).efi_arch
    if arch is None or not is_foreign(arch):
        return choice
    problems = chroot_problems(options.expose)
    problem = problems[0] if problems else binfmt_problem(arch)
    if problem is None:
        return Choice("chroot", f"the guest is {arch} (this host {host_arch()}): the appliance cannot run its "
                                "programs, qemu-user in the chroot backend can")
    message(f"the guest is {arch}: the appliance cannot run its programs and the chroot backend is unavailable "
            f"({problem}); only file operations will work")
    return choice


@contextlib.contextmanager
def open_guest(disk: Path, fmt: str, options: SessionOptions = SessionOptions(),
               message: Callable[[str], None] = lambda _m: None) -> Iterator[Guest]:
    """Open the OS in *disk* (format given explicitly) with the backend *options* select.

    With ``auto``, an image the chroot backend cannot handle (LVM, a foreign
    architecture...) is opened with the appliance instead, and *message* says why.
    """
    from .chroot import ChrootUnsupported

    choice = _foreign_choice(disk, fmt, options, options.choice(), message)
    if options.grow_to is not None:
        from .grow import grow_image
        grow_image(disk, fmt, options.grow_to)  # no launch: the guest grows inside the session
    _opened[0] += 1
    with contextlib.ExitStack() as stack:
        guest: Guest | None = None
        if choice.name == "chroot":
            try:
                guest = stack.enter_context(_chroot(disk, fmt, options))
            except ChrootUnsupported as exc:
                if not choice.fallback:
                    raise
                message(f"chroot backend: {exc.message}; using the appliance")
        if guest is None:
            guest = stack.enter_context(_appliance(disk, fmt, options))
        yield guest
