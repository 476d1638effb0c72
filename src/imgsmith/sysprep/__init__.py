"""Sysprep operations: virt-sysprep's 43 operations (same names, same default set) plus three.

Importing this package fills :data:`SYSPREP_OPERATIONS`. The additions, all in the default set
as in newer guestfs-tools or by imgsmith's choice: ``lvm-system-devices``,
``zsh-history`` and ``cloud-init``. See docs/sysprep.md for each operation's effect.
"""

from . import accounts, devices, files, identity, logs, network, packages, services, steps
from .base import SYSPREP_OPERATIONS, SysprepContext, SysprepOperation, SysprepOptions, SysprepPhase
from .run import OperationReport, SysprepReport, apply_sysprep, check_options, sysprep_disk
from .select import default_names, execution_order, resolve_flags, resolve_selection

__all__ = [
    "SYSPREP_OPERATIONS",
    "OperationReport",
    "SysprepContext",
    "SysprepOperation",
    "SysprepOptions",
    "SysprepPhase",
    "SysprepReport",
    "apply_sysprep",
    "check_options",
    "default_names",
    "execution_order",
    "list_operations",
    "resolve_flags",
    "resolve_selection",
    "sysprep_disk",
]

_MODULES = (accounts, devices, files, identity, logs, network, packages, services, steps)


def list_operations() -> list[str]:
    """``--list-operations`` lines, virt-sysprep's format: ``name * heading`` (blank instead of ``*``
    for operations outside the default set), sorted by name."""
    return [f"{name} {'*' if cls.default else ' '} {cls.heading}" for name, cls in sorted(SYSPREP_OPERATIONS.items())]
