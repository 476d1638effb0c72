"""The build manifest (manifest.json) and SHA256SUMS: what was built, from what, how — never a secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .host.files import atomic_write

__all__ = ["outputs_unchanged", "read_manifest", "write_manifest", "write_sums"]

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


def write_manifest(out_dir: Path, data: dict[str, Any]) -> Path:
    """Write atomically: a reader never sees half a manifest."""
    path = out_dir / MANIFEST
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


def write_sums(out_dir: Path, outputs: list[dict[str, Any]]) -> Path:
    path = out_dir / SUMS
    atomic_write(path, "".join(f"{o['sha256']}  {Path(o['path']).name}\n" for o in outputs))
    return path


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def outputs_unchanged(out_dir: Path, manifest: dict[str, Any]) -> bool:
    """Every output listed is present with the size and mtime recorded when it was written.

    (Size and mtime, not a re-hash: re-reading gigabytes would defeat a no-op rebuild.)
    """
    outputs = manifest.get("outputs") or []
    if not outputs:
        return False
    for o in outputs:
        p = out_dir / Path(o["path"]).name
        try:
            st = p.stat()
        except OSError:
            return False
        if st.st_size != o.get("file_size") or st.st_mtime_ns != o.get("mtime_ns"):
            return False
    return True
