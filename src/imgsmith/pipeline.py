"""The build: the only place that knows the order of stages.

    plan (keys only) -> source -> layers (customize steps; sysprep joins the last layer's
    session) -> outputs -> manifest -> boot test

The plan is decided first and without fetching anything (buildplan.py): a dry run
stops there, and so does an up-to-date rebuild. Each stage then decides for itself
whether it has work: a layer whose key is cached is reused. One guest session per
uncached layer. The stages report through typed events (events.py) and return typed
results; nothing here prints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .buildplan import BaseKey, BuildOptions, BuildPlan, PlannedLayer, plan_base, plan_build
from .cache.store import LayerStore
from .definition import LoadedDefinition
from .disk import qemuimg
from .disk.convert import ConvertResult, Plan, convert_many
from .disk.sizes import format_size
from .errors import HostIOError, ImgsmithError, ReadinessError, UsageError
from .events import Event, Message, Notice, Progress, Sink, StageFinished, StageKind, StageStarted, Warn, discard
from .guest.api import OSInfo
from .guest.facts import installed_packages, kernels
from .guest.session import open_guest
from .host import accel
from .manifest import outputs_unchanged, read_manifest, write_manifest, write_sums
from .ops.base import ApplyContext, Settings
from .paths import cache_root
from .rebuild import patch_updates
from .runner import apply_operations

if TYPE_CHECKING:
    from .sharing import Sharing

__all__ = ["BuildOptions", "BuildPlan", "BuildResult", "GuestFacts", "LayerOutcome", "build", "plan"]

log = logging.getLogger("imgsmith.build")


@dataclass(frozen=True)
class GuestFacts:
    """What the manifest records of the guest: its OS, kernels and installed packages (before sysprep)."""

    distro: str
    version: str
    product: str
    arch: str
    kernels: tuple[str, ...]
    packages: tuple[Any, ...]

    def to_json(self) -> dict[str, Any]:
        return {"distro": self.distro, "version": self.version, "product": self.product, "arch": self.arch,
                "kernels": list(self.kernels), "packages": list(self.packages)}

    @classmethod
    def from_json(cls, data: Any) -> GuestFacts | None:
        if not isinstance(data, dict):
            return None
        return cls(str(data.get("distro", "")), str(data.get("version", "")), str(data.get("product", "")),
                   str(data.get("arch", "")), tuple(data.get("kernels") or ()), tuple(data.get("packages") or ()))


@dataclass(frozen=True)
class LayerOutcome:
    """One layer: where it is, and (when built here) the session that made it."""

    layer: PlannedLayer
    path: Path
    cached: bool
    backend: str | None = None  # the backend that ran it (None when cached)
    launches: int = 0  # appliance launches it cost
    facts: GuestFacts | None = None
    seconds: float = 0.0
    os: OSInfo | None = None  # what the session found: a later layer's session starts from it


@dataclass(frozen=True)
class BaseRef:
    """The base image once it is here: the plan's key plus the file and its format."""

    key: BaseKey
    path: Path
    format: str


@dataclass
class BuildResult:
    plan: BuildPlan
    outputs: list[ConvertResult] = field(default_factory=list)
    manifest: Path | None = None
    layers: list[LayerOutcome] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    nothing_to_do: bool = False
    boot: dict[str, Any] | None = None
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # by output name: cloud, findings
    refused: list[str] = field(default_factory=list)  # outputs removed because their cloud would refuse them

    @property
    def launches(self) -> int:
        """Appliance launches this build cost."""
        return sum(x.launches for x in self.layers)

    @property
    def sessions(self) -> int:
        """Guest sessions of any backend (one per uncached layer)."""
        return sum(1 for x in self.layers if not x.cached)

    @property
    def backend(self) -> str | None:
        """The backend the uncached layers ran with."""
        return next((x.backend for x in reversed(self.layers) if x.backend), None)

    @property
    def facts(self) -> GuestFacts | None:
        return next((x.facts for x in reversed(self.layers) if x.facts), None)


@contextlib.contextmanager
def _stage(emit: Sink, started: StageStarted, timings: dict[str, float] | None = None,
           timing_key: str | None = None) -> Iterator[None]:
    """Emit the stage's start, and its end with the wall time (also on failure: the renderer marks it)."""
    emit(started)
    t = time.monotonic()
    yield
    seconds = time.monotonic() - t
    if timings is not None and timing_key:
        timings[timing_key] = seconds
    emit(StageFinished(started.kind, seconds))


