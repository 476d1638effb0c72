"""Layers between this host and the rest of a farm: check before use, pull on a miss, push after.

The pipeline checks a local layer's bytes itself (``pipeline._reuse_local``); of this module it
asks two things, and imports it only when a remote cache is configured (the remote's crypto and
HTTP clients cost a start that needs neither):

- :meth:`Sharing.pull` — on a local miss, the remote entry for the key (signature
  checked), its blob (sha256 checked), rebased onto the local parent and published
  locally. Any refusal is one line and the layer is built instead.
- :meth:`Sharing.push` — after the layers, every layer of the chain the remote lacks,
  in order, unless it carries a secret or stands on one that does.
- :meth:`Sharing.fill_base` / :meth:`Sharing.push_base` — the base image when it was
  downloaded or bootstrapped (a local ``file:`` source is the user's own): keyed by its
  checksum or bootstrap recipe (:func:`~imgsmith.cache.remote.base_entry_key`), pulled
  before a download or a bootstrap is started, pushed after one.

- :meth:`Sharing.pull_outputs` / :meth:`Sharing.push_outputs` — the outputs whose conversion
  is CPU-bound (compressed qcow2, streamOptimized VMDK, OVA, GCP's tar.gz:
  :func:`worth_sharing`), keyed by the chain's layer blobs and the output's whole spec
  (:func:`output_entry_key`): downloaded in parallel instead of converted, pushed after.

:meth:`Sharing.annotate` decides the same before any work, for the plan: per layer
``local``, ``remote`` or ``build``, and whether it will be pushed; for the base image
``local``, ``remote`` or ``fetch``; per output ``remote`` or ``convert``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .buildplan import BaseKey, BuildPlan, PlannedLayer, PlannedOutput
from .cache.remote import RemoteCache, RemoteEntry, RemoteError, base_entry_key
from .cache.store import PULL_PREFIX, PUSH_PREFIX, LayerStore
from .disk import qemuimg
from .disk.convert import OUTPUT_BYTES_VERSION, ConvertResult, Target
from .disk.presets import Layout
from .events import Event, Message, Progress, Sink, Warn
from .host.files import atomic_write, fsync_dir, fsync_file, partial_dir, sha256_file, write_sha256_file
from .source.checksum import Checksum, file_digest

__all__ = ["Sharing", "carries_secret", "output_entry_key", "output_tools", "trusted_digest", "worth_sharing"]

OUTPUT_KEY_VERSION = 1


def worth_sharing(target: Target) -> bool:
    """True for outputs whose conversion is CPU-bound, so that downloading one beats making it.

    Compression is what costs: qcow2 with ``compression`` (zlib/zstd of every cluster),
    streamOptimized VMDK (deflate, single-threaded), an OVA (a streamOptimized VMDK inside)
    and GCP's tar.gz (gzip). Raw, fixed VHD, plain qcow2, VHDX and VDI are written at disk
    speed from the final layer, while their files are as large as the data (raw and fixed
    VHD: the whole virtual size, sparse): sending them would cost more than making them
    (docs/decisions.md, "Outputs through the remote cache", has the figures).
    """
    if target.layout is not Layout.PLAIN:
        return True
    if target.format.name == "qcow2":
        return target.options.get("compression", "off") != "off"
    return target.format.name == "vmdk" and target.options.get("subformat") == "streamOptimized"


def output_tools() -> dict[str, Any]:
    """What writes an output's bytes, for :func:`output_entry_key`: imgsmith's converter and qemu-img."""
    return {"converter": OUTPUT_BYTES_VERSION, "qemu-img": qemuimg.version()}


def output_entry_key(chain: Sequence[str], target: Target, tools: Mapping[str, Any] | None = None) -> str:
    """The remote key of one output: what its bytes follow from, and nothing else.

    *chain* is the blob digest of every layer under it, base first (each layer's remote
    entry names its parent's bytes, and layer 1's the base image's sha256). The spec is the
    format, its resolved options, the preset (its rules set the virtual size) and layout,
    the file name where it is written into the file (an OVA's descriptor and disk), and
    what writes the bytes: imgsmith's converter version and qemu-img's version. The output
    directory is not in it: two hosts write into different ones.
    """
    doc = {"v": OUTPUT_KEY_VERSION, "chain": list(chain), "format": target.format.name,
           "options": dict(sorted(target.options.items())),
           "preset": target.preset.name if target.preset else None, "layout": target.layout.value,
           "name": target.path.name if target.layout is Layout.OVA else None,
           "tools": dict(tools if tools is not None else output_tools())}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"imgsmith-output-v1\0{text}".encode()).hexdigest()


def carries_secret(token: object) -> bool:
    """True when a layer's token holds a secret hashed with this host's own key (a password, a secret file).

    A secret hashed with the team's shared key (``shared-secret:``, cache/config.py) does
    not count: every host holding that key computes the same layer key, and the team
    chose to share such layers.
    """
    if isinstance(token, str):
        return token.startswith("secret:")
    if isinstance(token, dict):
        return any(carries_secret(v) for v in token.values())
    if isinstance(token, list):
        return any(carries_secret(v) for v in token)
    return False


def trusted_digest(path: Path, memo: Path) -> str:
    """sha256 of a base image, read once and then trusted while its (inode, size, mtime) stay the same."""
    st = path.stat()
    stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    try:
        seen = json.loads(memo.read_text())
    except (OSError, ValueError):
        seen = {}
    entry = seen.get(os.fspath(path)) if isinstance(seen, dict) else None
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    digest = sha256_file(path)
    seen = seen if isinstance(seen, dict) else {}
    seen[os.fspath(path)] = {"stamp": stamp, "sha256": digest}
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(memo, json.dumps(seen))
    return digest


_SHARED_META = ("definition", "layer", "parent_key", "token", "backend", "guest")
"""What a pushed entry tells of its layer (meta.json less this host's paths and times)."""


class Sharing:
    """One build's use of the remote cache (see the module docstring); *cache* is the cache root."""

    def __init__(self, store: LayerStore, remote: RemoteCache, cache: Path, *, workers: int = 4) -> None:
        self.store = store
        self.remote = remote
        self.cache = cache
        self.workers = workers  # parallel downloads of a build's missing layers (prefetch)
        self.refusals: list[str] = []  # one line per remote entry the plan refused, for the build to say
        self._planned: dict[str, RemoteEntry] = {}  # the entries the plan chose, by layer key
        self._fetched: dict[str, tuple[Path, str | None]] = {}  # prefetched blobs: (file, why it is refused)
        self._said_unsigned = False

    def _lookup(self, key: str) -> tuple[RemoteEntry | None, str | None]:
        try:
            return self.remote.lookup(key)
        except RemoteError as exc:
            return None, str(exc)

    # the plan

    def annotate(self, plan: BuildPlan, *, no_cache: bool) -> None:
        """Set each layer's ``source`` (local, remote, build) and ``share`` (push, or why not)."""
        parent_blob: str | None = None
        parent_source = "base"
        self.refusals = []
        secret_below = False
        for layer in plan.layers:
            layer.source, entry = self._source(plan, layer, parent_source, parent_blob, no_cache)
            parent_source = layer.source
            if entry is not None:
                parent_blob = entry.blob
                self._planned[layer.key] = entry
            else:
                meta = self.store.meta(layer.key) if layer.source == "local" else None
                parent_blob = str(meta["blob"]) if meta and meta.get("blob") else None
            layer.share = self._share_note(layer, secret_below)
            secret_below = secret_below or carries_secret(layer.token)
        plan.base_source = self._base_source(plan)
        plan.outputs = self._plan_outputs(plan)

    def _base_source(self, plan: BuildPlan) -> str:
        """``local`` (a file, or cached here), ``remote`` (another host pushed it) or ``fetch``."""
        from .source.base import cached_download
        src = plan.definition.definition.source
        if src.file is not None:
            return "local"
        if plan.base.key.startswith("bootstrap:"):
            here = (self.cache / "bootstrap" / f"{plan.base.key.removeprefix('bootstrap:')}.qcow2").is_file()
        else:
            here = cached_download(self.cache, plan.base.key) is not None
        if here:
            return "local"
        entry, _ = self._lookup(base_entry_key(plan.base.key))
        return "remote" if entry is not None else "fetch"

    def _plan_outputs(self, plan: BuildPlan) -> list[PlannedOutput]:
        """Per output: ``remote`` when its entry is there for the chain's bytes, else ``convert``; and its push."""
        chain = self._chain(plan, planned=True)
        note = self._output_note(plan)
        out: list[PlannedOutput] = []
        for spec in plan.definition.outputs:
            planned = PlannedOutput(spec.name, spec.label)
            target = spec.at(plan.output_dir)
            if not worth_sharing(target):
                planned.share = "not shared: converting it costs less than sending it"
                out.append(planned)
                continue
            planned.share = note
            if chain is not None:
                planned.key = output_entry_key(chain, target)
                entry, why = self._lookup(planned.key)
                if entry is not None:
                    planned.source, planned.share = "remote", None
                elif why:
                    planned.share = f"the remote entry is refused: {why}; {note}"
            out.append(planned)
        return out

    def _output_note(self, plan: BuildPlan) -> str:
        """Whether a converted output goes up: as its last layer does (secrets, push settings); never without one."""
        if not plan.layers:
            return "not pushed: it is converted straight from the base image"
        last = plan.layers[-1].share or ""
        if last.startswith(("push", "pushed")):
            return last
        return "not pushed: " + last.removeprefix("not pushed: ")

    def _chain(self, plan: BuildPlan, *, planned: bool = False) -> list[str] | None:
        """Every layer's blob digest, base first, or None when a layer's bytes are not the remote's.

        A layer's blob is recorded here once it is pushed or pulled; *planned* (before the
        layers ran) also takes the entry a ``remote`` layer will be pulled from, and counts
        a layer that will be built as unknown.
        """
        blobs: list[str] = []
        for layer in plan.layers:
            blob: object = None
            if planned and layer.source == "remote" and layer.key in self._planned:
                blob = self._planned[layer.key].blob
            elif not planned or layer.source == "local":
                meta = self.store.meta(layer.key)
                blob = meta.get("blob") if meta else None
            if not blob:
                return None
            blobs.append(str(blob))
        return blobs or None

    def _source(self, plan: BuildPlan, layer: PlannedLayer, parent_source: str, parent_blob: str | None,
                no_cache: bool) -> tuple[str, RemoteEntry | None]:
        if layer.cached:
            return "local", None
        if no_cache or parent_source == "build":
            return "build", None
        entry, why = self._lookup(layer.key)
        if entry is None:
            if why:
                layer.miss = f"{layer.miss}; the remote entry is refused: {why}"
                self.refusals.append(f"layer {layer.index} {layer.name}: remote layer {layer.key[:12]} refused: "
                                     f"{why}; building it")
            return "build", None
        # The base image's bytes are compared when the layer is pulled (the base may not be here yet).
        if layer.index > 1 and entry.parent.get("blob") != parent_blob:
            layer.miss = f"{layer.miss}; the remote layer was made on other bytes of its parent"
            return "build", None
        layer.miss = None
        return "remote", entry

    def _share_note(self, layer: PlannedLayer, secret_below: bool) -> str:
        if carries_secret(layer.token):
            return "not pushed: it carries a secret (put secrets in the last layer)"
        if secret_below:
            return "not pushed: it is built on a layer that carries a secret"
        if not self.remote.push_enabled:
            return "not pushed: pushing is off (--cache-push, or push = true in the config)"
        if self.remote.signer is None:
            return "pushed unsigned: no signing-key is configured (readers need --cache-trust-unsigned)"
        return "push"

    # pulling

    def _parent_identity(self, layer: PlannedLayer, parent: tuple[Path, str]) -> dict[str, str] | None:
        """What the layer's parent is, as an entry names it: its blob, or the base image's sha256."""
        if layer.index == 1:
            return {"key": layer.parent_key, "sha256": trusted_digest(parent[0], self.cache / "base-digests.json")}
        meta = self.store.meta(layer.parent_key)
        blob = meta.get("blob") if meta else None
        return {"key": layer.parent_key, "blob": str(blob)} if blob else None

    def prefetch(self, plan: BuildPlan, emit: Sink) -> int:
        """Download the blobs of every layer the plan pulls, in parallel, each checked; how many were asked.

        Each layer's download is a Progress row of its own (label ``layer N NAME``, bytes
        done and total). A blob whose bytes are not its entry's is kept out (its refusal
        is said when the layer is pulled, and the layer is built). The files wait in the
        layer store's root until :meth:`pull` adopts them; :meth:`close` removes the rest.
        """
        todo = [(x, self._planned[x.key]) for x in plan.layers
                if x.source == "remote" and x.key in self._planned and self.store.get(x.key) is None]
        if not todo:
            return 0
        self.store.root.mkdir(parents=True, exist_ok=True)
        lock = threading.Lock()

        def locked(event: Event) -> None:  # the sink is called from the pool's threads
            with lock:
                emit(event)

        def one(layer: PlannedLayer, entry: RemoteEntry) -> tuple[str, tuple[Path, str | None]]:
            dest = self.store.root / f"{PULL_PREFIX}{layer.key}-{os.getpid()}"
            try:
                problem = self.remote.fetch(entry, dest, _byte_progress(f"layer {layer.index} {layer.name}",
                                                                        entry.size, locked))
            except (RemoteError, OSError) as exc:
                dest.unlink(missing_ok=True)
                problem = str(exc)
            return layer.key, (dest, problem)

        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(todo))),
                                thread_name_prefix="imgsmith-pull") as pool:
            self._fetched.update(pool.map(lambda x: one(*x), todo))
        return len(todo)

    def close(self) -> None:
        """Remove prefetched blobs no layer adopted (a build that stopped early)."""
        for path, _ in self._fetched.values():
            path.unlink(missing_ok=True)
        self._fetched.clear()

    def _fill(self, entry: RemoteEntry, dest: Path) -> str | None:
        """Put *entry*'s checked blob at *dest*: the prefetched file, else a download now; why not, or None."""
        fetched = self._fetched.pop(entry.key, None)
        if fetched is None:
            return self.remote.fetch(entry, dest)
        path, problem = fetched
        if problem is None:
            os.replace(path, dest)
        return problem

    def pull(self, layer: PlannedLayer, parent: tuple[Path, str], emit: Sink) -> Path | None:
        """The layer from the remote, verified and rebased onto *parent*; None (said once) to build it."""
        entry, why = (self._planned[layer.key], None) if layer.key in self._planned else self._lookup(layer.key)
        where = f"layer {layer.index} {layer.name}: remote layer {layer.key[:12]}"
        if entry is None:
            emit(Warn(f"{where} refused: {why}; building it") if why else
                 Message(f"{where} is gone from {self.remote.name}; building it"))
            return None
        identity = self._parent_identity(layer, parent)
        if identity is None or any(entry.parent.get(k) != v for k, v in identity.items()):
            emit(Message(f"{where} was made on other bytes of its parent; building it"))
            return None
        meta: dict[str, Any] = {**{k: v for k, v in entry.meta.items() if k not in ("parent_key",)},
                                "parent_key": layer.parent_key, "token": layer.token, "blob": entry.blob,
                                "pulled_from": self.remote.name}
        refused: list[str] = []

        def fill(dest: Path) -> None:
            problem = self._fill(entry, dest)
            if problem is not None:
                refused.append(problem)
                raise _Refused(problem)

        try:
            path = self.store.adopt(layer.key, parent[0], parent[1], meta, fill)
        except _Refused:
            emit(Warn(f"{where} refused: {refused[0]}; building it"))
            return None
        except RemoteError as exc:
            emit(Warn(f"{where}: {exc}; building it"))
            return None
        emit(Message(f"{where}: pulled {entry.size} bytes from {self.remote.name}"))
        self.remote.touch(layer.key)
        return path

    # pushing

    def push(self, plan: BuildPlan, layers: list[tuple[PlannedLayer, Path]], base: tuple[Path, str],
             emit: Sink) -> list[str]:
        """Push the chain's layers the remote lacks, in order; the keys pushed. Failures are one Warn."""
        pushed: list[str] = []
        parent_fmt = base[1]
        self.store.sweep()  # a push killed earlier left its copy of a layer
        try:
            for layer, path in layers:
                if not (layer.share or "").startswith("push"):
                    break
                if not self._push_one(layer, path, parent_fmt, base=base, emit=emit, pushed=pushed):
                    break
                parent_fmt = "qcow2"
        except RemoteError as exc:
            emit(Warn(f"pushing to the remote cache failed: {exc}"))
        return pushed

    def _unsigned(self, emit: Sink) -> None:
        """Say once per build that what goes up is unsigned (push without a signing key: docs/build.md)."""
        if self.remote.signer is None and not self._said_unsigned:
            self._said_unsigned = True
            emit(Warn(f"pushing unsigned entries to {self.remote.name}: no signing-key is configured; other hosts "
                      "use them only with --cache-trust-unsigned"))

    def _push_one(self, layer: PlannedLayer, path: Path, parent_fmt: str, *, base: tuple[Path, str], emit: Sink,
                  pushed: list[str]) -> bool:
        """Push one layer unless the remote has it; False when the layers above it must not be pushed."""
        meta = self.store.meta(layer.key) or {}
        entry, why = self.remote.lookup(layer.key)
        if entry is not None or why is not None:
            if entry is not None and entry.blob == meta.get("blob"):
                return True
            emit(Message(f"layer {layer.index} {layer.name}: the remote has another build of {layer.key[:12]}; "
                         f"it and the layers above it are not pushed"))
            return False
        identity = self._parent_identity(layer, base)
        if identity is None:
            return False
        shared: dict[str, Any] = {k: meta[k] for k in _SHARED_META if k in meta}
        self._unsigned(emit)
        work = self.store.root / f"{PUSH_PREFIX}{layer.key}-{os.getpid()}"
        blob, won = self.remote.push(layer.key, path, parent_fmt, parent=identity, meta=shared, work=work)
        if not won:
            entry, _ = self.remote.lookup(layer.key)
            if entry is None or entry.blob != blob:
                emit(Message(f"layer {layer.index} {layer.name}: another host pushed {layer.key[:12]} first"))
                return False
        self.store.record(layer.key, blob=blob)
        pushed.append(layer.key)
        emit(Message(f"layer {layer.index} {layer.name}: pushed {layer.key[:12]} to {self.remote.name}"))
        return True


    # base images

    def fill_base(self, base: BaseKey, dest: Path, emit: Sink, expected: Checksum | None = None) -> bool:
        """Write the remote's copy of the base image to *dest*, checked (blob sha256, then *expected*); True if so."""
        where = f"base image {base.origin}"
        entry, why = self._lookup(base_entry_key(base.key))
        if entry is None:
            if why:
                emit(Warn(f"{where}: the remote copy is refused: {why}; fetching it"))
            return False
        try:
            problem = self.remote.fetch(entry, dest, _byte_progress("base image", entry.size, emit))
        except RemoteError as exc:
            problem = str(exc)
        if problem is None and expected is not None and file_digest(dest, expected.algo) != expected.hexdigest:
            problem = f"its bytes do not match the definition's {expected.algo} checksum"
        if problem is not None:
            dest.unlink(missing_ok=True)
            emit(Warn(f"{where}: the remote copy is refused: {problem}; fetching it"))
            return False
        emit(Message(f"{where}: pulled {entry.size} bytes from {self.remote.name}"))
        self.remote.touch(entry.key)
        return True

    def push_base(self, base: BaseKey, path: Path, emit: Sink) -> bool:
        """Push the base image unless the remote holds it (or pushing is off); True when pushed."""
        if not self.remote.push_enabled:
            return False
        key = base_entry_key(base.key)
        try:
            entry, why = self.remote.lookup(key)
            if entry is not None or why is not None:
                return False
            digest = "sha256:" + trusted_digest(path, self.cache / "base-digests.json")
            meta = {"kind": "base", "base": base.key, "origin": base.origin, "filename": path.name}
            self._unsigned(emit)
            _, won = self.remote.put(key, path, digest, parent={}, meta=meta)
        except RemoteError as exc:
            emit(Warn(f"pushing the base image to the remote cache failed: {exc}"))
            return False
        if won:
            emit(Message(f"base image {base.origin}: pushed to {self.remote.name}"))
        return won


    # outputs

    def output_entries(self, plan: BuildPlan, targets: Sequence[Target], emit: Sink
                       ) -> list[tuple[Target, RemoteEntry]]:
        """The targets the remote holds for this chain's bytes, with their entries (signature checked).

        A refused entry is one Warn (the output is converted). Lookups only: the pipeline
        starts these downloads and the other outputs' conversions at once.
        """
        chain = self._chain(plan)
        if chain is None:
            return []
        found: list[tuple[Target, RemoteEntry]] = []
        for target in targets:
            if not worth_sharing(target):
                continue
            entry, why = self._lookup(output_entry_key(chain, target))
            if entry is not None:
                found.append((target, entry))
            elif why:
                emit(Warn(f"output {target.path.name}: the remote copy is refused: {why}; converting it"))
        return found

    def pull_outputs(self, wanted: Sequence[tuple[Target, RemoteEntry]], emit: Sink) -> dict[Path, ConvertResult]:
        """Download *wanted* (:meth:`output_entries`) in parallel, each checked; the results by target path.

        Each download is a Progress row labelled with the output's name (as its conversion
        would be), lands in a hidden work directory beside the destination, is checked
        against its entry's sha256 and renamed into place with its ``.sha256`` file only
        then. An output whose blob is not its entry's is one Warn, and is left out (the
        pipeline converts it). *emit* must be safe to call from several threads.
        """
        if not wanted:
            return {}
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(wanted))),
                                thread_name_prefix="imgsmith-pull") as pool:
            done = list(pool.map(lambda x: self._pull_output(x[0], x[1], emit), wanted))
        return {r.path: r for r in done if r is not None}

    def _pull_output(self, target: Target, entry: RemoteEntry, emit: Sink) -> ConvertResult | None:
        start = time.monotonic()
        name = target.path.name
        digest = entry.blob.removeprefix("sha256:")
        try:
            with partial_dir(target.path) as work:
                disk = work / name
                problem = self.remote.fetch(entry, disk, _byte_progress(name, entry.size, emit))
                if problem is None:
                    fsync_file(disk)
                    write_sha256_file(work / "sha256", digest, name)
                    disk.replace(target.path)
                    (work / "sha256").replace(target.path.with_name(name + ".sha256"))
                    fsync_dir(target.path.parent)
        except (RemoteError, OSError) as exc:
            problem = str(exc)
        if problem is not None:
            emit(Warn(f"output {name}: the remote copy is refused: {problem}; converting it"))
            return None
        emit(Progress(name, 100.0, entry.size, entry.size))
        emit(Message(f"output {name}: pulled {entry.size} bytes from {self.remote.name} instead of converting it"))
        self.remote.touch(entry.key)
        meta = entry.meta
        return ConvertResult(target.path, target.format.name, target.preset.name if target.preset else None,
                             target.layout.value, int(meta.get("virtual_size") or 0), target.path.stat().st_size,
                             digest, time.monotonic() - start, tuple(str(n) for n in meta.get("notes") or ()),
                             dict(target.options), pulled_from=self.remote.name)

    def push_outputs(self, plan: BuildPlan, made: Sequence[tuple[Target, ConvertResult]], emit: Sink) -> list[str]:
        """Push the outputs made here that are worth sharing and that the remote lacks, in parallel; their names.

        Only on a chain whose every layer is on the remote (so never on a layer that carries
        a secret, unless the team's shared secret key made it shareable), and only when this
        host pushes. Failures are one Warn each: the build's outputs are already in place.
        """
        if not self.remote.push_enabled or not self._output_note(plan).startswith(("push", "pushed")):
            return []
        chain = self._chain(plan)
        todo = [(t, r) for t, r in made if r.pulled_from is None and worth_sharing(t)]
        if chain is None or not todo:
            return []
        self._unsigned(emit)
        last = plan.layers[-1]
        lock = threading.Lock()

        def say(event: Event) -> None:  # called from the pool's threads
            with lock:
                emit(event)

        def one(target: Target, result: ConvertResult) -> str | None:
            key = output_entry_key(chain, target)
            meta = {"kind": "output", "definition": plan.definition.definition.name, "output": result.path.name,
                    "format": result.format, "preset": result.preset, "layout": result.layout,
                    "options": dict(result.options), "virtual_size": result.virtual_size, "notes": list(result.notes)}
            try:
                entry, why = self.remote.lookup(key)
                if entry is not None or why is not None:
                    return None
                _, won = self.remote.put(key, result.path, "sha256:" + result.sha256,
                                         parent={"key": last.key, "blob": chain[-1]}, meta=meta)
            except (RemoteError, OSError) as exc:
                say(Warn(f"output {result.path.name}: pushing it to the remote cache failed: {exc}"))
                return None
            if won:
                say(Message(f"output {result.path.name}: pushed {key[:12]} to {self.remote.name}"))
            return result.path.name if won else None

        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(todo))),
                                thread_name_prefix="imgsmith-push") as pool:
            names = list(pool.map(lambda x: one(*x), todo))
        return [n for n in names if n is not None]


def _byte_progress(label: str, total: int, emit: Sink) -> Callable[[int], None]:
    """A download callback (bytes of one chunk) that emits Progress with the running count."""
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        emit(Progress(label, 100.0 * done[0] / total if total else 0.0, done[0], total or None))
    return step


class _Refused(Exception):
    """A pulled blob failed its check: the adoption is abandoned (nothing published)."""


