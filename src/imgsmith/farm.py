"""Several builds in one run: every definition and every matrix variant, N at a time, shared layers once.

Nothing here coordinates the builds beyond a thread pool: two variants that share a
layer compute the same key, and the layer store's per-key lock (cache/store.py) makes
the second wait for the first and then find the layer cached. Each variant gets its own
output directory (``DIR/NAME``), so the only shared state is the layer cache — the same
rule as for a farm of separate machines (docs/farm.md), where the remote cache is it.
A variant that fails does not stop the others; its error is kept in its slot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .buildplan import BuildOptions
from .definition import LoadedDefinition, load_variants
from .errors import ImgsmithError, UsageError
from .events import Sink

if TYPE_CHECKING:
    from .pipeline import BuildResult

__all__ = ["Outcome", "build_all", "load_all", "options_for"]


@dataclass
class Outcome:
    """One variant's build: its result, or the error that stopped it (the others went on)."""

    loaded: LoadedDefinition
    result: BuildResult | None = None
    error: ImgsmithError | None = None


def load_all(files: Sequence[Path], overrides: Sequence[str] = (), *, check_files: bool = True
             ) -> list[LoadedDefinition]:
    """Every variant of every file, in order; two with one name would share an output directory: refused."""
    variants = [v for f in files for v in load_variants(f, overrides=overrides, check_files=check_files)]
    seen: dict[str, Path] = {}
    for v in variants:
        name = v.definition.name
        if name in seen:
            raise UsageError(f"{v.path} and {seen[name]} both give a build named {name!r} "
                             "(their outputs would share a directory): rename one")
        seen[name] = v.path
    return variants


def options_for(loaded: LoadedDefinition, options: BuildOptions, many: bool) -> BuildOptions:
    """A variant's options: with several builds, ``-o DIR`` becomes ``DIR/NAME`` (the default is already per name)."""
    if not many or options.output_dir is None:
        return options
    return dataclasses.replace(options, output_dir=options.output_dir / loaded.definition.name)


def build_all(variants: Sequence[LoadedDefinition], options: BuildOptions, *, jobs: int,
              sink_for: Callable[[LoadedDefinition], Sink]) -> list[Outcome]:
    """Build every variant, *jobs* at a time; outcomes in the order of *variants*."""
    from .pipeline import build  # heavy: the guest modules
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: give at least 1")
    many = len(variants) > 1

    def one(loaded: LoadedDefinition) -> Outcome:
        try:
            return Outcome(loaded, result=build(loaded, options_for(loaded, options, many), sink_for(loaded)))
        except ImgsmithError as exc:
            return Outcome(loaded, error=exc)

    with ThreadPoolExecutor(max_workers=min(jobs, len(variants)) or 1, thread_name_prefix="imgsmith-farm") as pool:
        return list(pool.map(one, variants))