@contextlib.contextmanager
def _doing(what: str) -> Iterator[None]:
    """An OSError of the host (ENOSPC, EACCES, EROFS) becomes one line naming the path and *what*."""
    try:
        yield
    except OSError as exc:
        raise HostIOError(what, exc) from exc


def plan(loaded: LoadedDefinition, options: BuildOptions = BuildOptions(), sharing: Sharing | None = None
         ) -> BuildPlan:
    """The plan of a build (keys, cache hits, why each miss runs) without fetching or building anything."""
    cache = options.cache_dir or cache_root()
    store = LayerStore(cache / "layers")
    result = plan_build(loaded, options, plan_base(loaded, cache), store)
    sharing = sharing or _sharing(options, store, cache)
    if sharing is not None:
        sharing.annotate(result, no_cache=options.no_cache)
    result.up_to_date = _up_to_date(result, options)
    return result


def _sharing(options: BuildOptions, store: LayerStore, cache: Path) -> Sharing | None:
    """The remote layer cache of this host (cache/config.py), when one is configured."""
    if options.remote is None:
        return None
    from .cache.remote import RemoteCache
    from .sharing import Sharing
    return Sharing(store, RemoteCache(options.remote), cache)


def _fetch_base(loaded: LoadedDefinition, cache: Path, key: BaseKey, emit: Sink, sharing: Sharing | None = None
                ) -> BaseRef:
    """Bring the base image here (verify a local file, download, or bootstrap): only when a stage needs it.

    With a remote cache, a base image that is not here is pulled from it when another
    host put it there, instead of downloaded or bootstrapped again.
    """
    from .disk.qemuimg import probe_format
    from .source import base as base_src
    src = loaded.definition.source
    if src.file is not None:
        path = (loaded.base_dir / src.file).resolve()
        if src.checksum:
            img = base_src.resolve_file(path, key.checksum, fmt=src.format)
            return BaseRef(key, img.path, img.format)
        return BaseRef(key, path, src.format or probe_format(path))
    if src.url is not None:
        with _stage(emit, StageStarted(StageKind.SOURCE, key.origin)):
            img = base_src.resolve_url(src.url, key.checksum, checksum_url=None, cache_dir=cache, fmt=src.format,
                                       progress=lambda phase, done, total: emit(Progress(
                                           phase, 100.0 * done / total if total else 0.0, done, total)),
                                       fill=None if sharing is None else (
                                           lambda dest, expected: sharing.fill_base(key, dest, emit, expected)))
        return BaseRef(key, img.path, img.format)
    from .source.bootstrap import bootstrap_image
    assert src.bootstrap is not None
    spec = src.bootstrap
    with _stage(emit, StageStarted(StageKind.SOURCE, f"bootstrap {spec.describe()}")):
        path = bootstrap_image(spec, cache_dir=cache / "bootstrap", progress=lambda m: emit(Message(m)),
                               fill=None if sharing is None else (lambda dest: sharing.fill_base(key, dest, emit)))
    return BaseRef(key, path, probe_format(path))


def _guest_facts(guest: Any) -> GuestFacts:
    info = guest.os
    return GuestFacts(info.distro, f"{info.major}.{info.minor}", info.product_name, info.arch,
                      tuple(kernels(guest)), tuple(installed_packages(guest)))


