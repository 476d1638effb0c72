"""Which outputs of a rebuild can be patched from the previous build's instead of converted again.

The previous build's manifest names its layer keys and, per output, its format, options,
size and mtime. An output qualifies when the two layer chains share at least their first
layer (so the same base), the previous final layer is still in the cache (its map says
where the old content came from), the output file is the one that manifest describes
(size and mtime, as for the no-op check), it was written with the same format, options
and preset, and :func:`delta.patch_kind` knows how to patch that kind. Anything else is
converted in full, which is always correct; patching is only ever an optimisation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .cache.store import LayerStore
from .disk import delta
from .disk.convert import Target
from .errors import ImgsmithError
from .host.fuse import fuse_view

__all__ = ["patch_updates"]

log = logging.getLogger("imgsmith.build")


def _shared_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _previous_output(out_dir: Path, previous: Mapping[str, Any], target: Target) -> Path | None:
    """The previous build's file for *target*, if it is intact and was written the same way."""
    for o in previous.get("outputs") or []:
        path = out_dir / Path(str(o.get("path", ""))).name
        if path.name != target.path.name:
            continue
        same = (o.get("format") == target.format.name and o.get("layout") == target.layout.value
                and o.get("preset") == (target.preset.name if target.preset else None)
                and o.get("options") == dict(target.options))
        try:
            st = path.stat()
        except OSError:
            return None
        intact = st.st_size == o.get("file_size") and st.st_mtime_ns == o.get("mtime_ns")
        return path if same and intact else None
    return None


@contextlib.contextmanager
def patch_updates(out_dir: Path, previous: Mapping[str, Any] | None, *, store: LayerStore, keys: Sequence[str],
                  final: Path, virtual_size: int, targets: Sequence[Target]) -> Iterator[dict[Path, delta.Update]]:
    """Updates by target path for the outputs that qualify (see the module docstring), valid inside the block."""
    candidates: dict[Path, tuple[Path, delta.Kind]] = {}
    old_keys = [str(x.get("key")) for x in (previous or {}).get("layers", [])]
    shared = _shared_prefix(old_keys, keys)
    old_top = store.get(old_keys[-1]) if previous and shared and old_keys else None
    if previous and old_top is not None:
        for t in targets:
            kind = delta.patch_kind(t.format.name, t.options, t.layout)
            prev = _previous_output(out_dir, previous, t) if kind else None
            if kind and prev:
                candidates[t.path] = (prev, kind)
    with contextlib.ExitStack() as stack:
        updates: dict[Path, delta.Update] = {}
        try:
            if candidates and old_top is not None:
                extents = tuple(delta.changed_extents(final, len(keys) - shared, old_top,
                                                      len(old_keys) - shared, virtual_size))
                changed = sum(length for _, length in extents)
                if changed * 2 > virtual_size:
                    log.info("outputs: %d of %d bytes changed; converting in full", changed, virtual_size)
                else:
                    view = stack.enter_context(fuse_view(final, "qcow2", label="outputs", name="source.img"))
                    updates = {path: delta.Update(prev, kind, extents, view)
                               for path, (prev, kind) in candidates.items()}
        except (ImgsmithError, OSError) as exc:
            log.warning("outputs: cannot patch the previous outputs (%s); converting in full", exc)
        yield updates
