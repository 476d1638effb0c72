"""`imgsmith cache ls|prune|verify|keygen`: what the layer caches (local and remote) hold, their space, their bytes."""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache import LayerEntry, LayerStore
from ..disk.sizes import format_size, parse_size
from ..errors import UsageError
from ..paths import cache_root
from ..source.base import cached_bases
from .commands import SUMMARIES

if TYPE_CHECKING:
    from ..cache.remote import RemoteCache

__all__ = ["parse_duration", "parse_max_size", "register"]

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

_EPILOG = """\
Sizes: 10G, 500M (binary units). Durations: 30m, 12h, 7d, 2w, or combined as 1d12h.
Layers name their parent by absolute path: moving the cache directory breaks every
chain (the layers are then rebuilt). Set IMGSMITH_CACHE to choose where it lives."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cache", help=SUMMARIES["cache"],
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
    ve = actions.add_parser(
        "verify", help="check every cached layer's bytes against the sha256 recorded when it was published",
        description="Check every cached layer against its recorded sha256; a damaged layer is evicted with the "
                    "layers built on it (the next build rebuilds them). With --remote, download every remote "
                    "entry's blob and check it against its entry (nothing is deleted remotely).")
    ve.add_argument("--json", action="store_true", help="machine-readable output")
    ve.set_defaults(func=run_verify)
    kg = actions.add_parser("keygen", help="make an Ed25519 key pair to sign remote cache entries",
                            description="Write a new Ed25519 private key to PATH (mode 0600) and its public key to "
                                        "PATH.pub: give builders that push signing-key = PATH, and every host "
                                        "trusted-keys = [PATH.pub] (docs/build.md).")
    kg.add_argument("path", type=Path, metavar="PATH")
    kg.set_defaults(func=run_keygen)
    for q in (ls, pr, ve):
        q.add_argument("--remote", action="store_true", help="the remote layer cache instead of the local one")
        q.add_argument("--cache-remote", metavar="URL", default=None,
                       help="the remote (default: IMGSMITH_CACHE_REMOTE, then the config file)")
        q.add_argument("--cache-trust-unsigned", action="store_true", help="accept entries no trusted key signed")
    for q in (ls, pr, ve, kg):
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
    if args.remote:
        return _ls_remote(args)
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
    if args.remote:
        return _prune_remote(args)
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


# --- verify, keygen, and the remote cache --------------------------------------------------------

def _remote(args: argparse.Namespace) -> RemoteCache:
    from ..cache.config import load_settings
    from ..cache.remote import RemoteCache
    settings = load_settings(remote=args.cache_remote, trust_unsigned=args.cache_trust_unsigned)
    if settings is None:
        raise UsageError("--remote: no remote cache configured (--cache-remote URL, IMGSMITH_CACHE_REMOTE, or "
                         "remote = ... in the config file)")
    return RemoteCache(settings)


def run_verify(args: argparse.Namespace) -> int:
    if args.remote:
        return _verify_remote(args)
    store = _store()
    results: list[dict[str, Any]] = []
    for e in store.entries():
        problem = store.verify(e.key)
        evicted = store.evict(e.key) if problem else []
        results.append({"key": e.key, "ok": problem is None, "problem": problem, "checked": e.sha256 is not None,
                        "evicted": evicted})
    damaged = [r for r in results if not r["ok"]]
    if args.json:
        print(json.dumps({"root": os.fspath(store.root), "layers": results, "damaged": len(damaged)}, indent=2))
    else:
        for r in damaged:
            print(f"{r['problem']}: evicted {len(r['evicted'])} layer(s)")
        unchecked = sum(1 for r in results if not r["checked"])
        note = f" ({unchecked} published before checksums were recorded: not checked)" if unchecked else ""
        print(f"{len(results) - len(damaged)} of {len(results)} layer(s) intact in {store.root}{note}")
    return 1 if damaged else 0


def _verify_remote(args: argparse.Namespace) -> int:
    from ..host.files import scratch_dir
    remote = _remote(args)
    results: list[dict[str, Any]] = []
    with scratch_dir("imgsmith-verify-") as work:  # downloads whole entries: swept after kill -9
        for key, entry, why in remote.entries():
            problem = why if entry is None else remote.verify(entry, work)
            results.append({"key": key, "kind": entry.kind if entry else None, "ok": problem is None,
                            "problem": problem})
    bad = [r for r in results if not r["ok"]]
    if args.json:
        print(json.dumps({"remote": remote.name, "entries": results, "bad": len(bad)}, indent=2))
    else:
        for r in bad:
            print(f"remote {r['kind'] or 'entry'} {r['key'][:12]}: {r['problem']}")
        print(f"{len(results) - len(bad)} of {len(results)} remote entr{'y' if len(results) == 1 else 'ies'} "
              f"verified in {remote.name}")
    return 1 if bad else 0


def _remote_what(e: Any) -> str:
    """What a remote entry holds, for `cache ls --remote`: a base image, an output or a layer."""
    if e.kind == "base":
        return f"base {e.meta.get('origin') or e.meta.get('base')}"
    if e.kind == "output":
        kind = e.meta.get("preset") or e.meta.get("format") or "-"
        return f"{e.meta.get('definition') or '-'}  output {e.meta.get('output') or '-'} ({kind})"
    return f"{e.meta.get('definition') or '-'}  {e.meta.get('layer') or '-'}"


def _ls_remote(args: argparse.Namespace) -> int:
    remote = _remote(args)
    rows = remote.entries()
    if args.json:
        print(json.dumps({"remote": remote.name, "layers": [
            {**(e.to_json() if e else {"key": key}), "refused": why} for key, e, why in rows]}, indent=2))
        return 0
    now = time.time()
    for key, e, why in rows:
        if e is None:
            print(f"{key[:12]}  refused: {why}")
        else:
            what = _remote_what(e)
            print(f"{key[:12]}  {format_size(e.size)}  {_age(now - e.created)}  {what}  signer {e.signer or 'none'}")
    kinds = [e.kind if e else "refused" for _, e, _ in rows]
    counts = ", ".join(f"{kinds.count(k)} {k}{'s' if kinds.count(k) != 1 else ''}"
                       for k in ("layer", "base", "output", "refused") if k in kinds)
    print(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'} ({counts or 'none'}) in {remote.name}")
    return 0


def _prune_remote(args: argparse.Namespace) -> int:
    if args.max_size is not None:
        raise UsageError("--remote: prune by --older-than DURATION (or --all); --max-size is for the local cache")
    if not args.all and args.older_than is None:
        raise UsageError("nothing to prune by: give --older-than or --all")
    remote = _remote(args)
    if remote.settings.pull_only:
        raise UsageError("--remote: this host is pull-only (pull-only = true in the config): it never writes to "
                         "the remote, so it does not prune it")
    removed, blobs = remote.prune(older_than=None if args.all else parse_duration(args.older_than),
                                  dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "removed": [e.to_json() for e in removed], "blobs": blobs},
                         indent=2))
        return 0
    for e in removed:
        print(f"{verb} {e.key[:12]}  {format_size(e.size)}  {e.meta.get('definition') or '-'}")
    print(f"{verb} {len(removed)} remote entr{'y' if len(removed) == 1 else 'ies'} and {len(blobs)} unreferenced "
          f"blob{'s' if len(blobs) != 1 else ''} from {remote.name}")
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    from ..cache.signing import generate_keypair
    if args.path.exists():
        raise UsageError(f"{args.path} exists: not overwriting a key")
    pub, kid = generate_keypair(args.path)
    print(f"private key {args.path} (keep it on the builders that push), public key {pub}, key id {kid}")
    return 0
