"""Choosing the guest backend: the appliance (safe anywhere) or chroot (root only, much faster).

``auto`` picks chroot only when it is both possible and acceptable: imgsmith runs as root,
the host has what the backend needs, and the image is trusted -- it came from a source
whose checksum was verified (or was bootstrapped from distribution packages), or the
user said ``--trust-image``. The chroot backend runs the image's own programs on the host
(sandboxed), which is exactly what libguestfs's appliance exists to avoid for images of
unknown origin; so an unverified image gets the appliance unless the user opts in.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["BACKENDS", "Choice", "choose", "chroot_problems"]

BACKENDS = ("auto", "appliance", "chroot")
_TOOLS = ("bwrap", "losetup", "partx", "blkid", "mount", "umount")


@dataclass(frozen=True)
class Choice:
    name: str  # appliance | chroot
    reason: str
    fallback: bool = False  # auto chose chroot: the appliance may take over if the image needs it


def chroot_problems(expose: str = "fuse") -> list[str]:
    """Why the chroot backend cannot run on this host (empty when it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("it needs root (it mounts the image's filesystems)")
    tools = (*_TOOLS, "qemu-storage-daemon") if expose == "fuse" else (*_TOOLS, "qemu-img")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        problems.append(f"missing host tools: {', '.join(missing)} (run scripts/setup.sh)")
    if not os.path.exists("/dev/loop-control"):
        problems.append("the host has no loop devices (modprobe loop)")
    if expose == "fuse" and not os.path.exists("/dev/fuse"):
        problems.append("the host has no /dev/fuse (modprobe fuse, or IMGSMITH_CHROOT_EXPOSE=raw)")
    return problems


def choose(requested: str, *, trusted: bool, expose: str = "fuse") -> Choice:
    if requested not in BACKENDS:
        raise UsageError(f"unknown backend '{requested}' (choose from {', '.join(BACKENDS)})")
    if requested == "appliance":
        return Choice("appliance", "asked for")
    problems = chroot_problems(expose)
    if requested == "chroot":
        if problems:
            raise UsageError(f"--backend chroot: {problems[0]}", hint="--backend appliance works without root")
        return Choice("chroot", "asked for")
    if problems:
        return Choice("appliance", f"the chroot backend is unavailable: {problems[0]}")
    if not trusted:
        return Choice("appliance",
                      "the image's origin is not verified (--trust-image allows the faster chroot backend)")
    return Choice("chroot", "root and a verified image", fallback=True)
