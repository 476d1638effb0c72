"""Package re-exports loaded on first use (PEP 562), for packages every command imports."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, home: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for *package*: each name in *home* comes from the submodule named
    there, imported when the name is first read and then kept in the package like an eager import.

    Why: ``imgsmith.disk`` and ``imgsmith.definition`` re-export names whose modules pull in the
    converters or the whole definition loader; importing them eagerly cost every start, and for
    ``definition`` made ``publish.spec`` -> ``definition`` -> ``publish.spec`` circular. The package
    lists the same names under ``TYPE_CHECKING`` for mypy.
    """
    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value
    return __getattr__
