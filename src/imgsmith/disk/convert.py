"""Convert one source image into one or many destinations, safely and in parallel.

The steps are always the same, and all the checking comes first:

1. :func:`open_source` reads the source with ``qemu-img info`` (format explicit, or
   probed once and then explicit) and, where the format supports it, ``qemu-img check``.
2. :func:`plan` resolves each target's format, options and preset rules (growing the
   virtual size when a rule allows it, refusing otherwise), checks the destination
   directory, refuses to overwrite without ``force``, and checks free space per
   filesystem against an estimate - so bad input fails before a byte is written.
3. :func:`run_plans` runs each plan in its own thread, each with its own qemu-img
   process, inside a hidden work directory next to the destination; the finished
   file is checksummed, flushed and renamed into place, then ``DST.sha256`` beside it.

:func:`convert_to` and :func:`convert_many` do all three for library callers such as
the build pipeline.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ImageError, ImgsmithError, UsageError
from ..host.files import fsync_dir, fsync_file, partial_dir, sha256_file, write_sha256_file
from . import qemuimg
from .formats import Format, resolve_options, writable_format
from .presets import Layout, Preset, apply_rules, get_preset
from .sizes import MiB, format_size

if TYPE_CHECKING:
    from . import delta

__all__ = [
    "OUTPUT_BYTES_VERSION",
    "ConvertResult",
    "Plan",
    "SourceImage",
    "Target",
    "convert_many",
    "convert_to",
    "default_name",
    "execute",
    "make_target",
    "open_source",
    "plan",
    "run_plans",
]

log = logging.getLogger("imgsmith.disk")

OUTPUT_BYTES_VERSION = 1
"""Bump when imgsmith writes other bytes for the same conversion (a packer, an argv change).

