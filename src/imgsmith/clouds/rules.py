"""Naming clouds and running their rules over facts: shared by ``imgsmith check`` and ``cloud-ready``.

Kept apart from :mod:`imgsmith.clouds.check` (which opens images through an overlay and a
session) so that the ``cloud-ready`` operation, which runs inside an already open guest,
can use the same rule runner without the session machinery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from ..errors import GuestError, UsageError
from . import PROFILES
from .base import ERROR, Finding, Hit, Profile, Rule
from .facts import Facts

__all__ = ["finding", "parse_clouds", "run_rules"]


def parse_clouds(spec: str | Sequence[str], option: str = "--for") -> list[str]:
    """``openstack,aliyun`` (or a list of such) -> known cloud names in order; UsageError for an unknown one."""
    items = [spec] if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for item in items for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise UsageError(f"unknown cloud {unknown[0]!r} (known: {', '.join(PROFILES)})")
    if not names:
        raise UsageError(f"{option} needs at least one cloud", hint=f"known: {', '.join(PROFILES)}")
    return list(dict.fromkeys(names))


def finding(profile: Profile, rule: Rule, hit: Hit) -> Finding:
    return Finding(profile.rule_id(rule), profile.name, rule.severity, hit.found, hit.where, hit.fix,
                   rule.error_name, rule.source)


def run_rules(facts: Facts, clouds: Sequence[str],
              select: Callable[[Rule], bool] = lambda _r: True) -> list[Finding]:
    """Every (selected) rule of each cloud over the shared facts; a rule that cannot read what it needs is an error."""
    findings: list[Finding] = []
    for name in clouds:
        profile = PROFILES[name]
        for rule in profile.rules:
            if not select(rule):
                continue
            try:
                hits, used = rule.check(facts, profile), rule
            except GuestError as exc:
                hits = [Hit(f"could not check: {exc.message}", "", "report this, with the image's origin")]
                used = dataclasses.replace(rule, severity=ERROR)
            findings.extend(finding(profile, used, h) for h in hits)
    return findings
