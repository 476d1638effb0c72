"""`imgsmith build FILE.yaml`: the main job — a definition in, verified images and a manifest out."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..guest.backend import BACKENDS
from .commands import SUMMARIES
from .render import Progress, print_json, use_live

if TYPE_CHECKING:  # the pipeline pulls in pydantic and the guest modules: imported when building
    from ..definition import LoadedDefinition
    from ..disk.convert import ConvertResult
    from ..events import Event
    from ..pipeline import BuildOptions, BuildPlan, BuildResult

EPILOG = """\
The build reuses every cached layer whose inputs are unchanged (a layer's key hashes
its parent, its steps and the content of every host file they read), launches the
appliance once per changed layer, converts all outputs in parallel, judges each cloud
preset's output for its cloud (as `imgsmith check` does: an error removes that output
and fails the build, warnings go to the manifest), writes manifest.json and SHA256SUMS
next to them, and boot-tests the result if the definition's test: section asks for it.

examples:
  imgsmith build examples/debian12.yaml
  imgsmith build examples/centos7.yaml --set source.url=http://mirror.local/CentOS-7-x86_64-GenericCloud-2009.qcow2
  imgsmith build image.yaml --dry-run        # validate and show the plan
  imgsmith build image.yaml -o out/ --json   # machine-readable result
  imgsmith build a.yaml b.yaml -o out/ --jobs 2   # every definition and matrix variant, into out/NAME/
"""


def add_remote_options(p: argparse.ArgumentParser) -> None:
    """The host's remote layer cache, overriding IMGSMITH_CACHE_REMOTE and the config file (docs/build.md)."""
    g = p.add_argument_group("remote layer cache (per host: also IMGSMITH_CACHE_REMOTE and the config file)")
    g.add_argument("--cache-remote", metavar="URL", default=None,
                   help="s3://BUCKET/PREFIX?endpoint=URL or oci://REGISTRY/REPOSITORY ('none': no remote)")
    g.add_argument("--cache-push", dest="cache_push", action="store_true", default=None,
                   help="push the layers built here (signed with the configured signing-key)")
    g.add_argument("--no-cache-push", dest="cache_push", action="store_false",
                   help="push nothing built or downloaded here (pulls still record their use on the remote)")
    g.add_argument("--cache-pull-only", action="store_true",
                   help="never write to the remote at all: no layer, no base image, no use record")
    g.add_argument("--cache-trust-unsigned", action="store_true",
                   help="use remote entries that no trusted key signed (not for shared caches)")


def remote_settings(args: argparse.Namespace) -> Any:
    """The RemoteSettings for this run, or None (cache/config.py)."""
    from ..cache.config import load_settings
    return load_settings(remote=args.cache_remote, push=args.cache_push, pull_only=args.cache_pull_only,
                         trust_unsigned=args.cache_trust_unsigned)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("build", help=SUMMARIES["build"],
                       description="Build the images a definition file describes.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("definitions", type=Path, nargs="+", metavar="FILE.yaml",
                   help="one or more definitions; each matrix: variant is a build of its own")
    p.add_argument("-o", "--output-dir", type=Path, default=None, metavar="DIR",
                   help="where outputs go (default: ./dist/NAME/; with several builds: DIR/NAME/)")
    p.add_argument("-j", "--jobs", dest="build_jobs", type=int, default=1, metavar="N",
                   help="with several builds: run N at a time (shared layers are built once)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a definition value, e.g. source.url=… or layers.1.steps.0.hostname=web-2 "
                        "(list items by index; value parsed as YAML; repeatable)")
    p.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    p.add_argument("-n", "--dry-run", action="store_true", help="validate and print the plan; build nothing")
    p.add_argument("--no-test", dest="boot_test", action="store_false", default=None,
                   help="skip the boot test even if the definition asks for it")
    p.add_argument("--test", dest="boot_test", action="store_true", help="run the boot test even if not asked")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="override the definition's backend: appliance, chroot (root only, fast without KVM) "
                        "or auto (chroot for verified sources when root)")
    p.add_argument("--trust-image", action="store_true",
                   help="treat a source without a checksum as trusted (lets auto use the chroot backend)")
    p.add_argument("-m", "--memsize", type=int, default=None, metavar="MB", help="appliance memory in MiB")
    p.add_argument("--no-check", dest="check", action="store_false", default=True,
                   help="do not judge cloud preset outputs for their cloud (the manifest says they were not)")
    p.add_argument("--no-network", dest="network", action="store_false", default=True,
                   help="disable the appliance network")
    add_remote_options(p)
    p.add_argument("--publish", action="store_true",
                   help="then publish to the definition's publish: destinations (as imgsmith publish DIR)")
    from .publish import add_options
    add_options(p, prefix="publish")
    p.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail")
    p.set_defaults(func=run)


class _BarOrLines:
    """Conversion/download progress in the plain view: one line per 25 %, or a rewritten line on a TTY.

    The TTY branch is reached only with --debug: otherwise a terminal gets the live view.
    """

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


_BASE_SOURCES = {"local": "local", "remote": "remote: will be pulled from the remote cache",
                 "fetch": "fetch: not in the remote cache (downloaded or bootstrapped here)"}


