"""Package operations, with the command each package manager gets (as virt-customize spells them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Self

from ..errors import GuestError, UsageError
from ..guest.api import OSInfo
from .base import ApplyContext, FlagOperation, Operation, ParseContext
from .commands import run_in_guest

__all__ = ["Install", "Uninstall", "Update", "install_command", "parse_packages"]

_APT = ("export DEBIAN_FRONTEND=noninteractive\n"
        "apt_opts='-q -y -o Dpkg::Options::=--force-confnew'\n")
_PKG_NAME = re.compile(r"^[A-Za-z0-9@_+.:~=<>*/-][A-Za-z0-9@_+.:~=<>*/()-]*$")


def parse_packages(arg: str, option: str) -> tuple[str, ...]:
    pkgs = tuple(p for p in (x.strip() for x in arg.split(",")) if p)
    if not pkgs:
        raise UsageError(f"--{option}: no package names given (expected PKG,PKG..)")
    for p in pkgs:
        if not _PKG_NAME.match(p):
            raise UsageError(f"--{option}: {p!r} is not a valid package name")
    return pkgs


def _manager(os_info: OSInfo) -> str:
    pm = os_info.package_management
    if pm not in ("apt", "dnf", "yum", "zypper"):
        raise GuestError(f"package management {pm!r} ({os_info.distro}) is not supported for this operation")
    return pm


def _quote_all(packages: tuple[str, ...]) -> str:
    """Always single-quote, as virt-customize does (the commands land in the guest's log verbatim)."""
    return " ".join("'" + p.replace("'", "'\\''") + "'" for p in packages)


def install_command(os_info: OSInfo, packages: tuple[str, ...]) -> str:
    quoted = _quote_all(packages)
    return {
        "apt": f"{_APT}apt-get $apt_opts update\napt-get $apt_opts install {quoted}",
        "dnf": f"dnf -y install {quoted}",
        "yum": f"yum -y install {quoted}",
        "zypper": f"zypper -n in -l {quoted}",
    }[_manager(os_info)]


def uninstall_command(os_info: OSInfo, packages: tuple[str, ...]) -> str:
    quoted = _quote_all(packages)
    return {
        "apt": f"{_APT}apt-get $apt_opts remove {quoted}",
        "dnf": f"dnf -y remove {quoted}",
        "yum": f"yum -y remove {quoted}",
        "zypper": f"zypper -n rm {quoted}",
    }[_manager(os_info)]


def update_command(os_info: OSInfo) -> str:
    return {
        "apt": f"{_APT}apt-get $apt_opts update\napt-get $apt_opts upgrade",
        "dnf": "dnf -y --best upgrade",
        "yum": "yum -y update",
        "zypper": "zypper -n update -l",
    }[_manager(os_info)]


@dataclass(frozen=True)
class PackageListOperation(Operation):
    """Shared shape of the operations that take ``PKG,PKG..`` (or a YAML list); not registered itself."""

    metavar = "PKG,PKG.."
    packages: tuple[str, ...]

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        return cls(parse_packages(arg, cls.name))

    @classmethod
    def from_yaml(cls, value: object, ctx: ParseContext) -> Self:
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return cls.parse(",".join(value), ctx)
        return super().from_yaml(value, ctx)

    @classmethod
    def yaml_schema(cls) -> dict[str, Any]:
        return {"description": cls.help, "anyOf": [
            {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}

    def argument(self) -> str:
        return ",".join(self.packages)


@dataclass(frozen=True)
class Install(PackageListOperation):
    name = "install"
    help = "Install packages with the guest's package manager (needs the appliance network)"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Installing packages: {' '.join(self.packages)}")
        cmd = install_command(ctx.guest.os, self.packages)
        run_in_guest(ctx, cmd, cmd, needs_network=True)


@dataclass(frozen=True)
class Uninstall(PackageListOperation):
    name = "uninstall"
    help = "Remove packages with the guest's package manager"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Uninstalling packages: {' '.join(self.packages)}")
        cmd = uninstall_command(ctx.guest.os, self.packages)
        run_in_guest(ctx, cmd, cmd)


@dataclass(frozen=True)
class Update(FlagOperation):
    name = "update"
    help = "Update all packages (yum update, dnf upgrade, apt-get upgrade, zypper update)"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message("Updating packages")
        cmd = update_command(ctx.guest.os)
        run_in_guest(ctx, cmd, cmd, needs_network=True)
