"""The live view of `imgsmith build` on a terminal: one row per stage, redrawn in place.

The pipeline knows nothing of terminals: it emits typed events (imgsmith.events). This
module turns that stream into rows a person can read at a glance while a build takes
minutes::

    ✓ source            https://cloud.centos.org/…/CentOS-7-x86_64-GenericCloud.qcow2   41.0s
    ✓ layer 1/2 packages cached
    ⠹ layer 2/2 config  running step 3: timezone                                       12.4s
    ⠹   centos7-openstack.qcow2  ━━━━━━━━━━━━━╸━━━━━━━━━━━━━━  48%                      3.1s

A stage runs until it finishes (or the next one starts, or the build returns), then
collapses to a ✓ line with its duration; the stage that was running when the build raised shows ✗ and
the error's first line (the full message and hint follow from the CLI's error handler).
Progress labels become rows of their own under the running stage (each output's
conversion), except during ``source``, whose download/verify phases drive its own bar.

Rich is imported by this module only, and cli/build.py imports it only when stderr is
a terminal: ``imgsmith --help``, ``--json`` and piped runs never pay for importing rich.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ..disk.sizes import format_size
from ..errors import ImgsmithError
from ..events import Event, Message, Notice, Progress, StageFinished, StageKind, StageStarted, Warn

__all__ = ["LiveView", "StageBoard"]

Clock = Callable[[], float]


class State(Enum):
    """Where a row is; everything but RUNNING is final."""

    RUNNING = "running"
    DONE = "done"
    CACHED = "cached"
    FAILED = "failed"
    STOPPED = "stopped"  # a parallel sibling of the failure, cancelled by it


_ICONS = {State.DONE: Text("✓", style="green"), State.CACHED: Text("✓", style="green"),
          State.FAILED: Text("✗", style="bold red"), State.STOPPED: Text("-", style="yellow")}
_BAR_WIDTH = 28


@dataclass
class _Row:
    """One line on screen: a stage, or a piece of parallel work under it (an output)."""

    kind: str
    title: str
    summary: str
    started: float
    state: State = State.RUNNING
    ended: float | None = None
    timed: bool = True
    detail: str = ""  # the latest message while running
    phase: str = ""  # the progress label of the source row: download, verify
    pct: float | None = None
    done_bytes: int | None = None
    total_bytes: int | None = None
    children: dict[str, _Row] = field(default_factory=dict)
    spinner: Spinner = field(default_factory=lambda: Spinner("dots", style="cyan"))

    def close(self, state: State, now: float, summary: str | None = None) -> None:
        self.state, self.ended = state, now
        if summary is not None:
            self.summary = summary


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


class StageBoard:
    """The rows of a build and their states; a rich renderable, so ``Live`` redraws it.

    Thread-safe: outputs are converted in parallel and report progress from their worker
    threads while Live's refresh thread renders. *clock* is injected so tests see exact
    durations.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._rows: list[_Row] = []

    def _current(self) -> _Row | None:
        row = self._rows[-1] if self._rows else None
        return row if row is not None and row.state is State.RUNNING else None

    def _close_current(self, now: float) -> None:
        row = self._current()
        if row is None:
            return
        for child in row.children.values():
            if child.state is State.RUNNING:
                child.close(State.DONE, now)
        row.close(State.DONE, now)

    def _manifest_row(self, now: float, summary: str) -> None:
        """The pipeline writes the manifest without a stage line; show it where it happens."""
        existing = next((r for r in self._rows if r.kind == "manifest"), None)
        if existing is not None:
            existing.summary = summary
            return
        self._rows.append(_Row("manifest", "manifest", summary, now, State.DONE, now, timed=False))

    def stage(self, event: StageStarted) -> None:
        """A new stage starts: a running one is finished (stages run one after another)."""
        with self._lock:
            now = self._clock()
            self._close_current(now)
            row = _Row(event.kind.value, event.title, event.detail, now)
            if event.cached:
                row.close(State.CACHED, now)
            self._rows.append(row)

    def finished(self, event: StageFinished) -> None:
        """The running stage of that kind is over (a stage already closed by its successor stays closed)."""
        with self._lock:
            row = self._current()
            if row is not None and row.kind == event.kind.value:
                self._close_current(self._clock())
                if event.summary is not None:
                    row.summary = event.summary

    def message(self, text: str) -> None:
        """The running stage's latest news (the step being applied, the boot stage reached)."""
        with self._lock:
            row = self._current()
            if row is not None:
                row.detail = _first_line(text)

    def progress(self, label: str, pct: float, *, done: int | None = None, total: int | None = None) -> None:
        """A percentage (and, when known, bytes) for *label* under the running stage.

        ``source`` reports its phases (download, verify) as labels: they drive the
        source row's own bar. Any other label is a row under the running stage (one
        per output), finished when it reaches 100 %.
        """
        with self._lock:
            row = self._current()
            if row is None:
                return
            now = self._clock()
            target = row
            if row.kind == StageKind.SOURCE.value:
                if row.phase != label:
                    row.phase, row.done_bytes, row.total_bytes = label, None, None
            else:
                # Parallel work (the outputs) starts with its stage, not with its first report.
                target = row.children.setdefault(label, _Row("output", label, "", row.started))
                if target.state is not State.RUNNING:
                    return
            target.pct = max(0.0, min(100.0, pct))
            target.done_bytes, target.total_bytes = done, total
            if target is not row and pct >= 100.0:
                target.close(State.DONE, now)

    def finish(self, *, manifest: Path | None = None, outputs: Mapping[str, str] | None = None) -> None:
        """The build returned: close the running stage, describe outputs, show the manifest written."""
        with self._lock:
            now = self._clock()
            self._close_current(now)
            for row in self._rows:
                for label, child in row.children.items():
                    if outputs and label in outputs:
                        child.summary = outputs[label]
            if manifest is not None:
                self._manifest_row(now, str(manifest))

    def fail(self, error: str) -> None:
        """The build raised: the running stage is ✗ with *error*; its unfinished parallel rows stop.

        The output a conversion error names is the one that failed; its siblings were
        cancelled by it (disk/convert.py stops them on the first failure).
        """
        with self._lock:
            row = self._current()
            if row is None:
                return
            now = self._clock()
            text = _first_line(error)
            for label, child in row.children.items():
                if child.state is State.RUNNING:
                    failed = label in error
                    child.close(State.FAILED if failed else State.STOPPED, now, text if failed else "stopped")
            row.close(State.FAILED, now, text)

    # -- rendering -----------------------------------------------------------------

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        with self._lock:
            now = self._clock()
            lines = [(row, "" if row is parent else "  ")
                     for parent in self._rows for row in (parent, *parent.children.values())]
            grid = Table.grid(padding=(0, 1), expand=True)
            grid.add_column(no_wrap=True, width=1)
            grid.add_column(no_wrap=True, overflow="ellipsis", max_width=max(20, options.max_width // 2))
            grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
            grid.add_column(no_wrap=True, justify="right", min_width=6)
            # Taller than the terminal, Live would cut the bottom, where the running stage is:
            # the oldest (finished) rows give way instead.
            hidden = max(0, len(lines) - max(2, options.max_height))
            if hidden:
                hidden += 1
                grid.add_row(Text("…", style="dim"), Text(f"{hidden} earlier row(s) not shown", style="dim"))
            for row, indent in lines[hidden:]:
                grid.add_row(*self._cells(row, now, indent))
        yield grid

    def _cells(self, row: _Row, now: float, indent: str) -> tuple[RenderableType, Text, RenderableType, Text]:
        icon: RenderableType = row.spinner if row.state is State.RUNNING else _ICONS[row.state]
        title = Text(indent + row.title, style="bold" if row.state is State.RUNNING else "")
        clock = Text("")
        if row.timed and row.state is not State.CACHED:
            clock = Text(_duration((row.ended if row.ended is not None else now) - row.started), style="dim")
        return icon, title, self._middle(row), clock

    @staticmethod
    def _middle(row: _Row) -> RenderableType:
        if row.state is State.FAILED:
            return Text(row.summary, style="red")
        if row.state is State.STOPPED:
            return Text(row.summary, style="yellow")
        if row.state is not State.RUNNING:
            return Text(row.summary, style="dim")
        if row.pct is None:
            return Text(row.detail or row.summary, style="dim")
        bar = Table.grid(padding=(0, 1))
        # No percentage yet (or a download of unknown size): a pulse says "working", 0 % would lie.
        known = row.pct > 0.0
        cells: list[RenderableType] = [ProgressBar(total=100.0 if known else None, completed=row.pct, width=_BAR_WIDTH),
                            Text(f"{row.pct:3.0f}%" if known else "", style="cyan")]
        if row.phase:
            cells.insert(0, Text(row.phase))
        if row.done_bytes is not None:
            total = f" / {format_size(row.total_bytes)}" if row.total_bytes else ""
            cells.append(Text(f"{format_size(row.done_bytes)}{total}", style="dim"))
        bar.add_row(*cells)
        return bar


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ImgsmithError):
        return exc.message
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc) or type(exc).__name__


