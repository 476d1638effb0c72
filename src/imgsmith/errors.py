"""Typed errors, each carrying one line a user can act on.

Errors are raised in the library and rendered only by the CLI, which maps them to
exit codes: 2 for invalid input (nothing was touched), 1 for a failure while
working (the transaction was rolled back), 130 for an interrupt.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ChecksumError",
    "DefinitionError",
    "GuestError",
    "ImageError",
    "ImgsmithError",
    "OperationError",
    "ProcessError",
    "UsageError",
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


class DefinitionError(UsageError):
    """One or more problems in a definition file, each already formatted as ``FILE:LINE:COL: msg``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        head = self.problems[0] if self.problems else "invalid definition"
        extra = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(head + extra)


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


class OperationError(ImgsmithError):
    """An operation failed while being applied; names its position and option, wraps the cause."""

    def __init__(self, position: int, label: str, cause: str) -> None:
        super().__init__(f"step {position} {label}: {cause}")
        self.position = position
        self.label = label
        self.cause = cause


class ChecksumError(ImgsmithError):
    """A downloaded or supplied image does not match its expected checksum."""

    exit_code = 2
