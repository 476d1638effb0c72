"""The list of sub-command modules, in the order `imgsmith --help` shows them."""

from __future__ import annotations

from types import ModuleType

from . import (
               bootstrap,
               build,
               cache,
               check,
               convert,
               customize,
               doctor,
               info,
               plan,
               publish,
               resize,
               schema,
               sysprep,
               test,
)

MODULES: list[ModuleType] = [build, plan, customize, sysprep, convert, info, resize, check, test, publish, bootstrap,
                             schema, cache, doctor]
