"""The shapes every cloud module fills in: a target's profile, its rules, and their findings.

A rule is data (an id, a severity, the cloud's own error name, the page it comes from)
plus one small check function over :class:`~imgsmith.clouds.facts.Facts`, which reads
the guest once through the Guest API. A check returns :class:`Hit` values (what was
found, where, how to fix it); the rule turns each into a :class:`Finding` carrying its
id, severity and source, so the check functions stay shared between clouds while each
cloud says, as data, how much a problem matters to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..ops.base import Operation
    from .facts import Facts

__all__ = ["ERROR", "WARNING", "CheckFn", "Finding", "Fix", "FixFn", "Hit", "Profile", "Rule", "Severity"]

Severity = Literal["error", "warning"]
ERROR: Severity = "error"
WARNING: Severity = "warning"


@dataclass(frozen=True)
class Hit:
    """One problem a check found: what, where (a guest path, a device, the image), how to fix it."""

    found: str
    where: str
    fix: str
    remedy: tuple[str, ...] = ()  # what a fix needs to know (the missing driver, the datasource, the console)


@dataclass(frozen=True)
class Finding:
    """A rule's verdict on one problem, as ``imgsmith check`` shows it (table row or JSON object)."""

    rule: str  # "aliyun.no-swap"
    cloud: str
    severity: Severity
    found: str
    where: str
    fix: str
    error_name: str | None
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "cloud": self.cloud, "severity": self.severity, "found": self.found,
                "where": self.where, "fix": self.fix, "error_name": self.error_name, "source": self.source}


CheckFn = Callable[["Facts", "Profile"], list[Hit]]
FixFn = Callable[["Facts", "Profile", list[Hit]], list["Operation"]]


@dataclass(frozen=True)
class Fix:
    """How ``cloud-ready`` repairs what a rule found: operations made from the rule's hits."""

    make: FixFn
    text: str  # what it changes, one line (docs/clouds.md "Fixes")


@dataclass(frozen=True)
class Rule:
    """One requirement of a target: ``name`` is the part of the id after the cloud (``no-swap``)."""

    name: str
    severity: Severity
    text: str  # what the rule checks, one line (docs/clouds.md, --list-rules)
    check: CheckFn
    source: str
    error_name: str | None = None  # the cloud's own error code, where it has one
    fix: Fix | None = None  # None: cloud-ready cannot repair it safely (imgsmith check still reports it)


@dataclass(frozen=True)
class Profile:
    """A target: its accepted formats and boot modes, drivers, datasources, and its rules.

    ``preset`` names the :mod:`imgsmith.disk.presets` entry whose format rules apply;
    ``drivers`` lists groups of kernel modules, one of each group must be available early
    (built in or in the initramfs); ``late_drivers`` may also be loadable modules.
    ``arches`` are the guest architectures the target runs, in libguestfs's words (x86_64,
    aarch64, i386). ``boot_modes`` and ``partition_tables`` are those of its x86 machines: an
    arm64 machine boots UEFI only, from either table (:meth:`boot_modes_for`).
    """

    name: str
    description: str
    preset: str
    formats: tuple[str, ...]
    boot_modes: tuple[str, ...] = ("bios", "uefi")
    partition_tables: tuple[str, ...] = ("mbr", "gpt")
    drivers: tuple[tuple[str, ...], ...] = ()
    late_drivers: tuple[tuple[str, ...], ...] = ()
    datasources: tuple[str, ...] = ()
    console: str = "ttyS0"
    own_tools: tuple[str, ...] = ()  # guest-tool families that belong here (vmware, virtualbox, xen, hyperv)
    arches: tuple[str, ...] = ("x86_64",)
    rules: tuple[Rule, ...] = field(default=())

    def rule_id(self, rule: Rule) -> str:
        return f"{self.name}.{rule.name}"

    def boot_modes_for(self, arch: str) -> tuple[str, ...]:
        """How the target boots a guest of *arch*: every cloud's arm64 machines have UEFI firmware only."""
        return ("uefi",) if arch == "aarch64" else self.boot_modes

    def partition_tables_for(self, arch: str) -> tuple[str, ...]:
        return ("mbr", "gpt") if arch == "aarch64" else self.partition_tables
