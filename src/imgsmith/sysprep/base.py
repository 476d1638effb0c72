"""The sysprep operation registry: one small declarative class per virt-sysprep operation.

Each operation declares its virt-sysprep name, whether it is in the default set, its
``order`` (virt-sysprep runs the selected operations sorted by order, then name, so
``customize`` with order 99 runs last), the one-line heading ``--list-operations``
prints, the phase it runs in, and ``apply(ctx)`` against the Guest API, returning the
guest paths it removed or changed (for ``-v`` and ``--json``). Registration is explicit:
defining a class with a ``name`` adds it to :data:`SYSPREP_OPERATIONS`.

The helpers at the end of this module are the few removal patterns virt-sysprep's
operations share ("everything a glob matches", "only the regular files below a
directory", "these files if present"), written once so each operation stays a table.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar

from ..guest.api import Guest, OSInfo
from ..ops.base import ApplyContext, Operation

__all__ = [
    "SYSPREP_OPERATIONS",
    "SysprepContext",
    "SysprepOperation",
    "SysprepOptions",
    "SysprepPhase",
    "remove_files",
    "remove_globs",
    "remove_non_dirs",
    "remove_regular_files_below",
    "walk",
]


class SysprepPhase(IntEnum):
    """virt-sysprep runs filesystem operations with the guest mounted, then device operations unmounted."""

    FILESYSTEMS = 0
    DEVICES = 1


@dataclass(frozen=True)
class SysprepOptions:
    """Options that belong to particular operations (user-account's user lists, script's scripts)."""

    remove_users: frozenset[str] = frozenset()
    keep_users: frozenset[str] = frozenset()
    scripts: tuple[Path, ...] = ()


@dataclass
class SysprepContext:
    """What a sysprep operation gets: the customize ApplyContext plus the sysprep-only inputs."""

    run: ApplyContext
    options: SysprepOptions = SysprepOptions()
    customize_ops: Sequence[Operation] = ()
    facts: dict[str, Any] = field(default_factory=dict)  # e.g. the customize step's relabel verdict

    @property
    def guest(self) -> Guest:
        return self.run.guest

    @property
    def os(self) -> OSInfo:
        return self.run.guest.os

    def message(self, text: str) -> None:
        self.run.message(text)

    def warn(self, text: str) -> None:
        self.run.warn(text)


SYSPREP_OPERATIONS: dict[str, type[SysprepOperation]] = {}


class SysprepOperation(ABC):
    """Base for sysprep operations; subclasses are field-less frozen dataclasses with a ``name``."""

    name: ClassVar[str]
    heading: ClassVar[str]
    default: ClassVar[bool] = True
    order: ClassVar[int] = 0
    phase: ClassVar[SysprepPhase] = SysprepPhase.FILESYSTEMS
    upstream: ClassVar[bool] = True  # False: an imgsmith addition not in virt-sysprep 1.48

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not name:
            return
        if name in SYSPREP_OPERATIONS:
            raise TypeError(f"sysprep operation {name!r} registered twice")
        heading = cls.__dict__.get("heading", "")
        if not heading or heading.endswith((".", "\n")):
            raise TypeError(f"sysprep operation {name!r}: heading must be one line without a final period")
        SYSPREP_OPERATIONS[name] = cls

    @classmethod
    def sort_key(cls) -> tuple[int, int, str]:
        """Execution order: filesystem phase before device phase, then order, then name."""
        return (int(cls.phase), cls.order, cls.name)

    @abstractmethod
    def apply(self, ctx: SysprepContext) -> list[str]:
        """Do the work; return the guest paths removed or changed (empty when nothing applied)."""


# --------------------------------------------------------------------------- shared removal patterns


def _clean(path: str) -> str:
    """glob_expand marks directories with a trailing slash; reports use the plain path."""
    return path.rstrip("/") or "/"


def walk(g: Guest, directory: str) -> list[str]:
    """Absolute paths of everything below *directory*, sorted (symlinked directories not followed).

    The appliance's ``find`` returns names with a leading slash unless the directory
    ends with one; both forms are accepted here.
    """
    return sorted(posixpath.join(directory, rel.lstrip("/")) for rel in g.find(directory))


def remove_globs(g: Guest, patterns: Iterable[str]) -> list[str]:
    """Remove everything each glob matches, directories recursively (``rm -rf``)."""
    removed: list[str] = []
    for pattern in patterns:
        for path in g.glob(pattern):
            g.rm_rf(path)
            removed.append(_clean(path))
    return removed


def remove_files(g: Guest, paths: Iterable[str], *, keep_symlinks: bool = False) -> list[str]:
    """Remove each path that exists and is not a directory (``rm``, failures ignored, as virt-sysprep)."""
    removed: list[str] = []
    for path in paths:
        if not g.exists(path) and not g.is_symlink(path):
            continue
        if g.is_dir(path) or (keep_symlinks and g.is_symlink(path)):
            continue
        g.rm_f(path)
        removed.append(path)
    return removed


def remove_non_dirs(g: Guest, patterns: Iterable[str], *,
                    skip: Callable[[str], bool] = lambda _p: False) -> list[str]:
    """Remove the non-directories each glob matches (virt-sysprep's ``rm`` of a glob's matches)."""
    matches = [_clean(p) for pattern in patterns for p in g.glob(pattern)]
    return remove_files(g, [p for p in matches if not skip(p)])


def remove_regular_files_below(g: Guest, directory: str, *,
                               keep: Callable[[str], bool] = lambda _p: False) -> list[str]:
    """Remove the regular files anywhere below *directory*, keeping the directory structure.

    Package caches and spools are emptied this way so the directories (and their
    modes, owners and SELinux labels) that daemons expect stay in place.
    """
    if not g.is_dir(directory):
        return []
    removed: list[str] = []
    for path in walk(g, directory):
        if keep(path) or not g.is_file(path):
            continue
        g.rm_f(path)
        removed.append(path)
    return removed
