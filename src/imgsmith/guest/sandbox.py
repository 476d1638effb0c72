"""Running a guest's own commands on the host, fenced in with bubblewrap.

A bare chroot would let a package's maintainer script see and signal host processes,
change the host's hostname, or start a daemon that outlives the build. bubblewrap gives
each command its own mount, PID, IPC and UTS namespaces over the guest's root, a
minimal /dev, a fresh /proc, a read-only /sys, and dies with imgsmith. The network
namespace is shared only when the session has network (like the appliance's
``--no-network``), and for that command the guest's /etc/resolv.conf is temporarily the
host's, as virt-customize does in its appliance.

Daemons: Debian-family guests get a ``policy-rc.d`` that refuses service starts (the
interface invoke-rc.d and deb-systemd-invoke honour); systemctl sees no running systemd
and works offline (``SYSTEMD_OFFLINE=1``), so ``enable`` works and ``start`` does nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["POLICY_RC_D", "bwrap_argv", "guarded_files"]

POLICY_RC_D = b"#!/bin/sh\n# imgsmith: no service starts while building the image\nexit 101\n"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def bwrap_argv(root: Path, script: str, *, network: bool) -> list[str]:
    """The bubblewrap command that runs ``/bin/sh -c script`` with *root* as /."""
    argv = [
        "bwrap", "--bind", os.fspath(root), "/",
        "--dev", "/dev", "--proc", "/proc", "--ro-bind", "/sys", "/sys",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--chdir", "/",
        "--clearenv", "--setenv", "PATH", GUEST_PATH, "--setenv", "HOME", "/root",
        "--setenv", "LANG", "C", "--setenv", "TERM", "dumb",
        "--setenv", "DEBIAN_FRONTEND", "noninteractive", "--setenv", "SYSTEMD_OFFLINE", "1",
    ]
    if not network:
        argv.append("--unshare-net")
    return [*argv, "/bin/sh", "-c", script]


@contextlib.contextmanager
def _swapped(host_file: Path, content: bytes, mode: int) -> Iterator[None]:
    """Put *content* at *host_file* for the block; restore what was there unless the block changed it.

    If the command itself rewrote the file (a --run-command that edits resolv.conf), its
    version is kept, and the original is not put back over it.
    """
    saved = host_file.with_name(f".{host_file.name}.imgsmith-saved")
    existed = os.path.lexists(host_file)
    if existed:
        os.rename(host_file, saved)
    try:
        fd = os.open(host_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(host_file, mode)
    except OSError:
        if existed:
            os.rename(saved, host_file)
        yield  # the directory is missing or read-only: run without the guard
        return
    try:
        yield
    finally:
        try:
            untouched = not host_file.is_symlink() and host_file.read_bytes() == content
        except OSError:
            untouched = False
        if untouched:
            host_file.unlink()
            if existed:
                os.rename(saved, host_file)
        elif existed:
            saved.unlink()


@contextlib.contextmanager
def guarded_files(root: Path, *, debian: bool, network: bool) -> Iterator[None]:
    """resolv.conf (with network) and policy-rc.d (Debian family) in place for one command."""
    with contextlib.ExitStack() as stack:
        if network and (root / "etc").is_dir() and not (root / "etc").is_symlink():
            try:
                resolv = Path("/etc/resolv.conf").read_bytes()
            except OSError:
                resolv = b""
            if resolv:
                stack.enter_context(_swapped(root / "etc" / "resolv.conf", resolv, 0o644))
        sbin = root / "usr" / "sbin"
        if debian and sbin.is_dir() and not sbin.is_symlink() and not os.path.lexists(sbin / "policy-rc.d"):
            stack.enter_context(_swapped(sbin / "policy-rc.d", POLICY_RC_D, 0o755))
        yield
