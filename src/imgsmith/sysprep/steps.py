"""The two operations that run the user's own steps: ``script`` (host scripts) and ``customize``.

``customize`` has order 99, so it runs after every other filesystem operation: a key
given with ``--ssh-inject`` survives ``ssh-userdir``, a password set with
``--root-password`` is not lost to anything, and the emptied /etc/machine-id is
emptied again after the customize operations (see :mod:`imgsmith.runner`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..ops.commands import Script as ScriptStep
from ..runner import apply_operations
from .base import SysprepContext, SysprepOperation

__all__ = ["RELABEL", "Customize", "Script"]

RELABEL = "relabel"
"""Key in ``SysprepContext.facts``: how the customize step relabelled SELinux (setfiles, autorelabel, None)."""


@dataclass(frozen=True)
class Script(SysprepOperation):
    """Each ``--script`` runs on the host with its working directory at the guest's root (FUSE)."""

    name = "script"
    heading = "Run arbitrary scripts against the guest"

    def apply(self, ctx: SysprepContext) -> list[str]:
        for path in ctx.options.scripts:
            ScriptStep(path).apply(ctx.run)
        return [str(p) for p in ctx.options.scripts]


@dataclass(frozen=True)
class Customize(SysprepOperation):
    """virt-customize's operations, in imgsmith's order, through the same runner as ``imgsmith customize``.

    SELinux relabelling is automatic only when there are customize operations (they may
    create files); sysprep's own operations delete files or rewrite them in place, so a
    bare sysprep of an SELinux guest neither runs setfiles nor leaves /.autorelabel
    behind — as with virt-sysprep. ``--selinux-relabel`` still forces it.
    """

    name = "customize"
    heading = "Customize the guest"
    order = 99

    def apply(self, ctx: SysprepContext) -> list[str]:
        run = ctx.run
        if not ctx.customize_ops and run.settings.selinux_relabel is None:
            run = dataclasses.replace(run, settings=dataclasses.replace(run.settings, selinux_relabel=False))
        report = apply_operations(run, ctx.customize_ops)
        ctx.facts[RELABEL] = report.relabel
        return report.applied
