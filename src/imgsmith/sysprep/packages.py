"""Package manager state that belongs to one machine: downloaded packages, RPM's locks, yum's UUID."""

from __future__ import annotations

from dataclasses import dataclass

from .base import SysprepContext, SysprepOperation, remove_files, remove_non_dirs, remove_regular_files_below

__all__ = ["PackageManagerCache", "RpmDb", "YumUuid"]

CACHE_DIRS = {
    "apt": "/var/cache/apt/archives",
    "dnf": "/var/cache/dnf",
    "yum": "/var/cache/yum",
    "zypper": "/var/cache/zypp/packages",
}


@dataclass(frozen=True)
class PackageManagerCache(SysprepOperation):
    """Only files go; the cache's directory tree (e.g. apt's ``partial/``) stays as the tools expect."""

    name = "package-manager-cache"
    heading = "Remove package manager cache"

    def apply(self, ctx: SysprepContext) -> list[str]:
        directory = CACHE_DIRS.get(ctx.os.package_management)
        return remove_regular_files_below(ctx.guest, directory) if directory else []


@dataclass(frozen=True)
class RpmDb(SysprepOperation):
    """Berkeley DB environment files carry host-specific locks; rpm recreates them."""

    name = "rpm-db"
    heading = "Remove host-specific RPM database files"

    def apply(self, ctx: SysprepContext) -> list[str]:
        if ctx.os.package_format != "rpm":
            return []
        return remove_non_dirs(ctx.guest, ["/var/lib/rpm/__db.*"])


@dataclass(frozen=True)
class YumUuid(SysprepOperation):
    """yum sends this UUID to mirrors; it makes a fresh one when the file is missing."""

    name = "yum-uuid"
    heading = "Remove the yum UUID"

    def apply(self, ctx: SysprepContext) -> list[str]:
        if ctx.os.package_management != "yum":
            return []
        return remove_files(ctx.guest, ["/var/lib/yum/uuid"])
