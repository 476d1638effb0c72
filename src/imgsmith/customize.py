"""Library API of ``imgsmith customize`` (and the transactional core sysprep shares).

This is what the CLI calls and what a program embedding imgsmith should call; it
never prints. Messages go to the ``message``/``warn``/``output`` callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from .guest import appliance
from .guest.api import Guest, OSInfo
from .guest.session import SessionOptions, open_guest
from .host import accel
from .ops.base import ApplyContext, Operation, Settings
from .runner import apply_operations
from .transaction import commit, disk_info, overlay

__all__ = ["CustomizeResult", "Modified", "apply_to_disk", "customize_disk", "modify_disk"]

T = TypeVar("T")


@dataclass
class Modified(Generic[T]):
    """What :func:`modify_disk` did: the worker's value plus the facts every command reports."""

    value: T
    disk: Path
    format: str
    os: OSInfo
    committed: bool
    accelerator: str
    launches: int
    seconds: float
    backend: str = "appliance"


def modify_disk(disk: Path, work: Callable[[Guest], T], *, fmt: str | None = None,
                session: SessionOptions = SessionOptions(), dry_run: bool = False,
                message: Callable[[str], None] = lambda _m: None) -> Modified[T]:
    """Run *work* on the guest in *disk* inside an overlay; commit only if it returns (and not dry-run).

    One appliance launch (none with the chroot backend). Any exception from *work*
    propagates after the overlay is deleted, leaving *disk* untouched.
    """
    start = time.monotonic()
    choice = session.choice()  # a bad backend request fails before the disk is touched
    info = disk_info(disk, fmt)
    if choice.name == "chroot":
        accelerator = "none"
        message(f"Examining the guest (backend: chroot, {choice.reason}) ...")
    else:
        accelerator = accel.detect().name
        message(f"Examining the guest (backend: appliance, accelerator: {accelerator}) ...")
    launches_before = appliance.launch_count()
    with overlay(info) as top:
        with open_guest(top, "qcow2", session, message=message) as guest:
            value = work(guest)
            os_info = guest.os
            backend = guest.backend
        if not dry_run:
            message(f"Committing the changes into {disk}")
            commit(top)
    return Modified(value=value, disk=disk, format=info.format, os=os_info, committed=not dry_run,
                    accelerator=accelerator if backend == "chroot" else accel.detect().name,
                    launches=appliance.launch_count() - launches_before,
                    seconds=round(time.monotonic() - start, 2), backend=backend)


def apply_to_disk(disk: Path, apply: Callable[[ApplyContext], T], *, fmt: str | None, settings: Settings,
                  session: SessionOptions, message: Callable[[str], None], warn: Callable[[str], None],
                  output: Callable[[str], None]) -> tuple[Modified[T], list[str]]:
    """:func:`modify_disk` with an ApplyContext for *apply*; also returns the warnings it gave (for results)."""
    warnings: list[str] = []

    def warn_and_keep(text: str) -> None:
        warnings.append(text)
        warn(text)

    def work(guest: Guest) -> T:
        return apply(ApplyContext(guest=guest, settings=settings, message=message, warn=warn_and_keep,
                                  output=output))

    return modify_disk(disk, work, fmt=fmt, session=session, dry_run=settings.dry_run, message=message), warnings


@dataclass
class CustomizeResult:
    disk: Path
    format: str
    os: OSInfo | None
    operations: list[str]
    committed: bool
    accelerator: str
    launches: int
    seconds: float
    relabel: str | None = None
    warnings: list[str] = field(default_factory=list)
    backend: str = "appliance"


def customize_disk(
    disk: Path,
    ops: Sequence[Operation],
    *,
    fmt: str | None = None,
    settings: Settings = Settings(),
    session: SessionOptions = SessionOptions(),
    message: Callable[[str], None] = lambda _m: None,
    warn: Callable[[str], None] = lambda _m: None,
    output: Callable[[str], None] = print,
) -> CustomizeResult:
    """Apply *ops* to *disk* transactionally; on any error the disk is unchanged."""
    done, warnings = apply_to_disk(disk, lambda ctx: apply_operations(ctx, ops), fmt=fmt, settings=settings,
                                   session=session, message=message, warn=warn, output=output)
    return CustomizeResult(
        disk=disk, format=done.format, os=done.os, operations=done.value.applied, committed=done.committed,
        accelerator=done.accelerator, launches=done.launches, seconds=done.seconds,
        relabel=done.value.relabel, warnings=warnings, backend=done.backend,
    )
