"""Which operating system(s) a disk image holds, for ``imgsmith info --inspect``.

One read-only appliance launch with the format stated explicitly; nothing is mounted
read-write and nothing in the image changes. The facts are the sessions' own
(:class:`~imgsmith.guest.api.OSInfo`, found by :mod:`imgsmith.guest.treeinspect`'s rules),
so ``info`` says exactly what a customize or build would see.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .api import OSInfo
from .appliance import Drive, open_handle

__all__ = ["inspect_image"]

Launcher = Callable[[Sequence[Drive]], Any]


def inspect_image(path: str | os.PathLike[str], fmt: str, *,
                  launcher: Launcher = open_handle) -> list[OSInfo]:
    """Inspect *path* (format *fmt*, read-only); an empty list when no OS is recognised."""
    from ..guest.libguestfs import inspect_roots

    g = launcher([Drive(Path(path), fmt, readonly=True)])
    try:
        return inspect_roots(g)
    finally:
        g.shutdown()
        g.close()
