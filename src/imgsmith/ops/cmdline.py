"""virt-customize's command line: ordered operations, --commands-from-file, and the flags.

argparse keeps the order of interleaved options when every operation appends to one
list through a shared action; the raw (option, argument) pairs are turned into
Operation objects afterwards so that all syntax errors are found before the disk is
touched.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .base import REGISTRY, Operation, ParseContext

__all__ = ["add_operation_arguments", "parse_commands_file", "parse_operations"]

COMMANDS_FROM_FILE = "commands-from-file"


class _OpAction(argparse.Action):
    """Append ``(option, argument)`` to ``namespace.ops`` in command-line order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        ops = list(getattr(namespace, "ops", None) or [])
        ops.append((self.dest, values if isinstance(values, str) else ""))
        namespace.ops = ops


def add_operation_arguments(parser: argparse.ArgumentParser, *, exclude: Sequence[str] = ()) -> None:
    group = parser.add_argument_group(
        "customization operations",
        "Applied in the order given, except that passwords are set after everything else and "
        "SELinux relabelling runs last (as virt-customize does).")
    for name in sorted(REGISTRY):
        if name in exclude:
            continue
        cls = REGISTRY[name]
        if cls.metavar is None:
            group.add_argument(f"--{name}", dest=name, action=_OpAction, nargs=0, help=cls.help)
        else:
            group.add_argument(f"--{name}", dest=name, action=_OpAction, metavar=cls.metavar, help=cls.help)
    group.add_argument(f"--{COMMANDS_FROM_FILE}", dest=COMMANDS_FROM_FILE, action=_OpAction,
                       metavar="FILENAME",
                       help="Read operations from FILENAME, one per line without the leading dashes "
                            "('run-command echo hi'); # comments, blank lines, \\ continues a line")
    parser.set_defaults(ops=[])


def parse_commands_file(path: Path) -> list[tuple[str, str]]:
    """Lines ``option argument``: split at the first space, no shell unquoting, leading blanks trimmed.

    Blank lines and ``#`` comments are skipped; a nested commands-from-file is refused.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--{COMMANDS_FROM_FILE}: {path}: {exc.strerror or exc}") from None
    pairs: list[tuple[str, str]] = []
    pending = ""
    for lineno, raw in enumerate(text.split("\n"), 1):
        # Every physical line loses its leading blanks; a trailing backslash joins the next
        # line directly (no newline), as in virt-customize's "edit /f:\\ <newline> s/a/b/".
        line = pending + raw.lstrip()
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, arg = line.partition(" ")
        where = f"{path}:{lineno}"
        if name == COMMANDS_FROM_FILE:
            raise UsageError(f"{where}: commands-from-file cannot be nested")
        cls = REGISTRY.get(name)
        if cls is None:
            raise UsageError(f"{where}: unknown operation {name!r}")
        if cls.metavar is None and arg.strip():
            raise UsageError(f"{where}: {name} takes no argument")
        pairs.append((name, arg))
    if pending:
        raise UsageError(f"{path}: the last line ends with a backslash")
    return pairs


def parse_operations(raw: Sequence[tuple[str, str]], ctx: ParseContext) -> list[Operation]:
    """Turn ordered (option, argument) pairs into operations; the first bad one raises UsageError."""
    ops: list[Operation] = []
    for name, arg in raw:
        if name == COMMANDS_FROM_FILE:
            path = ctx.host_path(arg, COMMANDS_FROM_FILE)
            file_ctx = ParseContext(base_dir=ctx.base_dir, check_files=ctx.check_files, origin=str(path))
            ops.extend(parse_operations(parse_commands_file(path), file_ctx))
            continue
        cls = REGISTRY[name]
        try:
            ops.append(cls.parse(arg, ctx))
        except UsageError as exc:
            msg = exc.message if exc.message.startswith("--") else f"--{name}: {exc.message}"
            if ctx.origin != "command line":
                msg = f"{ctx.origin}: {msg}"
            raise UsageError(msg, hint=exc.hint) from None
    return ops
