"""Applying a list of operations to an open guest, in virt-customize's order.

Order: a fresh random seed first; then every operation in the order given, except
that passwords run after all others and SELinux relabelling runs last; relabelling is
automatic for SELinux guests unless turned off. Whether the guest uses SELinux is decided
after the operations, on their result, as virt-customize does (an operation may have
removed load_policy or turned SELinux off). One deliberate difference from
virt-customize: an empty /etc/machine-id is filled only for the duration of the
run (package scriptlets may need one) and emptied again afterwards, so clones of
the image do not share a machine-id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import GuestError, OperationError
from .guest.treeinspect import selinux_enabled
from .ops.base import ApplyContext, CustomizePhase, Operation
from .ops.system import RELABEL_STATE, SelinuxRelabel, relabel

__all__ = ["RunReport", "apply_operations"]

log = logging.getLogger("imgsmith.ops")

RANDOM_SEED_FILES = ("/var/lib/random-seed", "/var/lib/urandom/random-seed", "/var/lib/systemd/random-seed")


@dataclass
class RunReport:
    applied: list[str]
    relabel: str | None = None  # setfiles | autorelabel | None


def _set_random_seed(ctx: ApplyContext) -> None:
    g = ctx.guest
    ctx.message("Setting a random seed")
    existing = [p for p in RANDOM_SEED_FILES if g.is_file(p)]
    targets = existing or [p for p in RANDOM_SEED_FILES if g.is_dir(os.path.dirname(p))][:1]
    for path in targets:
        new = not g.exists(path)
        g.write(path, os.urandom(512))
        if new:
            g.chmod(0o600, path)
    if not targets:
        ctx.warn("could not set a random seed: no random-seed location in this guest")


def _fill_machine_id(ctx: ApplyContext) -> bool:
    g = ctx.guest
    if g.is_file("/etc/machine-id") and not g.read("/etc/machine-id").strip():
        g.write("/etc/machine-id", (os.urandom(16).hex() + "\n").encode())
        return True
    return False


def apply_operations(ctx: ApplyContext, ops: Sequence[Operation]) -> RunReport:
    """Apply *ops* to ``ctx.guest``; the first failure raises OperationError naming its position."""
    report = RunReport(applied=[])
    if ctx.guest.os.type == "linux":
        _set_random_seed(ctx)
    emptied_id = ctx.guest.os.type == "linux" and _fill_machine_id(ctx)
    ordered = sorted(enumerate(ops, 1), key=lambda item: item[1].phase)
    explicit_relabel = any(isinstance(op, SelinuxRelabel) for op in ops)
    for position, op in ordered:
        if op.phase == CustomizePhase.RELABEL and emptied_id:
            ctx.guest.write("/etc/machine-id", b"")
            emptied_id = False
        log.info("step %d: %s", position, op.describe())
        try:
            op.apply(ctx)
        except GuestError as exc:
            raise OperationError(position, op.describe(), exc.message) from exc
        report.applied.append(op.describe())
    if emptied_id:
        ctx.guest.write("/etc/machine-id", b"")
    if explicit_relabel:
        report.relabel = ctx.state.get(RELABEL_STATE)
    elif ctx.settings.selinux_relabel is not False and ctx.guest.os.type == "linux" and selinux_enabled(ctx.guest):
        try:
            report.relabel = relabel(ctx)
        except GuestError as exc:
            raise OperationError(len(ops) + 1, "SELinux relabel", exc.message) from exc
    return report
