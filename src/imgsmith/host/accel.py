"""Which accelerator really works here: KVM when a tiny guest actually boots with it, else TCG.

The existence of /dev/kvm proves nothing (in nested VMs qemu may assert on an MSR or
hang), so the probe starts the host's own kernel under ``accel=kvm`` with no root
filesystem and waits, with a short timeout, for the kernel's first console line.
The verdict is cached per (qemu version, kernel, /dev/kvm identity) so the probe
costs its few seconds once.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import select
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import proc
from ..paths import cache_root
from .files import atomic_write, file_lock

__all__ = ["Accelerator", "apply_to_environ", "detect", "libguestfs_env", "probe_kvm"]

log = logging.getLogger("imgsmith.accel")

PROBE_TIMEOUT = 15.0
QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Accelerator:
    """The verdict: ``name`` is ``kvm`` or ``tcg``; ``reason`` says why, for -v and doctor."""

    name: str
    reason: str
    probe_seconds: float = 0.0
    cached: bool = False

    @property
    def qemu_accel(self) -> str:
        return "kvm" if self.name == "kvm" else "tcg"


def _host_kernel() -> str | None:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    for k in reversed(kernels):
        if os.access(k, os.R_OK):
            return k
    return None


def _cache_key(kernel: str | None) -> str:
    try:
        ver = proc.run([QEMU, "--version"]).stdout.splitlines()[0]
    except Exception:
        ver = "no-qemu"
    try:
        st = os.stat("/dev/kvm")
        kvm = f"{st.st_rdev}:{st.st_mode}"
    except OSError:
        kvm = "absent"
    return f"{ver}|{kernel}|{kvm}|{os.uname().release}"


def probe_kvm(timeout: float = PROBE_TIMEOUT) -> Accelerator:
    """Start a kernel under KVM and wait for its first console output."""
    if not os.path.exists("/dev/kvm"):
        return Accelerator("tcg", "/dev/kvm does not exist")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accelerator("tcg", "/dev/kvm is not accessible to this user")
    kernel = _host_kernel()
    if kernel is None:
        return Accelerator("tcg", "no readable kernel in /boot to probe KVM with")
    argv = [QEMU, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256", "-nodefaults",
            "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", kernel,
            "-append", "console=ttyS0 panic=-1 earlyprintk=serial"]
    start = time.monotonic()
    seen = b""
    with proc.spawn(argv, merge_stderr=True, grace=2.0, check=False) as p:
        assert p.stdout is not None
        while time.monotonic() - start < timeout:
            ready, _, _ = select.select([p.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
                if b"Linux version" in seen or b"Booting the kernel" in seen:
                    took = time.monotonic() - start
                    return Accelerator("kvm", f"a test guest booted under KVM in {took:.1f} s", took)
            elif p.poll() is not None:
                break
    took = time.monotonic() - start
    tail = seen.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    if not p.stopped and p.returncode not in (None, 0) and took < timeout:
        why = f"qemu with KVM exited with status {p.returncode}: {tail[0][:160]}"
    else:
        why = f"a test guest under KVM showed no kernel output within {timeout:.0f} s"
    return Accelerator("tcg", why, took)


def detect(*, refresh: bool = False) -> Accelerator:
    """The cached verdict, probing once. ``IMGSMITH_ACCEL=kvm|tcg`` overrides (for tests, CI)."""
    forced = os.environ.get("IMGSMITH_ACCEL")
    if forced in ("kvm", "tcg"):
        return Accelerator(forced, "forced by IMGSMITH_ACCEL")
    key = _cache_key(_host_kernel())
    path = cache_root() / "accel.json"
    if not refresh and (cached := _cached(path, key)) is not None:
        return cached
    # One probe at a time: parallel builds starting together would each boot a test guest.
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):  # a read-only cache: probe unlocked, as before
            stack.enter_context(file_lock(cache_root() / "accel.lock"))
        if not refresh and (cached := _cached(path, key)) is not None:
            return cached
        verdict = probe_kvm()
        log.info("accelerator: %s (%s)", verdict.name, verdict.reason)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps({"key": key, **asdict(verdict)}))
        except OSError as exc:
            log.debug("could not cache the accelerator verdict: %s", exc)
    return verdict


def _cached(path: Path, key: str) -> Accelerator | None:
    try:
        data = json.loads(path.read_text())
        if data.get("key") == key:
            return Accelerator(data["name"], data["reason"], data.get("probe_seconds", 0.0), cached=True)
    except (OSError, ValueError, KeyError):
        pass
    return None


def libguestfs_env(accel: Accelerator) -> dict[str, str]:
    """Environment for libguestfs: force TCG when KVM is not usable (else it would try KVM and fail)."""
    if accel.name == "tcg":
        existing = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "")
        parts = [p for p in existing.split(":") if p]
        if "force_tcg" not in parts:
            parts.append("force_tcg")
        return {"LIBGUESTFS_BACKEND_SETTINGS": ":".join(parts)}
    return {}


def apply_to_environ(accel: Accelerator) -> None:
    """libguestfs reads its settings from the process environment at handle creation."""
    os.environ.update(libguestfs_env(accel))
