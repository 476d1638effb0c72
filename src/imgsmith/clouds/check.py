"""Library API of ``imgsmith check``: one read-only session, every requested cloud's rules.

The image is opened through a throw-away qcow2 overlay (:func:`imgsmith.transaction.overlay`)
that is deleted on exit and never committed, so whatever the backend does while mounting
(an ext4 journal replay, the sandbox's bind mounts) lands in the overlay and the image's
bytes never change. The facts are read once and shared by all clouds. A disk on which no
operating system is found is not an error of the command but a finding of each cloud
(Tencent calls it ``RootPartitionNotFound``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..disk import qemuimg
from ..errors import GuestError, UsageError
from ..guest.api import OSInfo
from ..guest.session import SessionOptions, open_guest
from ..transaction import DiskInfo, disk_info, overlay
from . import PROFILES
from .base import ERROR, Finding, Hit
from .facts import Facts, ImageFacts, read_image_facts
from .rules import finding, parse_clouds, run_rules

__all__ = ["CheckReport", "OutputCheck", "check_image", "check_outputs", "parse_clouds", "run_rules"]


@dataclass
class CheckReport:
    """What ``imgsmith check`` found: the findings of every rule of every requested cloud."""

    image: Path
    format: str
    clouds: list[str]
    backend: str
    seconds: float
    findings: list[Finding] = field(default_factory=list)
    os: OSInfo | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    def to_json(self) -> dict[str, Any]:
        return {"image": str(self.image), "format": self.format, "clouds": self.clouds, "backend": self.backend,
                "seconds": self.seconds, "os": dataclasses.asdict(self.os) if self.os else None,
                "errors": len(self.errors), "warnings": len(self.findings) - len(self.errors),
                "findings": [f.to_json() for f in self.findings]}


def _no_root(clouds: Sequence[str], why: str, image: Path) -> list[Finding]:
    out = []
    for name in clouds:
        profile = PROFILES[name]
        for rule in profile.rules:
            if rule.name == "root-found":
                out.append(finding(profile, rule, Hit(why, str(image), "the image must hold one Linux root "
                                                                         "filesystem (imgsmith info --inspect)")))
    return out


def _image_facts(path: Path, fmt: str | None, clouds: Sequence[str]) -> tuple[ImageFacts, DiskInfo]:
    """The file's facts, from one ``open_image`` (probe, info, check) and, for Tencent, one measure."""
    info = qemuimg.open_image(path, fmt)
    qcow2 = qemuimg.measure_qcow2(path, info.format) if "tencent" in clouds else None
    facts = read_image_facts(path, info.format, info.virtual_size, qcow2, dict(info.format_specific))
    return facts, DiskInfo(path, info.format, info.virtual_size)


def check_image(path: Path, clouds: Sequence[str], *, fmt: str | None = None,
                session: SessionOptions = SessionOptions(),
                message: Callable[[str], None] = lambda _m: None) -> CheckReport:
    """Check *path* for each of *clouds*; the image is only read (see the module docstring)."""
    start = time.monotonic()
    clouds = parse_clouds(list(clouds))
    session = dataclasses.replace(session, network=False, readonly=False)
    choice = session.choice()  # a bad backend request fails before anything is opened
    if not path.exists():
        raise UsageError(f"{path}: no such disk image")
    image, opened = _image_facts(path, fmt, clouds)
    message(f"Examining {path} ({image.format}, backend {choice.name}) for {', '.join(clouds)} ...")
    report = CheckReport(path, image.format, list(clouds), choice.name, 0.0)
    with overlay(opened) as top:
        try:
            with open_guest(top, "qcow2", session, message=message) as guest:
                report.backend = guest.backend
                report.os = guest.os
                report.findings = run_rules(Facts(guest, image), clouds)
        except GuestError as exc:
            if not exc.message.startswith(("no operating system", "the disk holds several")):
                raise
            report.findings = _no_root(clouds, exc.message, path)
    report.seconds = round(time.monotonic() - start, 2)
    return report


@dataclass(frozen=True)
class OutputCheck:
    """One build output to judge for one cloud: its name and how the cloud will see the file."""

    name: str
    cloud: str
    image: ImageFacts


def check_outputs(final: Path, fmt: str, outputs: Sequence[OutputCheck], *,
                  session: SessionOptions = SessionOptions(),
                  message: Callable[[str], None] = lambda _m: None) -> tuple[str, dict[str, list[Finding]]]:
    """Judge a build's outputs, each for its cloud, in one read-only session on the *final* layer.

    The guest's facts (drivers, fstab, cloud-init...) are the same for every output, so they
    are read once; only the image facts (format, size, subformat) differ per output. Returns
    the backend used and the findings by output name.
    """
    session = dataclasses.replace(session, network=False, readonly=False)
    found: dict[str, list[Finding]] = {}
    if not outputs:
        return session.choice().name, found
    for o in outputs:
        parse_clouds(o.cloud)
    with overlay(disk_info(final, fmt)) as top:
        try:
            with open_guest(top, "qcow2", session, message=message) as guest:
                facts = Facts(guest, outputs[0].image)
                for o in outputs:
                    facts.image = o.image  # no cached guest fact depends on the image: one Facts serves all
                    found[o.name] = run_rules(facts, [o.cloud])
                return guest.backend, found
        except GuestError as exc:
            if not exc.message.startswith(("no operating system", "the disk holds several")):
                raise
            return session.choice().name, {o.name: _no_root([o.cloud], exc.message, o.image.path) for o in outputs}
