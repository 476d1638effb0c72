"""`imgsmith bootstrap`: a bootable cloud image built from distribution packages (cached)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import proc
from ..errors import UsageError
from ..host.files import fsync_dir, fsync_file
from .commands import SUMMARIES

if TYPE_CHECKING:  # pydantic and the source modules are imported when the command runs
    from ..source.bootstrap import BootstrapSpec

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bootstrap", help=SUMMARIES["bootstrap"],
        description="Build a bootable qcow2 cloud image with mmdebstrap: kernel, GRUB with a serial "
                    "console, cloud-init (NoCloud and the usual datasources) and openssh. The result is "
                    "cached by its inputs and the mirror's snapshot date; a second run is instant. "
                    "Needs root (loop devices, mounts, chroot).")
    p.add_argument("--distro", default="debian", help="debian (default) or ubuntu")
    p.add_argument("--release", default="bookworm", help="release codename (default: bookworm)")
    p.add_argument("--package", dest="packages", action="append", default=[], metavar="P",
                   help="extra package to install; repeatable")
    p.add_argument("--mirror", help="archive URL (default: the host's apt source for the distro)")
    p.add_argument("--security-mirror", help="security archive URL (default: the host's, else the official one)")
    p.add_argument("--size", default="3G", help="virtual disk size (default 3G)")
    p.add_argument("--partitioning", choices=("mbr", "gpt"),
                   help="a BIOS layout: mbr, one root partition at 1 MiB; gpt: BIOS boot partition + root. "
                        "Without --firmware it means --firmware bios (uefi and hybrid are always GPT)")
    p.add_argument("--arch", default="amd64", help="amd64 (default) or arm64 (built through qemu-user)")
    p.add_argument("--firmware", help="bios, uefi or hybrid (GPT with a BIOS boot partition and an ESP, boots "
                                      "either way); default: hybrid on amd64, like Debian's cloud images "
                                      "(bios with --partitioning), uefi on arm64")
    p.add_argument("--secure-boot", action="store_true",
                   help="Debian's signed shim, GRUB and kernel (firmware uefi or hybrid)")
    p.add_argument("-o", "--output", type=Path, metavar="OUT",
                   help="copy the image here (default: only print the cache path)")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    p.set_defaults(func=run)


_OPTION = {"packages": "package", "security_mirror": "security-mirror", "secure_boot": "secure-boot"}


def _spec(args: argparse.Namespace) -> BootstrapSpec:
    """Validate every option before any work, reporting all problems at once."""
    from pydantic import ValidationError

    from ..source.bootstrap import BootstrapSpec

    given = {"partitioning": args.partitioning, "firmware": args.firmware}
    try:
        return BootstrapSpec(distro=args.distro, release=args.release, packages=tuple(args.packages),
                             mirror=args.mirror, security_mirror=args.security_mirror, size=args.size,
                             arch=args.arch, secure_boot=args.secure_boot,
                             **{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        problems = [(f"--{_OPTION.get(str(e['loc'][0]), str(e['loc'][0]))}: " if e["loc"] else "")
                    + e["msg"].removeprefix("Value error, ") for e in exc.errors()]
        raise UsageError("; ".join(problems)) from exc


def _copy(src: Path, dest: Path) -> None:
    """A copy (reflinked where the filesystem can), never a link: editing OUT must not touch the cache."""
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        proc.run(["cp", "--reflink=auto", "--sparse=always", src, tmp])
        fsync_file(tmp)
        tmp.replace(dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    from ..source.bootstrap import bootstrap_image

    spec = _spec(args)
    start = time.monotonic()

    def say(message: str) -> None:
        if not args.json:
            print(f"[{time.monotonic() - start:6.1f}] {message}", file=sys.stderr, flush=True)

    # SIGTERM unwinds like Ctrl-C (cli/main.py), so mounts and loop devices are released.
    image = bootstrap_image(spec, progress=say)
    out = None
    if args.output is not None:
        out = args.output / image.name if args.output.is_dir() else args.output
        _copy(image, out)
    if args.json:
        print(json.dumps({"image": str(out or image), "cached_image": str(image),
                          "spec": spec.model_dump(mode="json"),
                          "seconds": round(time.monotonic() - start, 1)}, indent=2))
    else:
        print(out or image)
    return 0
