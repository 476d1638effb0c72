"""The fixes behind ``cloud-ready``, each an ordinary operation usable on its own.

Each one changes one thing a cloud's import rules check (src/imgsmith/clouds/): the drivers
in the initramfs, cloud-init's datasource list and units, fstab and GRUB by UUID, the serial
console on the kernel command line, MAC-bound network configuration, swap in fstab. They know
nothing of clouds: ``cloud-ready`` (clouds/ready.py) runs the rules and turns what fails into
these operations with the right arguments. GRUB is edited, not regenerated: grub-mkconfig
inside a chroot or an appliance writes the build machine's device names (``root=/dev/loop0p1``),
so both /etc/default/grub (for the next regeneration in the guest) and the existing kernel
lines (grub.cfg, BLS entries) are changed in place.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import yaml

from ..errors import GuestError, UsageError
from ..guest.api import Guest, PartitionInfo
from ..guest.facts import kernels
from .base import ApplyContext, Operation, ParseContext
from .commands import run_in_guest

__all__ = ["CloudInitEnable", "DatasourceList", "FstabUuid", "GrubUuid", "InitramfsDrivers", "RemoveMacBinding",
           "RemoveSwap", "SerialConsole", "root_partition"]

_MODULE = re.compile(r"^[A-Za-z0-9_-]+$")
_DATASOURCE = re.compile(r"^[A-Za-z0-9]+$")
_CONSOLE = re.compile(r"^(tty[A-Za-z]*\d+|hvc\d+)(,\d+[noe]?\d?)?$")
_STABLE = re.compile(r"^(UUID=|LABEL=|PARTUUID=|PARTLABEL=|/dev/disk/by-|/dev/mapper/)")
_DEVNAME = re.compile(r"^/dev/(?:(?:[shv]|xv)d[a-z](\d*)|nvme\d+n\d+(?:p(\d+))?)$")
_INITRDS = ("/boot/initrd.img-{v}", "/boot/initramfs-{v}.img")
_GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
DROP_IN = "/etc/cloud/cloud.cfg.d/91-imgsmith-datasource.cfg"
DRACUT_CONF = "/etc/dracut.conf.d/90-imgsmith-cloud.conf"


def _names(arg: str, option: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(x.strip() for x in arg.split(",") if x.strip()))
    if not items:
        raise UsageError(f"--{option}: no {what} given")
    for item in items:
        if not pattern.match(item):
            raise UsageError(f"--{option}: {item!r} is not a valid {what}")
    return items


def _first(g: Guest, *paths: str) -> str | None:
    return next((p for p in paths if g.exists(p)), None)


def _text(g: Guest, path: str) -> str | None:
    return g.read_text(path) if g.is_file(path, follow=True) else None


class _Flag(Operation):
    """A fix that takes no argument (not registered itself)."""

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        return cls()


# --- the initramfs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class InitramfsDrivers(Operation):
    """Add kernel modules to every kernel's initramfs, and to the config so later kernels keep them."""

    name = "initramfs-drivers"
    metavar = "MODULE,MODULE.."
    help = ("Regenerate every kernel's initramfs with these drivers (dracut --add-drivers, or "
            "/etc/initramfs-tools/modules and update-initramfs)")
    drivers: tuple[str, ...]

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        return cls(_names(arg, cls.name, _MODULE, "kernel module name"))

    def argument(self) -> str:
        return ",".join(self.drivers)

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        versions = kernels(g)
        if not versions:
            raise GuestError("no kernel in /boot: there is no initramfs to regenerate")
        ctx.message(f"Adding {' '.join(self.drivers)} to the initramfs of {', '.join(versions)}")
        if g.is_dir("/etc/initramfs-tools", follow=True) and \
                _first(g, "/usr/sbin/update-initramfs", "/sbin/update-initramfs"):
            self._initramfs_tools(ctx, versions)
        elif _first(g, "/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut", "/bin/dracut"):
            self._dracut(ctx, versions)
        else:
            raise GuestError("the guest has neither initramfs-tools (update-initramfs) nor dracut")

    def _initramfs_tools(self, ctx: ApplyContext, versions: list[str]) -> None:
        g, path = ctx.guest, "/etc/initramfs-tools/modules"
        text = _text(g, path) or "# List of modules to include in the initramfs, one per line.\n"
        listed = {ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")}
        missing = [d for d in self.drivers if d not in listed]
        if missing:
            g.write_text(path, text + ("" if text.endswith("\n") else "\n") + "".join(f"{d}\n" for d in missing))
        for v in versions:
            mode = "-u" if g.exists(f"/boot/initrd.img-{v}") else "-c"
            cmd = f"update-initramfs {mode} -k {shlex.quote(v)}"
            run_in_guest(ctx, cmd, cmd)

    def _dracut(self, ctx: ApplyContext, versions: list[str]) -> None:
        g = ctx.guest
        g.mkdir_p("/etc/dracut.conf.d")
        old = _text(g, DRACUT_CONF) or ""
        have = set(re.findall(r"[A-Za-z0-9_-]+", " ".join(re.findall(r'add_drivers\+="([^"]*)"', old))))
        extra = [d for d in self.drivers if d not in have]
        if extra or not old:
            g.write_text(DRACUT_CONF, old + f'add_drivers+=" {" ".join(extra or self.drivers)} "\n')
        drivers = shlex.quote(" ".join(self.drivers))
        for v in versions:
            target = next((p.format(v=v) for p in _INITRDS if g.exists(p.format(v=v))), f"/boot/initramfs-{v}.img")
            # --no-hostonly: a host-only image would carry the build machine's drivers, not the cloud's
            cmd = f"dracut -f --no-hostonly --add-drivers {drivers} {shlex.quote(target)} {shlex.quote(v)}"
            run_in_guest(ctx, cmd, cmd)


# --- cloud-init ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasourceList(Operation):
    """Set cloud-init's datasource_list in a drop-in that sorts after the distribution's own files."""

    name = "datasource-list"
    metavar = "DATASOURCE,DATASOURCE.."
    help = f"Set cloud-init's datasource_list (written to {DROP_IN}; add None last for a fallback)"
    datasources: tuple[str, ...]

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        return cls(_names(arg, cls.name, _DATASOURCE, "cloud-init datasource name"))

    def argument(self) -> str:
        return ",".join(self.datasources)

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Setting cloud-init's datasource_list: {', '.join(self.datasources)}")
        ctx.guest.mkdir_p("/etc/cloud/cloud.cfg.d")
        body = yaml.safe_dump({"datasource_list": list(self.datasources)}, default_flow_style=None)
        ctx.guest.write_text(DROP_IN, "# Written by imgsmith (datasource-list / cloud-ready).\n" + body)


@dataclass(frozen=True)
class CloudInitEnable(_Flag):
    name = "cloud-init-enable"
    help = ("Make cloud-init run at boot: remove /etc/cloud/cloud-init.disabled and, when none is enabled, "
            "enable its systemd units")
    UNITS = ("cloud-init-local.service", "cloud-init.service", "cloud-config.service", "cloud-final.service",
             "cloud-init-main.service", "cloud-init-network.service")

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        ctx.message("Enabling cloud-init at boot")
        g.rm_f("/etc/cloud/cloud-init.disabled")
        if g.os.init != "systemd" or any(g.glob(f"/etc/systemd/system/*.wants/{u}") for u in self.UNITS):
            return
        present = [u for u in self.UNITS
                   if _first(g, f"/usr/lib/systemd/system/{u}", f"/lib/systemd/system/{u}")]
        if not present:
            raise GuestError("no cloud-init systemd unit in the guest (is cloud-init installed?)")
        cmd = "systemctl enable " + " ".join(present)
        run_in_guest(ctx, cmd, cmd)


# --- fstab -----------------------------------------------------------------------------------------

def _partition_of(parts: list[PartitionInfo], spec: str) -> PartitionInfo | None:
    m = _DEVNAME.match(spec)
    if not m:
        return None
    number = int(m.group(1) or m.group(2) or 0)
    return next((p for p in parts if p.number == number and p.uuid), None)


def root_partition(g: Guest) -> PartitionInfo:
    part = next((p for p in g.partitions() if p.device == g.os.root), None)
    if part is None or not part.uuid:
        raise GuestError(f"the root filesystem {g.os.root} has no UUID to refer to")
    return part


def _fstab_lines(g: Guest) -> list[str]:
    if not g.is_file("/etc/fstab", follow=True):
        raise GuestError("the guest has no /etc/fstab")
    return g.read_text("/etc/fstab").splitlines(keepends=True)


@dataclass(frozen=True)
class FstabUuid(_Flag):
    name = "fstab-uuid"
    help = "Rewrite /etc/fstab entries that mount this disk's partitions by device name (/dev/sda1, /dev/vda2) to UUID="

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        ctx.message("Rewriting /etc/fstab to mount by UUID")
        parts, out, unknown = g.partitions(), [], []
        for line in _fstab_lines(g):
            fields, new = line.split(), line
            if fields and _DEVNAME.match(fields[0]):
                part = _partition_of(parts, fields[0])
                if part is None:
                    unknown.append(fields[0])
                else:
                    new = line.replace(fields[0], f"UUID={part.uuid}", 1)
            out.append(new)
        if unknown:
            raise GuestError(f"/etc/fstab: no partition of this disk for {', '.join(unknown)}")
        g.write_text("/etc/fstab", "".join(out))


@dataclass(frozen=True)
class RemoveSwap(_Flag):
    name = "remove-swap"
    help = "Drop swap entries from /etc/fstab (clouds that forbid swap on the OS disk; the lines are commented out)"

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        ctx.message("Removing swap from /etc/fstab")
        lines = _fstab_lines(g)
        out = [f"# swap removed by imgsmith: {ln}" if len(ln.split()) >= 3 and not ln.lstrip().startswith("#")
               and ln.split()[2] == "swap" else ln for ln in lines]
        if out != lines:
            g.write_text("/etc/fstab", "".join(out))


# --- GRUB ------------------------------------------------------------------------------------------

def _kernel_line_files(g: Guest) -> list[str]:
    """grub.cfg files with kernel lines, and BLS entries (RHEL 8+, Fedora): what the boot loader reads."""
    files = [p for p in (*_GRUB_CFGS, *g.glob("/boot/efi/EFI/*/grub.cfg")) if g.is_file(p, follow=True)]
    return files + g.glob("/boot/loader/entries/*.conf")


_KERNEL_LINE = re.compile(r"^(\s*(?:linux(?:efi)?\s+\S+|options)\b)(.*)$", re.MULTILINE)


def _edit_kernel_lines(g: Guest, edit: Callable[[str], str]) -> int:
    """Apply ``edit(args) -> args`` to every kernel line; returns how many files changed."""
    changed = 0
    files = _kernel_line_files(g)
    if not files:
        raise GuestError("no GRUB configuration (grub.cfg or BLS entries) in the guest")
    for path in files:
        text = g.read_text(path)
        new = _KERNEL_LINE.sub(lambda m: m.group(1) + edit(m.group(2)), text)
        if new != text:
            g.write_text(path, new)
            changed += 1
    return changed


def _edit_default_grub(g: Guest, edit: Callable[[str], str]) -> None:
    path = "/etc/default/grub"
    text = _text(g, path)
    if text is not None:
        new = edit(text)
        if new != text:
            g.write_text(path, new)


@dataclass(frozen=True)
class GrubUuid(_Flag):
    name = "grub-uuid"
    help = ("Make GRUB pass the root filesystem by UUID: drop GRUB_DISABLE_LINUX_UUID, rewrite root=/dev/... "
            "in grub.cfg and BLS entries")

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        uuid = root_partition(g).uuid
        ctx.message(f"Making GRUB boot root=UUID={uuid}")
        _edit_default_grub(g, lambda t: re.sub(r"^GRUB_DISABLE_LINUX_UUID=.*\n?", "", t, flags=re.MULTILINE))

        def fix(args: str) -> str:
            return re.sub(r"(?<!\S)root=(/dev/\S+)",
                          lambda m: m.group(0) if _STABLE.match(m.group(1)) else f"root=UUID={uuid}", args)
        _edit_kernel_lines(g, fix)


def _with_console(args: str, consoles: list[str]) -> str:
    kept = [a for a in args.split() if not a.startswith("console=")]
    lead = args[:len(args) - len(args.lstrip())] or " "
    return lead + " ".join([*kept, *consoles])


@dataclass(frozen=True)
class SerialConsole(Operation):
    name = "serial-console"
    metavar = "DEVICE[,SPEED]"
    help = ("Log the kernel to this serial console (console=tty0 console=DEVICE,SPEED, default speed "
            "115200n8) in GRUB_CMDLINE_LINUX, grub.cfg and BLS entries")
    device: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        arg = arg.strip()
        if not _CONSOLE.match(arg):
            raise UsageError(f"--serial-console: {arg!r} is not a console device (like ttyS0 or ttyS0,115200n8)")
        return cls(arg if "," in arg else f"{arg},115200n8")

    def argument(self) -> str:
        return self.device

    def apply(self, ctx: ApplyContext) -> None:
        g, consoles = ctx.guest, ["console=tty0", f"console={self.device}"]
        ctx.message(f"Setting the kernel console: {' '.join(consoles)}")

        def default(text: str) -> str:
            m = re.search(r'^GRUB_CMDLINE_LINUX=(["\']?)(.*?)\1[ \t]*$', text, re.MULTILINE)
            line = f'GRUB_CMDLINE_LINUX="{_with_console(m.group(2) if m else "", consoles).strip()}"'
            if m:
                return text[:m.start()] + line + text[m.end():]
            return text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"
        _edit_default_grub(g, default)
        _edit_kernel_lines(g, lambda args: _with_console(args, consoles))


# --- network ---------------------------------------------------------------------------------------

def _drop_lines(g: Guest, path: str, pattern: str) -> bool:
    text = g.read_text(path)
    new = re.sub(pattern, "", text, flags=re.MULTILINE)
    if new != text:
        g.write_text(path, new)
    return new != text


def _netplan_unbind(g: Guest, path: str) -> bool:
    """Drop ``match: {macaddress: ...}`` (and the set-name that needs a match) from a netplan file."""
    data = yaml.safe_load(g.read_text(path))
    changed = False
    for kind in ("ethernets", "bonds", "bridges", "vlans"):
        for iface in ((data or {}).get("network", {}).get(kind) or {}).values():
            match = iface.get("match") if isinstance(iface, dict) else None
            if isinstance(match, dict) and "macaddress" in match:
                del match["macaddress"]
                changed = True
                if not match:
                    del iface["match"]
                    iface.pop("set-name", None)
    if changed:
        g.write_text(path, "# Edited by imgsmith: MAC address matches removed.\n"
                           + yaml.safe_dump(data, default_flow_style=False, sort_keys=False))
    return changed


@dataclass(frozen=True)
class RemoveMacBinding(_Flag):
    name = "remove-mac-binding"
    help = ("Remove network configuration bound to the build machine's MAC address (HWADDR=/MACADDR=, "
            "persistent-net rules, netplan macaddress matches, NetworkManager mac-address=)")

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        ctx.message("Removing MAC address bindings from the network configuration")
        for path in g.glob("/etc/sysconfig/network-scripts/ifcfg-*") + g.glob("/etc/sysconfig/network/ifcfg-*"):
            _drop_lines(g, path, r"^\s*(HWADDR|MACADDR)=.*\n?")
        for path in g.glob("/etc/udev/rules.d/*persistent-net*.rules"):
            if re.search(r"ATTRS?\{address\}==", g.read_text(path)):
                g.rm_f(path)
        for path in g.glob("/etc/netplan/*.yaml"):
            try:
                _netplan_unbind(g, path)
            except yaml.YAMLError as exc:
                raise GuestError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
        for path in g.glob("/etc/NetworkManager/system-connections/*"):
            _drop_lines(g, path, r"^\s*mac-address\s*=.*\n?")
