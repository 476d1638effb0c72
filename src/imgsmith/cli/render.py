"""Shared rendering for commands: timestamped progress lines (virt-customize style) and JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "print_json"]


class Progress:
    """``[  12.3] message`` lines on stderr, like virt-customize; silent with -q or --json."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.start = time.monotonic()

    def message(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.start:6.1f}] {text}", file=sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        print(f"imgsmith: warning: {text}", file=sys.stderr, flush=True)

    def output_fn(self, json_mode: bool) -> Callable[[str], None]:
        """Where user-requested output (a generated password) goes: stdout, or stderr in --json mode."""
        stream = sys.stderr if json_mode else sys.stdout
        return lambda text: print(text, file=stream, flush=True)


def print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, default=str))
