"""Opening libguestfs handles the one way imgsmith allows.

Every drive is added with its format given explicitly (probing the format of an
untrusted raw image lets a guest claim to be qcow2 with a backing file on the
host), the accelerator comes from the cached probe, and each launch is counted
and timed so tests and ``--json`` output can assert "one launch per invocation".
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GuestError
from ..host import accel as accel_mod

__all__ = ["Drive", "launch_count", "open_handle"]

log = logging.getLogger("imgsmith.guest")

_launches = 0


@dataclass(frozen=True)
class Drive:
    path: Path
    format: str
    readonly: bool = False


def launch_count() -> int:
    """How many appliances this process has launched (reported by --json, asserted by tests)."""
    return _launches


def open_handle(drives: Sequence[Drive], *, network: bool = False, memsize: int | None = None,
                trace: bool = False) -> Any:
    """Create a handle, add *drives* with explicit formats, launch it, and return it.

    The caller owns the handle and must ``shutdown()``/``close()`` it (use
    :func:`contextlib.closing` or the Guest session, which does).
    """
    global _launches  # noqa: PLW0603 - a process-wide launch counter is the point
    import guestfs  # Debian's python3-guestfs; imported lazily so the CLI starts fast

    verdict = accel_mod.detect()
    accel_mod.apply_to_environ(verdict)
    g = guestfs.GuestFS(python_return_dict=True)
    if trace or os.environ.get("IMGSMITH_GUESTFS_TRACE"):
        g.set_trace(1)
    for d in drives:
        g.add_drive_opts(os.fspath(d.path), format=d.format, readonly=d.readonly)
    g.set_network(network)
    if memsize:
        g.set_memsize(memsize)
    start = time.monotonic()
    try:
        g.launch()
    except RuntimeError as exc:
        g.close()
        raise GuestError(f"could not launch the libguestfs appliance: {exc}",
                         hint="run `imgsmith doctor` or `libguestfs-test-tool` to diagnose") from exc
    _launches += 1
    log.info("appliance launched in %.1f s (accelerator: %s)", time.monotonic() - start, verdict.name)
    return g
