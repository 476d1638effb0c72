"""Shared rendering for commands: timestamped progress lines (virt-customize style) and JSON.

This module must stay cheap to import (no rich): it decides whether a command gets the
rich live view (cli/live.py, imported only then) or these plain lines, which CI logs and
tests parse and which therefore do not change.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "print_json", "use_live"]


class Progress:
    """``[  12.3] message`` lines on stderr, like virt-customize; silent with -q or --json.

    *stream* defaults to whatever ``sys.stderr`` is when a line is written (so pytest's
    capture and rich's redirection both see it); tests pass their own.
    """

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.start = time.monotonic()
        self.stream = stream

    def message(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.start:6.1f}] {text}", file=self.stream or sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        print(f"imgsmith: warning: {text}", file=self.stream or sys.stderr, flush=True)

    def output_fn(self, json_mode: bool) -> Callable[[str], None]:
        """Where user-requested output (a generated password) goes: stdout, or stderr in --json mode."""
        stream = sys.stderr if json_mode else sys.stdout
        return lambda text: print(text, file=stream, flush=True)


def use_live(stream: TextIO, *, quiet: bool, json_mode: bool, debug: bool) -> bool:
    """Whether a redrawn live view may own *stream* (the rich view), or plain lines must be written.

    Only a terminal gets redrawn output: a pipe or a CI log would receive cursor movements
    instead of lines. ``-q``/``--json`` want no progress at all, and ``--debug`` output (every
    host command, libguestfs traces written by C code straight to fd 2) would be torn apart
    by a display that rewrites the lines above it. ``TERM=dumb`` cannot move the cursor.
    """
    if quiet or json_mode or debug or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False


def print_json(data: dict[str, Any] | list[Any]) -> None:
    print(json.dumps(data, indent=2, default=str))
