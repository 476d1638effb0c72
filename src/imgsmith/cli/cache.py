"""`imgsmith cache ls|prune`: what the layer cache holds, and reclaiming its space."""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from ..cache import LayerEntry, LayerStore
from ..disk.sizes import format_size, parse_size
from ..errors import UsageError
from ..paths import cache_root
from ..source.base import cached_bases

__all__ = ["parse_duration", "parse_max_size", "register"]

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

_EPILOG = """\
Sizes: 10G, 500M (binary units). Durations: 30m, 12h, 7d, 2w, or combined as 1d12h.
Layers name their parent by absolute path: moving the cache directory breaks every
chain (the layers are then rebuilt). Set IMGSMITH_CACHE to choose where it lives."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cache", help="list or prune the layer cache",
        description="Inspect and prune the content-addressed layer cache (one qcow2 overlay per layer, "
                    "reused by later builds with the same parent and steps).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="cache_action", metavar="ACTION")
    actions.required = True
    ls = actions.add_parser("ls", help="list cached layers", epilog=_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=run_ls)
    pr = actions.add_parser(
        "prune", help="remove cached layers, least recently used first",
        description="Remove cached layers, least recently used first. A layer that is the parent of a "
                    "kept layer, or of a build in progress, is never removed. Leftovers of interrupted "
                    "builds are always cleaned.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("--max-size", metavar="SIZE", help="remove layers until the cache fits in SIZE")
    pr.add_argument("--older-than", metavar="DURATION", help="remove layers not used for DURATION")
    pr.add_argument("--all", action="store_true", help="remove every layer")
    pr.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    pr.add_argument("--json", action="store_true", help="machine-readable output")
    pr.set_defaults(func=run_prune)
    for q in (ls, pr):
        q.add_argument("-v", "--verbose", action="store_true", help="log what is being done")


def parse_duration(text: str) -> float:
    """Seconds in ``30m``, ``12h``, ``7d``, ``2w``, ``1d12h``; a bare number is refused as ambiguous."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or not re.fullmatch(rf"(?:{_DURATION_RE.pattern})+", compact):
        raise UsageError(f"--older-than: invalid duration {text!r} (examples: 30m, 12h, 7d, 2w, 1d12h)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_RE.findall(compact))


def parse_max_size(text: str) -> int:
    """Bytes in ``10G``/``500M``/a byte count; ``0`` is allowed and empties the cache."""
    if text.strip() == "0":
        return 0
    try:
        spec = parse_size(text)
    except UsageError:
        raise UsageError(f"--max-size: invalid size {text!r} (examples: 10G, 500M, 0)") from None
    if spec.relative:
        raise UsageError(f"--max-size: invalid size {text!r}: give an absolute size (examples: 10G, 500M)")
    return spec.amount


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return "just now"


def _parent_label(store: LayerStore, entry: LayerEntry) -> str:
    parent = Path(entry.parent_path)
    if parent.name == "layer.qcow2" and parent.parent.parent == store.root.resolve():
        return parent.parent.name[:12]
    return f"base {parent.name}"


def _entry_json(store: LayerStore, entry: LayerEntry) -> dict[str, Any]:
    return {**entry.to_json(), "parent": _parent_label(store, entry)}


def _store() -> LayerStore:
    return LayerStore(cache_root() / "layers")


def run_ls(args: argparse.Namespace) -> int:
    store = _store()
    entries = store.entries()
    bases = cached_bases(cache_root())
    total = sum(e.size for e in entries)
    if args.json:
        print(json.dumps({"root": os.fspath(store.root), "layers": [_entry_json(store, e) for e in entries],
                          "total_size": total,
                          "base_images": [{"path": os.fspath(b.path), "checksum": b.checksum, "origin": b.origin,
                                           "size": b.size, "fetched": b.fetched} for b in bases]}, indent=2))
        return 0
    now = time.time()
    if not entries:
        print(f"no cached layers in {store.root}")
    else:
        rows = [("KEY", "SIZE", "CREATED", "USED", "DEFINITION", "PARENT")]
        rows += [(e.key[:12], format_size(e.size), _age(now - e.created), _age(now - e.last_used),
                  e.definition or "-", _parent_label(store, e)) for e in entries]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        print(f"{len(entries)} layer{'s' if len(entries) != 1 else ''}, {format_size(total)} in {store.root}")
    if bases:
        size = sum(b.size for b in bases)
        print(f"{len(bases)} base image{'s' if len(bases) != 1 else ''}, {format_size(size)} in "
              f"{cache_root() / 'base'}")
    return 0


def _prune_limits(args: argparse.Namespace) -> tuple[int | None, float | None]:
    """(max size, older than) from the options; UsageError for a bad or missing choice."""
    if args.all and (args.max_size is not None or args.older_than is not None):
        raise UsageError("--all removes every layer; it cannot be combined with --max-size or --older-than")
    if args.all:
        return 0, None
    if args.max_size is None and args.older_than is None:
        raise UsageError("nothing to prune by: give --max-size, --older-than or --all")
    max_size = parse_max_size(args.max_size) if args.max_size is not None else None
    older_than = parse_duration(args.older_than) if args.older_than is not None else None
    return max_size, older_than


def run_prune(args: argparse.Namespace) -> int:
    max_size, older_than = _prune_limits(args)
    store = _store()
    removed = store.prune(max_size=max_size, older_than=older_than, dry_run=args.dry_run)
    kept = [e for e in store.entries() if e.key not in {r.key for r in removed}]
    freed = sum(e.size for e in removed)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "removed": [_entry_json(store, e) for e in removed],
                          "freed": freed, "kept": len(kept), "kept_size": sum(e.size for e in kept)}, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        print(f"{verb} {e.key[:12]}  {format_size(e.size)}  {e.definition or '-'}")
    print(f"{verb} {len(removed)} layer{'s' if len(removed) != 1 else ''} ({format_size(freed)}); "
          f"{len(kept)} kept ({format_size(sum(e.size for e in kept))})")
    return 0
