"""Foreign-architecture programs on this host: qemu-user through binfmt_misc.

An arm64 tree is bootstrapped and customized on an amd64 host by running its own
programs under ``qemu-aarch64``; the kernel does that transparently once the
handler is registered in ``/proc/sys/fs/binfmt_misc``. The ``F`` (fix binary) flag
matters: the interpreter is opened at registration, so it works inside a chroot
that has no qemu of its own.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["BINFMT_DIR", "QEMU_NAMES", "binfmt_problem", "host_arch", "is_foreign", "normalise"]

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
QEMU_NAMES = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}
_MACHINE_TO_DEBIAN = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "amd64": "amd64"}


def host_arch() -> str:
    """This host's architecture in Debian's words (amd64, arm64)."""
    machine = platform.machine()
    return _MACHINE_TO_DEBIAN.get(machine, machine)


def normalise(arch: str) -> str:
    """Debian's name for an architecture given as Debian, uname or libguestfs spell it."""
    return _MACHINE_TO_DEBIAN.get(arch, arch)


def is_foreign(arch: str) -> bool:
    return normalise(arch) != host_arch()


def binfmt_problem(arch: str, binfmt_dir: Path = BINFMT_DIR) -> str | None:
    """Why programs of *arch* cannot run here (None when they can, natively or through qemu-user)."""
    arch = normalise(arch)
    name = QEMU_NAMES.get(arch)
    if not is_foreign(arch) or name is None:
        return None if not is_foreign(arch) else f"no qemu-user handler known for {arch}"
    if not (binfmt_dir / "register").exists():
        return f"binfmt_misc is not mounted on {binfmt_dir} (run scripts/setup.sh)"
    try:
        text = (binfmt_dir / name).read_text(encoding="utf-8")
    except OSError:
        return f"{name} is not registered with binfmt_misc (apt-get install qemu-user-static binfmt-support)"
    return _entry_problem(name, text)


def _entry_problem(name: str, text: str) -> str | None:
    """A registered handler must be enabled and carry F (the interpreter opened at registration)."""
    if not text.startswith("enabled"):
        return f"{name} is registered with binfmt_misc but disabled (update-binfmts --enable {name})"
    flags = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("flags:")), "")
    if "F" not in flags:
        return f"{name} is registered without the F flag, so it cannot run inside a chroot (use qemu-user-static)"
    return None
