"""virt-sysprep's operation-list syntax, checked completely before any work.

``--operations LIST`` where LIST is comma-separated items: ``NAME`` adds an operation,
``-NAME`` removes it, ``defaults`` / ``-defaults`` add / remove the default set,
``all`` adds every operation and ``-all`` empties the selection. The first flag starts
from an empty set; each further flag edits the selection so far. With no flag at all
the default set is used. ``--enable LIST`` takes the same syntax (virt-sysprep's
``--enable`` accepts only plain names, once: a subset of this).

Every mistake is a :class:`~imgsmith.errors.UsageError` with one line naming the flag and
the item, raised before the appliance starts.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

from ..errors import UsageError
from .base import SYSPREP_OPERATIONS

__all__ = ["default_names", "execution_order", "resolve_flags", "resolve_selection"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
ALL, DEFAULTS = "all", "defaults"


def default_names() -> list[str]:
    """The default set, in execution order."""
    return execution_order(name for name, cls in SYSPREP_OPERATIONS.items() if cls.default)


def execution_order(names: Iterable[str]) -> list[str]:
    """*names* sorted as they run: filesystem phase, then device phase; each by order, then name."""
    return sorted(set(names), key=lambda n: SYSPREP_OPERATIONS[n].sort_key())


def _unknown(flag: str, name: str) -> UsageError:
    close = difflib.get_close_matches(name, [*SYSPREP_OPERATIONS, ALL, DEFAULTS], n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return UsageError(f"{flag}: unknown operation '{name}' ({hint}see --list-operations)")


def _apply_item(selected: set[str], item: str, flag: str, whole: str) -> set[str]:
    raw = item.strip()
    remove = raw.startswith("-")
    name = raw[1:] if remove else raw
    if not name:
        what = "'-' without a name" if remove else "an empty item"
        raise UsageError(f"{flag}: {what} in '{whole}' (write NAME,NAME,-NAME with no empty items)")
    if not _NAME.match(name):
        raise UsageError(f"{flag}: '{raw}' is not an operation name "
                         "(write NAME to add one, -NAME to remove one; see --list-operations)")
    if name == ALL:
        return set() if remove else set(SYSPREP_OPERATIONS)
    if name == DEFAULTS:
        defaults = {n for n, cls in SYSPREP_OPERATIONS.items() if cls.default}
        return selected - defaults if remove else selected | defaults
    if name not in SYSPREP_OPERATIONS:
        raise _unknown(flag, name)
    return selected - {name} if remove else selected | {name}


def resolve_flags(flags: Sequence[tuple[str, str]]) -> list[str]:
    """Apply ``(flag, list)`` pairs in command-line order; return the selection in execution order.

    ``flag`` is how the list was given (``--operations`` or ``--enable``), for messages.
    No pairs means the default set. An empty final selection is an error: the run
    would change nothing, which is never what the user meant.
    """
    if not flags:
        return default_names()
    selected: set[str] = set()
    for flag, value in flags:
        if not value.strip():
            raise UsageError(f"{flag}: needs a comma-separated list of operations (see --list-operations)")
        for item in value.split(","):
            selected = _apply_item(selected, item, flag, value)
    if not selected:
        shown = " ".join(f"{flag} {value}" for flag, value in flags)
        raise UsageError(f"{flags[-1][0]}: no operation left to run after '{shown}' (see --list-operations)")
    return execution_order(selected)


def resolve_selection(spec: str | Sequence[str], *, flag: str = "--operations") -> list[str]:
    """The library form: one list (a string) or several (a sequence, as repeated flags give)."""
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items:
        raise UsageError(f"{flag}: needs a comma-separated list of operations (see --list-operations)")
    return resolve_flags([(flag, item) for item in items])