def _build_layer(plan: BuildPlan, layer: PlannedLayer, parent: tuple[Path, str], *, store: LayerStore,
                 emit: Sink, known: OSInfo | None = None) -> LayerOutcome:
    """One guest session (one appliance launch, or a chroot): the layer's steps, then (last layer) sysprep.

    The layer is published only on success. Its key does not depend on the backend:
    both give the same guest, so a layer built either way serves both.
    """
    from .sysprep.run import apply_sysprep
    loaded = plan.definition
    meta: dict[str, Any] = {"definition": loaded.definition.name, "layer": layer.name,
                            "parent_key": layer.parent_key, "token": layer.token}
    found: dict[str, Any] = {}
    start = time.monotonic()

    def apply(path: Path) -> None:
        if layer.resize:
            emit(Message(f"growing the disk to {layer.resize}"))
        opened = plan.session.for_layer(grow_to=layer.resize, known=known, memsize=layer.memsize)
        with open_guest(path, "qcow2", opened, message=lambda m: emit(Message(m))) as guest:
            found["os"] = guest.os
            meta["backend"] = found["backend"] = guest.backend
            ctx = ApplyContext(guest=guest, settings=Settings(), message=lambda m: emit(Message(m)),
                               warn=lambda m: emit(Warn(m)), output=lambda m: emit(Notice(m)))
            apply_operations(ctx, layer.ops)
            # Facts before sysprep: its device operations (fs-uuids, lvm-uuids) unmount the guest.
            facts = _guest_facts(guest)
            meta["guest"] = facts.to_json()
            found["facts"] = facts
            if layer.sysprep:
                sysprep = loaded.sysprep
                assert sysprep is not None
                with _stage(emit, StageStarted(StageKind.SYSPREP, f"{len(layer.sysprep)} operations")):
                    apply_sysprep(ctx, layer.sysprep, options=sysprep.options)

    path = Path(store.build(layer.key, parent[0], parent[1], meta, apply))
    backend = found.get("backend")
    launches = 1 if backend == "appliance" else 0  # the grow runs in the same session: no launch of its own
    return LayerOutcome(layer, path, False, backend, launches, found.get("facts"), time.monotonic() - start,
                        found.get("os"))


def _reuse_local(store: LayerStore, layer: PlannedLayer, emit: Sink) -> Path | None:
    """The cached layer if its bytes are the published ones; a damaged one is evicted (one Warn)."""
    found = store.get(layer.key)
    if found is None:
        return None
    problem = store.verify(layer.key)
    if problem is None:
        return found
    removed = store.evict(layer.key)
    more = f" and {len(removed) - 1} layer(s) built on it" if len(removed) > 1 else ""
    emit(Warn(f"layer {layer.index} {layer.name}: {problem}; evicted it{more}, rebuilding"))
    return None


def _layers(plan: BuildPlan, base: BaseRef, store: LayerStore, emit: Sink, *, timings: dict[str, float],
            no_cache: bool, sharing: Sharing | None = None) -> list[LayerOutcome]:
    """Every layer in order: reuse the cached ones (bytes checked), pull what the remote has, build the others."""
    how = ""  # decided at the first layer that runs: a build whose layers are all cached needs no backend
    parent: tuple[Path, str] = (base.path, base.format)
    outcomes: list[LayerOutcome] = []
    count = len(plan.layers)
    for layer in plan.layers:
        existing, detail = None if no_cache else _reuse_local(store, layer, emit), "cached"
        if existing is None and sharing is not None and layer.source == "remote":
            existing, detail = sharing.pull(layer, parent, emit), f"pulled from {sharing.remote.name}"
        if existing is not None:
            emit(StageStarted(StageKind.LAYER, detail, layer.index, count, layer.name, cached=True))
            emit(StageFinished(StageKind.LAYER, 0.0))
            store.touch(layer.key)
            outcomes.append(LayerOutcome(layer, existing, True))
            parent = (existing, "qcow2")
            continue
        if not how:
            choice = plan.backend
            emit(Message(f"backend: {choice.name} ({choice.reason})"))
            how = "backend chroot" if choice.name == "chroot" else f"accelerator {accel.detect().name}"
        started = StageStarted(StageKind.LAYER, f"{len(layer.ops)} step(s) ({how})", layer.index, count, layer.name)
        with _stage(emit, started, timings, f"layer:{layer.name}"):
            if layer.miss:
                emit(Message(f"layer {layer.index} {layer.name} runs: {layer.miss}"))
            known = next((x.os for x in reversed(outcomes) if x.os is not None), None)
            outcome = _build_layer(plan, layer, parent, store=store, emit=emit, known=known)
        outcomes.append(outcome)
        parent = (outcome.path, "qcow2")
    return outcomes


def _pull(sharing: Sharing, plan: BuildPlan, emit: Sink, timings: dict[str, float]) -> None:
    """The layers the plan takes from the remote, downloaded in parallel (each checked) before the layers run."""
    wanted = [x for x in plan.layers if x.source == "remote" and not x.cached]
    if not wanted:
        return
    started = StageStarted(StageKind.PULL, f"{len(wanted)} layer(s) in parallel from {sharing.remote.name}")
    with _stage(emit, started, timings, "pull"):
        sharing.prefetch(plan, emit)


