"""The remote layer cache: signed entries naming verified blobs, shared by every host of a farm.

An entry (one per layer key, base image or output, see backends.py for where it lives) is a
JSON document::

    {"v": 1, "key": KEY, "blob": "sha256:…", "size": N, "created": EPOCH,
     "parent": {"key": PARENT_KEY, "blob": "sha256:…"}        # a layer parent: its blob
            or {"key": BASE_KEY, "sha256": HEX},               # the base image: its bytes
     "meta": {definition, layer, parent_key, token, backend, guest},
     "signer": KEY_ID, "signature": BASE64}

The blob is the layer's qcow2 with its backing file renamed to ``imgsmith-parent``
(``qemu-img rebase -u``), so its digest does not depend on where a host keeps its
cache. A layer is an overlay: its bytes mean something only on the very parent it
was made on, and layer keys name inputs, not bytes (two hosts building one key get
different bytes). So each entry names its parent's blob (or the base image's
sha256), and a host pulls it only onto a parent with exactly those bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..disk import qemuimg
from ..host.files import sha256_file
from .backends import Backend, RemoteError, open_backend
from .config import RemoteSettings
from .signing import Signer, TrustedKeys

__all__ = ["ENTRY_VERSION", "RemoteCache", "RemoteEntry", "RemoteError", "base_entry_key"]

ENTRY_VERSION = 1
NORMAL_BACKING = "imgsmith-parent"


def base_entry_key(base_key: str) -> str:
    """The remote key of a base image: a hash of its plan key (``sha512:…``, ``bootstrap:NAME``).

    Base images live among the layers (same blobs, same signed entries, same listing),
    under a key of their own namespace so no layer key can ever collide with one.
    """
    return hashlib.sha256(f"imgsmith-base-v1\0{base_key}".encode()).hexdigest()


@dataclass(frozen=True)
class RemoteEntry:
    key: str
    blob: str
    size: int
    created: float
    parent: dict[str, str]
    meta: dict[str, Any]
    signer: str | None

    @classmethod
    def parse(cls, key: str, doc: dict[str, Any]) -> RemoteEntry:
        """The entry in *doc*; ValueError when it is not one for *key*."""
        blob, parent, meta = doc.get("blob"), doc.get("parent"), doc.get("meta")
        if doc.get("v") != ENTRY_VERSION or doc.get("key") != key:
            raise ValueError("the entry is not one for this key")
        if not isinstance(blob, str) or not blob.startswith("sha256:") or len(blob) != 71:
            raise ValueError("the entry names no sha256 blob")
        if not isinstance(parent, dict) or not isinstance(meta, dict):
            raise ValueError("the entry has no parent or meta")  # noqa: TRY004 - a bad document, not a bad call
        return cls(key, blob, int(doc.get("size", 0)), float(doc.get("created", 0.0)),
                   {str(k): str(v) for k, v in parent.items()}, meta,
                   str(doc["signer"]) if doc.get("signer") else None)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "blob": self.blob, "size": self.size, "created": self.created,
                "parent": self.parent, "definition": self.meta.get("definition"),
                "layer": self.meta.get("layer"), "base": self.meta.get("base"), "output": self.meta.get("output"),
                "signer": self.signer}

    @property
    def kind(self) -> str:
        """``layer``, ``base`` for a base image (see :func:`base_entry_key`), ``output`` for a build's output.

        An output entry (sharing.py's ``output_entry_key``) names the final layer as its
        parent and holds the output file as its blob; it is listed, verified and pruned
        like the others.
        """
        kind = self.meta.get("kind")
        return str(kind) if kind in ("base", "output") else "layer"


class RemoteCache:
    """Lookups (signature checked), verified downloads and signed pushes against one backend."""

    def __init__(self, settings: RemoteSettings, backend: Backend | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.backend = backend or open_backend(settings.url)
        self.signer = Signer.load(settings.signing_key) if settings.signing_key else None
        self.trusted = TrustedKeys.load(list(settings.trusted_keys))
        self.clock = clock

    @property
    def name(self) -> str:
        return str(self.settings.url)

    @property
    def push_enabled(self) -> bool:
        return self.settings.push

    def lookup(self, key: str) -> tuple[RemoteEntry | None, str | None]:
        """(the usable entry, None), (None, why it is refused), or (None, None) when there is none."""
        raw = self.backend.get_entry(key)
        if raw is None:
            return None, None
        try:
            doc = json.loads(raw)
            entry = RemoteEntry.parse(key, doc if isinstance(doc, dict) else {})
        except ValueError as exc:
            return None, f"the entry is malformed ({exc})"
        problem = self.trusted.problem(doc)
        if problem is not None and not self.settings.trust_unsigned:
            return None, f"{problem} (trusted-keys in the config; --cache-trust-unsigned accepts it anyway)"
        return entry, None

    def fetch(self, entry: RemoteEntry, dest: Path, progress: Callable[[int], None] | None = None) -> str | None:
        """Download *entry*'s blob to *dest*; why its bytes are not the entry's (one phrase), or None."""
        self.backend.get_blob(entry.blob, dest, progress)
        actual = "sha256:" + sha256_file(dest)
        if actual != entry.blob:
            dest.unlink(missing_ok=True)
            return f"its blob's sha256 is {actual[7:23]}… instead of {entry.blob[7:23]}…"
        return None

    @contextlib.contextmanager
    def normalized(self, layer: Path, parent_fmt: str, work: Path) -> Iterator[tuple[Path, str]]:
        """A copy of *layer* as the remote holds it (backing file renamed), and its digest."""
        work.mkdir(parents=True, exist_ok=True)
        copy = work / "layer.qcow2"
        try:
            shutil.copyfile(layer, copy)
            os.chmod(copy, 0o644)
            qemuimg.rebase_unsafe(copy, NORMAL_BACKING, parent_fmt)
            yield copy, "sha256:" + sha256_file(copy)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def push(self, key: str, layer: Path, parent_fmt: str, *, parent: dict[str, str], meta: dict[str, Any],
             work: Path) -> tuple[str, bool]:
        """Upload *layer* as *key*: blob first, signed entry last. (blob digest, whether our entry won)."""
        with self.normalized(layer, parent_fmt, work) as (copy, digest):
            return self.put(key, copy, digest, parent=parent, meta=meta)

    def put(self, key: str, path: Path, digest: str, *, parent: dict[str, str], meta: dict[str, Any]
            ) -> tuple[str, bool]:
        """Upload the file *path* (sha256 *digest*) as *key* unchanged: blob first, signed entry last."""
        size = path.stat().st_size
        if not self.backend.has_blob(digest):
            self.backend.put_blob(digest, path)
        doc: dict[str, Any] = {"v": ENTRY_VERSION, "key": key, "blob": digest, "size": size,
                               "created": self.clock(), "parent": parent, "meta": meta}
        if self.signer is not None:
            doc = self.signer.sign(doc)
        data = json.dumps(doc, sort_keys=True, indent=1).encode("utf-8")
        return digest, self.backend.put_entry(key, data, digest, size)

    def entries(self) -> list[tuple[str, RemoteEntry | None, str | None]]:
        """Every key on the remote with its entry (or why it is refused), oldest first."""
        out = [(key, *self.lookup(key)) for key in self.backend.list_keys()]
        out.sort(key=lambda x: (x[1].created if x[1] else 0.0, x[0]))
        return out

    def verify(self, entry: RemoteEntry, work: Path) -> str | None:
        """Download and check one entry's blob (``cache verify --remote``)."""
        work.mkdir(parents=True, exist_ok=True)
        try:
            return self.fetch(entry, work / f"{entry.key}.qcow2")
        finally:
            (work / f"{entry.key}.qcow2").unlink(missing_ok=True)

    def touch(self, key: str) -> None:
        """Record that this host used *key* (not on a pull-only host: it never writes); failures are ignored."""
        if self.settings.pull_only:
            return
        with contextlib.suppress(RemoteError):
            self.backend.touch(key)

    def prune(self, *, older_than: float | None, dry_run: bool = False) -> tuple[list[RemoteEntry], list[str]]:
        """Remove entries neither created nor used for *older_than* seconds (None: all), then unreferenced blobs.

        Entries this host refuses are left alone (they may be another team's), and so are
        the blobs they name. The blob of an entry removed here goes when no other entry
        names it; any other blob no entry names (a push killed between its blob and its
        entry) once it is older than the cutoff, since a push in progress uploads its blob
        just before its entry. Returns the
        entries and the blobs removed (or, dry, to be removed).
        """
        now = self.clock()
        cutoff = None if older_than is None else now - older_than
        used = self.backend.used()
        rows = self.entries()
        chosen = [e for _, e, _ in rows if e is not None
                  and (cutoff is None or max(e.created, used.get(e.key, 0.0)) < cutoff)]
        gone = {e.key for e in chosen}
        referenced = {blob for key, blob in self._named_blobs().items() if key not in gone}
        blobs = self.backend.blobs()
        freed = {e.blob for e in chosen}
        orphans = sorted(d for d, written in blobs.items()
                         if d not in referenced and (d in freed or cutoff is None or written < cutoff))
        if dry_run:
            return chosen, orphans
        for e in chosen:
            self.backend.delete_entry(e.key)
        for digest in orphans:
            with contextlib.suppress(RemoteError):
                self.backend.delete_blob(digest)
        self.backend.abort_uploads(now if cutoff is None else cutoff)
        return chosen, orphans

    def _named_blobs(self) -> dict[str, str]:
        """Every entry's blob by key, refused entries included (they are not ours to orphan)."""
        out: dict[str, str] = {}
        for key in self.backend.list_keys():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                raw = self.backend.get_entry(key)
                blob = json.loads(raw or b"{}").get("blob")
                if isinstance(blob, str):
                    out[key] = blob
        return out
