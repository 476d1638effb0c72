"""Library API of ``imgsmith customize``: the operations, through the transactional core
(:func:`imgsmith.transaction.apply_to_disk`) that sysprep shares.

This is what the CLI calls and what a program embedding imgsmith should call; it
never prints. Messages go to the ``message``/``warn``/``output`` callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .guest.session import SessionOptions
from .ops.base import ApplyContext, Operation, Settings
from .runner import apply_operations
from .transaction import DiskResult, apply_to_disk

__all__ = ["customize_disk"]


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
) -> DiskResult[str]:
    """Apply *ops* to *disk* transactionally; on any error the disk is unchanged.

    The result's ``operations`` are the descriptions of the operations applied, in order.
    """
    def apply(ctx: ApplyContext) -> tuple[list[str], str | None]:
        report = apply_operations(ctx, ops)
        return report.applied, report.relabel

    return apply_to_disk(disk, apply, fmt=fmt, settings=settings, session=session, message=message, warn=warn,
                         output=output)
