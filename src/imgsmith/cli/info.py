"""`imgsmith info DISK [--json] [--inspect]`: format, sizes, backing chain, snapshots, guest OS."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..disk import qemuimg
from ..disk.layout import DiskLayout, read_layout
from ..disk.sizes import format_size
from .commands import SUMMARIES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "info", help=SUMMARIES["info"],
        description="Show what qemu-img knows about DISK (format, virtual and allocated size, backing "
                    "chain, snapshots, format details), its partition layout and boot mode (BIOS, UEFI or "
                    "hybrid, with the EFI boot loader's architecture and whether it is a Secure Boot shim; "
                    "read from the disk's bytes, nothing launched); with --inspect also the guest operating system "
                    "found by inspection (one read-only appliance launch; the same rules and facts as customize and "
                    "build).")
    p.add_argument("disk", metavar="DISK", help="disk image")
    p.add_argument("--format", metavar="FORMAT",
                   help="format of DISK (default: probed; give it for images you do not trust)")
    p.add_argument("--inspect", action="store_true", help="also inspect the guest OS (slow: launches the "
                                                          "appliance)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    return f"{format_size(n)} ({n} bytes)"


def _lines(info: qemuimg.ImageInfo) -> list[tuple[str, str]]:
    rows = [("image", info.filename), ("format", info.format), ("virtual size", _size(info.virtual_size)),
            ("allocated", _size(info.actual_size))]
    if info.backing is not None:
        rows.append(("chain allocated", _size(info.allocated_size)))
    if info.cluster_size:
        rows.append(("cluster size", str(info.cluster_size)))
    chain = " <- ".join(f"{i.filename} ({i.format})" for i in reversed(info.chain))
    rows.append(("backing chain", chain if info.backing is not None else "none"))
    if info.snapshots:
        for s in info.snapshots:
            when = datetime.fromtimestamp(s.date_sec, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            rows.append(("snapshot", f"{s.id} {s.name} ({when}, vm state {format_size(s.vm_state_size)})"))
    else:
        rows.append(("snapshots", "none"))
    for key, value in info.format_specific.items():
        if not isinstance(value, (list, dict)):
            rows.append((key.replace("-", " "), str(value).lower() if isinstance(value, bool) else str(value)))
    if info.dirty:
        rows.append(("warning", "dirty flag set: the image was not closed cleanly (run qemu-img check)"))
    return rows


def _layout_lines(layout: DiskLayout) -> list[tuple[str, str]]:
    rows = [("partition table", layout.table)]
    for p in layout.partitions:
        name = f" '{p.name}'" if p.name else ""
        flag = " (active)" if p.bootable else ""
        rows.append((f"  partition {p.number}", f"{format_size(p.size)} at {format_size(p.start)}, "
                                                f"{p.type_name}{name}{flag}"))
    modes = f" (boots with {', '.join(layout.firmwares)})" if layout.firmwares else ""
    rows.append(("boot mode", layout.boot_mode + modes))
    if layout.esp is not None:
        loader = ", ".join(layout.esp_files) or "none found"
        arch = f"{layout.efi_arch}, " if layout.efi_arch else ""
        rows.append(("EFI boot loader", f"{arch}{'Secure Boot shim, ' if layout.shim else ''}EFI/BOOT: {loader}"))
    return rows


def run(args: argparse.Namespace) -> int:
    info = qemuimg.open_image(args.disk, args.format)
    fmt = info.format
    report: dict[str, Any] = info.to_json()
    layout = read_layout(Path(args.disk), fmt)
    report["layout"] = layout.to_json()
    guests = None
    if args.inspect:
        from ..guest.osinfo import inspect_image
        guests = inspect_image(args.disk, fmt)
        report["guests"] = [g.to_json() for g in guests]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = _lines(info) + _layout_lines(layout)
    if guests is not None:
        if not guests:
            rows.append(("guest OS", "none found"))
        for g in guests:
            rows.append(("guest OS", f"{g.product_name} ({g.type} {g.distro} {g.version}, {g.arch})"))
            rows.append(("  root", g.root))
            rows.append(("  hostname", g.hostname))
            rows.append(("  packages", f"{g.package_format} / {g.package_management}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0
