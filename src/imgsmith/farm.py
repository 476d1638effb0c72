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
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .buildplan import BuildOptions
from .definition import LoadedDefinition, load_variants
from .errors import ImgsmithError, UsageError
from .events import Event, Sink, StageFinished, StageKind, StageStarted

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


def _missing(loaded: LoadedDefinition, options: BuildOptions) -> dict[str, str]:
    """The layers this variant would build now, name to key (local cache only: no remote is contacted)."""
    from .pipeline import plan
    return {x.name: x.key for x in plan(loaded, dataclasses.replace(options, remote=None, dry_run=True)).layers
            if not x.cached}


class _Release:
    """A running build's sink that lets go of each layer's key when its layer stage ends (built or failed)."""

    def __init__(self, sink: Sink, keys: dict[str, str], held: set[str], lock: threading.Lock) -> None:
        self.sink, self.keys, self.held, self.lock = sink, keys, held, lock
        self.current = ""

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageStarted) and event.kind is StageKind.LAYER:
            self.current = event.name
        elif isinstance(event, StageFinished) and event.kind is StageKind.LAYER:
            with self.lock:
                self.held.discard(self.keys.get(self.current, ""))
        self.sink(event)


def build_all(variants: Sequence[LoadedDefinition], options: BuildOptions, *, jobs: int,
              sink_for: Callable[[LoadedDefinition], Sink]) -> list[Outcome]:
    """Build every variant, up to *jobs* at a time; outcomes in the order of *variants*.

    A variant does not start while a running build is making a layer it needs: it
    starts once that layer's stage is over and then finds it cached, so a shared layer
    is built (and reported as built) once. The store's lock alone would make it wait
    too, but inside its own layer stage, counted as a session it did not run.
    """
    from .pipeline import build  # heavy: the guest modules
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: give at least 1")
    many = len(variants) > 1
    outcomes: dict[int, Outcome] = {}
    lock = threading.Lock()

    def one(loaded: LoadedDefinition, sink: Sink) -> Outcome:
        try:
            return Outcome(loaded, result=build(loaded, options_for(loaded, options, many), sink))
        except ImgsmithError as exc:
            return Outcome(loaded, error=exc)

    pending = list(range(len(variants)))
    running: dict[Future[Outcome], tuple[int, set[str]]] = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="imgsmith-farm") as pool:
        while pending or running:
            with lock:
                busy = set().union(*(held for _, held in running.values()))
            for index in list(pending):
                if len(running) >= jobs:
                    break
                keys = _missing(variants[index], options)
                if set(keys.values()) & busy:
                    continue  # a running build makes a layer this one needs: wait for that layer
                pending.remove(index)
                held = set(keys.values())
                busy |= held
                sink = _Release(sink_for(variants[index]), keys, held, lock)
                running[pool.submit(one, variants[index], sink)] = (index, held)
            done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                index, _ = running.pop(future)
                outcomes[index] = future.result()
    return [outcomes[i] for i in range(len(variants))]
