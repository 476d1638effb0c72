"""The plan of a build: every key, decided without fetching or building anything.

A base image's key is what identifies its content before it is here: a checksum the
definition gives (inline, or read from its SUMS file — a few hundred bytes), a
bootstrap's recipe key, or a local file's content digest. From it and each layer's
canonical steps follow the layer keys, so ``--dry-run`` and the up-to-date check
decide everything without a download or a bootstrap, and say for each layer that will
run why it missed the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache.config import RemoteSettings
from .cache.store import LayerStore
from .definition import LoadedDefinition
from .guest.backend import Choice
from .guest.session import SessionOptions
from .host.files import atomic_write, hash_into
from .ops.base import Operation

__all__ = ["BaseKey", "BuildOptions", "BuildPlan", "PlannedLayer", "PlannedOutput", "digest_host_path", "plan_base",
           "plan_build"]


@dataclass(frozen=True)
class BuildOptions:
    output_dir: Path | None = None
    no_cache: bool = False
    dry_run: bool = False
    memsize: int | None = None  # overrides every layer's memsize
    network: bool = True
    boot_test: bool | None = None  # None: as the definition's test section says
    cache_dir: Path | None = None
    backend: str | None = None  # None: the definition's backend (default auto)
    trust_image: bool = False  # lets auto use chroot on a source without a checksum
    check: bool = True  # judge each cloud preset's output for its cloud (imgsmith check)
    remote: RemoteSettings | None = None  # the host's remote layer cache (cache/config.py), if any


@dataclass(frozen=True)
class BaseKey:
    """The base image as the plan knows it: its key and origin, before (or without) fetching it."""

    key: str
    origin: str
    checksum: str | None  # the checksum its bytes must match (None: a bootstrap, or a file keyed by content)
    verified: bool  # a checksum the definition gave, or made here from packages


@dataclass
class PlannedLayer:
    index: int
    name: str
    key: str
    ops: list[Operation]
    sysprep: list[str]
    resize: str | None
    parent_key: str = ""
    token: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    memsize: int | None = None
    miss: str | None = None  # why it will run, when it is not cached
    source: str = ""  # "local", "remote" or "build" (set with a remote cache: sharing.py)
    share: str | None = None  # "push", "pushed unsigned: …", or why it is not pushed (None: no remote cache)


@dataclass
class PlannedOutput:
    """One output as a remote cache sees it (set by sharing.py; without a remote cache every output converts)."""

    name: str
    label: str
    source: str = "convert"  # "remote": pulled from the remote cache; "convert": written here
    key: str | None = None  # its remote key, when its layers' bytes are known and it is worth sharing
    share: str | None = None  # "push", or why it is not pushed


@dataclass
class BuildPlan:
    definition: LoadedDefinition
    base: BaseKey
    layers: list[PlannedLayer]
    output_dir: Path
    session: SessionOptions = field(default_factory=SessionOptions)
    up_to_date: bool = False
    base_source: str | None = None  # with a remote cache: "local", "remote" (pulled) or "fetch" (sharing.py)
    outputs: list[PlannedOutput] = field(default_factory=list)  # with a remote cache (sharing.py)

    @property
    def base_key(self) -> str:
        return self.base.key

    @property
    def base_origin(self) -> str:
        return self.base.origin

    @property
    def dropped_sysprep(self) -> list[tuple[str, str]]:
        plan = self.definition.sysprep
        return list(plan.dropped) if plan else []

    @property
    def backend(self) -> Choice:
        return self.session.choice()


_HOST_DIGESTS: dict[tuple[str, tuple[tuple[Any, ...], ...]], str] = {}  # per process: see digest_host_path


def _tree_stamp(path: Path) -> tuple[tuple[Any, ...], ...]:
    """What a host file or tree looks like to stat(): names, inodes, sizes, modes, mtimes and ctimes."""
    def one(rel: str, st: os.stat_result) -> tuple[Any, ...]:
        return (rel, st.st_dev, st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)
    stamps = [one("", path.stat())]
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            stamps += [one(os.path.relpath(os.path.join(root, n), path), os.stat(os.path.join(root, n)))
                       for n in sorted(files + dirs)]
    return tuple(stamps)


def digest_host_path(path: Path) -> str:
    """Content digest of a host file or directory tree (names, modes and contents).

    Remembered for the life of the process while stat() sees the same tree: planning
    thirty matrix variants that copy in one directory reads it once, not thirty times.
    """
    memo_key = (os.fspath(path.absolute()), _tree_stamp(path))
    if memo_key in _HOST_DIGESTS:
        return _HOST_DIGESTS[memo_key]
    h = hashlib.sha256()
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                p = Path(root) / name
                h.update(f"{p.relative_to(path)}\0{p.stat().st_mode & 0o7777:o}\0".encode())
                hash_into(h, p)
    else:
        h.update(f"{path.stat().st_mode & 0o7777:o}\0".encode())
        hash_into(h, path)
    _HOST_DIGESTS[memo_key] = digest = h.hexdigest()
    return digest


def _ops_token(ops: Sequence[Operation]) -> list[dict[str, Any]]:
    tokens = []
    for op in ops:
        token = op.cache_token()
        files = {os.fspath(p): digest_host_path(p) for p in op.host_files()}
        if files:
            token["host_files"] = files
        tokens.append(token)
    return tokens


def _file_key(path: Path, cache: Path) -> str:
    """sha256 of a local base image, remembered by (inode, size, mtime) so rebuilds don't re-read it."""
    st = path.stat()
    stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    memo_path = cache / "file-digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(os.fspath(path))
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    digest = digest_host_path(path)
    memo[os.fspath(path)] = {"stamp": stamp, "sha256": digest}
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(memo_path, json.dumps(memo))
    return digest


