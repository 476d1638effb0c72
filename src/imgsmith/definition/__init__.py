"""Image definitions: YAML with source positions, the typed model, and its JSON Schema.

The names below load their module on first use (PEP 562): the model is imported by modules
that :mod:`.load` itself imports (``publish.spec`` for the ``publish:`` section), so an eager
``from .load import ...`` here made ``import imgsmith.publish.spec`` circular.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .load import LoadedDefinition, load_definition, load_variants
    from .model import Definition

__all__ = ["Definition", "LoadedDefinition", "load_definition", "load_variants"]

_HOME = {"Definition": "model", "LoadedDefinition": "load", "load_definition": "load", "load_variants": "load"}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
