"""The content-addressed layer cache (qcow2 overlays keyed by parent + operations + inputs), with locking."""

from __future__ import annotations

from .store import LAYER_KEY_VERSION, LayerEntry, LayerStore, MissReason

__all__ = ["LAYER_KEY_VERSION", "LayerEntry", "LayerStore", "MissReason"]