def _plan_lines(plan: BuildPlan) -> list[str]:
    lines = [f"plan for {plan.definition.definition.name} (from {plan.base_origin}):"]
    if plan.base_source is not None:
        lines.append(f"  base image: {_BASE_SOURCES[plan.base_source]}")
    for layer in plan.layers:
        what = "cached" if layer.cached else f"will run: {layer.miss}"
        if layer.source == "remote":
            what = "remote: will be pulled from the remote cache"
        if layer.share is not None and layer.share != "push":
            what += f" ({layer.share})"
        extra = f" + sysprep ({len(layer.sysprep)} ops)" if layer.sysprep else ""
        grow = f" + grow to {layer.resize}" if layer.resize else ""
        lines.append(f"  layer {layer.index} {layer.name}: {len(layer.ops)} step(s){grow}{extra} — {what} "
                     f"[{layer.key[:12]}]")
    for name, why in plan.dropped_sysprep:
        lines.append(f"  sysprep: {name} dropped because {why}")
    planned = {o.name: o for o in plan.outputs}
    for spec in plan.definition.outputs:
        o = planned.get(spec.name)
        if o is None:
            lines.append(f"  output: {spec.name} ({spec.label})")
            continue
        what = "remote: will be pulled from the remote cache" if o.source == "remote" else "convert"
        share = f" ({o.share})" if o.share and o.source != "remote" else ""
        key = f" [{o.key[:12]}]" if o.key else ""
        lines.append(f"  output: {spec.name} ({spec.label}) — {what}{share}{key}")
    choice = plan.backend
    lines.append(f"  backend: {choice.name} ({choice.reason})")
    lines.append(f"  into: {plan.output_dir}")
    if plan.up_to_date:
        lines.append("  up to date: nothing to do")
    return lines


def _debugging(args: argparse.Namespace) -> bool:
    """--debug (or its environment forms): host commands and libguestfs traces are written to stderr."""
    return bool(getattr(args, "debug", False) or os.environ.get("IMGSMITH_DEBUG")
                or os.environ.get("IMGSMITH_GUESTFS_TRACE"))


def _output_summary(r: ConvertResult) -> str:
    from ..disk.sizes import format_size
    kind = f"{r.format} ({r.preset})" if r.preset else r.format
    patched = f"  (patched: {format_size(r.patched_bytes)} changed)" if r.patched_bytes is not None else ""
    pulled = "  (pulled from the remote cache)" if r.pulled_from is not None else ""
    return f"{kind}  {format_size(r.file_size)}{patched}{pulled}"


class _PlainEvents:
    """The build's events as ``[  12.3] stage`` lines on stderr (not a terminal, -q, --json, --debug).

    CI logs and tests read these lines: a stage reads as ``str()`` of its event. A
    :class:`~imgsmith.events.Notice` (a generated password) is printed once whatever the
    verbosity: on stdout, or on stderr with --json so stdout stays one JSON document.
    """

    def __init__(self, args: argparse.Namespace, label: str = "") -> None:
        self.label = f"{label}: " if label else ""  # which build, when several run at once
        self.lines = Progress(quiet=args.quiet or args.json)
        self.bars = _BarOrLines(args.quiet or args.json)
        self.verbose = bool(args.verbose)
        self.notice = self.lines.output_fn(bool(args.json))

    def __call__(self, event: Event) -> None:
        from ..events import Message, Notice, Progress, StageStarted, Warn
        if isinstance(event, StageStarted):
            self.lines.message(self.label + str(event))
        elif isinstance(event, Message):
            if self.verbose:
                self.lines.message(self.label + event.text)
        elif isinstance(event, Warn):
            self.lines.warn(self.label + event.text)
        elif isinstance(event, Progress):
            self.bars(self.label + event.label, event.pct)
        elif isinstance(event, Notice):
            self.notice(event.text)


def _build_live(loaded: LoadedDefinition, options: BuildOptions, args: argparse.Namespace) -> BuildResult:
    """The build under the rich live view (stderr is a terminal): a row per stage, redrawn in place."""
    from ..pipeline import build
    from .live import LiveView  # rich is imported only on this path
    with LiveView.for_stderr(verbose=args.verbose) as view:
        result = build(loaded, options, view)
        written = not (result.nothing_to_do or options.dry_run)
        view.finish(manifest=result.manifest if written else None,
                    outputs={r.path.name: _output_summary(r) for r in result.outputs})
    return result


def _build_plain(loaded: LoadedDefinition, options: BuildOptions, args: argparse.Namespace) -> BuildResult:
    from ..pipeline import build
    return build(loaded, options, _PlainEvents(args))


