"""`imgsmith publish DIR|MANIFEST`: a build's outputs to the destinations its definition's publish: lists."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .commands import SUMMARIES
from .render import Progress, print_json

if TYPE_CHECKING:
    from ..events import Event
    from ..publish.record import Outcome

EPILOG = """\
Each destination is checked before anything is sent: the output is in the manifest and
unchanged since the build, not refused by its cloud's check, of a format the destination
takes; then the credentials are read and the service reached. An image whose sha256 is
already at the destination is not sent again. The manifest records what was published
(published.NAME: image id or object URL, region, status); a republish of the same image with
the same destination settings takes that record as proof, asks nothing and sends nothing
(--verify asks the destination anyway). docs/publish.md has the details.

examples:
  imgsmith publish dist/debian12 --dry-run           # every request, nothing sent
  imgsmith publish dist/debian12 --to glance
  imgsmith publish dist/debian12/manifest.json --json
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("publish", help=SUMMARIES["publish"],
                       description="Publish the outputs of a build to the destinations listed under publish: in "
                                   "its definition.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="DIR|MANIFEST", help="a build directory or its manifest.json")
    add_options(p)
    p.add_argument("--definition", type=Path, default=None, metavar="FILE.yaml",
                   help="read publish: from this file (default: the definition the manifest names)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail")
    p.set_defaults(func=run)


def add_options(p: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """The options `imgsmith build --publish` shares with this command."""
    p.add_argument("--to", dest="publish_to", action="append", default=None, metavar="NAME",
                   help="only this destination (repeatable; default: all)")
    if not prefix:
        p.add_argument("-n", "--dry-run", action="store_true", help="print every request; send nothing")
    p.add_argument("--part-size", dest="part_size", default="8M", metavar="SIZE",
                   help="object-store multipart part size (at least 5M; default 8M, grown to stay within "
                        "10,000 parts)")
    # `build --jobs` is how many builds run at once; there the upload's parallelism is --publish-jobs.
    p.add_argument("--publish-jobs" if prefix else "--jobs", dest="jobs", type=int, default=10, metavar="N",
                   help="parts sent in parallel (default 10)")
    p.add_argument("--timeout", type=float, default=3600, metavar="SECONDS",
                   help="how long to wait for a destination to report the image ready")
    p.add_argument("--verify", action="store_true",
                   help="ask each destination whether the image is there, even when the manifest records it "
                        "published (default: a record of this same publication is proof enough)")


def _events(args: argparse.Namespace) -> Any:
    from ..events import Message, StageFinished, StageStarted, Warn
    from ..events import Progress as ProgressEvent
    lines = Progress(quiet=args.quiet or args.json)
    last: dict[str, int] = {}

    def emit(event: Event) -> None:
        if isinstance(event, StageStarted):
            lines.message(str(event))
        elif isinstance(event, StageFinished) and event.summary:
            lines.message(f"publish: {event.summary} ({event.seconds:.1f} s)")
        elif isinstance(event, Message):
            lines.message(event.text)
        elif isinstance(event, Warn):
            lines.warn(event.text)
        elif isinstance(event, ProgressEvent) and last.get(event.label, -1) < int(event.pct // 25):
            last[event.label] = int(event.pct // 25)
            lines.message(f"  {event.label}: {event.pct:.0f}%")
    return emit


def publish_dir(target: Path, args: argparse.Namespace, *, definition: Path | None = None,
                dry_run: bool = False) -> list[Outcome]:
    """Publish the build in *target*: shared by this command and `imgsmith build --publish`."""
    from ..disk.sizes import parse_size
    from ..errors import UsageError
    from ..publish.record import locate, quick_records, recorded
    part = parse_size(str(args.part_size)).amount
    if part < 5 << 20:
        raise UsageError(f"--part-size {args.part_size}: object stores take parts of at least 5M")
    if args.jobs < 1:
        raise UsageError("--jobs: at least 1")
    out_dir, manifest = locate(target)
    d = manifest.get("definition") or {}
    file = definition or (Path(d["file"]) if d.get("file") else None)
    if file is None:
        raise UsageError(f"{out_dir}: the manifest names no definition: give --definition FILE.yaml")
    if not args.verify:
        # The manifest's records, judged before the definition is loaded (publish/record.py): an unchanged
        # republish imports neither pydantic nor an SDK and sends nothing.
        records = quick_records(out_dir, manifest, file, args.publish_to)
        if records is not None:
            return recorded(records)
    from ..definition import load_definition
    from ..publish.base import PublishOptions
    from ..publish.run import Provenance, publish
    loaded = load_definition(file, overrides=d.get("overrides") or [], check_files=False)
    options = PublishOptions(part_size=part, jobs=args.jobs, state_dir=out_dir / ".imgsmith-publish")
    provenance = Provenance(loaded.text_hash, tuple(s.name for s in loaded.publish))
    return publish(out_dir, manifest, loaded.publish, only=args.publish_to, dry_run=dry_run, verify=args.verify,
                   timeout=args.timeout, emit=_events(args), options=options, provenance=provenance)


def print_outcomes(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        if o.status == "planned":
            print(f"{o.name}: {o.output} -> {o.kind} (dry run: nothing sent)")
            for a in o.actions:
                print(f"  {a.api} {_params(a.params)}")
            continue
        where = o.record.get("image_id") or o.record.get("url") or o.record.get("reference")
        if o.status == "unchanged" and o.found_by == "record":
            print(f"{o.name}: already published: {o.output} is at {where} (the manifest's record; --verify asks "
                  "the destination); nothing sent")
        elif o.status == "unchanged":
            print(f"{o.name}: unchanged: {o.output} is already there ({where}); nothing sent")
        else:
            print(f"{o.name}: published {o.output} -> {where} ({o.sent_bytes:,} bytes, {o.seconds:.1f} s)")


def _params(params: dict[str, Any]) -> str:
    import json
    return json.dumps(params, sort_keys=True, default=str)


def run(args: argparse.Namespace) -> int:
    outcomes = publish_dir(args.target, args, definition=args.definition, dry_run=args.dry_run)
    if args.json:
        print_json({"dry_run": args.dry_run, "destinations": [o.to_json() for o in outcomes]})
    else:
        print_outcomes(outcomes)
    sys.stdout.flush()
    return 0
