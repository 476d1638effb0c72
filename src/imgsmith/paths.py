"""Where imgsmith keeps state on the host: one cache root, overridable for tests and CI."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$IMGSMITH_CACHE`` or ``$XDG_CACHE_HOME/imgsmith`` (default ``~/.cache/imgsmith``)."""
    env = os.environ.get("IMGSMITH_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "imgsmith"
