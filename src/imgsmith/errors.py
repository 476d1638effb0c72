"""Typed errors, each carrying one line a user can act on.

Errors are raised in the library and rendered only by the CLI, which maps them to
exit codes: 2 for invalid input (nothing was touched), 1 for a failure while
working (the transaction was rolled back), 130 for an interrupt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ChecksumError",
    "DefinitionError",
    "ForeignArchError",
    "GuestError",
    "HostIOError",
    "ImageError",
    "ImgsmithError",
    "OperationError",
    "Problem",
    "ProcessError",
    "ReadinessError",
    "UsageError",
    "error_document",
]


class ImgsmithError(Exception):
    """Base class: ``message`` is the one line shown to the user, ``hint`` an optional second."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ImgsmithError):
    """Bad input found before any work: a malformed option, a missing host file, a bad regex."""

    exit_code = 2


class ImageError(UsageError):
    """The disk image itself is unusable: missing, unreadable, corrupt, unsupported format."""


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in a definition file, where it is: rendered ``FILE:LINE:COL: PATH: message``.

    Ordered by position (line, column), so a user reads them top to bottom.
    """

    line: int
    column: int
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f" {self.path}:" if self.path else ""  # no path when the file is not even YAML
        return f"{self.file}:{self.line}:{self.column}:{where} {self.message}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DefinitionError(UsageError):
    """Every problem found in a definition file; the CLI prints each on its own line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = sorted(set(problems))
        lines = [str(p) for p in self.problems] or ["invalid definition"]
        super().__init__("\n".join(lines))


class ProcessError(ImgsmithError):
    """A host command failed: not found, killed by a signal, or non-zero exit (with its stderr tail)."""

    def __init__(self, message: str, *, argv: Sequence[str] = (), returncode: int | None = None,
                 stderr: str = "") -> None:
        super().__init__(message)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class GuestError(ImgsmithError):
    """Something inside the guest failed or was not as expected (no OS, command failed)."""


class ForeignArchError(GuestError):
    """A command cannot run in this guest at all: its architecture is not the appliance's.

    Kept apart from a command that ran and failed, so the operation reports this cause
    as it is instead of "command exited with an error".
    """


class OperationError(ImgsmithError):
    """An operation failed while being applied; names its position and option, wraps the cause."""

    def __init__(self, position: int, label: str, cause: str) -> None:
        super().__init__(f"step {position} {label}: {cause}")
        self.position = position
        self.label = label
        self.cause = cause


class HostIOError(ImgsmithError):
    """The host refused a file operation (ENOSPC, EACCES, EROFS...): names the path and what was being done."""

    def __init__(self, doing: str, exc: OSError) -> None:
        where = exc.filename if exc.filename is not None else "?"
        super().__init__(f"{doing}: {where}: {exc.strerror or exc}")
        self.errno = exc.errno


class ReadinessError(ImgsmithError):
    """A build's output would be refused by its cloud: one line per error finding (imgsmith check)."""


class ChecksumError(ImgsmithError):
    """A downloaded or supplied image does not match its expected checksum."""

    exit_code = 2


def error_document(exc: BaseException) -> dict[str, Any]:
    """The ``--json`` form of a failure: ``{"error": {"kind", "message", "problems"}}``, for any command."""
    if isinstance(exc, ImgsmithError):
        kind, message = type(exc).__name__, exc.message
    elif isinstance(exc, KeyboardInterrupt):
        kind, message = "Interrupted", "interrupted; nothing was committed"
    else:
        kind, message = type(exc).__name__, str(exc)
    body: dict[str, Any] = {"kind": kind, "message": message,
                            "problems": [p.to_json() for p in getattr(exc, "problems", [])]}
    hint = getattr(exc, "hint", None)
    if hint:
        body["hint"] = hint
    return {"error": body}
