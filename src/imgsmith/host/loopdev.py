"""Loop devices: forget partitions that an earlier user of the same device left in the kernel.

A loop device detached while one of its partitions was still open (a bootstrap killed while a
chroot program held the root filesystem) keeps that partition registered: ``/dev/loop2p2``
outlives ``/dev/loop2``. The next ``losetup --find`` hands the same device to someone else and
their ``partx -a`` fails with "error adding partition 2" for as long as the machine runs. Seen
here after interrupted bootstraps; every attach clears such leftovers first.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .. import proc
from ..errors import ProcessError

__all__ = ["forget_stale_partitions"]


def forget_stale_partitions(loop: str, sys_block: Path = Path("/sys/block")) -> list[str]:
    """Delete the partitions the kernel still lists for a just-attached *loop*; their names."""
    name = Path(loop).name
    stale = sorted((p.name for p in (sys_block / name).glob(f"{name}p*")), key=lambda n: int(n[len(name) + 1:]))
    for part in stale:
        with contextlib.suppress(ProcessError):  # one still open stays; partx -a then names it
            proc.run(["partx", "-d", "--nr", part[len(name) + 1:], loop])
    return stale
