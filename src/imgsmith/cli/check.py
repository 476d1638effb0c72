"""`imgsmith check IMAGE --for CLOUD[,CLOUD...]`: each cloud's import rules, checked offline, read-only."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..clouds import CLOUDS
from ..clouds.check import CheckReport, check_image, parse_clouds
from ..guest.backend import BACKENDS
from ..guest.session import SessionOptions
from .commands import SUMMARIES
from .render import Progress, print_json

EPILOG = f"""\
Clouds: {", ".join(CLOUDS)}.

The image is opened through a throw-away overlay: its bytes never change, whatever the
backend. Exit status: 0 when no rule gives an error (warnings are shown but pass), 1 when
any does, 2 for bad input (an unknown cloud, a missing image). docs/clouds.md lists every
rule, what it checks and the cloud's page it comes from.

examples:
  imgsmith check debian12.qcow2 --for openstack,aliyun,tencent
  sudo imgsmith check disk.qcow2 --for aws --backend chroot --trust-image
  imgsmith check out/disk.vhd --format vpc --for azure --json
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check", help=SUMMARIES["check"],
        description="Check IMAGE against the rules of each cloud it will be imported into: formats and sizes, "
                    "partitions and boot mode, drivers in the initramfs, cloud-init and its datasource, fstab "
                    "and GRUB by UUID, network configuration, guest tools. Nothing in the image changes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", type=Path, metavar="IMAGE", help="the disk image to check")
    p.add_argument("--for", dest="clouds", action="append", required=True, metavar="CLOUD[,CLOUD...]",
                   help="the target(s); repeatable")
    p.add_argument("--format", default=None, metavar="FORMAT",
                   help="the image's format (default: probed by qemu-img; give it for untrusted images)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="appliance (any image), chroot (root only, much faster), or auto (chroot only for a "
                        "trusted image, as for customize)")
    p.add_argument("--trust-image", action="store_true", help="let --backend auto use the chroot backend")
    p.add_argument("--root", default="single", metavar="ROOT", help="which OS when the disk holds several")
    p.add_argument("--json", action="store_true", help="print the findings as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.add_argument("-v", "--verbose", action="store_true", help="say more")
    p.set_defaults(func=run)


def _table(report: CheckReport) -> list[str]:
    """One block per finding: ``SEVERITY rule (ErrorName)``, then what, where and how to fix."""
    lines = []
    for f in report.findings:
        name = f" ({f.error_name})" if f.error_name else ""
        lines.append(f"{f.severity.upper():7} {f.rule}{name}: {f.found}")
        if f.where:
            lines.append(f"        where: {f.where}")
        lines.append(f"        fix:   {f.fix}")
    return lines


def run(args: argparse.Namespace) -> int:
    clouds = parse_clouds(args.clouds)
    progress = Progress(quiet=args.quiet or args.json)
    session = SessionOptions(network=False, root=args.root, backend=args.backend, trusted=args.trust_image)
    report = check_image(args.image, clouds, fmt=args.format, session=session, message=progress.message)
    if args.json:
        print_json(report.to_json())
    else:
        for line in _table(report):
            print(line)
        errors, total = len(report.errors), len(report.findings)
        what = report.os.describe() if report.os else "no operating system"
        print(f"{args.image} ({report.format}, {what}) for {', '.join(clouds)}: "
              f"{errors} error(s), {total - errors} warning(s); backend {report.backend}, {report.seconds:.1f} s")
    return 1 if report.errors else 0