def plan_base(loaded: LoadedDefinition, cache: Path) -> BaseKey:
    """The base image's key without downloading or bootstrapping it (see the module docstring)."""
    from .source.checksum import parse_inline
    src = loaded.definition.source
    if src.file is not None:
        path = (loaded.base_dir / src.file).resolve()
        if src.checksum:
            key = str(parse_inline(src.checksum))
            return BaseKey(key, os.fspath(path), key, verified=True)
        # No checksum: key by content, remembered by (inode, size, mtime) so rebuilds don't re-hash.
        key = f"sha256:{_file_key(path, cache)}"
        return BaseKey(key, os.fspath(path), key, verified=False)
    if src.url is not None:
        from .source.base import expected_checksum
        from .source.fetch import redact_url
        key = str(expected_checksum(src.url, src.checksum, src.checksum_url))
        return BaseKey(key, redact_url(src.url), key, verified=True)
    from .source.bootstrap import planned_name
    assert src.bootstrap is not None
    spec = src.bootstrap
    return BaseKey(f"bootstrap:{planned_name(spec)}", f"bootstrap {spec.describe()}", None,
                   verified=True)


def _miss_reason(store: LayerStore, layer: PlannedLayer, previous: PlannedLayer | None, no_cache: bool) -> str:
    if no_cache:
        return "--no-cache"
    if previous is not None and not previous.cached:
        return f"its parent, layer {previous.index} {previous.name}, runs"
    reason = store.explain_miss(layer.key, layer.token, parent_key=layer.parent_key)
    if reason is None:
        return "not cached"
    if reason.nearest is None and previous is None:
        return "nothing is cached on this base image yet"
    return str(reason).removeprefix("cache miss: ")


def plan_build(loaded: LoadedDefinition, options: BuildOptions, base: BaseKey, store: LayerStore) -> BuildPlan:
    """Keys for every layer (parent key + canonical ops + host file digests), and which are cached."""
    d = loaded.definition
    sysprep = loaded.sysprep
    selected = list(sysprep.operations) if sysprep else []
    specs: list[tuple[str, list[Operation], int | None]] = [
        (layer.name, ops, layer.memsize) for layer, ops in zip(d.layers, loaded.layer_ops, strict=True)]
    if not specs and (selected or d.size):
        specs = [("sysprep" if selected else "resize", [], None)]
    layers: list[PlannedLayer] = []
    parent = base.key
    for i, (name, ops, memsize) in enumerate(specs):
        last = i == len(specs) - 1
        resize = d.size if i == 0 else None
        token: dict[str, Any] = {"ops": _ops_token(ops), "resize": resize,
                                 "sysprep": sorted(selected) if last else None}
        if last and sysprep is not None:
            token.update(sysprep.key_token())
        key = store.key(parent, token)
        cached = not options.no_cache and store.get(key) is not None
        layer = PlannedLayer(i + 1, name, key, ops, selected if last else [], resize, parent, token, cached,
                             options.memsize or memsize)
        if not cached:
            layer.miss = _miss_reason(store, layer, layers[-1] if layers else None, options.no_cache)
        layers.append(layer)
        parent = key
    out_dir = options.output_dir or Path.cwd() / "dist" / d.name
    # Trusted: the bytes are checked against a published checksum, or made here from distribution packages.
    trusted = base.verified or options.trust_image
    session = SessionOptions(network=options.network, memsize=options.memsize,
                             backend=options.backend or d.backend, trusted=trusted)
    return BuildPlan(loaded, base, layers, out_dir, session)
