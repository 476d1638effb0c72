"""Stray files: editor backups and temporary files."""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass

from .base import SysprepContext, SysprepOperation, remove_globs, walk

__all__ = ["BackupFiles", "TmpFiles"]

BACKUP_DIRS = ("/etc", "/root", "/srv", "/tmp", "/var")
BACKUP_GLOBS = ("*.bak", "*~")
TMP_DIRS = ("/tmp", "/var/tmp")


@dataclass(frozen=True)
class BackupFiles(SysprepOperation):
    """Only regular files, and only under the directories where administrators edit things.

    /usr and /home are left alone: a package may ship a ``*.bak`` file on purpose, and
    users' files are not the image builder's to judge.
    """

    name = "backup-files"
    heading = "Remove editor backup files from the guest"

    def apply(self, ctx: SysprepContext) -> list[str]:
        g = ctx.guest
        removed: list[str] = []
        for top in BACKUP_DIRS:
            if not g.is_dir(top):  # a symlinked /tmp is not followed, as virt-sysprep does
                continue
            for path in walk(g, top):
                base = posixpath.basename(path)
                if any(fnmatch.fnmatchcase(base, pat) for pat in BACKUP_GLOBS) and g.is_file(path):
                    g.rm_f(path)
                    removed.append(path)
        return removed


@dataclass(frozen=True)
class TmpFiles(SysprepOperation):
    """Everything inside /tmp and /var/tmp, hidden entries included; the directories stay."""

    name = "tmp-files"
    heading = "Remove temporary files"

    def apply(self, ctx: SysprepContext) -> list[str]:
        g = ctx.guest
        removed: list[str] = []
        for top in TMP_DIRS:
            if not g.is_dir(top, follow=True):
                continue
            removed += remove_globs(g, [f"{top}/*"])
            for name in sorted(g.ls(top)):  # dot files, which the glob does not match
                g.rm_rf(f"{top}/{name}")
                removed.append(f"{top}/{name}")
        return removed
