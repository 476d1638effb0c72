"""`imgsmith build FILE.yaml`: the main job — a definition in, verified images and a manifest out."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .render import Progress, print_json

EPILOG = """\
The build reuses every cached layer whose inputs are unchanged (a layer's key hashes
its parent, its steps and the content of every host file they read), launches the
appliance once per changed layer, converts all outputs in parallel, writes
manifest.json and SHA256SUMS next to them, and boot-tests the result if the
definition's test: section asks for it.

examples:
  imgsmith build examples/debian12.yaml
  imgsmith build examples/centos7.yaml --set source.url=http://mirror.local/CentOS-7-x86_64-GenericCloud-2009.qcow2
  imgsmith build image.yaml --dry-run        # validate and show the plan
  imgsmith build image.yaml -o out/ --json   # machine-readable result
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("build", help="build images from a definition file (layers cached, outputs in parallel)",
                       description="Build the images a definition file describes.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("definition", type=Path, metavar="FILE.yaml")
    p.add_argument("-o", "--output-dir", type=Path, default=None, metavar="DIR",
                   help="where outputs go (default: ./dist/NAME/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a definition value, e.g. source.url=… (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    p.add_argument("-n", "--dry-run", action="store_true", help="validate and print the plan; build nothing")
    p.add_argument("--no-test", dest="boot_test", action="store_false", default=None,
                   help="skip the boot test even if the definition asks for it")
    p.add_argument("--test", dest="boot_test", action="store_true", help="run the boot test even if not asked")
    p.add_argument("-m", "--memsize", type=int, default=None, metavar="MB", help="appliance memory in MiB")
    p.add_argument("--no-network", dest="network", action="store_false", default=True,
                   help="disable the appliance network")
    p.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail")
    p.set_defaults(func=run)


class _BarOrLines:
    """Conversion/download progress: one line per 25 % when not a TTY, a rewritten line on a TTY."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.last: dict[str, int] = {}
        self.tty = sys.stderr.isatty()

    def __call__(self, label: str, pct: float) -> None:
        if self.quiet:
            return
        step = int(pct // 25)
        if self.tty:
            print(f"\r  {label}: {pct:5.1f}%", end="" if pct < 100 else "\n", file=sys.stderr, flush=True)
        elif self.last.get(label, -1) < step:
            self.last[label] = step
            print(f"  {label}: {pct:.0f}%", file=sys.stderr, flush=True)


def _plan_lines(plan: Any) -> list[str]:
    lines = [f"plan for {plan.definition.definition.name} (from {plan.base_origin}):"]
    for layer in plan.layers:
        what = "cached" if layer.cached else "will run"
        extra = f" + sysprep ({len(layer.sysprep)} ops)" if layer.sysprep else ""
        grow = f" + grow to {layer.resize}" if layer.resize else ""
        lines.append(f"  layer {layer.index} {layer.name}: {len(layer.ops)} step(s){grow}{extra} — {what} "
                     f"[{layer.key[:12]}]")
    for name, why in plan.dropped_sysprep:
        lines.append(f"  sysprep: {name} dropped because {why}")
    for o in plan.definition.definition.outputs:
        lines.append(f"  output: {o.preset or o.format}")
    lines.append(f"  into: {plan.output_dir}")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..definition import load_definition  # heavy imports (pydantic, paramiko) only when building
    from ..pipeline import BuildOptions, Reporter, build
    loaded = load_definition(args.definition, overrides=args.overrides)
    progress = Progress(quiet=args.quiet or args.json)
    reporter = Reporter(stage=progress.message, message=progress.message if args.verbose else lambda _m: None,
                        warn=progress.warn, progress=_BarOrLines(args.quiet or args.json))
    options = BuildOptions(output_dir=args.output_dir, no_cache=args.no_cache, dry_run=args.dry_run,
                           memsize=args.memsize, network=args.network, boot_test=args.boot_test)
    start = time.monotonic()
    result = build(loaded, options, reporter)
    if args.json:
        data: dict[str, Any] = {
            "name": loaded.definition.name, "nothing_to_do": result.nothing_to_do, "dry_run": args.dry_run,
            "output_dir": str(result.plan.output_dir),
            "layers": [{"name": x.name, "key": x.key, "cached": x.cached} for x in result.plan.layers],
            "dropped_sysprep": [n for n, _ in result.plan.dropped_sysprep],
            "outputs": [r.to_json() for r in result.outputs], "manifest": str(result.manifest or ""),
            "launches": result.launches, "seconds": round(time.monotonic() - start, 2), "boot_test": result.boot,
        }
        print_json(data)
        return 0
    if args.dry_run:
        print("\n".join(_plan_lines(result.plan)))
        return 0
    if result.nothing_to_do:
        print(f"{loaded.definition.name}: up to date ({result.plan.output_dir})")
        return 0
    for r in result.outputs:
        print(f"{r.path}  {r.format}  {r.file_size:,} bytes  sha256:{r.sha256[:16]}…")
    if result.boot is not None:
        print(f"boot test: passed ({len(result.boot.get('checks', []))} check(s))")
    print(f"manifest: {result.manifest}  ({time.monotonic() - start:.1f} s, {result.launches} appliance launch(es))")
    return 0
