"""Library API of ``imgsmith sysprep``: apply selected operations to an open guest, or to a disk.

:func:`apply_sysprep` works on an already-open Guest, so the build pipeline can run
sysprep in the same appliance launch as its last layer. :func:`sysprep_disk` wraps it
in :func:`imgsmith.transaction.apply_to_disk`: one launch, an overlay, a commit only when
every operation succeeded. Neither prints; messages go to the callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GuestError, OperationError, UsageError
from ..guest.session import SessionOptions
from ..ops.base import ApplyContext, Operation, Settings
from ..transaction import DiskResult, apply_to_disk
from .base import SYSPREP_OPERATIONS, SysprepContext, SysprepOptions, SysprepPhase
from .identity import UPDATE_CA_STORE
from .select import execution_order, resolve_selection
from .steps import RELABEL

__all__ = ["OperationReport", "SysprepReport", "apply_sysprep", "check_options", "sysprep_disk"]

log = logging.getLogger("imgsmith.sysprep")


@dataclass
class OperationReport:
    """One operation's outcome: the guest paths (or devices) it removed or changed."""

    name: str
    changed: list[str] = field(default_factory=list)


@dataclass
class SysprepReport:
    """What :func:`apply_sysprep` did, operation by operation, in execution order."""

    operations: list[OperationReport] = field(default_factory=list)
    relabel: str | None = None


def check_options(selected: Sequence[str], customize_ops: Sequence[Operation], options: SysprepOptions) -> None:
    """Options for an operation that is not selected would be silently ignored: refuse them instead.

    virt-sysprep refuses the user-account options this way; imgsmith extends the rule to
    ``--script`` and to customize options, which virt-sysprep drops without a word.
    """
    chosen = set(selected)
    if (options.remove_users or options.keep_users) and "user-account" not in chosen:
        flag = "--remove-user-accounts" if options.remove_users else "--keep-user-accounts"
        raise UsageError(f"{flag}: the user-account operation is not selected "
                         "(add it: --operations defaults,user-account)")
    if options.scripts and "script" not in chosen:
        raise UsageError("--script: the script operation is not selected (add it to --operations)")
    if customize_ops and "customize" not in chosen:
        raise UsageError(f"{customize_ops[0].describe().split(' ', 1)[0]}: customize options need the customize "
                         "operation, which is not selected (add it to --operations)")


def _update_ca_store(ctx: SysprepContext) -> None:
    """Rebuild the guest's CA bundle once, after certificates were removed (warn if impossible)."""
    family = ctx.os.family
    command = {"redhat": "update-ca-trust extract", "debian": "update-ca-certificates"}.get(family)
    if command is None:
        ctx.warn(f"updating the system CA store is not supported on {ctx.os.distro}")
        return
    ctx.message(f"Updating the system CA store: {command}")
    try:
        ctx.guest.sh(command)
    except GuestError as exc:
        ctx.warn(f"could not update the system CA store ({exc.message}); run {command} in the guest")


def _run_one(ctx: SysprepContext, position: int, name: str) -> OperationReport:
    ctx.message(f"Performing \"{name}\" ...")
    try:
        changed = SYSPREP_OPERATIONS[name]().apply(ctx)
    except GuestError as exc:
        raise OperationError(position, f"sysprep {name}", exc.message) from exc
    for path in changed:
        log.debug("%s: %s", name, path)
    return OperationReport(name, changed)


def apply_sysprep(ctx: ApplyContext, selected_ops: Sequence[str], customize_ops: Sequence[Operation] = (),
                  options: SysprepOptions = SysprepOptions()) -> SysprepReport:
    """Apply the named sysprep operations to ``ctx.guest`` in virt-sysprep's order.

    Filesystem operations first (``customize`` last among them), then, if any device
    operation (fs-uuids, lvm-uuids) is selected, the guest is unmounted and those run:
    with device operations this must be the last thing done with the guest.
    """
    unknown = [n for n in selected_ops if n not in SYSPREP_OPERATIONS]
    if unknown:
        raise UsageError(f"unknown sysprep operation '{unknown[0]}' (see --list-operations)")
    check_options(selected_ops, customize_ops, options)
    sctx = SysprepContext(run=ctx, options=options, customize_ops=tuple(customize_ops))
    report = SysprepReport()
    ordered = execution_order(selected_ops)
    devices_started = False
    for position, name in enumerate(ordered, 1):
        if SYSPREP_OPERATIONS[name].phase == SysprepPhase.DEVICES and not devices_started:
            devices_started = True
            if sctx.facts.get(UPDATE_CA_STORE):
                _update_ca_store(sctx)
                sctx.facts[UPDATE_CA_STORE] = False
            ctx.guest.umount_all()
        report.operations.append(_run_one(sctx, position, name))
    if sctx.facts.get(UPDATE_CA_STORE):
        _update_ca_store(sctx)
    report.relabel = sctx.facts.get(RELABEL)
    return report


def sysprep_disk(
    disk: Path,
    selection: str | Sequence[str] | None = None,
    customize_ops: Sequence[Operation] = (),
    *,
    options: SysprepOptions = SysprepOptions(),
    fmt: str | None = None,
    settings: Settings = Settings(),
    session: SessionOptions = SessionOptions(),
    message: Callable[[str], None] = lambda _m: None,
    warn: Callable[[str], None] = lambda _m: None,
    output: Callable[[str], None] = print,
) -> DiskResult[OperationReport]:
    """Sysprep *disk* transactionally: on any error (or with ``settings.dry_run``) it is unchanged.

    *selection* is virt-sysprep's list syntax (a string, or a list of strings as repeated
    ``--operations`` flags give); ``None`` means the default set. It and the options are
    checked before the appliance starts.
    """
    names = resolve_selection(selection) if selection is not None else resolve_selection("defaults")
    check_options(names, customize_ops, options)
    def apply(ctx: ApplyContext) -> tuple[list[OperationReport], str | None]:
        report = apply_sysprep(ctx, names, customize_ops, options)
        return report.operations, report.relabel

    return apply_to_disk(disk, apply, fmt=fmt, settings=settings, session=session, message=message, warn=warn,
                         output=output)
