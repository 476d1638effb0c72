"""The content-addressed layer cache (qcow2 overlays keyed by parent + operations + inputs), with locking."""

from __future__ import annotations

from .store import FORMAT_VERSION, LayerEntry, LayerStore, MissReason, file_lock, try_file_lock

__all__ = ["FORMAT_VERSION", "LayerEntry", "LayerStore", "MissReason", "file_lock", "try_file_lock"]
