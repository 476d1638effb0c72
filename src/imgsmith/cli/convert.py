"""`imgsmith convert`: one source to one destination, or to several presets in parallel.

    imgsmith convert SRC DST (--format F [-o k=v ...] | --preset P) [--force] [--json]
    imgsmith convert SRC --preset azure --preset gcp -o OUTDIR/

``-o`` takes either ``KEY=VALUE`` (a format option, as with qemu-img) or a directory
(anything without ``=``; write it with a trailing ``/``): the two never collide,
and ``--option``/``--output-dir`` spell each meaning out.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from ..disk import convert as conv
from ..disk.formats import FORMATS, parse_option_pairs, writable_format
from ..disk.presets import PRESETS, get_preset
from ..disk.qemuimg import Cancelled
from ..disk.sizes import format_size
from ..errors import UsageError
from .commands import SUMMARIES

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

_OPTION_RE = re.compile(r"^[A-Za-z_][\w.-]*=")


def _epilog() -> str:
    fmts = ", ".join(f.name for f in FORMATS.values() if f.writable)
    presets = "\n".join(f"  {p.name:<11} {p.description}" for p in PRESETS.values())
    return (f"formats: {fmts} (qed is read only)\npresets:\n{presets}\n"
            "Options and rules with their sources: docs/formats.md")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "convert", help=SUMMARIES["convert"],
        description="Convert SRC to DST with qemu-img, or to several presets at once (in parallel). "
                    "Each destination is written under a hidden temporary name, checksummed "
                    "(DST.sha256) and renamed into place only when complete.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="source disk image")
    p.add_argument("dst", metavar="DST", nargs="?", help="destination file, or a directory ending in /")
    p.add_argument("--format", "-O", dest="format", metavar="FORMAT", help="output format")
    p.add_argument("--preset", action="append", default=[], metavar="PRESET",
                   help="cloud/hypervisor preset (repeat for several outputs)")
    p.add_argument("-o", dest="o_values", action="append", default=[], metavar="KEY=VALUE|DIR/",
                   help="a format option (KEY=VALUE, comma lists allowed) or the output directory")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a format option")
    p.add_argument("--output-dir", metavar="DIR", help="write the outputs into DIR with derived names")
    p.add_argument("-f", "--source-format", metavar="FORMAT",
                   help="format of SRC (default: probed once, then passed explicitly)")
    p.add_argument("--force", action="store_true", help="overwrite existing destinations")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="parallel conversions (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    p.set_defaults(func=run)


def _split_o(args: argparse.Namespace) -> tuple[list[str], Path | None]:
    options = [v for v in args.o_values if _OPTION_RE.match(v)] + list(args.option)
    dirs = [v for v in args.o_values if not _OPTION_RE.match(v)]
    if args.output_dir:
        dirs.append(args.output_dir)
    if len(dirs) > 1:
        raise UsageError(f"more than one output directory given: {', '.join(dirs)}")
    return options, Path(dirs[0]) if dirs else None


def _outdir(args: argparse.Namespace, outdir: Path | None) -> Path | None:
    """DST names a directory when it ends in / or exists as one; it cannot be given twice."""
    if args.dst is not None and (args.dst.endswith("/") or Path(args.dst).is_dir()):
        if outdir is not None:
            raise UsageError("give the output directory once (DST or -o DIR/)")
        return Path(args.dst)
    if args.dst is not None and outdir is not None:
        raise UsageError("give either DST or an output directory (-o DIR/), not both")
    return outdir


def _destination(args: argparse.Namespace, outdir: Path | None, name: str) -> Path:
    if outdir is not None:
        return outdir / name
    if args.dst is not None:
        return Path(args.dst)
    raise UsageError("give a destination: DST, or an output directory with -o DIR/")


def _targets(args: argparse.Namespace) -> list[conv.Target]:
    """Turn the command line into validated targets (formats, options, presets, destination names)."""
    options, outdir = _split_o(args)
    if args.format and args.preset:
        raise UsageError("give --format or --preset, not both")
    if not args.format and not args.preset:
        raise UsageError("give --format FORMAT or --preset PRESET")
    outdir = _outdir(args, outdir)
    opts = parse_option_pairs(options)
    src = Path(args.src)
    if args.format:
        fmt = writable_format(args.format)
        dest = _destination(args, outdir, conv.default_name(src, fmt.name, fmt.extension, False))
        return [conv.make_target(dest, fmt=fmt.name, options=opts)]
    if len(args.preset) > 1 and outdir is None:
        raise UsageError("several presets need an output directory: -o DIR/")
    targets = []
    for preset in (get_preset(name) for name in args.preset):
        dest = _destination(args, outdir, conv.default_name(src, preset.name, preset.extension, True))
        targets.append(conv.make_target(dest, preset=preset, options=opts))
    return targets


class _Reporter:
    """Progress per destination: a rich bar on a terminal, a plain line every 10% otherwise."""

    def __init__(self, plans: list[conv.Plan], tty: bool) -> None:
        self._lock = threading.Lock()
        self._last: dict[Path, int] = {}
        self._progress: Progress | None = None
        self._tasks: dict[Path, TaskID] = {}
        if tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True))
            for p in plans:
                self._tasks[p.target.path] = self._progress.add_task(p.target.path.name, total=100)

    def __call__(self, plan: conv.Plan, pct: float) -> None:
        if self._progress is not None:
            self._progress.update(self._tasks[plan.target.path], completed=pct)
            return
        step = int(pct // 10) * 10
        with self._lock:
            if step > self._last.get(plan.target.path, -1):
                self._last[plan.target.path] = step
                print(f"imgsmith: {plan.target.path.name}: {step}%", file=sys.stderr, flush=True)

    @contextmanager
    def shown(self) -> Iterator[None]:
        if self._progress is None:
            yield
            return
        with self._progress:
            yield


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Cancelled(f"stopped by {signal.Signals(signum).name}; unfinished destinations were removed")


@contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every finally (kill qemu-img, remove partials) runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Callable[[int, FrameType | None], object] | int | None] = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _render(results: list[conv.ConvertResult]) -> None:
    for r in results:
        kind = f"{r.format} ({r.preset})" if r.preset else r.format
        print(f"{r.path}  {kind}  virtual {format_size(r.virtual_size)}  file {format_size(r.file_size)}  "
              f"sha256 {r.sha256}  {r.seconds:.1f} s")


def run(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {args.jobs}")
    targets = _targets(args)
    with _terminate_as_exception():
        source = conv.open_source(args.src, args.source_format)
        plans = conv.plan(source, targets, force=args.force)
        if not args.json:
            for p in plans:
                for note in p.notes:
                    print(f"imgsmith: note: {note}", file=sys.stderr)
        reporter = None if args.json else _Reporter(plans, sys.stderr.isatty())
        if reporter is None:
            results = conv.run_plans(plans, max_workers=args.jobs)
        else:
            with reporter.shown():
                results = conv.run_plans(plans, progress=reporter, max_workers=args.jobs)
    if args.json:
        print(json.dumps({"source": {"path": str(source.path), "format": source.format,
                                     "virtual_size": source.info.virtual_size},
                          "outputs": [r.to_json() for r in results]}, indent=2))
    else:
        _render(results)
    return 0