def _json_result(loaded: LoadedDefinition, result: BuildResult, args: argparse.Namespace,
                 seconds: float) -> dict[str, Any]:
    return {
        "name": loaded.definition.name, "nothing_to_do": result.nothing_to_do, "dry_run": args.dry_run,
        "output_dir": str(result.plan.output_dir),
        "layers": [{"name": x.name, "key": x.key, "cached": x.cached, "miss": x.miss,
                    "source": x.source or ("local" if x.cached else "build"), "share": x.share}
                   for x in result.plan.layers],
        "dropped_sysprep": [n for n, _ in result.plan.dropped_sysprep],
        "outputs": [r.to_json() for r in result.outputs], "manifest": str(result.manifest or ""),
        "launches": result.launches, "sessions": result.sessions, "backend": result.backend,
        "seconds": round(seconds, 2), "boot_test": result.boot, "checks": result.checks,
        # with a remote cache (sharing.py): where the base image and each output come from
        "base_source": result.plan.base_source,
        "planned_outputs": [{"name": o.name, "source": o.source, "key": o.key, "share": o.share}
                            for o in result.plan.outputs],
    }


def _options(args: argparse.Namespace) -> BuildOptions:
    from ..pipeline import BuildOptions
    return BuildOptions(output_dir=args.output_dir, no_cache=args.no_cache, dry_run=args.dry_run,
                        memsize=args.memsize, network=args.network, boot_test=args.boot_test,
                        backend=args.backend, trust_image=args.trust_image, check=args.check,
                        remote=remote_settings(args))


def run(args: argparse.Namespace) -> int:
    from ..farm import load_all  # heavy imports (pydantic, paramiko) only when building
    variants = load_all(args.definitions, args.overrides)
    if len(variants) > 1:
        return _run_many(variants, args)
    loaded = variants[0]
    options = _options(args)
    start = time.monotonic()
    live = use_live(sys.stderr, quiet=args.quiet, json_mode=args.json, debug=_debugging(args))
    result = (_build_live if live else _build_plain)(loaded, options, args)
    published = _publish(result, args) if args.publish and not args.dry_run else None
    if args.json:
        doc = _json_result(loaded, result, args, time.monotonic() - start)
        if published is not None:
            doc["published"] = [o.to_json() for o in published]
        print_json(doc)
        return 0
    if args.dry_run:
        print("\n".join(_plan_lines(result.plan)))
        return 0
    _print_result(loaded, result, time.monotonic() - start)
    if published is not None:
        from .publish import print_outcomes
        print_outcomes(published)
    return 0


def _print_result(loaded: LoadedDefinition, result: BuildResult, seconds: float) -> None:
    if result.nothing_to_do:
        print(f"{loaded.definition.name}: up to date ({result.plan.output_dir})")
        return
    for r in result.outputs:
        patched = {"patched": "  (patched)", "pulled": "  (pulled)"}.get(r.made, "")
        print(f"{r.path}  {r.format}  {r.file_size:,} bytes  sha256:{r.sha256[:16]}…{patched}")
    if result.boot is not None:
        boots = result.boot.get("by_firmware") or [result.boot]
        under = ", ".join(str((b.get("boot") or {}).get("firmware", "?")) for b in boots)
        print(f"boot test: passed under {under} ({len(result.boot.get('checks', []))} check(s) each)")
    ran = f"{result.sessions} layer session(s), backend {result.backend}" if result.sessions else "all layers cached"
    print(f"manifest: {result.manifest}  ({seconds:.1f} s, {ran})")


def _run_many(variants: list[LoadedDefinition], args: argparse.Namespace) -> int:
    """Several builds (farm.py): plain lines prefixed with each build's name; --json gives a list.

    A failed build does not stop the others; the run exits with the first failure's code,
    after every build has reported (in --json, a failed one is its error document).
    """
    from ..errors import error_document
    from ..farm import build_all
    start = time.monotonic()
    outcomes = build_all(variants, _options(args), jobs=args.build_jobs,
                         sink_for=lambda v: _PlainEvents(args, v.definition.name))
    docs: list[dict[str, Any]] = []
    for o in outcomes:
        name = o.loaded.definition.name
        if o.result is None:
            assert o.error is not None
            docs.append({"name": name, **error_document(o.error)})
            if not args.json:
                print(f"imgsmith: error: {name}: {o.error.message}", file=sys.stderr)
            continue
        result = o.result
        published = _publish(result, args) if args.publish and not args.dry_run else None
        doc = _json_result(o.loaded, result, args, time.monotonic() - start)
        if published is not None:
            doc["published"] = [p.to_json() for p in published]
        docs.append(doc)
        if args.json:
            continue
        if args.dry_run:
            print("\n".join(_plan_lines(result.plan)))
        else:
            _print_result(o.loaded, result, time.monotonic() - start)
        if published is not None:
            from .publish import print_outcomes
            print_outcomes(published)
    if args.json:
        print_json(docs)
    failed = [o.error for o in outcomes if o.error is not None]
    if not args.json:
        done = "planned" if args.dry_run else "succeeded"
        print(f"{len(outcomes) - len(failed)} of {len(outcomes)} build(s) {done} "
              f"({time.monotonic() - start:.1f} s, --jobs {args.build_jobs})")
    return failed[0].exit_code if failed else 0


def _publish(result: BuildResult, args: argparse.Namespace) -> list[Any]:
    """The publish stage after the build (and its boot test): the same code as `imgsmith publish DIR`."""
    from .publish import publish_dir
    return publish_dir(result.plan.output_dir, args, definition=result.plan.definition.path)
