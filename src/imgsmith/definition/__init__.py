"""Image definitions: YAML with source positions, the typed model, and its JSON Schema.

The names below load their module on first use (PEP 562): the model is imported by modules
that :mod:`.load` itself imports (``publish.spec`` for the ``publish:`` section), so an eager
``from .load import ...`` here made ``import imgsmith.publish.spec`` circular.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..host.lazy import lazy_exports

if TYPE_CHECKING:
    from .load import LoadedDefinition, load_definition, load_variants
    from .model import Definition

__all__ = ["Definition", "LoadedDefinition", "load_definition", "load_variants"]

_HOME = {"Definition": "model", "LoadedDefinition": "load", "load_definition": "load", "load_variants": "load"}

__getattr__ = lazy_exports(__name__, _HOME)