class LiveView:
    """The board under rich's ``Live`` on stderr, with warnings (and -v messages) printed above it.

    Use as a context manager around the build: on an exception the running stage is
    marked ✗ and the exception propagates to the CLI's error handler unchanged. Its
    it is the pipeline's event sink (``view(event)``), so the CLI only passes it.
    """

    def __init__(self, console: Console, *, verbose: bool = False, clock: Clock = time.monotonic,
                 refresh_per_second: float = 8.0) -> None:
        self.console = console
        self.board = StageBoard(clock)
        self._clock = clock
        self._start = clock()
        self._verbose = verbose
        # stdout stays the caller's (results, --json); only stray stderr writes go above the view.
        self._live = Live(self.board, console=console, refresh_per_second=refresh_per_second,
                          redirect_stdout=False, redirect_stderr=True)
        self._moved: list[tuple[logging.StreamHandler[Any], IO[str]]] = []

    @classmethod
    def for_stderr(cls, *, verbose: bool = False) -> LiveView:
        return cls(Console(stderr=True), verbose=verbose)

    def __enter__(self) -> LiveView:
        real_stderr = sys.stderr
        self._live.start()
        self._follow_redirect(real_stderr)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.board.fail(_error_text(exc))
        try:
            self._live.stop()
        finally:
            for handler, stream in self._moved:
                handler.setStream(stream)
            self._moved.clear()

    def _follow_redirect(self, real_stderr: IO[str]) -> None:
        """Library log records (-v) go through rich's stderr proxy, above the view, not across it.

        The CLI's logging handler holds the stderr object it was created with, which
        Live's redirection of ``sys.stderr`` does not reach.
        """
        if sys.stderr is real_stderr:  # Live did not redirect (not a terminal)
            return
        for handler in logging.getLogger("imgsmith").handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is real_stderr:
                handler.setStream(sys.stderr)
                self._moved.append((handler, real_stderr))

    def __call__(self, event: Event) -> None:
        """The pipeline's event sink."""
        if isinstance(event, StageStarted):
            self.board.stage(event)
        elif isinstance(event, StageFinished):
            self.board.finished(event)
        elif isinstance(event, Progress):
            if event.done is not None:
                self.transfer(event.label, event.done, event.total)
            else:
                self.progress(event.label, event.pct)
        elif isinstance(event, Message):
            self.message(event.text)
        elif isinstance(event, Warn):
            self.warn(event.text)
        elif isinstance(event, Notice):
            self.notice(event.text)

    def notice(self, text: str) -> None:
        """Shown once, whatever the verbosity, on stdout: the user must see it (a generated password)."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def message(self, text: str) -> None:
        self.board.message(text)
        if self._verbose:
            self.console.print(Text(f"[{self._clock() - self._start:6.1f}] {text}", style="dim"))

    def warn(self, text: str) -> None:
        self.console.print(Text(f"imgsmith: warning: {text}", style="yellow"))

    def progress(self, label: str, pct: float) -> None:
        self.board.progress(label, pct)

    def transfer(self, label: str, done: int, total: int | None) -> None:
        """Byte-counted progress (a download): the bar plus ``done / total`` when the size is known."""
        self.board.progress(label, 100.0 * done / total if total else 0.0, done=done, total=total)

    def finish(self, *, manifest: Path | None = None, outputs: Mapping[str, str] | None = None) -> None:
        self.board.finish(manifest=manifest, outputs=outputs)
