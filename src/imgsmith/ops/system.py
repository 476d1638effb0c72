"""System settings: hostname, timezone, SELinux relabelling — each right for the guest's family."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Self

from ..errors import GuestError, UsageError
from ..guest.api import Guest
from .base import ApplyContext, CustomizePhase, FlagOperation, Operation, ParseContext

__all__ = ["RELABEL_STATE", "Hostname", "SelinuxRelabel", "Timezone", "is_selinux_guest", "relabel"]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*$")
_TZ = re.compile(r"^[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*$")


def _replace_key_line(g: Guest, path: str, key: str, value: str) -> None:
    """Drop every ``KEY=`` line and append ``KEY=value`` (how virt-customize edits such files)."""
    lines: list[str] = []
    if g.is_file(path):
        lines = [ln for ln in g.read_text(path).splitlines() if not ln.startswith(key + "=")]
    g.write_text(path, "\n".join([*lines, f"{key}={value}"]) + "\n")


def _replace_in_hosts(g: Guest, old: str | None, new: str) -> None:
    """Swap the old hostname (long or short form) for the new one in /etc/hosts, keeping layout."""
    if not g.is_file("/etc/hosts"):
        return
    new_short = new.split(".", 1)[0]
    old_short = old.split(".", 1)[0] if old else None
    swaps = {"unassigned-hostname": new_short}
    if "." in new:
        swaps["unassigned-hostname.unassigned-domain"] = new
    if old_short:
        swaps[old_short] = new_short
    if old:
        swaps[old] = new

    def fix(line: str) -> str:
        body, hash_, comment = line.partition("#")
        parts = re.split(r"(\s+)", body)
        # parts[0] may be leading whitespace; the first non-space token is the address.
        seen_addr = False
        for i, tok in enumerate(parts):
            if not tok or tok.isspace():
                continue
            if not seen_addr:
                seen_addr = True
                continue
            parts[i] = swaps.get(tok, tok)
        return "".join(parts) + hash_ + comment

    text = g.read_text("/etc/hosts")
    new_text = "".join(fix(ln) for ln in text.splitlines(keepends=True))
    if new_text != text:
        g.write_text("/etc/hosts", new_text)


@dataclass(frozen=True)
class Hostname(Operation):
    name = "hostname"
    metavar = "HOSTNAME"
    help = "Set the hostname (/etc/hostname, /etc/machine-info, /etc/hosts or sysconfig, per distro)"
    hostname: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        if not _HOSTNAME.match(arg):
            raise UsageError(f"--hostname: {arg!r} is not a valid hostname")
        return cls(arg)

    def argument(self) -> str:
        return self.hostname

    def apply(self, ctx: ApplyContext) -> None:
        g, info = ctx.guest, ctx.guest.os
        ctx.message(f"Setting the hostname: {self.hostname}")
        if info.type != "linux":
            ctx.warn("hostname could not be set for this type of guest")
            return
        if info.family == "debian":
            old = None
            if g.is_file("/etc/hostname"):
                first = g.read_text("/etc/hostname").splitlines()
                old = first[0] if first else None
            g.write_text("/etc/hostname", self.hostname + "\n")
            _replace_in_hosts(g, old, self.hostname)
        elif info.family == "redhat" and (info.major >= 7 or (info.distro == "fedora" and info.major >= 18)):
            g.write_text("/etc/hostname", self.hostname + "\n")
            _replace_key_line(g, "/etc/machine-info", "PRETTY_HOSTNAME", self.hostname)
        elif info.family == "redhat":
            _replace_key_line(g, "/etc/sysconfig/network", "HOSTNAME", self.hostname)
        elif info.family == "suse":
            g.write_text("/etc/HOSTNAME", self.hostname)
        else:
            ctx.warn("hostname could not be set for this type of guest")


@dataclass(frozen=True)
class Timezone(Operation):
    name = "timezone"
    metavar = "TIMEZONE"
    help = "Set the default timezone (a zoneinfo name such as Europe/London or Asia/Shanghai)"
    timezone: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        if not _TZ.match(arg) or ".." in arg:
            raise UsageError(f"--timezone: {arg!r} is not a timezone name (use a location like Europe/London)")
        return cls(arg)

    def argument(self) -> str:
        return self.timezone

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        ctx.message(f"Setting the timezone: {self.timezone}")
        if g.os.type != "linux":
            ctx.warn("timezone could not be set for this type of guest")
            return
        where = f"/usr/share/zoneinfo/{self.timezone}"
        if not g.is_file(where, follow=True):
            raise GuestError(f"timezone {self.timezone!r} does not exist in the guest "
                             "(use a location like Europe/London)")
        g.rm_f("/etc/localtime")
        g.ln_sf(where, "/etc/localtime")


RELABEL_STATE = "selinux-relabel"
"""Key in ``ApplyContext.state``: what the explicit relabel did (setfiles, autorelabel, None)."""


def _selinux_policy(g: Guest) -> str:
    m = re.search(r"^\s*SELINUXTYPE\s*=\s*(\S+)", g.read_text("/etc/selinux/config"), re.MULTILINE)
    return m.group(1) if m else "targeted"


def relabel(ctx: ApplyContext) -> str:
    """Relabel with setfiles and the guest's policy; fall back to /.autorelabel. Returns which path ran."""
    g = ctx.guest
    specfile = f"/etc/selinux/{_selinux_policy(g)}/contexts/files/file_contexts"
    if g.is_file(specfile, follow=True):
        try:
            g.selinux_relabel(specfile)
        except GuestError as exc:
            ctx.warn(f"setfiles failed ({exc.message}); the guest will relabel itself at first boot")
        else:
            g.rm_f("/.autorelabel")
            ctx.message(f"SELinux relabelling: done with setfiles and {specfile}")
            return "setfiles"
    g.touch("/.autorelabel")
    ctx.message("SELinux relabelling: no usable policy file_contexts in the guest; "
                "created /.autorelabel so the guest relabels at first boot")
    return "autorelabel"


def is_selinux_guest(g: Guest) -> bool:
    """virt-customize 1.48's test, made when relabelling (after every other operation).

    libguestfs-common mlcustomize/SELinux_relabel.ml ``is_selinux_guest``: /usr/sbin/load_policy
    and /etc/selinux/config are both regular files (symlinks followed). ``SELINUX=disabled`` does
    not count in 1.48: such a guest is relabelled too.
    """
    return g.is_file("/usr/sbin/load_policy", follow=True) and g.is_file("/etc/selinux/config", follow=True)


@dataclass(frozen=True)
class SelinuxRelabel(FlagOperation):
    """Explicit relabel request, decided as virt-customize decides it: at the very end, on the result.

    Runs in the last phase, so an earlier operation that removed load_policy or the config
    turns it into a no-op. imgsmith's automatic relabel (without this option) is decided at
    the end too, by the runner.
    """

    name = "selinux-relabel"
    help = "Relabel files with the right SELinux labels (automatic for SELinux guests; kept for compatibility)"
    phase = CustomizePhase.RELABEL

    def apply(self, ctx: ApplyContext) -> None:
        if not is_selinux_guest(ctx.guest):
            ctx.message("SELinux relabelling: the guest does not use SELinux; nothing to do")
            ctx.state[RELABEL_STATE] = None
            return
        ctx.state[RELABEL_STATE] = relabel(ctx)
