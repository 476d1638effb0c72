"""Image definitions: YAML with source positions, the typed model, and its JSON Schema."""

from .load import LoadedDefinition, load_definition, load_variants
from .model import Definition

__all__ = ["Definition", "LoadedDefinition", "load_definition", "load_variants"]
