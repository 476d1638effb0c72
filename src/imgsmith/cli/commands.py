"""The list of sub-command modules, in the order `imgsmith --help` shows them."""

from __future__ import annotations

from types import ModuleType

from . import customize, doctor

MODULES: list[ModuleType] = [customize, doctor]
