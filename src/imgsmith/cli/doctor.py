"""`imgsmith doctor`: what this host can do (versions, accelerator, appliance launch time)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import __version__, proc
from ..host import accel
from .commands import SUMMARIES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help=SUMMARIES["doctor"],
                       description="Report versions of libguestfs and qemu, which accelerator works "
                                   "(KVM is probed by really booting a tiny guest), and how long a "
                                   "libguestfs appliance takes to launch here.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-launch", action="store_true", help="skip the appliance launch timing")
    p.add_argument("--reprobe", action="store_true", help="probe the accelerator again, ignoring the cache")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail")
    p.set_defaults(func=run)


def _version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        return proc.run(argv).stdout.strip().splitlines()[0]
    except Exception as exc:
        return f"error: {exc}"


def _foreign_and_firmware() -> dict[str, str]:
    """arm64 chroots (binfmt_misc with qemu-aarch64), the arm64 emulator, and the UEFI firmware found."""
    from ..boot.firmware import find_uefi
    from ..errors import UsageError
    from ..host.binfmt import binfmt_problem
    problem = binfmt_problem("arm64")
    report = {"binfmt_arm64": "registered (arm64 bootstrap and chroot customize work)" if problem is None
              else f"unavailable: {problem}",
              "qemu-system-aarch64": _version(["qemu-system-aarch64", "--version"])}
    for label, arch, secure in (("firmware_uefi_x86_64", "x86_64", False),
                                ("firmware_secure_boot_x86_64", "x86_64", True),
                                ("firmware_uefi_aarch64", "aarch64", False)):
        try:
            report[label] = find_uefi(arch, secure_boot=secure).describe()
        except UsageError as exc:
            report[label] = f"not found ({exc.hint})"
    return report


def run(args: argparse.Namespace) -> int:
    verdict = accel.detect(refresh=args.reprobe)
    report: dict[str, Any] = {
        "imgsmith": __version__,
        "libguestfs": _version(["guestfish", "--version"]),
        "qemu-img": _version(["qemu-img", "--version"]),
        "qemu-system": _version(["qemu-system-x86_64", "--version"]),
        "virt-customize": _version(["virt-customize", "--version"]),
        "accelerator": verdict.name,
        "accelerator_reason": verdict.reason + (" (cached)" if verdict.cached else ""),
    }
    from ..guest.backend import chroot_problems
    problems = chroot_problems(os.environ.get("IMGSMITH_CHROOT_EXPOSE", "fuse"))
    report["chroot_backend"] = "available (root: --backend chroot, or auto with a verified image)" if not problems \
        else f"unavailable: {'; '.join(problems)}"
    report.update(_foreign_and_firmware())
    try:
        import guestfs  # noqa: F401
        report["python-guestfs"] = "ok"
    except ImportError:
        report["python-guestfs"] = "missing (apt-get install python3-guestfs; venv needs --system-site-packages)"
    if not args.no_launch and report["python-guestfs"] == "ok":
        from ..guest.appliance import Drive, open_handle
        with tempfile.TemporaryDirectory() as tmp:
            disk = Path(tmp) / "empty.raw"
            with disk.open("wb") as f:
                f.truncate(16 << 20)
            start = time.monotonic()
            g = open_handle([Drive(disk, "raw", readonly=True)])
            took = time.monotonic() - start
            g.shutdown()
            g.close()
        report["appliance_launch_seconds"] = round(took, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        width = max(len(k) for k in report)
        for k, v in report.items():
            print(f"{k:<{width}}  {v}")
    return 0
