"""Which operating system(s) a disk image holds, from libguestfs inspection.

One read-only appliance launch with the format stated explicitly; nothing is mounted
read-write and nothing in the image changes. Used by ``imgsmith info --inspect``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .appliance import Drive, open_handle

__all__ = ["GuestOS", "inspect_image"]

Launcher = Callable[[Sequence[Drive]], Any]


@dataclass(frozen=True)
class GuestOS:
    """One inspected root filesystem."""

    root: str
    type: str
    distro: str
    product_name: str
    version: str
    arch: str
    hostname: str
    package_format: str
    package_management: str
    mountpoints: tuple[tuple[str, str], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in vars(self).items() if k != "mountpoints"},
                "mountpoints": dict(self.mountpoints)}


def _safe(call: Callable[[], Any], default: str = "unknown") -> str:
    """Inspection getters raise for fields the heuristics could not determine; report those as unknown."""
    try:
        value = call()
    except RuntimeError:
        return default
    return str(value) if value not in (None, "") else default


def _one(g: Any, root: str) -> GuestOS:
    major = _safe(lambda: g.inspect_get_major_version(root), "0")
    minor = _safe(lambda: g.inspect_get_minor_version(root), "0")
    try:
        mps = g.inspect_get_mountpoints(root)
    except RuntimeError:
        mps = {}
    return GuestOS(
        root=root,
        type=_safe(lambda: g.inspect_get_type(root)),
        distro=_safe(lambda: g.inspect_get_distro(root)),
        product_name=_safe(lambda: g.inspect_get_product_name(root)),
        version=f"{major}.{minor}",
        arch=_safe(lambda: g.inspect_get_arch(root)),
        hostname=_safe(lambda: g.inspect_get_hostname(root)),
        package_format=_safe(lambda: g.inspect_get_package_format(root)),
        package_management=_safe(lambda: g.inspect_get_package_management(root)),
        mountpoints=tuple(sorted(dict(mps).items())),
    )


def inspect_image(path: str | os.PathLike[str], fmt: str, *,
                  launcher: Launcher = open_handle) -> list[GuestOS]:
    """Inspect *path* (format *fmt*, read-only); an empty list when no OS is recognised."""
    g = launcher([Drive(Path(path), fmt, readonly=True)])
    try:
        return [_one(g, root) for root in g.inspect_os()]
    finally:
        g.shutdown()
        g.close()
