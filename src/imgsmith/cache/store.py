"""The content-addressed layer cache: one qcow2 overlay per cached layer, keyed by what made it.

Layout under ``root`` (``cache_root()/"layers"``)::

    <key>/layer.qcow2        the layer, read-only once published
    <key>/meta.json          created, last_used, parent key and path, definition name, token,
                             the layer file's sha256 (checked before every use: see verify())
    .tmp-<key>-<pid>/        a layer being built (never returned by get)
    .locks/<key>.lock        per-key flock: one builder per key, across processes and threads
    .pull-<key>-<pid>        a layer downloaded from the remote cache, not yet adopted
    .push-<key>-<pid>/       a layer's copy being uploaded to the remote cache

A key is the sha256 of a canonical JSON of ``{"v": LAYER_KEY_VERSION, "parent": parent key,
"token": token}``: the same parent plus the same operations and host-file digests give
the same key, and bumping :data:`LAYER_KEY_VERSION` retires every old layer at once.

Publication is atomic (the temp directory is renamed into place after fsync), so a
crash or SIGKILL leaves at most a ``.tmp-*`` directory, which :meth:`LayerStore.get`
ignores and the next :meth:`~LayerStore.building` of that key or any
:meth:`~LayerStore.prune` removes once no live builder holds the key's lock.

Each layer's backing file is the parent's ABSOLUTE path (the base image in the base
cache, or the parent layer). Moving or renaming the cache directory therefore breaks
every chain: :meth:`LayerStore.get` checks the whole chain still exists and treats a
broken one as a miss, deleting the unusable entries; the layers are simply rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import proc
from ..disk import qemuimg
from ..host.files import atomic_write, file_lock, fsync_dir, fsync_file, sha256_file, try_file_lock

__all__ = ["LAYER_KEY_VERSION", "PULL_PREFIX", "PUSH_PREFIX", "LayerEntry", "LayerStore", "MissReason"]

log = logging.getLogger("imgsmith.cache")

LAYER_KEY_VERSION = 1
"""Bump when the meaning of a key changes (layout, op semantics): old layers stop matching."""

LAYER_FILE = "layer.qcow2"
META_FILE = "meta.json"
_TMP = ".tmp-"
_TRASH = ".trash-"
PULL_PREFIX = ".pull-"
"""``.pull-<key>-<pid>``: a blob downloaded from the remote cache, waiting to be adopted (sharing.py)."""
PUSH_PREFIX = ".push-"
"""``.push-<key>-<pid>/``: the copy of a layer being uploaded to the remote cache (sharing.py)."""


# --- records -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerEntry:
    """One published layer as ``cache ls`` shows it; times are epoch seconds."""

    key: str
    path: Path
    size: int
    created: float
    last_used: float
    definition: str | None
    parent_key: str | None
    parent_path: str
    sha256: str | None = None  # recorded at publication (None: published before checksums were kept)
    blob: str | None = None  # digest of the layer as the remote cache holds it, once pushed or pulled

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "path": os.fspath(self.path), "size": self.size, "created": self.created,
                "last_used": self.last_used, "definition": self.definition, "parent_key": self.parent_key,
                "parent_path": self.parent_path, "sha256": self.sha256, "blob": self.blob}


@dataclass(frozen=True)
class MissReason:
    """Why a key is not cached: the nearest sibling (same parent) and the token paths that differ."""

    nearest: str | None
    differences: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _disk_usage(path: Path) -> int:
    """Bytes allocated on disk (sparse qcow2 files are much smaller than their apparent size)."""
    total = 0
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        with contextlib.suppress(OSError):
            total += p.lstat().st_blocks * 512
    return total


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write *data* to *path* atomically and durably, so readers never see half a file."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _remove_tree(path: Path) -> None:
    """Delete *path* so readers never see it half-removed: rename aside first, then rmtree."""
    trash = path.with_name(f"{_TRASH}{path.name}-{os.getpid()}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _token_diff(old: object, new: object, where: str = "") -> list[str]:
    """Paths (``steps[2].options``) at which two JSON values differ; ``token`` for the whole."""
    label = where or "token"
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{where}.{k}" if where else str(k)
            if k not in old or k not in new:
                out.append(sub)
            else:
                out += _token_diff(old[k], new[k], sub)
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        for i in range(max(len(old), len(new))):
            sub = f"{where}[{i}]"
            if i >= len(old) or i >= len(new):
                out.append(sub)
            else:
                out += _token_diff(old[i], new[i], sub)
        return out
    return [] if old == new else [label]


# --- the store -----------------------------------------------------------------------------------

class LayerStore:
    """Published layers under *root*, their locks, and the temp directories of builds in progress.

    *clock* gives epoch seconds (tests pass a fake). Methods are safe to call from
    several processes and threads at once; see the module docstring for the layout.
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.clock = clock

    # keys and paths

    def key(self, parent_key: str, token: object) -> str:
        """sha256 of the canonical JSON of the format version, *parent_key* and *token* (plain JSON data)."""
        try:
            text = _canonical({"v": LAYER_KEY_VERSION, "parent": parent_key, "token": token})
        except (TypeError, ValueError) as exc:
            raise TypeError(f"a layer cache token must be plain JSON data: {exc}") from exc
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _dir(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a layer key: {key!r}")
        return self.root / key

    def _lock_path(self, key: str) -> Path:
        return self.root / ".locks" / f"{key}.lock"

    def _meta(self, key: str) -> dict[str, Any] | None:
        """The published layer's metadata, or None when *key* is not (completely) published."""
        d = self._dir(key)
        try:
            data = json.loads((d / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not (d / LAYER_FILE).is_file():
            return None
        return data

    def _layer_key_of(self, backing: str) -> str | None:
        """The key of the layer at path *backing* if it lies in this store, else None (a base image)."""
        p = Path(backing)
        if p.name != LAYER_FILE or p.parent.parent != self.root.resolve():
            return None
        return p.parent.name

    # lookup

    def get(self, key: str) -> Path | None:
        """The layer's qcow2 if published and its whole backing chain still exists, else None.

        A chain broken by a removed base image or a moved cache is a miss, and its
        unusable entries are deleted so they are rebuilt (see the module docstring).
        """
        walked: list[str] = []
        k = key
        while True:
            meta = self._meta(k)
            if meta is None:
                if walked:  # an ancestor directory without its layer or meta: unusable too
                    walked.append(k)
                break
            walked.append(k)
            backing = str(meta.get("parent_path", ""))
            parent = self._layer_key_of(backing)
            if parent is None:
                if backing and os.path.exists(backing):
                    return self._dir(key) / LAYER_FILE
                log.info("layer %s: base image %s is gone; treating as a miss", k[:12], backing)
                break
            if parent in walked:
                break
            k = parent
        if walked:
            for broken in walked:
                self._delete(broken)
        return None

    def touch(self, key: str) -> None:
        """Record that *key* was just used, for least-recently-used pruning."""
        meta = self._meta(key)
        if meta is None:
            return
        meta["last_used"] = self.clock()
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile: nothing to record
            _write_json(self._dir(key) / META_FILE, meta)

    def entries(self) -> list[LayerEntry]:
        """Every published layer, oldest first (temp and broken directories are not listed)."""
        out: list[LayerEntry] = []
        if not self.root.is_dir():
            return out
        for d in self.root.iterdir():
            if d.name.startswith(".") or len(d.name) != 64:
                continue
            meta = self._meta(d.name)
            if meta is None:
                continue
            created = float(meta.get("created", 0.0))
            parent_key = meta.get("parent_key")
            out.append(LayerEntry(
                key=d.name, path=d / LAYER_FILE, size=_disk_usage(d), created=created,
                last_used=float(meta.get("last_used", created)),
                definition=str(meta["definition"]) if meta.get("definition") is not None else None,
                parent_key=str(parent_key) if parent_key is not None else None,
                parent_path=str(meta.get("parent_path", "")),
                sha256=str(meta["sha256"]) if meta.get("sha256") else None,
                blob=str(meta["blob"]) if meta.get("blob") else None,
            ))
        out.sort(key=lambda e: (e.created, e.key))
        return out

    # building

    @contextlib.contextmanager
    def building(self, key: str, parent: Path, parent_fmt: str, meta: dict[str, Any]) -> Iterator[Path]:
        """Yield a fresh qcow2 overlay over *parent* to modify; publish it as *key* on normal exit.

        Holds the key's lock throughout, so one builder per key runs at a time. *meta*
        is stored in meta.json; the store reads its ``parent_key``, ``definition`` and
        ``token`` fields (``cache ls``, pruning display, :meth:`explain_miss`) and, when
        both ``parent_key`` and ``token`` are given, checks they hash to *key*. On an
        exception the overlay is deleted and nothing is published. If the key was
        published by someone else while we waited for the lock, the overlay is still
        yielded (a with-block cannot be skipped) but discarded at exit, and theirs is
        kept: call :meth:`get` inside the block, or use :meth:`build`, to skip the work.
        """
        self._check_meta(key, meta)
        with file_lock(self._lock_path(key)):
            if self.get(key) is not None:
                log.info("layer %s was published by another build meanwhile; this one will be discarded",
                         key[:12])
            with self._building_locked(key, parent, parent_fmt, meta) as layer:
                yield layer

    def build(self, key: str, parent: Path, parent_fmt: str, meta: dict[str, Any],
              apply: Callable[[Path], None]) -> Path:
        """The layer for *key*, building it with *apply(overlay)* only if no one has (get-or-build once).

        Two processes asking for the same key at once: one runs *apply*, the other waits
        for the key's lock, then finds the layer published and returns it. A layer found
        in the cache is marked used (:meth:`touch`).
        """
        self._check_meta(key, meta)
        found = self.get(key)
        if found is None:
            with file_lock(self._lock_path(key)):
                found = self.get(key)
                if found is None:
                    with self._building_locked(key, parent, parent_fmt, meta) as layer:
                        apply(layer)
                else:
                    log.info("layer %s was built by another process meanwhile; reusing it", key[:12])
        if found is not None:
            self.touch(key)
            return found
        published = self.get(key)
        if published is None:  # pragma: no cover - only if the cache is deleted under us
            raise FileNotFoundError(f"layer {key} vanished right after it was published")
        return published

    def _check_meta(self, key: str, meta: dict[str, Any]) -> None:
        self._dir(key)
        if "parent_key" in meta and "token" in meta and self.key(meta["parent_key"], meta["token"]) != key:
            raise ValueError(f"layer {key[:12]}: meta parent_key/token do not hash to the key")

    @contextlib.contextmanager
    def _building_locked(self, key: str, parent: Path, parent_fmt: str, meta: dict[str, Any], *,
                         overlay: bool = True) -> Iterator[Path]:
        """The body of :meth:`building` for a caller that already holds the key's lock.

        Without *overlay* the yielded path does not exist yet: the caller puts a layer
        there (a pulled one, see :meth:`adopt`).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f"{_TMP}{key}-*"):  # ours to sweep: we hold the key's lock
            shutil.rmtree(stale, ignore_errors=True)
        self._sweep()
        parent = Path(parent).resolve()
        tmp = self.root / f"{_TMP}{key}-{os.getpid()}"
        tmp.mkdir()
        try:
            # Lets prune see which layer this build stands on, so it keeps it.
            _write_json(tmp / "building.json", {"parent_path": os.fspath(parent), "pid": os.getpid()})
            layer = tmp / LAYER_FILE
            if overlay:
                qemuimg.create_overlay(parent, parent_fmt, layer)
            yield layer
            self._publish(key, tmp, parent, parent_fmt, meta)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _publish(self, key: str, tmp: Path, parent: Path, parent_fmt: str, meta: dict[str, Any]) -> None:
        """Make *tmp* the entry for *key*: read-only layer, meta.json, fsync, one rename."""
        final = self._dir(key)
        if self.get(key) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if final.exists():  # an incomplete or broken entry: we hold the lock, so replace it
            _remove_tree(final)
        layer = tmp / LAYER_FILE
        os.chmod(layer, 0o444)
        fsync_file(layer)
        now = self.clock()
        # The digest of the bytes as published: verify() compares before every use.
        record = {**meta, "format_version": LAYER_KEY_VERSION, "key": key, "created": now, "last_used": now,
                  "parent_path": os.fspath(parent), "parent_format": parent_fmt, "sha256": sha256_file(layer)}
        (tmp / "building.json").unlink(missing_ok=True)
        _write_json(tmp / META_FILE, record)  # fsyncs tmp's entries too
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return
        fsync_dir(self.root)
        log.info("published layer %s", key[:12])

    def adopt(self, key: str, parent: Path, parent_fmt: str, meta: dict[str, Any],
              fill: Callable[[Path], None]) -> Path:
        """Publish as *key* a layer made elsewhere: *fill(path)* writes it (a pulled, verified blob).

        Same lock, temp directory and atomic publication as a build; the layer's backing
        file is then set to *parent* without reading it (``qemu-img rebase -u``), since
        the layer was made on a parent with the same bytes at another path.
        """
        self._check_meta(key, meta)
        with file_lock(self._lock_path(key)):
            found = self.get(key)
            if found is None:
                with self._building_locked(key, parent, parent_fmt, meta, overlay=False) as layer:
                    fill(layer)
                    qemuimg.rebase_unsafe(layer, Path(parent).resolve(), parent_fmt)
                found = self.get(key)
        if found is None:  # pragma: no cover - only if the cache is deleted under us
            raise FileNotFoundError(f"layer {key} vanished right after it was published")
        return found

    def meta(self, key: str) -> dict[str, Any] | None:
        """The published layer's meta.json (a copy), or None."""
        return self._meta(key)

    def record(self, key: str, **fields: Any) -> None:
        """Add *fields* to a published layer's meta.json (the blob digest once it is pushed)."""
        with file_lock(self._lock_path(key)):
            meta = self._meta(key)
            if meta is not None:
                meta.update(fields)
                _write_json(self._dir(key) / META_FILE, meta)

    # integrity

    def verify(self, key: str) -> str | None:
        """Why the published layer's bytes are not the ones published (one line), or None if they are.

        A layer published before checksums were recorded cannot be checked and passes.
        """
        meta = self._meta(key)
        if meta is None:
            return f"layer {key[:12]} is not in the cache"
        expected = meta.get("sha256")
        if not expected:
            return None
        try:
            actual = sha256_file(self._dir(key) / LAYER_FILE)
        except OSError as exc:
            return f"layer {key[:12]} cannot be read: {exc.strerror or exc}"
        if actual != expected:
            return f"layer {key[:12]} is damaged: sha256 {actual[:16]}… instead of {str(expected)[:16]}…"
        return None

    def evict(self, key: str) -> list[str]:
        """Delete *key* and every layer built on it (their bytes only fit this parent); the keys removed."""
        entries = self.entries()
        parent_of = {e.key: self._layer_key_of(e.parent_path) for e in entries}
        doomed = {key}
        grew = True
        while grew:
            grew = False
            for k, parent in parent_of.items():
                if parent in doomed and k not in doomed:
                    doomed.add(k)
                    grew = True
        removed = []
        for k in sorted(doomed, key=lambda k: k != key):  # descendants after the damaged one
            if self._delete(k):
                removed.append(k)
        return removed

    # cleaning

    def _delete(self, key: str) -> bool:
        """Unpublish and delete *key* unless a builder holds its lock; True if it was removed."""
        lock = self._lock_path(key)
        with try_file_lock(lock) as free:
            if not free:
                return False
            existed = self._dir(key).exists()
            _remove_tree(self._dir(key))
            lock.unlink(missing_ok=True)
            return existed

    def _tmp_owner(self, tmp: Path) -> str | None:
        """The key a ``.tmp-<key>-<pid>`` directory is being built for, None if the name is not ours."""
        key = tmp.name[len(_TMP):].rsplit("-", 1)[0]
        return key if len(key) == 64 else None

    def sweep(self) -> None:
        """Remove what dead builds, pulls and pushes left behind (as every build of a layer does)."""
        self._sweep()

    def _sweep(self) -> set[str]:
        """Remove what dead builds and prunes left; return the layer keys live builds stand on.

        A temp directory is stale when its key's lock is free: a builder holds the lock
        for as long as its temp directory exists, and the kernel frees it when it dies.
        """
        in_use: set[str] = set()
        if not self.root.is_dir():
            return in_use
        for d in self.root.iterdir():
            if d.name.startswith((_TRASH, PULL_PREFIX, PUSH_PREFIX)):  # removed once their process is gone
                pid = d.name.rsplit("-", 1)[-1]
                if not pid.isdigit() or not proc.pid_alive(int(pid)):
                    shutil.rmtree(d, ignore_errors=True)
            elif d.name.startswith(_TMP) and (key := self._tmp_owner(d)) is not None:
                lock = self._lock_path(key)
                with try_file_lock(lock) as free:
                    if free:
                        log.info("removing %s left by a build that did not finish", d.name)
                        shutil.rmtree(d, ignore_errors=True)
                        if not self._dir(key).exists():
                            lock.unlink(missing_ok=True)
                        continue
                with contextlib.suppress(OSError, ValueError):
                    data = json.loads((d / "building.json").read_text(encoding="utf-8"))
                    parent = self._layer_key_of(str(data.get("parent_path", "")))
                    if parent is not None:
                        in_use.add(parent)
        return in_use

    def prune(self, *, max_size: int | None = None, older_than: float | None = None,
              dry_run: bool = False) -> list[LayerEntry]:
        """Remove layers, least recently used first, and return those removed (or, dry, to be removed).

        *older_than* (seconds) removes layers unused for that long; *max_size* (bytes)
        then removes more until the rest fits (0 empties the cache). Only leaves go: a
        layer that is the backing file of a kept layer, or of a build in progress, stays.
        Leftovers of killed builds and broken chains are always cleaned.
        """
        in_use = self._sweep()
        for entry in self.entries():
            self.get(entry.key)  # deletes entries whose chain is broken
        kept = {e.key: e for e in self.entries()}
        children: dict[str, int] = dict.fromkeys(kept, 0)
        for e in kept.values():
            parent = self._layer_key_of(e.parent_path)
            if parent in children:
                children[parent] += 1
        chosen: list[LayerEntry] = []

        def leaves() -> list[LayerEntry]:
            return [e for e in kept.values() if children[e.key] == 0 and e.key not in in_use]

        def drop(e: LayerEntry) -> None:
            chosen.append(kept.pop(e.key))
            parent = self._layer_key_of(e.parent_path)
            if parent in children:
                children[parent] -= 1

        if older_than is not None:
            cutoff = self.clock() - older_than
            while old := [e for e in leaves() if e.last_used < cutoff]:
                for e in old:
                    drop(e)
        if max_size is not None:
            total = sum(e.size for e in kept.values())
            while total > max_size and (candidates := leaves()):
                victim = min(candidates, key=lambda e: (e.last_used, e.created))
                drop(victim)
                total -= victim.size
        if dry_run:
            return chosen
        return [e for e in chosen if self._delete(e.key)]

    def explain_miss(self, key: str, token: object, *, parent_key: str | None = None) -> MissReason | None:
        """Why *key* (built from *token*) is not cached, by comparing with the nearest cached token.

        Candidates are layers with the same *parent_key* when given, else every layer
        that recorded a token. Returns None when *key* is in fact cached.
        """
        if self.get(key) is not None:
            return None
        best: tuple[int, float, str, list[str]] | None = None
        for e in self.entries():
            if parent_key is not None and e.parent_key != parent_key:
                continue
            meta = self._meta(e.key)
            if meta is None or "token" not in meta:
                continue
            diffs = _token_diff(meta["token"], json.loads(_canonical(token)))
            rank = (len(diffs), -e.last_used, e.key, diffs)
            if best is None or rank[:3] < best[:3]:
                best = rank
        if best is None:
            where = "on this parent" if parent_key is not None else "at all"
            return MissReason(None, (), f"cache miss: no layer cached {where} to compare with")
        nearest, diffs = best[2], best[3]
        if not diffs:
            return MissReason(nearest, (), f"cache miss: same steps as layer {nearest[:12]}, different parent")
        shown = ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        return MissReason(nearest, tuple(diffs), f"cache miss: {shown} changed since layer {nearest[:12]}")
