"""Entry point: dispatch to one module per sub-command, render errors, map exit codes.

Each command module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning an exit code).
Library errors are rendered here as one line (plus an optional hint); tracebacks
only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from .. import __version__
from ..errors import ImgsmithError, UsageError, error_document
from . import commands

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors also give the ``--json`` error document when ``--json`` was asked for."""

    json_requested = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_requested:
            exc = UsageError(f"{self.prog}: {message}")
            print(json.dumps(error_document(exc), indent=2))
        super().error(message)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole CLI's parser; given the command line, only the command it names is fully built
    (cli/commands.py says why)."""
    parser = _Parser(
        prog="imgsmith",
        description="Cloud VM disk images as code: customize, sysprep, convert, build and boot-test.",
    )
    parser.add_argument("--version", action="version", version=f"imgsmith {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and every host command")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    commands.register_all(sub, argv)
    return parser


def setup_logging(verbose: bool, debug: bool) -> None:
    """Library log records go to stderr: INFO with -v, DEBUG (every host command) with --debug/-x."""
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("imgsmith")
    root.handlers[:] = [handler]
    root.setLevel(level)


def error(message: str, hint: str | None = None) -> None:
    """One ``imgsmith: error:`` line per problem (a definition error lists each of them)."""
    for line in message.splitlines() or [""]:
        print(f"imgsmith: error: {line}", file=sys.stderr)
    if hint:
        print(f"imgsmith: hint: {hint}", file=sys.stderr)


def _fail(exc: BaseException, json_mode: bool, message: str, hint: str | None = None) -> None:
    """Render a failure: the lines on stderr, and with --json the error document on stdout as well."""
    error(message, hint)
    if json_mode:
        print(json.dumps(error_document(exc), indent=2))


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    # pydantic looks for plugins in every installed distribution's entry points when the first model
    # class is made: 0.1-0.5 s of reading metadata files in a venv with the cloud SDKs, for plugins
    # imgsmith's models never use. A user who wants them sets the variable (pydantic's documented switch).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(words)
    _Parser.json_requested = "--json" in words
    args = parser.parse_args(argv)
    debug = bool(args.debug or os.environ.get("IMGSMITH_DEBUG"))
    setup_logging(bool(getattr(args, "verbose", False)), debug or bool(getattr(args, "trace", False)))
    func: Callable[[argparse.Namespace], int] = args.func
    if os.environ.get("IMGSMITH_REPORT_RSS"):
        import atexit
        import resource
        atexit.register(lambda: print(f"imgsmith: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB",
                                      file=sys.stderr))
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C: overlays are deleted, mounts and loop devices released.
        signal.signal(signal.SIGTERM, _raise_interrupt)
    json_mode = bool(getattr(args, "json", False))
    try:
        return func(args)
    except ImgsmithError as exc:
        if debug:
            raise
        _fail(exc, json_mode, exc.message, exc.hint)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        _fail(exc, json_mode, "interrupted; nothing was committed")
        return 130
    except OSError as exc:
        # A host refusal no stage anticipated (a full disk, a read-only or forbidden path): one line, exit 1.
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename is not None else ""
        _fail(exc, json_mode, f"{where}{exc.strerror or exc}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
