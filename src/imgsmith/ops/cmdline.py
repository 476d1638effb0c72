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
from .base import CUSTOMIZE_OPERATIONS, Operation, ParseContext

__all__ = ["add_operation_arguments", "parse_commands_file", "parse_operations", "split_logical_lines"]

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
    for name in sorted(CUSTOMIZE_OPERATIONS):
        if name in exclude:
            continue
        cls = CUSTOMIZE_OPERATIONS[name]
        if cls.metavar is None:
            group.add_argument(f"--{name}", dest=name, action=_OpAction, nargs=0, help=cls.help)
        else:
            group.add_argument(f"--{name}", dest=name, action=_OpAction, metavar=cls.metavar, help=cls.help)
    group.add_argument(f"--{COMMANDS_FROM_FILE}", dest=COMMANDS_FROM_FILE, action=_OpAction,
                       metavar="FILENAME",
                       help="Read operations from FILENAME, one per line without the leading dashes "
                            "('run-command echo hi'); # comments, blank lines, \\ continues a line")
    parser.set_defaults(ops=[])


_TRIM = " \t\r\n"
"""What virt-customize's ``String.triml`` removes (mlstdutils ``Char.isspace``): not \\f, \\v or Unicode blanks."""


def split_logical_lines(text: str) -> list[tuple[int, str]]:
    """``(first physical line number, logical line)`` pairs, exactly as virt-customize 1.48 splits them.

    This is libguestfs-common's ``String.lines_split`` (mlstdutils/std_utils.ml): a backslash
    right before a newline (or at the very end of the file) is removed and the *newline is
    kept*, so the logical line goes on with the next physical line, leading blanks included;
    blanks before the backslash stay too. ``\\\\`` at the end keeps one backslash and still
    continues; ``\\`` before ``\\r\\n`` does not continue (the byte before the newline is ``\\r``).
    """
    out: list[tuple[int, str]] = []
    start_no, buf = 1, ""
    physical = text.split("\n")
    for lineno, raw in enumerate(physical, 1):
        is_last = lineno == len(physical)
        if raw.endswith("\\"):
            buf += raw[:-1] + "\n"
            if not is_last:
                continue
        else:
            buf += raw
        if not is_last or buf:
            out.append((start_no, buf))
        start_no, buf = lineno + 1, ""
    return out


def parse_commands_file(path: Path) -> list[tuple[str, str]]:
    """Lines ``option argument``, parsed as virt-customize's ``customize_read_from_file`` does.

    Each logical line (see ``split_logical_lines``) loses its leading blanks only; empty
    lines and lines starting with ``#`` are skipped; the rest is split at the first space
    into the option and its argument, with no shell unquoting and trailing blanks kept. A
    flag (an option without argument) ignores whatever follows it, as virt-customize does.
    A nested commands-from-file is refused.
    """
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")  # bytes: a \r before \n is kept
    except OSError as exc:
        raise UsageError(f"--{COMMANDS_FROM_FILE}: {path}: {exc.strerror or exc}") from None
    pairs: list[tuple[str, str]] = []
    for lineno, logical in split_logical_lines(text):
        line = logical.lstrip(_TRIM)
        if not line or line.startswith("#"):
            continue
        name, _, arg = line.partition(" ")
        where = f"{path}:{lineno}"
        if name == COMMANDS_FROM_FILE:
            raise UsageError(f"{where}: commands-from-file cannot be nested")
        cls = CUSTOMIZE_OPERATIONS.get(name)
        if cls is None:
            raise UsageError(f"{where}: unknown operation {name!r}")
        pairs.append((name, "" if cls.metavar is None else arg))
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
        cls = CUSTOMIZE_OPERATIONS[name]
        try:
            ops.append(cls.parse(arg, ctx))
        except UsageError as exc:
            msg = exc.message if exc.message.startswith("--") else f"--{name}: {exc.message}"
            if ctx.origin != "command line":
                msg = f"{ctx.origin}: {msg}"
            raise UsageError(msg, hint=exc.hint) from None
    return ops