def _shared_layers(plan: BuildPlan, base: BaseRef, store: LayerStore, emit: Sink, *, timings: dict[str, float],
                   no_cache: bool, sharing: Sharing | None) -> list[LayerOutcome]:
    """The layers, with a remote cache around them: its layers pulled first, what it lacks pushed after."""
    if sharing is None:
        return _layers(plan, base, store, emit, timings=timings, no_cache=no_cache)
    try:
        _pull(sharing, plan, emit, timings)
        layers = _layers(plan, base, store, emit, timings=timings, no_cache=no_cache, sharing=sharing)
    finally:
        sharing.close()
    _push(sharing, plan, layers, (base.path, base.format), emit=emit, timings=timings)
    return layers


def _push(sharing: Sharing, plan: BuildPlan, layers: list[LayerOutcome], base: tuple[Path, str], *, emit: Sink,
          timings: dict[str, float]) -> None:
    """Layers the remote lacks go up after they are published here (sharing.py says which may)."""
    t = time.monotonic()
    if plan.definition.definition.source.file is None and sharing.push_base(plan.base, base[0], emit):
        timings["push"] = time.monotonic() - t
    pushed = sharing.push(plan, [(x.layer, x.path) for x in layers], base, emit)
    if pushed:
        timings["push"] = time.monotonic() - t
        emit(Message(f"pushed {len(pushed)} layer(s) to {sharing.remote.name}"))


