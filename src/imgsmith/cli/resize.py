"""`imgsmith resize DISK SIZE`: grow the disk, its last partition and filesystem, transactionally."""

from __future__ import annotations

import argparse
import json
import sys

from ..disk.sizes import format_size, parse_size
from ..guest.resize import resize_disk
from .commands import SUMMARIES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "resize", help=SUMMARIES["resize"],
        description="Grow DISK (qcow2 or raw) to SIZE, then its last partition (MBR or GPT) and the "
                    "filesystem in it (ext2/3/4, xfs, btrfs; LVM PV and NTFS too), in one appliance "
                    "launch. The work happens in an overlay that is committed into DISK only when it "
                    "all succeeded. Shrinking is refused.",
        epilog="SIZE: 20G, 512M, 1.5T, +2G (grow by), or bytes; suffixes are binary (G = GiB).")
    p.add_argument("disk", metavar="DISK", help="disk image to grow in place")
    p.add_argument("size", metavar="SIZE", help="new size, or +SIZE to grow by")
    p.add_argument("--format", metavar="FORMAT", help="format of DISK: qcow2 or raw (default: probed)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = parse_size(args.size)
    if not args.json:
        print(f"imgsmith: growing {args.disk} to {spec} (one appliance launch)...", file=sys.stderr)
    result = resize_disk(args.disk, spec, args.format)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    g = result.growth
    print(f"{result.path}: {format_size(result.size_before)} -> {format_size(result.size_after)}")
    if g.partition is not None:
        print(f"partition {g.partition} ({g.table}): {format_size(g.partition_size_before)} -> "
              f"{format_size(g.partition_size_after)}")
    if g.filesystem_size_after is not None:
        before = format_size(g.filesystem_size_before or 0)
        print(f"{g.filesystem} filesystem: {before} -> {format_size(g.filesystem_size_after)}")
    else:
        print(f"{g.filesystem}: grown")
    for note in g.notes:
        print(f"note: {note}")
    return 0
