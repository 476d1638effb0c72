"""The build: the only place that knows the order of stages.

    source -> layers (customize steps; sysprep joins the last layer's launch) -> outputs
           -> manifest -> boot test

Each stage decides for itself whether it has work: a layer whose key is cached is
reused, an unchanged rebuild with outputs present does nothing. One appliance launch
per uncached layer (plus one for a ``size:`` grow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .boot import accel
from .cache.store import LayerStore
from .definition import LoadedDefinition
from .definition.model import Output
from .disk import qemuimg
from .disk.convert import ConvertResult, convert_many, make_target
from .disk.formats import writable_format
from .disk.presets import get_preset
from .disk.sizes import format_size
from .errors import UsageError
from .guest import appliance
from .guest.backend import Choice
from .guest.facts import installed_packages, kernels
from .guest.session import SessionOptions, open_guest, session_count
from .manifest import outputs_unchanged, read_manifest, write_manifest, write_sums
from .ops.accounts import SshInject
from .ops.base import ApplyContext, Operation, Settings
from .paths import cache_root
from .rebuild import patch_updates
from .runner import apply_operations
from .sysprep.select import resolve_selection

__all__ = ["BuildOptions", "BuildResult", "Reporter", "build", "plan_build"]

log = logging.getLogger("imgsmith.build")

# Sysprep operations that would undo a definition's own steps, with the step type that conflicts.
SYSPREP_CONFLICTS: dict[str, tuple[type[Operation], str]] = {
    "ssh-userdir": (SshInject, "it would delete the keys the ssh-inject step installs"),
}


@dataclass(frozen=True)
class BuildOptions:
    output_dir: Path | None = None
    no_cache: bool = False
    dry_run: bool = False
    memsize: int | None = None
    network: bool = True
    boot_test: bool | None = None  # None: as the definition's test section says
    cache_dir: Path | None = None
    backend: str | None = None  # None: the definition's backend (default auto)
    trust_image: bool = False  # lets auto use chroot on a source without a checksum


@dataclass
class Reporter:
    """How the pipeline talks to its caller (the CLI renders these; tests record them)."""

    stage: Callable[[str], None] = lambda _s: None
    message: Callable[[str], None] = lambda _m: None
    warn: Callable[[str], None] = lambda _m: None
    progress: Callable[[str, float], None] = lambda _label, _pct: None
    transfer: Callable[[str, int, int | None], None] | None = None  # (phase, done, total bytes); else progress()


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


@dataclass
class BuildPlan:
    definition: LoadedDefinition
    base_key: str
    base_origin: str
    layers: list[PlannedLayer]
    dropped_sysprep: list[tuple[str, str]]
    output_dir: Path
    session: SessionOptions = field(default_factory=SessionOptions)
    up_to_date: bool = False

    @property
    def backend(self) -> Choice:
        return self.session.choice()


@dataclass
class BuildResult:
    plan: BuildPlan
    outputs: list[ConvertResult] = field(default_factory=list)
    manifest: Path | None = None
    launches: int = 0  # appliance launches
    sessions: int = 0  # guest sessions of any backend (one per uncached layer)
    backend: str | None = None  # the backend the uncached layers ran with
    timings: dict[str, float] = field(default_factory=dict)
    nothing_to_do: bool = False
    boot: dict[str, Any] | None = None


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    """Feed a file to *h* in chunks: a base image can be gigabytes, and must not be read into memory."""
    with path.open("rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)


def _digest_host_path(path: Path) -> str:
    """Content digest of a host file or directory tree (names, modes and contents)."""
    h = hashlib.sha256()
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                p = Path(root) / name
                h.update(f"{p.relative_to(path)}\0{p.stat().st_mode & 0o7777:o}\0".encode())
                _hash_file(h, p)
    else:
        h.update(f"{path.stat().st_mode & 0o7777:o}\0".encode())
        _hash_file(h, path)
    return h.hexdigest()


def _ops_token(ops: Sequence[Operation]) -> list[dict[str, Any]]:
    tokens = []
    for op in ops:
        token = op.cache_token()
        files = {os.fspath(p): _digest_host_path(p) for p in op.host_files()}
        if files:
            token["host_files"] = files
        tokens.append(token)
    return tokens


def _sysprep_selection(loaded: LoadedDefinition) -> tuple[list[str], list[tuple[str, str]]]:
    section = loaded.definition.sysprep
    if section is None:
        return [], []
    selected = resolve_selection(section.operations)
    if section.enable:
        selected = resolve_selection(section.enable, flag="--enable")
    spec_text = ",".join([section.operations] if isinstance(section.operations, str) else section.operations)
    named = {item.strip() for item in spec_text.split(",")}
    all_ops = [op for layer in loaded.layer_ops for op in layer]
    dropped = []
    for name, (kind, why) in SYSPREP_CONFLICTS.items():
        if name in selected and name not in named and any(isinstance(op, kind) for op in all_ops):
            selected.remove(name)
            dropped.append((name, why))
    return selected, dropped


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
    digest = _digest_host_path(path)
    memo[os.fspath(path)] = {"stamp": stamp, "sha256": digest}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo))
    tmp.replace(memo_path)
    return digest


@dataclass(frozen=True)
class BaseRef:
    key: str
    origin: str
    path: Path
    format: str
    checksum: str | None
    verified: bool = False  # matched a checksum the definition gave, or was made here from packages


def _resolve_base(loaded: LoadedDefinition, cache: Path, reporter: Reporter) -> BaseRef:
    """Find (download, verify or bootstrap) the base image and the key that identifies its content."""
    from .disk.qemuimg import probe_format
    from .source import base as base_src
    from .source.checksum import parse_inline
    src = loaded.definition.source
    if src.file is not None:
        path = (loaded.base_dir / src.file).resolve()
        if src.checksum:
            img = base_src.resolve_file(path, parse_inline(src.checksum), fmt=src.format)
            assert img.checksum is not None
            key = str(img.checksum)
            return BaseRef(key, os.fspath(path), img.path, img.format, key, verified=True)
        # No checksum: key by content, remembered by (inode, size, mtime) so rebuilds don't re-hash.
        key = f"sha256:{_file_key(path, cache)}"
        return BaseRef(key, os.fspath(path), path, src.format or probe_format(path), key)
    if src.url is not None:
        reporter.stage(f"source: {src.url}")
        img = base_src.resolve_url(
            src.url, src.checksum, checksum_url=src.checksum_url, cache_dir=cache, fmt=src.format,
            progress=reporter.transfer or (
                lambda phase, done, total: reporter.progress(phase, 100.0 * done / total if total else 0.0)))
        assert img.checksum is not None
        key = str(img.checksum)
        return BaseRef(key, img.origin, img.path, img.format, key, verified=True)
    from .source.bootstrap import bootstrap_image
    assert src.bootstrap is not None
    spec = src.bootstrap
    reporter.stage(f"source: bootstrap {spec.distro} {spec.release}")
    path = bootstrap_image(spec, cache_dir=cache / "bootstrap", progress=reporter.message)
    return BaseRef(f"bootstrap:{path.stem}", f"bootstrap {spec.distro} {spec.release}", path,
                   probe_format(path), None, verified=True)


def plan_build(loaded: LoadedDefinition, options: BuildOptions, reporter: Reporter, base: BaseRef,
               store: LayerStore) -> BuildPlan:
    """Keys for every layer (parent key + canonical ops + host file digests), and which are cached."""
    d = loaded.definition
    selected, dropped = _sysprep_selection(loaded)
    specs: list[tuple[str, list[Operation]]] = [(layer.name, ops) for layer, ops in zip(d.layers, loaded.layer_ops,
                                                                                      strict=True)]
    if not specs and (selected or d.size):
        specs = [("sysprep" if selected else "resize", [])]
    layers: list[PlannedLayer] = []
    parent = base.key
    for i, (name, ops) in enumerate(specs):
        last = i == len(specs) - 1
        resize = d.size if i == 0 else None
        token = {"ops": _ops_token(ops), "resize": resize, "sysprep": sorted(selected) if last else None}
        key = store.key(parent, token)
        cached = not options.no_cache and store.get(key) is not None
        layers.append(PlannedLayer(i + 1, name, key, ops, selected if last else [], resize, parent, token, cached))
        parent = key
    out_dir = options.output_dir or Path.cwd() / "dist" / d.name
    # Trusted: the bytes were checked against a published checksum, or made here from distribution packages.
    trusted = base.verified or options.trust_image
    session = SessionOptions(network=options.network, memsize=options.memsize,
                             backend=options.backend or d.backend, trusted=trusted)
    return BuildPlan(loaded, base.key, base.origin, layers, dropped, out_dir, session)


def _build_layer(layer: PlannedLayer, parent: tuple[Path, str], *, session: SessionOptions, store: LayerStore,
                 reporter: Reporter, facts: dict[str, Any]) -> Path:
    """One guest session (one appliance launch, or a chroot): the layer's steps, then (last layer) sysprep.

    The layer is published only on success. Its key does not depend on the backend:
    both give the same guest, so a layer built either way serves both.
    """
    from .sysprep.run import apply_sysprep
    meta: dict[str, Any] = {"definition": facts["definition"], "layer": layer.name, "parent_key": layer.parent_key,
                            "token": layer.token}

    def apply(path: Path) -> None:
        if layer.resize:
            reporter.message(f"growing the disk to {layer.resize}")
        with open_guest(path, "qcow2", session.for_layer(grow_to=layer.resize, known=facts.get("os")),
                        message=reporter.message) as guest:
            facts["os"] = guest.os
            facts["backend"] = meta["backend"] = guest.backend
            ctx = ApplyContext(guest=guest, settings=Settings(), message=reporter.message, warn=reporter.warn,
                               output=reporter.message)
            apply_operations(ctx, layer.ops)
            # Facts before sysprep: its device operations (fs-uuids, lvm-uuids) unmount the guest.
            meta["guest"] = {"distro": guest.os.distro, "version": f"{guest.os.major}.{guest.os.minor}",
                             "product": guest.os.product_name, "arch": guest.os.arch,
                             "kernels": kernels(guest), "packages": installed_packages(guest)}
            facts["guest"] = meta["guest"]
            if layer.sysprep:
                reporter.stage(f"sysprep: {len(layer.sysprep)} operations")
                apply_sysprep(ctx, layer.sysprep)

    return Path(store.build(layer.key, parent[0], parent[1], meta, apply))


def _output_targets(loaded: LoadedDefinition, out_dir: Path) -> list[Any]:
    d = loaded.definition
    targets = []
    names: set[str] = set()
    for o in d.outputs:
        name = o.name or _default_output_name(d.name, o)
        if name in names:
            raise UsageError(f"two outputs would both be written to {name}; give one a name:")
        names.add(name)
        targets.append(make_target(out_dir / name, fmt=o.format,
                                   options={k: str(v).lower() if isinstance(v, bool) else str(v)
                                            for k, v in o.options.items()} or None, preset=o.preset))
    return targets


def _default_output_name(stem: str, o: Output) -> str:
    if o.preset:
        return f"{stem}-{o.preset}{get_preset(o.preset).extension}"
    ext = writable_format(str(o.format)).extension
    sub = o.options.get("subformat")
    return f"{stem}-{sub}{ext}" if sub else f"{stem}{ext}"


def _manifest(plan: BuildPlan, base: BaseRef, results: list[ConvertResult], *, facts: dict[str, Any],
              timings: dict[str, float], accel_name: str) -> dict[str, Any]:
    d = plan.definition
    outputs = []
    for r in results:
        entry = r.to_json()
        entry["path"] = r.path.name
        entry["mtime_ns"] = r.path.stat().st_mtime_ns
        outputs.append(entry)
    return {
        "imgsmith": __version__,
        "name": d.definition.name,
        "definition": {"file": os.fspath(d.path), "sha256": d.text_hash, "overrides": d.overrides},
        "source": {"origin": base.origin, "checksum": base.checksum, "key": base.key},
        "layers": [{"name": layer.name, "key": layer.key, "cached": layer.cached} for layer in plan.layers],
        "sysprep": {"operations": plan.layers[-1].sysprep if plan.layers else [],
                    "dropped": [{"operation": n, "why": w} for n, w in plan.dropped_sysprep]},
        "outputs": outputs,
        "guest": facts.get("guest"),
        "accelerator": accel_name,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }


def _cached_meta(store: LayerStore, plan: BuildPlan) -> dict[str, Any]:
    """The last layer's metadata (guest facts, backend) when every layer came from the cache."""
    if not plan.layers:
        return {}
    try:
        meta = json.loads((store.root / plan.layers[-1].key / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _up_to_date(plan: BuildPlan, options: BuildOptions) -> bool:
    """Every layer cached, and the outputs present and matching a manifest of the same definition."""
    previous = read_manifest(plan.output_dir)
    return (not options.no_cache and all(layer.cached for layer in plan.layers) and previous is not None
            and previous.get("definition", {}).get("sha256") == plan.definition.text_hash
            and [x["key"] for x in previous.get("layers", [])] == [x.key for x in plan.layers]
            and outputs_unchanged(plan.output_dir, previous))


def build(loaded: LoadedDefinition, options: BuildOptions = BuildOptions(),
          reporter: Reporter | None = None) -> BuildResult:
    """Build *loaded*: the stages in order; see the module docstring."""
    rep = reporter or Reporter()
    timings: dict[str, float] = {}
    cache = options.cache_dir or cache_root()
    store = LayerStore(cache / "layers")
    launches_before, sessions_before = appliance.launch_count(), session_count()
    t = time.monotonic()
    base = _resolve_base(loaded, cache, rep)
    timings["source"] = time.monotonic() - t
    plan = plan_build(loaded, options, rep, base, store)
    for name, why in plan.dropped_sysprep:
        rep.warn(f"sysprep operation {name} dropped: {why} (name it in sysprep.operations to keep it)")
    out_dir = plan.output_dir
    if _up_to_date(plan, options):
        plan.up_to_date = True
        rep.message(f"nothing to do: {out_dir} is up to date with {loaded.path}")
        return BuildResult(plan, manifest=out_dir / "manifest.json", nothing_to_do=True)
    if options.dry_run:
        return BuildResult(plan)
    choice = plan.backend
    verdict = accel.detect()
    facts: dict[str, Any] = {"definition": loaded.definition.name}
    if any(not layer.cached for layer in plan.layers):
        rep.message(f"backend: {choice.name} ({choice.reason})")
    parent: tuple[Path, str] = (base.path, base.format)
    for layer in plan.layers:
        t = time.monotonic()
        existing = None if options.no_cache else store.get(layer.key)
        if existing is not None:
            rep.stage(f"layer {layer.index}/{len(plan.layers)} {layer.name}: cached")
            store.touch(layer.key)
            parent = (existing, "qcow2")
            continue
        how = "backend chroot" if choice.name == "chroot" else f"accelerator {verdict.name}"
        rep.stage(f"layer {layer.index}/{len(plan.layers)} {layer.name}: {len(layer.ops)} step(s) ({how})")
        parent = (_build_layer(layer, parent, session=plan.session, store=store, reporter=rep, facts=facts),
                  "qcow2")
        timings[f"layer:{layer.name}"] = time.monotonic() - t
    if "guest" not in facts:
        cached = _cached_meta(store, plan)
        facts["guest"] = cached.get("guest") if isinstance(cached.get("guest"), dict) else None
        facts["backend"] = cached.get("backend", "appliance" if cached else None)
    results = _write_outputs(loaded, plan, parent, store=store, rep=rep, timings=timings,
                             patch=not options.no_cache)
    rep.stage(f"manifest: {out_dir / 'manifest.json'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    record = _manifest(plan, base, results, facts=facts, timings=timings, accel_name=verdict.name)
    record["backend"] = {"used": facts.get("backend"), "requested": plan.session.backend,
                         "reason": choice.reason}
    manifest = write_manifest(out_dir, record)
    write_sums(out_dir, [r.to_json() for r in results])
    result = BuildResult(plan, results, manifest, appliance.launch_count() - launches_before,
                         session_count() - sessions_before, facts.get("backend"), timings)
    run_boot = options.boot_test if options.boot_test is not None else bool(
        loaded.definition.test and loaded.definition.test.boot)
    if run_boot:
        result.boot = _boot_test(loaded, results, parent, rep, timings)
        record["timings"] = {k: round(v, 2) for k, v in timings.items()}
        write_manifest(out_dir, {**record, "boot_test": result.boot})
    return result


def _write_outputs(loaded: LoadedDefinition, plan: BuildPlan, final: tuple[Path, str], *, store: LayerStore,
                   rep: Reporter, timings: dict[str, float], patch: bool) -> list[ConvertResult]:
    """Every output in parallel; those the previous build made the same way are patched (rebuild.py)."""
    if not loaded.definition.outputs:
        return []
    out_dir = plan.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = _output_targets(loaded, out_dir)
    rep.stage(f"outputs: {len(targets)} in parallel -> {out_dir}")
    t = time.monotonic()
    previous = read_manifest(out_dir) if patch and final[1] == "qcow2" else None
    size = qemuimg.info(final[0], final[1]).virtual_size if previous else 0  # only a patch needs it
    with patch_updates(out_dir, previous, store=store, keys=[x.key for x in plan.layers], final=final[0],
                       virtual_size=size, targets=targets) as updates:
        results = convert_many(final[0], targets, source_format=final[1], force=True, updates=updates,
                               progress=lambda p, pct: rep.progress(p.target.path.name, pct))
    timings["outputs"] = time.monotonic() - t
    for r in results:
        if r.patched_bytes is not None:
            rep.message(f"{r.path.name}: patched the previous build's output ({format_size(r.patched_bytes)} "
                        f"changed) instead of converting {format_size(r.virtual_size)}")
        for note in r.notes:
            rep.warn(f"{r.path.name}: {note}")
    return results


def _boot_test(loaded: LoadedDefinition, results: list[ConvertResult], final: tuple[Path, str], rep: Reporter,
               timings: dict[str, float]) -> dict[str, Any]:
    from .boot.test import boot_test
    section = loaded.definition.test
    checks = [c.to_check() for c in section.checks] if section else []
    bootable = next((r for r in results if r.layout == "plain" and r.format in ("qcow2", "raw")), None)
    image, fmt = (bootable.path, bootable.format) if bootable else final
    rep.stage(f"boot test: {image.name}")
    t = time.monotonic()
    outcome = boot_test(image, fmt, checks=checks, progress=rep.message,
                        timeout_scale=(section.timeout / 300.0) if section and section.timeout else 1.0)
    timings["boot_test"] = time.monotonic() - t
    data: dict[str, Any] = outcome.to_dict()
    if not outcome.passed and (section is None or section.required):
        from .errors import ImgsmithError
        failed = [c for c in data.get("checks", []) if not c.get("passed")]
        raise ImgsmithError(f"boot test: {len(failed)} check(s) failed: "
                            + "; ".join(f"{c.get('run')!r}" for c in failed))
    return data