def _cached_facts(store: LayerStore, plan: BuildPlan) -> tuple[GuestFacts | None, str | None]:
    """The last layer's recorded guest facts and backend, when every layer came from the cache."""
    if not plan.layers:
        return None, None
    try:
        meta = json.loads((store.root / plan.layers[-1].key / "meta.json").read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(meta, dict):
        return None, None
    return GuestFacts.from_json(meta.get("guest")), str(meta.get("backend", "appliance"))


def _up_to_date(plan: BuildPlan, options: BuildOptions) -> bool:
    """Every layer cached, and the outputs present and matching a manifest of the same definition."""
    previous = read_manifest(plan.output_dir)
    return (not options.no_cache and all(layer.cached for layer in plan.layers) and previous is not None
            and previous.get("definition", {}).get("sha256") == plan.definition.text_hash
            and [x["key"] for x in previous.get("layers", [])] == [x.key for x in plan.layers]
            and outputs_unchanged(plan.output_dir, previous))


def build(loaded: LoadedDefinition, options: BuildOptions = BuildOptions(), emit: Sink = discard) -> BuildResult:
    """Build *loaded*: the stages in order; see the module docstring."""
    timings: dict[str, float] = {}
    cache = options.cache_dir or cache_root()
    store = LayerStore(cache / "layers")
    sharing = _sharing(options, store, cache)
    the_plan = plan(loaded, options, sharing)
    for line in sharing.refusals if sharing else []:
        emit(Warn(line))
    for name, why in the_plan.dropped_sysprep:
        emit(Warn(f"sysprep operation {name} dropped: {why} (name it in sysprep.operations to keep it)"))
    out_dir = the_plan.output_dir
    if the_plan.up_to_date:
        emit(Message(f"nothing to do: {out_dir} is up to date with {loaded.path}"))
        return BuildResult(the_plan, manifest=out_dir / "manifest.json", nothing_to_do=True)
    if options.dry_run:
        return BuildResult(the_plan)
    t = time.monotonic()
    base = _fetch_base(loaded, cache, the_plan.base, emit, sharing)
    timings["source"] = time.monotonic() - t
    result = BuildResult(the_plan, timings=timings)
    result.layers = _shared_layers(the_plan, base, store, emit, timings=timings, no_cache=options.no_cache,
                                   sharing=sharing)
    final = (result.layers[-1].path, "qcow2") if result.layers else (base.path, base.format)
    facts, backend = result.facts, result.backend
    if facts is None:
        facts, backend = _cached_facts(store, the_plan)
    result.outputs = _write_outputs(the_plan, final, store=store, emit=emit, timings=timings,
                                    patch=not options.no_cache, sharing=sharing)
    result.checks = _check_outputs(the_plan, result.outputs, final, emit=emit, timings=timings, enabled=options.check)
    refused = _refused(result)
    if sharing is not None:
        _push_outputs(sharing, the_plan, result.outputs, emit=emit, timings=timings)
    # The accelerator the appliance sessions used; none ran (chroot, or every layer cached or pulled): no
    # probe, which boots a test guest on a host that has not cached its verdict yet (a fresh CI runner).
    accel_name = accel.detect().name if result.launches else None
    record = _manifest(the_plan, result, facts=facts, backend=backend, accel_name=accel_name)
    record["boot"] = boot_record(*final, facts)
    with _stage(emit, StageStarted(StageKind.MANIFEST, os.fspath(out_dir / "manifest.json"))), \
            _doing(f"writing the manifest into {out_dir}"):
        out_dir.mkdir(parents=True, exist_ok=True)
        result.manifest = write_manifest(out_dir, record)
        write_sums(out_dir, [r.to_json() for r in result.outputs])
    if refused:
        raise ReadinessError("\n".join(refused), hint="see docs/clouds.md; `imgsmith check IMAGE --for CLOUD` "
                             "shows every finding, and a `cloud-ready: CLOUD` step fixes the known ones")
    run_boot = options.boot_test if options.boot_test is not None else bool(
        loaded.definition.test and loaded.definition.test.boot)
    if run_boot:
        result.boot = _boot_test(loaded, result.outputs, final, emit, timings, trusted=the_plan.session.trusted)
        record["timings"] = {k: round(v, 2) for k, v in timings.items()}
        with _doing(f"writing the manifest into {out_dir}"):
            write_manifest(out_dir, {**record, "boot_test": result.boot})
    return result


def boot_record(path: Path, fmt: str, facts: GuestFacts | None) -> dict[str, Any]:
    """How the result boots, for the manifest (and publish, which takes the firmware from it).

    ``firmware`` is the layout's boot mode (bios, uefi or hybrid), ``secure_boot`` whether a
    signed shim is the ESP's boot loader, ``arch`` the guest's (inspection's, else the ESP's).
    """
    from .disk.layout import read_layout
    from .host.binfmt import normalise
    layout = read_layout(path, fmt)
    arch = normalise(facts.arch) if facts is not None and facts.arch not in ("", "unknown") else (
        layout.efi_arch or "amd64")
    return {"arch": arch, "firmware": layout.boot_mode, "secure_boot": layout.shim,
            "partition_table": layout.table, "firmwares": list(layout.firmwares)}


def _manifest(plan: BuildPlan, result: BuildResult, *, facts: GuestFacts | None, backend: str | None,
              accel_name: str | None) -> dict[str, Any]:
    d = plan.definition
    outputs = []
    for r in result.outputs:
        entry = r.to_json()
        entry["path"] = r.path.name
        entry["mtime_ns"] = r.path.stat().st_mtime_ns
        if r.path.name in result.checks:
            entry["checks"] = result.checks[r.path.name]
        outputs.append(entry)
    sysprep = d.sysprep
    return {
        "imgsmith": __version__,
        "name": d.definition.name,
        "definition": {"file": os.fspath(d.path), "sha256": d.text_hash, "overrides": d.overrides},
        "source": {"origin": plan.base.origin, "checksum": plan.base.checksum, "key": plan.base.key},
        "layers": [{"name": layer.name, "key": layer.key, "cached": layer.cached} for layer in plan.layers],
        "sysprep": {"operations": plan.layers[-1].sysprep if plan.layers else [],
                    "keep_user_accounts": sorted(sysprep.options.keep_users) if sysprep else [],
                    "remove_user_accounts": sorted(sysprep.options.remove_users) if sysprep else [],
                    "dropped": [{"operation": n, "why": w} for n, w in plan.dropped_sysprep]},
        "outputs": outputs,
        "refused": [{"path": name, "checks": result.checks[name]} for name in result.refused],
        "guest": facts.to_json() if facts else None,
        "accelerator": accel_name,
        "timings": {k: round(v, 2) for k, v in result.timings.items()},
        "backend": {"used": backend, "requested": plan.session.backend, "reason": _backend_reason(plan)},
    }


def _backend_reason(plan: BuildPlan) -> str:
    """Why the backend is what it is; or why it could not be used, when no layer needed it (all cached)."""
    try:
        return plan.backend.reason
    except UsageError as exc:
        return exc.message


def _push_outputs(sharing: Sharing, plan: BuildPlan, outputs: list[ConvertResult], *, emit: Sink,
                  timings: dict[str, float]) -> None:
    """The outputs worth sharing that were made here go up once they are judged and kept (sharing.py says which)."""
    t = time.monotonic()
    targets = {spec.name: spec.at(plan.output_dir) for spec in plan.definition.outputs}
    pushed = sharing.push_outputs(plan, [(targets[r.path.name], r) for r in outputs if r.path.name in targets], emit)
    if pushed:
        timings["push_outputs"] = time.monotonic() - t
        emit(Message(f"pushed {len(pushed)} output(s) to {sharing.remote.name}"))


def _write_outputs(plan: BuildPlan, final: tuple[Path, str], *, store: LayerStore, emit: Sink,
                   timings: dict[str, float], patch: bool, sharing: Sharing | None = None) -> list[ConvertResult]:
    """Every output in parallel: pulled where the remote cache has it (sharing.py), else converted; those
    the previous build made the same way are patched (rebuild.py)."""
    specs = plan.definition.outputs
    if not specs:
        return []
    out_dir = plan.output_dir
    with _doing(f"creating the output directory {out_dir}"):
        out_dir.mkdir(parents=True, exist_ok=True)
    targets = [spec.at(out_dir) for spec in specs]
    previous = read_manifest(out_dir) if patch and final[1] == "qcow2" else None
    started = StageStarted(StageKind.OUTPUTS, f"{len(targets)} in parallel -> {out_dir}")
    lock = threading.Lock()

    def say(event: Event) -> None:  # from the conversions' and the downloads' threads
        with lock:
            emit(event)

    def progress(p: Plan, pct: float) -> None:
        say(Progress(p.target.path.name, pct))

    with _stage(emit, started, timings, "outputs"), _doing(f"writing outputs into {out_dir}"), \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgsmith-outputs") as pool:
        # The outputs the remote has are downloaded while the others are converted.
        wanted = sharing.output_entries(plan, targets, emit) if sharing is not None else []
        pulling = pool.submit(sharing.pull_outputs, wanted, say) if sharing is not None and wanted else None
        rest = [t for t in targets if t.path not in {x.path for x, _ in wanted}]
        size = qemuimg.info(final[0], final[1]).virtual_size if previous and rest else 0  # only a patch needs it
        with patch_updates(out_dir, previous if rest else None, store=store, keys=[x.key for x in plan.layers],
                           final=final[0], virtual_size=size, targets=rest) as updates:
            made = convert_many(final[0], rest, source_format=final[1], force=True, updates=updates,
                                progress=progress) if rest else []
        pulled = pulling.result() if pulling is not None else {}
        failed = [t for t, _ in wanted if t.path not in pulled]  # refused blobs: converted after all
        if failed:
            made += convert_many(final[0], failed, source_format=final[1], force=True, progress=progress)
    by_path = {r.path: r for r in made} | pulled
    results = [by_path[t.path] for t in targets]
    for r in results:
        if r.patched_bytes is not None:
            emit(Message(f"{r.path.name}: patched the previous build's output ({format_size(r.patched_bytes)} "
                         f"changed) instead of converting {format_size(r.virtual_size)}"))
        for note in r.notes:
            emit(Warn(f"{r.path.name}: {note}"))
    return results


def _check_outputs(plan: BuildPlan, results: list[ConvertResult], final: tuple[Path, str], *, emit: Sink,
                   timings: dict[str, float], enabled: bool) -> dict[str, dict[str, Any]]:
    """Each output with a cloud preset, judged for that cloud (``imgsmith check``) in one read-only session."""
    from .clouds import PROFILES
    from .clouds.check import OutputCheck, check_outputs
    from .clouds.facts import ImageFacts
    todo = [r for r in results if r.preset in PROFILES]
    if not todo:
        return {}
    if not enabled:
        return {r.path.name: {"cloud": r.preset, "skipped": "--no-check"} for r in todo}
    clouds = sorted({str(r.preset) for r in todo})
    qcow2 = qemuimg.measure_qcow2(final[0], final[1]) if "tencent" in clouds else None
    wanted = [OutputCheck(r.path.name, str(r.preset),
                          ImageFacts(r.path, r.format, r.virtual_size, str(r.options.get("subformat", "")),
                                     qcow2 if r.preset == "tencent" else None)) for r in todo]
    started = StageStarted(StageKind.CHECKS, f"{len(wanted)} output(s) for {', '.join(clouds)}")
    with _stage(emit, started, timings, "checks"):
        backend, found = check_outputs(final[0], final[1], wanted, session=plan.session,
                                       message=lambda m: emit(Message(m)))
    out: dict[str, dict[str, Any]] = {}
    for o in wanted:
        findings = found.get(o.name, [])
        errors = [f.to_json() for f in findings if f.severity == "error"]
        warnings = [f.to_json() for f in findings if f.severity != "error"]
        out[o.name] = {"cloud": o.cloud, "backend": backend, "errors": errors, "warnings": warnings}
        for w in warnings:
            emit(Warn(f"{o.name}: {w['rule']}: {w['found']}"))
    return out


def _refused(result: BuildResult) -> list[str]:
    """Outputs their cloud would refuse are removed (nobody should upload them); one line per error."""
    lines: list[str] = []
    kept = []
    for r in result.outputs:
        errors = result.checks.get(r.path.name, {}).get("errors") or []
        if not errors:
            kept.append(r)
            continue
        for e in errors:
            name = f" ({e['error_name']})" if e.get("error_name") else ""
            fix = f" — fix: {e['fix']}" if e["fix"] else ""
            lines.append(f"{r.path.name}: {e['rule']}{name}: {e['found']}{fix}")
        for path in (r.path, r.path.with_name(r.path.name + ".sha256")):
            path.unlink(missing_ok=True)
    result.refused = [r.path.name for r in result.outputs if r not in kept]
    result.outputs = kept
    return lines


def _boot_test(loaded: LoadedDefinition, results: list[ConvertResult], final: tuple[Path, str], emit: Sink,
               timings: dict[str, float], *, trusted: bool) -> dict[str, Any]:
    """Boot the result once per firmware (``test: {firmware: [...]}``, else all its layout supports).

    The manifest's ``boot_test`` is the first boot's verdict; with several firmwares it also
    lists each one under ``by_firmware`` and ``passed`` holds only when all passed.
    """
    from .boot.machines import machines_for
    from .boot.test import Timeouts, boot_test
    section = loaded.definition.test
    checks = [c.to_check() for c in section.checks] if section else []
    bootable = next((r for r in results if r.layout == "plain" and r.format in ("qcow2", "raw")), None)
    image, fmt = (bootable.path, bootable.format) if bootable else final
    # One meaning of a timeout: the same as `imgsmith test --timeout` (the guest must finish booting within it).
    limits = Timeouts.for_total(accel.detect().name, section.timeout) if section and section.timeout else None
    verdicts: list[dict[str, Any]] = []
    for i, machine in enumerate(machines_for(image, fmt, section.firmware if section else ())):
        key = "boot_test" if i == 0 else f"boot_test_{machine.firmware}".replace("-", "_")
        with _stage(emit, StageStarted(StageKind.BOOT, f"{image.name} ({machine.firmware})"), timings, key):
            outcome = boot_test(image, fmt, checks=checks, progress=lambda m: emit(Message(m)), timeouts=limits,
                                cloud=section.cloud if section else None, machine=machine,
                                trusted=trusted)
        verdict = outcome.to_dict()
        verdicts.append(verdict)
        if not outcome.passed and (section is None or section.required):
            failed = [f"{c.get('run')!r}" for c in verdict.get("checks", []) if not c.get("passed")]
            failed += list(outcome.boot.findings) if outcome.boot else []
            raise ImgsmithError(f"boot test with {machine.firmware} firmware: {len(failed)} check(s) failed: "
                                + "; ".join(failed))
    data: dict[str, Any] = dict(verdicts[0])
    if len(verdicts) > 1:
        data["by_firmware"] = verdicts
        data["passed"] = all(v["passed"] for v in verdicts)
    return data