Part of a shared output's remote key (sharing.py) with qemu-img's version: an output
pulled from another host must be what this host would make, byte for byte or better.
"""

PlanProgress = Callable[["Plan", float], None]
FreeSpace = Callable[[Path], int]


@dataclass(frozen=True)
class SourceImage:
    """A source image whose format is known and whose metadata qemu-img could read."""

    path: Path
    format: str
    info: qemuimg.ImageInfo


@dataclass(frozen=True)
class Target:
    """A destination and what to write there: a format with resolved options, maybe from a preset."""

    path: Path
    format: Format
    options: Mapping[str, str]
    preset: Preset | None = None

    @property
    def layout(self) -> Layout:
        return self.preset.layout if self.preset else Layout.PLAIN

    @property
    def label(self) -> str:
        return self.preset.name if self.preset else self.format.name


@dataclass(frozen=True)
class Plan:
    """A checked target: the virtual size to write (after preset rules) and the notes about fixes."""

    source: SourceImage
    target: Target
    virtual_size: int
    notes: tuple[str, ...] = ()
    space_needed: int = 0
    update: delta.Update | None = None  # patch the previous build's output instead of converting


@dataclass(frozen=True)
class ConvertResult:
    """One written destination, as the CLI prints it and the build manifest records it."""

    path: Path
    format: str
    preset: str | None
    layout: str
    virtual_size: int
    file_size: int
    sha256: str
    seconds: float
    notes: tuple[str, ...] = field(default=())
    options: Mapping[str, str] = field(default_factory=dict)
    patched_bytes: int | None = None  # set when made by patching the previous output
    pulled_from: str | None = None  # set when downloaded from a remote cache instead of converted

    @property
    def made(self) -> str:
        """How the file came to be: ``converted``, ``patched`` (the previous output) or ``pulled``."""
        if self.pulled_from is not None:
            return "pulled"
        return "converted" if self.patched_bytes is None else "patched"

    def to_json(self) -> dict[str, Any]:
        return {"path": os.fspath(self.path), "format": self.format, "preset": self.preset,
                "layout": self.layout, "options": dict(self.options), "virtual_size": self.virtual_size,
                "file_size": self.file_size, "sha256": self.sha256, "seconds": round(self.seconds, 2),
                "patched_bytes": self.patched_bytes, "notes": list(self.notes), "made": self.made,
                "pulled_from": self.pulled_from}


def open_source(path: str | os.PathLike[str], fmt: str | None = None) -> SourceImage:
    """Read and sanity-check the source (:func:`qemuimg.open_image`): ImageError (exit 2) if it is
    missing, unreadable or corrupt."""
    p = Path(path)
    info = qemuimg.open_image(p, fmt)
    return SourceImage(p, info.format, info)


def make_target(dest: str | os.PathLike[str], *, fmt: str | None = None,
                options: Mapping[str, str] | None = None, preset: str | Preset | None = None) -> Target:
    """Validate a destination request: exactly one of *fmt* or *preset*; *options* checked against the table.

    With a preset, *options* override the preset's own (and its rules then judge the result).
    """
    if (fmt is None) == (preset is None):
        raise UsageError("give either a format or a preset")
    chosen = get_preset(preset) if isinstance(preset, str) else preset
    fmt_obj = writable_format(chosen.format if chosen else str(fmt))
    merged = {**(chosen.options if chosen else {}), **(options or {})}
    return Target(Path(dest), fmt_obj, resolve_options(fmt_obj, merged), chosen)


def default_name(source: Path, target_label: str, extension: str, with_label: bool) -> str:
    """``disk.qcow2`` -> ``disk-azure.vhd`` (preset) or ``disk.vhd`` (format) in an output directory."""
    stem = source.name
    for suffix in (".qcow2", ".raw", ".img", ".vhd", ".vhdx", ".vmdk", ".vdi", ".qed"):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}-{target_label}{extension}" if with_label else f"{stem}{extension}"


def _estimate(source: SourceImage, target: Target, virtual_size: int) -> int:
    """Bytes the destination may take while being written.

    Fixed and raw outputs take the virtual size; sparse ones at most what the source
    chain has allocated. A packed layout holds the disk and its archive at once.
    """
    metadata = MiB + virtual_size // 512
    full = virtual_size + metadata
    sparse = min(source.info.allocated_size, virtual_size) + metadata
    disk = full if target.format.is_fixed(target.options) else sparse
    if target.layout is Layout.GCP_TAR:
        return disk + sparse
    if target.layout is Layout.OVA:
        return 2 * disk
    return disk


def _check_destination(source: SourceImage, target: Target, force: bool) -> None:
    dest = target.path
    parent = dest.parent
    if not parent.is_dir():
        raise UsageError(f"destination directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"destination directory {parent} is not writable")
    if dest.is_dir():
        raise UsageError(f"destination {dest} is a directory")
    if dest.exists():
        if dest.samefile(source.path):
            raise UsageError(f"destination {dest} is the source image")
        if not force:
            raise UsageError(f"destination {dest} already exists (use --force to overwrite)")


def _default_free_space(path: Path) -> int:
    return shutil.disk_usage(path).free


def _check_space(plans: Sequence[Plan], free_space: FreeSpace) -> None:
    """Sum the estimates per filesystem and compare with what is free there."""
    by_dev: dict[int, list[Plan]] = {}
    for p in plans:
        by_dev.setdefault(p.target.path.parent.stat().st_dev, []).append(p)
    for group in by_dev.values():
        need = sum(p.space_needed for p in group)
        where = group[0].target.path.parent
        free = free_space(where)
        if need > free:
            names = ", ".join(p.target.path.name for p in group)
            raise UsageError(f"not enough free space in {where} for {names}: need about {format_size(need)} "
                             f"({need} bytes), {format_size(free)} ({free} bytes) free")


def plan(source: SourceImage, targets: Sequence[Target], *, force: bool = False,
         free_space: FreeSpace = _default_free_space) -> list[Plan]:
    """Check every target before any work; the returned plans carry the notes to show the user."""
    seen: set[Path] = set()
    plans: list[Plan] = []
    for t in targets:
        resolved = t.path.parent.resolve() / t.path.name
        if resolved in seen:
            raise UsageError(f"destination {t.path} is given twice")
        seen.add(resolved)
        _check_destination(source, t, force)
        size, notes = source.info.virtual_size, list[str]()
        if t.preset is not None:
            size, notes = apply_rules(t.preset, size, t.options)
        for note in notes:
            log.info("%s", note)
        plans.append(Plan(source, t, size, tuple(notes), _estimate(source, t, size)))
    _check_space(plans, free_space)
    return plans


def _scaled(progress: qemuimg.ProgressFn | None, start: float, end: float) -> qemuimg.ProgressFn | None:
    if progress is None:
        return None
    return lambda pct: progress(start + (end - start) * pct / 100.0)


def _write_disk(p: Plan, work: Path, progress: qemuimg.ProgressFn | None,
                cancel: threading.Event | None) -> tuple[Path, Path]:
    """Convert into *work*; return (file to publish, disk file inside it for read-back)."""
    t, src = p.target, p.source
    src_path, src_fmt = src.path, src.format
    if p.virtual_size != src.info.virtual_size:
        # Grow without touching the source: a larger qcow2 overlay reads zeros past the base's end.
        src_path, src_fmt = work / "grown.qcow2", "qcow2"
        qemuimg.create_overlay(src.path, src.format, src_path, p.virtual_size)
    span = 100.0 if t.layout is Layout.PLAIN else 80.0
    # The packers are imported when a layout needs them: tar, XML and their helpers would
    # otherwise load on every start of every command (the definition resolves its targets here).
    from . import gcp, ova
    if t.layout is Layout.GCP_TAR:
        disk = work / gcp.MEMBER
    elif t.layout is Layout.OVA:
        disk = work / f"{ova.safe_name(t.path.name.removesuffix('.ova'))}-disk1.vmdk"
    else:
        disk = work / t.path.name
    qemuimg.convert(src_path, src_fmt, disk, t.format.name, t.options,
                    progress=_scaled(progress, 0.0, span), cancel=cancel)
    if cancel is not None and cancel.is_set():
        raise qemuimg.Cancelled("conversion cancelled")
    if t.layout is Layout.PLAIN:
        return disk, disk
    out = work / t.path.name
    if t.layout is Layout.GCP_TAR:
        gcp.pack(disk, out)
    else:
        vm = ova.VirtualMachine(t.path.name.removesuffix(".ova"))
        ova.pack(disk, out, vm, p.virtual_size, progress=_scaled(progress, span, 100.0))
    return out, disk


def execute(p: Plan, *, progress: qemuimg.ProgressFn | None = None,
            cancel: threading.Event | None = None) -> ConvertResult:
    """Carry out one plan; the destination appears only when complete, flushed and checksummed."""
    start = time.monotonic()
    t = p.target
    with partial_dir(t.path) as work:
        patched = _patch(p, work)
        out, disk = (patched, patched) if patched else _write_disk(p, work, progress, cancel)
        # Read the result back (format explicit: a fixed VHD would probe as raw). Only vpc with
        # force_size=off may legitimately come out larger (CHS geometry rounding).
        written = qemuimg.info(disk, t.format.name)
        if written.virtual_size < p.virtual_size:
            raise ImageError(f"{t.path}: qemu-img wrote a virtual size of {written.virtual_size} bytes, "
                             f"expected {p.virtual_size}")
        digest = sha256_file(out)
        fsync_file(out)
        checksum = work / "sha256"
        write_sha256_file(checksum, digest, t.path.name)
        if t.path.exists() and not t.path.is_file():
            raise UsageError(f"destination {t.path} is not a regular file")
        out.replace(t.path)
        checksum.replace(t.path.with_name(t.path.name + ".sha256"))
        fsync_dir(t.path.parent)
    if progress is not None:
        progress(100.0)
    took = time.monotonic() - start
    log.info("%s: written in %.1f s", t.path, took)
    return ConvertResult(t.path, t.format.name, t.preset.name if t.preset else None, t.layout.value,
                         written.virtual_size, t.path.stat().st_size, digest, took, p.notes, dict(t.options),
                         p.update.changed_bytes if patched and p.update else None)


def _patch(p: Plan, work: Path) -> Path | None:
    """The previous output patched into *work*, or None (no update, or it failed: convert in full)."""
    if p.update is None or p.virtual_size != p.source.info.virtual_size:
        return None
    from . import delta
    disk = work / p.target.path.name
    try:
        delta.apply(p.update, disk, p.virtual_size)
    except (ImgsmithError, OSError, ValueError) as exc:  # ValueError: a range the old file does not have
        log.warning("%s: could not patch the previous output (%s); converting in full", p.target.path, exc)
        disk.unlink(missing_ok=True)
        return None
    log.info("%s: patched %s of the previous output", p.target.path, format_size(p.update.changed_bytes))
    return disk


def run_plans(plans: Sequence[Plan], *, progress: PlanProgress | None = None,
              max_workers: int | None = None, cancel: threading.Event | None = None) -> list[ConvertResult]:
    """Run the plans in parallel, one thread and one qemu-img each; results in plan order.

    The first failure (or an interrupt in the calling thread) cancels the others:
    their qemu-img is stopped and their work directories removed. Destinations
    already published stay - each is complete and has its checksum.
    """
    stop = cancel or threading.Event()

    def bound(p: Plan) -> qemuimg.ProgressFn | None:
        return None if progress is None else (lambda pct: progress(p, pct))

    if len(plans) == 1:
        return [execute(plans[0], progress=bound(plans[0]), cancel=stop)]
    with ThreadPoolExecutor(max_workers=max_workers or len(plans), thread_name_prefix="convert") as pool:
        futures: list[Future[ConvertResult]] = [
            pool.submit(execute, p, progress=bound(p), cancel=stop) for p in plans]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                stop.set()
                failed.result()
        except BaseException:
            stop.set()
            raise
    return [f.result() for f in futures]


def convert_many(src: str | os.PathLike[str], targets: Sequence[Target], *, source_format: str | None = None,
                 force: bool = False, progress: PlanProgress | None = None, max_workers: int | None = None,
                 cancel: threading.Event | None = None,
                 updates: Mapping[Path, delta.Update] | None = None) -> list[ConvertResult]:
    """Check, then write every target from one source in parallel (see the module docstring).

    *updates* (by target path) lets a target be patched from the previous build's output.
    """
    source = open_source(src, source_format)
    plans = [replace(p, update=(updates or {}).get(p.target.path)) for p in plan(source, targets, force=force)]
    return run_plans(plans, progress=progress, max_workers=max_workers, cancel=cancel)


def convert_to(src: str | os.PathLike[str], dest: str | os.PathLike[str], *, fmt: str | None = None,
               options: Mapping[str, str] | None = None, preset: str | None = None,
               source_format: str | None = None, force: bool = False,
               progress: qemuimg.ProgressFn | None = None) -> ConvertResult:
    """Write one destination: ``convert_to("a.qcow2", "a.vhd", preset="azure")``."""
    target = make_target(dest, fmt=fmt, options=options, preset=preset)
    per_plan = None if progress is None else (lambda _p, pct: progress(pct))
    return convert_many(src, [target], source_format=source_format, force=force, progress=per_plan)[0]
