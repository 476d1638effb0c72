"""The ``cloud-ready`` operation: run the clouds' rules on the open guest and apply their fixes.

It uses the rules ``imgsmith check`` runs (one source of truth): each rule with a
:class:`~imgsmith.clouds.base.Fix` turns its hits into ordinary operations
(:mod:`imgsmith.ops.cloudfix`, ``install``), the operations of all requested clouds are
merged (one package install, one initramfs regeneration with every missing driver, one
datasource list), applied in a fixed order (packages first, since a package brings files
the later fixes edit; the initramfs last), and the rules are run again: a fix that did not
take is an error, a rule without a fix that still fails is a warning pointing at
``imgsmith check``. Rules about the image file (format, size) are not run here: they need
the file, and ``convert --preset`` is their fix.

It lives here, not in ``imgsmith.ops``, because it is built from the rules, and clouds sits
above ops in the import layers; it registers itself in ``CUSTOMIZE_OPERATIONS`` like any
operation when ``imgsmith`` is imported (see ``imgsmith/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from ..errors import GuestError, UsageError
from ..guest.api import Guest
from ..ops.base import ApplyContext, Operation, ParseContext
from ..ops.cloudfix import (
    CloudInitEnable,
    DatasourceList,
    FstabUuid,
    GrubUuid,
    InitramfsDrivers,
    RemoveMacBinding,
    RemoveSwap,
    SerialConsole,
)
from ..ops.packages import Install
from . import PROFILES
from .base import ERROR, Finding, Rule
from .facts import Facts, ImageFacts
from .rules import finding, parse_clouds, run_rules

__all__ = ["CloudReady", "plan_fixes"]

IMAGE_RULES = frozenset({"format", "format-rules", "size", "root-found"})
"""Rules about the image file, not the guest: ``cloud-ready`` works inside the guest and skips them."""
_NO_IMAGE = ImageFacts(Path("-"), "", 0)  # the guest rules never read the image's facts
ORDER: tuple[type[Operation], ...] = (Install, CloudInitEnable, DatasourceList, FstabUuid, RemoveSwap,
                                      RemoveMacBinding, GrubUuid, SerialConsole, InitramfsDrivers)
MAX_ROUNDS = 3  # a fix may reveal the next problem (cloud-init installed, then its datasource list)
STATE = "cloud-ready"
"""Key in ``ApplyContext.state``: the fix operations cloud-ready applied, as ``describe()`` strings."""


def _union(*parts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x for p in parts for x in p))


def _merge(a: Operation, b: Operation) -> Operation:
    """Two fixes of one kind as one (the first cloud's console wins; all use ttyS0 today)."""
    if isinstance(a, Install) and isinstance(b, Install):
        return Install(_union(a.packages, b.packages))
    if isinstance(a, InitramfsDrivers) and isinstance(b, InitramfsDrivers):
        return InitramfsDrivers(_union(a.drivers, b.drivers))
    if isinstance(a, DatasourceList) and isinstance(b, DatasourceList):
        names = _union(a.datasources, b.datasources)
        return DatasourceList(tuple(n for n in names if n != "None") + (("None",) if "None" in names else ()))
    return a


def _guest_rule(rule: Rule) -> bool:
    return rule.name not in IMAGE_RULES


def _pending(facts: Facts, clouds: Sequence[str]) -> list[tuple[Finding, Operation]]:
    """Each hit of a fixable rule whose fix has something to do, with the operation that would do it."""
    out: list[tuple[Finding, Operation]] = []
    for name in clouds:
        profile = PROFILES[name]
        for rule in profile.rules:
            if rule.fix is None:
                continue
            hits = rule.check(facts, profile)
            if hits:
                ops = rule.fix.make(facts, profile, hits)
                out.extend((finding(profile, rule, hits[0]), op) for op in ops)
    return out


def plan_fixes(guest: Guest, clouds: Sequence[str]) -> list[Operation]:
    """The operations that repair what the clouds' fixable rules find in *guest* now, merged and ordered."""
    by_kind: dict[type[Operation], Operation] = {}
    for _finding, op in _pending(Facts(guest, _NO_IMAGE), clouds):
        kind = type(op)
        by_kind[kind] = _merge(by_kind[kind], op) if kind in by_kind else op
    return sorted(by_kind.values(), key=lambda op: ORDER.index(type(op)) if type(op) in ORDER else len(ORDER))


def _line(f: Finding) -> str:
    return f"{f.rule}: {f.found}" + (f" ({f.where})" if f.where else "")


@dataclass(frozen=True)
class CloudReady(Operation):
    name = "cloud-ready"
    metavar = "CLOUD,CLOUD.."
    help = (f"Fix what the clouds' import rules find, where a fix is safe (drivers in the initramfs, cloud-init "
            f"and its datasource, fstab/GRUB by UUID, serial console, MAC bindings, swap, growpart, "
            f"qemu-guest-agent); clouds: {', '.join(PROFILES)}. See docs/clouds.md")
    clouds: tuple[str, ...]

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        return cls(tuple(parse_clouds(arg, option=f"--{cls.name}")))

    @classmethod
    def from_yaml(cls, value: object, ctx: ParseContext) -> Self:
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return cls.parse(",".join(value), ctx)
        if isinstance(value, list):
            raise UsageError(f"{cls.name}: expected a cloud name or a list of them")
        return super().from_yaml(value, ctx)

    @classmethod
    def yaml_schema(cls) -> dict[str, Any]:
        names = {"enum": list(PROFILES)}
        return {"description": cls.help, "anyOf": [
            {"type": "string"}, {"type": "array", "items": names, "minItems": 1}]}

    def argument(self) -> str:
        return ",".join(self.clouds)

    def cache_token(self) -> dict[str, Any]:
        """The clouds, and which of their rules have a fix: a new fix invalidates layers cached without it."""
        fixed = [PROFILES[c].rule_id(r) for c in self.clouds for r in PROFILES[c].rules if r.fix is not None]
        return {**super().cache_token(), "fixes": fixed}

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Making the guest ready for {', '.join(self.clouds)}")
        applied: list[str] = ctx.state.setdefault(STATE, [])
        for _round in range(MAX_ROUNDS):
            todo = [op for op in plan_fixes(ctx.guest, self.clouds) if op.describe() not in applied]
            if not todo:
                break
            for op in todo:
                op.apply(ctx)
                applied.append(op.describe())
        if not applied:
            ctx.message(f"cloud-ready: nothing to fix for {', '.join(self.clouds)}")
        self._verify(ctx)

    def _verify(self, ctx: ApplyContext) -> None:
        """Run the rules again: a fix still needed means it did not take; what no fix covers is a warning."""
        facts = Facts(ctx.guest, _NO_IMAGE)
        pending = _pending(facts, self.clouds)
        if pending:
            first, op = pending[0]
            raise GuestError(f"cloud-ready: {op.describe()} did not fix {_line(first)}")
        for f in run_rules(facts, self.clouds, _guest_rule):
            ctx.warn(f"cloud-ready cannot fix {_line(f)}" + ("" if f.severity == ERROR else " (a warning)"))
